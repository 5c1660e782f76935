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
grid's size (more than :data:`MAX_CELLS` cells is refused with the count).

Executors (:data:`EXECUTORS`) run the cells: ``local`` one after another in this
process, ``ray`` as Ray tasks (one GPU each when the cluster has GPUs; a ``host:port``
address is probed first, so an unreachable one fails within seconds), see
:mod:`xbench.executors`. Cells write into ``<out>`` themselves, so on a multi-node Ray
cluster ``<out>`` must be a shared path.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import os
import re
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from xbench import presets, provenance
from xbench.errors import UnknownNameError, XbenchError
from xbench.executors import (  # noqa: F401 (re-exported: the sweep's public names)
    EXECUTORS, Executor, ExecutorError, LocalExecutor, RayExecutor, import_ray, make_executor, probe,
)
from xbench.records import SAMPLES, SUMMARY, dumps_finite, iter_records, write_json_atomic
from xbench.registry import Registries
from xbench.runner import DEFAULT_MODEL, DEFAULT_TASK, RunConfig, describe

INDEX = "sweep.json"
PROGRESS = "sweep.jsonl"  # one line per finished cell, appended as cells end
ERROR = "error.json"
MAX_CELLS = 10_000  # a larger grid is refused with its count (split the suite)


class SuiteError(XbenchError):
    """A suite file that is missing, not TOML, or names something that does not exist."""


# --------------------------------------------------------------------------- suite


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its folder ``key`` (relative to the sweep's out) and its config."""

    key: str
    config: RunConfig
    labels: dict[str, Any] = field(default_factory=dict)  # task, model, method, params, seed

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", text).strip("_") or "_"


def _keys_check(table: dict, allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SuiteError(f"{where}: unknown key {key!r}.{hint} Allowed: {', '.join(sorted(allowed))}.")


def _positive_int(value, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SuiteError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _str_list(value, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SuiteError(f"{where} must be a non-empty list of names, got {value!r}")
    return value


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise SuiteError(f"{where} must be true or false, got {value!r}")
    return value


def _str(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SuiteError(f"{where} must be a non-empty string, got {value!r}")
    return value


#: ``[run]`` options: name -> checker(value, where) returning the RunConfig value
RUN_OPTIONS: dict[str, Callable[[Any, str], Any]] = {
    "limit": _positive_int,
    "batch_size": _positive_int,
    "max_new_tokens": _positive_int,
    "warmup": lambda v, w: _positive_int(v, w, minimum=0),
    "metrics": _str_list,
    "device": _str,
    "dtype": _str,
    "fail_fast": _bool,
}
SUITE_KEYS = ("models", "tasks", "methods", "seeds", "run")
TASK_KEYS = ("split", "data_dir", "params")


def load_suite(path: Path) -> dict:
    """The parsed TOML of ``path``; :class:`SuiteError` when missing or not TOML."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SuiteError(f"suite file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise SuiteError(f"suite file {str(path)!r} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite file {str(path)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SuiteError(f"suite file {str(path)!r} is not UTF-8 text: {exc}") from None


def check_values(value, where: str = "suite") -> None:
    """Refuse non-finite numbers and TOML dates/times anywhere in ``value``, naming the key path."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SuiteError(f"{where} is {value}: a suite takes finite numbers only")
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        raise SuiteError(f"{where} is the TOML date/time {value.isoformat()}; a suite takes numbers, strings, "
                         "booleans, lists and tables (quote it to pass text)")
    if isinstance(value, dict):
        for key, item in value.items():
            check_values(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_values(item, f"{where}[{i}]")


def grid_size(suite: dict) -> int:
    """The number of cells ``suite`` expands to, counted without building anything."""

    def count(key, default) -> int:
        value = suite.get(key, default)
        return len(value) if isinstance(value, (list, dict)) else 1

    methods = suite.get("methods")
    if isinstance(methods, dict):
        n_methods = sum(len(v) if isinstance(v, list) else 1 for v in methods.values())
    else:
        n_methods = count("methods", [])
    return count("models", [DEFAULT_MODEL]) * count("tasks", [DEFAULT_TASK]) * n_methods * count("seeds", [0])


def plan(suite: dict, out: Path, registries: Registries) -> list[Cell]:
    """Validate ``suite`` against the registries and expand it into cells (nothing runs)."""
    _keys_check(suite, SUITE_KEYS, "suite")
    check_values(suite)
    n_cells = grid_size(suite)
    if n_cells > MAX_CELLS:
        raise SuiteError(
            f"suite expands to {n_cells} cells, more than the limit of {MAX_CELLS}: split it into smaller suites"
        )
    run_table = suite.get("run", {})
    if not isinstance(run_table, dict):
        raise SuiteError(f"suite: [run] must be a table, got {run_table!r}")
    _keys_check(run_table, list(RUN_OPTIONS), "suite [run]")
    options = {k: RUN_OPTIONS[k](v, f"suite [run] {k}") for k, v in run_table.items()}
    if "metrics" in options:  # metric or preset names (xbench.presets), refused here before anything runs
        presets.resolve(options["metrics"], registries.metrics)
    models = [(m, _model_label(m, registries)) for m in _str_list(suite.get("models", [DEFAULT_MODEL]), "suite models")]
    tasks = _tasks(suite.get("tasks", [DEFAULT_TASK]), registries)
    methods = _methods(suite.get("methods"), registries)
    seeds = suite.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_is_seed(s) for s in seeds):
        raise SuiteError(f"suite seeds must be a non-empty list of integers from 0 to 2**32 - 1, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SuiteError(f"suite seeds repeat a value: {seeds}")
    out = Path(out).resolve()
    cells, owners = [], {}
    for task, task_opts in tasks:
        for model, model_label in models:
            for method, params, method_label in methods:
                for seed in seeds:
                    key = f"{task}/{model_label}/{method_label}/seed{seed}"
                    where = f"{task} x {model} x {method} {params} x seed {seed}"
                    if key in owners:
                        raise SuiteError(f"two cells would share the folder {key}: {owners[key]} and {where}")
                    owners[key] = where
                    config = RunConfig(
                        method=method,
                        task=task,
                        model=model,
                        seed=seed,
                        out=out / key,
                        resume=True,
                        progress=False,
                        method_params=dict(params),
                        **task_opts,
                        **options,
                    )
                    labels = {"task": task, "model": model, "method": method, "params": params, "seed": seed}
                    cells.append(Cell(key, config, labels))
    return cells


def _is_seed(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


def _model_label(model: str, registries: Registries) -> str:
    """Folder name of a model; validates a zoo name or a local directory without loading it."""
    from xbench.models import check_model_dir

    if model in registries.models:
        return _slug(model)
    path = Path(model).expanduser()
    if not (path.exists() or os.sep in model or model.startswith(".")):
        raise UnknownNameError(
            registries.models.unknown_message(model) + " A local model directory in Hugging Face layout also works."
        )
    config = check_model_dir(path)
    model_type = config.get("model_type")
    if not any(model_type in getattr(e.obj, "model_types", ()) for e in registries.model_families):
        known = sorted({t for e in registries.model_families for t in e.obj.model_types})
        raise SuiteError(f"model {model!r} has model_type {model_type!r}, which no model family supports ({known})")
    return _slug(path.resolve().name)


def _tasks(value, registries: Registries) -> list[tuple[str, dict]]:
    """``[(name, RunConfig options)]`` from a list of names or a table of task tables."""
    if isinstance(value, (list, str)):
        value = {name: {} for name in _str_list(value, "suite tasks")}
    if not isinstance(value, dict) or not value:
        raise SuiteError(f"suite tasks must be a list of names or a table of tasks, got {value!r}")
    out = []
    for name, table in value.items():
        cls = registries.tasks.get(name)
        if not isinstance(table, dict):
            raise SuiteError(f"suite [tasks.{name}] must be a table, got {table!r}")
        _keys_check(table, TASK_KEYS, f"suite [tasks.{name}]")
        split = table.get("split")
        if split is not None and split not in cls.splits:
            raise SuiteError(f"suite [tasks.{name}]: task {name!r} has no split {split!r}; choose from {list(cls.splits)}")
        params = table.get("params", {})
        if not isinstance(params, dict):
            raise SuiteError(f"suite [tasks.{name}] params must be a table, got {params!r}")
        data_dir = table.get("data_dir")
        if data_dir is not None:
            data_dir = str(Path(_str(data_dir, f"suite [tasks.{name}] data_dir")).expanduser().resolve())
        out.append((name, {"split": split, "data_dir": data_dir, "task_params": dict(params)}))
    return out


def _methods(value, registries: Registries) -> list[tuple[str, dict, str]]:
    """``[(name, params, folder label)]``; parameters are checked by constructing each method."""
    if value is None:
        raise SuiteError("suite defines no methods: add a [methods] table, e.g. rollout = {}")
    if isinstance(value, (list, str)):
        value = {name: {} for name in _str_list(value, "suite methods")}
    if not isinstance(value, dict) or not value:
        raise SuiteError(f"suite methods must be a table of name = {{parameters}}, got {value!r}")
    out = []
    for name, variants in value.items():
        cls = registries.methods.get(name)
        variants = variants if isinstance(variants, list) else [variants]
        if not variants:
            raise SuiteError(f"suite methods.{name} is an empty list of parameter sets")
        for params in variants:
            if not isinstance(params, dict):
                raise SuiteError(f"suite methods.{name}: parameters must be a table, got {params!r}")
            method = cls(**params)
            out.append((name, dict(params), _slug(method.label)))
    return out


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
