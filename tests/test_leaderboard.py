import copy
import io
import json

import pandas as pd
import pytest

from xbench.errors import ParameterError
from xbench.leaderboard import load, render
from xbench.runner import RunConfig, run


@pytest.fixture(scope="module")
def results(tmp_path_factory, plugins):
    """Two real runs of one method (to be averaged), one of another, and a second model."""
    root = tmp_path_factory.mktemp("results")
    for name, method, seed in (("a", "rollout", 0), ("b", "rollout", 1), ("c", "raw_attention", 0)):
        run(RunConfig(method=method, model="tiny-random-llava", limit=3, seed=seed, out=root / name, warmup=0, progress=False), plugins)
    other = json.loads((root / "c" / "summary.json").read_text())
    other = copy.deepcopy(other)
    other["model"]["id"] = "<b>evil</b>"
    (root / "d").mkdir()
    (root / "d" / "summary.json").write_text(json.dumps(other))
    return root


def _summary(root, name):
    return json.loads((root / name / "summary.json").read_text())


def test_runs_of_one_method_are_averaged(results):
    table, columns = load(results)
    row = table[(table.method == "rollout")].iloc[0]
    a, b = _summary(results, "a"), _summary(results, "b")
    assert row["runs"] == 2
    assert row["energy_in_mask"] == pytest.approx((a["metrics"]["energy_in_mask"]["value"] + b["metrics"]["energy_in_mask"]["value"]) / 2)
    assert columns["explain_ms_p50"] == {"category": "cost", "higher_is_better": False}
    assert len(table) == 3


def test_github_tables_grouped_by_task_and_model_with_arrows(results):
    text = render(results)
    assert text.count("### task: easyvqa") == 2
    assert "accuracy ↑" in text and "ms p50 ↓" in text and "| rollout" in text  # the headline
    full = render(results, columns_filter="all")
    assert full.count("### task: easyvqa") == 2
    assert "accuracy ↑" in full and "explain_ms_p50 ↓" in full and "| rollout" in full


def test_sort_by_uses_direction(results):
    text = render(results, sort_by="explain_ms_p50")
    block = text.split("### ")[2]
    rows = [l for l in block.splitlines() if l.startswith("| r")]
    table, _ = load(results)
    t = table[table.model == "tiny-random-llava"].sort_values("explain_ms_p50")
    assert rows[0].split("|")[1].strip() == t.iloc[0]["method"]  # lower latency first


def test_machine_formats(results):
    csv = pd.read_csv(io.StringIO(render(results, "csv")))
    assert set(csv.method) == {"rollout", "raw_attention"}
    data = json.loads(render(results, "json"))
    assert data["columns"]["accuracy"]["higher_is_better"] is True and len(data["rows"]) == 3
    assert "$\\uparrow$" in render(results, "latex")


def test_html_escapes_user_text(results):
    html = render(results, "html")
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html


def test_errors(results, tmp_path):
    with pytest.raises(ParameterError, match="no run summaries"):
        render(tmp_path)
    with pytest.raises(ParameterError, match="cannot sort by 'nope'"):
        render(results, sort_by="nope")
    with pytest.raises(ParameterError, match="no run summaries.*'gqa'"):
        render(results, task="gqa")
