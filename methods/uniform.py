"""Baseline ``uniform``: every cell gets 1 / N (N image cells), the map that prefers no patch."""

import numpy as np

from xbench.api import Method, RelevanceMap
from xbench.hookspecs import hookimpl


class UniformMap(Method):
    name = "uniform"
    description = "baseline: the same relevance for every patch"

    def explain(self, vlm, generations):
        return [RelevanceMap(np.full(g.grid, 1.0 / g.layout.n_cells, dtype=np.float32)) for g in generations]


@hookimpl
def xbench_register_methods(registry):
    registry.register(UniformMap)
