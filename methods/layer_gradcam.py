"""Grad-CAM (Selvaraju et al. 2017) on the vision tower's per-patch features.

The layer is the adapter's ``vlm.patch_features()`` (CLIP / SigLIP: the patch-embedding
convolution; Qwen2-VL: its patch embedding), viewed as ``[D, P]`` features of the ``P`` vision
patches. With ``T`` the target (see :mod:`xbench.methods.captum_common`) and ``A`` those features::

    alpha_d = mean_patches dT/dA_d        cam_p = ReLU(sum_d alpha_d A_dp)

(``relu=false`` keeps the signed map); a cell's value is the mean of ``cam`` over the patches
feeding it (``vlm.patch_cells``; one patch per cell for LLaVA). On a CLIP-style
``[1, D, h, w]`` convolution output this is Captum's ``LayerGradCam`` (checked in the tests).
"""

import torch

from xbench.errors import ModelCapabilityError
from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import TARGET, CaptumMethod, answer_logprob_fn
from xbench.params import Param


def cells_mean(values: torch.Tensor, cells: torch.Tensor, n_cells: int) -> torch.Tensor:
    """``[n_cells]`` float64: the mean of ``values [P]`` over the patches of each cell (0 for none)."""
    keep = cells >= 0
    sums = torch.zeros(n_cells, dtype=torch.float64).index_add_(0, cells[keep], values[keep].double())
    counts = torch.zeros(n_cells, dtype=torch.float64).index_add_(0, cells[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))


class LayerGradCamMethod(CaptumMethod):
    """In the Captum family (its target, seeding and cell maps), computed here because Captum's
    ``LayerGradCam`` averages over the dims after the first two of a layer's output, which is
    Grad-CAM only for a ``[B, D, h, w]`` output (not, say, Qwen2-VL's ``[patches, D]``)."""

    name = "layer_gradcam"
    description = "Grad-CAM on the vision tower's per-patch features"
    requires = ()
    on_cells = True

    parameters = {
        "target": TARGET,
        "relu": Param(True, doc="keep the positive part of the map (false: the signed map)"),
    }

    def check(self, vlm):
        """The model family must expose per-patch vision features."""
        try:
            vlm.patch_features()
        except ModelCapabilityError as exc:
            raise ModelCapabilityError(f"method {self.name!r} cannot run: {exc}") from None

    def attribute_cells(self, vlm, generation) -> torch.Tensor:
        module, view = vlm.patch_features()
        captured = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.enable_grad():
                pixel_values = generation.pixel_values.detach().clone().requires_grad_(True)
                target = answer_logprob_fn(vlm, generation, self.params["target"])(pixel_values).sum()
                (grad,) = torch.autograd.grad(target, captured[0])
        finally:
            handle.remove()
        features, grads = view(captured[0].detach(), generation).float(), view(grad, generation).float()  # [D, P]
        cam = (grads.mean(dim=1, keepdim=True) * features).sum(dim=0)
        if self.params["relu"]:
            cam = cam.clamp(min=0)
        cells = vlm.patch_cells(generation).to(cam.device)
        return cells_mean(cam.cpu(), cells.cpu(), generation.layout.n_cells).reshape(generation.grid)


@hookimpl
def xbench_register_methods(registry):
    registry.register(LayerGradCamMethod)
