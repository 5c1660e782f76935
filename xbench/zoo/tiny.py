"""Tiny LLaVA-architecture models built offline: word-level tokenizer, CLIP tower, Llama LM.

Everything is deterministic: the vocabulary is sorted, weights come from a seeded init.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
#: words of LLaVA-1.5's templates and instructions used by xbench's tasks
TEMPLATE_TEXT = (
    "USER: ASSISTANT: Answer the question using a single word or phrase. "
    "Answer the question with yes or no. Please answer this question with one word."
)
_WORD = re.compile(r"\w+|[^\w\s]+")


def words_of(text: str) -> list[str]:
    """Split text the way the tokenizer's pre-tokenizer does (lower-cased)."""
    return _WORD.findall(text.lower())


def easyvqa_vocabulary(extra_text: str = "") -> list[str]:
    """Every word of easy-vqa's questions and answers, the prompt templates and ``extra_text``
    (a chat template's words, say), sorted."""
    import easy_vqa

    words: set[str] = set(words_of(TEMPLATE_TEXT + " " + extra_text))
    for questions, answers, _ in (easy_vqa.get_train_questions(), easy_vqa.get_test_questions()):
        for q in questions:
            words.update(words_of(q))
    for a in easy_vqa.get_answers():
        words.update(words_of(a))
    return sorted(words)


def build_tokenizer(
    words: list[str], special_tokens: tuple[str, ...] = ("<image>",), *, pad: str = "<pad>", unk: str = "<unk>",
    bos: str | None = "<s>", eos: str = "</s>",
):
    """A word-level fast tokenizer (lower-casing, whitespace/punctuation split) over ``words``.

    ``pad``, ``unk``, ``bos``, ``eos`` and ``special_tokens`` come first in the vocabulary, in that
    order, and are never split or lower-cased (a chat template's markers, image placeholders)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    named = [t for t in (pad, unk, bos, eos) if t is not None]
    specials = list(dict.fromkeys(named + list(special_tokens)))
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=pad, unk_token=unk, bos_token=bos, eos_token=eos)
    extra = [t for t in special_tokens if t not in named]
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    tok.padding_side = "left"
    return tok


@dataclass(frozen=True)
class TinyLlavaShape:
    """Sizes of a tiny LLaVA. ``vision_feature_layer=-1``: a 2-layer tower has no useful -2."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_positions: int = 256


#: the architecture of ``tiny-llava-easyvqa`` (0.67M parameters) and of its random control
EASYVQA_SHAPE = TinyLlavaShape(vision_hidden=128, text_hidden=128)


def build_processor(tokenizer, shape: TinyLlavaShape, chat_template: str | None = None):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": shape.image_size}, crop_size={"height": shape.image_size, "width": shape.image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=chat_template,
    )


def build_config(tokenizer, shape: TinyLlavaShape):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_hidden * 2,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        projection_dim=shape.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_hidden * 2,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_heads,
        max_position_embeddings=shape.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )


def new_tiny_llava(shape: TinyLlavaShape, seed: int, chat_template: str | None = None):
    """``(model, processor)``: a tiny LLaVA with eager attention whose weights are torch's
    initialisation after ``torch.manual_seed(seed)`` (the global generator is left there)."""
    import torch
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer(easyvqa_vocabulary())
    processor = build_processor(tokenizer, shape, chat_template)
    config = build_config(tokenizer, shape)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config), processor


def build_tiny_llava(out_dir: Path, shape: TinyLlavaShape = TinyLlavaShape(), seed: int = 0,
                     chat_template: str | None = None, public_layout: bool = False, max_shard_size: str | int = "5GB"):
    """Write a randomly initialised tiny LLaVA (weights, tokenizer, processor with ``chat_template``)
    to ``out_dir`` (in the hub's file layout with ``public_layout``); return the model."""
    import torch

    with torch.random.fork_rng(devices=[]):
        model, processor = new_tiny_llava(shape, seed, chat_template)
    (save_public_layout if public_layout else save_model)(model.eval(), processor, out_dir, max_shard_size)
    return model


def save_model(model, processor, out_dir: Path, max_shard_size: str | int = "5GB") -> None:
    """Save weights as safetensors plus tokenizer and processor in Hugging Face layout (transformers 5's
    single ``processor_config.json``; :func:`save_public_layout` writes the layout of the hub's repos)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    processor.save_pretrained(out_dir)


def save_public_layout(model, processor, out_dir: Path, max_shard_size: str | int = "5GB") -> None:
    """Save as the public llava-hf repositories lay their files out: weights (sharded with an index
    beyond ``max_shard_size``), tokenizer files, ``preprocessor_config.json`` (the image processor),
    ``processor_config.json`` (the processor's own settings) and ``chat_template.json``."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    processor.tokenizer.save_pretrained(out_dir)
    image = processor.image_processor.to_dict()
    image["image_processor_type"] = type(processor.image_processor).__name__.removesuffix("Pil")
    image["processor_class"] = type(processor).__name__
    own = {k: v for k, v in processor.to_dict().items() if k not in ("image_processor", "tokenizer", "chat_template")}
    own["processor_class"] = type(processor).__name__
    write = lambda name, data: (out_dir / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")  # noqa: E731
    write("preprocessor_config.json", image)
    write("processor_config.json", own)
    if processor.chat_template:
        write("chat_template.json", {"chat_template": processor.chat_template})
    for stale in ("chat_template.jinja",):
        (out_dir / stale).unlink(missing_ok=True)
