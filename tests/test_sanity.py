"""sanity_spearman: the map against its --control randomized map, checked with scipy.stats.spearmanr."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from xbench.api import MetricContext, RelevanceMap, Sample
from xbench.metrics.sanity import FLAG_ABOVE, SanitySpearman, rank_correlation
from xbench.records import read_records
from xbench.runner import RunConfig, run


def test_rank_correlation_is_spearman():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a = rng.random((6, 6)).astype(np.float32)
        b = np.round(a + rng.normal(0, 0.3, a.shape), 1)  # ties included
        assert rank_correlation(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert rank_correlation(np.ones((3, 3)), rng.random((3, 3))) is None  # constant: undefined, not 0


def test_metric_reads_the_control_from_its_context():
    m, s = SanitySpearman(), Sample("s1", "q", ["a"])
    a, b = np.arange(16.0).reshape(4, 4), np.arange(16.0)[::-1].reshape(4, 4)
    assert m.compute(s, None, RelevanceMap(a), MetricContext(control=RelevanceMap(b))) == pytest.approx(-1.0)
    assert m.compute(s, None, RelevanceMap(a), MetricContext()) is None
    assert SanitySpearman.flag_above == FLAG_ABOVE == 0.5 and SanitySpearman.higher_is_better is False


@pytest.fixture(scope="module")
def control_run(plugins, tmp_path_factory):
    out = tmp_path_factory.mktemp("sanity") / "r"
    summary = run(RunConfig(method="rollout", model="tiny-random-llava", limit=4, out=out, warmup=0, progress=False,
                            batch_size=2, control="randomized", metrics=["sanity_spearman", "energy_in_mask"]),
                  plugins)
    return out, summary


def test_run_scores_each_map_against_its_control_map(control_run):
    out, summary = control_run
    records = read_records(out / "samples.jsonl")
    want = [spearmanr(np.ravel(r["map"]), np.ravel(r["control_map"])).statistic for r in records]
    got = [r["metrics"]["sanity_spearman"] for r in records]
    assert got == pytest.approx(want, abs=1e-3)  # maps on disk carry 7 significant digits
    assert all("sanity_spearman@control" not in r["metrics"] for r in records)  # not repeated on the control
    entry = summary["metrics"]["sanity_spearman"]
    assert entry["value"] == pytest.approx(np.mean(got)) and entry["n"] == 4
    assert entry["category"] == "sanity" and entry["higher_is_better"] is False and entry["flag_above"] == 0.5
    assert "sanity_spearman@control" not in summary["metrics"]
    assert "flag_above" not in summary["metrics"]["energy_in_mask"]


def test_no_control_no_sanity_value(plugins, tmp_path):
    summary = run(RunConfig(method="rollout", model="tiny-random-llava", limit=2, out=tmp_path / "r", warmup=0,
                            progress=False, metrics=["sanity_spearman"]), plugins)
    assert all(r["metrics"]["sanity_spearman"] is None for r in read_records(tmp_path / "r" / "samples.jsonl"))
    assert "sanity_spearman" not in summary["metrics"]
