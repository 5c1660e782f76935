"""LLaVA family adapter over transformers' ``LlavaForConditionalGeneration``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import torch

from xbench.api import VLM, Generation, Sample
from xbench.errors import AttentionsUnavailableError, ModelLoadError
from xbench.hookspecs import hookimpl


class LlavaAdapter(VLM):
    """Batched, left-padded greedy generation and teacher-forced re-forwards for LLaVA.

    The prompt follows LLaVA-1.5's conversation template: ``USER: <image>\\n{prompt} ASSISTANT:``.
    """

    name = "llava"
    description = "LlavaForConditionalGeneration (LLaVA-1.5 template), local HF directories"
    model_types = ("llava",)
    template = "USER: <image>\n{prompt} ASSISTANT:"

    def __init__(self, model, processor, device: str, dtype: torch.dtype, attn_implementation: str) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        cfg = model.config
        self.image_token_id = cfg.image_token_id if hasattr(cfg, "image_token_id") else cfg.image_token_index
        vc = cfg.vision_config
        side = vc.image_size // vc.patch_size
        self.grid = (side, side)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos_id = self.tokenizer.eos_token_id

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: Path, *, device: str, dtype: torch.dtype, attn_implementation: str) -> "LlavaAdapter":
        from transformers import AutoProcessor, LlavaForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = LlavaForConditionalGeneration.from_pretrained(
                str(path), dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
            )
            processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load LLaVA model from {str(path)!r}: {exc}") from None
        model.to(device).eval()
        model.requires_grad_(False)
        return cls(model, processor, device, dtype, attn_implementation)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        samples: Sequence[Sample],
        prompts: Sequence[str],
        max_new_tokens: int,
        keep: frozenset[str] = frozenset(),
    ) -> list[Generation]:
        """Greedy answers for a batch; keeps last-layer hidden states when ``"hidden_states" in keep``."""
        texts = [self.template.format(prompt=p) for p in prompts]
        images = [s.load_image() for s in samples]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        captured: list[torch.Tensor] = []
        ctx = self._capture_last_hidden(captured) if "hidden_states" in keep else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            sequences = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
                suppress_tokens=[self.image_token_id],  # an answer never holds an image placeholder
            )
        hidden = torch.cat(captured, dim=1) if captured else None
        in_len = inputs["input_ids"].shape[1]
        out = []
        for i, sample in enumerate(samples):
            mask = inputs["attention_mask"][i].bool()
            n_pad = int((~mask).sum())
            prompt_ids = inputs["input_ids"][i][mask].tolist()
            answer_ids = self._trim_answer(sequences[i, in_len:].tolist())
            positions = [j for j, t in enumerate(prompt_ids) if t == self.image_token_id]
            if len(positions) != self.grid[0] * self.grid[1]:
                raise ModelLoadError(
                    f"model {getattr(self, 'name', 'llava')!r}: {len(positions)} image tokens do not fill "
                    f"a {self.grid[0]}x{self.grid[1]} patch grid (vision_feature_select_strategy must be 'default')"
                )
            gen = Generation(
                sample_id=sample.id,
                text=self.tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
                prompt_ids=prompt_ids,
                answer_ids=answer_ids,
                image_positions=positions,
                grid=self.grid,
                pixel_values=inputs["pixel_values"][i : i + 1],
            )
            if hidden is not None:
                length = len(prompt_ids) + len(answer_ids) - 1
                gen.hidden_states = hidden[i, n_pad : n_pad + length]
            out.append(gen)
        return out

    def _trim_answer(self, ids: list[int]) -> list[int]:
        """Generated ids up to the first end/pad token; the end token alone if it came first."""
        for k, t in enumerate(ids):
            if t in (self.eos_id, self.pad_id):
                return ids[:k] if k > 0 else ids[:1]
        return ids

    @contextlib.contextmanager
    def _capture_last_hidden(self, store: list):
        """Record the language model's final-norm output at every forward (removed on exit)."""
        norm = self.language_model.norm
        handle = norm.register_forward_hook(lambda _m, _i, out: store.append(out.detach()))
        try:
            yield store
        finally:
            handle.remove()

    @property
    def language_model(self):
        return self.model.model.language_model

    # ------------------------------------------------------------------ re-forwards
    def input_ids(self, generation: Generation) -> torch.Tensor:
        """``[1, T]`` prompt + answer ids of ``generation`` on the model's device."""
        return torch.tensor([generation.prompt_ids + generation.answer_ids], device=self.device)

    def forward(self, generation: Generation, *, output_attentions: bool = False, pixel_values=None, **kwargs):
        """Teacher-forced forward over prompt + answer of one generation.

        ``pixel_values`` overrides the generation's image (for perturbation methods).
        With ``output_attentions`` the attentions of every language-model layer are
        checked to be present (sdpa silently returns none).
        """
        ids = self.input_ids(generation)
        pv = generation.pixel_values if pixel_values is None else pixel_values
        outputs = self.model(
            input_ids=ids.expand(pv.shape[0], -1),
            pixel_values=pv,
            output_attentions=output_attentions,
            use_cache=False,
            **kwargs,
        )
        if output_attentions:
            atts = outputs.attentions
            if not atts or any(a is None or a.numel() == 0 for a in atts):
                raise AttentionsUnavailableError(
                    f"model {getattr(self, 'name', 'llava')!r} returned no attentions "
                    f"(attn_implementation={self.attn_implementation!r}); load it with eager attention"
                )
        return outputs


@hookimpl
def xbench_register_model_families(registry):
    registry.register(LlavaAdapter)
