"""Sweeps: a grid of models x tasks x methods (with parameters) x seeds, one run per cell.

A suite file (TOML)::

    models = ["tiny-random-llava"]          # zoo names or local HF directories (default: the default model)
    tasks = ["easyvqa"]                     # or tables: [tasks.vqav2] split = "val", data_dir = "...", params = {...}
    seeds = [0, 1]                          # default [0]

    [methods]                               # name = parameters, or a list of parameter sets
    raw_attention = {}
    rollout = [{}, {residual = 0.9}]

    [run]                                   # options shared by every cell
    limit = 100
    batch_size = 4

Every name is checked against the registries before anything runs. Cell ``k`` writes
to ``<out>/<task>/<model>/<method label>/seed<k>``; a cell whose ``summary.json`` is
complete for its settings is skipped, an unfinished one is resumed (the run checks the
folder's identity, :mod:`xbench.rundir`, so a folder of other settings is refused naming
each difference), and a cell that fails leaves an ``error.json`` in its folder while the
sweep goes on. ``<out>/sweep.json`` lists every cell's status; it is written when the
sweep starts and when it ends, and ``<out>/sweep.jsonl`` gets one line per cell as it
finishes (append-only: the cost is linear in the number of cells).

A suite is checked before anything runs: names against the registries, values by type
(a non-finite number or a TOML date/time anywhere is refused with its key path) and the
grid's size (more than :data:`MAX_CELLS` cells is refused with the count); the reading and
validation live in :mod:`xbench.suite`.

Executors (:data:`EXECUTORS`) run the cells: ``local`` one after another in this
process, ``ray`` as Ray tasks (one GPU each when the cluster has GPUs; a ``host:port``
address is probed first, so an unreachable one fails within seconds), see
:mod:`xbench.executors`. Cells write into ``<out>`` themselves, so on a multi-node Ray
cluster ``<out>`` must be a shared path.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from xbench import provenance
from xbench.errors import XbenchError
from xbench.executors import (  # noqa: F401 (re-exported: the sweep's public names)
    EXECUTORS, Executor, ExecutorError, LocalExecutor, RayExecutor, import_ray, make_executor, probe,
)
from xbench.records import SAMPLES, SUMMARY, dumps_finite, iter_records, write_json_atomic
from xbench.runner import describe
from xbench.suite import (  # noqa: F401 (re-exported: reading and validating suites, see xbench.suite)
    MAX_CELLS, RUN_OPTIONS, SUITE_KEYS, TASK_KEYS, Cell, SuiteError, check_values, grid_size, load_suite, plan,
)

INDEX = "sweep.json"
PROGRESS = "sweep.jsonl"  # one line per finished cell, appended as cells end
ERROR = "error.json"


# --------------------------------------------------------------------------- cells

#: summary config keys that define a cell's records (``limit`` may grow: the run resumes)
IDENTITY = ("method", "method_params", "task", "split", "task_params", "model", "seed", "metrics", "dtype")


def _summary(cell: Cell) -> dict | None:
    try:
        summary = json.loads((cell.out / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("config"), dict) else None


def check_reusable(cell: Cell) -> None:
    """Refuse a cell folder holding a run of other settings (its records would be mixed in)."""
    summary = _summary(cell)
    if summary is None:
        return
    old, new = summary["config"], cell.config
    diffs = [f"{k} {old.get(k)!r} there, {getattr(new, k)!r} here" for k in IDENTITY if old.get(k) != getattr(new, k)]
    if new.max_new_tokens is not None and old.get("max_new_tokens") != new.max_new_tokens:
        diffs.append(f"max_new_tokens {old.get('max_new_tokens')!r} there, {new.max_new_tokens!r} here")
    old_limit, limit = old.get("limit"), new.limit
    if old_limit != limit and (old_limit is None or (limit is not None and limit < old_limit)):
        diffs.append(f"limit {old_limit!r} there, {limit!r} here (a run cannot shrink)")
    if diffs:
        raise SuiteError(f"{cell.out} holds a run with other settings ({'; '.join(diffs)}); move it or use another --out")


def is_complete(cell: Cell) -> bool:
    """True when the cell's summary exists, covers every record on disk and matches its settings."""
    summary = _summary(cell)
    if summary is None or summary["config"].get("limit") != cell.config.limit:
        return False
    try:
        check_reusable(cell)
        return summary.get("n_records") == sum(1 for _ in iter_records(cell.out / SAMPLES))
    except XbenchError:
        return False


def run_cell(cell: Cell, plugins=None) -> dict:
    """Run one cell (resuming what is on disk); never raises: a failure is written to ``error.json``.

    Returns ``{"key", "status": "ok" | "failed", "n_ok", "n_errors", "wall_s", "error", "host", "pid"}``
    (``host`` and ``pid``: the process that ran it).
    """
    from xbench.runner import run

    start = time.perf_counter()
    try:
        cell.out.mkdir(parents=True, exist_ok=True)
        check_reusable(cell)
        summary = run(cell.config, plugins)
    except Exception as exc:  # one cell's failure must not stop the sweep
        return {**record_failure(cell, exc, time.perf_counter() - start, traceback.format_exc()), **_where()}
    (cell.out / ERROR).unlink(missing_ok=True)
    return {
        "key": cell.key,
        "status": "ok",
        "n_ok": summary["n_ok"],
        "n_errors": summary["n_errors"],
        "wall_s": round(time.perf_counter() - start, 3),
        "error": None,
        **_where(),
    }


def _where() -> dict:
    import platform

    return {"host": platform.node(), "pid": os.getpid()}


def record_failure(cell: Cell, exc: BaseException, wall_s: float = 0.0, tb: str | None = None) -> dict:
    """Write ``error.json`` into the cell's folder and return the cell's failed result."""
    message = describe(exc) if isinstance(exc, Exception) else repr(exc)
    info = {"key": cell.key, "error": message, "type": type(exc).__name__, "time": provenance.now()}
    if tb and not isinstance(exc, XbenchError):
        info["traceback"] = tb
    try:
        cell.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cell.out / ERROR, info)
    except OSError:
        pass  # the sweep index still records the failure
    return {"key": cell.key, "status": "failed", "n_ok": None, "n_errors": None, "wall_s": round(wall_s, 3), "error": message}


# --------------------------------------------------------------------------- sweep


@dataclass
class Sweep:
    """A planned sweep: its cells, folder and the index it keeps in ``<out>/sweep.json``."""

    cells: list[Cell]
    out: Path
    suite_path: str = ""
    results: dict[str, dict] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [self.row(cell) for cell in self.cells]

    def row(self, cell: Cell) -> dict:
        result = self.results.get(cell.key, {"status": "pending"})
        return {"key": cell.key, **cell.labels, **{k: v for k, v in result.items() if k != "key"}}

    def write_index(self, executor: str, started: str, finished: str | None = None) -> dict[str, int]:
        """Write ``sweep.json`` (every cell with its status so far); returns ``{status: number of cells}``.

        Called when the sweep starts and when it ends; in between, :meth:`log` appends to ``sweep.jsonl``."""
        rows = self.rows()
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        index = {
            "suite": self.suite_path,
            "executor": executor,
            "started": started,
            "finished": finished,
            "counts": counts,
            "progress": PROGRESS,
            "cells": rows,
        }
        write_json_atomic(self.out / INDEX, index)
        return counts

    def log(self, entry: dict) -> None:
        """Append one line to ``sweep.jsonl`` (a cell's result, or the start of a sweep)."""
        line = dumps_finite(entry, self.out / PROGRESS) + "\n"
        try:
            with open(self.out / PROGRESS, "a") as fh:
                fh.write(line)
        except OSError as exc:
            raise SuiteError(f"cannot write the sweep progress log {self.out / PROGRESS}: {exc.strerror or exc}") from None

    def execute(self, executor: Executor, plugins=None, echo: Callable[[str], None] | None = None) -> dict:
        """Skip complete cells, run the others on ``executor``; returns the final index counts."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SuiteError(f"cannot create the sweep folder {self.out}: {exc.strerror or exc}") from None
        started = provenance.now()
        todo = []
        for cell in self.cells:
            if is_complete(cell):
                summary = _summary(cell) or {}
                self.results[cell.key] = {
                    "key": cell.key,
                    "status": "skipped",
                    "n_ok": summary.get("n_ok"),
                    "n_errors": summary.get("n_errors"),
                    "error": None,
                }
            else:
                todo.append(cell)
        self.write_index(executor.name, started)
        self.log({"event": "started", "time": started, "executor": executor.name,
                  "cells": len(self.cells), "to_run": len(todo)})
        n_done = len(self.cells) - len(todo)

        def report(result: dict) -> None:
            nonlocal n_done
            n_done += 1
            self.results[result["key"]] = result
            self.log({"event": "cell", **result})
            if echo:
                what = f"{result['n_ok']} ok, {result['n_errors']} errors" if result["status"] == "ok" else result["error"]
                echo(f"[{n_done}/{len(self.cells)}] {result['status']:6s} {result['key']} ({what}; {result['wall_s']:.1f} s)")

        if echo and n_done:
            echo(f"{n_done} of {len(self.cells)} cells already complete: skipped")
        try:
            executor.run(todo, report, plugins)
        finally:  # also when interrupted: the index says which cells ended
            counts = self.write_index(executor.name, started, provenance.now())
        return counts


def prepare(suite_path: Path, out: Path | None = None, plugins=None) -> Sweep:
    """Read and validate a suite file; ``out`` defaults to ``runs/<suite file stem>``."""
    from xbench.plugins import default

    plugins = plugins or default()
    suite_path = Path(suite_path)
    suite = load_suite(suite_path)
    out = Path(out) if out is not None else Path("runs") / suite_path.stem
    cells = plan(suite, out, plugins.registries)
    return Sweep(cells, out.resolve(), str(suite_path))


def sweep(
    suite_path: Path,
    out: Path | None = None,
    executor: str = "local",
    address: str | None = None,
    plugins=None,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Validate, then run a suite; returns ``{status: number of cells}``."""
    runner = make_executor(executor, address)
    planned = prepare(suite_path, out, plugins)
    return planned.execute(runner, plugins, echo)


__all__ = [
    "Cell",
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "RayExecutor",
    "SuiteError",
    "Sweep",
    "check_reusable",
    "check_values",
    "grid_size",
    "is_complete",
    "load_suite",
    "make_executor",
    "plan",
    "prepare",
    "probe",
    "run_cell",
    "sweep",
]
