"""The paper's ablations (labelling threshold, training-set size, training steps) and the
task-transfer table, each written to ``<out>/<name>.md`` and ``<out>/<name>.json`` with its
setup and the ``xbench fastrm ablate`` command that remakes it (:func:`command_line`).

Every table has one row per setting and head; every proxy is trained from the same cached
labels with the same seed and scored on the same held-out samples. Runs that coincide
(for example tau 0.3, 100% of the data, the full step count) are trained once.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, replace
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
    """Trains proxies on demand, once per distinct (config, training rows)."""

    def __init__(self, train: LabelSet, val: LabelSet, model_info: dict, progress: bool, log: Callable | None) -> None:
        self.train, self.val, self.model_info = train, val, model_info
        self.progress, self.log = progress, log
        self._done: dict[str, Any] = {}

    def get(self, cfg: TrainConfig, rows: LabelSet | None = None, tag: str = "all"):
        key = json.dumps([tag, cfg.__dict__], sort_keys=True, default=str)
        if key not in self._done:
            data = self.train if rows is None else rows
            if self.log:
                self.log(f"training {cfg.head} head: tau={cfg.tau} n={len(data)} steps={cfg.steps} ({tag})")
            self._done[key] = train_proxy(data, self.val, cfg, self.model_info, progress=self.progress)[0]
        return self._done[key]


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
    return row


def threshold_table(trainer: Trainer, test: LabelSet, base: TrainConfig, heads: Sequence[str], grids: Grids):
    rows = []
    for tau in grids.taus:
        for head in heads:
            proxy = trainer.get(replace(base, head=head, tau=tau))
            res = evaluate(proxy, test, tau)
            ceiling = res["noise_ceiling"]
            rows.append(_row({"tau": tau}, head, res, proxy, {"noise_ceiling_f1": ceiling and ceiling["f1"]}))
    return rows


def size_table(trainer: Trainer, test: LabelSet, base: TrainConfig, heads: Sequence[str], grids: Grids):
    rows = []
    n = len(trainer.train)
    for frac in grids.fractions:
        k = max(1, round(frac * n))
        subset, tag = (None, "all") if k == n else (trainer.train.subset(range(k)), f"first{k}")
        for head in heads:
            proxy = trainer.get(replace(base, head=head), subset, tag=tag)  # 100%: the run other tables share
            rows.append(_row({"fraction": frac, "n_train": k}, head, evaluate(proxy, test, base.tau), proxy))
    return rows


def steps_table(trainer: Trainer, test: LabelSet, base: TrainConfig, heads: Sequence[str], grids: Grids):
    rows = []
    for k in grids.steps:
        for head in heads:
            proxy = trainer.get(replace(base, head=head, steps=k, eval_every=min(base.eval_every, k)))
            rows.append(_row({"steps": k}, head, evaluate(proxy, test, base.tau), proxy))
    return rows


def transfer_table(trainer: Trainer, test: LabelSet, base: TrainConfig, heads: Sequence[str], grids: Grids):
    """Train on each group of ``meta[key]`` values (and on all, size-matched to the smallest group);
    score on every group of the test set (``key``, groups: ``grids.transfer_key``, ``grids.transfer_groups``)."""
    key, groups = grids.transfer_key, grids.transfer_groups
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
    setup = "\n".join(f"- {k}: {v}" for k, v in notes.items())
    (out_dir / f"{name}.md").write_text(f"# {title}\n\n{body}\n\nSetup:\n{setup}\n")
    return out_dir / f"{name}.md"


# --------------------------------------------------------------------------- the tables of one command

@dataclass(frozen=True)
class Table:
    file_name: str
    title: str
    rows: Callable[[Trainer, LabelSet, TrainConfig, Sequence[str], Grids], list[dict]]
    varies_tau: bool = False  # trained and scored at each of ``Grids.taus``, not at the base tau


#: ``xbench fastrm ablate --tables`` name -> table
TABLES = {
    "threshold": Table("ablation_threshold", "Labelling threshold (tau): proxy trained and scored at each tau",
                       threshold_table, varies_tau=True),
    "size": Table("ablation_size", "Training-set size (tau fixed)", size_table),
    "steps": Table("ablation_steps", "Training steps (tau fixed)", steps_table),
    "transfer": Table("transfer", "Transfer across question types: trained on one, scored on each (training sets "
                      "size-matched)", transfer_table),
}  # fmt: skip


def check_tables(names: Sequence[str]) -> None:
    unknown = set(names) - set(TABLES)
    if unknown:
        raise ParameterError(f"unknown ablation table(s) {sorted(unknown)}; choose from {list(TABLES)}")


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
    names: Sequence[str],
    trainer: Trainer,
    test: LabelSet,
    base: TrainConfig,
    heads: Sequence[str],
    grids: Grids,
    out_dir: Path,
    setup: dict[str, Any],
    label_seconds: float,
) -> list[Path]:
    """Make and write each table of ``names``; ``setup`` goes into every table, with its tau, its
    wall time and the time the labels took."""
    paths = []
    for name in names:
        table = TABLES[name]
        started = time.perf_counter()
        rows = table.rows(trainer, test, base, heads, grids)
        notes = {
            **setup,
            "tau": list(grids.taus) if table.varies_tau else base.tau,
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


def command_line(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """The shell-quoted ``xbench fastrm ablate`` command that remakes the tables of ``options``
    (the parsed options by dest; ``defaults``: the command's defaults, the same way)."""
    chosen = [(d, w) for d, w in OTHER_OPTIONS if options[d] not in (None, defaults[d])]
    words = ["xbench", "fastrm", "ablate"]
    for dest, to_words in (*RECIPE_OPTIONS, *chosen):
        words += to_words("--" + dest.replace("_", "-"), options[dest])
    return shlex.join(words)
