"""Tiny random mirrors of Google's PaliGemma and Gemma 3 vision-language checkpoints, built offline.

* ``tiny-random-paligemma`` mirrors ``google/paligemma-3b-pt-224``: a SigLIP tower without
  head and without CLS (224 px / patch 14 -> 16x16 = 256 image tokens there; 64 px / patch 8
  -> 8x8 = 64 here), a linear projector, a Gemma language model (multi-query attention,
  ``gelu_pytorch_tanh``, tied embeddings), ``<image>`` as the image token, 1024 ``<locNNNN>``
  and 128 ``<segNNN>`` tokens, no chat template: the processor builds the prefix
  ``<image> x image_seq_length + <bos> + text + "\\n"`` itself.
* ``tiny-random-gemma3`` mirrors ``google/gemma-3-4b-it``: a SigLIP tower whose patch grid
  (896 px / patch 14 = 64x64 there; 64 px / patch 4 = 16x16 here) is average-pooled by
  4x4 blocks into ``mm_tokens_per_image`` tokens (16x16 = 256 there; 4x4 = 16 here), an RMS
  norm + matrix projector, a Gemma 3 language model (sliding-window layers interleaved with
  full-attention layers, linear RoPE scaling on the global layers, ``<end_of_turn>`` as an
  extra end token), ``<start_of_image>`` / ``<image_soft_token>`` / ``<end_of_image>``, and a
  chat template that renders what the public one renders for user turns with images.
  Pan-and-scan stays off (``do_pan_and_scan`` null, as published).

Everything is deterministic: sorted vocabularies, weights from a seeded initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xbench.hookspecs import hookimpl
from xbench.models import ModelSpec

#: PaliGemma's location and segmentation tokens (its processor adds them to any tokenizer)
PALIGEMMA_EXTRA_TOKENS = tuple(f"<loc{i:04d}>" for i in range(1024)) + tuple(f"<seg{i:03d}>" for i in range(128))

#: the Gemma tokenizer's named tokens
GEMMA_NAMED = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}

#: Gemma 3's chat template (written for xbench): for user/assistant turns whose content is a
#: string or a list of ``image`` / ``text`` items it renders what google/gemma-3-4b-it's template
#: renders: ``<bos>`` once, each turn ``<start_of_turn>{user|model}\\n ... <end_of_turn>\\n`` with
#: an image as ``<start_of_image>`` and texts trimmed, a leading system turn's text + blank line
#: at the start of the first user turn, and ``<start_of_turn>model\\n`` as the generation prompt.
GEMMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set sys = messages[0]['content'] -%}"
    "{%- set ns.prefix = (sys if sys is string else sys[0]['text']) + '\\n\\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for turn in turns -%}"
    "{%- if (turn['role'] == 'user') != (loop.index0 is even) -%}"
    "{{- raise_exception('Gemma 3 turns must alternate user / assistant, starting with user') -}}"
    "{%- endif -%}"
    "{{- '<start_of_turn>' ~ ('model' if turn['role'] == 'assistant' else turn['role']) ~ '\\n' -}}"
    "{%- if loop.first -%}{{- ns.prefix -}}{%- endif -%}"
    "{%- if turn['content'] is string -%}{{- turn['content'] | trim -}}"
    "{%- else -%}{%- for part in turn['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<start_of_image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] | trim -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyPaliGemmaShape:
    """Sizes of the PaliGemma mirror (public values in comments)."""

    image_size: int = 64  # 224
    patch_size: int = 8  # 14
    vision_hidden: int = 64  # 1152
    vision_layers: int = 2  # 27
    vision_heads: int = 4  # 16
    text_hidden: int = 64  # 2048
    text_layers: int = 2  # 18
    text_heads: int = 4  # 8
    text_kv_heads: int = 1  # 1 (multi-query)
    head_dim: int = 16  # 256
    max_positions: int = 8192  # 8192


@dataclass(frozen=True)
class TinyGemma3Shape:
    """Sizes of the Gemma 3 mirror (public values in comments); ``pool`` is the side of the
    patch block averaged into one image token (``patches per side // tokens per side``)."""

    image_size: int = 64  # 896
    patch_size: int = 4  # 14
    pool: int = 4  # 4
    vision_hidden: int = 64  # 1152
    vision_layers: int = 2  # 27
    vision_heads: int = 4  # 16
    text_hidden: int = 64  # 2560
    text_layers: int = 2  # 34: five sliding-window layers, then one global layer
    text_heads: int = 4  # 8
    text_kv_heads: int = 2  # 4
    head_dim: int = 16  # 256
    sliding_window: int = 32  # 1024 (shorter than the tiny prompt, so the window is exercised)
    max_positions: int = 131072  # 131072

    @property
    def tokens_per_side(self) -> int:
        return self.image_size // self.patch_size // self.pool


# ---------------------------------------------------------------------------------------- tokenizers
#: both checkpoints' rescale and normalisation (mean = std = 0.5), as published
SIGLIP_NORMALISATION = dict(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])

def _gemma_tokenizer(extra_text: str, special_tokens: tuple[str, ...], plain_tokens: tuple[str, ...] = (), **named):
    """A word-level Gemma-style tokenizer: easy-vqa words plus ``extra_text``, the named
    tokens of :data:`GEMMA_NAMED`, ``special_tokens`` (never split; "\\n" among them keeps
    line breaks as tokens), ``plain_tokens`` added as ordinary tokens, and model-specific
    named tokens (``boi_token=...``) as attributes. Adds ``<bos>`` in front of every text,
    as Gemma's tokenizer does."""
    from transformers import PreTrainedTokenizerFast

    from xbench.zoo.tiny import build_tokenizer, easyvqa_vocabulary

    words = build_tokenizer(
        easyvqa_vocabulary(extra_text),
        special_tokens=special_tokens,
        **{k: GEMMA_NAMED[k] for k in ("pad", "unk", "bos", "eos")},
    )
    tok = PreTrainedTokenizerFast(  # the same vocabulary, with Gemma's <bos> rule and named tokens
        tokenizer_object=words.backend_tokenizer,
        **words.special_tokens_map,
        extra_special_tokens=list(words.extra_special_tokens),
        add_bos_token=True,
        padding_side="left",
        **named,
    )
    if plain_tokens:
        tok.add_tokens(list(plain_tokens))
    return tok


# ---------------------------------------------------------------------------------------- PaliGemma
def paligemma_processor(shape: TinyPaliGemmaShape = TinyPaliGemmaShape()):
    """SigLIP image processing as published (bicubic resize to a square without crop,
    rescale 1/255, normalise with mean = std = 0.5) and a tokenizer with ``<image>``, "\\n"
    and the location / segmentation tokens."""
    from transformers import PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = _gemma_tokenizer("", ("<image>", "\n"), PALIGEMMA_EXTRA_TOKENS)
    image_processor = SiglipImageProcessorPil(
        size={"height": shape.image_size, "width": shape.image_size},
        resample=3,
        **SIGLIP_NORMALISATION,
    )
    image_processor.image_seq_length = (shape.image_size // shape.patch_size) ** 2
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def paligemma_config(tokenizer, shape: TinyPaliGemmaShape = TinyPaliGemmaShape()):
    from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in GEMMA_NAMED.items()}
    vision = SiglipVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_hidden * 2,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        projection_dim=shape.text_hidden,
        vision_use_head=False,
    )
    text = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_hidden * 8,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads,
        head_dim=shape.head_dim,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=shape.max_positions,
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
    )
    return PaliGemmaConfig(  # derives text_config.num_image_tokens = (image_size / patch_size)^2
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vocab_size=len(tokenizer),
        projection_dim=shape.text_hidden,
        hidden_size=shape.text_hidden,
        tie_word_embeddings=True,
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
    )


def build_tiny_paligemma(out_dir: Path, shape: TinyPaliGemmaShape = TinyPaliGemmaShape(), seed: int = 0,
                         max_shard_size: str | int = "5GB") -> None:
    """Write ``tiny-random-paligemma`` (public file layout, no chat template; weights sharded
    beyond ``max_shard_size``) to ``out_dir``."""
    from transformers import PaliGemmaForConditionalGeneration

    processor = paligemma_processor(shape)
    config = paligemma_config(processor.tokenizer, shape)
    model = _seeded(PaliGemmaForConditionalGeneration, config, seed)
    _save(model, processor, out_dir, {"eos_token_id": config.text_config.eos_token_id}, max_shard_size)


# ---------------------------------------------------------------------------------------- Gemma 3
GEMMA3_TOKENS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>", "\n")


def gemma3_processor(shape: TinyGemma3Shape = TinyGemma3Shape()):
    """Gemma 3 image processing as published (bilinear resize to a square without crop,
    rescale 1/255, mean = std = 0.5, pan-and-scan left unset, i.e. off), the tokenizer with
    its named image tokens, and :data:`GEMMA3_CHAT_TEMPLATE`."""
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = _gemma_tokenizer(
        "user model", GEMMA3_TOKENS,
        boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>",
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": shape.image_size, "width": shape.image_size},
        resample=2,
        **SIGLIP_NORMALISATION,
    )
    image_processor.image_seq_length = shape.tokens_per_side**2  # published in preprocessor_config.json too
    return Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=shape.tokens_per_side**2,
    )


def gemma3_config(tokenizer, shape: TinyGemma3Shape = TinyGemma3Shape()):
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in GEMMA_NAMED.items()}
    end_ids = [ids["eos"], tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    vision = SiglipVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_hidden * 4,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        vision_use_head=False,
    )
    layer_types = ["sliding_attention"] * (shape.text_layers - 1) + ["full_attention"]
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_hidden * 4,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads,
        head_dim=shape.head_dim,
        query_pre_attn_scalar=shape.head_dim,
        sliding_window=shape.sliding_window,
        layer_types=layer_types,
        max_position_embeddings=shape.max_positions,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=end_ids,
    )
    return Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=shape.tokens_per_side**2,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=True,
        eos_token_id=end_ids,
    )


def build_tiny_gemma3(out_dir: Path, shape: TinyGemma3Shape = TinyGemma3Shape(), seed: int = 0,
                      max_shard_size: str | int = "5GB") -> None:
    """Write ``tiny-random-gemma3`` (public file layout, chat template in chat_template.json; weights
    sharded beyond ``max_shard_size``) to ``out_dir``."""
    from transformers import Gemma3ForConditionalGeneration

    from xbench.models.gemma3 import init_image_projection

    processor = gemma3_processor(shape)
    config = gemma3_config(processor.tokenizer, shape)
    model = _seeded(Gemma3ForConditionalGeneration, config, seed)
    init_image_projection(model, seed + 1)  # transformers draws it as zeros: no image would reach the text
    generation = {
        "eos_token_id": config.text_config.eos_token_id,
        "do_sample": True, "top_k": 64, "top_p": 0.95,  # as published; xbench decodes greedily anyway
        "cache_implementation": "hybrid",
    }
    _save(model, processor, out_dir, generation, max_shard_size)


# ---------------------------------------------------------------------------------------- shared
def _seeded(model_class, config, seed: int):
    """``model_class(config)`` in eval mode with weights from ``torch.manual_seed(seed)``
    (the global generator is restored afterwards)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


def _save(model, processor, out_dir: Path, generation: dict, max_shard_size: str | int) -> None:
    """The published file layout (:func:`xbench.zoo.tiny.save_public_layout`) with the checkpoint's
    ``generation_config.json`` (``generation``: its end tokens and sampling settings)."""
    from transformers import GenerationConfig

    from xbench.zoo.tiny import save_public_layout

    tok = processor.tokenizer
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, **generation)
    save_public_layout(model, processor, out_dir, max_shard_size)


TINY_RANDOM_PALIGEMMA = ModelSpec(
    name="tiny-random-paligemma",
    description="random-weight mirror of google/paligemma-3b-pt-224 (SigLIP 64px/patch 8 -> 8x8 tokens, "
    "Gemma 2x64, no chat template: image tokens + <bos> + prompt + newline); for tests",
    build=build_tiny_paligemma,
)

TINY_RANDOM_GEMMA3 = ModelSpec(
    name="tiny-random-gemma3",
    description="random-weight mirror of google/gemma-3-4b-it (SigLIP 64px/patch 4, 16x16 patches "
    "avg-pooled 4x4 -> 4x4 tokens, Gemma 3 2x64 with a sliding-window layer, chat template); for tests",
    build=build_tiny_gemma3,
)


@hookimpl
def xbench_register_models(registry):
    registry.register(TINY_RANDOM_PALIGEMMA)
    registry.register(TINY_RANDOM_GEMMA3)
