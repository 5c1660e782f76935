"""Feature ablation through Captum with one feature per image cell.

Captum ablates a presence weight per layout cell (:func:`~xbench.methods.captum_common.cells_logprob_fn`):
each cell in turn is replaced by the constant ``baseline`` (normalised pixel space, through
``vlm.perturb``) and the change of the target is its attribution. ``perturbations_per_eval``
cells per forward. Target and pooling (``abs`` / ``signed`` of the per-cell change): see
:mod:`xbench.methods.captum_common`.
"""

import torch

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import BASELINE, CaptumMethod, cells_logprob_fn, count


class FeatureAblationMethod(CaptumMethod):
    name = "feature_ablation"
    description = "Captum FeatureAblation, one feature per image cell"
    needs = frozenset()
    on_cells = True

    parameters = {
        **CaptumMethod.parameters,
        "baseline": BASELINE,
        "perturbations_per_eval": count(16, "ablated cells per forward"),
    }

    def attribute_cells(self, vlm, generation):
        from captum.attr import FeatureAblation

        forward = cells_logprob_fn(vlm, generation, self.params["target"], self.params["baseline"])
        presence = torch.ones(1, generation.layout.n_cells, device=vlm.device)
        attribution = FeatureAblation(forward).attribute(
            presence, baselines=0.0, perturbations_per_eval=self.params["perturbations_per_eval"]
        )
        return attribution.reshape(generation.grid)


@hookimpl
def xbench_register_methods(registry):
    registry.register(FeatureAblationMethod)
