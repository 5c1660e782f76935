"""The runs behind a leaderboard, and their values on the samples they share.

Runs of one task, model, split and data set (``task.data_hash``) are compared on the samples
they all explained: the intersection of the ids of their successful records
(``samples.jsonl``). A run whose successful samples are exactly those keeps its summary's
values and intervals; a run with more is recomputed on the shared ones, each column as the
runner computes it (no interval is recomputed):

* answer columns: the task's own ``aggregate`` over the shared records (POPE's F1 is an F1
  over those samples, not a mean);
* metric columns (and ``name@control``): the metric's own ``aggregate`` over the shared
  records' values (an AUROC over samples stays an AUROC), with the run's recorded metric
  parameters;
* cost columns ``<field>_p50`` / ``_p95`` / ``_max`` and per-sample peaks ``<field>``: that
  percentile or maximum of the record field over the shared records.

What cannot be recomputed keeps the run's own value and is listed in :attr:`Values.own`
(the process-wide ``peak_rss_mib``; a column whose plugin is not installed here; an answer
column when the task's data is not on this machine). A summary that is unreadable or not
an xbench run summary is skipped with a warning naming it; a run whose ``samples.jsonl`` is
missing or unreadable is shown on its own samples.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from xbench.columns import control_column
from xbench.errors import XbenchError
from xbench.records import SAMPLES, SUMMARY, method_label, read_records

#: the record fields a summary's cost column is a statistic of, by the column's suffix
COST_STATISTICS: dict[str, Callable[[list[float]], float]] = {
    "_p50": lambda v: float(np.percentile(v, 50)),
    "_p95": lambda v: float(np.percentile(v, 95)),
    "_max": max,
    "": max,  # a per-sample peak (explain_peak_gpu_mib): the run's value is the maximum
}


def is_reference_of(reference: dict | None, method: dict) -> bool:
    """Whether a summary's ``reference`` entry names ``method`` (a summary's ``method`` entry):
    the same name, and the same parameters where the reference recorded them."""
    reference = reference or {}
    return reference.get("method") == method["name"] and reference.get("params") in (None, method.get("params"))


def warn(message: str) -> None:
    print(f"xbench: warning: {message}", file=sys.stderr)


@dataclass
class Run:
    """One run: its ``summary.json`` (control columns named ``name@control``) and its successful
    records (maps dropped), or None where ``samples.jsonl`` is missing or unreadable."""

    path: Path
    summary: dict
    records: list[dict] | None

    @property
    def label(self) -> str:
        return method_label(self.summary)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Runs with one key are comparable: task, model, split, data hash."""
        task = self.summary["task"]
        return task["name"], self.summary["model"]["id"], str(task.get("split") or ""), str(task.get("data_hash") or "")

    @property
    def ids(self) -> set[str]:
        return {str(r["id"]) for r in self.records or ()}

    @property
    def limit(self) -> str:
        limit = (self.summary.get("config") or {}).get("limit")
        return "all" if limit is None else str(limit)


def foreign(summary: object) -> str | None:
    """Why ``summary`` is not an xbench run summary (None when it is one)."""
    if not isinstance(summary, dict):
        return "not a JSON object"
    for part, key in (("method", "name"), ("task", "name"), ("model", "id")):
        if not isinstance(summary.get(part), dict) or not isinstance(summary[part].get(key), str):
            return f"no '{part}.{key}'"
    if not isinstance(summary.get("metrics"), dict) or not all(isinstance(m, dict) for m in summary["metrics"].values()):
        return "no 'metrics' table"
    return None


def _control_names(metrics: dict) -> dict[str, str]:
    """Old control column names (``name[control]``) -> ``name@control``, from each entry's ``control_of``."""
    return {c: control_column(m["control_of"]) for c, m in metrics.items() if isinstance(m.get("control_of"), str)}


def _renamed(mapping: dict, names: dict[str, str]) -> dict:
    return {names.get(k, k): v for k, v in mapping.items()}


def _raw_summary(summary_path: Path) -> dict | None:
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        warn(f"skipped {summary_path}: unreadable ({type(exc).__name__}: {exc})")
        return None
    why = foreign(summary)
    if why is not None:
        warn(f"skipped {summary_path}: not an xbench run summary ({why})")
        return None
    return summary


def read_summary(summary_path: Path) -> dict | None:
    """A run's ``summary.json`` with control columns named ``name@control``, or None (with a warning
    naming the file) when it is unreadable or not an xbench run summary."""
    summary = _raw_summary(summary_path)
    if summary is None:
        return None
    return {**summary, "metrics": _renamed(summary["metrics"], _control_names(summary["metrics"]))}


def read_run(summary_path: Path) -> Run | None:
    """The run of one ``summary.json`` (None when :func:`read_summary` refuses it)."""
    summary = _raw_summary(summary_path)
    if summary is None:
        return None
    names = _control_names(summary["metrics"])
    summary = {**summary, "metrics": _renamed(summary["metrics"], names)}
    records = None
    samples = summary_path.parent / SAMPLES
    if samples.exists():
        try:
            records = [
                {**r, "metrics": _renamed(r.get("metrics") or {}, names)}
                for r in (_without_maps(r) for r in read_records(samples))
                if "error" not in r
            ]
        except (OSError, ValueError, XbenchError) as exc:
            warn(f"{samples}: unreadable ({exc}); the run is shown on its own samples")
    return Run(summary_path, summary, records)


def _without_maps(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("map", "control_map")}


def summary_paths(root: Path) -> list[Path]:
    """``root`` itself when it is a ``summary.json``, else every ``summary.json`` below it."""
    return [root] if root.is_file() else sorted(root.rglob(SUMMARY))


def read_runs(roots: Iterable[Path], task: str | None = None) -> list[Run]:
    """Every run under ``roots`` (folders or ``summary.json`` files), of ``task`` when given."""
    runs = []
    for root in roots:
        for path in summary_paths(root):
            run = read_run(path)
            if run is not None and (task is None or run.summary["task"]["name"] == task):
                runs.append(run)
    return runs


def shared_ids(runs: list[Run]) -> set[str]:
    """Ids every run (each with records) explained successfully."""
    sets = [r.ids for r in runs]
    return set.intersection(*sets) if sets else set()


@dataclass
class Values:
    """A run's value of each summary column, its interval where it is the summary's own, and the
    columns that kept the run's own value although the comparison is on fewer samples."""

    values: dict[str, float | None]
    ci: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    own: set[str] = field(default_factory=set)


def summary_values(run: Run) -> Values:
    metrics = run.summary["metrics"]
    ci = {c: tuple(m.get("ci95") or (None, None)) for c, m in metrics.items()}
    return Values({c: m.get("value") for c, m in metrics.items()}, ci)


class Recomputer:
    """Recomputes a run's summary columns on a subset of its records with the run's plugins
    (loaded on first use: a leaderboard whose runs all share their samples never imports them)."""

    def __init__(self) -> None:
        self._registries = None
        self._tasks: dict[str, object | None] = {}

    @property
    def registries(self):
        if self._registries is None:
            from xbench.plugins import default

            self._registries = default().registries
        return self._registries

    def values(self, run: Run, ids: set[str]) -> Values:
        """``run``'s columns on the records of ``ids`` (``ids`` within the run's own)."""
        if ids == run.ids:
            return summary_values(run)
        records = [r for r in run.records or () if str(r["id"]) in ids]
        out = Values({})
        answers = self.answers(run, records)
        for column, entry in run.summary["metrics"].items():
            if entry.get("category") == "answer":
                value = None if answers is None else answers.get(column)
                ok = answers is not None
            elif any(column in r["metrics"] for r in records):
                ok, value = self.metric(run, column, entry, records)
            else:
                ok, value = cost_statistic(column, records)
            out.values[column] = value if ok else entry.get("value")
            if not ok:
                out.own.add(column)
        return out

    def answers(self, run: Run, records: list[dict]) -> dict | None:
        """The task's answer metrics over ``records`` (None when the task cannot be rebuilt here or
        its ``aggregate`` fails on these records, with a warning)."""
        task = self._task(run)
        if task is None:
            return None
        try:
            return task.aggregate(records)
        except Exception as exc:  # a plugin's aggregate on records it did not write: keep the run's values
            warn(f"{run.path}: the task's answer metrics cannot be recomputed on the shared samples "
                 f"({type(exc).__name__}: {exc}); they keep the run's own values")
            return None

    def _task(self, run: Run):
        t, cfg = run.summary["task"], run.summary.get("config") or {}
        key = json.dumps([t["name"], t.get("split"), t.get("params"), cfg.get("data_dir")], sort_keys=True, default=str)
        if key not in self._tasks:
            try:
                cls = self.registries.tasks.get(t["name"])  # parameters are checked by the task's constructor
                self._tasks[key] = cls(t.get("split"), cfg.get("data_dir"), **(t.get("params") or {}))
            except Exception as exc:  # the plugin or the data is not on this machine: keep the run's values
                warn(f"task {t['name']!r} cannot be rebuilt here ({type(exc).__name__}: {exc}); "
                     "its answer columns keep each run's own value")
                self._tasks[key] = None
        return self._tasks[key]

    def metric(self, run: Run, column: str, entry: dict, records: list[dict]) -> tuple[bool, float | None]:
        """``(recomputed, value)`` of one metric column with the metric's own ``aggregate``."""
        from xbench.records import recorded_value

        base = entry.get("control_of") or column
        if base not in self.registries.metrics:
            return False, None
        cls = self.registries.metrics.get(base)
        params = (run.summary.get("metric_params") or {}).get(base, {})
        values = [recorded_value(r, column) for r in records]  # with the counts a pooled metric kept
        try:
            return True, cls(**params).aggregate(values, records)
        except Exception as exc:  # as for answers: the run's own value, said so
            warn(f"{run.path}: {column} cannot be recomputed on the shared samples ({type(exc).__name__}: {exc}); "
                 "it keeps the run's own value")
            return False, None


def cost_statistic(column: str, records: list[dict]) -> tuple[bool, float | None]:
    """``(recomputed, value)`` of a cost column from the per-sample field it summarises."""
    for suffix, statistic in COST_STATISTICS.items():
        name = column[: len(column) - len(suffix)] if suffix and column.endswith(suffix) else column
        if (suffix and name == column) or not any(name in r for r in records):
            continue
        values = [float(r[name]) for r in records if r.get(name) is not None]
        return True, statistic(values) if values else None
    return False, None
