"""`xbench report`: one static HTML file; rendered in headless Chromium with every image loaded."""

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
    # figure + 2 samples x (image + 3 runs' maps)
    assert len(srcs) == 1 + 2 * (1 + 3)
    for heading in ("Quality vs latency", "Leaderboard", "Samples × methods"):
        assert heading in text
    assert "agreement_f1@control" in text and "deletion_auc ↓" in text
    assert "gold: " in text and "answer: <b>" in text


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
    assert result == {"n": text.count("<img "), "broken": []} and result["n"] == 9
    # the check itself notices a broken image
    broken = check(text.replace("<h2>Leaderboard</h2>", "<img src='data:image/png;base64,AAAA' alt='bad'><h2>Leaderboard</h2>"))
    assert broken["broken"] == ["bad"]


def test_sidecar_maps_are_read(tmp_path):
    import numpy as np

    from xbench.report import record_map

    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "s1.npy", np.arange(4, dtype=np.float32).reshape(2, 2))
    np.testing.assert_array_equal(record_map(tmp_path, {"map_file": "maps/s1.npy"}), [[0, 1], [2, 3]])
    assert record_map(tmp_path, {"map": [[1, 2]]}).tolist() == [[1.0, 2.0]]
    assert record_map(tmp_path, {"map_file": "maps/missing.npy"}) is None


def test_one_grid_column_per_method(runs, tmp_path):
    from xbench.report import find_runs, one_run_per_method

    shutil.copytree(runs / "rollout", tmp_path / "rollout-again")
    summary = json.loads((tmp_path / "rollout-again" / "summary.json").read_text())
    summary["metrics"] = {"accuracy": summary["metrics"]["accuracy"]}  # a second, smaller run of rollout
    (tmp_path / "rollout-again" / "summary.json").write_text(json.dumps(summary))
    all_runs = find_runs([runs, tmp_path / "rollout-again"])
    kept = one_run_per_method(all_runs)
    assert len(all_runs) == 4 and len(kept) == 3
    assert [r.path.name for r in kept if r.label == "rollout"] == ["rollout"]
