"""Suite files: reading and validating a sweep's TOML suite and expanding it into cells.

:func:`load_suite` reads the file (:class:`SuiteError` when missing, a directory, not TOML
or not UTF-8); :func:`plan` checks it before anything runs: keys against the allowed ones
(with a close match suggested), names against the registries, values by type (a non-finite
number or a TOML date/time anywhere is refused with its key path, :func:`check_values`) and
the grid's size (more than :data:`MAX_CELLS` cells is refused with the count,
:func:`grid_size`). The file format is described in :mod:`xbench.sweep`.
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from xbench import presets
from xbench.errors import UnknownNameError, XbenchError
from xbench.registry import Registries
from xbench.runner import DEFAULT_MODEL, DEFAULT_TASK, RunConfig

MAX_CELLS = 10_000  # a larger grid is refused with its count (split the suite)


class SuiteError(XbenchError):
    """A suite file that is missing, not TOML, or names something that does not exist."""


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


__all__ = [
    "MAX_CELLS",
    "RUN_OPTIONS",
    "SUITE_KEYS",
    "TASK_KEYS",
    "Cell",
    "SuiteError",
    "check_values",
    "grid_size",
    "load_suite",
    "plan",
]
