"""Bootstrap intervals over samples for run summaries.

A percentile bootstrap: ``n_resamples`` draws of the run's samples with replacement
(numpy ``default_rng(seed)``), the statistic recomputed on each, the interval the
2.5th and 97.5th percentiles. Written here rather than with ``scipy.stats.bootstrap``
because a run-level statistic (an AUROC, a POPE F1) can be undefined on a resample
(one class only): such resamples are left out instead of turning the interval into NaN.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95


def bootstrap(
    statistic: Callable[[np.ndarray], Mapping[str, float | None]],
    n: int,
    *,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
) -> dict[str, list[float] | None]:
    """``{key: [lo, hi]}`` for each key ``statistic(indices)`` returns, over ``n`` samples.

    ``statistic`` gets an int array of sample indices (one resample) and returns a dict of
    values (None or NaN where undefined). A key gets None when fewer than half of the
    resamples define it, or when ``n < 2``.
    """
    if n < 2:
        return {k: None for k in statistic(np.arange(n))}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    keys: set[str] = set()
    for _ in range(n_resamples):
        for key, value in statistic(rng.integers(0, n, n)).items():
            keys.add(key)
            if value is not None and math.isfinite(float(value)):
                draws.setdefault(key, []).append(float(value))
    alpha = (1 - level) / 2
    out: dict[str, list[float] | None] = {}
    for key in sorted(keys):
        vals = draws.get(key, [])
        if len(vals) < n_resamples / 2:
            out[key] = None
        else:
            lo, hi = np.quantile(vals, [alpha, 1 - alpha])
            out[key] = [float(lo), float(hi)]
    return out
