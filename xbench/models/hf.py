"""What every Hugging Face ``*ForConditionalGeneration`` adapter shares: loading a local directory
strictly, prompts from the checkpoint's chat template, batched left-padded greedy generation,
teacher-forced re-forwards, attention switching and the randomized control.

A family module subclasses :class:`HFAdapter` and supplies its layout: :meth:`HFAdapter.layout_of`
(the cells of one processed image and the boxes they cover), :meth:`HFAdapter.pixel_cells`, the
per-sample image inputs it keeps (:meth:`HFAdapter.image_inputs`) and how a batch of ``B`` copies
is fed back (:meth:`HFAdapter.forward_inputs`), plus the hook points its methods need.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch

from xbench.api import HIDDEN_STATES, VLM, ForwardOutput, Generation, ModelIdentity, Sample
from xbench.errors import AttentionsUnavailableError, BadImageError, ModelLoadError, PromptTooLongError
from xbench.image_layout import ImageLayout

#: one user turn: the image, then the task's instruction
def user_turn(instruction: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]


def one_image(sample: Sample):
    """The sample's single still image; several images (a list) or frames are a :class:`BadImageError`
    naming the sample (the adapters lay out one image per prompt)."""
    from PIL import Image

    image = sample.load_image()
    if not isinstance(image, Image.Image):
        kind = f"{len(image)} images" if isinstance(image, (list, tuple)) else f"a {type(image).__name__}"
        raise BadImageError(f"sample {sample.id!r} has {kind}; the model adapters take one still image per prompt")
    return image


def read_chat_template(path: Path) -> str | None:
    """The chat template a processor directory ships (``chat_template.jinja``, else the
    ``chat_template`` of ``chat_template.json``), or None (the tokenizer's may still apply)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    js = path / "chat_template.json"
    if js.is_file():
        try:
            template = json.loads(js.read_text()).get("chat_template")
        except (ValueError, AttributeError) as exc:
            raise ModelLoadError(f"cannot read {js}: {exc}") from None
        if not isinstance(template, str):
            raise ModelLoadError(f"{js} has no 'chat_template' string")
        return template
    return None


def load_weights(model_class, path: Path, *, dtype, attn_implementation: str):
    """``model_class.from_pretrained`` on a local directory, refusing missing or mis-shaped weights
    (transformers would fill them with random values) and naming the directory."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = model_class.from_pretrained(
            str(path), dtype=dtype, attn_implementation=attn_implementation, local_files_only=True,
            output_loading_info=True, ignore_mismatched_sizes=True,  # reported below, by name
        )
    except Exception as exc:  # corrupt weights, bad config... all name the directory
        raise ModelLoadError(f"cannot load {model_class.__name__} from {str(path)!r}: {type(exc).__name__}: {exc}") from None
    bad = [f"missing {k}" for k in info.get("missing_keys", [])]
    bad += [f"{k} is {tuple(ckpt)} in the weights, {tuple(want)} in config.json" for k, ckpt, want in info.get("mismatched_keys", [])]
    if bad:
        shown = "; ".join(sorted(bad)[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
        raise ModelLoadError(f"weights in {str(path)!r} do not match its config.json: {shown}")
    return model


class HFAdapter(VLM):
    """A :class:`VLM` over a transformers model and its processor (see the module docstring).

    Class attributes: ``model_class`` (the transformers class name), ``fallback_prompt`` (the
    format used when a checkpoint has no chat template, with ``{prompt}``; None: such a checkpoint
    is refused at load).
    """

    model_class: ClassVar[str] = ""
    fallback_prompt: ClassVar[str | None] = None

    def __init__(self, model, processor, identity: ModelIdentity, device: str, dtype, attn_implementation: str) -> None:
        super().__init__(identity, device, dtype, attn_implementation)
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        cfg = model.config
        self.image_token_id = int(cfg.image_token_id if getattr(cfg, "image_token_id", None) is not None else cfg.image_token_index)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = self.end_tokens()
        self.check_prompt_format()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: Path, *, identity: ModelIdentity, device: str, dtype, attn_implementation: str) -> "HFAdapter":
        import transformers

        model = load_weights(getattr(transformers, cls.model_class), path, dtype=dtype, attn_implementation=attn_implementation)
        try:
            processor = cls.load_processor(path)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load the processor of {str(path)!r}: {type(exc).__name__}: {exc}") from None
        model.to(device).eval()
        model.requires_grad_(False)
        return cls(model, processor, identity, device, dtype, attn_implementation)

    @classmethod
    def load_processor(cls, path: Path):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(path), local_files_only=True)

    def end_tokens(self) -> set[int]:
        """Token ids that end an answer: the tokenizer's end token and the generation config's."""
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        return {int(i) for i in ids if i is not None}

    # ------------------------------------------------------------------ prompts
    @property
    def chat_template(self) -> str | None:
        return getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)

    def check_prompt_format(self) -> None:
        if self.chat_template is None and self.fallback_prompt is None:
            raise ModelLoadError(
                f"model {self.name!r} ({self.family}) has no chat template, and the {self.family!r} family has no "
                "conversation format of its own: its prompt format cannot be determined"
            )

    def render_prompt(self, instruction: str) -> str:
        """The checkpoint's chat template over one user turn (image, then ``instruction``) with the
        generation prompt; the family's ``fallback_prompt`` only when there is no template."""
        if self.chat_template is None:
            return self.fallback_prompt.format(prompt=instruction)
        return self.processor.apply_chat_template(user_turn(instruction), add_generation_prompt=True, tokenize=False)

    # ------------------------------------------------------------------ generation
    def encode(self, images: Sequence[Any], texts: Sequence[str]):
        """The processor's batch for ``images`` and rendered ``texts`` (left-padded tensors)."""
        return self.processor(images=list(images), text=list(texts), return_tensors="pt", padding=True)

    def generate(self, samples: Sequence[Sample], prompts: Sequence[str], max_new_tokens: int,
                 keep: frozenset[str] = frozenset()) -> list[Generation]:
        """Greedy answers for a batch (see :meth:`VLM.generate`); every prompt is checked against the
        context window before anything runs."""
        images = [one_image(s) for s in samples]
        inputs = self.encode(images, [self.render_prompt(p) for p in prompts])
        self._check_context(samples, inputs["attention_mask"].sum(dim=1).tolist(), max_new_tokens)
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        captured: list[torch.Tensor] = []
        ctx = self._capture_last_hidden(captured) if HIDDEN_STATES in keep else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            sequences = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
                suppress_tokens=[self.image_token_id],  # an image placeholder in the answer breaks re-forwards
            )
        hidden = torch.cat(captured, dim=1) if captured else None
        in_len = inputs["input_ids"].shape[1]
        return [
            self._generation(sample, images[i], inputs, i, sequences[i, in_len:].tolist(), hidden)
            for i, sample in enumerate(samples)
        ]

    def _generation(self, sample: Sample, image, inputs, i: int, generated: list[int], hidden) -> Generation:
        mask = inputs["attention_mask"][i].bool()
        n_pad = int((~mask).sum())
        prompt_ids = inputs["input_ids"][i][mask].tolist()
        answer_ids = self._trim_answer(generated)
        layout = self.layout_of(inputs, i, image)
        positions = self.image_positions(prompt_ids, layout)
        if len(positions) != layout.n_cells:
            raise ModelLoadError(
                f"model {self.name!r}: {len(positions)} image tokens in the prompt of sample {sample.id!r}, "
                f"but its image layout has {layout.n_cells} cells (grids {layout.grids})"
            )
        gen = Generation(
            sample_id=sample.id,
            text=self.tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
            prompt_ids=prompt_ids, answer_ids=answer_ids, image_positions=positions, layout=layout,
            pixel_values=self.sample_pixels(inputs, i), image_inputs=self.image_inputs(inputs, i),
        )
        if hidden is not None:
            length = len(prompt_ids) + len(answer_ids) - 1
            gen.hidden_states = hidden[i, n_pad : n_pad + length]
        return gen

    def image_positions(self, prompt_ids: Sequence[int], layout: ImageLayout) -> list[int]:
        """Prompt indices of the image tokens, in the cell order of ``layout`` (default: every
        image placeholder id; a family whose placeholders also stand for tokens showing no cell,
        as LLaVA-NeXT's row-end newlines, leaves those out)."""
        return [j for j, t in enumerate(prompt_ids) if t == self.image_token_id]

    def layout_of(self, inputs, i: int, image) -> ImageLayout:
        """The :class:`ImageLayout` of row ``i``'s processed image (``image``: the original)."""
        raise self._cannot("lay out its image tokens")

    def sample_pixels(self, inputs, i: int) -> torch.Tensor:
        """Row ``i``'s ``pixel_values`` with a leading batch dimension of 1."""
        return inputs["pixel_values"][i : i + 1]

    def image_inputs(self, inputs, i: int) -> Mapping[str, Any]:
        """Row ``i``'s other per-image model inputs the re-forwards need (``image_sizes``...)."""
        return {}

    def forward_inputs(self, generation: Generation, pixel_values: torch.Tensor) -> dict[str, Any]:
        """Model keyword inputs for ``B = len(pixel_values)`` copies of ``generation``'s image."""
        return {"pixel_values": pixel_values}

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
            if t in self.eos_ids or t == self.pad_id:
                return ids[:k] if k > 0 else ids[:1]
        return ids

    @contextlib.contextmanager
    def _capture_last_hidden(self, store: list):
        """Record the language model's final-norm output at every forward (removed on exit)."""
        handle = self.final_norm.register_forward_hook(lambda _m, _i, out: store.append(out.detach()))
        try:
            yield store
        finally:
            handle.remove()

    @property
    def language_model(self):
        return self.model.model.language_model

    @property
    def final_norm(self) -> torch.nn.Module:
        return self.language_model.norm

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

    def forward(self, generation: Generation, *, pixel_values=None, output_attentions: bool = False,
                logits_to_keep: int | None = None) -> ForwardOutput:
        """Teacher-forced forward over prompt + answer (see :meth:`VLM.forward`); sdpa attention
        silently returns no weights, which is refused here."""
        ids = self.input_ids(generation)
        pv = generation.pixel_values if pixel_values is None else pixel_values
        extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
        outputs = self.model(
            input_ids=ids.expand(pv.shape[0], -1), **self.forward_inputs(generation, pv),
            output_attentions=output_attentions, use_cache=False, **extra,
        )
        if not output_attentions:
            return ForwardOutput(outputs.logits)
        atts = outputs.attentions
        if not atts or any(a is None or a.numel() == 0 for a in atts):
            raise AttentionsUnavailableError(
                f"model {self.name!r} returned no attentions "
                f"(attn_implementation={self.attn_implementation!r}); load it with eager attention"
            )
        return ForwardOutput(outputs.logits, tuple(atts), self.vision_attentions(outputs))

    def vision_attentions(self, outputs) -> tuple | None:
        """The vision tower's attentions in a model output (see :class:`ForwardOutput`), or None."""
        vision = getattr(getattr(outputs, "image_outputs", None), "attentions", None)
        return tuple(vision) if vision else None

    def last_hidden_states(self, generation: Generation) -> torch.Tensor:
        """The final-norm output over prompt + answer minus its last position (what generate keeps)."""
        captured: list[torch.Tensor] = []
        with torch.no_grad(), self._capture_last_hidden(captured):
            self.forward(generation)
        return captured[0][0, :-1]

    # ------------------------------------------------------------------ hook points
    @property
    def image_feature_module(self) -> torch.nn.Module:
        """The module whose output (the image features) enters the language model."""
        raise self._cannot("name the module whose output enters its language model")

    @contextlib.contextmanager
    def image_features_as_leaf(self):
        """Within the block, :attr:`image_feature_module`'s output is detached and made a leaf that
        requires grad (see :meth:`VLM.image_features_as_leaf`)."""
        handle = self.image_feature_module.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True))
        try:
            yield
        finally:
            handle.remove()

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

    def randomized(self, seed: int) -> "HFAdapter":
        """Same class, config, processor, device, dtype and attention, weights from a seeded random init."""
        devices = [torch.device(self.device)] if str(self.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices), torch.device(self.device):
            torch.manual_seed(seed)
            model = type(self.model)._from_config(copy.deepcopy(self.model.config), attn_implementation=self.attn_implementation)
        model.to(device=self.device, dtype=self.dtype).eval()
        model.requires_grad_(False)
        model.generation_config = copy.deepcopy(self.model.generation_config)
        return type(self)(model, self.processor, self.identity.randomized(seed), self.device, self.dtype, self.attn_implementation)

    @property
    def image_std(self) -> tuple[float, ...] | None:
        std = getattr(getattr(self.processor, "image_processor", None), "image_std", None)
        return None if std is None else tuple(float(v) for v in std)
