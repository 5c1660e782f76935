"""Training data for FastRM: reference maps plus the hidden states the proxy reads.

For each sample the model answers once (keeping its last-layer hidden states), the
reference method (default ``gradient_relevancy``) explains that answer, and we keep:
the image tokens' states ``[N, d]``, the answer tokens' query states ``[K, d]``, the
reference map ``[h, w]`` as the method returned it, whether the answer was right, and
optionally the reference map under a tiny pixel-noise perturbation (for the noise ceiling).

Labels are cached on disk under ``<cache>/labels/<key>/`` as safetensors chunks plus JSON
(never pickle); the key hashes the model hash, task, task parameters and data hash, split,
seed, reference method and its parameters, answer length and noise. Samples come in the
task's seeded order, so a cache holding the first ``m`` samples serves any ``n <= m`` and
is extended, not recomputed, for ``n > m`` (unless it recorded that the task has no more).
Each chunk records the torch thread count it was computed with: the reference maps depend on
it in the last float bits, and a proxy trained on them ends at the same weights only from
labels made with the same count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from xbench.api import Generation, Sample
from xbench.errors import DataError
from xbench.maps import DEFAULT_TAU, LABEL_DTYPE, binarise_each

LABELS_VERSION = 1
DEFAULT_NOISE = 2 / 255  # image intensity units ([0, 1] scale): about two grey levels


@dataclass
class LabelSet:
    """Cached features and reference maps of ``n`` samples (row ``i`` = ``ids[i]``)."""

    ids: list[str]
    patches: torch.Tensor  # [n, N, d] float32
    queries: torch.Tensor  # [sum K_i, d] float32
    offsets: torch.Tensor  # [n + 1] int64: sample i's queries are queries[offsets[i]:offsets[i+1]]
    maps: np.ndarray  # [n, h, w] float32 reference maps
    correct: np.ndarray  # [n] float32 answer score (1 = right)
    meta: list[dict[str, Any]]
    perturbed: np.ndarray | None = None  # [n, h, w] reference maps under pixel noise
    spec: dict[str, Any] = field(default_factory=dict)
    positions: list[int] = field(default_factory=list)  # each row's place in the task's seeded order

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.maps.shape[1:])

    def targets(self, tau: float = DEFAULT_TAU) -> np.ndarray:
        """``[n, N]`` booleans: the reference maps binarised at ``tau`` (:func:`xbench.maps.binarise_each`)."""
        return binarise_each(self.maps, tau, LABEL_DTYPE)

    def batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(patches [B, N, d], queries [B, K, d], mask [B, K])`` for rows ``idx``."""
        from xbench.fastrm.proxy import pad_queries

        idx = [int(i) for i in idx]
        qs = [self.queries[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        return (self.patches[idx],) + pad_queries(qs)

    def subset(self, idx: Sequence[int]) -> "LabelSet":
        idx = [int(i) for i in idx]
        qs = [self.queries[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        lengths = torch.tensor([0] + [len(q) for q in qs])
        return LabelSet(
            ids=[self.ids[i] for i in idx],
            patches=self.patches[idx],
            queries=torch.cat(qs) if qs else self.queries[:0],
            offsets=lengths.cumsum(0),
            maps=self.maps[idx],
            correct=self.correct[idx],
            meta=[self.meta[i] for i in idx],
            perturbed=None if self.perturbed is None else self.perturbed[idx],
            spec=self.spec,
            positions=[self.positions[i] for i in idx] if self.positions else [],
        )

    def where(self, key: str, values: Sequence[str]) -> "LabelSet":
        """The rows whose ``meta[key]`` is one of ``values``."""
        values = set(values)
        return self.subset([i for i, m in enumerate(self.meta) if m.get(key) in values])

    @classmethod
    def concat(cls, parts: Sequence["LabelSet"]) -> "LabelSet":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise DataError("no labelled samples")
        offsets = [parts[0].offsets]
        for p in parts[1:]:
            offsets.append(p.offsets[1:] + offsets[-1][-1])
        perturbed = None if any(p.perturbed is None for p in parts) else np.concatenate([p.perturbed for p in parts])
        return cls(
            ids=[i for p in parts for i in p.ids],
            patches=torch.cat([p.patches for p in parts]),
            queries=torch.cat([p.queries for p in parts]),
            offsets=torch.cat(offsets),
            maps=np.concatenate([p.maps for p in parts]),
            correct=np.concatenate([p.correct for p in parts]),
            meta=[m for p in parts for m in p.meta],
            perturbed=perturbed,
            spec=parts[0].spec,
            positions=[q for p in parts for q in p.positions] if all(p.positions for p in parts) else [],
        )


# --------------------------------------------------------------------------- cache


def label_spec(vlm, task, reference, seed: int, max_new_tokens: int, noise_std: float | None) -> dict[str, Any]:
    """Everything the labels depend on (its hash is the cache key)."""
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
    }


def spec_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class LabelCache:
    """One cache directory: ``spec.json``, ``chunk-NNNNN.safetensors`` / ``.json`` pairs, and
    ``end.json`` once the task ran out of samples (only for tasks with a data hash, whose samples
    cannot change under the same key)."""

    def __init__(self, root: Path, spec: dict) -> None:
        self.spec = spec
        self.dir = Path(root) / "labels" / spec_key(spec)

    def chunks(self) -> list[Path]:
        return sorted(self.dir.glob("chunk-*.json"))

    def consumed(self) -> int:
        """How many positions of the task's seeded order the cache covers."""
        chunks = self.chunks()
        return json.loads(chunks[-1].read_text())["end"] if chunks else 0

    def ended(self) -> int | None:
        """The task's sample count when an earlier call ran out of samples (else None)."""
        path = self.dir / "end.json"
        if self.spec.get("data_hash") is None or not path.exists():
            return None
        try:
            return int(json.loads(path.read_text())["samples"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"FastRM label cache file {path} is unreadable ({exc}); delete {self.dir}") from None

    def mark_end(self, samples: int) -> None:
        if self.spec.get("data_hash") is None:
            return  # a task without a data hash may gain samples under the same key
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"end.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"samples": samples}))
        os.replace(tmp, self.dir / "end.json")

    def read(self, n: int) -> LabelSet | None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        parts = []
        for meta_path in self.chunks():
            try:
                info = json.loads(meta_path.read_text())
                arrays = load_file(str(meta_path.with_suffix(".safetensors")))
            except (OSError, ValueError, SafetensorError) as exc:
                raise DataError(
                    f"FastRM label cache chunk {meta_path} is unreadable ({exc}); delete {self.dir}"
                ) from None
            part = _chunk_to_set(arrays, info, self.spec)
            keep = [i for i, pos in enumerate(info["positions"]) if pos < n]
            parts.append(part.subset(keep) if len(keep) < len(part) else part)
            if info["end"] >= n:
                break
        parts = [p for p in parts if len(p)]
        return LabelSet.concat(parts) if parts else None

    def write(self, index: int, start: int, end: int, rows: list[dict], skipped: list[dict]) -> None:
        from safetensors.numpy import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "spec.json").write_text(json.dumps(self.spec, indent=2, sort_keys=True, default=str))
        base = self.dir / f"chunk-{index:05d}"
        arrays = {}
        if rows:
            arrays = {
                "patches": np.stack([r["patches"] for r in rows]).astype(np.float32),
                "queries": np.concatenate([r["queries"] for r in rows]).astype(np.float32),
                "lengths": np.array([len(r["queries"]) for r in rows], dtype=np.int64),
                "maps": np.stack([r["map"] for r in rows]).astype(np.float32),
                "correct": np.array([r["correct"] for r in rows], dtype=np.float32),
            }
            if all(r.get("perturbed") is not None for r in rows):
                arrays["perturbed"] = np.stack([r["perturbed"] for r in rows]).astype(np.float32)
        tmp = base.with_name(base.name + f".{os.getpid()}.tmp")
        save_file(arrays, str(tmp))
        os.replace(tmp, base.with_suffix(".safetensors"))
        info = {
            "start": start,
            "end": end,
            "ids": [r["id"] for r in rows],
            "positions": [r["position"] for r in rows],
            "meta": [r["meta"] for r in rows],
            "skipped": skipped,
            # reductions split across threads round differently: maps made with another thread
            # count differ by ~1e-8, enough for training to end at different weights
            "torch_threads": torch.get_num_threads(),
        }
        base.with_suffix(".json").write_text(json.dumps(info, default=str))  # written last: marks the chunk done


def _chunk_to_set(arrays: dict, info: dict, spec: dict) -> LabelSet:
    if not info["ids"]:
        empty = torch.zeros(0)
        return LabelSet(
            [],
            empty,
            empty,
            torch.zeros(1, dtype=torch.long),
            np.zeros((0, 1, 1), np.float32),
            np.zeros(0, np.float32),
            [],
            None,
            spec,
        )
    lengths = torch.from_numpy(arrays["lengths"])
    return LabelSet(
        ids=list(info["ids"]),
        patches=torch.from_numpy(arrays["patches"]),
        queries=torch.from_numpy(arrays["queries"]),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        maps=arrays["maps"],
        correct=arrays["correct"],
        meta=list(info["meta"]),
        perturbed=arrays.get("perturbed"),
        spec=spec,
        positions=list(info["positions"]),
    )


# --------------------------------------------------------------------------- computing labels


def perturb(gen: Generation, noise_std: float, seed: int, image_std: Sequence[float] | None) -> Generation:
    """A copy of ``gen`` whose pixel values carry seeded Gaussian noise of ``noise_std``
    image-intensity units (converted by the processor's per-channel ``image_std``)."""
    pv = gen.pixel_values
    digest = hashlib.sha256(f"{seed}:{gen.sample_id}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    noise = torch.randn(pv.shape, generator=g, dtype=torch.float32)
    std = torch.tensor(image_std if image_std is not None else [1.0] * pv.shape[1], dtype=torch.float32)
    noise = noise * (noise_std / std).view(1, -1, 1, 1)
    return dataclasses.replace(gen, pixel_values=(pv.float() + noise.to(pv.device)).to(pv.dtype), hidden_states=None)


def _answer_score(task, sample: Sample, text: str) -> float:
    scores = task.score(sample, text)
    value = scores.get("accuracy", next(iter(scores.values()), 0.0))
    return float(value)


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
    chunk_size: int = 512,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> LabelSet:
    """Labels of the first ``n`` samples of ``task`` (seeded order), from the cache when present."""
    from tqdm.auto import tqdm

    max_new_tokens = max_new_tokens or task.max_new_tokens
    spec = label_spec(vlm, task, reference, seed, max_new_tokens, noise_std)
    cache = LabelCache(cache_root, spec)
    done, ended = cache.consumed(), cache.ended()
    if done < n and (ended is None or done < ended):
        keep = frozenset(set(reference.needs) | {"hidden_states"})
        image_std = vlm.image_std
        index = len(cache.chunks())
        if log:
            log(f"labelling {n - done} {task.name}/{task.split} samples with {reference.label} -> {cache.dir}")
        stream = islice(task.samples(limit=n, seed=seed), done, None)
        bar = tqdm(total=n - done, desc=f"labels {task.split}", unit="sample", disable=not progress, leave=False)
        pos = done
        while pos < n:
            block = list(islice(stream, min(chunk_size, n - pos)))
            if not block:
                cache.mark_end(pos)  # the task has fewer samples than asked: later calls need not look again
                break
            rows, skipped = _label_block(vlm, task, reference, block, pos, keep, max_new_tokens, batch_size,
                                         noise_std, seed, image_std, bar)  # fmt: skip
            cache.write(index, pos, pos + len(block), rows, skipped)
            index += 1
            pos += len(block)
            if len(block) < chunk_size and pos < n:
                cache.mark_end(pos)  # the task has fewer samples than asked
                break
        bar.close()
    labels = cache.read(n)
    if labels is None:
        raise DataError(f"no sample of {task.name}/{task.split} could be labelled (see {cache.dir})")
    return labels


def _label_block(vlm, task, reference, block, start, keep, max_new_tokens, batch_size, noise_std, seed,
                 image_std, bar):  # fmt: skip
    """Label rows of ``block`` (task positions from ``start``) through the one generate -> explain
    path (:func:`xbench.pipeline.generate_explain`); a sample that fails anywhere is skipped with its error."""
    from xbench.batching import call_splitting, describe
    from xbench.pipeline import generate_explain

    rows: list[dict] = []
    skipped: list[dict] = []
    for b in range(0, len(block), batch_size):
        chunk = block[b : b + batch_size]
        outcomes = generate_explain(vlm, task, reference, chunk, max_new_tokens, keep)
        explained = [o for o in outcomes if o.ok]
        noisy: dict[int, Any] = {}
        if noise_std:

            def explain_noisy(items):
                return reference.explain(vlm, [perturb(o.generation, noise_std, seed, image_std) for o in items])

            for o, result, _cost in call_splitting(explain_noisy, explained, vlm.device):
                noisy[id(o)] = result
        for position, o in enumerate(outcomes, start=start + b):
            error = o.error if not o.ok else None
            if error is None and isinstance(noisy.get(id(o)), Exception):
                error = describe(noisy[id(o)])
            if error is not None:
                skipped.append({"id": o.sample.id, "error": error})
                continue
            rows.append(_label_row(task, o, position, noisy.get(id(o))))
            o.sample.image = None  # free the decoded image
        bar.update(len(chunk))
    return rows, skipped


def _label_row(task, o, position: int, noisy) -> dict:
    gen, sample = o.generation, o.sample
    hs = gen.hidden_states.float().cpu()
    return {
        "id": sample.id,
        "position": position,
        "patches": hs[gen.image_positions].numpy(),
        "queries": hs[gen.query_positions].numpy(),
        "map": np.asarray(o.rmap.grid, dtype=np.float32),
        "perturbed": None if noisy is None else np.asarray(noisy.grid, dtype=np.float32),
        "correct": _answer_score(task, sample, gen.text),
        "meta": {
            **{k: v for k, v in sample.meta.items() if isinstance(v, (str, int, float, bool))},
            "answer": gen.text,
        },
    }
