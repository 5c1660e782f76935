"""Feature ablation through Captum with one feature per image patch, pooled onto the grid.

The feature mask (``vlm.pixel_cells``) gives every pixel (all channels) of a patch the patch's index; each patch
in turn is set to the constant ``baseline`` (normalised pixel space) and the change of the
target is its attribution. ``perturbations_per_eval`` patches per forward. Target and
pooling: see :mod:`xbench.methods.captum_common`.
"""

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import BASELINE, CaptumMethod, count


class FeatureAblationMethod(CaptumMethod):
    name = "feature_ablation"
    description = "Captum FeatureAblation, one feature per image patch"
    needs = frozenset()

    parameters = {
        **CaptumMethod.parameters,
        "baseline": BASELINE,
        "perturbations_per_eval": count(16, "ablated patches per forward"),
    }

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import FeatureAblation

        return FeatureAblation(forward).attribute(
            pixel_values,
            baselines=self.params["baseline"],
            feature_mask=vlm.pixel_cells(generation),
            perturbations_per_eval=self.params["perturbations_per_eval"],
        )


@hookimpl
def xbench_register_methods(registry):
    registry.register(FeatureAblationMethod)
