"""An outside xbench plugin: ``center_prior``, a map that ignores the model.

Photographers centre their subject, so a Gaussian bump in the middle of the image is a
classic baseline any real explanation should beat. Installing this package is all it
takes: xbench finds it through the ``xbench`` entry-point group.
"""

import numpy as np

from xbench.api import Method, RelevanceMap
from xbench.hookspecs import hookimpl
from xbench.params import Param


class CenterPrior(Method):
    name = "center_prior"
    description = "Gaussian centre bias (ignores the model): a baseline"

    parameters = {"sigma": Param(0.25, min=0.0, min_exclusive=True, doc="the bump's width, as a fraction of the grid side")}

    def explain(self, vlm, generations):
        maps = []
        for gen in generations:
            h, w = gen.grid
            y, x = np.mgrid[0:h, 0:w]
            sigma = self.params["sigma"]  # a float > 0, checked when the method was built
            d2 = ((y - (h - 1) / 2) / (sigma * h)) ** 2 + ((x - (w - 1) / 2) / (sigma * w)) ** 2
            maps.append(RelevanceMap(np.exp(-0.5 * d2).astype(np.float32)))
        return maps


@hookimpl
def xbench_register_methods(registry):
    registry.register(CenterPrior)
