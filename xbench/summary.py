"""A run's summary: answer metrics, every metric column with a seeded 95% bootstrap interval
over samples (:mod:`xbench.stats`), cost percentiles, where the time went, and the run's
identity and provenance. See :class:`xbench.records.Summary` for its schema."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from xbench import cost, provenance, stats
from xbench.api import CONTROL, Metric, Pooled, Task
from xbench.columns import control_column, group_column, parse_column
from xbench.records import MetricEntry, Record, Summary, recorded_value

TIMED_PHASES = ("model_load", "warmup", "generate", "explain", "companions", "metrics")


def metric_entry(value, n: int, category: str, higher_is_better: bool | None, ci95=None) -> MetricEntry:
    return {"value": value, "n": n, "category": category, "higher_is_better": higher_is_better, "ci95": ci95}


def answer_entries(task, ok: Sequence[Record], seed: int) -> dict[str, MetricEntry]:
    """The task's run-level answer metrics (and breakdown columns), direction from the base metric."""
    values = task.aggregate(ok)
    if type(task).aggregate is Task.aggregate:  # means of per-sample scores: the vectorised bootstrap
        ci = stats.bootstrap_means(_score_columns(task, ok, values), len(ok), seed=seed)
    else:
        ci = stats.bootstrap(lambda idx: task.aggregate([ok[i] for i in idx]), len(ok), seed=seed)
    entries = {}
    for name, value in values.items():
        direction = task.answer_metrics.get(parse_column(name).base, True)
        entries[name] = metric_entry(value, len(ok), "answer", direction, ci.get(name))
    return entries


def _score_columns(task, ok: Sequence[Record], names) -> dict[str, np.ndarray]:
    """Per sample, each column :meth:`xbench.api.Task.aggregate` averages (NaN where a sample does
    not count: no such score, or another breakdown group)."""
    columns = {name: np.full(len(ok), np.nan) for name in names}
    for i, r in enumerate(ok):
        group = r["meta"].get(task.breakdown_key) if task.breakdown_key else None
        for k, v in r["scores"].items():
            if v is not None:
                columns[k][i] = float(v)
                if group is not None:
                    columns[group_column(k, group)][i] = float(v)
    return columns


def map_metric_entries(metrics: Sequence[Metric], ok: Sequence[Record], seed: int, with_control: bool) -> dict:
    """Each metric's column (and its ``@control`` column) that applied to at least one sample."""
    entries: dict[str, MetricEntry] = {}
    for metric in metrics:
        columns = [metric.name]
        if with_control and metric.uses_map and CONTROL not in metric.needs:
            columns.append(control_column(metric.name))
        for column in columns:
            entry = _column_entry(metric, column, ok, seed)
            if entry is not None:
                entries[column] = entry
    return entries


def _column_entry(metric: Metric, column: str, ok: Sequence[Record], seed: int) -> MetricEntry | None:
    """The run's value of one metric column with its bootstrap interval (None: never applied)."""
    vals = [recorded_value(r, column) for r in ok]
    value = metric.aggregate(vals, ok)
    if value is None:
        return None
    pooled = any(isinstance(v, Pooled) for v in vals)
    if type(metric).aggregate is Metric.aggregate and not pooled:  # the mean: the vectorised bootstrap
        col = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
        ci = stats.bootstrap_means({"v": col}, len(ok), seed=seed)["v"]
    else:

        def statistic(idx):
            return {"v": metric.aggregate([vals[i] for i in idx], [ok[i] for i in idx])}

        ci = stats.bootstrap(statistic, len(ok), seed=seed)["v"]
    n = sum(v is not None for v in vals)
    if column != metric.name:
        return {**metric_entry(value, n, metric.category, None, ci), "control_of": metric.name}
    entry = metric_entry(value, n, metric.category, metric.higher_is_better, ci)
    if metric.flag_above is not None:
        entry["flag_above"] = metric.flag_above
    return entry


def cost_entries(ok: Sequence[Record], seed: int) -> dict[str, MetricEntry]:
    """Time percentiles with intervals, GPU peaks (max), resident-memory rises (max and p50), peak RSS."""
    entries: dict[str, MetricEntry] = {}
    for key in ("explain_ms", "generate_ms"):
        values = np.array([r[key] for r in ok], dtype=float)
        pct = cost.percentiles(values.tolist())
        cis = stats.bootstrap_percentiles(values, {"p50": 50, "p95": 95}, seed=seed)
        for p in ("p50", "p95"):
            if pct[p] is not None:
                entries[f"{key}_{p}"] = metric_entry(pct[p], len(ok), "cost", False, cis.get(p))
    for key in ("generate_peak_gpu_mib", "explain_peak_gpu_mib"):
        gpu = [r[key] for r in ok if r[key] is not None]
        entries[key] = metric_entry(max(gpu) if gpu else None, len(gpu), "cost", False)
    for key in ("generate_rss_peak_mib", "explain_rss_peak_mib"):
        rss = [r[key] for r in ok if r.get(key) is not None]
        entries[f"{key}_max"] = metric_entry(max(rss) if rss else None, len(rss), "cost", False)
        entries[f"{key}_p50"] = metric_entry(float(np.median(rss)) if rss else None, len(rss), "cost", False)
    entries["peak_rss_mib"] = metric_entry(cost.peak_rss_mib(), 1, "cost", False)
    return entries


def timings(seconds: dict[str, float], wall_s: float) -> dict[str, float | None]:
    """Wall time, each timed phase, and the harness's own time (wall minus the phases) with its
    share of the wall time after model load."""
    out: dict[str, float | None] = {"wall_s": wall_s}
    out.update({f"{p}_s": seconds.get(p, 0.0) for p in TIMED_PHASES})
    harness = wall_s - sum(seconds.get(p, 0.0) for p in TIMED_PHASES)
    after_load = wall_s - seconds.get("model_load", 0.0)
    out["harness_s"] = harness
    out["harness_share_after_load"] = harness / after_load if after_load > 0 else None
    return out


def errors_by_stage(errors: Sequence[dict]) -> dict[str, int]:
    stages: dict[str, int] = {}
    for r in errors:
        stages[r.get("stage", "?")] = stages.get(r.get("stage", "?"), 0) + 1
    return stages


def error_digest(errors: Sequence[dict]) -> dict[str, Any] | None:
    """The first error record's id and message, and the most common message with its count (None: no error)."""
    if not errors:
        return None
    counts: dict[str, int] = {}
    for r in errors:
        counts[r["error"]] = counts.get(r["error"], 0) + 1
    common = max(counts, key=counts.__getitem__)  # ties: the one met first
    return {"first_id": errors[0]["id"], "first": errors[0]["error"], "most_common": common,
            "most_common_count": counts[common]}


def identity(run_id: str, method, task, vlm) -> dict[str, Any]:
    """What was run: method, task with its data hash, model with its hashes."""
    return {
        "run_id": run_id,
        "method": {"name": method.name, "label": method.label, "params": method.params},
        "task": {"name": task.name, "split": task.split, "params": task.params, "data_hash": task.data_hash()},
        "model": {
            "id": vlm.name,
            "config_hash": vlm.config_hash,
            "model_hash": vlm.model_hash,
            "dtype": str(vlm.dtype).replace("torch.", ""),
            "attn_implementation": getattr(vlm, "attn_implementation", None),
            "family": vlm.family,
            "prompt_format": vlm.prompt_format,
        },
    }


def summarise(records: Sequence[dict], *, run_id: str, task, method, metrics: Sequence[Metric], vlm, seed: int,
              reference, control, config: dict, started: str) -> Summary:  # fmt: skip
    """The summary of ``records`` (without maps), minus ``timings`` (the run adds them last)."""
    ok = [r for r in records if "error" not in r]
    errors = [r for r in records if "error" in r]
    entries = answer_entries(task, ok, seed)
    entries.update(map_metric_entries(metrics, ok, seed, control is not None))
    entries.update(cost_entries(ok, seed))
    return {
        **identity(run_id, method, task, vlm),
        "n_records": len(records),
        "n_ok": len(ok),
        "n_errors": len(errors),
        "errors_by_stage": errors_by_stage(errors),
        "error_digest": error_digest(errors),
        "metrics": entries,
        "bootstrap": {"resamples": stats.N_RESAMPLES, "level": stats.LEVEL, "method": "percentile", "seed": seed},
        "metric_params": {m.name: m.params for m in metrics if m.params},
        "reference": reference.describe() if reference else None,
        "control": control.describe() if control else None,
        "config": config,
        "provenance": {**provenance.environment(vlm.device), "started": started, "finished": provenance.now()},
    }
