"""The run loop: for each batch, generate -> explain (timed) -> companions -> score -> append records.

No method, task or model name appears here: everything comes from the registries.
A failure inside a batch is retried on its halves down to single samples (this also
absorbs CUDA out-of-memory); what still fails becomes a per-sample error record and
the run goes on (``fail_fast`` stops instead, with a :class:`SampleFailedError` naming
the sample and the stage).

Companion maps (:mod:`xbench.companions`: the reference for metrics that need one, the
``--control`` map) are made after the timed explain. Metrics declaring ``needs`` get a
:class:`~xbench.api.MetricContext`; each metric is also computed on the control map
(column ``name[control]``). The summary gives every metric a seeded 95% bootstrap interval
over samples (:mod:`xbench.stats`).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from xbench import companions, cost, provenance, stats
from xbench.api import Generation, MetricContext, RelevanceMap, Sample, SampleError
from xbench.errors import MapValidationError, ParameterError, RunDirectoryError, XbenchError
from xbench.models import load_vlm
from xbench.params import shared
from xbench.plugins import XbenchPlugins, default
from xbench.records import SAMPLES, SUMMARY, RecordWriter, iter_records, write_json_atomic

DEFAULT_TASK = "easyvqa"
DEFAULT_MODEL = "tiny-llava-easyvqa"
DEFAULT_REFERENCE = "gradient_relevancy"
INLINE_MAP_LIMIT = 1024  # grids with more cells go to maps/<id>.npy
CONTROL = "[control]"  # suffix of a metric computed on the control map


class SampleFailedError(XbenchError):
    """A sample failed and ``fail_fast`` stopped the run (the message names sample and stage)."""


@dataclass
class RunConfig:
    method: str
    task: str = DEFAULT_TASK
    model: str = DEFAULT_MODEL
    limit: int | None = None
    batch_size: int = 4
    seed: int = 0
    out: Path | None = None
    resume: bool = False
    split: str | None = None
    data_dir: str | None = None
    method_params: dict[str, Any] = field(default_factory=dict)
    task_params: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] | None = None  # None: every registered metric
    device: str | None = None
    dtype: str | None = None
    max_new_tokens: int | None = None
    warmup: int = 1
    fail_fast: bool = False
    progress: bool = True
    metric_params: dict[str, Any] = field(default_factory=dict)  # given to each metric that declares the key
    reference: str = DEFAULT_REFERENCE  # method whose maps agreement metrics compare with
    reference_params: dict[str, Any] = field(default_factory=dict)
    reference_run: Path | None = None  # read the reference maps from this earlier run instead
    control: str | None = None  # "randomized": also explain on a random-weight copy of the model

    def out_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.model).name)
        return Path("runs") / f"{self.method}-{self.task}-{slug}-{provenance.now().replace(':', '')}"


@dataclass
class Outcome:
    """A sample's path through one batch: its generation, map and costs, or an error."""

    sample: Sample | SampleError
    generation: Generation | None = None
    rmap: RelevanceMap | None = None
    generate_s: float = 0.0
    explain_s: float = 0.0
    generate_peak_gpu: int | None = None  # bytes; None off-GPU
    explain_peak_gpu: int | None = None
    error: str | None = None
    stage: str | None = None
    reference: RelevanceMap | None = None
    reference_error: str | None = None
    control: RelevanceMap | None = None
    control_error: str | None = None


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batched(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def call_splitting(fn: Callable[[list], list], items: list, device):
    """``fn(items)`` timed; on failure retried on halves down to single items.

    Yields ``(item, result | Exception, seconds_per_item, peak_gpu_bytes)``; an exception
    is yielded only for a single item that failed on its own.
    """
    if not items:  # every sample of the batch failed earlier (e.g. unreadable images)
        return
    try:
        with cost.measure(device) as m:
            results = fn(items)
        if len(results) != len(items):
            raise XbenchError(f"returned {len(results)} results for {len(items)} inputs")
    except Exception as exc:
        if len(items) == 1:
            yield items[0], exc, 0.0, None
            return
        if _is_oom(exc):
            _free_cuda()
        half = len(items) // 2
        yield from call_splitting(fn, items[:half], device)
        yield from call_splitting(fn, items[half:], device)
        return
    for item, result in zip(items, results):
        yield item, result, m.seconds / len(items), m.peak_gpu_bytes


def _is_oom(exc: Exception) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, XbenchError) else f"{type(exc).__name__}: {exc}"


class Run:
    """One model x one task x one method, streaming records into ``out_dir``."""

    def __init__(self, config: RunConfig, plugins: XbenchPlugins | None = None) -> None:
        self.config = config
        self.plugins = plugins or default()
        reg = self.plugins.registries
        if config.warmup < 0:
            raise ParameterError(f"warmup must be 0 or more batches, got {config.warmup}")
        if not 0 <= config.seed < 2**32:
            raise ParameterError(f"seed must be between 0 and 2**32 - 1 (numpy's range), got {config.seed}")
        method_cls, task_cls = reg.methods.get(config.method), reg.tasks.get(config.task)
        self.method = method_cls(**config.method_params)
        self.method.seed = config.seed
        self.task = task_cls(config.split, config.data_dir, **config.task_params)
        metric_names = config.metrics if config.metrics is not None else reg.metrics.names()
        self.metrics = build_metrics([reg.metrics.get(n) for n in metric_names], config.metric_params)
        needs_reference = any("reference" in m.needs for m in self.metrics)
        self.reference = companions.build_reference(config, reg, self.method) if needs_reference else None
        self.control = companions.build_control(config, reg, self.method)
        self.out_dir = config.out_dir()
        self.max_new_tokens = config.max_new_tokens or self.task.max_new_tokens
        self.vlm = None

    # ---------------------------------------------------------------- top level
    def execute(self) -> dict:
        cfg = self.config
        records_path = self._prepare_out_dir()
        done = {r["id"] for r in iter_records(records_path, repair=True)}
        seed_everything(cfg.seed)
        started = provenance.now()
        self.vlm = load_vlm(cfg.model, self.plugins.registries, needs=self.method.needs, device=cfg.device, dtype=cfg.dtype)
        self.method.check(self.vlm)
        for source in (self.reference, self.control):
            if source is not None:
                source.bind(self.vlm, self.task)
        run_info = {
            "run_id": self.out_dir.name,
            "out_dir": str(self.out_dir),
            "method": cfg.method,
            "task": cfg.task,
            "model": self.vlm.name,
            "config": self._config_dict(),
        }
        self.plugins.hook.xbench_run_started(run=run_info)
        pending = (s for s in self.task.samples(cfg.limit, cfg.seed) if s.id not in done)
        total = None if cfg.limit is None else max(cfg.limit - len(done), 0)
        with RecordWriter(records_path) as writer, _progress(cfg.progress, total, self.method.name) as bar:
            for i, batch in enumerate(batched(pending, cfg.batch_size)):
                if i < cfg.warmup:
                    self._warm_up(batch)
                for outcome in self.process(batch):
                    record = self._safe_record(outcome)
                    writer.append(record)
                    self.plugins.hook.xbench_sample_recorded(run=run_info, record=record)
                    bar.update(1)
        # maps are left out: memory stays flat in the number of samples (maps are the bulk of a record)
        summary = self.summarise([_without_map(r) for r in iter_records(records_path)], started)
        write_json_atomic(self.out_dir / SUMMARY, summary)
        self.plugins.hook.xbench_run_finished(run=run_info, summary=summary)
        return summary

    def _prepare_out_dir(self) -> Path:
        path = self.out_dir / SAMPLES
        if path.exists() and path.stat().st_size > 0 and not self.config.resume:
            raise RunDirectoryError(
                f"{self.out_dir} already holds records; pass --resume to continue it or choose another --out"
            )
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(f"cannot create the run directory {self.out_dir}: {exc}") from None
        return path

    def _warm_up(self, batch: list) -> None:
        """One untimed generate + explain on the batch's usable samples.

        Errors are ignored here: :meth:`process` meets them again and records (or, with
        ``fail_fast``, raises) them with the sample they belong to.
        """
        usable = [s for s in batch if isinstance(s, Sample)]
        try:
            usable = [s for s in usable if s.load_image() is not None]
            if usable:
                gens = self.vlm.generate(usable, [self.task.prompt(s) for s in usable], self.max_new_tokens, self.method.needs)
                self.method.explain(self.vlm, gens)
        except Exception:
            pass

    # ---------------------------------------------------------------- one batch
    def process(self, batch: Sequence[Sample | SampleError]) -> list[Outcome]:
        """Generate, explain and validate a batch; every input gets exactly one outcome."""
        outcomes = {id(s): Outcome(s) for s in batch}
        ready = []
        for s in batch:
            if isinstance(s, SampleError):
                self._fail(outcomes[id(s)], s.error, "data")
                continue
            try:
                s.load_image()
                ready.append(s)
            except Exception as exc:
                self._fail(outcomes[id(s)], describe(exc), "image", exc)

        def generate(samples):
            return self.vlm.generate(samples, [self.task.prompt(s) for s in samples], self.max_new_tokens, self.method.needs)

        generated = []
        for s, result, secs, peak in call_splitting(generate, ready, self.vlm.device):
            o = outcomes[id(s)]
            if isinstance(result, Exception):
                self._fail(o, f"generation failed: {describe(result)}", "generate", result)
            else:
                o.generation, o.generate_s, o.generate_peak_gpu = result, secs, peak
                generated.append(o)

        def explain(items):
            return self.method.explain(self.vlm, [o.generation for o in items])

        for o, result, secs, peak in call_splitting(explain, generated, self.vlm.device):
            if isinstance(result, Exception):
                self._fail(o, f"method {self.method.name!r} failed: {describe(result)}", "explain", result)
                continue
            try:
                if not isinstance(result, RelevanceMap):
                    raise MapValidationError(
                        f"method {self.method.name!r} returned a {type(result).__name__}, not a RelevanceMap"
                    )
                o.rmap = result.validate(o.generation.grid, self.method.name)
            except XbenchError as exc:
                self._fail(o, str(exc), "explain", exc)
                continue
            o.explain_s, o.explain_peak_gpu = secs, peak
        self.add_companions([o for o in generated if o.rmap is not None])
        return [outcomes[id(s)] for s in batch]

    def add_companions(self, explained: list[Outcome]) -> None:
        """Reference and control maps for the explained outcomes (untimed; failures kept per sample)."""
        for field_name, source in (("reference", self.reference), ("control", self.control)):
            if source is None:
                continue

            def make(items, source=source):
                return source.maps(self.vlm, [o.generation for o in items], [o.rmap for o in items])

            for o, result, _, _ in call_splitting(make, explained, self.vlm.device):
                if not isinstance(result, Exception):
                    try:
                        setattr(o, field_name, result.validate(o.generation.grid, source.label))
                        continue
                    except Exception as exc:
                        result = exc
                message = f"{source.label} failed: {describe(result)}"
                self._stop_if_fail_fast(o.sample.id, field_name, message, result)
                setattr(o, f"{field_name}_error", message)

    def _fail(self, outcome: Outcome, message: str, stage: str, cause: BaseException | None = None) -> None:
        """Mark ``outcome`` failed; with ``fail_fast`` stop the run instead."""
        self._stop_if_fail_fast(outcome.sample.id, stage, message, cause)
        outcome.error, outcome.stage = message, stage

    def _stop_if_fail_fast(self, sample_id: str, stage: str, message: str, cause: BaseException | None) -> None:
        """With ``fail_fast``, a failure anywhere stops the run: a :class:`SampleFailedError` naming
        the sample and the stage."""
        if self.config.fail_fast:
            raise SampleFailedError(f"sample {sample_id!r} failed at {stage} (--fail-fast): {message}") from cause

    # ---------------------------------------------------------------- records
    def _safe_record(self, o: Outcome) -> dict:
        """:meth:`record`, or an error record when scoring the sample fails."""
        try:
            return self.record(o)
        except SampleFailedError:
            raise
        except Exception as exc:
            self._fail(o, f"task {self.task.name!r} could not score the answer: {describe(exc)}", "score", exc)
            return self.record(o)

    def record(self, o: Outcome) -> dict:
        s = o.sample
        if o.error is not None:
            return {"id": s.id, "error": o.error, "stage": o.stage, "meta": getattr(s, "meta", {})}
        gen, rmap = o.generation, o.rmap
        context = MetricContext(self.vlm, o.reference, o.reference_error, self.config.seed)
        record = {
            "id": s.id,
            "question": s.question,
            "gold": s.answers,
            "answer": gen.text,
            "answer_ids": gen.answer_ids,
            "prompt_len": gen.prompt_len,
            "meta": s.meta,
            "scores": self.task.score(s, gen.text),
            "metrics": self._map_metrics(s, gen, rmap, context),
            "extras": rmap.extras,
            "generate_ms": o.generate_s * 1e3,
            "explain_ms": o.explain_s * 1e3,
            "generate_peak_gpu_mib": _mib(o.generate_peak_gpu),
            "explain_peak_gpu_mib": _mib(o.explain_peak_gpu),
            "grid": list(rmap.grid.shape),
        }
        if rmap.grid.size <= INLINE_MAP_LIMIT:
            record["map"] = compact_map(rmap.grid)
        else:
            maps_dir = self.out_dir / "maps"
            maps_dir.mkdir(exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", s.id) + ".npy"
            np.save(maps_dir / name, rmap.grid)
            record["map_file"] = f"maps/{name}"
        if self.control is not None:
            record["metrics"].update(self._control_metrics(s, gen, o, context))
            if o.control is not None and o.control.grid.size <= INLINE_MAP_LIMIT:
                record["control_map"] = compact_map(o.control.grid)
            if o.control_error:
                record["control_error"] = o.control_error
        return record

    def _control_metrics(self, sample: Sample, gen: Generation, o: Outcome, context: MetricContext) -> dict:
        """Each map-dependent metric on the control map, as ``name[control]``."""
        metrics = [m for m in self.metrics if m.uses_map]
        if o.control is None:
            return {m.name + CONTROL: None for m in metrics}
        values = self._map_metrics(sample, gen, o.control, context, metrics, CONTROL)
        return {name + CONTROL: value for name, value in values.items()}

    def _map_metrics(
        self, sample: Sample, gen: Generation, rmap: RelevanceMap, context: MetricContext, metrics=None, suffix=""
    ) -> dict:
        if sample.gt_mask is None:
            try:
                sample.gt_mask = self.task.ground_truth_mask(sample)
            except Exception as exc:  # a bad mask spoils localisation only, not the record
                sample.meta["mask_error"] = describe(exc)
        values = {}
        for metric in self.metrics if metrics is None else metrics:
            try:
                if metric.needs:
                    values[metric.name] = metric.compute(sample, gen, rmap, context)
                else:
                    values[metric.name] = metric.compute(sample, gen, rmap)
            except Exception as exc:
                self._stop_if_fail_fast(sample.id, "metrics", f"metric {metric.name!r} failed: {describe(exc)}", exc)
                values[metric.name] = None
                sample.meta.setdefault("metric_errors", {})[metric.name + suffix] = describe(exc)
        return values

    # ---------------------------------------------------------------- summary
    def summarise(self, records: list[dict], started: str) -> dict:
        ok = [r for r in records if "error" not in r]
        errors = [r for r in records if "error" in r]
        seed = self.config.seed
        metrics: dict[str, dict] = {}
        answer_ci = stats.bootstrap(lambda idx: self.task.aggregate([ok[i] for i in idx]), len(ok), seed=seed)
        for name, value in self.task.aggregate(ok).items():
            base = name.split("[", 1)[0]
            direction = self.task.answer_metrics.get(base, True)
            metrics[name] = _metric(value, len(ok), "answer", direction, answer_ci.get(name))
        for metric in self.metrics:
            for column in self._columns(metric):
                entry = self._summarise_metric(metric, column, ok)
                if entry is not None:
                    metrics[column] = entry
        for key in ("explain_ms", "generate_ms"):
            values = np.array([r[key] for r in ok], dtype=float)
            pct = cost.percentiles(values.tolist())
            cis = stats.bootstrap(lambda idx: cost.percentiles(values[idx].tolist()), len(ok), seed=seed)
            for p in ("p50", "p95"):
                if pct[p] is not None:
                    metrics[f"{key}_{p}"] = _metric(pct[p], len(ok), "cost", False, cis.get(p))
        for key in ("generate_peak_gpu_mib", "explain_peak_gpu_mib"):
            gpu = [r[key] for r in ok if r[key] is not None]
            metrics[key] = _metric(max(gpu) if gpu else None, len(gpu), "cost", False)
        metrics["peak_rss_mib"] = _metric(cost.peak_rss_mib(), 1, "cost", False)
        stages: dict[str, int] = {}
        for r in errors:
            stages[r.get("stage", "?")] = stages.get(r.get("stage", "?"), 0) + 1
        vlm = self.vlm
        return {
            "run_id": self.out_dir.name,
            "method": {"name": self.method.name, "label": self.method.label, "params": self.method.params},
            "task": {
                "name": self.task.name,
                "split": self.task.split,
                "params": self.task.params,
                "data_hash": self.task.data_hash(),
            },
            "model": {
                "id": vlm.name,
                "config_hash": vlm.config_hash,
                "model_hash": vlm.model_hash,
                "dtype": str(vlm.dtype).replace("torch.", ""),
                "attn_implementation": getattr(vlm, "attn_implementation", None),
            },
            "n_records": len(records),
            "n_ok": len(ok),
            "n_errors": len(errors),
            "errors_by_stage": stages,
            "metrics": metrics,
            "bootstrap": {"resamples": stats.N_RESAMPLES, "level": stats.LEVEL, "method": "percentile", "seed": seed},
            "metric_params": {m.name: m.params for m in self.metrics if m.params},
            "reference": self.reference.describe() if self.reference else None,
            "control": self.control.describe() if self.control else None,
            "config": self._config_dict(),
            "provenance": {**provenance.environment(vlm.device), "started": started, "finished": provenance.now()},
        }

    def _summarise_metric(self, metric, column: str, ok: list[dict]) -> dict | None:
        """The run's value of one metric column with its bootstrap interval (None: never applied)."""
        vals = [r["metrics"].get(column) for r in ok]
        value = metric.aggregate(vals, ok)
        if value is None:
            return None

        def statistic(idx):
            return {"v": metric.aggregate([vals[i] for i in idx], [ok[i] for i in idx])}

        ci = stats.bootstrap(statistic, len(ok), seed=self.config.seed)["v"]
        n = sum(v is not None for v in vals)
        if column == metric.name:
            return _metric(value, n, metric.category, metric.higher_is_better, ci)
        return {**_metric(value, n, metric.category, None, ci), "control_of": metric.name}

    def _columns(self, metric) -> list[str]:
        return [metric.name] + ([metric.name + CONTROL] if self.control is not None and metric.uses_map else [])

    def _config_dict(self) -> dict:
        d = asdict(self.config)
        d["out"] = str(self.out_dir)
        d["max_new_tokens"] = self.max_new_tokens
        return d


def _without_map(record: dict) -> dict:
    """The record without its maps (the summary never reads them; they dominate its size)."""
    record.pop("map", None)
    record.pop("control_map", None)
    return record


def _metric(value, n: int, category: str, higher_is_better: bool | None, ci95=None) -> dict:
    return {"value": value, "n": n, "category": category, "higher_is_better": higher_is_better, "ci95": ci95}


def compact_map(grid: np.ndarray) -> list:
    """A map for JSON: each value to 7 significant digits (float32 precision, short text)."""
    return [[float(f"{v:.7g}") for v in row] for row in np.asarray(grid, dtype=np.float32).reshape(grid.shape[0], -1)]


def build_metrics(classes: list, params: dict[str, Any]) -> list:
    """Instantiate metrics, each with the entries of ``params`` it declares; refuse unused keys."""
    given = shared("metric", [cls.declared_params() for cls in classes], params)
    return [cls(**kw) for cls, kw in zip(classes, given)]


def _mib(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else n_bytes / 2**20


def _progress(enabled: bool, total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, leave=False)


def run(config: RunConfig, plugins: XbenchPlugins | None = None) -> dict:
    """Execute one run and return its summary (also written to ``<out>/summary.json``)."""
    return Run(config, plugins).execute()
