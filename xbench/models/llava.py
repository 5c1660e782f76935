"""LLaVA family adapter over transformers' ``LlavaForConditionalGeneration``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from xbench.api import HIDDEN_STATES, VLM, ForwardOutput, Generation, ModelIdentity, Sample
from xbench.errors import AttentionsUnavailableError, ModelCapabilityError, ModelLoadError, PromptTooLongError
from xbench.hookspecs import hookimpl
from xbench.models import layout


class LlavaAdapter(VLM):
    """Batched, left-padded greedy generation and teacher-forced re-forwards for LLaVA.

    The prompt follows LLaVA-1.5's conversation template: ``USER: <image>\\n{prompt} ASSISTANT:``.
    Layout: one square CLIP-style image ``pixel_values [1, C, H, W]`` tiled by ``patch_size``
    patches into the ``grid``; image token ``i`` is vision-tower token ``i + 1`` (the
    ``default`` feature selection drops CLS); the projector's output enters the language model.
    """

    family = "llava"
    description = "LlavaForConditionalGeneration (LLaVA-1.5 template), local HF directories"
    model_types = ("llava",)
    template = "USER: <image>\n{prompt} ASSISTANT:"

    def __init__(
        self, model, processor, identity: ModelIdentity, device: str, dtype: torch.dtype, attn_implementation: str
    ) -> None:
        super().__init__(identity, device, dtype, attn_implementation)
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
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
    def load(
        cls, path: Path, *, identity: ModelIdentity, device: str, dtype: torch.dtype, attn_implementation: str
    ) -> "LlavaAdapter":
        from transformers import AutoProcessor, LlavaForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model, info = LlavaForConditionalGeneration.from_pretrained(
                str(path),
                dtype=dtype,
                attn_implementation=attn_implementation,
                local_files_only=True,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, by name
            )
            processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # corrupt weights, bad tokenizer... all name the directory
            raise ModelLoadError(f"cannot load LLaVA model from {str(path)!r}: {type(exc).__name__}: {exc}") from None
        # transformers fills missing or mis-shaped weights with random values: refuse that
        bad = [f"missing {k}" for k in info.get("missing_keys", [])]
        bad += [f"{k} is {tuple(ckpt)} in the weights, {tuple(want)} in config.json" for k, ckpt, want in info.get("mismatched_keys", [])]
        if bad:
            shown = "; ".join(sorted(bad)[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
            raise ModelLoadError(f"weights in {str(path)!r} do not match its config.json: {shown}")
        model.to(device).eval()
        model.requires_grad_(False)
        return cls(model, processor, identity, device, dtype, attn_implementation)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        samples: Sequence[Sample],
        prompts: Sequence[str],
        max_new_tokens: int,
        keep: frozenset[str] = frozenset(),
    ) -> list[Generation]:
        """Greedy answers for a batch; keeps last-layer hidden states when ``HIDDEN_STATES in keep``.

        Every prompt is checked against the context window before anything is generated: one
        too long raises :class:`PromptTooLongError` naming its sample (the caller's batch
        splitting then isolates that sample)."""
        texts = [self.template.format(prompt=p) for p in prompts]
        images = [s.load_image() for s in samples]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        self._check_context(samples, inputs["attention_mask"].sum(dim=1).tolist(), max_new_tokens)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        captured: list[torch.Tensor] = []
        ctx = self._capture_last_hidden(captured) if HIDDEN_STATES in keep else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            sequences = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
                suppress_tokens=[self.image_token_id],  # an image placeholder in the answer breaks re-forwards
            )
        hidden = torch.cat(captured, dim=1) if captured else None
        in_len = inputs["input_ids"].shape[1]
        return [
            self._generation(sample, inputs, i, sequences[i, in_len:].tolist(), hidden)
            for i, sample in enumerate(samples)
        ]

    def _generation(self, sample: Sample, inputs, i: int, generated: list[int], hidden) -> Generation:
        """Row ``i`` of a generated batch as a :class:`Generation` (padding removed)."""
        mask = inputs["attention_mask"][i].bool()
        n_pad = int((~mask).sum())
        prompt_ids = inputs["input_ids"][i][mask].tolist()
        answer_ids = self._trim_answer(generated)
        positions = [j for j, t in enumerate(prompt_ids) if t == self.image_token_id]
        if len(positions) != self.grid[0] * self.grid[1]:
            raise ModelLoadError(
                f"model {self.name!r}: {len(positions)} image tokens do not fill "
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
        return gen

    @property
    def context_length(self) -> int:
        """Positions the language model was built for (``max_position_embeddings``)."""
        return int(self.model.config.get_text_config().max_position_embeddings)

    def _check_context(self, samples: Sequence[Sample], prompt_lengths: Sequence[int], max_new_tokens: int) -> None:
        for sample, length in zip(samples, prompt_lengths):
            if length + max_new_tokens > self.context_length:
                raise PromptTooLongError(
                    f"sample {sample.id!r}: its prompt of {length} tokens plus up to {max_new_tokens} answer tokens "
                    f"does not fit the context window of model {self.name!r} ({self.context_length} tokens)"
                )

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

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    # ------------------------------------------------------------------ re-forwards
    def input_ids(self, generation: Generation) -> torch.Tensor:
        """``[1, T]`` prompt + answer ids of ``generation`` on the model's device."""
        return torch.tensor([generation.prompt_ids + generation.answer_ids], device=self.device)

    def forward(
        self, generation: Generation, *, pixel_values=None, output_attentions: bool = False,
        logits_to_keep: int | None = None,
    ) -> ForwardOutput:
        """Teacher-forced forward over prompt + answer of one generation (see :meth:`VLM.forward`).

        ``vision_attentions`` are the CLIP tower's layers, first to last; sdpa attention
        silently returns no weights, which is refused here.
        """
        ids = self.input_ids(generation)
        pv = generation.pixel_values if pixel_values is None else pixel_values
        extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
        outputs = self.model(
            input_ids=ids.expand(pv.shape[0], -1), pixel_values=pv, output_attentions=output_attentions,
            use_cache=False, **extra,
        )
        if not output_attentions:
            return ForwardOutput(outputs.logits)
        atts = outputs.attentions
        if not atts or any(a is None or a.numel() == 0 for a in atts):
            raise AttentionsUnavailableError(
                f"model {self.name!r} returned no attentions "
                f"(attn_implementation={self.attn_implementation!r}); load it with eager attention"
            )
        vision = getattr(outputs.image_outputs, "attentions", None)
        return ForwardOutput(outputs.logits, tuple(atts), tuple(vision) if vision else None)

    def last_hidden_states(self, generation: Generation) -> torch.Tensor:
        """The final-norm output over prompt + answer minus its last position (what generate keeps)."""
        captured: list[torch.Tensor] = []
        with torch.no_grad(), self._capture_last_hidden(captured):
            self.forward(generation)
        return captured[0][0, :-1]

    # ------------------------------------------------------------------ controls
    @contextlib.contextmanager
    def attention(self, implementation: str):
        """Switch every attention layer to ``implementation`` inside the block, then back."""
        previous = self.attn_implementation
        if implementation == previous:
            yield self
            return
        self.model.set_attn_implementation(implementation)
        self.attn_implementation = implementation
        try:
            yield self
        finally:
            self.model.set_attn_implementation(previous)
            self.attn_implementation = previous

    def randomized(self, seed: int) -> "LlavaAdapter":
        """Same class, config, processor, device, dtype and attention, weights from a seeded random init."""
        import copy

        devices = [torch.device(self.device)] if str(self.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices), torch.device(self.device):
            torch.manual_seed(seed)
            model = type(self.model)._from_config(
                copy.deepcopy(self.model.config), attn_implementation=self.attn_implementation
            )
        model.to(device=self.device, dtype=self.dtype).eval()
        model.requires_grad_(False)
        identity = self.identity.randomized(seed)
        return type(self)(model, self.processor, identity, self.device, self.dtype, self.attn_implementation)

    # ------------------------------------------------------------------ hook points
    @contextlib.contextmanager
    def image_features_as_leaf(self):
        """Within the block, the projector's output is detached and made a leaf that requires grad."""
        handle = self.model.model.multi_modal_projector.register_forward_hook(
            lambda _m, _i, out: out.detach().requires_grad_(True)
        )
        try:
            yield
        finally:
            handle.remove()

    def vision_layers_read(self) -> int:
        """The ViT layers feeding ``vision_feature_layer`` (later ones get no gradient)."""
        layer = self.model.config.vision_feature_layer
        if isinstance(layer, (list, tuple)) and len(layer) == 1:
            layer = layer[0]  # a pool of one layer is that layer
        if not isinstance(layer, int):
            raise ModelCapabilityError(
                f"model {self.name!r} reads image features from several vision layers "
                f"(vision_feature_layer={layer!r}), not one path through the tower"
            )
        return layer % (self.model.config.vision_config.num_hidden_layers + 1)

    def vision_token_positions(self, generation: Generation) -> list[int]:
        """Image token ``i`` is ViT token ``i + 1``: the ``default`` strategy drops CLS at index 0."""
        return [1 + i for i in range(len(generation.image_positions))]

    def patch_embedding(self) -> torch.nn.Module:
        """The vision tower's last ``Conv2d`` (CLIP: the patch embedding)."""
        convs = [m for m in self.model.model.vision_tower.modules() if isinstance(m, torch.nn.Conv2d)]
        if not convs:
            raise ModelCapabilityError(f"model {self.name!r} has no convolution in its vision tower")
        return convs[-1]

    # ------------------------------------------------------------------ pixel layout
    def patch_size(self, generation: Generation) -> int:
        return int(self.model.config.vision_config.patch_size)

    def pixels_to_grid(self, attribution: torch.Tensor, generation: Generation) -> np.ndarray:
        return layout.sum_per_cell(attribution, generation.grid)

    def pixel_cells(self, generation: Generation) -> torch.Tensor:
        return layout.cell_index(generation.grid, self.patch_size(generation), generation.pixel_values.device)

    def mask_to_grid(self, mask: np.ndarray, generation: Generation) -> np.ndarray:
        """CLIP's resize-shortest-edge + centre crop: the mask is centre-cropped to a square first."""
        return layout.centre_crop_cover(mask, generation.grid)

    @property
    def image_std(self) -> tuple[float, ...] | None:
        std = getattr(self.processor.image_processor, "image_std", None)
        return None if std is None else tuple(float(v) for v in std)


@hookimpl
def xbench_register_model_families(registry):
    registry.register(LlavaAdapter)
