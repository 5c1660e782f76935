"""Leaderboards from run folders (``summary.json`` plus ``samples.jsonl``), so runs from many
machines merge by copying folders.

One table per task, model, split and data set; rows are methods. Methods are compared on the
samples they share (:mod:`xbench.shared_samples`): the intersection of their successful sample
ids, shown as ``n``; runs of different ``--limit`` meet in one table. Runs without readable
records, or sharing no sample, get a table per ``--limit`` on their own samples.

By default the text formats show the headline (:mod:`xbench.headline`, about ten columns);
``--columns all`` or comma-separated patterns (fnmatch: ``*``, ``?``, ``[seq]``; write ``[[]``
for a literal ``[``) give the full table, whose cells read ``mean ± h``: the run's value and
half the width of its 95% bootstrap interval over samples (computed by the runner; csv/json
give the bounds as ``<metric>_ci95_lo`` / ``_ci95_hi``). The machine formats (csv, json)
give every column by default. Several runs of one method are averaged (``runs`` counts them):
a metric several runs give is their mean, shown without an interval; a value recomputed on
fewer samples than its run has shows no interval either. ``name@control`` is ``name`` on the
randomized-weights control model; it has no arrow. Numbers show 3 significant digits.
"""

from __future__ import annotations

import fnmatch
import json
import math
import textwrap
from pathlib import Path
from typing import Iterable

import pandas as pd

from xbench import escaping
from xbench.errors import ParameterError
from xbench.headline import GAINS, gain, headline_columns
from xbench.shared_samples import (Recomputer, Run, Values, is_reference_of, read_runs, shared_ids, summary_values,
                                   warn)
from xbench.stats import LEVEL, N_RESAMPLES
from xbench.tables import FORMATS, MISSING, cell, render_table

CATEGORY_ORDER = ("answer", "agreement", "faithfulness", "localisation", "sanity", "confidence", "cost")
TABLE = ["task", "model", "split", "data", "compared"]
ID_COLUMNS = ("task", "model", "method", "runs", "n", "split", "data", "compared")
LO, HI = "_ci95_lo", "_ci95_hi"
SHARED = "shared samples"
REFERENCE_MARK, FLAG_MARK, OWN_MARK = "★", "⚠", "†"
WIDTH = 120  # prose lines are wrapped here; tables of the headline fit 160 characters
NOTE = (
    f"Methods are compared on the samples they share (n: how many). Full tables (--columns all): mean over samples ± "
    f"half the width of its {LEVEL:.0%} percentile bootstrap interval ({N_RESAMPLES} seeded resamples of the samples; "
    "a value averaged over several runs of a method, or recomputed on the shared samples, shows no interval). "
    "↑ higher is better, ↓ lower is better. `name@control`: the same metric for the method on the model with "
    "re-randomised weights (`--control randomized`); `*_random`: a random patch order, the control of "
    "deletion/insertion. Cost: milliseconds per sample (p50/p95), memory in MiB."
)


def _roots(root: Path | str | Iterable[Path | str]) -> list[Path]:
    return [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]


def _is_reference(run: Run, group: list[Run]) -> bool:
    """Whether some run of the table names ``run``'s method (and parameters) as its reference."""
    method = run.summary["method"]
    for other in group:
        if is_reference_of(other.summary.get("reference"), method):
            return True
    return False


def _run_rows(group: list[Run], recompute: Recomputer) -> list[tuple[dict, Values]]:
    """``(id cells, values)`` per run of one comparable group (same task, model, split, data)."""
    with_records = [r for r in group if r.records]
    ids = shared_ids(with_records)
    if with_records and not ids:
        task, model = group[0].key[:2]
        warn(f"the runs of task {task!r} on model {model!r} share no successful sample; each is shown on its own samples")
    rows = []
    for run in group:
        shared = bool(run.records) and bool(ids)
        values = recompute.values(run, ids) if shared else summary_values(run)
        task, model, split, data = run.key
        compared = SHARED if shared else f"own samples, limit {run.limit}"
        n = len(ids) if shared else run.summary.get("n_ok")
        ids_cells = {"task": task, "model": model, "split": split, "data": data, "compared": compared,
                     "method": run.label, "n": n, "reference": _is_reference(run, group),
                     "references": _reference_label(run)}
        for name in GAINS:
            values.values[name] = gain(values.values, name)
            if any(part in values.own for part in GAINS[name][:2]):
                values.own.add(name)
        rows.append((ids_cells, values))
    return rows


def _reference_label(run: Run) -> str | None:
    ref = run.summary.get("reference") or {}
    return ref.get("method")


def _column_info(runs: list[Run]) -> dict[str, dict]:
    columns: dict[str, dict] = {}
    for run in runs:
        for name, m in run.summary["metrics"].items():
            info = {"category": m.get("category"), "higher_is_better": m.get("higher_is_better")}
            if m.get("flag_above") is not None:
                info["flag_above"] = m["flag_above"]
            columns.setdefault(name, info)
    for name, (method, random, sign) in GAINS.items():
        if method in columns and random in columns:
            columns[name] = {"category": "faithfulness", "higher_is_better": True,
                             "derived": f"{random} - {method}" if sign < 0 else f"{method} - {random}"}
    return columns


def _average(rows: list[tuple[dict, Values]], metrics: list[str]) -> dict:
    """One table row from the runs of one method: means, an interval where one run gives the value."""
    ids, _ = rows[0]
    out = {**ids, "runs": len(rows), "reference": any(r[0]["reference"] for r in rows), "own": set()}
    ns = sorted({r[0]["n"] for r in rows if r[0]["n"] is not None})
    out["n"] = None if not ns else ns[0] if len(ns) == 1 else "/".join(str(n) for n in ns)
    for col in metrics:
        given = [v for v in rows if v[1].values.get(col) is not None]
        out[col] = sum(v.values[col] for _, v in given) / len(given) if given else None
        lo, hi = given[0][1].ci.get(col, (None, None)) if len(given) == 1 else (None, None)
        out[col + LO], out[col + HI] = lo, hi
        if any(col in v.own for _, v in given):
            out["own"].add(col)
    return out


def load(root, task: str | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """``(frame, columns)``: one row per table (task, model, split, data, compared) and method label,
    values on the table's shared samples, averaged over the method's runs; ``columns`` maps each
    metric to its ``category``, ``higher_is_better`` (and ``flag_above`` where set).
    ``root``: a folder, a summary, or several."""
    runs = read_runs(_roots(root), task)
    columns = _column_info(runs)
    metrics = ordered_metrics(columns)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    recompute = Recomputer()
    by_row: dict[tuple, list[tuple[dict, Values]]] = {}
    for key in sorted(groups):
        for ids, values in _run_rows(groups[key], recompute):
            by_row.setdefault(tuple(ids[c] for c in (*TABLE, "method")), []).append((ids, values))
    rows = [_average(by_row[k], metrics) for k in sorted(by_row, key=lambda k: tuple(str(p) for p in k))]
    if not rows:
        return pd.DataFrame(columns=list(ID_COLUMNS)), columns
    ci_cols = [c + s for c in metrics for s in (LO, HI)]
    frame = pd.DataFrame(rows)
    return frame[[*ID_COLUMNS, "reference", "references", "own", *metrics, *ci_cols]], columns


def ordered_metrics(columns: dict[str, dict]) -> list[str]:
    """Quality categories first, cost last; a control column right after its metric."""

    def key(name):
        cat = columns[name]["category"]
        return (CATEGORY_ORDER.index(cat) if cat in CATEGORY_ORDER else len(CATEGORY_ORDER), name)

    return sorted(columns, key=key)


def arrow(info: dict) -> str:
    hib = info.get("higher_is_better")
    return "" if hib is None else (" ↑" if hib else " ↓")


def select_columns(metrics: list[str], patterns: str | None) -> list[str]:
    """Metrics matching any comma-separated fnmatch pattern (every metric for ``all``)."""
    if not patterns or patterns.strip() == "all":
        return metrics
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [m for m in metrics if any(fnmatch.fnmatchcase(m, p) for p in pats)]
    if not chosen:
        raise ParameterError(f"no metric matches --columns {patterns!r} (fnmatch patterns; '[[]' is a literal '['); "
                             f"metrics: {metrics}")
    return chosen


def _machine(table: pd.DataFrame, columns: dict[str, dict], chosen: list[str], fmt: str) -> str:
    keep = [*ID_COLUMNS, *(c + s for c in chosen for s in ("", LO, HI))]
    flat = table[keep]
    if fmt == "json":
        return json.dumps({"columns": {c: columns[c] for c in chosen},
                           "rows": json.loads(flat.to_json(orient="records"))}, indent=2)
    safe = flat.map(escaping.csv_cell).rename(columns=escaping.csv_cell)
    return safe.to_csv(index=False)


def _cells(row: pd.Series, shown: list[tuple[str, str]], columns: dict[str, dict], present: set[str],
           full: bool) -> list[str]:
    """The row's cells of the ``shown`` columns: the reference's agreement reads 'ref', flagged values
    get :data:`FLAG_MARK`, values not recomputed on the shared samples :data:`OWN_MARK`."""
    out = []
    for _, col in shown:
        value = row.get(col)
        info = columns.get(col, {})
        if row["reference"] and col in present and info.get("category") == "agreement" \
                and info.get("higher_is_better") is not None:
            out.append("ref")
            continue
        text = cell(value, row.get(col + LO) if full else None, row.get(col + HI) if full else None)
        flag = info.get("flag_above")
        if flag is not None and value is not None and not _nan(value) and value > flag:
            text += f" {FLAG_MARK}"
        if col in row["own"] and text != MISSING:
            text += OWN_MARK
        out.append(text)
    return out


def _count(n) -> str:
    return MISSING if n is None or _nan(n) else str(n)


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _legend(shown: list[tuple[str, str]], columns: dict[str, dict], group: pd.DataFrame, full: bool) -> list[str]:
    """Prose under a table: what each short header is, and what its marks mean."""
    lines = []
    if not full:
        parts = [f"{h} = {c}" + (f" ({columns[c]['derived']})" if "derived" in columns.get(c, {}) else "")
                 for h, c in shown if h != c]
        lines.append("Columns: " + "; ".join(parts) + ".")
    refs = sorted({r for r in group["references"] if isinstance(r, str)})
    if refs:
        lines.append(f"{REFERENCE_MARK} the reference method of the agreement columns (its agreement cells read 'ref'); "
                     f"agreement is measured against: {', '.join(refs)}.")
    for header, col in shown:
        flag = columns.get(col, {}).get("flag_above")
        if flag is not None:
            lines.append(f"{FLAG_MARK} {col} above {flag:g} (the metric's flag_above): the map changes little when "
                         "the model's weights are re-randomised, so it may not explain this model.")
    if any(bool(own) for own in group["own"]):
        lines.append(f"{OWN_MARK} the run's own value over all its samples: a run-level value that cannot be "
                     "recomputed on the shared samples here (e.g. peak_rss_mib, the whole process's peak).")
    return lines


def render(
    root, fmt: str = "github", task: str | None = None, sort_by: str | None = None, columns_filter: str | None = None
) -> str:
    """The leaderboard text in ``fmt`` (see the module docstring for what is shown)."""
    if fmt not in FORMATS:
        raise ParameterError(f"unknown leaderboard format {fmt!r}; choose from {list(FORMATS)}")
    table, columns = load(root, task)
    if table.empty:
        where = f" for task {task!r}" if task else ""
        shown = ", ".join(repr(str(r)) for r in _roots(root))
        raise ParameterError(f"no run summaries found under {shown}{where}")
    if sort_by is not None and sort_by not in columns:
        raise ParameterError(f"cannot sort by {sort_by!r}; columns: {ordered_metrics(columns)}")
    if fmt in ("csv", "json"):
        return _machine(table, columns, select_columns(ordered_metrics(columns), columns_filter), fmt)
    full = columns_filter is not None
    chosen = select_columns(ordered_metrics(columns), columns_filter)
    parts = [] if fmt != "github" else ["\n".join(textwrap.wrap(NOTE, WIDTH))]
    for key, group in sorted(table.groupby(TABLE, sort=True), key=lambda kg: (kg[0][4] != SHARED, kg[0])):
        present = {c for c in columns if group[c].notna().any()}
        if full:
            shown = [(c, c) for c in chosen if c in present]
        else:
            shown = headline_columns(columns, present)
        if sort_by:
            group = group.sort_values(sort_by, ascending=columns[sort_by].get("higher_is_better") is False,
                                      na_position="last")
        several = (group["runs"] > 1).any()
        headers = ["method", "n", *(["runs"] if several else []), *(h + arrow(columns.get(c, {})) for h, c in shown)]
        body = [[row["method"] + (f" {REFERENCE_MARK}" if row["reference"] else ""), _count(row["n"]),
                 *([str(row["runs"])] if several else []), *_cells(row, shown, columns, present, full)]
                for _, row in group.iterrows()]
        task_name, model, split, data, compared = key
        n = group["n"].iloc[0] if compared == SHARED else None
        title = " · ".join([f"task: {task_name}", f"model: {model}", *([f"split: {split}"] if split else []),
                            f"{n} shared samples" if n is not None else compared, *([f"data {data}"] if data else [])])
        legend = _legend(shown, columns, group, full)
        parts.append(render_table(fmt, title, headers, body, legend, WIDTH))
    return "\n\n".join(parts) + "\n"
