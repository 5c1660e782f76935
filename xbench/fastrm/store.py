"""FastRM's label store: what the proxy reads, in shards on disk, read back memory-mapped.

One labelled sample is a :class:`Row`: the image tokens' last-layer states ``[N, d]`` and the
answer tokens' query states ``[K, d]`` in the store dtype (the model's by default: bf16, fp16
or fp32), the reference map flattened (float32 ``[N]``, its shape ``generation.grid`` kept
beside it: ``(h, w)`` or ``(N,)``), optionally the map under pixel noise, the answer's score
and the sample's meta fields. ``N`` and ``K`` may differ from sample to sample.

A shard is ``shard-NNNNN.safetensors`` (never pickle) plus ``shard-NNNNN.json``, written by
:class:`ShardWriter` as labelling goes: rows are appended until the shard holds
``shard_bytes``, then it is written and dropped from memory. Its tensors:

* ``patches [sum N_i, d]``, ``queries [sum K_i, d]`` (store dtype), with ``patch_offsets`` and
  ``query_offsets`` ``[n + 1]`` (int64): sample ``i``'s rows are ``patches[po[i]:po[i+1]]``;
* ``maps [sum N_i]`` float32 (and ``perturbed`` when every row has one), ``correct [n]`` float32.

The JSON holds the positions the shard covers in the task's seeded order (``start``, ``end``),
each row's id, position, meta and map shape, the samples skipped with their errors, the torch
thread count, the dtype, hidden size and the safetensors file's size; it is written last, so
a shard without it was never finished. Reading is strict: a shard whose files are unreadable or
disagree with each other is a :class:`~xbench.errors.DataError` naming the file.

Bytes per sample: ``(N + K) * d * itemsize`` for the states plus ``4 N`` for the map (``8 N``
with the perturbed map), plus 20 bytes of offsets and score and the JSON line of its meta
(:func:`row_bytes` is the formula; ``results/fastrm/README.md`` has LLaVA-1.5-7B's figure).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from xbench.errors import DataError, ParameterError

STORE_FORMAT = "xbench-fastrm-labels"
STORE_VERSION = 2
#: ``--store-dtype`` choices
STORE_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DEFAULT_SHARD_BYTES = 256 * 2**20
MAP_DTYPE = torch.float32


def store_dtype(name: str | None, model_dtype: Any) -> torch.dtype:
    """The dtype states are stored in: ``name`` (one of :data:`STORE_DTYPES`) or, when None, the
    model's (``model_dtype``) when it is one of them, else float32."""
    if name is None:
        return model_dtype if model_dtype in STORE_DTYPES.values() else torch.float32
    if name not in STORE_DTYPES:
        raise ParameterError(f"store dtype {name!r} is not one of {sorted(STORE_DTYPES)}")
    return STORE_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def row_bytes(n_patches: int, n_queries: int, hidden: int, dtype: torch.dtype, perturbed: bool = False) -> int:
    """Tensor bytes one sample takes in a shard: ``(N + K) d s + 4 N`` (``+ 4 N`` more with the
    perturbed map); offsets, score and JSON meta come on top (a few dozen bytes)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (n_patches + n_queries) * hidden * itemsize + 4 * n_patches * (2 if perturbed else 1)


@dataclass
class Row:
    """One labelled sample as the store keeps it (states on CPU in the store dtype)."""

    id: str
    position: int
    patches: torch.Tensor  # [N, d]
    queries: torch.Tensor  # [K, d]
    map: np.ndarray  # [N] float32
    map_shape: tuple[int, ...]
    correct: float
    meta: dict[str, Any] = field(default_factory=dict)
    perturbed: np.ndarray | None = None  # [N] float32

    @property
    def nbytes(self) -> int:
        extra = 0 if self.perturbed is None else self.perturbed.nbytes
        return self.patches.nbytes + self.queries.nbytes + self.map.nbytes + extra

    def check(self) -> None:
        """A row whose map does not have one value per image token cannot train a proxy."""
        if math.prod(self.map_shape) != self.patches.shape[0] or self.map.size != self.patches.shape[0]:
            raise DataError(
                f"sample {self.id!r}: the reference map has shape {self.map_shape} ({self.map.size} values) "
                f"for {self.patches.shape[0]} image tokens"
            )


class ShardWriter:
    """Appends rows to the current shard and writes it once it holds ``shard_bytes``
    (:meth:`close` writes the last one). Only the current shard's rows are kept in memory."""

    def __init__(self, directory: Path, dtype: torch.dtype, first_index: int, start: int,
                 shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:  # fmt: skip
        self.dir, self.dtype, self.index, self.start = Path(directory), dtype, first_index, start
        self.shard_bytes = shard_bytes
        self.rows: list[Row] = []
        self.skipped: list[dict] = []
        self.end, self.bytes, self.written = start, 0, []

    def add(self, rows: Iterable[Row], skipped: Iterable[dict], end: int) -> None:
        """Rows and skipped samples of task positions up to ``end`` (exclusive)."""
        for row in rows:
            self.rows.append(row)
            self.bytes += row.nbytes
        self.skipped.extend(skipped)
        self.end = end
        if self.bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if self.end == self.start:
            return
        self.written.append(write_shard(self.dir, self.index, self.start, self.end, self.rows, self.skipped, self.dtype))
        self.index, self.start = self.index + 1, self.end
        self.rows, self.skipped, self.bytes = [], [], 0

    def close(self) -> list[Path]:
        self.flush()
        return self.written


def _stack(tensors: Sequence[torch.Tensor], dtype, width: int) -> torch.Tensor:
    return torch.cat([t.to(dtype) for t in tensors]) if tensors else torch.zeros(0, width, dtype=dtype)


def _offsets(lengths: Sequence[int]) -> torch.Tensor:
    return torch.tensor([0, *np.cumsum(lengths, dtype=np.int64).tolist()], dtype=torch.int64)


def write_shard(directory: Path, index: int, start: int, end: int, rows: Sequence[Row], skipped: Sequence[dict],
                dtype: torch.dtype) -> Path:  # fmt: skip
    """Write one shard (safetensors, then its JSON); returns the JSON's path."""
    from safetensors.torch import save_file

    for row in rows:
        row.check()
    directory.mkdir(parents=True, exist_ok=True)
    hidden = rows[0].patches.shape[1] if rows else 0
    tensors = {
        "patches": _stack([r.patches for r in rows], dtype, hidden).contiguous(),
        "queries": _stack([r.queries for r in rows], dtype, hidden).contiguous(),
        "patch_offsets": _offsets([r.patches.shape[0] for r in rows]),
        "query_offsets": _offsets([r.queries.shape[0] for r in rows]),
        "maps": torch.from_numpy(np.concatenate([r.map for r in rows]) if rows else np.zeros(0, np.float32)),
        "correct": torch.tensor([r.correct for r in rows], dtype=torch.float32),
    }
    if rows and all(r.perturbed is not None for r in rows):
        tensors["perturbed"] = torch.from_numpy(np.concatenate([r.perturbed for r in rows]))
    base = directory / f"shard-{index:05d}"
    tmp = base.with_name(f"{base.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"format": STORE_FORMAT, "version": str(STORE_VERSION)})
    os.replace(tmp, base.with_suffix(".safetensors"))
    info = {
        "format": STORE_FORMAT, "version": STORE_VERSION, "start": start, "end": end,
        "ids": [r.id for r in rows], "positions": [r.position for r in rows], "meta": [r.meta for r in rows],
        "map_shapes": [list(r.map_shape) for r in rows], "skipped": list(skipped),
        "dtype": dtype_name(dtype), "hidden_size": hidden,
        "bytes": base.with_suffix(".safetensors").stat().st_size,
        # reductions split across threads round differently: maps made with another thread
        # count differ by ~1e-8, enough for training to end at different weights
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    tmp_json = base.with_name(f"{base.name}.json.{os.getpid()}.tmp")
    tmp_json.write_text(json.dumps(info, default=str))
    os.replace(tmp_json, base.with_suffix(".json"))  # written last: marks the shard done
    return base.with_suffix(".json")


class Shard:
    """The rows of one shard; the in-RAM offsets and JSON, the tensors read on demand.

    :meth:`read` gives :class:`Row` objects for row indices. :class:`FileShard` reads a shard
    file (memory-mapped through ``safetensors.safe_open``, closed after each read, so mapped
    pages do not stay resident); :class:`MemoryShard` holds rows in memory (online training).
    """

    info: dict
    patch_offsets: np.ndarray
    query_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.info["ids"])

    @property
    def has_perturbed(self) -> bool:  # pragma: no cover - subclasses
        raise NotImplementedError

    def read(self, rows: Sequence[int], states: bool = True) -> list[Row]:  # pragma: no cover
        raise NotImplementedError

    def n_patches(self, i: int) -> int:
        return int(self.patch_offsets[i + 1] - self.patch_offsets[i])

    def n_queries(self, i: int) -> int:
        return int(self.query_offsets[i + 1] - self.query_offsets[i])

    def _row(self, i: int, patches, queries, maps: dict) -> Row:
        info = self.info
        return Row(info["ids"][i], int(info["positions"][i]), patches, queries, maps["maps"],
                   tuple(info["map_shapes"][i]), float(self.correct[i]), info["meta"][i], maps.get("perturbed"))  # fmt: skip


class MemoryShard(Shard):
    """Rows held in memory, read like a shard (online training, tests)."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = list(rows)
        self.info = {"ids": [r.id for r in rows], "positions": [r.position for r in rows],
                     "meta": [r.meta for r in rows], "map_shapes": [list(r.map_shape) for r in rows]}  # fmt: skip
        self.patch_offsets = _offsets([r.patches.shape[0] for r in rows]).numpy()
        self.query_offsets = _offsets([r.queries.shape[0] for r in rows]).numpy()
        self.correct = np.array([r.correct for r in rows], dtype=np.float32)
        self.hidden_size = rows[0].patches.shape[1] if rows else 0
        self.dtype = rows[0].patches.dtype if rows else torch.float32

    @property
    def has_perturbed(self) -> bool:
        return bool(self.rows) and all(r.perturbed is not None for r in self.rows)

    def read(self, rows, states=True):
        return [self.rows[i] for i in rows]


class FileShard(Shard):
    """A shard on disk, checked when opened (every problem a DataError naming the file)."""

    def __init__(self, json_path: Path, remedy: str = "") -> None:
        self.json_path = Path(json_path)
        self.path = self.json_path.with_suffix(".safetensors")
        self.remedy = remedy
        from safetensors import SafetensorError

        try:
            self.info = json.loads(self.json_path.read_text())
            self._check_info()
            with self._open() as f:
                self.patch_offsets = f.get_tensor("patch_offsets").numpy()
                self.query_offsets = f.get_tensor("query_offsets").numpy()
                self.correct = f.get_tensor("correct").numpy()
                self._check_tensors(f)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
            self._fail(f"is unreadable ({type(exc).__name__}: {exc})")
        self.hidden_size = int(self.info["hidden_size"])
        self.dtype = STORE_DTYPES[self.info["dtype"]]
        self._perturbed = self._has_perturbed

    def _fail(self, what: str):
        raise DataError(f"FastRM label store shard {self.path} {what}{self.remedy}") from None

    def _open(self):
        from safetensors import safe_open

        return safe_open(str(self.path), framework="pt")

    def _check_info(self) -> None:
        info = self.info
        if not isinstance(info, dict) or info.get("format") != STORE_FORMAT or info.get("version") != STORE_VERSION:
            self._fail(f"has a JSON ({self.json_path.name}) that is not a version-{STORE_VERSION} FastRM label shard")
        n = len(info["ids"])
        if not all(len(info[k]) == n for k in ("positions", "meta", "map_shapes")) or info["dtype"] not in STORE_DTYPES:
            self._fail(f"has an inconsistent JSON {self.json_path.name}")
        size = self.path.stat().st_size
        if size != info["bytes"]:
            self._fail(f"has {size} bytes, its JSON says {info['bytes']} (truncated or rewritten)")

    def _check_tensors(self, f) -> None:
        info, n = self.info, len(self.info["ids"])
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        self._has_perturbed = "perturbed" in shapes
        po, qo = self.patch_offsets, self.query_offsets
        cells = [math.prod(s) for s in info["map_shapes"]]
        problems = []
        if len(po) != n + 1 or len(qo) != n + 1 or len(self.correct) != n:
            problems.append(f"{n} ids but {len(po) - 1} patch offsets, {len(qo) - 1} query offsets, {len(self.correct)} scores")
        elif np.any(np.diff(po) < 0) or np.any(np.diff(qo) < 0) or po[0] != 0 or qo[0] != 0:
            problems.append("offsets that are not increasing from 0")
        elif list(np.diff(po)) != cells:
            problems.append("map shapes that do not match the image-token counts")
        elif shapes["patches"][0] != po[-1] or shapes["queries"][0] != qo[-1] or shapes["maps"] != [po[-1]]:
            problems.append(f"tensors of shapes {shapes} for offsets ending at {po[-1]}, {qo[-1]}")
        elif n and (shapes["patches"][1] != info["hidden_size"] or shapes["queries"][1] != info["hidden_size"]):
            problems.append(f"states of width {shapes['patches'][1]}, its JSON says {info['hidden_size']}")
        elif self._has_perturbed and shapes["perturbed"] != shapes["maps"]:
            problems.append("perturbed maps of another size than the maps")
        if problems:
            self._fail(f"is inconsistent: {problems[0]}")

    @property
    def has_perturbed(self) -> bool:
        return self._perturbed

    def read(self, rows: Sequence[int], states: bool = True) -> list[Row]:
        """Rows ``rows`` (indices into this shard); without ``states`` only maps and scores
        (empty state tensors). Consecutive indices are read as one slice."""
        from safetensors import SafetensorError

        out: list[Row] = []
        po, qo = self.patch_offsets, self.query_offsets
        try:
            with self._open() as f:
                names = ["maps"] + (["perturbed"] if self._perturbed else [])
                slices = {k: f.get_slice(k) for k in names + (["patches", "queries"] if states else [])}
                for a, b in _runs(rows):
                    maps = {k: slices[k][int(po[a]) : int(po[b])].numpy() for k in names}
                    if states:
                        patches = slices["patches"][int(po[a]) : int(po[b])]
                        queries = slices["queries"][int(qo[a]) : int(qo[b])]
                    for i in range(a, b):
                        p0, p1, q0, q1 = po[i] - po[a], po[i + 1] - po[a], qo[i] - qo[a], qo[i + 1] - qo[a]
                        m = {k: v[p0:p1] for k, v in maps.items()}
                        if states:
                            out.append(self._row(i, patches[p0:p1], queries[q0:q1], m))
                        else:
                            empty = torch.zeros(0, self.hidden_size, dtype=self.dtype)
                            out.append(self._row(i, empty, empty, m))
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            self._fail(f"could not be read ({exc})")
        return out


def _runs(rows: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Maximal runs of consecutive indices, in order: [3, 4, 5, 9] -> (3, 6), (9, 10)."""
    start = prev = None
    for r in rows:
        r = int(r)
        if start is None:
            start = prev = r
        elif r == prev + 1:
            prev = r
        else:
            yield start, prev + 1
            start = prev = r
    if start is not None:
        yield start, prev + 1
