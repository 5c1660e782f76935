"""Tiny random-weight mirrors of public LLaVA-type checkpoints (``model_type`` llava), built offline.

Each keeps its checkpoint's layout-defining settings (tower kind, feature layer and strategy, the
processor's resize/crop, the image placeholder, the chat template's rendering) and shrinks only
the big dimensions (image size, widths, depths).

* ``tiny-random-llava`` mirrors llava-hf/llava-1.5-7b-hf: CLIP tower with CLS, ``default`` strategy
  (CLS dropped), resize-shortest-edge + centre crop, Llama, chat template rendering
  ``USER: <image>\\n{prompt} ASSISTANT:``.
* ``tiny-random-llava-interleave`` mirrors llava-hf/llava-interleave-qwen-0.5b-hf: SigLIP tower (no
  CLS) whose patches do not tile the image exactly (image 64, patch 14: a 4x4 grid over 56 px, as
  27 x 14 = 378 of 384 px), ``full`` strategy, feature layer -1, resize to a square without crop,
  Qwen2 text model, ChatML template.
"""

from __future__ import annotations

from pathlib import Path

#: renders one user turn as llava-1.5-7b-hf's template does: images first, then the text
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
#: renders one user turn as llava-interleave-qwen-0.5b-hf's ChatML template does
CHATML_IMAGE_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ '\n' + item['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIALS = ("<image>", "<|im_start|>", "<|im_end|>")


def build_interleave(out_dir: Path, seed: int = 0) -> None:
    """Write tiny-random-llava-interleave (see the module docstring) to ``out_dir``."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config, SiglipVisionConfig
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from xbench.zoo.tiny import build_tokenizer, easyvqa_vocabulary, save_public_layout

    tokenizer = build_tokenizer(
        easyvqa_vocabulary("user assistant"), CHATML_SPECIALS, pad="<|endoftext|>", unk="<unk>", bos=None,
        eos="<|im_end|>",
    )
    vision = SiglipVisionConfig(image_size=64, patch_size=14, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, vision_use_head=False)
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="full", projector_hidden_act="gelu")
    config._attn_implementation = "eager"
    image_processor = SiglipImageProcessorPil(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="full", num_additional_image_tokens=0,
                               image_token="<image>", chat_template=CHATML_IMAGE_TEMPLATE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    save_public_layout(model.eval(), processor, out_dir)
