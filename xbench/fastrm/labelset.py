"""A set of labelled samples: a view over label-store shards (:mod:`xbench.fastrm.store`).

A :class:`LabelSet` keeps in memory only each sample's id, position, meta, answer score and
where it lies (shard, row); states and maps are read from the shards when asked for, so
subsets, filters and concatenations cost no copy of the states. The number of image tokens
may differ between samples: :meth:`LabelSet.batch` pads to the longest with masks, and the
map-valued methods return ``[n, N]`` arrays when every sample has the same map shape, a flat
concatenation ``[sum N_i]`` (sample order) when they differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from xbench.errors import DataError
from xbench.fastrm.store import FileShard, MemoryShard, Row, Shard, dtype_name, row_bytes
from xbench.maps import DEFAULT_TAU, LABEL_DTYPE, binarise_each, normalise_each


#: rows read from a shard at a time (the shard is opened and closed around each read, so at most
#: this many rows' pages are mapped at once)
READ_ROWS = 64


class Batch(NamedTuple):
    """Proxy inputs of a few samples: ``patches [B, N, d]`` float32 (zero-padded to the longest),
    ``queries [B, K, d]``, ``query_mask [B, K]``, ``patch_mask [B, N]`` (None when every sample
    has the same number of image tokens)."""

    patches: torch.Tensor
    queries: torch.Tensor
    query_mask: torch.Tensor
    patch_mask: torch.Tensor | None


def collate(rows: Sequence[Row], device=None) -> Batch:
    """The :class:`Batch` of ``rows``, on ``device`` (default: where the rows are): stacked in the
    store dtype, moved, then cast to float32 there (a bf16 batch crosses to a GPU at half the size)."""
    from xbench.fastrm.proxy import pad_queries, pad_stack

    patches, patch_mask = pad_stack([r.patches for r in rows])
    queries, query_mask = pad_queries([r.queries for r in rows])

    def move(t):
        return None if t is None else t.to(device) if device is not None else t

    return Batch(move(patches).float(), move(queries).float(), move(query_mask), move(patch_mask))


class LabelSet:
    """Labelled samples, row ``i`` = row ``refs[i, 1]`` of ``shards[refs[i, 0]]``."""

    def __init__(self, shards: Sequence[Shard], refs: Any, spec: dict | None = None) -> None:
        self.shards = list(shards)
        self.refs = np.asarray(refs, dtype=np.int64).reshape(-1, 2)
        self.spec = dict(spec or {})
        infos = [s.info for s in self.shards]
        self.ids: list[str] = [infos[s]["ids"][r] for s, r in self.refs]
        self.meta: list[dict] = [infos[s]["meta"][r] for s, r in self.refs]
        self.positions: list[int] = [int(infos[s]["positions"][r]) for s, r in self.refs]
        self.map_shapes: list[tuple[int, ...]] = [tuple(infos[s]["map_shapes"][r]) for s, r in self.refs]
        self.correct = np.array([self.shards[s].correct[r] for s, r in self.refs], dtype=np.float32)

    @classmethod
    def from_rows(cls, rows: Sequence[Row], spec: dict | None = None) -> "LabelSet":
        """A set over rows held in memory (online training, tests)."""
        return cls([MemoryShard(rows)], [(0, i) for i in range(len(rows))], spec)

    @classmethod
    def over(cls, shards: Sequence[Shard], spec: dict | None = None) -> "LabelSet":
        """Every row of ``shards``, in order."""
        return cls(shards, [(s, r) for s, shard in enumerate(shards) for r in range(len(shard))], spec)

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ shape
    @property
    def hidden_size(self) -> int:
        if not len(self):
            raise DataError("no labelled samples")
        return int(self.shards[self.refs[0, 0]].hidden_size)

    @property
    def grid(self) -> tuple[int, ...] | None:
        """The map shape every sample shares, None when they differ (or there is no sample)."""
        shapes = set(self.map_shapes)
        return next(iter(shapes)) if len(shapes) == 1 else None

    @property
    def n_patches(self) -> np.ndarray:
        """``[n]`` image tokens (map cells) per sample."""
        return np.array([int(np.prod(s)) for s in self.map_shapes], dtype=np.int64)

    @property
    def has_perturbed(self) -> bool:
        used = {int(s) for s in self.refs[:, 0]}
        return bool(used) and all(self.shards[s].has_perturbed for s in used)

    def tensor_bytes(self) -> int:
        """Bytes of the states and maps these samples hold in the store's dtype."""
        return sum(r.nbytes for r in self.rows())

    # ------------------------------------------------------------------ reading
    def rows(self, idx: Sequence[int] | None = None, states: bool = True) -> Iterator[Row]:
        """Rows ``idx`` (default all) in order, read lazily up to :data:`READ_ROWS` rows of one
        shard at a time; without ``states``, maps and scores only."""
        idx = range(len(self)) if idx is None else [int(i) for i in idx]
        refs = self.refs[list(idx)] if len(idx) else np.zeros((0, 2), np.int64)
        start = 0
        while start < len(refs):
            stop = start + 1
            while stop < len(refs) and stop - start < READ_ROWS and refs[stop, 0] == refs[start, 0]:
                stop += 1
            yield from self.shards[refs[start, 0]].read(refs[start:stop, 1].tolist(), states=states)
            start = stop

    def batch(self, idx: Sequence[int], device=None) -> Batch:
        """The proxy inputs of rows ``idx`` (:func:`collate`), on ``device``."""
        return collate(list(self.rows(idx)), device)

    def _cells(self, perturbed: bool) -> list[np.ndarray]:
        if perturbed and not self.has_perturbed:
            raise DataError("these labels hold no perturbed maps (labelled without --noise-std)")
        return [r.perturbed if perturbed else r.map for r in self.rows(states=False)]

    def _each(self, fn, perturbed: bool) -> np.ndarray:
        """``fn`` (a row-wise map function of ``[n, N]`` arrays) over the maps: ``[n, N]`` when the
        shapes agree, else the flat concatenation of each map's result."""
        cells = self._cells(perturbed)
        if not cells:
            return fn(np.zeros((0, 1), LABEL_DTYPE))
        if self.grid is not None:
            return fn(np.stack(cells))
        return np.concatenate([fn(c[None])[0] for c in cells])

    @property
    def maps(self) -> np.ndarray:
        """``[n, *grid]`` float32 reference maps (the shapes must agree: else :meth:`flat_maps`)."""
        return self._stacked(False)

    @property
    def perturbed(self) -> np.ndarray | None:
        """``[n, *grid]`` reference maps under pixel noise, None when labelled without noise."""
        return self._stacked(True) if self.has_perturbed else None

    def _stacked(self, perturbed: bool) -> np.ndarray:
        grid = self.grid
        if grid is None and len(self):
            raise DataError(f"the samples' maps have different shapes ({sorted(set(self.map_shapes))[:3]} ...): "
                            "read them with flat_maps()")  # fmt: skip
        cells = self._cells(perturbed)
        return np.stack(cells).reshape(len(self), *grid) if cells else np.zeros((0, 1), LABEL_DTYPE)

    def flat_maps(self, perturbed: bool = False) -> list[np.ndarray]:
        """Each sample's map, flattened (``[N_i]`` float32)."""
        return self._cells(perturbed)

    def targets(self, tau: float = DEFAULT_TAU, perturbed: bool = False) -> np.ndarray:
        """Booleans: each map binarised at ``tau`` (:func:`xbench.maps.binarise_each`), ``[n, N]``
        or flat (see the module docstring)."""
        return self._each(lambda m: binarise_each(m, tau, LABEL_DTYPE), perturbed)

    def normalised(self, perturbed: bool = False) -> np.ndarray:
        """Each map min-max normalised (:func:`xbench.maps.normalise_each`), ``[n, N]`` or flat."""
        return self._each(lambda m: normalise_each(m, LABEL_DTYPE), perturbed)

    # ------------------------------------------------------------------ selections
    def subset(self, idx: Sequence[int]) -> "LabelSet":
        idx = [int(i) for i in idx]
        return LabelSet(self.shards, self.refs[idx] if idx else np.zeros((0, 2)), self.spec)

    def where(self, key: str, values: Sequence[str]) -> "LabelSet":
        """The rows whose ``meta[key]`` is one of ``values``."""
        values = set(values)
        return self.subset([i for i, m in enumerate(self.meta) if m.get(key) in values])

    @classmethod
    def concat(cls, parts: Sequence["LabelSet"]) -> "LabelSet":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise DataError("no labelled samples")
        shards: list[Shard] = []
        where: dict[int, int] = {}  # id(shard) -> its index in ``shards``
        refs = []
        for p in parts:
            for shard in p.shards:
                if id(shard) not in where:
                    where[id(shard)] = len(shards)
                    shards.append(shard)
            refs.extend((where[id(p.shards[s])], int(r)) for s, r in p.refs)
        return cls(shards, refs, parts[0].spec)


def store_figures(labels: LabelSet) -> dict[str, Any]:
    """How much store ``labels`` take: samples, dtype, hidden size, mean image and answer tokens,
    bytes per sample on disk (each shard's safetensors and JSON files shared out over its rows;
    None for rows held in memory) and by the formula :func:`xbench.fastrm.store.row_bytes`."""
    n = len(labels)
    if not n:
        return {"samples": 0}
    shards = labels.shards
    d = labels.hidden_size
    per_shard = np.bincount(labels.refs[:, 0], minlength=len(shards))
    disk = 0.0
    for shard, used in zip(shards, per_shard):
        if used and isinstance(shard, FileShard):
            disk += (shard.path.stat().st_size + shard.json_path.stat().st_size) * used / len(shard)
    on_disk = all(isinstance(shards[s], FileShard) for s in set(labels.refs[:, 0].tolist()))
    n_patch = [shards[s].n_patches(r) for s, r in labels.refs]
    n_query = [shards[s].n_queries(r) for s, r in labels.refs]
    dtype = shards[labels.refs[0, 0]].dtype
    formula = sum(row_bytes(p, q, d, dtype, labels.has_perturbed) for p, q in zip(n_patch, n_query))
    return {
        "samples": n,
        "dtype": dtype_name(dtype),
        "hidden_size": d,
        "image_tokens": float(np.mean(n_patch)),
        "answer_tokens": float(np.mean(n_query)),
        "perturbed_maps": labels.has_perturbed,
        "bytes_per_sample": disk / n if on_disk else None,
        "formula_bytes_per_sample": formula / n,
    }


def describe_store(name: str, labels: LabelSet) -> str:
    """One line of :func:`store_figures` (``xbench fastrm labels`` prints one per set)."""
    f = store_figures(labels)
    if not f["samples"]:
        return f"{name}: no samples"
    maps = "2 maps (reference, perturbed)" if f["perturbed_maps"] else "the map"
    stored = "in memory" if f["bytes_per_sample"] is None else f"{f['bytes_per_sample']:,.0f} bytes/sample stored"
    return (f"{name}: {f['samples']} samples, {stored}; formula ({f['image_tokens']:.1f} image + "
            f"{f['answer_tokens']:.2f} answer tokens) x hidden {f['hidden_size']} x {f['dtype']} + {maps} = "
            f"{f['formula_bytes_per_sample']:,.0f} bytes")  # fmt: skip


def open_store(directory: Path) -> LabelSet:
    """Every sample of a store directory (``shard-*.json`` files and ``spec.json``)."""
    import json

    directory = Path(directory)
    paths = sorted(directory.glob("shard-*.json"))
    if not paths:
        raise DataError(f"{directory} holds no FastRM label shard (shard-*.json)")
    try:
        spec = json.loads((directory / "spec.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"FastRM label store spec {directory / 'spec.json'} is unreadable ({exc})") from None
    return LabelSet.over([FileShard(p) for p in paths], spec)
