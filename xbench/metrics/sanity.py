"""The model-randomisation sanity check (Adebayo et al., 2018) in the run itself.

``sanity_spearman``: per sample, the Spearman rank correlation between the method's map and
its map on the ``--control randomized`` model (same architecture, seeded random weights, same
generation), summarised as the mean over samples. A map that explains the trained model should
change when the weights are destroyed, so a high correlation means the map follows the input
(or the architecture) rather than what the model learned: lower is better, and a run above
:data:`FLAG_ABOVE` is flagged.

None on a sample when the run has no control (or the control map failed) and where either map
is constant (a rank correlation is undefined there), never a guessed 0.
"""

from __future__ import annotations

import numpy as np

from xbench.api import Metric
from xbench.hookspecs import hookimpl

#: Mean Spearman above this: the map keeps more than half its rank order when the model's weights
#: are re-randomised (Adebayo et al. call such a map insensitive to the model), so it is flagged.
FLAG_ABOVE = 0.5


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho of two equally shaped arrays: Pearson correlation of their average ranks
    (ties share the mean rank); None when either is constant."""
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(a, dtype=np.float64).ravel())
    rb = rankdata(np.asarray(b, dtype=np.float64).ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return None if denom == 0 else float((ra * rb).sum() / denom)


class SanitySpearman(Metric):
    name = "sanity_spearman"
    description = "Spearman correlation of the map with the method's map on the randomized-weights model (lower is better)"
    category = "sanity"
    higher_is_better = False
    needs = frozenset({"control"})
    flag_above = FLAG_ABOVE

    def compute(self, sample, generation, rmap, context=None):
        control = None if context is None else context.control
        if control is None:
            return None
        return rank_correlation(rmap.grid, control.grid)


@hookimpl
def xbench_register_metrics(registry):
    registry.register(SanitySpearman)
