"""Headline leaderboard: methods compared on the samples they share, the reference marked, sanity
flags, faithfulness gains, foreign summaries skipped (synthetic run folders: summary + records)."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xbench.leaderboard import load, render

RNG = np.random.default_rng(7)


def _records(ids, errors=()):
    out = []
    for i in ids:
        sid = f"test-{i}"
        if i in errors:
            out.append({"id": sid, "error": "boom", "stage": "explain"})
            continue
        acc = float(RNG.random() < 0.6)
        out.append({
            "id": sid, "question": "q", "gold": ["yes"], "answer": "yes", "meta": {"kind": "yes/no colour"},
            "scores": {"accuracy": acc},
            "metrics": {"agreement_f1": float(RNG.random()), "agreement_auroc": float(RNG.random()),
                        "deletion_auc": float(RNG.random()), "deletion_auc_random": float(RNG.random()),
                        "insertion_auc": float(RNG.random()), "insertion_auc_random": float(RNG.random()),
                        "energy_in_mask": float(RNG.random()), "energy_in_mask[control]": float(RNG.random()),
                        "confidence_auroc": float(RNG.random())},
            "explain_ms": float(RNG.uniform(5, 50)), "generate_ms": float(RNG.uniform(5, 50)),
            "explain_peak_gpu_mib": None, "generate_peak_gpu_mib": None,
            "explain_rss_peak_mib": float(RNG.uniform(1, 90)),
        })
    return out


def _entry(value, category, hib, **extra):
    return {"value": value, "n": 1, "category": category, "higher_is_better": hib, "ci95": [value - 0.01, value + 0.01],
            **extra}


def _summary_of(method, records, limit, reference="gradient_relevancy", sanity=None):
    """A summary as the runner writes it: every value the statistic of all the run's successful records."""
    ok = [r for r in records if "error" not in r]
    mean = lambda key: float(np.mean([r["metrics"][key] for r in ok]))  # noqa: E731
    acc = float(np.mean([r["scores"]["accuracy"] for r in ok]))
    metrics = {"accuracy": _entry(acc, "answer", True), "accuracy[yes/no colour]": _entry(acc, "answer", True)}
    for key, cat, hib in (("agreement_f1", "agreement", True), ("agreement_auroc", "agreement", True),
                          ("deletion_auc", "faithfulness", False), ("deletion_auc_random", "faithfulness", False),
                          ("insertion_auc", "faithfulness", True), ("insertion_auc_random", "faithfulness", True),
                          ("energy_in_mask", "localisation", True)):
        metrics[key] = _entry(mean(key), cat, hib)
    metrics["energy_in_mask[control]"] = _entry(mean("energy_in_mask[control]"), "localisation", None,
                                                control_of="energy_in_mask")
    wrong = [r["scores"]["accuracy"] < 0.5 for r in ok]
    metrics["confidence_auroc"] = _entry(roc_auc_score(wrong, [r["metrics"]["confidence_auroc"] for r in ok]),
                                         "confidence", True)
    metrics["explain_ms_p50"] = _entry(float(np.percentile([r["explain_ms"] for r in ok], 50)), "cost", False)
    metrics["explain_rss_peak_mib_max"] = _entry(max(r["explain_rss_peak_mib"] for r in ok), "cost", False)
    metrics["explain_peak_gpu_mib"] = {"value": None, "n": 0, "category": "cost", "higher_is_better": False}
    metrics["peak_rss_mib"] = {"value": 512.0, "n": 1, "category": "cost", "higher_is_better": False}
    if sanity is not None:
        for r in ok:
            r["metrics"]["sanity_spearman"] = sanity
        metrics["sanity_spearman"] = _entry(sanity, "sanity", False, flag_above=0.5)
    return {
        "run_id": method, "method": {"name": method, "label": method, "params": {"token": "mean"}},
        "task": {"name": "easyvqa", "split": "test", "params": {"mask_tolerance": 16, "flip": "none"},
                 "data_hash": "fb3a5f6743d28859"},
        "model": {"id": "tiny-llava-easyvqa"}, "n_ok": len(ok), "n_errors": len(records) - len(ok),
        "metrics": metrics, "metric_params": {"confidence_auroc": {"score_key": "accuracy", "wrong_below": 0.5}},
        "reference": {"method": reference, "params": {"token": "mean"}} if reference else None,
        "config": {"limit": limit, "data_dir": None},
    }


def _write(root, name, summary, records):
    (root / name).mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps(summary))
    (root / name / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture()
def runs(tmp_path):
    """``big`` (--limit 12) and the reference ``gradient_relevancy`` (--limit 8, sample 3 failed)."""
    big = _records(range(12))
    ref = _records(range(8), errors={3})
    # both classes among the shared samples, so the AUROC over them is defined
    for r, acc in zip([r for r in big if r["id"] in ("test-0", "test-1")], (0.0, 1.0)):
        r["scores"]["accuracy"] = acc
    _write(tmp_path, "big", _summary_of("big", big, 12, sanity=0.7), big)
    _write(tmp_path, "ref", _summary_of("gradient_relevancy", ref, 8, sanity=0.3), ref)
    return tmp_path, big, ref


def _rows(text):
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    return {line.split("|")[1].strip().split()[0]: [c.strip() for c in line.strip().strip("|").split("|")] for line in lines}


def test_runs_with_different_limits_meet_on_their_shared_samples(runs, plugins):
    root, big, ref = runs
    shared = {"test-0", "test-1", "test-2", "test-4", "test-5", "test-6", "test-7"}
    table, _ = load(root)
    assert len(table) == 2 and set(table.compared) == {"shared samples"} and set(table.n) == {7}
    row = table[table.method == "big"].iloc[0]
    on = [r for r in big if r["id"] in shared]
    assert row["agreement_f1"] == pytest.approx(np.mean([r["metrics"]["agreement_f1"] for r in on]))
    assert row["agreement_f1"] != pytest.approx(json.loads((root / "big" / "summary.json").read_text())
                                                ["metrics"]["agreement_f1"]["value"])
    assert row["accuracy"] == pytest.approx(np.mean([r["scores"]["accuracy"] for r in on]))  # the task's aggregate
    assert row["explain_ms_p50"] == pytest.approx(np.median([r["explain_ms"] for r in on]))
    assert row["explain_rss_peak_mib_max"] == pytest.approx(max(r["explain_rss_peak_mib"] for r in on))
    wrong = [r["scores"]["accuracy"] < 0.5 for r in on]  # an AUROC over the shared samples, not a mean
    assert row["confidence_auroc"] == pytest.approx(roc_auc_score(wrong, [r["metrics"]["confidence_auroc"] for r in on]))
    assert row["energy_in_mask@control"] == pytest.approx(np.mean([r["metrics"]["energy_in_mask[control]"] for r in on]))
    gain = np.mean([r["metrics"]["deletion_auc_random"] - r["metrics"]["deletion_auc"] for r in on])
    assert row["deletion_gain"] == pytest.approx(gain)
    assert pd_isna(row["agreement_f1_ci95_lo"])  # recomputed: no interval
    # a process-wide value cannot be restricted to samples, nor a metric whose plugin is not installed here
    unregistered = {"sanity_spearman"} - set(plugins.registries.metrics.names())
    assert row["own"] == {"peak_rss_mib"} | unregistered
    if not unregistered:
        assert row["sanity_spearman"] == pytest.approx(0.7)
    reference = table[table.method == "gradient_relevancy"].iloc[0]  # its own samples are the shared ones
    assert reference["agreement_f1_ci95_lo"] is not None and reference["own"] == set()


def pd_isna(x):
    return x is None or x != x


def test_headline_marks_reference_flags_sanity_and_shows_gains(runs):
    root, big, _ = runs
    text = render(root)
    header = [c.strip() for c in next(l for l in text.splitlines() if l.startswith("| method")).strip("|").split("|")]
    assert header == ["method", "n", "accuracy ↑", "agr F1 ↑", "agr AUROC ↑", "del gain ↑", "ins gain ↑", "loc ↑",
                      "loc@ctrl", "sanity ↓", "ms p50 ↓", "MiB ↓"]
    assert "### task: easyvqa · model: tiny-llava-easyvqa · split: test · 7 shared samples" in text
    rows = _rows(text)
    table, _ = load(root)
    b = table[table.method == "big"].iloc[0]
    assert rows["big"][:2] == ["big", "7"]
    for i, col in ((2, "accuracy"), (3, "agreement_f1"), (4, "agreement_auroc"), (5, "deletion_gain"), (7, "energy_in_mask")):
        assert len(rows["big"][i].lstrip("-0.")) == 3  # three significant digits
        assert float(rows["big"][i]) == pytest.approx(b[col], rel=5e-3)
    # flag_above 0.5 († until the sanity_spearman plugin is installed: then it is the run's own value)
    assert rows["big"][9].rstrip("†") == "0.700 ⚠" and rows["gradient_relevancy"][9] == "0.300"
    assert rows["gradient_relevancy"][0] == "gradient_relevancy ★" and rows["gradient_relevancy"][3:5] == ["ref", "ref"]
    assert float(rows["big"][11]) == pytest.approx(b["explain_rss_peak_mib_max"], rel=5e-3)  # off GPU: RSS rise
    prose = " ".join(text.split())  # legends are wrapped
    assert "MiB = explain_rss_peak_mib_max" in prose and "⚠ sanity_spearman above 0.5" in prose
    assert "★ the reference method of the agreement columns" in prose
    assert "del gain = deletion_gain (deletion_auc_random - deletion_auc)" in prose


def test_missing_headline_columns_are_em_dashes_never_zero(runs):
    root, big, _ = runs
    for name in ("big", "ref"):
        path = root / name / "summary.json"
        s = json.loads(path.read_text())
        for key in ("deletion_auc", "deletion_auc_random", "sanity_spearman"):
            s["metrics"].pop(key, None)
        path.write_text(json.dumps(s))
    rows = _rows(render(root))
    assert rows["big"][5] == "—" and rows["big"][9] == "—" and rows["gradient_relevancy"][5] == "—"


def test_full_table_with_patterns_and_literal_bracket(runs):
    root, _, _ = runs
    text = render(root, columns_filter="all")
    assert "agreement_f1 ↑" in text and "confidence_auroc ↑" in text and "peak_rss_mib ↓" in text
    assert "512†" in text and "† the run's own value" in text
    only = render(root, columns_filter="energy_in_mask@*")
    assert "energy_in_mask@control" in only and "agreement_f1" not in only.split("### ")[1].split("\n\n")[1]
    header = next(line for line in render(root, columns_filter="accuracy[[]*").splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["method", "n", "accuracy\\[yes/no colour\\] ↑"]
    table, _ = load(root)
    big = table[table.method == "big"].iloc[0]
    assert big["accuracy[yes/no colour]"] == pytest.approx(big["accuracy"])  # every sample is a yes/no colour one


def test_foreign_and_unreadable_summaries_are_skipped_with_a_warning(runs, capsys):
    root, _, _ = runs
    (root / "other").mkdir()
    (root / "other" / "summary.json").write_text(json.dumps({"loss": 0.3, "epochs": 4}))
    (root / "torn").mkdir()
    (root / "torn" / "summary.json").write_text('{"method": {"name"')
    (root / "list").mkdir()
    (root / "list" / "summary.json").write_text("[1, 2]")
    text = render(root)
    err = capsys.readouterr().err
    assert "| big" in text
    assert f"skipped {root / 'other' / 'summary.json'}: not an xbench run summary (no 'method.name')" in err
    assert f"skipped {root / 'torn' / 'summary.json'}: unreadable" in err
    assert f"skipped {root / 'list' / 'summary.json'}: not an xbench run summary (not a JSON object)" in err


def test_runs_sharing_no_sample_are_shown_on_their_own_samples(runs, capsys):
    root, _, _ = runs
    lone = _records(range(100, 104))
    _write(root, "lone", _summary_of("lone", lone, 4), lone)
    table, _ = load(root)
    assert set(table.compared) == {"own samples, limit 12", "own samples, limit 8", "own samples, limit 4"}
    assert "share no successful sample" in capsys.readouterr().err


def test_a_column_that_cannot_be_recomputed_keeps_the_runs_value_and_says_so(runs, capsys):
    root, _, _ = runs
    path = root / "big" / "summary.json"
    s = json.loads(path.read_text())
    s["metric_params"]["confidence_auroc"] = {"no_such_param": 1}  # the metric cannot be rebuilt with these
    path.write_text(json.dumps(s))
    table, _ = load(root)
    row = table[table.method == "big"].iloc[0]
    assert "confidence_auroc" in row["own"] and row["confidence_auroc"] == s["metrics"]["confidence_auroc"]["value"]
    assert "confidence_auroc cannot be recomputed on the shared samples" in capsys.readouterr().err


def test_operating_point_f1_is_shown_beside_the_tau_rule_where_a_run_has_it(runs):
    root, _, _ = runs
    assert "F1 op" not in render(root)  # no run has it: no column
    path = root / "big" / "summary.json"
    s = json.loads(path.read_text())
    s["metrics"]["agreement_f1_operating"] = _entry(0.628, "agreement", True)
    path.write_text(json.dumps(s))
    for r in [json.loads(line) for line in (root / "big" / "samples.jsonl").read_text().splitlines()]:
        assert "agreement_f1_operating" not in r["metrics"]  # summary-only here: the run's own value, marked
    text = render(root)
    header = [c.strip() for c in next(l for l in text.splitlines() if l.startswith("| method")).strip("|").split("|")]
    assert header[3:6] == ["agr F1 ↑", "F1 op ↑", "agr AUROC ↑"]
    rows = _rows(text)
    assert rows["big"][4] == "0.628†" and rows["gradient_relevancy"][4] == "ref"
    assert "F1 op = agreement_f1_operating" in " ".join(text.split())
