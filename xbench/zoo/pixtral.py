"""``tiny-random-pixtral``: a tiny random-weight mirror of mistral-community/pixtral-12b, built offline
and deterministically.

Kept from the public checkpoint: ``model_type`` llava with a Pixtral tower (``patch_size`` 16, 2-D
axial RoPE with theta 10000, SiLU, ``head_dim`` = width / heads), a Mistral text model (rope theta
1e9, explicit ``head_dim``, grouped-query attention, no sliding window, 1,024,000 positions),
``image_token_index`` 10 (``[IMG]``: the Tekken control tokens keep their public ids 0..13 here),
``vision_feature_layer`` -1, ``vision_feature_select_strategy`` full, a GELU projector with biases;
the processor settings (PixtralImageProcessor: longest edge, patch 16, CLIP mean/std, bicubic,
padding in batches; PixtralProcessor: ``[IMG]`` / ``[IMG_BREAK]`` / ``[IMG_END]``, spatial merge 1)
and a chat template, written here, rendering what the public one renders (``<s>[INST]`` + the
chunks in order, an image as ``[IMG]`` + ``[/INST]``). Shrunk: widths, depths and the longest edge
(1024 -> 128 px, so at most 8 x 8 patches; easy-vqa's 64 x 64 images give 4 x 4, as the public
processor does, which never enlarges an image).

The directory is laid out as the public repository: ``config.json`` (the public, transformers-4.45
key layout), ``generation_config.json``, ``model.safetensors`` (or shards with an index),
``tokenizer.json`` / ``tokenizer_config.json`` (word-level here, built by
:func:`xbench.zoo.tiny.build_tokenizer`), ``preprocessor_config.json``, ``processor_config.json`` and
``chat_template.json``. Written by hand rather than by ``PixtralProcessor.save_pretrained``, which
cannot be imported without torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xbench.hookspecs import hookimpl
from xbench.models import ModelSpec

PUBLIC = "mistral-community/pixtral-12b"
#: the first Tekken control tokens, in the public vocabulary's order (ids 0..13 there and here)
CONTROL_TOKENS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
)  # fmt: skip
LONGEST_EDGE = 128  # public: 1024 (= vision_config.image_size)
PATCH = 16

#: renders what pixtral-12b's template renders: BOS, then per user turn ``[INST]`` (an optional system
#: message before the last one), its chunks in order (an image as ``[IMG]``, text as given) and
#: ``[/INST]``; an assistant turn as its text and EOS. ``[/INST]`` is the generation prompt.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set turns = messages[1:] %}{%- else %}{%- set turns = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in turns %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST]' }}{%- if loop.last and system is defined %}{{- system + '\n\n' }}{%- endif %}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for chunk in message['content'] %}"
    "{%- if chunk['type'] == 'image' %}{{- '[IMG]' }}"
    "{%- elif chunk['type'] == 'text' %}{{- chunk['text'] if 'text' in chunk else chunk['content'] }}"
    "{%- else %}{{- raise_exception('unsupported content type ' + chunk['type']) }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('only user and assistant turns after an optional system message') }}"
    "{%- endif %}{%- endfor %}"
)

#: the public preprocessor_config.json but for the longest edge
IMAGE_PROCESSOR = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "PixtralImageProcessor", "patch_size": {"height": PATCH, "width": PATCH},
    "processor_class": "PixtralProcessor", "resample": 3, "rescale_factor": 1 / 255,
    "size": {"longest_edge": LONGEST_EDGE},
}  # fmt: skip
PROCESSOR = {
    "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]", "image_token": "[IMG]",
    "patch_size": PATCH, "processor_class": "PixtralProcessor", "spatial_merge_size": 1,
}  # fmt: skip


def build_tokenizer():
    """Word-level tokenizer over easy-vqa's words with the Tekken control tokens at their public ids
    (``[IMG]`` = 10, ``[IMG_BREAK]`` = 12, ``[IMG_END]`` = 13); no pad token, as published."""
    from xbench.zoo.tiny import build_tokenizer as word_tokenizer
    from xbench.zoo.tiny import easyvqa_vocabulary

    tokenizer = word_tokenizer(easyvqa_vocabulary(), special_tokens=CONTROL_TOKENS[3:], pad=None, unk="<unk>",
                               bos="<s>", eos="</s>")  # fmt: skip
    ids = tokenizer.convert_tokens_to_ids(list(CONTROL_TOKENS))
    if ids != list(range(len(CONTROL_TOKENS))):
        raise AssertionError(f"control tokens got ids {ids}, not their public 0..{len(CONTROL_TOKENS) - 1}")
    return tokenizer


def config_dict(tokenizer) -> dict[str, Any]:
    """``config.json`` in the public key layout (dims shrunk, the public values in comments)."""
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "image_seq_length": 1,
        "image_token_index": tokenizer.convert_tokens_to_ids("[IMG]"),
        "model_type": "llava",
        "projector_hidden_act": "gelu",
        "text_config": {
            "head_dim": 16,  # 128
            "hidden_act": "silu",
            "hidden_size": 64,  # 5120
            "intermediate_size": 128,  # 14336
            "is_composition": True,
            "max_position_embeddings": 1024000,
            "model_type": "mistral",
            "num_attention_heads": 4,  # 32
            "num_hidden_layers": 2,  # 40
            "num_key_value_heads": 2,  # 8
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "vocab_size": len(tokenizer),  # 131072
        },
        "torch_dtype": "float32",  # bfloat16
        "vision_config": {
            "head_dim": 8,  # 64 (= hidden_size / num_attention_heads)
            "hidden_act": "silu",
            "hidden_size": 32,  # 1024
            "image_size": LONGEST_EDGE,  # 1024
            "intermediate_size": 64,  # 4096
            "is_composition": True,
            "model_type": "pixtral",
            "num_attention_heads": 4,  # 16
            "num_hidden_layers": 2,  # 24
            "patch_size": PATCH,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
        },
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    }


def build_pixtral(out_dir: Path, seed: int = 0, max_shard_size: str | int = "5GB") -> None:
    """Write tiny-random-pixtral (see the module docstring) with torch's initial weights after
    ``torch.manual_seed(seed)`` into ``out_dir``; a small ``max_shard_size`` shards the weights."""
    import torch
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    public = config_dict(tokenizer)
    config = LlavaConfig(**public)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    write_json(out_dir / "config.json", public)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_json(out_dir / "preprocessor_config.json", IMAGE_PROCESSOR)
    write_json(out_dir / "processor_config.json", PROCESSOR)
    write_json(out_dir / "chat_template.json", {"chat_template": CHAT_TEMPLATE})


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


TINY_RANDOM_PIXTRAL = ModelSpec(
    name="tiny-random-pixtral",
    description=f"random-weight LLaVA with a Pixtral tower mirroring {PUBLIC} (patch 16, longest edge "
    f"{LONGEST_EDGE}: per-image grids, [IMG]/[IMG_BREAK]/[IMG_END]; Mistral 2x64, its chat template); "
    "word-level easy-vqa tokenizer; for tests",
    build=build_pixtral,
)


@hookimpl
def xbench_register_models(registry):
    registry.register(TINY_RANDOM_PIXTRAL)
