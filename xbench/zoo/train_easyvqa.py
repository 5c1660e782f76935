"""Train ``tiny-llava-easyvqa``: a small LLaVA that answers easy-vqa questions.

Recipe (deterministic for a seed on one machine):

A. *warm-up*: the vision tower + projector learn to classify the image's shape and
   colour with a small linear head on the mean of the image tokens (the projector's
   output, i.e. what the language model reads);
B. *QA*: the whole model learns teacher-forced cross-entropy on ``answer </s>`` after
   the exact prompt xbench's LLaVA adapter builds (``USER: <image>\\n{question}\\n{instruction}
   ASSISTANT:``), with the warm-up loss kept at ``aux_weight``. Questions are drawn evenly
   over answer groups within each kind, and a linear probe at the answer position (after
   the first LM layer) predicts what the question names and the image's shape and colour:
   together they get the 2-layer model past the yes/no prior (see :class:`AuxHead`).

Images are augmented with horizontal flips and shifts (edge-replicated) in both phases.
Evaluation is greedy decoding on the full easy-vqa test split, left-padded with position
ids from the attention mask, as ``model.generate`` does in the adapter; answers are cut
at the first end/pad token and scored by the easyvqa task's own ``score``.

This module runs the whole training (:func:`train`, :func:`train_and_save`) and re-exports
the names of its parts: :mod:`xbench.zoo.easyvqa_recipe` (the knobs),
:mod:`xbench.zoo.easyvqa_data` (tensors, labels, augmentation, batches),
:mod:`xbench.zoo.easyvqa_steps` (auxiliary heads, one step, optimiser, evaluation) and
:mod:`xbench.zoo.easyvqa_card` (the model card).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from xbench import provenance
from xbench.tasks.easyvqa import COLOURS, SHAPES  # noqa: F401 (re-exported)
from xbench.zoo.easyvqa_card import CARD, model_card, reproduce_command  # noqa: F401 (re-exported)
from xbench.zoo.easyvqa_data import (  # noqa: F401 (re-exported: the trainer's public names)
    EasyVQAData, answer_group, augment, balanced_weights, image_labels, left_pad, load_split, pixel_values, qa_batch,
    question_labels,
)
from xbench.zoo.easyvqa_recipe import MODEL_NAME, Recipe, recipe_dict, recipe_from_args  # noqa: F401
from xbench.zoo.easyvqa_steps import (  # noqa: F401 (re-exported)
    AuxHead, capture_image_tokens, evaluate, greedy_answers, image_tokens, make_optimizer, new_model, qa_loss,
    qa_outputs, train_step,
)
from xbench.zoo.tiny import save_model

TRAINING_JSON = "training.json"


# --------------------------------------------------------------------------- the whole run
@contextmanager
def deterministic(threads: int):
    """``torch.use_deterministic_algorithms(True)`` and ``threads`` CPU threads for the block (restored after)."""
    before, before_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.set_num_threads(before_threads)


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {provenance.cpu_model()}, {os.cpu_count()} logical cores visible, {torch.get_num_threads()} torch thread(s)"


def train(recipe: Recipe = Recipe(), progress: bool = True, evaluate_test: bool = True):
    """Train per ``recipe``; return ``(model, processor, info)`` where ``info`` has losses, wall times, accuracy."""
    from tqdm.auto import tqdm

    t0, cpu0 = time.perf_counter(), time.process_time()
    with deterministic(recipe.threads), torch.random.fork_rng(devices=[]):
        model, processor = new_model(recipe.shape, recipe.seed)
        head = AuxHead(recipe.shape.text_hidden)  # seeded right after the model
        data = load_split("train", processor, max_images=recipe.train_images)
        if recipe.balance:
            data.q_weight = balanced_weights(data)
        gen = torch.Generator().manual_seed(recipe.seed)
        t_data = time.perf_counter()
        losses: dict[str, list[float]] = {"warmup": [], "qa": []}
        total = recipe.warmup_steps + recipe.qa_steps
        with tqdm(total=total, desc=f"train {MODEL_NAME}", unit="step", disable=not progress) as bar:
            phases = (
                ("warmup", recipe.warmup_steps, recipe.warmup_lr,
                 list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())),
                ("qa", recipe.qa_steps, recipe.qa_lr, list(model.parameters())),
            )  # fmt: skip
            for phase, steps, lr, params in phases:
                if steps <= 0:
                    continue
                opt, sched = make_optimizer(params + list(head.parameters()), lr, steps, recipe)
                for _ in range(steps):
                    out = train_step(model, head, opt, sched, data, processor, gen, recipe, phase)
                    losses[phase].append(out["loss"])
                    bar.update(1)
                    bar.set_postfix(phase=phase, **{k: f"{v:.3f}" for k, v in out.items()})
        model.eval()
        t_train = time.perf_counter()
        info = {
            "recipe": recipe_dict(recipe),
            "parameters": sum(p.numel() for p in model.parameters()),
            "loss": {k: _loss_summary(v) for k, v in losses.items()},
            "wall_s": {"data": t_data - t0, "train": t_train - t_data},
            "hardware": hardware(),
            "torch": torch.__version__,
            "xbench_git_sha": provenance.git_sha(),
        }
        if evaluate_test:
            test = load_split("test", processor, max_questions=recipe.eval_limit)
            info["test"] = evaluate(model, processor, test, recipe.eval_batch, progress)
            info["wall_s"]["evaluate"] = time.perf_counter() - t_train
    info["wall_s"]["total"] = time.perf_counter() - t0
    info["cpu_s"] = time.process_time() - cpu0
    return model, processor, info


def _loss_summary(values: list[float]) -> dict:
    if not values:
        return {}
    k = max(len(values) // 20, 1)
    return {"first": float(np.mean(values[:k])), "last": float(np.mean(values[-k:])), "steps": len(values)}


def train_and_save(out_dir: Path, recipe: Recipe = Recipe(), progress: bool = True, command: str | None = None) -> dict:
    """Train, then write the model (safetensors, tokenizer, processor), ``training.json`` and a model card."""
    model, processor, info = train(recipe, progress=progress)
    out_dir = Path(out_dir)
    save_model(model, processor, out_dir)
    info["command"] = command or f"xbench zoo train {MODEL_NAME} --out {out_dir} --seed {recipe.seed}"
    (out_dir / TRAINING_JSON).write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / CARD).write_text(model_card(info))
    return info
