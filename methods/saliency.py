"""Saliency (Simonyan et al. 2014) through Captum: d target / d pixels (absolute under ``pool=abs``),
pooled onto the patch grid.

Target and pooling: see :mod:`xbench.methods.captum_common`.
"""

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import CaptumMethod


class SaliencyMethod(CaptumMethod):
    name = "saliency"
    description = "Captum Saliency: input gradient of the answer log-probability"

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import Saliency

        return Saliency(forward).attribute(pixel_values, abs=self.params["pool"] == "abs")


@hookimpl
def xbench_register_methods(registry):
    registry.register(SaliencyMethod)
