"""Localisation against a ground-truth pixel mask (None where the task has no mask).

Maps are clipped at 0 first (relevance, not its sign); the mask is brought onto the
patch grid as the fraction of each patch it covers (:func:`xbench.maps.mask_to_grid`).
"""

import numpy as np

from xbench.api import Metric
from xbench.hookspecs import hookimpl
from xbench.maps import mask_to_grid


class EnergyInMask(Metric):
    """Share of positive relevance inside the mask: sum(r * m) / sum(r) (energy pointing game).

    A map with no positive value counts as uniform (the mask's area share).
    """

    name = "energy_in_mask"
    description = "share of positive relevance mass on the ground-truth region"
    category = "localisation"
    higher_is_better = True

    def compute(self, sample, generation, rmap):
        if sample.gt_mask is None:
            return None
        r = np.clip(rmap.grid, 0, None)
        if float(r.sum()) <= 0:
            r = np.ones_like(r)  # no positive relevance anywhere: as uninformative as a uniform map
        total = float(r.sum())
        return float((r * mask_to_grid(sample.gt_mask, rmap.grid.shape)).sum() / total)


class PointingGame(Metric):
    """1 when the most relevant patch overlaps the mask, else 0 (ties: the first in row-major order)."""

    name = "pointing_game"
    description = "does the top patch touch the ground-truth region"
    category = "localisation"
    higher_is_better = True

    def compute(self, sample, generation, rmap):
        if sample.gt_mask is None:
            return None
        cover = mask_to_grid(sample.gt_mask, rmap.grid.shape)
        return float(cover.reshape(-1)[int(np.argmax(rmap.grid))] > 0)


@hookimpl
def xbench_register_metrics(registry):
    registry.register(EnergyInMask)
    registry.register(PointingGame)
