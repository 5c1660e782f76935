"""The training recipe of ``tiny-llava-easyvqa``: every knob of a run (see :mod:`xbench.zoo.train_easyvqa`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from xbench.zoo.tiny import EASYVQA_SHAPE, TinyLlavaShape

MODEL_NAME = "tiny-llava-easyvqa"


@dataclass(frozen=True)
class Recipe:
    """Every knob of a training run; ``asdict`` goes into the model card."""

    seed: int = 0
    shape: TinyLlavaShape = EASYVQA_SHAPE
    warmup_steps: int = 800  # phase A
    warmup_lr: float = 2e-3
    warmup_batch: int = 64
    qa_steps: int = 2500  # phase B
    qa_lr: float = 1e-3
    qa_batch: int = 32
    lr_warmup: int = 50  # linear warm-up steps of each phase's cosine schedule
    weight_decay: float = 0.01
    aux_weight: float = 0.5
    probe_weight: float = 0.5  # question probe on the answer position after ``probe_layer`` LM layers
    probe_layer: int = 1
    balance: bool = True  # sample questions evenly over answer groups within each kind
    max_shift: int = 4  # pixels
    flip: bool = True
    grad_clip: float = 1.0
    eval_batch: int = 256
    threads: int = 1  # torch CPU threads; 1 is fastest on shared cores and fixes the reduction order
    train_images: int | None = None  # first N train images (None: all 4,000), for quick runs
    eval_limit: int | None = None  # first N test questions (None: the full split)

def recipe_dict(recipe: Recipe) -> dict:
    """``recipe`` as plain JSON-ready values (its shape as a nested dict), as the model card records it."""
    d = asdict(recipe)
    d["shape"] = asdict(recipe.shape)
    return d


def recipe_from_args(seed: int, warmup_steps: int | None, qa_steps: int | None, **overrides) -> Recipe:
    """The recipe of ``xbench zoo train``: the defaults with ``seed`` and every option given (not None)."""
    r = Recipe(seed=seed)
    if warmup_steps is not None:
        r = replace(r, warmup_steps=warmup_steps)
    if qa_steps is not None:
        r = replace(r, qa_steps=qa_steps)
    return replace(r, **{k: v for k, v in overrides.items() if v is not None})
