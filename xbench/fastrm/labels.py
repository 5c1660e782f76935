"""Training data for FastRM: reference maps plus the hidden states the proxy reads.

For each sample the model answers once (keeping its last-layer hidden states), the
reference method (default ``gradient_relevancy``) explains that answer, and we keep a
:class:`~xbench.fastrm.store.Row`: the image tokens' states ``[N, d]`` and the answer tokens'
query states ``[K, d]`` in the store dtype (the model's unless ``store_dtype`` says otherwise),
the reference map (flat, with its shape), whether the answer was right, and optionally the
reference map under a tiny pixel-noise perturbation (for the noise ceiling). States are cut
and cast on the model's device; only those rows travel to the CPU.

Labels are stored under ``<cache>/labels/<key>/`` in shards (:mod:`xbench.fastrm.store`),
each written as soon as it is full; the key hashes the model hash, task, task parameters and
data hash, split, seed, reference method and its parameters, answer length, noise and store
dtype. Samples come in the task's seeded order, so a store holding the first ``m`` samples
serves any ``n <= m`` and is extended, not recomputed, for ``n > m`` (unless it recorded that
the task has no more). Each shard records the torch thread count it was computed with: the
reference maps depend on it in the last float bits, and a proxy trained on them ends at the
same weights only from labels made with the same count.

:func:`label_rows` makes the same rows without storing them (``xbench fastrm train --online``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from xbench.api import Generation, Sample
from xbench.errors import DataError, ParameterError
from xbench.fastrm.labelset import Batch, LabelSet, collate
from xbench.fastrm.store import DEFAULT_SHARD_BYTES, FileShard, Row, ShardWriter, dtype_name, store_dtype
from xbench.maps import LABEL_DTYPE

__all__ = ["Batch", "LabelSet", "LabelCache", "LABEL_DTYPE", "build_labels", "collate", "label_rows", "label_spec",
           "make_row"]

LABELS_VERSION = 2
DEFAULT_NOISE = 2 / 255  # image intensity units ([0, 1] scale): about two grey levels
#: spec fields recorded beside the labels but left out of the cache key (a model's name may change)
UNKEYED = ("model",)


def label_spec(vlm, task, reference, seed: int, max_new_tokens: int, noise_std: float | None,
               dtype: torch.dtype | None = None) -> dict[str, Any]:  # fmt: skip
    """Everything the labels depend on (its hash is the cache key), and the model's identity."""
    from xbench.fastrm.proxy import model_identity

    return {
        "version": LABELS_VERSION,
        "model_hash": vlm.model_hash,
        "task": task.name,
        "task_params": task.params,
        "data_hash": task.data_hash(),
        "split": task.split,
        "seed": seed,
        "reference": reference.name,
        "reference_params": reference.params,
        "max_new_tokens": max_new_tokens,
        "noise_std": noise_std,
        "store_dtype": dtype_name(dtype if dtype is not None else store_dtype(None, vlm.dtype)),
        "model": model_identity(vlm),
    }


def spec_key(spec: dict) -> str:
    keyed = {k: v for k, v in spec.items() if k not in UNKEYED}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


class LabelCache:
    """One store directory: ``spec.json``, ``shard-NNNNN.safetensors`` / ``.json`` pairs, and
    ``end.json`` once the task ran out of samples (only for tasks with a data hash, whose samples
    cannot change under the same key)."""

    def __init__(self, root: Path, spec: dict) -> None:
        self.spec = spec
        self.dir = Path(root) / "labels" / spec_key(spec)

    @property
    def remedy(self) -> str:
        return f"; delete {self.dir}"

    def shard_paths(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.json"))

    def consumed(self) -> int:
        """How many positions of the task's seeded order the store covers."""
        paths = self.shard_paths()
        return FileShard(paths[-1], self.remedy).info["end"] if paths else 0

    def ended(self) -> int | None:
        """The task's sample count when an earlier call ran out of samples (else None)."""
        path = self.dir / "end.json"
        if self.spec.get("data_hash") is None or not path.exists():
            return None
        try:
            return int(json.loads(path.read_text())["samples"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"FastRM label cache file {path} is unreadable ({exc}){self.remedy}") from None

    def mark_end(self, samples: int) -> None:
        if self.spec.get("data_hash") is None:
            return  # a task without a data hash may gain samples under the same key
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"end.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"samples": samples}))
        os.replace(tmp, self.dir / "end.json")

    def read(self, n: int) -> LabelSet | None:
        """The stored samples of the first ``n`` task positions (None when there is none)."""
        shards, refs = [], []
        for path in self.shard_paths():
            shard = FileShard(path, self.remedy)
            keep = [i for i, pos in enumerate(shard.info["positions"]) if pos < n]
            if keep:
                refs.extend((len(shards), i) for i in keep)
                shards.append(shard)
            if shard.info["end"] >= n:
                break
        return LabelSet(shards, refs, self.spec) if refs else None

    def writer(self, dtype: torch.dtype, shard_bytes: int = DEFAULT_SHARD_BYTES) -> ShardWriter:
        """A writer appending shards after the stored ones."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "spec.json").write_text(json.dumps(self.spec, indent=2, sort_keys=True, default=str))
        return ShardWriter(self.dir, dtype, len(self.shard_paths()), self.consumed(), shard_bytes)


# --------------------------------------------------------------------------- computing labels


def perturb(vlm, gen: Generation, noise_std: float, seed: int) -> Generation:
    """A copy of ``gen`` whose pixel values carry seeded Gaussian noise of ``noise_std``
    image-intensity units, added through the adapter (``vlm.add_pixel_noise``: per colour channel,
    whatever its pixel layout); a layout that cannot tell channels apart is a ParameterError."""
    from xbench.errors import ModelCapabilityError

    digest = hashlib.sha256(f"{seed}:{gen.sample_id}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    try:
        noisy = vlm.add_pixel_noise(gen, noise_std, g)
    except ModelCapabilityError as exc:
        raise ParameterError(f"the noise ceiling (--noise-std) cannot be added: {exc}; pass --noise-std 0") from None
    return dataclasses.replace(gen, pixel_values=noisy, hidden_states=None)


def _answer_score(task, sample: Sample, text: str) -> float:
    scores = task.score(sample, text)
    value = scores.get("accuracy", next(iter(scores.values()), 0.0))
    return float(value)


@dataclasses.dataclass
class _Labeller:
    """How rows are made: the model, task, reference and their settings (one per call)."""

    vlm: Any
    task: Any
    reference: Any
    seed: int
    batch_size: int
    noise_std: float | None
    max_new_tokens: int
    dtype: torch.dtype

    def batches(self, start: int, n: int, bar) -> Iterator[tuple[list[Row], list[dict], int, bool]]:
        """``(rows, skipped, end, exhausted)`` per batch of task positions ``start .. n``
        (``exhausted``: the task had no more samples than those)."""
        stream = islice(self.task.samples(limit=n, seed=self.seed), start, None)
        keep = frozenset(set(self.reference.needs) | {"hidden_states"})
        pos = start
        while pos < n:
            wanted = min(self.batch_size, n - pos)
            block = list(islice(stream, wanted))
            rows, skipped = self._label(block, pos, keep) if block else ([], [])
            pos += len(block)
            bar.update(len(block))
            yield rows, skipped, pos, len(block) < wanted
            if len(block) < wanted:
                return

    def _label(self, block, start: int, keep) -> tuple[list[Row], list[dict]]:
        """Rows of ``block`` (task positions from ``start``) through the one generate -> explain
        path (:func:`xbench.pipeline.generate_explain`); a sample that fails anywhere is skipped
        with its error."""
        from xbench.batching import call_splitting, describe
        from xbench.pipeline import generate_explain

        outcomes = generate_explain(self.vlm, self.task, self.reference, block, self.max_new_tokens, keep)
        noisy: dict[int, Any] = {}
        if self.noise_std:

            def explain_noisy(items):
                gens = [perturb(self.vlm, o.generation, self.noise_std, self.seed) for o in items]
                return self.reference.explain(self.vlm, gens)

            ready = [o for o in outcomes if o.ok]
            if ready:  # a pixel layout the noise cannot be added to fails the command, not each sample
                perturb(self.vlm, ready[0].generation, self.noise_std, self.seed)
            for o, result, _cost in call_splitting(explain_noisy, ready, self.vlm.device):
                noisy[id(o)] = result
        rows: list[Row] = []
        skipped: list[dict] = []
        for position, o in enumerate(outcomes, start=start):
            error = o.error if not o.ok else None
            if error is None and isinstance(noisy.get(id(o)), Exception):
                error = describe(noisy[id(o)])
            if error is None:
                try:
                    rows.append(self._row(o, position, noisy.get(id(o))))
                except DataError as exc:  # a map that does not fit the image tokens: this sample's problem
                    error = str(exc)
            if error is not None:
                skipped.append({"id": o.sample.id, "error": error})
            if o.ok:
                o.sample.image = None  # free the decoded image
        return rows, skipped

    def _row(self, o, position: int, noisy) -> Row:
        sample, gen = o.sample, o.generation
        meta = {**{k: v for k, v in sample.meta.items() if isinstance(v, (str, int, float, bool))}, "answer": gen.text}
        score = _answer_score(self.task, sample, gen.text)
        return make_row(gen, o.rmap, sample.id, position, score, meta, self.dtype, noisy)


def make_row(gen: Generation, rmap, sample_id: str, position: int, correct: float, meta: dict, dtype: torch.dtype,
             noisy=None) -> Row:  # fmt: skip
    """The stored :class:`Row` of one explained generation: its image tokens' and query
    positions' states cut and cast to ``dtype`` where they are (the model's device), then moved
    to the CPU; the reference map ``rmap`` (and ``noisy``, its perturbed twin) flattened with its
    shape. A map without one value per image token is a DataError naming the sample."""
    hs = gen.hidden_states
    grid = np.asarray(rmap.grid, dtype=np.float32)
    row = Row(
        id=sample_id,
        position=position,
        patches=hs[list(gen.image_positions)].to(dtype).cpu(),
        queries=hs[list(gen.query_positions)].to(dtype).cpu(),
        map=grid.reshape(-1),
        map_shape=tuple(grid.shape),
        correct=correct,
        meta=meta,
        perturbed=None if noisy is None else np.asarray(noisy.grid, dtype=np.float32).reshape(-1),
    )
    row.check()
    return row


def _labeller(vlm, task, reference, seed, batch_size, noise_std, max_new_tokens, dtype: str | None) -> _Labeller:
    """The labeller of one call; ``dtype`` a :data:`~xbench.fastrm.store.STORE_DTYPES` name (None: the model's)."""
    return _Labeller(vlm, task, reference, seed, batch_size, noise_std, max_new_tokens or task.max_new_tokens,
                     store_dtype(dtype, vlm.dtype))  # fmt: skip


def build_labels(
    vlm,
    task,
    reference,
    n: int,
    *,
    seed: int = 0,
    cache_root: Path,
    batch_size: int = 16,
    noise_std: float | None = None,
    max_new_tokens: int | None = None,
    store_dtype: str | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> LabelSet:
    """Labels of the first ``n`` samples of ``task`` (seeded order), from the store when present;
    missing ones are labelled and written shard by shard."""
    from tqdm.auto import tqdm

    lab = _labeller(vlm, task, reference, seed, batch_size, noise_std, max_new_tokens, store_dtype)
    cache = LabelCache(cache_root, label_spec(vlm, task, reference, seed, lab.max_new_tokens, noise_std, lab.dtype))
    done, ended = cache.consumed(), cache.ended()
    if done < n and (ended is None or done < ended):
        if log:
            log(f"labelling {n - done} {task.name}/{task.split} samples with {reference.label} -> {cache.dir}")
        writer = cache.writer(lab.dtype, shard_bytes)
        bar = tqdm(total=n - done, desc=f"labels {task.split}", unit="sample", disable=not progress, leave=False)
        for rows, skipped, end, exhausted in lab.batches(done, n, bar):
            writer.add(rows, skipped, end)
            if exhausted:  # the task has fewer samples than asked: later calls need not look again
                writer.close()
                cache.mark_end(end)
        writer.close()
        bar.close()
    labels = cache.read(n)
    if labels is None:
        raise DataError(f"no sample of {task.name}/{task.split} could be labelled (see {cache.dir})")
    return labels


def label_rows(vlm, task, reference, n: int, *, seed: int = 0, batch_size: int = 16, noise_std: float | None = None,
               max_new_tokens: int | None = None, store_dtype: str | None = None,
               progress: bool = True) -> Iterator[Row]:  # fmt: skip
    """The rows :func:`build_labels` would store for the first ``n`` samples, made as they are
    read and never written (``--online``); skipped samples are left out as there."""
    from tqdm.auto import tqdm

    lab = _labeller(vlm, task, reference, seed, batch_size, noise_std, max_new_tokens, store_dtype)
    bar = tqdm(total=n, desc=f"labels {task.split} (online)", unit="sample", disable=not progress, leave=False)
    for rows, _skipped, _end, _exhausted in lab.batches(0, n, bar):
        yield from rows
    bar.close()


def online_spec(vlm, task, reference, seed, max_new_tokens, dtype: str | None) -> dict:
    """The spec of labels made online (what the stored ones would record)."""
    lab = _labeller(vlm, task, reference, seed, 1, None, max_new_tokens, dtype)
    return {**label_spec(vlm, task, reference, seed, lab.max_new_tokens, None, lab.dtype), "online": True}
