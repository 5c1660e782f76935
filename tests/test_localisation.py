from types import SimpleNamespace

import numpy as np
import pytest

from xbench.api import MetricContext, RelevanceMap, Sample
from xbench.image_layout import single_grid
from xbench.metrics.localisation import EnergyInMask, PointingGame


def _sample(mask):
    return Sample("s", "q", ["a"], gt_mask=mask)


def centre_crop_cover(mask, grid):
    """A centre-cropped square's cover of ``grid`` through the layout (what CLIP's processing shows)."""
    H, W = mask.shape
    side = min(H, W)
    region = ((H - side) / 2, (W - side) / 2, (H + side) / 2, (W + side) / 2)
    return single_grid(grid, region, (H, W)).cover(mask)


def test_centre_crop_cover_block_fractions():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[0, 1] = mask[1, 0] = True  # 3 of the top-left 2x2 block
    np.testing.assert_allclose(centre_crop_cover(mask, (2, 2)), [[0.75, 0], [0, 0]])


def test_centre_crop_cover_centre_crops_non_square():
    mask = np.zeros((4, 8), bool)
    mask[:, :2] = True  # outside the centre 4x4 crop
    mask[:, 2] = True  # first column of the crop
    np.testing.assert_allclose(centre_crop_cover(mask, (2, 2)), [[0.5, 0], [0.5, 0]])


def test_centre_crop_cover_non_divisible_sizes_keep_total_fraction():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    grid = centre_crop_cover(mask, (3, 3))
    assert grid.shape == (3, 3) and grid.mean() == pytest.approx(0.5, abs=1e-9)  # area-exact at fractional edges
    np.testing.assert_allclose(grid[:, 0], [1.0, 0.5, 0.0])


def test_energy_in_mask_hand_computed(tiny_vlm):
    gen, ctx = SimpleNamespace(grid=(2, 2), layout=single_grid((2, 2), (0, 0, 4, 4), (4, 4))), MetricContext(vlm=tiny_vlm)  # the LLaVA adapter lays the mask
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # top-left patch fully covered
    rmap = RelevanceMap(np.array([[3.0, 1.0], [-5.0, 0.0]], np.float32))
    # negatives clipped: 3 / (3 + 1)
    assert EnergyInMask().compute(_sample(mask), gen, rmap, ctx) == pytest.approx(0.75)
    zero = RelevanceMap(np.zeros((2, 2), np.float32))
    assert EnergyInMask().compute(_sample(mask), gen, zero, ctx) == pytest.approx(0.25)  # uniform = area share
    assert EnergyInMask().compute(_sample(None), gen, rmap, ctx) is None


def test_pointing_game_hand_computed(tiny_vlm):
    gen, ctx = SimpleNamespace(grid=(2, 2), layout=single_grid((2, 2), (0, 0, 4, 4), (4, 4))), MetricContext(vlm=tiny_vlm)
    mask = np.zeros((4, 4), bool)
    mask[3, 3] = True  # touches only the bottom-right patch
    hit = RelevanceMap(np.array([[0, 0], [0, 1.0]], np.float32))
    miss = RelevanceMap(np.array([[1.0, 0], [0, 0.5]], np.float32))
    assert PointingGame().compute(_sample(mask), gen, hit, ctx) == 1.0
    assert PointingGame().compute(_sample(mask), gen, miss, ctx) == 0.0
    assert PointingGame().compute(_sample(None), gen, hit, ctx) is None
