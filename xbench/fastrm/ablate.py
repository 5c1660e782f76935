"""The paper's ablations (labelling threshold, training-set size, training steps) and the
transfer tables (across question kinds, across tasks), each written to ``<out>/<name>.md`` and
``<out>/<name>.json`` with its setup and the command that remakes it (:func:`command_line`).
``xbench fastrm ablate`` and ``xbench fastrm paper`` (:mod:`xbench.fastrm.paper`) make their
tables here, with the same builders.

Every table has one row per setting and head; every proxy is trained from the same cached
labels with the same seed and scored on the same held-out samples. Runs that coincide
(for example tau 0.3, 100% of the data, the full step count) are trained once. With a
``save_dir`` the :class:`Trainer` saves every proxy it trains, and each row names its proxy
(``proxy``: the folder under ``save_dir``), so that any figure can be recomputed from it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from xbench.errors import DataError, ParameterError
from xbench.fastrm.evaluate import evaluate
from xbench.fastrm.labels import LabelSet
from xbench.fastrm.train import TrainConfig, train_proxy

METRIC_COLUMNS = ("accuracy", "precision", "recall", "f1", "iou", "auroc")
VAL_COLUMNS = ("accuracy", "f1", "auroc")


@dataclass(frozen=True)
class Grids:
    """The settings each table varies: taus, training fractions, step counts, transfer groups."""

    taus: Sequence[float]
    fractions: Sequence[float]
    steps: Sequence[int]
    transfer_key: str
    transfer_groups: dict[str, Sequence[str]]


class Trainer:
    """Trains proxies on demand, once per distinct (config, training rows); with ``save_dir``, saves
    each to ``save_dir/<head>-<tag>-tau<tau>-steps<steps>/`` and records that name in its
    ``info["saved_as"]``."""

    def __init__(self, train: LabelSet, val: LabelSet, model_info: dict, progress: bool, log: Callable | None,
                 save_dir: Path | None = None) -> None:  # fmt: skip
        self.train, self.val, self.model_info = train, val, model_info
        self.progress, self.log, self.save_dir = progress, log, save_dir
        self._done: dict[str, Any] = {}

    def get(self, cfg: TrainConfig, rows: LabelSet | None = None, tag: str = "all"):
        key = json.dumps([tag, cfg.__dict__], sort_keys=True, default=str)
        if key not in self._done:
            data = self.train if rows is None else rows
            if self.log:
                self.log(f"training {cfg.head} head: tau={cfg.tau} n={len(data)} steps={cfg.steps} ({tag})")
            proxy = train_proxy(data, self.val, cfg, self.model_info, progress=self.progress)[0]
            if self.save_dir is not None:
                name = f"{cfg.head}-{tag}-tau{cfg.tau:g}-steps{cfg.steps}"
                if any(p.info.get("saved_as") == name for p in self._done.values()):
                    name += "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
                proxy.info["saved_as"] = name
                proxy.save(Path(self.save_dir) / name)
            self._done[key] = proxy
        return self._done[key]


@dataclass(frozen=True)
class Inputs:
    """What every table builder reads: the trainer, the held-out set the ablations score on
    (``test``), the base recipe, the heads, the grids, and the named held-out sets the task
    transfer table scores on (``scored_on``, e.g. ``{"gqa/testdev": ...}``)."""

    trainer: Trainer
    test: LabelSet
    base: TrainConfig
    heads: Sequence[str]
    grids: Grids
    scored_on: Mapping[str, LabelSet] = field(default_factory=dict)


def _row(setting: dict, head: str, result: dict, proxy, extra: dict | None = None) -> dict:
    """Test scores, then the validation scores at the same decision threshold (``val_*``: the
    columns to choose a setting by; the test columns are the report)."""
    m = result["map"]
    row = {**setting, "head": head, "n_test": result["n_samples"], "positive_rate": m["positive_rate"]}
    row.update({k: m[k] for k in METRIC_COLUMNS})
    row["threshold"] = m["threshold"]
    val = proxy.info.get("val") or {}
    row.update({f"val_{k}": val.get(k) for k in VAL_COLUMNS})
    row.update(extra or {})
    if "saved_as" in proxy.info:
        row["proxy"] = proxy.info["saved_as"]
    return row


def threshold_table(inp: Inputs) -> list[dict]:
    rows = []
    for tau in inp.grids.taus:
        for head in inp.heads:
            proxy = inp.trainer.get(replace(inp.base, head=head, tau=tau))
            res = evaluate(proxy, inp.test, tau)
            ceiling = res["noise_ceiling"]
            rows.append(_row({"tau": tau}, head, res, proxy, {"noise_ceiling_f1": ceiling and ceiling["f1"]}))
    return rows


def size_table(inp: Inputs) -> list[dict]:
    rows, trainer, base = [], inp.trainer, inp.base
    n = len(trainer.train)
    for frac in inp.grids.fractions:
        k = max(1, round(frac * n))
        subset, tag = (None, "all") if k == n else (trainer.train.subset(range(k)), f"first{k}")
        for head in inp.heads:
            proxy = trainer.get(replace(base, head=head), subset, tag=tag)  # 100%: the run other tables share
            rows.append(_row({"fraction": frac, "n_train": k}, head, evaluate(proxy, inp.test, base.tau), proxy))
    return rows


def steps_table(inp: Inputs) -> list[dict]:
    rows, base = [], inp.base
    for k in inp.grids.steps:
        for head in inp.heads:
            proxy = inp.trainer.get(replace(base, head=head, steps=k, eval_every=min(base.eval_every, k)))
            rows.append(_row({"steps": k}, head, evaluate(proxy, inp.test, base.tau), proxy))
    return rows


def task_transfer_table(inp: Inputs) -> list[dict]:
    """The base proxy of each head (the one the other tables share) scored on each named held-out
    set of ``inp.scored_on`` (in order), with the reference's noise ceiling and the model's answer
    accuracy on that set beside."""
    if not inp.scored_on:
        raise ParameterError("the task transfer table needs named held-out sets to score on")
    rows = []
    for head in inp.heads:
        proxy = inp.trainer.get(replace(inp.base, head=head))
        for name, tset in inp.scored_on.items():
            res = evaluate(proxy, tset, inp.base.tau)
            ceiling = res["noise_ceiling"]
            extra = {"noise_ceiling_f1": ceiling and ceiling["f1"], "answer_accuracy": res["answer_accuracy"]}
            rows.append(_row({"scored_on": name}, head, res, proxy, extra))
    return rows


def transfer_table(inp: Inputs) -> list[dict]:
    """Train on each group of ``meta[key]`` values (and on all, size-matched to the smallest group);
    score on every group of the test set (``key``, groups: ``grids.transfer_key``, ``grids.transfer_groups``)."""
    trainer, test, base, heads = inp.trainer, inp.test, inp.base, inp.heads
    key, groups = inp.grids.transfer_key, inp.grids.transfer_groups
    train_sets = {name: trainer.train.where(key, values) for name, values in groups.items()}
    smallest = min(len(s) for s in train_sets.values())
    if smallest == 0:
        empty = [name for name, s in train_sets.items() if not len(s)]
        raise DataError(f"transfer: no training sample of group(s) {empty} ({key} in {[groups[e] for e in empty]})")
    train_sets = {name: s.subset(range(smallest)) for name, s in train_sets.items()}
    train_sets["all"] = trainer.train.subset(range(smallest))
    test_sets = {name: test.where(key, values) for name, values in groups.items()}
    rows = []
    for train_name, data in train_sets.items():
        for head in heads:
            proxy = trainer.get(replace(base, head=head), data, tag=f"transfer-{train_name}-{smallest}")
            for test_name, tset in test_sets.items():
                if not len(tset):
                    continue
                res = evaluate(proxy, tset, base.tau)
                setting = {"trained_on": train_name, "n_train": len(data), "scored_on": test_name}
                rows.append(_row(setting, head, res, proxy))
    return rows


def write_table(out_dir: Path, name: str, title: str, rows: list[dict], notes: dict[str, Any]) -> Path:
    """``<out>/<name>.md`` (a titled GitHub table plus the setup) and ``<out>/<name>.json``."""
    from tabulate import tabulate

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"title": title, "setup": notes, "rows": rows}, indent=2) + "\n")
    cols = list(rows[0]) if rows else []
    body = tabulate([[r[c] for c in cols] for r in rows], headers=cols, tablefmt="github", floatfmt=".3f")
    setup = "\n".join(_setup_lines(notes))
    (out_dir / f"{name}.md").write_text(f"# {title}\n\n{body}\n\nSetup:\n{setup}\n")
    return out_dir / f"{name}.md"


def _setup_lines(notes: Mapping[str, Any], depth: int = 0) -> list[str]:
    """The setup as a markdown list; a mapping value becomes a nested list."""
    lines = []
    for key, value in notes.items():
        if isinstance(value, Mapping):
            lines += ["  " * depth + f"- {key}:", *_setup_lines(value, depth + 1)]
        else:
            lines.append("  " * depth + f"- {key}: {value}")
    return lines


# --------------------------------------------------------------------------- the tables of one command

@dataclass(frozen=True)
class Table:
    file_name: str
    title: str
    rows: Callable[[Inputs], list[dict]]
    varies_tau: bool = False  # trained and scored at each of ``Grids.taus``, not at the base tau


#: ``xbench fastrm ablate --tables`` name -> table
TABLES = {
    "threshold": Table("ablation_threshold", "Labelling threshold (tau): proxy trained and scored at each tau",
                       threshold_table, varies_tau=True),
    "size": Table("ablation_size", "Training-set size (tau fixed)", size_table),
    "steps": Table("ablation_steps", "Training steps (tau fixed)", steps_table),
    "transfer": Table("transfer", "Transfer across question types: trained on one, scored on each (training sets "
                      "size-matched)", transfer_table),
    "tasks": Table("transfer_tasks", "Transfer across tasks: the proxy trained on the training task, scored on each "
                   "held-out set", task_transfer_table),
}  # fmt: skip
#: the tables ``xbench fastrm ablate`` makes by default (``tasks`` needs held-out sets of other tasks)
ABLATE_TABLES = ("threshold", "size", "steps", "transfer")


def check_tables(names: Sequence[str], allowed: Sequence[str] = tuple(TABLES)) -> None:
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ParameterError(f"unknown ablation table(s) {sorted(unknown)}; choose from {list(allowed)}")


def head_setup(heads: Sequence[str], aux_weight: float | None) -> tuple[str, str]:
    """``(heads, aux)``: each head's parameters as trained, and the map-matching weight in words."""
    from xbench.fastrm.heads import HEADS

    aux = (
        "per head: " + ", ".join(f"{h} {HEADS.get(h).aux_weight:g}" for h in heads)
        if aux_weight is None
        else str(aux_weight)
    )
    return "; ".join(f"{h} {HEADS.get(h).resolve_params({})}" for h in heads), aux


def write_tables(
    names: Sequence[str], inputs: Inputs, out_dir: Path, setup: dict[str, Any], label_seconds: float
) -> list[Path]:
    """Make and write each table of ``names``; ``setup`` goes into every table, with its tau, its
    wall time and the time the labels took."""
    paths = []
    for name in names:
        table = TABLES[name]
        started = time.perf_counter()
        rows = table.rows(inputs)
        notes = {
            **setup,
            "tau": list(inputs.grids.taus) if table.varies_tau else inputs.base.tau,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "label_seconds": round(label_seconds, 1),
        }
        paths.append(write_table(out_dir, table.file_name, table.title, rows, notes))
    return paths


# --------------------------------------------------------------------------- the recorded command


def _joined(xs) -> str:
    return ",".join(str(x) for x in xs)


def _one(flag: str, value) -> list[str]:
    return [flag, str(value)]


def _comma_list(flag: str, values) -> list[str]:
    return [flag, _joined(values)]


def _each(flag: str, values) -> list[str]:
    return [w for v in values for w in (flag, v)]


def _each_pairs(flag: str, dicts) -> list[str]:
    return _each(flag, [_joined(f"{k}={v}" for k, v in d.items()) for d in dicts])


def _grouped(flag: str, groups) -> list[str]:
    return [flag, ";".join(f"{name}={_joined(values)}" for name, values in groups.items())]


#: what ``xbench fastrm ablate`` records of its options in the tables' command, as (dest, words):
#: the flag is ``--<dest with dashes>``. The recipe is recorded in full; the other options, every
#: one that can change a table, where they differ from their defaults.
RECIPE_OPTIONS = (
    ("model", _one), ("task", _one), ("reference", _one), ("samples", _one), ("val_samples", _one),
    ("test_samples", _one), ("steps", _one), ("batch_size", _one), ("lr", _one), ("seed", _one),
    ("tau", _one), ("heads", _comma_list), ("taus", _comma_list), ("fractions", _comma_list),
    ("step_grid", _comma_list), ("tables", _comma_list), ("out", _one),
)  # fmt: skip
OTHER_OPTIONS = (
    ("val_split", _one), ("train_seed", _one), ("train_split", _one), ("test_split", _one),
    ("weight_decay", _one), ("aux_weight", _one), ("ema", _one), ("noise_std", _one),
    ("max_new_tokens", _one), ("transfer_key", _one), ("transfer_groups", _grouped),
    ("task_param", _each), ("reference_param", _each), ("augment", _each_pairs),
)  # fmt: skip


def command_line(options: Mapping[str, Any], defaults: Mapping[str, Any], subcommand: str = "ablate",
                 recipe=RECIPE_OPTIONS, other=OTHER_OPTIONS) -> str:  # fmt: skip
    """The shell-quoted ``xbench fastrm <subcommand>`` command that remakes the tables of ``options``
    (the parsed options by dest; ``defaults``: the command's defaults, the same way): the ``recipe``
    options in full, the ``other`` ones where they differ from their defaults (both ``(dest, words)``)."""
    chosen = [(d, w) for d, w in other if options[d] not in (None, defaults[d])]
    words = ["xbench", "fastrm", subcommand]
    for dest, to_words in (*recipe, *chosen):
        words += to_words("--" + dest.replace("_", "-"), options[dest])
    return shlex.join(words)
