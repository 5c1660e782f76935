"""GradientSHAP (Lundberg & Lee 2017) through Captum, pooled onto the patch grid.

Baseline distribution: the constant image ``baseline`` (normalised pixel space); each of
``n_samples`` draws adds Gaussian noise of std ``stdevs`` to the input and picks a random
point between baseline and input (seeded per sample). Target and pooling: see
:mod:`xbench.methods.captum_common`.
"""

import torch

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import CaptumMethod


class GradientShapMethod(CaptumMethod):
    name = "gradient_shap"
    description = "Captum GradientShap (noisy expected gradients from a constant image)"

    @classmethod
    def default_params(cls):
        return {**super().default_params(), "n_samples": 16, "stdevs": 0.1, "baseline": 0.0}

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import GradientShap

        baselines = torch.full_like(pixel_values, float(self.params["baseline"]))
        return GradientShap(forward).attribute(
            pixel_values, baselines=baselines, n_samples=self.params["n_samples"], stdevs=float(self.params["stdevs"])
        )


@hookimpl
def xbench_register_methods(registry):
    registry.register(GradientShapMethod)
