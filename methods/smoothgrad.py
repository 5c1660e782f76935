"""SmoothGrad (Smilkov et al. 2017): Captum's NoiseTunnel over Saliency, pooled onto the patch grid.

``nt_samples`` noisy copies (Gaussian, std ``stdevs`` in normalised pixel space, seeded per
sample), ``batch_size`` of them per forward; gradients averaged (absolute ones under
``pool=abs``). Target and pooling:
see :mod:`xbench.methods.captum_common`.
"""

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import CaptumMethod


class SmoothGradMethod(CaptumMethod):
    name = "smoothgrad"
    description = "Captum NoiseTunnel(Saliency), smoothgrad"

    @classmethod
    def default_params(cls):
        return {**super().default_params(), "nt_samples": 16, "stdevs": 0.15, "batch_size": 16}

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import NoiseTunnel, Saliency

        return NoiseTunnel(Saliency(forward)).attribute(
            pixel_values,
            nt_type="smoothgrad",
            nt_samples=self.params["nt_samples"],
            nt_samples_batch_size=self.params["batch_size"],
            stdevs=float(self.params["stdevs"]),
            abs=self.params["pool"] == "abs",
        )


@hookimpl
def xbench_register_methods(registry):
    registry.register(SmoothGradMethod)
