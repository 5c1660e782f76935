"""Occlusion (Zeiler & Fergus 2014) through Captum with patch-sized windows, pooled onto the grid.

Windows of ``window`` x ``window`` patches (all channels) slide by ``stride`` patches and are
replaced by the constant ``baseline`` (normalised pixel space); each pixel gets the mean drop
of the target over the windows covering it. ``perturbations_per_eval`` windows per forward.
Target and pooling: see :mod:`xbench.methods.captum_common`.
"""

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import BASELINE, CaptumMethod, count


class OcclusionMethod(CaptumMethod):
    name = "occlusion"
    description = "Captum Occlusion with patch-sized windows"
    needs = frozenset()

    parameters = {
        **CaptumMethod.parameters,
        "window": count(1, "side of the occluding window, in patches"),
        "stride": count(1, "step of the window, in patches"),
        "baseline": BASELINE,
        "perturbations_per_eval": count(16, "windows per forward"),
    }

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import Occlusion

        p, c = vlm.patch_size(generation), pixel_values.shape[1]
        return Occlusion(forward).attribute(
            pixel_values,
            sliding_window_shapes=(c, self.params["window"] * p, self.params["window"] * p),
            strides=(c, self.params["stride"] * p, self.params["stride"] * p),
            baselines=self.params["baseline"],
            perturbations_per_eval=self.params["perturbations_per_eval"],
        )


@hookimpl
def xbench_register_methods(registry):
    registry.register(OcclusionMethod)
