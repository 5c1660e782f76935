"""Leaderboard cells with bootstrap intervals, control columns, column selection (summaries only)."""

import io
import json

import pandas as pd
import pytest

from xbench.errors import ParameterError
from xbench.leaderboard import cell, load, render


def _summary(method, f1, f1_ci, ms, control=None, model="m1"):
    metrics = {
        "accuracy": {"value": 0.9, "n": 10, "category": "answer", "higher_is_better": True, "ci95": [0.8, 1.0]},
        "agreement_f1": {"value": f1, "n": 10, "category": "agreement", "higher_is_better": True, "ci95": f1_ci},
        "explain_ms_p50": {"value": ms, "n": 10, "category": "cost", "higher_is_better": False, "ci95": [ms - 1, ms + 3]},
        "peak_rss_mib": {"value": 500.0, "n": 1, "category": "cost", "higher_is_better": False},  # no ci95 key
    }
    if control is not None:
        metrics["agreement_f1[control]"] = {"value": control, "n": 10, "category": "agreement",
                                            "higher_is_better": None, "ci95": [control - 0.1, control + 0.1],
                                            "control_of": "agreement_f1"}
    return {"task": {"name": "easyvqa"}, "model": {"id": model}, "method": {"name": method, "label": method},
            "metrics": metrics}


@pytest.fixture()
def root(tmp_path):
    runs = {
        "a": _summary("fastish", 0.53, [0.49, 0.57], 10.0, control=0.2),
        "b1": _summary("twice", 0.4, [0.3, 0.5], 20.0),
        "b2": _summary("twice", 0.6, [0.5, 0.7], 30.0),
    }
    for name, s in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(s))
    return tmp_path


def test_cells_show_mean_and_half_interval_to_three_significant_digits():
    assert cell(0.53, 0.49, 0.57) == "0.530 ± 0.040"
    assert cell(178.47, 152.8, 204.2) == "178 ± 26"
    assert cell(0.5, float("nan"), float("nan")) == "0.500"
    assert cell(float("nan"), None, None) == "—" and cell(None) == "—"
    assert cell(1084.2) == "1080" and cell(0.0283) == "0.0283" and cell(-0.000214) == "-0.000214"
    assert cell(0.9996) == "1.00" and cell(0.0) == "0.00" and cell(5.43e-07) == "5.43e-07"


def test_single_runs_keep_intervals_averaged_runs_do_not(root):
    table, columns = load(root)
    one = table[table.method == "fastish"].iloc[0]
    assert one["agreement_f1_ci95_lo"] == 0.49 and one["agreement_f1_ci95_hi"] == 0.57
    two = table[table.method == "twice"].iloc[0]
    assert two["runs"] == 2 and two["agreement_f1"] == pytest.approx(0.5)
    assert pd.isna(two["agreement_f1_ci95_lo"])
    text = render(root, columns_filter="all")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ") and "method" not in line}
    assert rows["fastish"] == ["fastish", "—", "1", "0.900 ± 0.100", "0.530 ± 0.040", "0.200 ± 0.100", "10.0 ± 2.0",
                               "500"]
    assert rows["twice"] == ["twice", "—", "2", "0.900", "0.500", "—", "25.0", "500"]


def test_interval_kept_where_only_one_run_gives_the_metric(root):
    extra = _summary("twice", 0.5, [0.4, 0.6], 25.0)
    extra["metrics"] = {"confidence_auroc": {"value": 0.7, "n": 900, "category": "confidence",
                                             "higher_is_better": True, "ci95": [0.6, 0.8]}}
    (root / "b3").mkdir()
    (root / "b3" / "summary.json").write_text(json.dumps(extra))
    table, _ = load(root)
    two = table[table.method == "twice"].iloc[0]
    assert two["runs"] == 3 and two["confidence_auroc"] == 0.7 and two["confidence_auroc_ci95_lo"] == 0.6
    assert pd.isna(two["agreement_f1_ci95_lo"]) and two["agreement_f1"] == pytest.approx(0.5)


def test_arrows_control_columns_and_order(root):
    text = render(root, columns_filter="all")
    header = [line for line in text.splitlines() if line.startswith("| method")][0]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["method", "n", "runs", "accuracy ↑", "agreement_f1 ↑", "agreement_f1@control", "explain_ms_p50 ↓",
                    "peak_rss_mib ↓"]  # quality, its control (old name[control] read as name@control) beside it, then cost
    assert text.startswith("Methods are compared on the samples they share (n: how many). Full tables")


def test_column_patterns_and_machine_formats(root):
    text = render(root, columns_filter="agreement_f1*,*_ms_p50")
    assert "accuracy" not in text.split("### ")[1] and "agreement_f1@control" in text and "explain_ms_p50" in text
    csv = pd.read_csv(io.StringIO(render(root, "csv", columns_filter="agreement_f1")))
    assert list(csv.columns) == ["task", "model", "method", "runs", "n", "split", "data", "compared", "agreement_f1",
                                 "agreement_f1_ci95_lo", "agreement_f1_ci95_hi"]
    data = json.loads(render(root, "json", columns_filter="accuracy"))
    assert data["rows"][0]["accuracy_ci95_hi"] == 1.0 and list(data["columns"]) == ["accuracy"]
    with pytest.raises(ParameterError, match="no metric matches --columns 'nope'"):
        render(root, columns_filter="nope")


def test_sort_by_quality_column_best_first(root):
    text = render(root, sort_by="agreement_f1")
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "method" not in line]
    assert rows == ["fastish", "twice"]


def test_runs_without_records_asked_for_different_sample_counts_get_separate_tables(root):
    bigger = _summary("twice", 0.1, [0.0, 0.2], 99.0)
    bigger["config"] = {"limit": 2000}
    (root / "big").mkdir()
    (root / "big" / "summary.json").write_text(json.dumps(bigger))
    text = render(root)
    assert "### task: easyvqa · model: m1 · own samples, limit 2000" in text
    assert "### task: easyvqa · model: m1 · own samples, limit all" in text
    table, _ = load(root)
    big = table[table.compared == "own samples, limit 2000"].iloc[0]
    assert big["runs"] == 1 and big["agreement_f1"] == 0.1 and big["agreement_f1_ci95_hi"] == 0.2
    all_ = table[(table.compared == "own samples, limit all") & (table.method == "twice")].iloc[0]
    assert all_["runs"] == 2  # not averaged with it
