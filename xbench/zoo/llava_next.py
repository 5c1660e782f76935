"""Tiny random mirrors of two public "anyres" checkpoints, built offline and deterministically.

* ``tiny-random-llava-next`` mirrors ``llava-hf/llava-v1.6-mistral-7b-hf``: CLIP tower (CLS token,
  ``vision_feature_layer=-2``, ``default`` strategy), GELU projector, Mistral language model, the
  five pinpoints ``[[S, 2S], [2S, S], [2S, 2S], [3S, S], [S, 3S]]`` of ``S = 336`` scaled to
  ``S = 64``, patch 14 -> 8 (both tile their crop exactly), shortest-edge resize + centre crop,
  the Mistral ``[INST] <image>\\n{prompt} [/INST]`` format with a BOS token; weights sharded
  with an index as the public repository has them.
* ``tiny-random-llava-onevision`` mirrors ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``: SigLIP
  tower (no CLS, ``vision_feature_layer=-1``, ``full`` strategy, no head), Qwen2 language model
  with tied embeddings, the 36 pinpoints ``S x {1..6} by S x {1..6}``, ``anyres_max_9``, a
  squashing resize to ``S x S``, mean/std 0.5, and ChatML with ``<image>`` after the role. The
  public crop of 384 px is not a multiple of its 14 px patch (27 patches cover 378 px); the mirror
  keeps that: 66 px crops, 8 px patches, 8 patches covering 64 px.

Only the big dimensions shrink (widths, layer counts, crop size); every other config and
processor field is the public checkpoint's. The vocabulary is easy-vqa's words plus the
templates' (word-level, :func:`xbench.zoo.tiny.build_tokenizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xbench.hookspecs import hookimpl
from xbench.models import ModelSpec

#: renders ``[INST] <image>\n{prompt} [/INST]`` for one user turn (BOS comes from the tokenizer)
NEXT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '[INST] ' -}}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{{- ' [/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- ' ' + part['text'] + '</s>' -}}{%- endfor -%}"
    "{%- else -%}{{- raise_exception('only user and assistant turns are supported') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

#: renders ``<|im_start|>user <image>\n{prompt}<|im_end|><|im_start|>assistant\n``
ONEVISION_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + ' ' -}}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'video' -%}{{- '<video>' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- '\n' + part['text'] -}}{%- endfor -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TinyShape:
    """The shrunk dimensions of a mirror."""

    crop: int
    patch: int
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 1
    max_positions: int = 2048


NEXT_SHAPE = TinyShape(crop=64, patch=8, vision_layers=3)  # 3 layers: feature layer -2 reads 2 of them
ONEVISION_SHAPE = TinyShape(crop=66, patch=8)


def next_pinpoints(crop: int) -> list[list[int]]:
    """llava-v1.6's pinpoints for crop side ``crop`` (336 publicly)."""
    return [[crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop], [3 * crop, crop], [crop, 3 * crop]]


def onevision_pinpoints(crop: int) -> list[list[int]]:
    """OneVision's 6 x 6 pinpoints for crop side ``crop`` (384 publicly)."""
    return [[crop * i, crop * j] for i in range(1, 7) for j in range(1, 7)]


# ---------------------------------------------------------------------- LLaVA-NeXT (Mistral)
def _next_tokenizer():
    from tokenizers import processors

    from xbench.zoo.tiny import build_tokenizer, easyvqa_vocabulary

    tok = build_tokenizer(easyvqa_vocabulary("[INST] [/INST]"), ("<image>",))
    # Mistral's tokenizer prepends BOS to every text, the chat template does not write it
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def new_tiny_llava_next(seed: int = 0, shape: TinyShape = NEXT_SHAPE):
    """``(model, processor)`` of the llava-v1.6-mistral mirror, weights from ``torch.manual_seed(seed)``."""
    import torch
    from transformers import (
        CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor, MistralConfig,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = _next_tokenizer()
    pinpoints = next_pinpoints(shape.crop)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": shape.crop}, crop_size={"height": shape.crop, "width": shape.crop},
        image_grid_pinpoints=pinpoints, do_pad=True, do_center_crop=True, resample=3,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=shape.patch,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
        chat_template=NEXT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        image_size=shape.crop, patch_size=shape.patch, hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_hidden * 4, num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads, projection_dim=shape.vision_hidden, hidden_act="quick_gelu",
    )
    text = MistralConfig(
        vocab_size=len(tok), hidden_size=shape.text_hidden, intermediate_size=shape.text_hidden * 3,
        num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads, max_position_embeddings=shape.max_positions,
        rms_norm_eps=1e-5, rope_theta=1_000_000.0, sliding_window=None, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_grid_pinpoints=pinpoints, tie_word_embeddings=False, image_seq_length=(shape.crop // shape.patch) ** 2,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlavaNextForConditionalGeneration(config).eval(), processor


# ---------------------------------------------------------------------- LLaVA-OneVision (Qwen2)
def _onevision_tokenizer():
    from xbench.zoo.tiny import build_tokenizer, easyvqa_vocabulary

    specials = ("<|im_start|>", "<|im_end|>", "<image>", "<video>")
    return build_tokenizer(
        easyvqa_vocabulary("user assistant system"), specials, pad="<|endoftext|>", unk="<unk>", bos=None,
        eos="<|im_end|>",
    )


def new_tiny_llava_onevision(seed: int = 0, shape: TinyShape = ONEVISION_SHAPE):
    """``(model, processor)`` of the llava-onevision-qwen2-0.5b-ov mirror (image-only processor:
    its video processor needs torchvision), weights from ``torch.manual_seed(seed)``."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from xbench.models.llava_onevision import image_only_processor_class

    tok = _onevision_tokenizer()
    pinpoints = onevision_pinpoints(shape.crop)
    side = shape.crop // shape.patch
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": shape.crop, "width": shape.crop}, image_grid_pinpoints=pinpoints, do_pad=True,
        resample=3, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = image_only_processor_class()(
        image_processor=image_processor, tokenizer=tok, num_image_tokens=side * side,
        vision_feature_select_strategy="full", chat_template=ONEVISION_TEMPLATE, image_token="<image>",
        video_token="<video>", vision_aspect_ratio="anyres_max_9",
    )
    vision = SiglipVisionConfig(
        image_size=shape.crop, patch_size=shape.patch, hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_hidden * 4, num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads, vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tok), hidden_size=shape.text_hidden, intermediate_size=shape.text_hidden * 3,
        num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads, max_position_embeddings=shape.max_positions,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True, use_sliding_window=False,
        pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=tok.eos_token_id,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"), projector_hidden_act="gelu",
        vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=pinpoints, tie_word_embeddings=True,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlavaOnevisionForConditionalGeneration(config).eval(), processor


# ---------------------------------------------------------------------- writing
def save_checkpoint(model, processor, out_dir: Path, *, max_shard_size: str | None = None,
                    processor_class: str | None = None) -> None:
    """Write the public repositories' layout: ``config.json`` and safetensors weights (sharded with
    ``model.safetensors.index.json`` when ``max_shard_size``), the tokenizer files,
    ``preprocessor_config.json`` (the image processor), ``processor_config.json`` (the processor's
    own fields, ``processor_class`` = ``processor_class`` or the processor's class) and the legacy
    ``chat_template.json``."""
    import json

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out_dir, safe_serialization=True, **extra)
    processor.tokenizer.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    own = {k: v for k, v in processor.to_dict().items() if k not in _SUB_PROCESSORS}
    own["processor_class"] = processor_class or type(processor).__name__
    (out_dir / "processor_config.json").write_text(json.dumps(own, indent=2, sort_keys=True) + "\n")
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": processor.chat_template}, indent=2) + "\n")


_SUB_PROCESSORS = ("image_processor", "tokenizer", "video_processor", "chat_template", "processor_class")


def build_tiny_llava_next(out_dir: Path, seed: int = 0) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        model, processor = new_tiny_llava_next(seed)
    save_checkpoint(model, processor, out_dir, max_shard_size="300KB")  # the public one has 4 shards


def build_tiny_llava_onevision(out_dir: Path, seed: int = 0) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        model, processor = new_tiny_llava_onevision(seed)
    save_checkpoint(model, processor, out_dir, processor_class="LlavaOnevisionProcessor")


TINY_RANDOM_LLAVA_NEXT = ModelSpec(
    name="tiny-random-llava-next",
    description="random-weight mirror of llava-hf/llava-v1.6-mistral-7b-hf (CLIP 64px/patch 8 3x64, "
    "Mistral 2x64, anyres pinpoints scaled to 64 px, [INST] template); for tests",
    build=build_tiny_llava_next,
)

TINY_RANDOM_LLAVA_ONEVISION = ModelSpec(
    name="tiny-random-llava-onevision",
    description="random-weight mirror of llava-hf/llava-onevision-qwen2-0.5b-ov-hf (SigLIP 66px/patch 8 2x64, "
    "Qwen2 2x64, 6x6 pinpoints scaled to 66 px, anyres_max_9, ChatML template); for tests",
    build=build_tiny_llava_onevision,
)


@hookimpl
def xbench_register_models(registry):
    registry.register(TINY_RANDOM_LLAVA_NEXT)
    registry.register(TINY_RANDOM_LLAVA_ONEVISION)
