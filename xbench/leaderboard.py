"""Leaderboards from run summaries only, so runs from many machines merge by copying folders.

Rows are methods, columns metrics (with an arrow from the metric's direction): quality
columns (answer, agreement, faithfulness, localisation, confidence) then cost columns, one
table per task x model. A cell reads ``mean ± h``: the run's value and half the width of
its 95% bootstrap interval over samples (computed by the runner, see ``summary.json``;
csv/json give the bounds as ``<metric>_ci95_lo`` / ``_ci95_hi``). Several runs of one
method asked for the same number of samples (``--limit``; one table per task, model
and limit) are averaged (``runs`` counts them): a metric that several runs give is their mean,
shown without an interval; a metric only one of them gives keeps that run's value and interval. A column
``name[control]`` is ``name`` on the randomized-weights control model; it has no arrow.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path
from typing import Iterable

import pandas as pd
from tabulate import tabulate

from xbench.errors import ParameterError
from xbench.records import iter_summaries, method_label
from xbench.stats import LEVEL, N_RESAMPLES

FORMATS = ("github", "latex", "csv", "json", "html")
CATEGORY_ORDER = ("answer", "agreement", "faithfulness", "localisation", "confidence", "cost")
ID_COLUMNS = ("task", "model", "method", "runs", "samples")
GROUP = ["task", "model", "samples"]  # one table each: rows in a table were asked the same number of samples
LO, HI = "_ci95_lo", "_ci95_hi"
NOTE = (
    f"Cells: mean over samples ± half the width of its {LEVEL:.0%} percentile bootstrap interval ({N_RESAMPLES} "
    "seeded resamples "
    "of the samples; a value averaged over several runs of a method shows no interval). ↑ higher is better, ↓ lower is better. "
    "`name[control]`: the same metric for the method on the model with re-randomised weights (`--control "
    "randomized`); `*_random`: a random patch order, the control of deletion/insertion. Cost: milliseconds per "
    "sample (p50/p95), peak memory in MiB."
)


def _roots(root: Path | str | Iterable[Path | str]) -> list[Path]:
    return [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]


def load(root, task: str | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """``(frame, columns)``: one row per (task, model, method+params), metric values averaged
    over the runs that have it, with ``<metric>_ci95_lo/hi`` where one run gave the value; ``columns`` maps each metric
    to its ``category`` and ``higher_is_better``. ``root``: a folder, a summary, or several."""
    rows, columns = [], {}
    for r in _roots(root):
        for _, s in iter_summaries(r):
            if task is not None and s["task"]["name"] != task:
                continue
            limit = (s.get("config") or {}).get("limit")
            row = {"task": s["task"]["name"], "model": s["model"]["id"], "method": method_label(s),
                   "samples": "all" if limit is None else str(limit)}
            for name, m in s.get("metrics", {}).items():
                row[name] = m.get("value")
                ci = m.get("ci95") or (None, None)
                row[name + LO], row[name + HI] = ci
                columns.setdefault(name, {"category": m.get("category"), "higher_is_better": m.get("higher_is_better")})
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=list(ID_COLUMNS)), columns
    metric_cols = ordered_metrics(columns)
    ci_cols = [c + s for c in metric_cols for s in (LO, HI)]
    frame = pd.DataFrame(rows)
    ids = frame[GROUP + ["method"]]
    values = frame.reindex(columns=metric_cols + ci_cols).apply(pd.to_numeric, errors="coerce")
    grouped = pd.concat([ids, values], axis=1).groupby(GROUP + ["method"], sort=True)
    runs = grouped.size().rename("runs")
    table = pd.concat([runs, grouped.mean()], axis=1).reset_index()
    table = table[list(ID_COLUMNS) + metric_cols + ci_cols]
    counts = grouped[metric_cols].count().reset_index(drop=True)
    for col in metric_cols:  # an interval belongs to one run: drop it where several runs were averaged
        several = (counts[col] > 1).to_numpy()
        table.loc[several, [col + LO, col + HI]] = float("nan")
    return table, columns


def ordered_metrics(columns: dict[str, dict]) -> list[str]:
    """Quality categories first, cost last; a ``[control]`` column right after its metric."""

    def key(name):
        cat = columns[name]["category"]
        return (CATEGORY_ORDER.index(cat) if cat in CATEGORY_ORDER else len(CATEGORY_ORDER), name)

    return sorted(columns, key=key)


def arrow(info: dict, latex: bool = False) -> str:
    hib = info.get("higher_is_better")
    if hib is None:
        return ""
    if latex:
        return " $\\uparrow$" if hib else " $\\downarrow$"
    return " ↑" if hib else " ↓"


def _num(x: float) -> str:
    return f"{x:.3g}"


def cell(value, lo, hi, latex: bool = False) -> str:
    """``0.531 ± 0.041``; the value alone without an interval; ``—`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = _num(value)
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += (" $\\pm$ " if latex else " ± ") + f"{(hi - lo) / 2:.2g}"
    return text


def select_columns(metrics: list[str], patterns: str | None) -> list[str]:
    """Metrics matching any comma-separated shell pattern (all when ``patterns`` is None)."""
    if not patterns:
        return metrics
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [m for m in metrics if any(fnmatch.fnmatchcase(m, p) for p in pats)]
    if not chosen:
        raise ParameterError(f"no metric matches --columns {patterns!r}; metrics: {metrics}")
    return chosen


def render(
    root, fmt: str = "github", task: str | None = None, sort_by: str | None = None, columns_filter: str | None = None
) -> str:
    if fmt not in FORMATS:
        raise ParameterError(f"unknown leaderboard format {fmt!r}; choose from {list(FORMATS)}")
    table, columns = load(root, task)
    if table.empty:
        where = f" for task {task!r}" if task else ""
        shown = ", ".join(repr(str(r)) for r in _roots(root))
        raise ParameterError(f"no run summaries found under {shown}{where}")
    if sort_by is not None and sort_by not in columns:
        raise ParameterError(f"cannot sort by {sort_by!r}; columns: {list(table.columns[:4]) + ordered_metrics(columns)}")
    chosen = select_columns(ordered_metrics(columns), columns_filter)
    if fmt in ("csv", "json"):
        keep = list(ID_COLUMNS) + [c + s for c in chosen for s in ("", LO, HI)]
        flat = table[keep]
        return flat.to_csv(index=False) if fmt == "csv" else json.dumps(
            {"columns": {c: columns[c] for c in chosen}, "rows": json.loads(flat.to_json(orient="records"))}, indent=2
        )
    parts = []
    for (task_name, model, samples), group in table.groupby(GROUP, sort=True):
        metrics = [c for c in chosen if group[c].notna().any()]
        if sort_by:
            hib = columns.get(sort_by, {}).get("higher_is_better")
            group = group.sort_values(sort_by, ascending=hib is False, na_position="last")
        latex = fmt == "latex"
        headers = ["method", "runs"] + [c + arrow(columns[c], latex=latex) for c in metrics]
        body = [
            [row["method"], row["runs"]] + [cell(row[c], row[c + LO], row[c + HI], latex) for c in metrics]
            for _, row in group.iterrows()
        ]
        tablefmt = {"latex": "latex_raw", "html": "html", "github": "github"}[fmt]
        title = f"task: {task_name} · model: {model} · samples: {samples}"
        rendered = tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)
        if fmt == "html":
            import html

            parts.append(f"<h3>{html.escape(title)}</h3>\n{rendered}")
        elif fmt == "latex":
            parts.append(f"% {title}\n{rendered}")
        else:
            parts.append(f"### {title}\n\n{rendered}")
    if fmt == "github":
        parts.insert(0, NOTE)
    return "\n\n".join(parts) + "\n"
