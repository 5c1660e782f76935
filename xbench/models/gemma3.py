"""Gemma 3 family adapter over transformers' ``Gemma3ForConditionalGeneration`` (google/gemma-3-4b-it
and its kin: SigLIP + Gemma 3 with a chat template).

Layout (:mod:`xbench.models.siglip`): the whole image resized to the tower's square without crop
(896 px / patch 14: a 64x64 patch grid), average-pooled by 4x4 patch blocks into the 16x16 = 256
image tokens (``mm_tokens_per_image``); one cell is one pooled block, so ``pixel_cells`` gives every
pixel of a 56x56 block the same cell, ``vision_token_positions`` lists the 16 patches pooled into
each token, and Grad-CAM reads the per-patch features of the patch embedding. In the prompt the
image is ``\\n\\n<start_of_image>`` + the image tokens + ``<end_of_image>\\n\\n``; only the image
tokens are cells.

Prompt: the checkpoint's chat template (it renders ``<bos>`` itself, so the tokenizer adds none).
Pan-and-scan (extra crops of a wide or tall image) is off in the published processor; a checkpoint
that turns it on is refused at load. Image tokens attend to each other bidirectionally
(``token_type_ids`` 1 on them), at generation and in every teacher-forced re-forward.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from xbench.api import Generation
from xbench.errors import ModelLoadError
from xbench.hookspecs import hookimpl
from xbench.models.siglip import SiglipGridAdapter


def init_image_projection(model, seed: int) -> None:
    """Draw Gemma 3's image projection from ``seed`` (normal, std ``1/sqrt(vision width)``).

    transformers initialises ``mm_input_projection_weight`` to zeros, which would cut every image
    off the language model of a randomly initialised model; the zoo's mirror and the randomized
    control both draw it here instead (the global generator is left untouched)."""
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        values = torch.randn(weight.shape, dtype=torch.float32) * weight.shape[0] ** -0.5
    with torch.no_grad():
        weight.copy_(values.to(weight.device, weight.dtype))


class Gemma3Adapter(SiglipGridAdapter):
    """Gemma 3 checkpoints (see the module docstring)."""

    family = "gemma3"
    description = "Gemma3ForConditionalGeneration (SigLIP pooled 4x4 + Gemma 3, chat template), local HF directories"
    model_types = ("gemma3",)
    model_class = "Gemma3ForConditionalGeneration"

    def __init__(self, model, processor, identity, device, dtype, attn_implementation) -> None:
        if getattr(processor.image_processor, "do_pan_and_scan", None):
            raise ModelLoadError(
                f"model {identity.name!r}: its image processor turns pan-and-scan on (do_pan_and_scan in "
                "preprocessor_config.json); each crop would be another image, which xbench's one-grid Gemma 3 layout does not cover"
            )
        super().__init__(model, processor, identity, device, dtype, attn_implementation)
        tokens = int(model.config.mm_tokens_per_image)
        if self.token_grid[0] * self.token_grid[1] != tokens:
            raise ModelLoadError(f"model {self.name!r}: mm_tokens_per_image {tokens} is not a square number of pooled blocks")

    def pool(self) -> int:
        """``patches per side // tokens per side``, as Gemma 3's projector pools."""
        vc = self.model.config.vision_config
        side = int(round(int(self.model.config.mm_tokens_per_image) ** 0.5))
        return (vc.image_size // vc.patch_size) // max(side, 1)

    def encode(self, images: Sequence[Any], texts: Sequence[str]):
        """The processor's batch, one image per prompt; no ``<bos>`` added to a prompt whose
        template rendered it already."""
        bos = self.tokenizer.bos_token
        add = not any(bos is not None and t.startswith(bos) for t in texts)
        return self.processor(images=[[im] for im in images], text=list(texts), return_tensors="pt",
                              padding=True, add_special_tokens=add)

    def token_type_ids(self, generation: Generation) -> torch.Tensor:
        """1 on the image tokens (attended bidirectionally among themselves), 0 elsewhere."""
        ids = generation.prompt_ids + generation.answer_ids
        return torch.tensor([[int(t == self.image_token_id) for t in ids]])

    def randomized(self, seed: int) -> "Gemma3Adapter":
        """:meth:`HFAdapter.randomized`, with the image projection drawn too (:func:`init_image_projection`)."""
        control = super().randomized(seed)
        init_image_projection(control.model, seed + 1)
        return control


@hookimpl
def xbench_register_model_families(registry):
    registry.register(Gemma3Adapter)
