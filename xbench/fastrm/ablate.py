"""The paper's ablations (labelling threshold, training-set size, training steps) and the
task-transfer table, each written to ``<out>/<name>.md`` and ``<out>/<name>.json``.

Every table has one row per setting and head; every proxy is trained from the same cached
labels with the same seed and scored on the same held-out samples. Runs that coincide
(for example tau 0.3, 100% of the data, the full step count) are trained once.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from xbench.errors import DataError
from xbench.fastrm.evaluate import evaluate
from xbench.fastrm.labels import LabelSet
from xbench.fastrm.train import TrainConfig, train_proxy

METRIC_COLUMNS = ("accuracy", "precision", "recall", "f1", "iou", "auroc")
VAL_COLUMNS = ("accuracy", "f1", "auroc")


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


def threshold_table(trainer: Trainer, test: LabelSet, base: TrainConfig, heads: Sequence[str], taus: Sequence[float]):
    rows = []
    for tau in taus:
        for head in heads:
            proxy = trainer.get(replace(base, head=head, tau=tau))
            res = evaluate(proxy, test, tau)
            ceiling = res["noise_ceiling"]
            rows.append(_row({"tau": tau}, head, res, proxy, {"noise_ceiling_f1": ceiling and ceiling["f1"]}))
    return rows


def size_table(trainer: Trainer, test: LabelSet, base: TrainConfig, heads: Sequence[str], fractions: Sequence[float]):
    rows = []
    n = len(trainer.train)
    for frac in fractions:
        k = max(1, round(frac * n))
        subset, tag = (None, "all") if k == n else (trainer.train.subset(range(k)), f"first{k}")
        for head in heads:
            proxy = trainer.get(replace(base, head=head), subset, tag=tag)  # 100%: the run other tables share
            rows.append(_row({"fraction": frac, "n_train": k}, head, evaluate(proxy, test, base.tau), proxy))
    return rows


def steps_table(trainer: Trainer, test: LabelSet, base: TrainConfig, heads: Sequence[str], steps: Sequence[int]):
    rows = []
    for k in steps:
        for head in heads:
            proxy = trainer.get(replace(base, head=head, steps=k, eval_every=min(base.eval_every, k)))
            rows.append(_row({"steps": k}, head, evaluate(proxy, test, base.tau), proxy))
    return rows


def transfer_table(
    trainer: Trainer,
    test: LabelSet,
    base: TrainConfig,
    heads: Sequence[str],
    key: str,
    groups: dict[str, Sequence[str]],
):
    """Train on each group of ``meta[key]`` values (and on all, size-matched to the smallest group);
    score on every group of the test set."""
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
