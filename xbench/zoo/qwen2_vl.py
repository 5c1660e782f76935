"""Tiny Qwen2-VL and Qwen2.5-VL mirrors, built offline and deterministically.

``tiny-random-qwen2-vl`` mirrors Qwen/Qwen2-VL-2B-Instruct and ``tiny-random-qwen2.5-vl`` mirrors
Qwen/Qwen2.5-VL-3B-Instruct: the public ``config.json`` fields (patch 14, spatial merge 2, temporal
patch 2, M-RoPE with ``mrope_section`` scaled to the shrunk head dimension, the special-token ids,
rope theta, tied embeddings; for 2.5 the 112-pixel attention windows and the full-attention blocks at
the end of each quarter of the tower), the public processor settings except ``max_pixels`` (shrunk
to 64 merged tokens, so a COCO-sized image gives an 8x8-ish grid and easy-vqa's 64x64 images give 2x2,
exactly as the public processor does at that size) and a chat template, written here, that renders
what the public one renders for a user turn (its default system prompt included). Only the widths
and depths are small. The tokenizer is word-level (``xbench.zoo.tiny``) with the Qwen special tokens
(``<|im_start|>``, ``<|vision_start|>``, ``<|image_pad|>`` ...); ``<unk>`` is added because a
word-level vocabulary needs one (Qwen's byte-level BPE has none).

The directory is laid out as the public repositories are: ``config.json``, ``generation_config.json``,
``model.safetensors``, ``tokenizer.json`` + ``tokenizer_config.json``, ``preprocessor_config.json``
and ``chat_template.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from xbench.hookspecs import hookimpl
from xbench.models import ModelSpec

#: Qwen2's special tokens, in the public vocabulary's order (ids 151643.. there, 0.. here)
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
DEFAULT_SYSTEM = "You are a helpful assistant."

#: ChatML as the public Instruct checkpoints render it: a default system turn when the first message
#: is not one, each image as ``<|vision_start|><|image_pad|><|vision_end|>`` (the processor expands
#: the pad to one token per merged cell), each video likewise with ``<|video_pad|>``.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: the public preprocessor_config.json (Qwen2-VL-2B / Qwen2.5-VL-3B Instruct) but for max_pixels
PROCESSOR_FIELDS = {
    "min_pixels": 56 * 56,
    "max_pixels": 28 * 28 * 64,  # public: 12845056 (16384 merged tokens)
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
}

TEXT_HIDDEN, TEXT_HEADS, TEXT_KV_HEADS = 64, 4, 2  # public: 1536/12/2 (2-VL-2B), 2048/16/2 (2.5-VL-3B)
PUBLIC_MROPE_SECTION, PUBLIC_HEAD_DIM = (16, 24, 24), 128


def scaled_mrope_section(head_dim: int) -> list[int]:
    """The public ``mrope_section`` (t, h, w halves of a 128-wide head) scaled to ``head_dim``;
    it must sum to ``head_dim // 2``."""
    scale = head_dim / PUBLIC_HEAD_DIM
    section = [int(s * scale) for s in PUBLIC_MROPE_SECTION]
    if sum(section) != head_dim // 2:
        raise ValueError(f"mrope_section {section} does not cover half of a {head_dim}-wide head")
    return section


@dataclass(frozen=True)
class QwenMirror:
    """One mirrored checkpoint: its public name, model class and config fields (dims shrunk)."""

    name: str
    public: str
    model_type: str
    classes: Callable[[], tuple[type, type]]  # (config class, model class), imported when called
    processor_class: str
    max_positions: int
    vision: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)


def _qwen2_vl_classes():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    return Qwen2VLConfig, Qwen2VLForConditionalGeneration


def _qwen2_5_vl_classes():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration


QWEN2_VL = QwenMirror(
    name="tiny-random-qwen2-vl",
    public="Qwen/Qwen2-VL-2B-Instruct",
    model_type="qwen2_vl",
    classes=_qwen2_vl_classes,
    processor_class="Qwen2VLProcessor",
    max_positions=32768,
    # public: depth 32, embed_dim 1280, 16 heads; hidden_size is the merger's output (the LM width)
    vision={"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 4, "hidden_size": TEXT_HIDDEN},
    generation={"repetition_penalty": 1.0, "temperature": 0.01, "top_p": 0.001, "top_k": 1},
)
QWEN2_5_VL = QwenMirror(
    name="tiny-random-qwen2.5-vl",
    public="Qwen/Qwen2.5-VL-3B-Instruct",
    model_type="qwen2_5_vl",
    classes=_qwen2_5_vl_classes,
    processor_class="Qwen2_5_VLProcessor",
    max_positions=128000,
    # public: depth 32, hidden 1280, intermediate 3420, 16 heads, full attention in blocks 7, 15, 23, 31
    vision={
        "depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "hidden_act": "silu",
        "out_hidden_size": TEXT_HIDDEN, "window_size": 112, "fullatt_block_indexes": [1, 3],
        "tokens_per_second": 2,
    },  # fmt: skip
    generation={"repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1},
)
MIRRORS = (QWEN2_VL, QWEN2_5_VL)


def build_tokenizer():
    """The word-level tokenizer of the mirrors: easy-vqa and template words plus Qwen's specials."""
    from xbench.zoo.tiny import build_tokenizer as word_tokenizer
    from xbench.zoo.tiny import easyvqa_vocabulary

    words = easyvqa_vocabulary("system user assistant " + DEFAULT_SYSTEM)
    return word_tokenizer(
        words, special_tokens=QWEN_SPECIAL_TOKENS, pad="<|endoftext|>", unk="<unk>", bos=None, eos="<|im_end|>"
    )


def config_dict(mirror: QwenMirror, tokenizer) -> dict[str, Any]:
    """``config.json`` of ``mirror`` in the public (flat) layout, with this tokenizer's ids."""
    ids = tokenizer.convert_tokens_to_ids
    vision = {"in_chans": 3, "patch_size": 14, "spatial_patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2, **mirror.vision}  # fmt: skip
    return {
        "architectures": [mirror.classes()[1].__name__],
        "model_type": mirror.model_type,
        "attention_dropout": 0.0,
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
        "vision_token_id": ids("<|vision_pad|>"),
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "hidden_act": "silu",
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "initializer_range": 0.02,
        "max_position_embeddings": mirror.max_positions,
        "max_window_layers": 2,
        "num_attention_heads": TEXT_HEADS,
        "num_hidden_layers": 2,
        "num_key_value_heads": TEXT_KV_HEADS,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": scaled_mrope_section(TEXT_HIDDEN // TEXT_HEADS)},
        "sliding_window": mirror.max_positions,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": len(tokenizer),
        "vision_config": vision,
    }


def build_mirror(mirror: QwenMirror, out_dir: Path, seed: int = 0, max_shard_size: str | int = "5GB") -> None:
    """Write ``mirror`` with torch's seeded initial weights into ``out_dir`` (public file layout;
    a small ``max_shard_size`` shards the weights with a ``model.safetensors.index.json``)."""
    import torch
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config_class, model_class = mirror.classes()
    public_config = config_dict(mirror, tokenizer)
    config = config_class(**public_config)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    write_json(out_dir / "config.json", public_config)  # the public, flat layout (transformers reads both)
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    generation = GenerationConfig(bos_token_id=pad, pad_token_id=pad, eos_token_id=end_ids, do_sample=True,
                                  **mirror.generation)  # fmt: skip
    generation.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_json(out_dir / "preprocessor_config.json", {**PROCESSOR_FIELDS, "processor_class": mirror.processor_class})
    write_json(out_dir / "chat_template.json", {"chat_template": CHAT_TEMPLATE})


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _builder(mirror: QwenMirror) -> Callable[[Path], None]:
    return lambda out_dir: build_mirror(mirror, out_dir)


SPECS = tuple(
    ModelSpec(
        name=m.name,
        description=f"random-weight {m.model_type} mirroring {m.public} (LM 2x{TEXT_HIDDEN}, patch 14, merge 2); "
        "word-level easy-vqa tokenizer; for tests",
        build=_builder(m),
    )
    for m in MIRRORS
)


@hookimpl
def xbench_register_models(registry):
    for spec in SPECS:
        registry.register(spec)
