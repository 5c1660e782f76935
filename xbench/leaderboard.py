"""Leaderboards from run summaries only, so runs from many machines merge by copying folders.

Rows are methods, columns metrics (with an arrow from the metric's direction), one table
per task x model. Several runs of one method are averaged (``runs`` counts them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from xbench.errors import ParameterError
from xbench.records import iter_summaries

FORMATS = ("github", "latex", "csv", "json", "html")
CATEGORY_ORDER = ("answer", "agreement", "faithfulness", "localisation", "confidence", "cost")
ID_COLUMNS = ("task", "model", "method", "runs")


def method_label(summary: dict) -> str:
    """The method's name plus its non-default parameters, as the run recorded it."""
    return summary["method"].get("label") or summary["method"]["name"]


def load(root: Path, task: str | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """``(frame, columns)``: one row per (task, model, method+params), metric values averaged
    over runs; ``columns`` maps each metric to its ``category`` and ``higher_is_better``."""
    rows, columns = [], {}
    for _, s in iter_summaries(Path(root)):
        if task is not None and s["task"]["name"] != task:
            continue
        row = {"task": s["task"]["name"], "model": s["model"]["id"], "method": method_label(s)}
        for name, m in s.get("metrics", {}).items():
            row[name] = m.get("value")
            columns.setdefault(name, {"category": m.get("category"), "higher_is_better": m.get("higher_is_better")})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=list(ID_COLUMNS)), columns
    frame = pd.DataFrame(rows)
    metric_cols = ordered_metrics(columns)
    grouped = frame.groupby(["task", "model", "method"], sort=True)
    table = grouped[metric_cols].mean(numeric_only=False).reset_index()
    table.insert(3, "runs", grouped.size().values)
    return table, columns


def ordered_metrics(columns: dict[str, dict]) -> list[str]:
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


def render(root: Path, fmt: str = "github", task: str | None = None, sort_by: str | None = None) -> str:
    if fmt not in FORMATS:
        raise ParameterError(f"unknown leaderboard format {fmt!r}; choose from {list(FORMATS)}")
    table, columns = load(root, task)
    if table.empty:
        where = f" for task {task!r}" if task else ""
        raise ParameterError(f"no run summaries found under {str(root)!r}{where}")
    if sort_by is not None and sort_by not in table.columns:
        raise ParameterError(f"cannot sort by {sort_by!r}; columns: {list(table.columns)}")
    if fmt in ("csv", "json"):
        return table.to_csv(index=False) if fmt == "csv" else json.dumps(
            {"columns": columns, "rows": json.loads(table.to_json(orient="records"))}, indent=2
        )
    parts = []
    for (task_name, model), group in table.groupby(["task", "model"], sort=True):
        group = group.dropna(axis=1, how="all")
        if sort_by:
            hib = columns.get(sort_by, {}).get("higher_is_better")
            group = group.sort_values(sort_by, ascending=hib is False, na_position="last")
        metrics = [c for c in group.columns if c in columns]
        headers = ["method", "runs"] + [c + arrow(columns[c], latex=fmt == "latex") for c in metrics]
        body = group[["method", "runs"] + metrics].values.tolist()
        tablefmt = {"latex": "latex_raw", "html": "html", "github": "github"}[fmt]
        title = f"task: {task_name} · model: {model}"
        rendered = tabulate(body, headers=headers, tablefmt=tablefmt, floatfmt=".4g", missingval="—")
        if fmt == "html":
            import html

            parts.append(f"<h3>{html.escape(title)}</h3>\n{rendered}")
        elif fmt == "latex":
            parts.append(f"% {title}\n{rendered}")
        else:
            parts.append(f"### {title}\n\n{rendered}")
    return "\n\n".join(parts) + "\n"
