"""The model zoo: named models usable as ``--model NAME``, registered like any plugin."""

from __future__ import annotations

from pathlib import Path

from xbench.hookspecs import hookimpl
from xbench.models import ModelSpec


def _build_tiny_random(out_dir: Path) -> None:
    from xbench.zoo.tiny import build_tiny_llava

    build_tiny_llava(out_dir, seed=0)


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
    description="random-weight LLaVA (CLIP 64px/patch 8, Llama 2x64), word-level easy-vqa tokenizer; for tests",
    build=_build_tiny_random,
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
    registry.register(TINY_LLAVA_EASYVQA)
    registry.register(TINY_LLAVA_EASYVQA_RANDOM)
