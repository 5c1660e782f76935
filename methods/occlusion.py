"""Occlusion (Zeiler & Fergus 2014) through Captum with windows of image cells.

On each grid of the layout, windows of ``window`` x ``window`` cells slide by ``stride`` cells
(clipped to the grid's size) and are replaced by the constant ``baseline`` (normalised pixel
space, through ``vlm.perturb``); each cell gets the mean drop of the target over the windows
covering it (Captum's Occlusion over one presence weight per cell, :func:`~xbench.methods.captum_common.cells_logprob_fn`).
``perturbations_per_eval`` windows per forward. Target and pooling: see
:mod:`xbench.methods.captum_common`.
"""

import torch

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import BASELINE, CaptumMethod, cells_logprob_fn, count


class OcclusionMethod(CaptumMethod):
    name = "occlusion"
    description = "Captum Occlusion with windows of image cells"
    needs = frozenset()
    on_cells = True

    parameters = {
        **CaptumMethod.parameters,
        "window": count(1, "side of the occluding window, in cells"),
        "stride": count(1, "step of the window, in cells"),
        "baseline": BASELINE,
        "perturbations_per_eval": count(16, "windows per forward"),
    }

    def attribute_cells(self, vlm, generation):
        from captum.attr import Occlusion

        grids = generation.layout.grids
        forward = cells_logprob_fn(vlm, generation, self.params["target"], self.params["baseline"])
        presence = tuple(torch.ones(1, h, w, device=vlm.device) for h, w in grids)
        window, stride = self.params["window"], self.params["stride"]
        shapes = tuple((min(window, h), min(window, w)) for h, w in grids)
        steps = tuple((min(stride, h), min(stride, w)) for h, w in grids)
        single = len(grids) == 1  # Captum takes a tuple of inputs, or one tensor
        attributions = Occlusion(forward).attribute(
            presence[0] if single else presence,
            sliding_window_shapes=shapes[0] if single else shapes,
            strides=steps[0] if single else steps,
            baselines=0.0 if single else (0.0,) * len(grids),  # Captum reads a scalar as one input's
            perturbations_per_eval=self.params["perturbations_per_eval"],
        )
        attributions = attributions if isinstance(attributions, tuple) else (attributions,)
        flat = torch.cat([a.reshape(-1) for a in attributions])
        return flat.reshape(generation.grid)


@hookimpl
def xbench_register_methods(registry):
    registry.register(OcclusionMethod)
