"""``tiny-random-smolvlm``: a random-weight mirror of HuggingFaceTB/SmolVLM-Instruct (idefics3), built offline.

What is mirrored from the public checkpoint (its ``config.json``, ``preprocessor_config.json``,
``processor_config.json``, ``generation_config.json`` and chat template), with big dimensions shrunk:

* ``Idefics3ForConditionalGeneration``: a SigLIP-style tower (no CLS, ``gelu_pytorch_tanh``) whose
  ``image_size`` is the tile side (public 384, here 38) and ``patch_size`` does not divide it (public
  14: 27 patches cover 378 px, the last 6 px of a tile feed no patch; here 4: 9 patches cover 36 px);
  a pixel-shuffle connector with ``scale_factor`` 3 (``image_seq_len = (38 // 4)**2 / 3**2 = 9``, public
  ``(384 // 14)**2 / 9 = 81``); a Llama text model; ``tie_word_embeddings`` false.
* the image processor: ``do_image_splitting`` into tiles of ``max_image_size`` (= the tower's image
  size) after resizing the longest edge to ``4 x`` that (public 1536 = 4 x 384, here 152 = 4 x 38),
  LANCZOS resampling (``resample`` 1), rescale by 1/255, normalisation mean = std = 0.5, padding on.
  A 64 x 64 image therefore becomes 4 x 4 tiles plus the global image, as the public one does.
* the chat template renders one user turn with one image and the generation prompt as
  ``<|im_start|>User:<image>{text}<end_of_utterance>\\nAssistant:`` (the public checkpoint's rendering;
  the template text is xbench's own).
* special tokens: ``<|im_start|>`` (bos), ``<end_of_utterance>`` (eos), ``<|im_end|>`` (pad),
  ``<|endoftext|>`` (unk), ``<fake_token_around_image>``, ``<image>``, ``<global-img>`` and the 36
  tile markers ``<row_{r}_col_{c}>`` (r, c in 1..6) the processor names.

The tokenizer is xbench's word-level tokenizer over easy-vqa's vocabulary, so ids differ from the
public ones; everything else follows from the files written here. Deterministic: sorted
vocabulary, seeded initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xbench.hookspecs import hookimpl
from xbench.models import ModelSpec

BOS, EOS, PAD, UNK = "<|im_start|>", "<end_of_utterance>", "<|im_end|>", "<|endoftext|>"
IMAGE, FAKE, GLOBAL = "<image>", "<fake_token_around_image>", "<global-img>"
TILE_MARKERS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
SPECIAL_TOKENS = (FAKE, IMAGE, GLOBAL, *TILE_MARKERS)
#: words the chat template adds around an instruction
TEMPLATE_TEXT = "User: Assistant:"

#: xbench's own Jinja text; for one user turn [image, text] + generation prompt it renders exactly
#: what SmolVLM-Instruct's template renders: "<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant:"
CHAT_TEMPLATE = (
    "{{- '<|im_start|>' -}}"
    "{%- for turn in messages -%}"
    "{%- set parts = [{'type': 'text', 'text': turn['content']}] if turn['content'] is string else turn['content'] -%}"
    "{{- turn['role'] | capitalize -}}"
    "{{- ':' if parts and parts[0]['type'] == 'image' else ': ' -}}"
    "{%- for part in parts -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<end_of_utterance>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class SmolVLMShape:
    """Sizes of the mirror (public SmolVLM-Instruct values in the comments)."""

    tile: int = 38  # vision image_size = max_image_size.longest_edge (384)
    patch: int = 4  # vision patch_size (14)
    scale_factor: int = 3  # (3)
    tiles_per_edge: int = 4  # size.longest_edge = tiles_per_edge * tile (1536 = 4 * 384)
    vision_hidden: int = 32  # (1152)
    vision_intermediate: int = 64  # (4304)
    vision_layers: int = 2  # (27)
    vision_heads: int = 4  # (16)
    text_hidden: int = 64  # (2048)
    text_intermediate: int = 128  # (8192)
    text_layers: int = 2  # (24)
    text_heads: int = 4  # (32)
    text_kv_heads: int = 4  # (32)
    max_positions: int = 2048  # (16384)
    rope_theta: float = 273768.0  # (273768.0)

    @property
    def image_seq_len(self) -> int:
        """Tokens per tile after the pixel shuffle: ``(tile // patch)**2 / scale_factor**2``."""
        side = self.tile // self.patch
        if side % self.scale_factor:
            raise ValueError(f"{side} patches per tile side do not shuffle by scale factor {self.scale_factor}")
        return (side // self.scale_factor) ** 2


def build_tokenizer():
    """The word-level tokenizer with SmolVLM's special tokens."""
    from xbench.zoo.tiny import build_tokenizer as word_level, easyvqa_vocabulary

    return word_level(
        easyvqa_vocabulary(TEMPLATE_TEXT), special_tokens=SPECIAL_TOKENS, pad=PAD, unk=UNK, bos=BOS, eos=EOS
    )


def build_processor(tokenizer, shape: SmolVLMShape):
    """``Idefics3Processor`` over the PIL image processor (no torchvision needed)."""
    from transformers import Idefics3Processor
    from transformers.image_utils import PILImageResampling
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(
        do_convert_rgb=True,
        do_resize=True,
        size={"longest_edge": shape.tiles_per_edge * shape.tile},
        resample=PILImageResampling.LANCZOS,
        do_image_splitting=True,
        max_image_size={"longest_edge": shape.tile},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
    )
    return Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=shape.image_seq_len,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer, shape: SmolVLMShape):
    from transformers import Idefics3Config, Idefics3VisionConfig, LlamaConfig

    vision = Idefics3VisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.tile,
        patch_size=shape.patch,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    ids = tokenizer.convert_tokens_to_ids
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads,
        head_dim=shape.text_hidden // shape.text_heads,
        max_position_embeddings=shape.max_positions,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        tie_word_embeddings=False,
        pad_token_id=ids(PAD),
        bos_token_id=ids(BOS),
        eos_token_id=ids(EOS),
    )
    return Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=shape.scale_factor,
        image_token_id=ids(IMAGE),
        tie_word_embeddings=False,
        pad_token_id=ids(PAD),
    )


def new_tiny_smolvlm(shape: SmolVLMShape = SmolVLMShape(), seed: int = 0):
    """``(model, processor)`` with weights from torch's initialisation after ``manual_seed(seed)``."""
    import torch
    from transformers import Idefics3ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, shape)
    config = build_config(tokenizer, shape)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return Idefics3ForConditionalGeneration(config).eval(), processor


def build_tiny_smolvlm(out_dir: Path, shape: SmolVLMShape = SmolVLMShape(), seed: int = 0) -> None:
    """Write the mirror in the public checkpoint's layout: config.json, generation_config.json,
    model.safetensors, tokenizer files, preprocessor_config.json, processor_config.json and
    chat_template.json (the global random generator is left untouched)."""
    import torch
    from transformers import GenerationConfig

    from xbench.zoo.tiny import save_public_layout

    with torch.random.fork_rng(devices=[]):
        model, processor = new_tiny_smolvlm(shape, seed)
    tok = processor.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=tok.convert_tokens_to_ids(BOS),
        eos_token_id=tok.convert_tokens_to_ids(EOS),
        pad_token_id=tok.convert_tokens_to_ids(PAD),
    )
    save_public_layout(model, processor, out_dir)


def _build(out_dir: Path) -> None:
    build_tiny_smolvlm(out_dir, seed=0)


TINY_RANDOM_SMOLVLM = ModelSpec(
    name="tiny-random-smolvlm",
    description="random-weight mirror of SmolVLM-Instruct (idefics3: SigLIP 38px tiles/patch 4, pixel shuffle x3, "
    "Llama 2x64, 4x4 tiles + global at 64px), word-level easy-vqa tokenizer; for tests",
    build=_build,
)


@hookimpl
def xbench_register_models(registry):
    registry.register(TINY_RANDOM_SMOLVLM)
