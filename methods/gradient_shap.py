"""GradientSHAP (Lundberg & Lee 2017) through Captum, pooled onto the patch grid.

Baseline distribution: the constant image ``baseline`` (normalised pixel space); each of
``n_samples`` draws adds Gaussian noise of std ``stdevs`` to the input and picks a random
point between baseline and input (seeded per sample). Target and pooling: see
:mod:`xbench.methods.captum_common`.
"""

import torch

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import BASELINE, CaptumMethod, count
from xbench.params import Param


class GradientShapMethod(CaptumMethod):
    name = "gradient_shap"
    description = "Captum GradientShap (noisy expected gradients from a constant image)"

    parameters = {
        **CaptumMethod.parameters,
        "n_samples": count(16, "draws between baseline and input"),
        "stdevs": Param(0.1, min=0.0, doc="std of the Gaussian noise added to each draw (normalised pixel space)"),
        "baseline": BASELINE,
    }

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import GradientShap

        baselines = torch.full_like(pixel_values, self.params["baseline"])
        return GradientShap(forward).attribute(
            pixel_values, baselines=baselines, n_samples=self.params["n_samples"], stdevs=self.params["stdevs"]
        )


@hookimpl
def xbench_register_methods(registry):
    registry.register(GradientShapMethod)
