"""The summary's vectorised bootstraps give the generic bootstrap's intervals."""

import numpy as np
import pytest

from xbench import cost, stats


@pytest.mark.parametrize("n", [1, 2, 5, 300])
def test_vectorised_mean_bootstrap_equals_the_generic_one(n):
    rng = np.random.default_rng(n)
    col = rng.random(n)
    col[rng.random(n) < 0.3] = np.nan  # samples where the metric did not apply
    vals = [None if np.isnan(v) else float(v) for v in col]

    def mean_of_present(idx):
        present = [vals[i] for i in idx if vals[i] is not None]
        return {"v": float(np.mean(present)) if present else None}

    want = stats.bootstrap(mean_of_present, n, seed=7)["v"]
    got = stats.bootstrap_means({"v": col}, n, seed=7)["v"]
    assert got == want if want is None else got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 300])
def test_vectorised_percentile_bootstrap_equals_the_generic_one(n):
    x = np.random.default_rng(n).random(n) * 100
    want = stats.bootstrap(lambda idx: cost.percentiles(x[idx].tolist()), n, seed=7)
    got = stats.bootstrap_percentiles(x, {"p50": 50, "p95": 95}, seed=7)
    for key in ("p50", "p95"):
        assert got[key] == want[key] if want[key] is None else got[key] == pytest.approx(want[key], abs=1e-12)


def test_undefined_columns_give_no_interval():
    col = np.full(10, np.nan)
    assert stats.bootstrap_means({"v": col}, 10, seed=0)["v"] is None  # never defined
    col[0] = 1.0  # defined on a resample only when sample 0 is drawn: about 65% of resamples
    assert stats.bootstrap_means({"v": col}, 10, seed=0)["v"] == [1.0, 1.0]
