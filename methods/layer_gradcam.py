"""Grad-CAM (Selvaraju et al. 2017) through Captum's LayerGradCam on the vision tower.

The layer is the vision tower's patch embedding (``vlm.patch_embedding()``; in CLIP its
convolution), whose output ``[B, D, h, w]`` already lies on the patch grid: Captum's Grad-CAM
averages the gradients over dims >= 2 and sums over dim 1, which is only Grad-CAM for a
channels-first spatial layout (a transformer block's ``[B, tokens, D]`` output would be
averaged over features instead of patches). map = ReLU(sum_c mean_patches(dT/dA_c) A_c)
(``relu=false`` keeps the signed map). Target: see :mod:`xbench.methods.captum_common`.
"""

from xbench.errors import ModelCapabilityError, XbenchError
from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import TARGET, CaptumMethod
from xbench.params import Param


class LayerGradCamMethod(CaptumMethod):
    name = "layer_gradcam"
    description = "Captum LayerGradCam on the vision tower's patch-embedding convolution"
    on_grid = True

    parameters = {
        "target": TARGET,
        "relu": Param(True, doc="keep the positive part of the map (false: the signed map)"),
    }

    def check(self, vlm):
        """The model family must expose a patch embedding."""
        try:
            vlm.patch_embedding()
        except ModelCapabilityError as exc:
            raise ModelCapabilityError(f"method {self.name!r} cannot run: {exc}") from None

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import LayerGradCam

        layer = vlm.patch_embedding()
        cam = LayerGradCam(forward, layer).attribute(pixel_values, relu_attributions=self.params["relu"])
        if cam.shape[-2:] != tuple(generation.grid):
            raise XbenchError(f"layer_gradcam: layer output {tuple(cam.shape)} is not on the {generation.grid} patch grid")
        return cam


@hookimpl
def xbench_register_methods(registry):
    registry.register(LayerGradCamMethod)
