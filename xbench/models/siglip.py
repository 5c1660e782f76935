"""What PaliGemma and Gemma 3 share: one square image through a SigLIP tower without CLS, its patch
grid average-pooled by ``pool x pool`` blocks into the image tokens, and Gemma's ``token_type_ids``.

Layout: the processor resizes the whole original image to the tower's ``S x S`` square without
crop or padding (aspect ratio not kept), so ``pixel_values [1, C, S, S]``; the tower cuts it into
``S/p x S/p`` patches (token ``r * S/p + c`` is patch ``(r, c)``, no CLS); image token ``i`` of the
``t x t`` grid (``t = S / p / pool``) is the mean of the ``pool x pool`` patches of its block
(PaliGemma: ``pool = 1``, one patch per token; Gemma 3: ``pool = 4``). A cell's box is its block
stretched back over the original image.

Re-forwards pass ``token_type_ids`` as the processor does at generation, because both families'
attention masks depend on them (:meth:`SiglipGridAdapter.token_type_ids`). The vision tower's
attentions are read by hooks on its attention modules (the multimodal forward does not return
them), one ``[B, heads, n, n]`` tensor per layer, B the copies fed.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

from xbench.api import Generation
from xbench.errors import ModelCapabilityError, ModelLoadError
from xbench.image_layout import ImageLayout, single_grid
from xbench.models import layout
from xbench.models.hf import HFAdapter


class SiglipGridAdapter(HFAdapter):
    """Base of the PaliGemma and Gemma 3 adapters (see the module docstring); a subclass sets
    :meth:`pool` and :meth:`token_type_ids`."""

    def __init__(self, model, processor, identity, device, dtype, attn_implementation) -> None:
        super().__init__(model, processor, identity, device, dtype, attn_implementation)
        vc = model.config.vision_config
        if vc.model_type != "siglip_vision_model":
            raise ModelLoadError(f"model {self.name!r}: a {self.family} checkpoint with a {vc.model_type!r} vision tower is not supported")
        if vc.image_size % vc.patch_size:
            raise ModelLoadError(f"model {self.name!r}: image_size {vc.image_size} is not a multiple of patch_size {vc.patch_size}")
        side = vc.image_size // vc.patch_size
        pool = self.pool()
        if pool < 1 or side % pool:
            raise ModelLoadError(f"model {self.name!r}: a {side}x{side} patch grid cannot be pooled by {pool}x{pool} blocks")
        #: patches per side of the tower; image tokens per side
        self.patch_side = side
        self.token_grid = (side // pool, side // pool)
        #: side in pixels of one cell's block of the processed square
        self.cell_pixels = vc.patch_size * pool

    # ------------------------------------------------------------------ family facts
    def pool(self) -> int:
        """Side, in patches, of the block averaged into one image token."""
        raise NotImplementedError

    def token_type_ids(self, generation: Generation) -> torch.Tensor:
        """``[1, T]`` long over prompt + answer: the ``token_type_ids`` the family's attention mask reads."""
        raise NotImplementedError

    # ------------------------------------------------------------------ layout
    def layout_of(self, inputs, i: int, image) -> ImageLayout:
        """The token grid over the region the processor resizes (the whole image: no crop)."""
        size = (image.height, image.width)
        return single_grid(self.token_grid, layout.processed_region(self.processor.image_processor, size), size)

    def pixel_cells(self, generation: Generation) -> torch.Tensor:
        """``[1, 1, S, S]``: each pixel's token cell (its ``pool * p`` pixel block)."""
        pv = generation.pixel_values
        return layout.square_cells(self.token_grid, self.cell_pixels, pv.shape[-2:], 0, pv.device)[None, None]

    def patch_cells(self, generation: Generation) -> torch.Tensor:
        """``[P]``: the cell of each tower patch, row-major over the ``S/p x S/p`` patches."""
        return layout.square_cells(self.token_grid, self.pool(), (self.patch_side, self.patch_side)).reshape(-1)

    def vision_token_positions(self, generation: Generation) -> list[list[int]]:
        """Image token ``i``: the tower tokens (patches, no CLS) of its ``pool x pool`` block."""
        cells = self.patch_cells(generation)
        return [torch.nonzero(cells == i).flatten().tolist() for i in range(len(generation.image_positions))]

    # ------------------------------------------------------------------ re-forwards
    def forward_inputs(self, generation: Generation, pixel_values: torch.Tensor) -> dict:
        tt = self.token_type_ids(generation).to(self.device)
        return {"pixel_values": pixel_values, "token_type_ids": tt.expand(pixel_values.shape[0], -1)}

    def forward(self, generation: Generation, *, pixel_values=None, output_attentions: bool = False,
                logits_to_keep: int | None = None):
        """:meth:`HFAdapter.forward`, with the tower's attentions captured when attentions are asked."""
        if not output_attentions:
            return super().forward(generation, pixel_values=pixel_values, logits_to_keep=logits_to_keep)
        with self._vision_attentions() as captured:
            out = super().forward(generation, pixel_values=pixel_values, output_attentions=True, logits_to_keep=logits_to_keep)
        return replace(out, vision_attentions=tuple(captured) if captured else None)

    @contextlib.contextmanager
    def _vision_attentions(self):
        """Collect the attention weights of every tower layer (first to last) during the block."""
        modules = [m for name, m in self.vision_tower.named_modules() if name.endswith("self_attn")]
        captured: list[torch.Tensor] = []

        def keep(_m, _i, out):
            if isinstance(out, tuple) and len(out) > 1 and out[1] is not None:
                captured.append(out[1])

        handles = [m.register_forward_hook(keep) for m in modules]
        try:
            yield captured
        finally:
            for h in handles:
                h.remove()
        if len(captured) not in (0, len(modules)):
            raise ModelCapabilityError(f"model {self.name!r}: {len(captured)} of {len(modules)} vision layers returned attentions")

    # ------------------------------------------------------------------ hook points
    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def image_feature_module(self) -> torch.nn.Module:
        """The projector, whose output enters the language model."""
        return self.model.model.multi_modal_projector

    def vision_layers_read(self) -> int:
        """Every tower layer: the language model reads the tower's last hidden state."""
        return int(self.model.config.vision_config.num_hidden_layers)

    def patch_features(self):
        """The tower's patch-embedding convolution; its ``[1, D, S/p, S/p]`` output, flattened to ``[D, P]``."""
        convs = [m for m in self.vision_tower.modules() if isinstance(m, torch.nn.Conv2d)]
        if len(convs) != 1:
            raise ModelCapabilityError(f"model {self.name!r}: {len(convs)} convolutions in its vision tower, not one patch embedding")
        return convs[0], lambda output, generation: output[0].flatten(1)
