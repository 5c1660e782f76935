"""`xbench report`: one static HTML file; rendered in headless Chromium with every image loaded."""

import io
import json
import re
import shutil
import subprocess

import pytest

from xbench.cli import main
from xbench.records import read_records
from xbench.report import build_report, pareto_front
from xbench.runner import RunConfig, run

EVIL = "<script>alert('x')</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--hide-scrollbars",
]
IMAGE_CHECK = (
    "<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
    "document.body.setAttribute('data-image-check',JSON.stringify({n:imgs.length,"
    "broken:imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).map(i=>i.alt)}));});</script>"
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, plugins):
    root = tmp_path_factory.mktemp("report")
    common = dict(model="tiny-random-llava", limit=3, warmup=0, progress=False, reference="rollout",
                  metrics=["agreement_f1", "energy_in_mask", "deletion_auc"], metric_params={"steps": 4})
    run(RunConfig(method="rollout", out=root / "rollout", **common), plugins)
    run(RunConfig(method="raw_attention", out=root / "raw", control="randomized", **common), plugins)
    # a run whose user text tries to inject markup
    evil = root / "evil"
    shutil.copytree(root / "raw", evil)
    records = read_records(evil / "samples.jsonl")
    for r in records:
        r["question"], r["answer"] = EVIL + r["question"], EVIL
    (evil / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = json.loads((evil / "summary.json").read_text())
    summary["method"]["label"] = "raw<b>evil</b>"
    (evil / "summary.json").write_text(json.dumps(summary))
    return root


def test_pareto_front_hand_example():
    # (latency, quality): b is beaten by a (faster, better); c is slower but best; d ties a's latency, worse
    pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (1.0, 0.3)]
    assert pareto_front(pts, higher_is_better=True) == [0, 2]
    assert pareto_front(pts, higher_is_better=False) == [3]  # lower is better: d is fastest and lowest


def test_report_is_one_self_contained_escaped_file(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(runs), "--output", str(out), "--samples", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    assert "<script" not in text.lower()  # user text escaped, and the report itself needs no script
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text and "raw&lt;b&gt;evil&lt;/b&gt;" in text
    srcs = re.findall(r"<img src='([^']*)'", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing fetched
    # figure + colour bar + 2 samples x (image + 3 runs' maps)
    assert len(srcs) == 1 + 1 + 2 * (1 + 3)
    for heading in ("Quality vs latency", "Leaderboard", "Samples × runs", "Provenance"):
        assert heading in text
    assert "loc@ctrl = energy_in_mask@control" in text and "agr F1 ↑" in text and "<th>del gain" in text  # the headline
    assert "gold: " in text and "answer: <b>" in text and "alt='colour bar'" in text
    summary = json.loads((runs / "rollout" / "summary.json").read_text())
    for value in (summary["model"]["model_hash"], summary["task"]["data_hash"], summary["provenance"]["torch"]):
        assert f"<td>{value}</td>" in text  # provenance of every run


def _chromium(args, tmp_path):
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium package)")
def test_report_renders_in_headless_chromium_with_every_image_loaded(runs, tmp_path):
    report = tmp_path / "report.html"
    report.write_text(build_report([runs], n_samples=2))
    shot = tmp_path / "shot.png"
    res = _chromium(["--window-size=1400,1000", f"--screenshot={shot}", report.as_uri()], tmp_path)
    assert shot.exists() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 1000) and len(set(im.convert("L").getdata())) > 50  # not a blank page

    def check(html_text):
        probe = tmp_path / "probe.html"
        probe.write_text(html_text.replace("</body>", IMAGE_CHECK + "</body>"))
        dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path).stdout
        found = re.search(r'data-image-check="([^"]*)"', dom)
        assert found, dom[-2000:]
        return json.loads(found.group(1).replace("&quot;", '"'))

    text = report.read_text()
    result = check(text)
    assert result == {"n": text.count("<img "), "broken": []} and result["n"] == 10
    # the check itself notices a broken image
    broken = check(text.replace("<h2>Leaderboard</h2>", "<img src='data:image/png;base64,AAAA' alt='bad'><h2>Leaderboard</h2>"))
    assert broken["broken"] == ["bad"]


def test_sidecar_maps_are_read(tmp_path):
    import numpy as np

    from xbench.overlays import record_map

    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "s1.npy", np.arange(4, dtype=np.float32).reshape(2, 2))
    np.testing.assert_array_equal(record_map(tmp_path, {"map_file": "maps/s1.npy"}), [[0, 1], [2, 3]])
    assert record_map(tmp_path, {"map": [[1, 2]]}).tolist() == [[1.0, 2.0]]
    assert record_map(tmp_path, {"map_file": "maps/missing.npy"}) is None


def test_every_run_appears_under_its_own_label(runs, tmp_path):
    from xbench.report import find_runs, sample_grid

    shutil.copytree(runs / "rollout", tmp_path / "rollout-again")
    all_runs = find_runs([runs, tmp_path / "rollout-again"])
    labels = sorted(r.label for r in all_runs)
    assert labels == ["raw<b>evil</b>", "raw_attention", f"rollout ({runs.name}/rollout)",
                      f"rollout ({tmp_path.name}/rollout-again)"]
    grid = sample_grid(all_runs, 1)
    assert f"<th>rollout ({runs.name}/rollout)</th>" in grid and f"<th>rollout ({tmp_path.name}/rollout-again)</th>" in grid


def test_runs_of_different_sizes_get_separate_figures(runs, tmp_path, plugins):
    from xbench.report import figures, find_runs

    run(RunConfig(method="rollout", model="tiny-random-llava", limit=2, warmup=0, progress=False, reference="rollout",
                  metrics=["agreement_f1", "energy_in_mask"], out=tmp_path / "small"), plugins)
    parts = figures(find_runs([runs, tmp_path / "small"]), ["agreement_f1", "energy_in_mask"], "explain_ms_p50")
    assert len(parts) == 2
    assert "3 samples per run" in parts[0] + parts[1] and "2 samples per run" in parts[0] + parts[1]


def test_plot_labels_with_dollars_do_not_start_mathtext(runs, tmp_path):
    from xbench.report import find_runs, pareto_figure

    shutil.copytree(runs / "rollout", tmp_path / "dollar")
    path = tmp_path / "dollar" / "summary.json"
    summary = json.loads(path.read_text())
    summary["method"]["label"] = r"$\frac{1}{$ and $\unknowncommand$"
    path.write_text(json.dumps(summary))
    uri, shown = pareto_figure(find_runs([tmp_path / "dollar"]), ["agreement_f1"], "explain_ms_p50")
    assert uri.startswith("data:image/png;base64,") and shown == ["agreement_f1"]
    import matplotlib.pyplot as plt

    fig = plt.figure()  # the same label unescaped is what used to crash the report
    fig.text(0, 0, summary["method"]["label"])
    with pytest.raises(ValueError):
        fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def test_foreign_summary_is_skipped_with_a_warning(runs, tmp_path, capsys):
    from xbench.report import find_runs

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "summary.json").write_text('{"accuracy": 0.9}')
    assert len(find_runs([runs, tmp_path])) == 3
    assert f"skipped {tmp_path / 'x' / 'summary.json'}: not an xbench run summary" in capsys.readouterr().err


def test_overlay_is_one_hue_over_greyscale():
    import numpy as np
    from PIL import Image

    from xbench.overlays import HUE, MAX_OPACITY, overlay

    image = Image.new("RGB", (64, 64), (0, 200, 0))  # a green image
    out = np.asarray(overlay(image, np.array([[0.0, 1.0], [0.0, 0.0]]), size=64)).astype(int)
    grey = round(0.299 * 0 + 0.587 * 200 + 0.114 * 0)
    assert (out[40, 10] == grey).all()  # least relevant: the image's grey, no colour of its own
    expected = [round((1 - MAX_OPACITY) * grey + MAX_OPACITY * c) for c in HUE]
    assert np.abs(out[10, 40] - expected).max() <= 1  # most relevant: the hue at full opacity


def test_overlay_paints_each_cell_over_the_box_it_covers():
    """A 2x2 map over the centre square of a 32x64 (H x W) image: the cell (0, 1) tints only its box
    (rows 0-16, cols 32-48 of the original; the image is drawn whole, stretched to 64x64)."""
    import numpy as np
    from PIL import Image

    from xbench.image_layout import from_record, single_grid, to_record
    from xbench.overlays import GREY, overlay

    layout = single_grid((2, 2), (0, 16, 32, 48), (32, 64))
    assert from_record(to_record(layout)) == layout
    out = np.asarray(overlay(Image.new("RGB", (64, 32), (GREY,) * 3), np.array([[0.0, 1.0], [0.0, 0.0]]), size=64,
                             layout=layout)).astype(int)
    tinted = np.abs(out - GREY).max(axis=-1) > 2
    want = np.zeros((64, 64), bool)
    want[0:32, 32:48] = True
    assert np.array_equal(tinted, want)


def test_show_writes_one_png_of_a_samples_maps(runs, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from xbench.overlays import overlay, record_layout, record_map, sample_images
    from xbench.show import _panels

    raw = runs / "raw"
    record = read_records(raw / "samples.jsonl")[0]
    out = tmp_path / "one.png"
    assert main(["show", str(raw), record["id"], "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 600 and len(set(im.convert("L").getdata())) > 50
    summary = json.loads((raw / "summary.json").read_text())
    image = sample_images(summary, {record["id"]})[0][record["id"]]
    panels = _panels(raw, summary, record, image)
    assert [t for t, _ in panels] == ["image", "raw_attention",
                                      "reference: rollout — computed in the run, map not recorded",
                                      "control map (--control)"]
    layout = record_layout(record)
    assert layout is not None and layout.grids == ((8, 8),)
    assert np.array_equal(np.asarray(panels[1][1]), np.asarray(overlay(image, record_map(raw, record), layout=layout)))
    assert np.array_equal(np.asarray(panels[3][1]), np.asarray(overlay(image, np.asarray(record["control_map"]), layout=layout)))
    # a reference read from another run (--reference-run): its map for the same sample id
    summary["reference"] = {"method": "rollout", "params": None, "source": str(runs / "rollout")}
    ref = next(r for r in read_records(runs / "rollout" / "samples.jsonl") if r["id"] == record["id"])
    panels = _panels(raw, summary, record, image)
    assert panels[2][0] == "reference: rollout"
    assert np.array_equal(np.asarray(panels[2][1]), np.asarray(overlay(image, record_map(runs / "rollout", ref), layout=layout)))
    own = _panels(runs / "rollout", json.loads((runs / "rollout" / "summary.json").read_text()), ref, image)
    assert own[2][0] == "reference: rollout (this run)" and len(own) == 3  # no control recorded there


def test_show_refuses_unknown_sample_and_folder(runs, tmp_path, capsys):
    assert main(["show", str(runs / "raw"), "no-such-id", "-o", str(tmp_path / "x.png")]) == 2
    assert "xbench: error: sample 'no-such-id' is not in" in capsys.readouterr().err
    assert main(["show", str(tmp_path), "x", "-o", str(tmp_path / "x.png")]) == 2
    assert "is not an xbench run folder" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_an_unreadable_records_file_is_named_and_the_run_kept(runs, tmp_path, capsys):
    """As the leaderboard does: a run whose samples.jsonl cannot be read is kept, without samples, with a warning."""
    from xbench.report import find_runs

    shutil.copytree(runs / "rollout", tmp_path / "broken")
    (tmp_path / "broken" / "samples.jsonl").unlink()
    (tmp_path / "broken" / "samples.jsonl").mkdir()  # not a regular file
    found = find_runs([tmp_path / "broken"])
    assert len(found) == 1 and found[0].records == []
    assert "samples.jsonl: unreadable" in capsys.readouterr().err
