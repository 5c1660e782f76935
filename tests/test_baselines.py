"""The random and uniform baselines."""

import numpy as np

from xbench.api import Generation
from xbench.image_layout import single_grid


def _gen(sample_id, grid=(3, 4)):
    layout = single_grid(grid, (0, 0, grid[0], grid[1]), grid)
    return Generation(sample_id=sample_id, text="", prompt_ids=[1], answer_ids=[2], image_positions=[], layout=layout)


def _random(plugins, seed):
    method = plugins.registries.methods.get("random")()
    method.seed = seed
    return method


def test_random_is_fixed_by_seed_and_sample_id(plugins):
    a = _random(plugins, 0).explain(None, [_gen("x"), _gen("y")])
    b = _random(plugins, 0).explain(None, [_gen("y")])
    c = _random(plugins, 1).explain(None, [_gen("x")])
    np.testing.assert_array_equal(a[1].grid, b[0].grid)  # batch-independent
    assert not np.array_equal(a[0].grid, a[1].grid)  # differs across samples
    assert not np.array_equal(a[0].grid, c[0].grid)  # differs across seeds
    assert a[0].grid.shape == (3, 4) and a[0].grid.dtype == np.float32
    assert 0 <= a[0].grid.min() and a[0].grid.max() < 1 and len(np.unique(a[0].grid)) == 12


def test_uniform_spreads_one_evenly(plugins):
    (m,) = plugins.registries.methods.get("uniform")().explain(None, [_gen("x", (5, 5))])
    assert m.grid.shape == (5, 5)
    assert np.allclose(m.grid, 1 / 25) and np.isclose(m.grid.sum(), 1.0)
