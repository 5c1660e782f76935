"""LLaVA-OneVision family adapter over ``LlavaOnevisionForConditionalGeneration``: LLaVA-NeXT's
anyres layout (:mod:`xbench.models.llava_next`) with a SigLIP tower read in full (no CLS) and
``anyres_max_N``: when the unpadded high-resolution grid holds more than about ``N`` crops' worth
of patches, the model shrinks it by bilinear interpolation.

A shrunk ("pooled") high-resolution cell shows the span of the original image it was
interpolated over (its box); a pixel's cell is the cell whose box holds it. Such a cell is a
weighted mix of up to 4 vision patches, so the patch-level hook points (``vision_token_positions``,
``patch_cells``) refuse those samples with a :class:`~xbench.errors.ModelCapabilityError` naming
the sample and the grid sizes, instead of assigning patches to cells they only partly feed.

The processor: the checkpoint's ``LlavaOnevisionProcessor`` settings, loaded without its video
processor (which needs torchvision); images only, as xbench's tasks are.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from xbench.errors import ModelLoadError
from xbench.hookspecs import hookimpl
from xbench.models.llava_next import LlavaNextAdapter

_ANYRES_MAX = re.compile(r"anyres_max_(\d+)")


@functools.cache
def image_only_processor_class():
    """``LlavaOnevisionProcessor`` with an image processor and a tokenizer only (no video processor,
    so no torchvision); it reads the same ``processor_config.json``."""
    from transformers import LlavaOnevisionProcessor

    class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
        # transformers passes a saved processor's settings only to named ``__init__`` arguments
        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                     video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs) -> None:
            kwargs.pop("video_processor", None)
            super().__init__(
                image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio, **kwargs,
            )

    return ImageOnlyOnevisionProcessor


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision checkpoints (see the module docstring)."""

    family = "llava_onevision"
    description = "LlavaOnevisionForConditionalGeneration (anyres_max_N, SigLIP), local HF directories; images only"
    model_types = ("llava_onevision",)
    model_class = "LlavaOnevisionForConditionalGeneration"

    def __init__(self, model, processor, identity, device, dtype, attn_implementation) -> None:
        ratio = model.config.vision_aspect_ratio
        match = _ANYRES_MAX.fullmatch(str(ratio))
        if match is None:
            raise ModelLoadError(f"model {identity.name!r}: vision_aspect_ratio {ratio!r} is not 'anyres_max_N'")
        self.max_patches = int(match.group(1))
        super().__init__(model, processor, identity, device, dtype, attn_implementation)

    @classmethod
    def load_processor(cls, path: Path):
        return image_only_processor_class().from_pretrained(str(path), local_files_only=True)

    def processor_facts(self) -> dict[str, tuple[Any, Any]]:
        facts = super().processor_facts()
        del facts["patch_size"]  # the OneVision processor counts tokens per crop instead
        side = self.patch_grid[0]
        facts["num_image_tokens"] = (self.processor.num_image_tokens, side * side)
        facts["vision_aspect_ratio"] = (self.processor.vision_aspect_ratio, self.model.config.vision_aspect_ratio)
        return facts


@hookimpl
def xbench_register_model_families(registry):
    registry.register(LlavaOnevisionAdapter)
