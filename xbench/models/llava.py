"""LLaVA family adapter over transformers' ``LlavaForConditionalGeneration``: any LLaVA-type
checkpoint with one square image through a CLIP or SigLIP tower (LLaVA-1.5, llava-interleave...).

Layout: ``pixel_values [1, C, S, S]`` (the processor's pad / resize / centre crop of the original
image, :func:`~xbench.models.layout.processed_region`) tiled by ``patch_size`` patches into the
``S/p x S/p`` grid. The image tokens are the vision tower's tokens after ``vision_feature_select_strategy``:
``default`` drops the tower's first token (CLIP's CLS), ``full`` keeps every token, so with a CLIP
tower the CLS token is an image token too: a 1x1 grid covering the whole region, before the patch
grid. The projector's output enters the language model.

Prompt: the checkpoint's chat template; LLaVA-1.5's ``USER: <image>\\n{prompt} ASSISTANT:`` only
when the checkpoint has none.
"""

from __future__ import annotations


import numpy as np
import torch

from xbench.api import Generation
from xbench.errors import ModelCapabilityError, ModelLoadError
from xbench.hookspecs import hookimpl
from xbench.image_layout import ImageLayout, grid_boxes
from xbench.models import layout
from xbench.models.hf import HFAdapter

#: vision-tower model types whose token sequence starts with a CLS token
CLS_TOWERS = ("clip_vision_model",)


class LlavaBase(HFAdapter):
    """What every ``LlavaForConditionalGeneration`` family shares, whatever its tower: the projector's
    output enters the language model, the features come from ``vision_feature_layer``, image token
    ``i`` is tower token ``i + first_vision_token`` and the tower's last convolution embeds the patches.
    Subclasses give the layout (:class:`LlavaAdapter`: CLIP / SigLIP; ``llava_pixtral``: Pixtral)."""

    model_class = "LlavaForConditionalGeneration"
    #: index in the tower's sequence of the first image token (1 when a CLS token is dropped)
    first_vision_token: int = 0

    # ------------------------------------------------------------------ hook points
    @property
    def image_feature_module(self) -> torch.nn.Module:
        """The projector, whose output enters the language model."""
        return self.model.model.multi_modal_projector

    def vision_layers_read(self) -> int:
        """The tower layers feeding ``vision_feature_layer`` (later ones get no gradient)."""
        layer = self.model.config.vision_feature_layer
        if isinstance(layer, (list, tuple)) and len(layer) == 1:
            layer = layer[0]  # a pool of one layer is that layer
        if not isinstance(layer, int):
            raise ModelCapabilityError(
                f"model {self.name!r} reads image features from several vision layers "
                f"(vision_feature_layer={layer!r}), not one path through the tower"
            )
        return layer % (self.model.config.vision_config.num_hidden_layers + 1)

    def vision_token_positions(self, generation: Generation) -> list[list[int]]:
        """Image token ``i`` is tower token ``i + first_vision_token`` (LLaVA's ``default`` drops CLS)."""
        return [[self.first_vision_token + i] for i in range(len(generation.image_positions))]

    def patch_features(self):
        """The tower's patch-embedding convolution; its ``[1, D, h, w]`` output, flattened."""
        convs = [m for m in self.model.model.vision_tower.modules() if isinstance(m, torch.nn.Conv2d)]
        if not convs:
            raise ModelCapabilityError(f"model {self.name!r} has no convolution in its vision tower")
        return convs[-1], lambda output, generation: output[0].flatten(1)


class LlavaAdapter(LlavaBase):
    """LLaVA-type checkpoints (see the module docstring)."""

    family = "llava"
    description = "LlavaForConditionalGeneration (CLIP or SigLIP tower, default or full features), local HF directories"
    model_types = ("llava",)
    fallback_prompt = "USER: <image>\n{prompt} ASSISTANT:"

    @classmethod
    def accepts(cls, config) -> bool:
        """CLIP and SigLIP towers (Pixtral's variable-size tower has a family of its own)."""
        return (config.get("vision_config") or {}).get("model_type", "clip_vision_model") in CLS_TOWERS + ("siglip_vision_model",)

    def __init__(self, model, processor, identity, device, dtype, attn_implementation) -> None:
        super().__init__(model, processor, identity, device, dtype, attn_implementation)
        cfg = model.config
        vc = cfg.vision_config
        if vc.model_type not in CLS_TOWERS + ("siglip_vision_model",):
            raise ModelLoadError(f"model {self.name!r}: a LLaVA checkpoint with a {vc.model_type!r} vision tower is not supported")
        side = vc.image_size // vc.patch_size
        self.patch_grid = (side, side)
        self.patch = int(vc.patch_size)
        #: the fraction of each side of the processed image the patches read (27 x 14 / 384 for SigLIP-384)
        self.patch_cover = side * self.patch / vc.image_size
        has_cls = vc.model_type in CLS_TOWERS
        strategy = cfg.vision_feature_select_strategy
        if strategy == "default" and not has_cls:
            raise ModelLoadError(
                f"model {self.name!r}: vision_feature_select_strategy 'default' drops the first token of a "
                f"{vc.model_type!r} tower, which has no CLS token (its image tokens would not form a grid)"
            )
        #: index in the tower's sequence of the first image token; whether that token is CLS
        self.first_vision_token = 1 if strategy == "default" else 0
        self.cls_is_image_token = has_cls and strategy == "full"

    # ------------------------------------------------------------------ layout
    def layout_of(self, inputs, i: int, image) -> ImageLayout:
        size = (image.height, image.width)
        region = layout.processed_region(self.processor.image_processor, size)
        boxes = grid_boxes(self.patch_grid, layout.patch_region(region, (self.patch_cover, self.patch_cover)))
        if self.cls_is_image_token:
            return ImageLayout(((1, 1), self.patch_grid), np.concatenate([[region], boxes]), size)
        return ImageLayout((self.patch_grid,), boxes, size)

    def pixel_cells(self, generation: Generation) -> torch.Tensor:
        """``[1, 1, S, S]``: each pixel's patch cell (after the CLS cell when there is one; -1 past
        the last whole patch)."""
        pv = generation.pixel_values
        first = 1 if self.cls_is_image_token else 0
        return layout.square_cells(self.patch_grid, self.patch, pv.shape[-2:], first, pv.device)[None, None]

    def patch_cells(self, generation: Generation) -> torch.Tensor:
        first = 1 if self.cls_is_image_token else 0
        return first + torch.arange(self.patch_grid[0] * self.patch_grid[1])


@hookimpl
def xbench_register_model_families(registry):
    registry.register(LlavaAdapter)
