"""Bootstrap intervals over samples for run summaries.

A percentile bootstrap: ``n_resamples`` draws of the run's samples with replacement
(numpy ``default_rng(seed)``), the statistic recomputed on each, the interval the
2.5th and 97.5th percentiles. Written here rather than with ``scipy.stats.bootstrap``
because a run-level statistic (an AUROC, a POPE F1) can be undefined on a resample
(one class only): such resamples are left out instead of turning the interval into NaN.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Mapping

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
    draws: dict[str, list[float]] = {}
    keys: set[str] = set()
    for block in resamples(n, seed, n_resamples):
        for idx in block:
            for key, value in statistic(idx).items():
                keys.add(key)
                if value is not None and math.isfinite(float(value)):
                    draws.setdefault(key, []).append(float(value))
    return {key: _interval(draws.get(key, []), n_resamples, level) for key in sorted(keys)}


def resamples(n: int, seed: int = 0, n_resamples: int = N_RESAMPLES, block: int = 100) -> Iterator[np.ndarray]:
    """The resamples' index draws as ``[k, n]`` blocks (every bootstrap here draws these same numbers)."""
    rng = np.random.default_rng(seed)
    left = n_resamples
    while left > 0:
        k = min(block, left)
        yield rng.integers(0, n, (k, n))
        left -= k


def bootstrap_means(columns: Mapping[str, np.ndarray], n: int, *, seed: int = 0, n_resamples: int = N_RESAMPLES,
                    level: float = LEVEL) -> dict[str, list[float] | None]:  # fmt: skip
    """:func:`bootstrap` of the statistic ``{key: mean of the non-NaN values of columns[key][idx]}``
    (NaN marks a sample where the value is missing), vectorised over resamples: the same draws
    and the same intervals, up to float rounding, in a fraction of the time."""
    if n < 2:
        return {k: None for k in columns}
    draws: dict[str, list[np.ndarray]] = {k: [] for k in columns}
    for idx in resamples(n, seed, n_resamples):
        for key, col in columns.items():
            picked = np.asarray(col, dtype=np.float64)[idx]
            present = ~np.isnan(picked)
            count = present.sum(axis=1)
            total = np.where(present, picked, 0.0).sum(axis=1)
            draws[key].append(total[count > 0] / count[count > 0])
    return {k: _interval(np.concatenate(v), n_resamples, level) for k, v in sorted(draws.items())}


def bootstrap_percentiles(values: np.ndarray, qs: Mapping[str, float], *, seed: int = 0,
                          n_resamples: int = N_RESAMPLES, level: float = LEVEL) -> dict[str, list[float] | None]:  # fmt: skip
    """:func:`bootstrap` of ``{name: np.percentile(values[idx], q)}`` for ``qs`` = {name: q}, vectorised."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2:
        return {k: None for k in qs}
    draws: dict[str, list[np.ndarray]] = {k: [] for k in qs}
    for idx in resamples(n, seed, n_resamples):
        for name, q in qs.items():
            draws[name].append(np.percentile(values[idx], q, axis=1))
    return {k: _interval(np.concatenate(v), n_resamples, level) for k, v in sorted(draws.items())}


def _interval(values, n_resamples: int, level: float) -> list[float] | None:
    """The percentile interval of the finite ``values``; None when fewer than half the resamples gave one."""
    vals = np.asarray(values, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if len(vals) < n_resamples / 2:
        return None
    alpha = (1 - level) / 2
    lo, hi = np.quantile(vals, [alpha, 1 - alpha])
    return [float(lo), float(hi)]
