"""Integrated gradients (Sundararajan et al. 2017) through Captum, pooled onto the patch grid.

Baseline: a constant image of value ``baseline`` in the processor's normalised pixel space
(0: the normalisation mean colour). ``n_steps`` Gauss-Legendre points, ``internal_batch_size``
of them per forward. Target and pooling: see :mod:`xbench.methods.captum_common`.
"""

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import BASELINE, CaptumMethod, count


class IntegratedGradientsMethod(CaptumMethod):
    name = "integrated_gradients"
    description = "Captum IntegratedGradients from a constant (mean-colour) image"

    parameters = {
        **CaptumMethod.parameters,
        "n_steps": count(16, "Gauss-Legendre points on the path from baseline to input"),
        "internal_batch_size": count(16, "path points per forward"),
        "baseline": BASELINE,
    }

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import IntegratedGradients

        return IntegratedGradients(forward).attribute(
            pixel_values,
            baselines=self.params["baseline"],
            n_steps=self.params["n_steps"],
            internal_batch_size=self.params["internal_batch_size"],
        )


@hookimpl
def xbench_register_methods(registry):
    registry.register(IntegratedGradientsMethod)
