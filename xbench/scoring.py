"""Scoring one outcome into a record: the task's answer scores, every map metric on the
method's map and (with ``--control``) on the control map, and the map itself, inline or as a
``maps/<id>.npy`` side file.

A metric that fails on a sample is None there, with its error under ``meta.metric_errors``
(keyed by its column); a bad ground-truth mask spoils localisation only (``meta.mask_error``).
With ``--fail-fast`` any of these stops the run instead (:class:`SampleFailedError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xbench import image_layout
from xbench.api import CONTROL, Generation, Metric, MetricContext, RelevanceMap, Sample
from xbench.batching import describe
from xbench.columns import control_column
from xbench.cost import PhaseTimes
from xbench.errors import XbenchError
from xbench.params import shared
from xbench.pipeline import Outcome
from xbench.records import ErrorRecord, Record, split_pooled

INLINE_MAP_LIMIT = 1024  # grids with more cells go to maps/<id>.npy


class SampleFailedError(XbenchError):
    """A sample failed and ``fail_fast`` stopped the run (the message names sample and stage)."""


class FailPolicy:
    """What a per-sample failure does: nothing (it is recorded) or, with ``fail_fast``, stop the run."""

    def __init__(self, fail_fast: bool) -> None:
        self.fail_fast = fail_fast

    def check(self, sample_id: str, stage: str, message: str, cause: BaseException | None = None) -> None:
        """With ``fail_fast``, raise a :class:`SampleFailedError` naming the sample and the stage."""
        if self.fail_fast:
            raise SampleFailedError(f"sample {sample_id!r} failed at {stage} (--fail-fast): {message}") from cause

    def on_failure(self, outcome: Outcome, cause: BaseException | None) -> None:
        """The hook :func:`xbench.pipeline.generate_explain` calls when a sample fails."""
        self.check(outcome.sample.id, outcome.stage, outcome.error, cause)


class Scorer:
    """Turns outcomes into records for one run (``vlm`` is set once the model is loaded)."""

    def __init__(self, task, metrics: Sequence[Metric], out_dir: Path, seed: int, with_control: bool,
                 policy: FailPolicy, times: PhaseTimes) -> None:  # fmt: skip
        self.task, self.metrics, self.out_dir, self.seed = task, list(metrics), Path(out_dir), seed
        self.with_control, self.policy, self.times = with_control, policy, times
        self.vlm = None

    def safe_record(self, o: Outcome) -> Record | ErrorRecord:
        """:meth:`record`, or an error record when scoring the sample fails."""
        try:
            return self.record(o)
        except SampleFailedError:
            raise
        except Exception as exc:
            message = f"task {self.task.name!r} could not score the answer: {describe(exc)}"
            self.policy.check(o.sample.id, "score", message, exc)
            o.error, o.stage = message, "score"
            return self.record(o)

    def record(self, o: Outcome) -> Record | ErrorRecord:
        s = o.sample
        if o.error is not None:
            return {"id": s.id, "error": o.error, "stage": o.stage, "meta": getattr(s, "meta", {})}
        gen, rmap = o.generation, o.rmap
        context = MetricContext(self.vlm, o.reference, o.reference_error, self.seed,
                                control=o.control, control_error=o.control_error)  # fmt: skip
        record: Record = {
            "id": s.id,
            "question": s.question,
            "gold": s.answers,
            "answer": gen.text,
            "answer_ids": gen.answer_ids,
            "prompt_len": gen.prompt_len,
            "meta": s.meta,
            "scores": self.task.score(s, gen.text),
            "metrics": self._metrics(s, gen, o, context),
            "extras": rmap.extras,
            "generate_ms": o.generate.seconds * 1e3,
            "explain_ms": o.explain.seconds * 1e3,
            "generate_peak_gpu_mib": _mib(o.generate.peak_gpu_bytes),
            "explain_peak_gpu_mib": _mib(o.explain.peak_gpu_bytes),
            "generate_rss_peak_mib": o.generate.rss_peak_mib,
            "explain_rss_peak_mib": o.explain.rss_peak_mib,
            "grid": list(rmap.grid.shape),
            "layout": image_layout.to_record(gen.layout),
        }
        record.update(self._map_fields(s.id, rmap))
        if self.with_control:
            if o.control is not None and o.control.grid.size <= INLINE_MAP_LIMIT:
                record["control_map"] = compact_map(o.control.grid)
            if o.control_error:
                record["control_error"] = o.control_error
        record["metrics"], counts = split_pooled(record["metrics"])
        if counts:
            record["counts"] = counts
        return record

    def _metrics(self, s: Sample, gen: Generation, o: Outcome, context: MetricContext) -> dict[str, float | None]:
        """Every metric on the method's map, then (with a control) each map metric on the control map."""
        with self.times.timed("metrics"):
            self._attach_mask(s)
            values = self._map_metrics(s, gen, o.rmap, context, self.metrics, control=False)
            if self.with_control:
                on_control = [m for m in self.metrics if m.uses_map and CONTROL not in m.needs]
                if o.control is None:
                    values.update({control_column(m.name): None for m in on_control})
                else:
                    values.update(self._map_metrics(s, gen, o.control, context, on_control, control=True))
        return values

    def _attach_mask(self, s: Sample) -> None:
        if s.gt_mask is None:
            try:
                s.gt_mask = self.task.ground_truth_mask(s)
            except Exception as exc:  # a bad mask spoils localisation only, not the record
                s.meta["mask_error"] = describe(exc)

    def _map_metrics(self, sample: Sample, gen: Generation, rmap: RelevanceMap, context: MetricContext,
                     metrics: Sequence[Metric], control: bool) -> dict[str, float | None]:  # fmt: skip
        values: dict[str, float | None] = {}
        for metric in metrics:
            column = control_column(metric.name) if control else metric.name
            try:
                if metric.needs:
                    values[column] = metric.compute(sample, gen, rmap, context)
                else:
                    values[column] = metric.compute(sample, gen, rmap)
            except Exception as exc:
                self.policy.check(sample.id, "metrics", f"metric {metric.name!r} failed: {describe(exc)}", exc)
                values[column] = None
                sample.meta.setdefault("metric_errors", {})[column] = describe(exc)
        return values

    def _map_fields(self, sample_id: str, rmap: RelevanceMap) -> dict[str, Any]:
        """``map`` inline for small grids, else ``map_file`` naming the ``maps/*.npy`` side file."""
        if rmap.grid.size <= INLINE_MAP_LIMIT:
            return {"map": compact_map(rmap.grid)}
        maps_dir = self.out_dir / "maps"
        maps_dir.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", sample_id) + ".npy"
        np.save(maps_dir / name, rmap.grid)
        return {"map_file": f"maps/{name}"}


def compact_map(grid: np.ndarray) -> list:
    """A map for JSON: each value to 7 significant digits (float32 precision, short text)."""
    return [[float(f"{v:.7g}") for v in row] for row in np.asarray(grid, dtype=np.float32).reshape(grid.shape[0], -1)]


def build_metrics(classes: list, params: dict[str, Any]) -> list[Metric]:
    """Instantiate metrics, each with the entries of ``params`` it declares; refuse unused keys."""
    given = shared("metric", [cls.declared_params() for cls in classes], params)
    return [cls(**kw) for cls, kw in zip(classes, given)]


def _mib(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else n_bytes / 2**20
