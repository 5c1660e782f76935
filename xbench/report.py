"""``xbench report RUN_DIR...``: one static HTML file, no server, every image embedded.

Sections, top to bottom: what was run; quality-vs-latency Pareto plots (matplotlib), one panel
set per task, model and sample count, one panel per quality metric, error bars = the runs' 95%
bootstrap intervals, the Pareto front drawn through the runs no other run beats on both axes;
the leaderboard (:mod:`xbench.leaderboard`: methods on the samples they share); a grid of
samples x runs with each map over the image (:mod:`xbench.overlays`: the image in greyscale,
the map in one hue whose opacity is the relevance, a colour bar beside), the question, gold
answers and each run's answer; provenance (versions, device, dtype, model and data hashes,
seed) of every run. Every run appears under its own label (two runs of one method are told
apart by their folder names). All text from runs and data is HTML-escaped (and escaped for
mathtext in plots). Images are base64 PNG ``data:`` URIs.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xbench.errors import ParameterError, XbenchError
from xbench.escaping import html_text as esc
from xbench.escaping import mathtext
from xbench.overlays import CELL_PX, centre_square, colour_bar, overlay, png_data_uri, record_layout, record_map, sample_images
from xbench.records import SAMPLES, SUMMARY, method_label, read_records
from xbench.shared_samples import read_summary, summary_paths, warn

DEFAULT_QUALITY = ("agreement_f1", "deletion_auc", "insertion_auc", "energy_in_mask")
DEFAULT_LATENCY = "explain_ms_p50"
#: provenance table: header -> where in the summary
PROVENANCE = (
    ("xbench", ("provenance", "xbench")), ("git", ("provenance", "git_sha")), ("python", ("provenance", "python")),
    ("torch", ("provenance", "torch")), ("transformers", ("provenance", "transformers")),
    ("captum", ("provenance", "captum")), ("device", ("provenance", "device_name")), ("dtype", ("model", "dtype")),
    ("model", ("model", "id")), ("model hash", ("model", "model_hash")), ("config hash", ("model", "config_hash")),
    ("split", ("task", "split")), ("data hash", ("task", "data_hash")), ("seed", ("config", "seed")),
    ("samples", ("n_ok",)), ("started", ("provenance", "started")),
)


@dataclass
class RunData:
    """One run's summary and records, from its folder; ``label`` names it in the report
    (the method label, with the folder's name where two runs share a label)."""

    path: Path
    summary: dict
    records: list[dict] = field(default_factory=list)
    label: str = ""
    folder: str = ""  # the run's folder relative to the folder all the report's runs are under

    @property
    def group(self) -> tuple[str, str]:
        return self.summary["task"]["name"], self.summary["model"]["id"]

    def by_id(self) -> dict[str, dict]:
        return {r["id"]: r for r in self.records}


def find_runs(paths: Sequence[Path]) -> list[RunData]:
    """Each argument is a run folder or a folder holding runs below it; a summary that is not an
    xbench run summary is skipped with a warning naming it."""
    runs = []
    for p in map(Path, paths):
        found = summary_paths(p)
        if not found:
            raise ParameterError(f"no run ({SUMMARY}) found under {str(p)!r}")
        for summary_path in found:
            summary = read_summary(summary_path)
            if summary is not None:
                try:
                    records = read_records(summary_path.parent / SAMPLES)
                except (OSError, XbenchError) as exc:  # as the leaderboard does: said, and the run kept
                    warn(f"{summary_path.parent / SAMPLES}: unreadable ({exc}); the run's samples are not shown")
                    records = []
                runs.append(RunData(summary_path.parent, summary, records, method_label(summary)))
    if not runs:
        raise ParameterError(f"no xbench run summary found under {', '.join(repr(str(p)) for p in paths)}")
    _distinguish(runs)
    runs.sort(key=lambda r: (r.group, r.label))
    return runs


def _distinguish(runs: list[RunData]) -> None:
    """Set each run's ``folder``; two runs of one method with one task, model and sample count (so
    in one plot) both appear: each gets its folder after its label."""
    key = lambda r: (*r.group, r.summary.get("n_ok"), r.label)  # noqa: E731
    counts = Counter(key(r) for r in runs)
    common = Path(os.path.commonpath([str(r.path.resolve()) for r in runs]))
    for r in runs:
        r.folder = str(r.path.resolve().relative_to(common)) if r.path.resolve() != common else r.path.name
        if counts[key(r)] > 1:
            r.label = f"{r.label} ({r.folder})"


# --------------------------------------------------------------------------- Pareto plot
def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of points no other point beats: lower-or-equal latency and better-or-equal
    quality, strictly better in one. Sorted by latency."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (x2, y2) in enumerate(points):
            better_q = y2 >= y if higher_is_better else y2 <= y
            strictly = x2 < x or (y2 > y if higher_is_better else y2 < y)
            if j != i and x2 <= x and better_q and strictly:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_figure(runs: list[RunData], quality: Sequence[str], latency: str) -> tuple[str | None, list[str]]:
    """``(data URI, metrics shown)`` of a figure with one panel per quality metric present, for
    runs of one task, model and sample count.

    Each run keeps one colour and marker across panels (legend below: every run, two runs of one
    method under their distinct labels); front points are labelled. Text from runs is escaped
    for mathtext.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [q for q in quality if any(q in r.summary["metrics"] and latency in r.summary["metrics"] for r in runs)]
    if not shown:
        return None, []
    labels = [mathtext(r.label) for r in runs]  # a `$` in a label must not start mathtext
    colours = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xh<>p"
    style = {lab: (colours[i % len(colours)], markers[i % len(markers)]) for i, lab in enumerate(labels)}
    fig, axes = plt.subplots(1, len(shown), figsize=(4.0 * len(shown), 3.8), squeeze=False)
    handles = {}
    for ax, metric in zip(axes[0], shown):
        pts, names, hib = [], [], True
        for r, label in zip(runs, labels):
            m = r.summary["metrics"]
            if metric not in m or latency not in m or m[metric]["value"] is None or m[latency]["value"] is None:
                continue
            hib = m[metric].get("higher_is_better") is not False
            x, y = m[latency]["value"], m[metric]["value"]
            colour, marker = style[label]
            xe, ye = _err(x, m[latency].get("ci95")), _err(y, m[metric].get("ci95"))
            h = ax.errorbar([x], [y], xerr=[[xe[0]], [xe[1]]], yerr=[[ye[0]], [ye[1]]], fmt=marker, color=colour,
                            ecolor=colour, elinewidth=0.8, alpha=0.9, capsize=2, markersize=6, zorder=3)
            handles.setdefault(label, h)
            pts.append((x, y))
            names.append(label)
        control = [r.summary["metrics"].get(f"{metric}_random", {}).get("value") for r in runs]
        control = [c for c in control if c is not None]
        if control:  # a random patch order: the line a faithful map must beat
            ax.axhline(float(np.mean(control)), color="#888", ls=":", lw=1.2, zorder=1)
            ax.annotate("random order", (0.99, float(np.mean(control))), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(0, -9), fontsize=7, color="#666", ha="right")
        front = pareto_front(pts, hib)
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        ax.plot(xs[front], ys[front], "--", color="#444", lw=1, zorder=2)
        for i in front:
            ax.annotate(names[i], pts[i], textcoords="offset points", xytext=(4, 4), fontsize=7)
        log = bool(len(xs)) and xs.min() > 0 and xs.max() / xs.min() > 10
        if log:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(mathtext(f"{latency} (ms{', log scale' if log else ''})"))
        ax.set_ylabel(mathtext(f"{metric} ({'higher' if hib else 'lower'} is better)"))
        ax.set_title(mathtext(f"{metric} vs latency"), fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(7, len(handles)), fontsize=8,
               frameon=False)
    rows = math.ceil(len(handles) / 7)
    fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    uri = png_data_uri(fig)
    plt.close(fig)
    return uri, shown


def _err(value: float, ci) -> tuple[float, float]:
    if not ci or ci[0] is None or ci[1] is None:
        return (0.0, 0.0)
    return (max(value - ci[0], 0.0), max(ci[1] - value, 0.0))


def figures(runs: list[RunData], quality: Sequence[str], latency: str) -> list[str]:
    """HTML of one Pareto figure per task, model and sample count (runs of different sizes never share one)."""
    sets: dict[tuple, list[RunData]] = {}
    for r in runs:
        sets.setdefault((*r.group, r.summary.get("n_ok")), []).append(r)
    parts = []
    for (task, model, n), group in sorted(sets.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        title = f"task: {task} · model: {model} · {n} samples per run"
        figure, shown = pareto_figure(group, quality, latency)
        if figure:
            parts.append(f"<h3>{esc(title)}</h3><img src='{figure}' alt='quality versus latency, {esc(title)}' "
                         f"style='max-width:100%'><p class='note'>Panels: {esc(', '.join(shown))}.</p>")
    return parts


# --------------------------------------------------------------------------- HTML
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1600px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#555;margin:0 0 12px} .note{color:#666;font-size:12px}
.scroll{overflow-x:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:12px} th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;white-space:nowrap}
th{background:#f5f5f5} .grid td{vertical-align:top;white-space:normal;width:140px}
.grid img{width:128px;height:128px;image-rendering:pixelated;display:block}
.bar{display:flex;align-items:center;gap:6px;font-size:12px;color:#444} .bar img{width:256px;height:14px}
.ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600} .q{max-width:180px}
"""


def _answer_cell(record: dict | None, run_dir: Path, image, sample_id: str) -> str:
    if record is None:
        return "<td>not in this run</td>"
    if "error" in record:
        return f"<td><span class='bad'>error</span> {esc(record.get('stage', ''))}: {esc(record['error'])}</td>"
    grid = record_map(run_dir, record)
    if grid is None:
        return f"<td>map unreadable ({esc(record.get('map_file', '?'))})</td>"
    uri = png_data_uri(overlay(image, grid, layout=record_layout(record)))
    acc = (record.get("scores") or {}).get("accuracy")
    mark = "" if acc is None else (" <span class='ok'>✓</span>" if acc >= 1 else " <span class='bad'>✗</span>")
    return (f"<td><img src='{uri}' alt='map for {esc(sample_id)}'>answer: <b>{esc(record.get('answer', ''))}</b>"
            f"{mark}</td>")


def colour_bar_html() -> str:
    return (f"<div class='bar'>least relevant patch <img src='{png_data_uri(colour_bar())}' alt='colour bar'> "
            "most relevant patch (the tint over a light and a dark image region)</div>")


def sample_grid(runs: list[RunData], n_samples: int) -> str:
    """Per task and model, rows: samples every run explained (first run's order); columns: the
    image, then every run's map."""
    tables = []
    groups: dict[tuple, list[RunData]] = {}
    for r in runs:
        if r.records:  # a run kept as a summary alone has no maps to show
            groups.setdefault(r.group, []).append(r)
    for (task, model), group in groups.items():
        indexed = [r.by_id() for r in group]
        ids = [i for i, rec in indexed[0].items() if "error" not in rec and all(i in other for other in indexed)]
        ids = ids[:n_samples]
        if not ids:
            continue
        images, note = sample_images(group[0].summary, set(ids))
        head = "".join(f"<th>{esc(r.label)}</th>" for r in group)
        rows = []
        for sid in ids:
            first = indexed[0][sid]
            img = images.get(sid)
            pic = f"<img src='{png_data_uri(centre_square(img).resize((CELL_PX, CELL_PX)))}' alt='image {esc(sid)}'>" if img else ""
            gold = ", ".join(str(g) for g in first.get("gold", []))
            info = (f"<td class='q'>{pic}<div><b>{esc(first.get('question', ''))}</b></div>"
                    f"<div>gold: {esc(gold)}</div><div class='note'>{esc(sid)}</div></td>")
            cells = "".join(_answer_cell(ix.get(sid), r.path, img, sid) for ix, r in zip(indexed, group))
            rows.append(f"<tr>{info}{cells}</tr>")
        caption = f"task: {task} · model: {model}" + (f" — {note}" if note else "")
        tables.append(
            f"<h3>{esc(caption)}</h3><div class='scroll'><table class='grid'><tr><th>sample</th>{head}</tr>"
            + "".join(rows) + "</table></div>"
        )
    return "\n".join(tables)


def _lookup(summary: dict, path: tuple[str, ...]) -> Any:
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def provenance_table(runs: list[RunData]) -> str:
    """One row per run: what produced it, so that a figure can be traced and re-made."""
    head = "".join(f"<th>{esc(h)}</th>" for h in ("run", "folder", *(h for h, _ in PROVENANCE)))
    rows = []
    for r in runs:
        cells = [r.label, r.folder, *(_lookup(r.summary, path) for _, path in PROVENANCE)]
        rows.append("<tr>" + "".join(f"<td>{esc('—' if c is None else c)}</td>" for c in cells) + "</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(rows)}</table></div>"


def build_report(
    paths: Sequence[Path],
    n_samples: int = 6,
    quality: Sequence[str] = DEFAULT_QUALITY,
    latency: str = DEFAULT_LATENCY,
    columns: str | None = None,
) -> str:
    """The report's HTML text for the runs in ``paths``."""
    from xbench.leaderboard import NOTE, render

    runs = find_runs(paths)
    groups = sorted({r.group for r in runs})
    n = sum(r.summary.get("n_ok", 0) for r in runs)
    sub = "; ".join(f"task {t} · model {m}" for t, m in groups)
    plots = figures(runs, quality, latency)
    board = render([r.path / SUMMARY for r in runs], "html", columns_filter=columns)
    board = board.replace("<table>", "<div class='scroll'><table>").replace("</table>", "</table></div>")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>xbench report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>xbench report: which explanation method is worth its cost?</h1>",
        f"<p class='sub'>{len(runs)} run(s), {n} explained samples in all — {esc(sub)}</p>",
        "<h2>Quality vs latency</h2>",
    ]
    if plots:
        parts += plots
        parts.append(
            f"<p class='note'>Each point is a run; bars: 95% bootstrap intervals over samples; the dashed line joins "
            f"(and labels) the runs no other run beats on both latency ({esc(latency)}) and quality; a dotted "
            f"line marks the same curve for a random patch order. One figure per sample count: runs of different "
            f"sizes are not drawn together (the leaderboard compares them on their shared samples).</p>"
        )
    else:
        parts.append(f"<p class='note'>No run has {esc(latency)} with any of {esc(', '.join(quality))}.</p>")
    parts += [
        "<h2>Leaderboard</h2>",
        f"<p class='note'>{esc(NOTE)}</p>",
        board,
        "<h2>Samples × runs</h2>",
        "<p class='note'>The image in greyscale, as the model saw it (centre crop); each map min-max scaled for "
        "display and drawn in one red hue whose opacity is the patch's relevance (one block per image patch), so no "
        "colour of the image can read as relevance. ✓/✗: the run's answer scored against the gold answers.</p>",
        colour_bar_html(),
        sample_grid(runs, n_samples),
        "<h2>Provenance</h2>",
        provenance_table(runs),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(paths: Sequence[Path], output: Path, **kw) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(build_report(paths, **kw), encoding="utf-8")
    return output


# --------------------------------------------------------------------------- CLI
def _report_args(p) -> None:
    p.add_argument("runs", nargs="+", type=Path, help="run folders (or folders holding runs)")
    p.add_argument("--output", "-o", type=Path, default=Path("report.html"), help="HTML file to write (default report.html)")
    p.add_argument("--samples", type=int, default=6, help="rows of the samples x methods grid (default 6)")
    p.add_argument("--quality", default=",".join(DEFAULT_QUALITY), help="quality metrics of the Pareto panels")
    p.add_argument("--latency", default=DEFAULT_LATENCY, help=f"cost metric of the x axis (default {DEFAULT_LATENCY})")
    p.add_argument("--columns", help="leaderboard column patterns (as `xbench leaderboard --columns`)")


def _cmd_report(args) -> int:
    """Write one static HTML report (Pareto plots, leaderboard, sample x run maps, provenance) for runs."""
    if args.samples < 0:
        raise ParameterError("--samples must be >= 0")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ParameterError("xbench report needs matplotlib: pip install 'xbench[report]'") from None
    quality = [q.strip() for q in args.quality.split(",") if q.strip()]
    out = write_report(args.runs, args.output, n_samples=args.samples, quality=quality, latency=args.latency,
                       columns=args.columns)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


def _register() -> None:
    from xbench.cli import command

    command("report", _report_args)(_cmd_report)


_register()
