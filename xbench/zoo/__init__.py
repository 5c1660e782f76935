"""The model zoo: named models usable as ``--model NAME``, registered like any plugin."""

from __future__ import annotations

from pathlib import Path

from xbench.hookspecs import hookimpl
from xbench.models import ModelSpec


def _build_tiny_random(out_dir: Path) -> None:
    from xbench.zoo.tiny import build_tiny_llava

    build_tiny_llava(out_dir, seed=0)


TINY_RANDOM_LLAVA = ModelSpec(
    name="tiny-random-llava",
    description="random-weight LLaVA (CLIP 64px/patch 8, Llama 2x64), word-level easy-vqa tokenizer; for tests",
    build=_build_tiny_random,
)


@hookimpl
def xbench_register_models(registry):
    registry.register(TINY_RANDOM_LLAVA)
