"""The model zoo: named models usable as ``--model NAME``, registered like any plugin."""

from __future__ import annotations

from pathlib import Path

from xbench.hookspecs import hookimpl
from xbench.models import ModelSpec


def _build_tiny_random(out_dir: Path) -> None:
    from xbench.zoo.llava_variants import LLAVA15_TEMPLATE
    from xbench.zoo.tiny import build_tiny_llava

    build_tiny_llava(out_dir, seed=0, chat_template=LLAVA15_TEMPLATE, public_layout=True)


def _build_interleave(out_dir: Path) -> None:
    from xbench.zoo.llava_variants import build_interleave

    build_interleave(out_dir, seed=0)


def _shipped_easyvqa() -> Path:
    """The trained model's directory inside the installed package (``xbench/zoo/data/``)."""
    from importlib.resources import files

    return Path(str(files("xbench.zoo").joinpath("data", "tiny-llava-easyvqa")))


def _build_easyvqa_random(out_dir: Path) -> None:
    """tiny-llava-easyvqa's architecture and tokenizer with the seed-0 initial weights of its recipe."""
    from xbench.zoo.tiny import EASYVQA_SHAPE, build_tiny_llava

    build_tiny_llava(out_dir, shape=EASYVQA_SHAPE, seed=0)


TINY_RANDOM_LLAVA = ModelSpec(
    name="tiny-random-llava",
    description="mirrors llava-hf/llava-1.5-7b-hf (CLIP 64px/patch 8 with CLS, default strategy, Llama 2x64, "
    "its chat template), random weights, word-level easy-vqa tokenizer",
    build=_build_tiny_random,
    version="3",
)

TINY_RANDOM_LLAVA_INTERLEAVE = ModelSpec(
    name="tiny-random-llava-interleave",
    description="mirrors llava-hf/llava-interleave-qwen-0.5b-hf (SigLIP 64px/patch 14: 4x4 over 56px, no CLS, "
    "full strategy, Qwen2 2x64, ChatML template), random weights",
    build=_build_interleave,
    version="3",
)

TINY_LLAVA_EASYVQA = ModelSpec(
    name="tiny-llava-easyvqa",
    description="LLaVA (CLIP 64px/patch 8 2x128, Llama 2x128, 0.67M parameters) trained by xbench on easy-vqa; "
    "the default model",
    shipped=_shipped_easyvqa,
    trainer="xbench.zoo.train_easyvqa",
)

TINY_LLAVA_EASYVQA_RANDOM = ModelSpec(
    name="tiny-llava-easyvqa-random",
    description="tiny-llava-easyvqa's architecture with random (seed-0 initial) weights: the sanity control",
    build=_build_easyvqa_random,
)


@hookimpl
def xbench_register_models(registry):
    registry.register(TINY_RANDOM_LLAVA)
    registry.register(TINY_RANDOM_LLAVA_INTERLEAVE)
    registry.register(TINY_LLAVA_EASYVQA)
    registry.register(TINY_LLAVA_EASYVQA_RANDOM)
