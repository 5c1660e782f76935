"""Feature ablation through Captum with one feature per image patch, pooled onto the grid.

The feature mask gives every pixel (all channels) of a patch the patch's index; each patch
in turn is set to the constant ``baseline`` (normalised pixel space) and the change of the
target is its attribution. ``perturbations_per_eval`` patches per forward. Target and
pooling: see :mod:`xbench.methods.captum_common`.
"""

import torch

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import BASELINE, CaptumMethod, count, patch_size


def patch_feature_mask(generation, device) -> torch.Tensor:
    """``[1, 1, H, W]`` long: the row-major patch index of every pixel."""
    h, w = generation.grid
    p = patch_size(generation)
    ids = torch.arange(h * w, device=device).reshape(h, w)
    return ids.repeat_interleave(p, dim=0).repeat_interleave(p, dim=1)[None, None]


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
            feature_mask=patch_feature_mask(generation, pixel_values.device),
            perturbations_per_eval=self.params["perturbations_per_eval"],
        )


@hookimpl
def xbench_register_methods(registry):
    registry.register(FeatureAblationMethod)
