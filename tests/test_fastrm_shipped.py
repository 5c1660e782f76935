"""The FastRM proxies shipped for the default model: found by model hash, agreeing with the reference."""

import numpy as np
import pytest

from xbench.fastrm.proxy import FastRMProxy
from xbench.fastrm.proxy_store import find_proxy, shipped_root
from xbench.runner import DEFAULT_MODEL

HEADS = ("attention", "mlp")


@pytest.fixture(scope="module")
def default_vlm(plugins):
    from xbench.models import load_vlm

    return load_vlm(DEFAULT_MODEL, plugins.registries, needs=frozenset({"hidden_states", "attentions"}), device="cpu")


@pytest.mark.parametrize("head", HEADS)
def test_a_proxy_ships_for_the_default_model(head, default_vlm):
    path = find_proxy(default_vlm, head)
    assert shipped_root() in path.parents  # package data, read with importlib.resources
    proxy = FastRMProxy.load(path)
    proxy.check_compatible(default_vlm)
    assert proxy.model_info["id"] == DEFAULT_MODEL and proxy.head_name == head
    test = proxy.info["test"]
    assert test["n_samples"] >= 1000 and test["map"]["auroc"] > 0.8  # as recorded when it was trained


@pytest.mark.parametrize("head", HEADS)
def test_shipped_proxy_agrees_with_gradient_relevancy(head, default_vlm, plugins, tmp_path):
    from xbench.fastrm.evaluate import evaluate
    from xbench.fastrm.labels import build_labels

    task = plugins.registries.tasks.get("easyvqa")("test")
    reference = plugins.registries.methods.get("gradient_relevancy")()
    labels = build_labels(default_vlm, task, reference, 32, seed=1, cache_root=tmp_path, batch_size=32, progress=False)
    res = evaluate(FastRMProxy.load(find_proxy(default_vlm, head)), labels)
    assert res["map"]["auroc"] > 0.75  # 0.87 (attention) / 0.91 (mlp) on 1000 held-out samples


def test_run_fastrm_with_no_other_flag(tmp_path, capsys, monkeypatch):
    from xbench.cli import main
    from xbench.records import read_records

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--method", "fastrm", "--limit", "4", "--no-progress"]) == 0
    assert "4 samples explained, 0 errors" in capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = read_records(run_dir / "samples.jsonl")
    assert all(0 <= r["extras"]["confidence"] <= 1 for r in records)
    assert np.mean([r["scores"]["accuracy"] for r in records]) > 0.5  # the default model answers


def test_the_run_scores_fastrm_at_its_operating_point_as_fastrm_evaluate_does(tmp_path, capsys):
    """``agreement_f1_operating`` of ``xbench run --method fastrm`` (in-run gradient_relevancy reference)
    is the F1 ``xbench fastrm evaluate`` reports on the same samples, at the proxy's decision threshold."""
    import json

    from xbench.cli import main
    from xbench.records import read_records

    n = "24"
    run = ["run", "--method", "fastrm", "--limit", n, "--metrics", "agreement_f1,agreement_f1_operating",
           "--out", str(tmp_path / "run"), "--no-progress", "--warmup", "0"]  # fmt: skip
    assert main(run) == 0
    evaluate = ["fastrm", "evaluate", "--proxy", str(find_proxy_dir("attention")), "--test-samples", n,
                "--noise-std", "0", "--cache", str(tmp_path / "cache"), "--output", str(tmp_path / "ev.json"),
                "--no-progress"]  # fmt: skip
    assert main(evaluate) == 0
    capsys.readouterr()
    scored = json.loads((tmp_path / "ev.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    records = read_records(tmp_path / "run" / "samples.jsonl")
    assert scored["n_samples"] == len(records) == int(n) and scored["map"]["threshold"] == 0.7
    assert all(r["extras"]["decision_threshold"] == 0.7 for r in records)
    assert summary["agreement_f1_operating"]["value"] == pytest.approx(scored["map"]["f1"], abs=1e-6)
    assert summary["agreement_f1"]["value"] != pytest.approx(scored["map"]["f1"], abs=1e-3)  # the tau rule differs
    pooled = {k: sum(r["counts"]["agreement_f1_operating"][k] for r in records) for k in ("tp", "fp", "fn")}
    assert pooled["tp"] + pooled["fn"] == round(scored["map"]["positive_rate"] * scored["map"]["n_patches"])


def find_proxy_dir(head: str):
    return shipped_root() / f"{DEFAULT_MODEL}-{head}"
