"""SmoothGrad (Smilkov et al. 2017): Captum's NoiseTunnel over Saliency, pooled onto the patch grid.

``nt_samples`` noisy copies (Gaussian, std ``stdevs`` in normalised pixel space, seeded per
sample), ``batch_size`` of them per forward; gradients averaged (absolute ones under
``pool=abs``). Target and pooling:
see :mod:`xbench.methods.captum_common`.
"""

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import CaptumMethod, count
from xbench.params import Param


class SmoothGradMethod(CaptumMethod):
    name = "smoothgrad"
    description = "Captum NoiseTunnel(Saliency), smoothgrad"

    parameters = {
        **CaptumMethod.parameters,
        "nt_samples": count(16, "noisy copies of the image"),
        "stdevs": Param(0.15, min=0.0, doc="std of the Gaussian noise (normalised pixel space)"),
        "batch_size": count(16, "noisy copies per forward"),
    }

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import NoiseTunnel, Saliency

        return NoiseTunnel(Saliency(forward)).attribute(
            pixel_values,
            nt_type="smoothgrad",
            nt_samples=self.params["nt_samples"],
            nt_samples_batch_size=self.params["batch_size"],
            stdevs=self.params["stdevs"],
            abs=self.params["pool"] == "abs",
        )


@hookimpl
def xbench_register_methods(registry):
    registry.register(SmoothGradMethod)
