"""LLaVA-NeXT family adapter over transformers' ``LlavaNextForConditionalGeneration`` (llava-v1.6).

Layout (:mod:`xbench.models.anyres`): ``pixel_values [1, n_crops, C, S, S]`` plus ``image_sizes``;
the image tokens are the base grid (``S/p x S/p``, the whole image squashed to ``S x S``) then
the high-resolution grid (the best pinpoint's crops joined, the padding rows or columns cut away)
read row by row. The newline token the model appends to every high-resolution row is an image
placeholder in the prompt but shows no part of the image: it is not a cell, and is left out of
``image_positions``. Each cell's box is the region of the original image it shows; pixels of a
crop that feed no cell (padding cut away, or past the last patch) have cell -1.

Vision tokens are crop-major: token ``j`` of crop ``c`` is ``c * n + j`` with ``n`` the tower's
tokens per crop (CLIP: CLS + patches; the ``default`` strategy drops CLS, so patch ``k`` of a crop
is token ``k + 1``). The projector's output enters the language model (the newline embedding is a
parameter, not an image feature). Prompt: the checkpoint's chat template (no family fallback).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from xbench.api import Generation
from xbench.errors import ModelCapabilityError, ModelLoadError
from xbench.hookspecs import hookimpl
from xbench.image_layout import ImageLayout
from xbench.models import anyres
from xbench.models.llava import CLS_TOWERS, LlavaAdapter


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT checkpoints (see the module docstring). Shares LLaVA's hook points (projector
    leaf, ``vision_feature_layer`` path, patch-embedding convolution); the layout is anyres."""

    family = "llava_next"
    description = "LlavaNextForConditionalGeneration (anyres base + high-resolution grids), local HF directories"
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"
    fallback_prompt = None
    pixel_channel_dim = 2

    def __init__(self, model, processor, identity, device, dtype, attn_implementation) -> None:
        super().__init__(model, processor, identity, device, dtype, attn_implementation)
        if self.cls_is_image_token:
            raise ModelLoadError(
                f"model {self.name!r}: vision_feature_select_strategy 'full' on a CLIP tower keeps its CLS token, "
                f"which {self.model_class} cannot lay out on the anyres grid"
            )
        vc = model.config.vision_config
        self.crop, self.patch = int(vc.image_size), int(vc.patch_size)
        self.tower_tokens = self.patch_grid[0] ** 2 + (1 if vc.model_type in CLS_TOWERS else 0)
        self.check_processor()

    # ------------------------------------------------------------------ consistency
    def processor_facts(self) -> dict[str, tuple[Any, Any]]:
        """What the processor must agree on with the model config: ``{name: (processor, config)}``."""
        ip, cfg = self.processor.image_processor, self.model.config
        size = _side(getattr(ip, "size", None))
        crop = _side(getattr(ip, "crop_size", None)) if getattr(ip, "crop_size", None) else size
        return {
            "image_grid_pinpoints": (_as_lists(ip.image_grid_pinpoints), _as_lists(cfg.image_grid_pinpoints)),
            "crop side": (crop, self.crop),
            "base image side": (size, self.crop),
            "vision_feature_select_strategy": (self.processor.vision_feature_select_strategy, cfg.vision_feature_select_strategy),
            "patch_size": (getattr(self.processor, "patch_size", None), self.patch),
        }

    def check_processor(self) -> None:
        """A processor that counts image tokens differently from the model is refused at load."""
        bad = [f"{k}: processor {p!r}, config {c!r}" for k, (p, c) in self.processor_facts().items() if p != c]
        if bad:
            raise ModelLoadError(f"model {self.name!r}: its processor and config.json disagree ({'; '.join(bad)})")

    # ------------------------------------------------------------------ layout
    max_patches: int | None = None  # OneVision: the N of anyres_max_N

    def grid_of(self, image_size) -> anyres.AnyresGrid:
        return anyres.anyres_grid(
            image_size, pinpoints=self.model.config.image_grid_pinpoints, crop=self.crop, patch=self.patch,
            max_patches=self.max_patches,
        )

    def anyres_of(self, generation: Generation) -> anyres.AnyresGrid:
        return self.grid_of(generation.layout.image_size)

    def layout_of(self, inputs, i: int, image) -> ImageLayout:
        size = tuple(int(v) for v in inputs["image_sizes"][i].tolist())
        if size != (image.height, image.width):
            raise ModelLoadError(f"model {self.name!r}: the processor reports image size {size}, the image is {image.size[::-1]}")
        g = self.grid_of(size)
        return ImageLayout((self.patch_grid, g.shape), anyres.cell_boxes(g), size)

    def image_positions(self, prompt_ids, layout: ImageLayout) -> list[int]:
        """The placeholders minus the newline after each high-resolution row."""
        found = super().image_positions(prompt_ids, layout)
        (hb, wb), (h, w) = layout.grids
        if len(found) != hb * wb + h * (w + 1):
            return found  # the caller reports the mismatch
        newlines = {hb * wb + r * (w + 1) + w for r in range(h)}
        return [p for k, p in enumerate(found) if k not in newlines]

    def sample_pixels(self, inputs, i: int) -> torch.Tensor:
        """Row ``i``'s crops without the zero crops that pad a batch to its largest image."""
        size = inputs["image_sizes"][i].tolist()
        return inputs["pixel_values"][i : i + 1, : self.grid_of(size).n_crops]

    def image_inputs(self, inputs, i: int) -> Mapping[str, Any]:
        return {"image_sizes": inputs["image_sizes"][i : i + 1]}

    _tower_attentions = False  # set by :meth:`forward` for :meth:`forward_inputs`

    def forward(self, generation: Generation, *, pixel_values=None, output_attentions: bool = False,
                logits_to_keep: int | None = None):
        """:meth:`HFAdapter.forward`. transformers' LLaVA-NeXT / OneVision forward does not pass
        ``output_attentions`` on to the vision tower, so with it the image features are computed
        first by the model's own ``get_image_features`` with the tower's attentions recorded, and
        handed to the model as ``mm_encoder_outputs`` (same numbers)."""
        self._tower_attentions = output_attentions
        try:
            return super().forward(generation, pixel_values=pixel_values, output_attentions=output_attentions,
                                   logits_to_keep=logits_to_keep)
        finally:
            self._tower_attentions = False

    def forward_inputs(self, generation: Generation, pixel_values: torch.Tensor) -> dict[str, Any]:
        sizes = generation.image_inputs["image_sizes"].to(pixel_values.device).expand(len(pixel_values), -1)
        if not self._tower_attentions:
            return {"pixel_values": pixel_values, "image_sizes": sizes}
        image = self.model.model.get_image_features(pixel_values, sizes, output_attentions=True, return_dict=True)
        return {"mm_encoder_outputs": {"image": image}}

    def pixel_cells(self, generation: Generation) -> torch.Tensor:
        """``[1, n_crops, 1, S, S]``: the cell whose box holds each pixel of each crop (-1: none)."""
        return anyres.pixel_cells(self.anyres_of(generation)).to(generation.pixel_values.device)

    # ------------------------------------------------------------------ hook points
    def exact_patches(self, generation: Generation) -> torch.Tensor:
        """:func:`anyres.patch_cells`, refused where a cell is not made of whole patches."""
        g = self.anyres_of(generation)
        if g.pooled:
            raise ModelCapabilityError(
                f"model {self.name!r}: in sample {generation.sample_id!r} the {g.kept[2]}x{g.kept[3]} high-resolution "
                f"grid is shrunk to {g.shape[0]}x{g.shape[1]} by bilinear interpolation "
                f"({self.model.config.vision_aspect_ratio}), so each of its cells mixes up to 4 vision patches with "
                "unequal weights: no patch belongs to one cell"
            )
        return anyres.patch_cells(g)

    def vision_token_positions(self, generation: Generation) -> list[list[int]]:
        """Each cell's one vision token, crop-major (see the module docstring)."""
        cells = self.exact_patches(generation)
        per_crop = self.patch_grid[0] * self.patch_grid[1]
        index = torch.arange(len(cells))
        tokens = (index // per_crop) * self.tower_tokens + self.first_vision_token + index % per_crop
        out: list[list[int]] = [[] for _ in range(generation.layout.n_cells)]
        for cell, token in zip(cells.tolist(), tokens.tolist()):
            if cell >= 0:
                out[cell].append(token)
        return out

    def patch_features(self):
        """The patch-embedding convolution; its ``[n_crops, D, h, w]`` output as ``[D, n_crops * h * w]``."""
        module, _ = super().patch_features()
        return module, lambda output, generation: output.permute(1, 0, 2, 3).flatten(1)

    def patch_cells(self, generation: Generation) -> torch.Tensor:
        return self.exact_patches(generation)


def _side(size) -> int | None:
    """The side of a square ``size`` / ``crop_size`` setting (height, else shortest edge)."""
    if size is None:
        return None
    get = size.get if hasattr(size, "get") else lambda k: getattr(size, k, None)
    side = get("height") or get("shortest_edge")
    return None if side is None else int(side)


def _as_lists(pinpoints) -> list[list[int]] | None:
    return None if pinpoints is None else [[int(v) for v in p] for p in pinpoints]


@hookimpl
def xbench_register_model_families(registry):
    registry.register(LlavaNextAdapter)
