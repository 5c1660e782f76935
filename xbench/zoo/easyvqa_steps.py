"""The model side of training ``tiny-llava-easyvqa`` (see :mod:`xbench.zoo.train_easyvqa`).

Auxiliary heads (:class:`AuxHead`), the teacher-forced QA loss, one optimiser step of a
phase (:func:`train_step`), the optimiser and schedule (:func:`make_optimizer`), and greedy
evaluation scored by the easyvqa task (:func:`evaluate`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xbench.tasks.easyvqa import COLOURS, SHAPES, EasyVQA
from xbench.zoo.easyvqa_data import EasyVQAData, augment, left_pad, pixel_values, qa_batch
from xbench.zoo.easyvqa_recipe import Recipe
from xbench.zoo.tiny import TinyLlavaShape, new_tiny_llava


class AuxHead(torch.nn.Module):
    """Auxiliary linear heads (discarded after training).

    ``loss``: shape and colour of the image from the mean image token. ``probe_loss``:
    from the language model's hidden state at the answer position, the colour and shape
    the question names, whether it is negated, and the image's shape and colour. The probe
    puts both sides of a yes/no comparison at the answer position early; without it a
    2-layer model can sit for thousands of steps at the yes/no prior (its attention is
    spread over 64 image tokens and the question words get little of it).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dim, len(SHAPES) + len(COLOURS))
        self.sizes = (len(COLOURS) + 1, len(SHAPES) + 1, 2, len(SHAPES), len(COLOURS))
        self.probe = torch.nn.Linear(dim, sum(self.sizes))

    def probe_loss(self, hidden: torch.Tensor, words: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``words``: :func:`question_labels` rows; ``labels``: the images' (shape, colour), -100 unknown."""
        targets = torch.cat([words, labels], dim=1)
        parts = torch.split(self.probe(hidden), self.sizes, dim=1)
        return sum(F.cross_entropy(p, targets[:, k], ignore_index=-100) for k, p in enumerate(parts))

    def loss(self, image_tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.linear(image_tokens.mean(dim=1))
        shape_loss = F.cross_entropy(logits[:, : len(SHAPES)], labels[:, 0], ignore_index=-100)
        colour_loss = F.cross_entropy(logits[:, len(SHAPES) :], labels[:, 1], ignore_index=-100)
        return shape_loss + colour_loss


def image_tokens(model, pv: torch.Tensor) -> torch.Tensor:
    """``[B, patches, d]``: the projector's output, the image tokens the language model reads."""
    cfg = model.config
    out = model.model.get_image_features(
        pixel_values=pv,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    )
    return torch.stack(list(out.pooler_output))


@contextmanager
def capture_image_tokens(model):
    """Record the projector's output during a full forward (for the auxiliary loss)."""
    store: list[torch.Tensor] = []
    handle = model.model.multi_modal_projector.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        yield store
    finally:
        handle.remove()


def new_model(shape: TinyLlavaShape, seed: int):
    """``(model, processor)``: the recipe's seeded random-init tiny LLaVA (:func:`new_tiny_llava`)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return new_tiny_llava(shape, seed)


def qa_outputs(model, data: EasyVQAData, idx: torch.Tensor, pv: torch.Tensor, pad_id: int, layer: int | None = None):
    """``(loss, hidden)``: mean cross-entropy of the answer tokens and </s> (teacher-forced), and with
    ``layer`` the hidden state after that many LM layers at each row's answer position (else None)."""
    ids, mask, pos, labels = qa_batch(data, idx, pad_id)
    out = model(input_ids=ids, pixel_values=pv, attention_mask=mask, position_ids=pos, use_cache=False,
                output_hidden_states=layer is not None)  # fmt: skip
    logits = out.logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
    if layer is None:
        return loss, None
    first = (labels != -100).int().argmax(dim=1)  # the position predicting the first answer token
    return loss, out.hidden_states[layer][torch.arange(len(idx)), first]


def qa_loss(model, data: EasyVQAData, idx: torch.Tensor, pv: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens and </s> (teacher-forced)."""
    return qa_outputs(model, data, idx, pv, pad_id)[0]


def train_step(model, head: AuxHead, optimizer, scheduler, data: EasyVQAData, processor, gen: torch.Generator,
               recipe: Recipe, phase: str) -> dict[str, float]:  # fmt: skip
    """One optimiser step of ``phase`` ("warmup": aux loss only; "qa": QA + aux_weight * aux)."""
    pad_id = processor.tokenizer.pad_token_id
    model.train()
    if phase == "warmup":
        rows = torch.randint(0, len(data.images), (recipe.warmup_batch,), generator=gen)
        pv = pixel_values(augment(data.images[rows], gen, recipe.max_shift, recipe.flip), processor)
        aux = head.loss(image_tokens(model, pv), data.labels[rows])
        loss, qa, probe = aux, None, None
    else:
        if data.q_weight is None:
            idx = torch.randint(0, len(data), (recipe.qa_batch,), generator=gen)
        else:
            idx = torch.multinomial(data.q_weight, recipe.qa_batch, replacement=True, generator=gen)
        rows = data.q_image[idx]
        pv = pixel_values(augment(data.images[rows], gen, recipe.max_shift, recipe.flip), processor)
        probe_layer = recipe.probe_layer if recipe.probe_weight > 0 else None
        with capture_image_tokens(model) as store:
            qa, hidden = qa_outputs(model, data, idx, pv, pad_id, probe_layer)
        aux = head.loss(store[0], data.labels[rows])
        loss, probe = qa + recipe.aux_weight * aux, None
        if hidden is not None:
            probe = head.probe_loss(hidden, data.q_words[idx], data.labels[rows])
            loss = loss + recipe.probe_weight * probe
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
    optimizer.step()
    scheduler.step()
    out = {"loss": loss.item(), "aux": aux.item()}
    if qa is not None:
        out["qa"] = qa.item()
    if probe is not None:
        out["probe"] = probe.item()
    return out


def make_optimizer(params, lr: float, steps: int, recipe: Recipe):
    from transformers import get_cosine_schedule_with_warmup

    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    return opt, get_cosine_schedule_with_warmup(opt, min(recipe.lr_warmup, max(steps // 10, 1)), max(steps, 1))


@torch.no_grad()
def greedy_answers(model, processor, data: EasyVQAData, idx: Sequence[int], max_new_tokens: int) -> list[str]:
    """Greedy answers as the adapter produces them (left padding, cut at the first </s>/<pad>)."""
    tok = processor.tokenizer
    stop = {tok.eos_token_id, tok.pad_token_id}
    model.eval()
    ids, mask, _ = left_pad([data.q_prompt[q] for q in idx], tok.pad_token_id)
    pv = pixel_values(data.images[data.q_image[list(idx)]], processor)
    outs: list[list[int]] = [[] for _ in idx]
    done = torch.zeros(len(idx), dtype=torch.bool)
    for _ in range(max_new_tokens):
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        logits = model(input_ids=ids, pixel_values=pv, attention_mask=mask, position_ids=pos, use_cache=False).logits
        last = logits[:, -1]
        last[:, model.config.image_token_id] = float("-inf")  # as the adapter's generate suppresses it
        nxt = last.argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                outs[i].append(t)
                done[i] = t in stop
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    texts = []
    for o in outs:
        cut = next((k for k, t in enumerate(o) if t in stop), len(o))
        texts.append(tok.decode(o[:cut], skip_special_tokens=True).strip())
    return texts


def evaluate(model, processor, data: EasyVQAData, batch: int = 256, progress: bool = False) -> dict:
    """Accuracy overall and by question kind, scored by the easyvqa task; plus ``n`` per kind."""
    from tqdm.auto import tqdm

    from xbench.api import Sample

    task = EasyVQA("test")
    correct: dict[str, list[float]] = {}
    order = list(range(len(data)))
    for start in tqdm(range(0, len(order), batch), desc="evaluate", disable=not progress, leave=False):
        idx = order[start : start + batch]
        for q, text in zip(idx, greedy_answers(model, processor, data, idx, EasyVQA.max_new_tokens)):
            s = Sample(id=str(q), question=data.questions[q], answers=[data.answers[q]])
            correct.setdefault(data.kinds[q], []).append(task.score(s, text)["accuracy"])
    every = [v for vs in correct.values() for v in vs]
    return {
        "accuracy": float(np.mean(every)),
        "n": len(every),
        "by_kind": {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in sorted(correct.items())},
    }
