"""``xbench show RUN SAMPLE_ID``: one PNG of one sample's maps, for a quick look.

Panels, left to right: the image as the model saw it (centre crop, in colour); the run's map;
the reference method's map (read from the reference run named in the summary, matched by
sample id; the run's own map when the run is its own reference); the control map
(``--control``) where the run recorded it. Maps are drawn as in ``xbench report``
(:mod:`xbench.overlays`: one hue over the greyscale image, min-max scaled per map) with a
colour bar. A panel that cannot be drawn says why. Text from the run is escaped for mathtext.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from xbench.errors import ParameterError
from xbench.escaping import mathtext
from xbench.overlays import centre_square, colour_bar, overlay, record_layout, record_map, sample_images
from xbench.records import SAMPLES, SUMMARY, iter_records, method_label
from xbench.shared_samples import is_reference_of, read_summary


def find_record(run_dir: Path, sample_id: str) -> dict | None:
    """The record of ``sample_id`` in a run's ``samples.jsonl`` (None when absent)."""
    for record in iter_records(run_dir / SAMPLES):
        if str(record["id"]) == sample_id:
            return record
    return None


def reference_map(run_dir: Path, summary: dict, record: dict) -> tuple[np.ndarray | None, str]:
    """``(map, title)`` of the reference method's map for this sample, or ``(None, why not)``."""
    ref = summary.get("reference") or {}
    if not ref.get("method"):
        return None, "no reference in this run"
    title = f"reference: {ref['method']}"
    source = ref.get("source")
    if source == "same run":
        if is_reference_of(ref, summary["method"]):
            return record_map(run_dir, record), title + " (this run)"
        return None, title + " — computed in the run, map not recorded"
    for folder in (Path(str(source)), run_dir.parent / Path(str(source)).name):
        if (folder / SAMPLES).exists():
            other = find_record(folder, str(record["id"]))
            if other is not None and "error" not in other:
                return record_map(folder, other), title
    return None, f"{title} — its run ({source}) has no map for this sample here"


def _panels(run_dir: Path, summary: dict, record: dict, image) -> list[tuple[str, object]]:
    """``[(title, PIL image or reason)]`` of the figure's panels."""
    panels: list[tuple[str, object]] = []
    layout = record_layout(record)
    whole = image if layout is not None else (centre_square(image) if image is not None else None)
    panels.append(("image", whole if whole is not None else "image not available here"))
    own = record_map(run_dir, record)
    panels.append((method_label(summary), overlay(image, own, layout=layout) if own is not None else "map unreadable"))
    ref, title = reference_map(run_dir, summary, record)
    panels.append((title, overlay(image, ref, layout=layout) if ref is not None else title.split(" — ")[-1]))
    control = record_map(run_dir, record, "control_map")
    if control is not None:
        panels.append(("control map (--control)", overlay(image, control, layout=layout)))
    return panels


def show(run_dir: Path, sample_id: str, output: Path) -> Path:
    """Write the PNG of ``sample_id``'s maps in run ``run_dir`` to ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = read_summary(run_dir / SUMMARY) if (run_dir / SUMMARY).exists() else None
    if summary is None:
        raise ParameterError(f"{run_dir} is not an xbench run folder (no readable run {SUMMARY})")
    record = find_record(run_dir, sample_id)
    if record is None:
        known = [str(r["id"]) for _, r in zip(range(5), iter_records(run_dir / SAMPLES))]
        raise ParameterError(f"sample {sample_id!r} is not in {run_dir / SAMPLES} (first ids: {known})")
    if "error" in record:
        raise ParameterError(f"sample {sample_id!r} failed in this run ({record.get('stage', '?')}: {record['error']})")
    images, _ = sample_images(summary, {sample_id})
    panels = _panels(run_dir, summary, record, images.get(sample_id))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.4, 3.8), squeeze=False)
    fig.subplots_adjust(bottom=0.22, top=0.8, left=0.03, right=0.97)
    for ax, (title, picture) in zip(axes[0], panels):
        ax.set_title(mathtext(title), fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        if isinstance(picture, str):
            ax.text(0.5, 0.5, mathtext(picture), ha="center", va="center", fontsize=7, wrap=True)
        else:
            ax.imshow(np.asarray(picture), interpolation="nearest")
    bar = fig.add_axes((0.3, 0.06, 0.4, 0.04))
    bar.imshow(np.asarray(colour_bar(256, 14)), aspect="auto")
    bar.set_yticks([]), bar.set_xticks([0, 255], ["least relevant", "most relevant"], fontsize=7)
    bar.set_title("patch relevance (min-max scaled per map): the tint over light and dark regions", fontsize=7)
    gold = ", ".join(str(g) for g in record.get("gold", []))
    fig.suptitle(mathtext(f"{sample_id}: {record.get('question', '')}  answer: {record.get('answer', '')}  "
                          f"gold: {gold}"), fontsize=9)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, format="png", dpi=120)
    plt.close(fig)
    return output


def _show_args(p) -> None:
    p.add_argument("run", type=Path, help="run folder (holding summary.json and samples.jsonl)")
    p.add_argument("sample_id", help="the sample's id, as in samples.jsonl")
    p.add_argument("--output", "-o", type=Path, help="PNG to write (default <run folder name>-<sample id>.png)")


def _cmd_show(args) -> int:
    """Write one PNG of one sample's maps (method, reference, control) for a quick look."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ParameterError("xbench show needs matplotlib: pip install 'xbench[report]'") from None
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{args.run.resolve().name}-{args.sample_id}")
    out = show(args.run, args.sample_id, args.output or Path(f"{safe}.png"))
    print(f"wrote {out}")
    return 0


def _register() -> None:
    from xbench.cli import command

    command("show", _show_args)(_cmd_show)


_register()
