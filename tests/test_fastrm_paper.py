"""`xbench fastrm paper` end to end on generated official-format VQA v2 / GQA / POPE data (small
sizes, the default model): table structure, the recorded command, and every figure recomputed
here from the saved proxies and the label data, with numpy instead of the scorer's scikit-learn."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from xbench.cli import main

HEADS = ("attention", "mlp")
TAUS, FRACTIONS, STEP_GRID = (0.2, 0.3), (0.5, 1.0), (6, 12)
SETS = ("vqa_v2/val2014", "gqa/testdev", "pope/random", "pope/popular", "pope/adversarial")
N_TRAIN, N_TEST, STEPS, TAU = 32, 10, 12, 0.3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from xbench.taskgen import easyvqa_official

    return easyvqa_official(tmp_path_factory.mktemp("generated"), vqa_train=60, vqa_val=120, gqa_images=6,
                            pope_images=5, seed=1)  # fmt: skip


def paper_argv(data, out: Path, cache: Path) -> list[str]:
    return ["fastrm", "paper", "--vqa-v2", str(data["vqa_v2"]), "--gqa", str(data["gqa"]), "--pope", str(data["pope"]),
            "--samples", str(N_TRAIN), "--val-samples", "8", "--test-samples", str(N_TEST), "--steps", str(STEPS),
            "--batch-size", "8", "--eval-every", "6", "--heads", ",".join(HEADS), "--taus", ",".join(map(str, TAUS)),
            "--fractions", ",".join(map(str, FRACTIONS)), "--step-grid", ",".join(map(str, STEP_GRID)),
            "--label-batch-size", "8", "--cache", str(cache), "--out", str(out), "--no-progress", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def paper_run(data, tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("paper"), tmp_path_factory.mktemp("paper-cache")
    argv = paper_argv(data, out, cache)
    assert main(argv) == 0
    tables = {name: json.loads((out / f"{name}.json").read_text())
              for name in ("transfer_tasks", "ablation_threshold", "ablation_size", "ablation_steps")}  # fmt: skip
    return out, cache, argv, tables


# --------------------------------------------------------------------------- independent scoring


def cached_labels(cache: Path, task: str, split: str, n: int):
    """The first ``n`` labelled samples of ``task``/``split`` as the label cache holds them (the
    held-out sets carry the noise-ceiling maps, so their cache is the one with noise)."""
    from xbench.fastrm.labels import LabelCache

    specs = [json.loads(p.read_text()) for p in (cache / "labels").glob("*/spec.json")]
    found = [s for s in specs if s["task"] == task and s["split"] == split and s["noise_std"]]
    assert len(found) == 1, (task, split, specs)
    return LabelCache(cache, found[0]).read(n)


def binarised(maps: np.ndarray, tau: float) -> np.ndarray:
    """Each map min-max normalised in float32 (as the labels are), then >= tau; a flat map has no positive."""
    flat = maps.reshape(len(maps), -1).astype(np.float32)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, np.float32(1))
    return ((flat - lo) / span >= np.float32(tau)) & (hi > lo)


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney: the chance that a positive outscores a negative, ties counting half."""
    ranks = rankdata(s)
    pos = int(y.sum())
    return (ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos))


def scores(proxy_dir: Path, labels, tau: float, threshold: float) -> dict:
    from xbench.fastrm.proxy import FastRMProxy

    proxy = FastRMProxy.load(proxy_dir)
    assert proxy.decision_threshold == threshold
    with torch.no_grad():
        probs = torch.sigmoid(proxy(*labels.batch(range(len(labels))))).numpy().ravel()
    y = binarised(labels.maps, tau).ravel()
    pred = probs >= threshold
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    ceiling = binarised(labels.perturbed, tau).ravel()
    c_tp, c_fp, c_fn = int((ceiling & y).sum()), int((ceiling & ~y).sum()), int((~ceiling & y).sum())
    return {"n_test": len(labels), "positive_rate": y.mean(), "accuracy": (pred == y).mean(),
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn),
            "iou": tp / (tp + fp + fn), "auroc": auroc(y, probs), "noise_ceiling_f1": 2 * c_tp / (2 * c_tp + c_fp + c_fn),
            "answer_accuracy": float(np.mean(labels.correct))}  # fmt: skip


def check_row(row: dict, out: Path, labels, tau: float) -> dict:
    """Every figure of ``row`` equals the independent recomputation from its saved proxy; returns the proxy's info."""
    expected = scores(out / "proxies" / row["proxy"], labels, tau, row["threshold"])
    for key, value in expected.items():
        if key in row:
            assert row[key] == pytest.approx(value, abs=1e-9), (row["proxy"], key)
    info = json.loads((out / "proxies" / row["proxy"] / "proxy.json").read_text())["info"]
    assert {k: row[f"val_{k}"] for k in ("accuracy", "f1", "auroc")} == {k: info["val"][k] for k in ("accuracy", "f1", "auroc")}
    return info["train"]


# --------------------------------------------------------------------------- tests


def test_transfer_table_equals_recomputation(paper_run):
    out, cache, _, tables = paper_run
    rows = tables["transfer_tasks"]["rows"]
    assert [(r["head"], r["scored_on"]) for r in rows] == [(h, s) for h in HEADS for s in SETS]
    for row in rows:
        task, split = row["scored_on"].split("/")
        labels = cached_labels(cache, task, split, N_TEST)
        assert row["n_test"] == N_TEST == len(labels)
        train = check_row(row, out, labels, TAU)
        assert (train["head"], train["tau"], train["steps"], train["n_train"]) == (row["head"], TAU, STEPS, N_TRAIN)
        assert train["labels"]["task"] == "vqa_v2" and train["labels"]["split"] == "train2014"  # trained on VQA v2 only
    assert len({r["proxy"] for r in rows}) == len(HEADS)  # one base proxy per head, scored on every set


def test_ablation_tables_equal_recomputation(paper_run):
    out, cache, _, tables = paper_run
    test = cached_labels(cache, "vqa_v2", "val2014", N_TEST)
    grid = {"ablation_threshold": ("tau", TAUS), "ablation_size": ("fraction", FRACTIONS), "ablation_steps": ("steps", STEP_GRID)}
    base = {r["head"]: r for r in tables["transfer_tasks"]["rows"] if r["scored_on"] == "vqa_v2/val2014"}
    for name, (key, values) in grid.items():
        rows = tables[name]["rows"]
        assert [(r[key], r["head"]) for r in rows] == [(v, h) for v in values for h in HEADS], name
        for row in rows:
            tau = row.get("tau", TAU)
            train = check_row(row, out, test, tau)
            assert train["tau"] == tau and train["n_train"] == row.get("n_train", N_TRAIN)
            assert train["steps"] == row.get("steps", STEPS)
            if (tau, train["n_train"], train["steps"]) == (TAU, N_TRAIN, STEPS):  # the base setting: trained once
                assert row["proxy"] == base[row["head"]]["proxy"]
                assert {k: row[k] for k in ("accuracy", "f1", "auroc")} == {k: base[row["head"]][k] for k in ("accuracy", "f1", "auroc")}
    sizes = [r["n_train"] for r in tables["ablation_size"]["rows"]]
    assert sizes == [N_TRAIN // 2, N_TRAIN // 2, N_TRAIN, N_TRAIN]


def test_markdown_and_setup_record_how_the_tables_were_made(paper_run, data):
    from xbench.cli import build_parser
    from xbench.fastrm.paper import OTHER_OPTIONS, RECIPE_OPTIONS

    out, _, argv, tables = paper_run
    for name, table in tables.items():
        md = (out / f"{name}.md").read_text()
        assert md.startswith(f"# {table['title']}\n") and md.count("\n|") == len(table["rows"]) + 2
        setup = table["setup"]
        assert "generated" in setup["provenance"]["data_generated"] and "not COCO or GQA images" in md
        assert set(setup["provenance"]["data"]) == {"vqa_v2/train2014", *SETS}
        assert all("data hash " in v for v in setup["provenance"]["data"].values())
        assert "model hash" in setup["provenance"]["model"] and "torch" in setup["provenance"]["software"]
        assert setup["held-out sets"].startswith(f"vqa_v2/val2014 {N_TEST} samples")
    command = tables["transfer_tasks"]["setup"]["command"]
    assert command.startswith(f"xbench fastrm paper --vqa-v2 {shlex.quote(str(data['vqa_v2']))} ")
    again, args = build_parser().parse_args(shlex.split(command)[1:]), build_parser().parse_args(argv)
    recorded = [d for d, _ in (*RECIPE_OPTIONS, *OTHER_OPTIONS)]
    assert {d: getattr(again, d) for d in recorded} == {d: getattr(args, d) for d in recorded}


def test_a_missing_data_folder_fails_before_the_model_loads(data, tmp_path, capsys):
    argv = paper_argv(data, tmp_path / "out", tmp_path / "cache")
    argv[argv.index("--gqa") + 1] = str(tmp_path / "no-gqa")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no-gqa" in err and "GQA" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_unknown_table_is_refused(data, tmp_path, capsys):
    assert main([*paper_argv(data, tmp_path / "out", tmp_path / "cache"), "--tables", "tasks,transfer"]) == 2
    assert "unknown ablation table(s) ['transfer']" in capsys.readouterr().err


def test_confidence_is_refused_not_ignored(data, tmp_path, capsys):
    assert main([*paper_argv(data, tmp_path / "out", tmp_path / "cache"), "--confidence-samples", "5"]) == 2
    assert "does not score confidence" in capsys.readouterr().err
