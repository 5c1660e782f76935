"""benchmarks/confidence_corrupted.py end to end on a tiny slice (small limits; nothing timed)."""

import csv
import json

import pytest

from test_confidence_metrics import mann_whitney_auroc  # tests/ is on sys.path (pytest rootdir conftest)


def test_confidence_benchmark_runs_end_to_end(benchmark_script, tmp_path):
    bench = benchmark_script("confidence_corrupted")
    out = tmp_path / "out"
    argv = ["--limit", "10", "--accuracy-limit", "4", "--levels", "none:0", "contrast:0.85",
            "--settings", "contrast:0.85", "--methods", "uniform,fastrm,rollout", "--out", str(out),
            "--keep-runs", str(tmp_path / "runs")]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads((out / "confidence-tiny-llava-easyvqa.json").read_text())
    text = (out / "confidence-tiny-llava-easyvqa.md").read_text()
    assert result["command"] == "python benchmarks/confidence_corrupted.py " + " ".join(argv)
    assert result["machine"]["cpu"] and result["machine"]["device"].startswith("cpu")
    assert [(a["corruption"], a["severity"], a["n"]) for a in result["accuracy"]] == [("none", 0.0, 4), ("contrast", 0.85, 4)]
    (setting,) = result["settings"]
    assert set(setting["methods"]) == {"uniform", "fastrm", "rollout"} and setting["same_answers_in_every_run"]
    assert "gradient_relevancy" in result["not_run"]
    # every AUROC is recomputable from the per-sample file: a Mann-Whitney count written in the test
    with open(out / "per_sample" / "contrast-0.85.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and all(r["id"].endswith("-contrast-0.85") for r in rows)
    wrong = [float(r["accuracy"]) < 0.5 for r in rows]
    assert 0 < sum(wrong) < 10  # both classes on this slice: every AUROC is defined
    assert setting["baseline"]["value"] == pytest.approx(mann_whitney_auroc(wrong, [float(r["answer_uncertainty"]) for r in rows]))
    for method, row in setting["methods"].items():
        auroc = mann_whitney_auroc(wrong, [float(r[method]) for r in rows])
        assert row["confidence_auroc"]["value"] == pytest.approx(auroc)
        assert row["difference"]["value"] == pytest.approx(auroc - row["answer_prob_auroc"]["value"])
    assert setting["methods"]["uniform"]["confidence_auroc"]["value"] == pytest.approx(0.5)
    assert "| **answer probability (baseline)** |" in text and "| fastrm (entropy confidence) |" in text
    assert "**Conclusion:**" in text and "\n".join(result["conclusion"]) in text
    assert (tmp_path / "runs" / "confidence" / "contrast-0.85" / "rollout" / "summary.json").exists()


def test_bad_setting_is_refused(benchmark_script, capsys):
    bench = benchmark_script("confidence_corrupted")
    with pytest.raises(SystemExit):
        bench.main(["--settings", "noise:lots"])
    assert "'noise:lots' is not KIND:SEVERITY" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--methods", "uniform,gradcam"])
    assert "--methods: unknown ['gradcam']" in capsys.readouterr().err


def test_paired_difference_interval_equals_a_plain_bootstrap(benchmark_script):
    """The vectorised interval equals xbench.stats.bootstrap over the same draws with sklearn's AUROC."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from xbench import stats

    bench = benchmark_script("confidence_corrupted")
    rng = np.random.default_rng(1)
    records = [{"scores": {"accuracy": float(rng.random() > 0.3)},
                "metrics": {"confidence_auroc": float(np.round(rng.random(), 1)), "answer_prob_auroc": float(rng.random())}}
               for _ in range(60)]  # fmt: skip

    def plain(idx):
        wrong = [records[i]["scores"]["accuracy"] < 0.5 for i in idx]
        if all(wrong) or not any(wrong):
            return {"d": None}
        auc = lambda key: roc_auc_score(wrong, [records[i]["metrics"][key] for i in idx])  # noqa: E731
        return {"d": auc("confidence_auroc") - auc("answer_prob_auroc")}

    want = stats.bootstrap(plain, len(records), seed=4)["d"]
    assert bench.paired_difference(records, seed=4) == pytest.approx(want, abs=1e-12)
