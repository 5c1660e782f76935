"""PaliGemma family adapter over transformers' ``PaliGemmaForConditionalGeneration``
(google/paligemma-3b-pt-224 and its kin: SigLIP + Gemma, no chat template).

Layout (:mod:`xbench.models.siglip`, ``pool = 1``): one square grid of SigLIP patches, no CLS
(224 px / patch 14: 16x16 = 256 tokens), the whole image resized to the square without crop, so
each cell's box is its patch stretched over the original image.

Prompt: PaliGemma has no chat template; its processor builds the prefix itself, and this family
declares that format: ``<image>`` (expanded to ``image_seq_length`` image tokens) + ``<bos>`` +
the instruction + ``"\\n"`` (:attr:`PaliGemmaAdapter.prompt_format` records it). A chat template a
checkpoint might carry is not used (the processor ignores it too). The prefix (image + text) is
attended bidirectionally and the answer causally (``token_type_ids`` 0 for the prompt, 1 for the
answer), at generation and in every teacher-forced re-forward.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from xbench.api import Generation
from xbench.hookspecs import hookimpl
from xbench.models.siglip import SiglipGridAdapter


class PaliGemmaAdapter(SiglipGridAdapter):
    """PaliGemma checkpoints (see the module docstring)."""

    family = "paligemma"
    description = "PaliGemmaForConditionalGeneration (SigLIP + Gemma, prefix-LM; no chat template), local HF directories"
    model_types = ("paligemma",)
    model_class = "PaliGemmaForConditionalGeneration"

    def pool(self) -> int:
        return 1

    def check_prompt_format(self) -> None:
        """PaliGemma's format is the family's own (:meth:`render_prompt`): nothing to refuse."""

    def render_prompt(self, instruction: str) -> str:
        """``<image><bos>{instruction}\\n``: what PaliGemma's processor builds around a text."""
        return f"{self.processor.image_token}{self.tokenizer.bos_token}{instruction}\n"

    def encode(self, images: Sequence[Any], texts: Sequence[str]):
        """The processor's batch for prompts already in PaliGemma's format: the image processor's
        ``pixel_values``, the texts tokenised as they stand (no second ``<bos>``, no second
        newline) with the image token expanded, and ``token_type_ids`` 0 (all prefix)."""
        image_token = self.processor.image_token
        expanded = [t.replace(image_token, image_token * self.processor.image_seq_length, 1) for t in texts]
        batch = self.tokenizer(expanded, add_special_tokens=False, padding=True, return_tensors="pt")
        pixels = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return {**batch, "token_type_ids": torch.zeros_like(batch["input_ids"]), "pixel_values": pixels}

    def token_type_ids(self, generation: Generation) -> torch.Tensor:
        """0 over the prompt (the bidirectional prefix), 1 over the answer (the causal suffix)."""
        return torch.tensor([[0] * generation.prompt_len + [1] * len(generation.answer_ids)])


@hookimpl
def xbench_register_model_families(registry):
    registry.register(PaliGemmaAdapter)
