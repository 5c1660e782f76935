"""Localisation against a ground-truth pixel mask (None where the task has no mask).

Maps are clipped at 0 first (relevance, not its sign); the mask is brought onto the
generation's grid as the fraction of each cell it covers by the model adapter
(``vlm.mask_to_grid``: it knows how the processor resized and cropped the image), hence
``needs = {MODEL}``.
"""

import numpy as np

from xbench.api import MODEL, Metric
from xbench.hookspecs import hookimpl
from xbench.params import Param


class MaskMetric(Metric):
    """A localisation metric: the ground-truth mask laid on the grid by the model adapter."""

    category = "localisation"
    higher_is_better = True
    needs = frozenset({MODEL})

    @staticmethod
    def cover(sample, generation, context) -> np.ndarray:
        """Fraction of each grid cell the sample's mask covers (computed once per sample: every
        localisation metric, on the map and on the control map, shares it through ``context.cache``)."""
        key = ("mask_cover", sample.id, id(sample.gt_mask), tuple(generation.grid))
        if key not in context.cache:
            context.cache[key] = context.vlm.mask_to_grid(sample.gt_mask, generation)
        return context.cache[key]


class EnergyInMask(MaskMetric):
    """Share of positive relevance inside the mask: sum(r * m) / sum(r) (energy pointing game).

    A map with no positive value counts as uniform (the mask's area share).
    """

    name = "energy_in_mask"
    description = "share of positive relevance mass on the ground-truth region"
    def compute(self, sample, generation, rmap, context=None):
        if sample.gt_mask is None:
            return None
        r = np.clip(rmap.grid, 0, None)
        if float(r.sum()) <= 0:
            r = np.ones_like(r)  # no positive relevance anywhere: as uninformative as a uniform map
        total = float(r.sum())
        return float((r * self.cover(sample, generation, context)).sum() / total)


class PointingGame(MaskMetric):
    """1 when the most relevant patch overlaps the mask, else 0 (ties: the first in row-major order)."""

    name = "pointing_game"
    description = "does the top patch touch the ground-truth region"
    def compute(self, sample, generation, rmap, context=None):
        if sample.gt_mask is None:
            return None
        cover = self.cover(sample, generation, context)
        return float(cover.reshape(-1)[int(np.argmax(rmap.grid))] > 0)


class TopRegionIoU(MaskMetric):
    """IoU of the map's top ``top_percent`` % of patches with the mask's patches.

    The top region is the ``ceil(top_percent / 100 * P)`` highest patches (ties: first in
    row-major order); the mask's patches are those it covers at least ``min_cover`` of.
    None when no patch reaches ``min_cover`` (no mask region on this grid).
    """

    name = "top_region_iou"
    description = "IoU of the top-k% most relevant patches with the ground-truth patches"

    parameters = {
        "top_percent": Param(10.0, min=0.0, max=100.0, min_exclusive=True, doc="share of the patches in the top region, in %"),
        "min_cover": Param(0.5, min=0.0, max=1.0, min_exclusive=True, doc="share of a patch the mask must cover to count"),
    }

    def compute(self, sample, generation, rmap, context=None):
        if sample.gt_mask is None:
            return None
        truth = (self.cover(sample, generation, context) >= self.params["min_cover"]).ravel()
        if not truth.any():
            return None
        flat = np.asarray(rmap.grid).ravel()
        k = max(1, int(np.ceil(self.params["top_percent"] / 100 * flat.size - 1e-9)))
        top = np.zeros(flat.size, bool)
        top[np.argsort(-flat, kind="stable")[:k]] = True
        return float((top & truth).sum() / (top | truth).sum())


@hookimpl
def xbench_register_metrics(registry):
    registry.register(EnergyInMask)
    registry.register(PointingGame)
    registry.register(TopRegionIoU)
