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
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xbench import provenance
from xbench.tasks.easyvqa import COLOURS, SHAPES, EasyVQA
from xbench.zoo.tiny import (
    EASYVQA_SHAPE,
    TinyLlavaShape,
    new_tiny_llava,
    save_model,
)

MODEL_NAME = "tiny-llava-easyvqa"
CARD = "README.md"
TRAINING_JSON = "training.json"


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


# --------------------------------------------------------------------------- data
@dataclass
class EasyVQAData:
    """One easy-vqa split as tensors: images, per-question prompt/answer ids, image labels.

    ``labels[:, 0]``/``labels[:, 1]``: shape/colour index of each image, -100 where
    no question of the image tells it (about 4% / 7% of images).
    """

    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # long [N, 2]
    q_image: torch.Tensor  # long [Q] -> row of images
    q_prompt: list[list[int]]  # prompt ids (image tokens expanded), per question
    q_answer: list[list[int]]  # answer ids followed by </s>
    questions: list[str]
    answers: list[str]
    kinds: list[str]
    q_weight: torch.Tensor | None = None  # sampling weights of the questions (None: uniform)
    q_words: torch.Tensor | None = None  # long [Q, 3]: see :func:`question_labels`

    def __len__(self) -> int:
        return len(self.questions)


def image_labels(
    questions: Sequence[str], answers: Sequence[str], image_ids: Sequence[int]
) -> dict[int, tuple[int, int]]:
    """Shape and colour of each image, inferred from its questions and answers.

    A "what" answer names the value; a yes/no answer about a named shape or colour says
    whether it is present (negated questions contain "not"/"no"); excluding all but one
    value also decides it. Unknown stays -100.
    """
    pos: dict[int, set[str]] = {}
    neg: dict[int, set[str]] = {}
    for q, a, i in zip(questions, answers, image_ids):
        words = set(q.lower().rstrip("?").split())
        named = words & (set(SHAPES) | set(COLOURS))
        if a in ("yes", "no"):
            present = (a == "yes") != bool(words & {"not", "no"})
            (pos if present else neg).setdefault(i, set()).update(named)
        else:
            pos.setdefault(i, set()).update(named | {a})
    out = {}
    for i in set(image_ids):
        p, n = pos.get(i, set()), neg.get(i, set())
        label = []
        for values in (SHAPES, COLOURS):
            known = p & set(values)
            left = set(values) - n
            value = next(iter(known)) if len(known) == 1 else next(iter(left)) if len(left) == 1 else None
            label.append(values.index(value) if value is not None else -100)
        out[i] = tuple(label)
    return out


def load_split(split: str, processor, max_images: int | None = None, max_questions: int | None = None) -> EasyVQAData:
    """Load a split through xbench's easyvqa task; prompts are built exactly as a run builds them."""
    from PIL import Image

    from xbench.models.llava import LlavaAdapter

    task = EasyVQA(split)
    texts, answers, image_ids = task._questions
    keep_ids = sorted(set(image_ids))[:max_images] if max_images else sorted(set(image_ids))
    row_of = {img: r for r, img in enumerate(keep_ids)}
    images = []
    for img in keep_ids:
        with Image.open(task._paths[img]) as im:
            images.append(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
    labels = image_labels(texts, answers, image_ids)
    blank = Image.new("RGB", images[0].shape[1:][::-1])
    tok = processor.tokenizer
    prompt_cache: dict[str, list[int]] = {}
    answer_cache: dict[str, list[int]] = {}
    data = EasyVQAData(
        images=torch.from_numpy(np.stack(images)),
        labels=torch.tensor([labels[i] for i in keep_ids], dtype=torch.long),
        q_image=torch.empty(0, dtype=torch.long), q_prompt=[], q_answer=[], questions=[], answers=[], kinds=[],
    )  # fmt: skip
    rows = []
    for sample in task.samples(limit=None, seed=0):  # the task's own Sample objects and prompts
        img = sample.meta["image_id"]
        if img not in row_of:
            continue
        if sample.question not in prompt_cache:
            text = LlavaAdapter.template.format(prompt=task.prompt(sample))
            prompt_cache[sample.question] = list(processor(images=[blank], text=[text])["input_ids"][0])
        rows.append(row_of[img])
        data.q_prompt.append(prompt_cache[sample.question])
        answer = sample.answers[0]
        if answer not in answer_cache:
            answer_cache[answer] = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        data.q_answer.append(answer_cache[answer])
        data.questions.append(sample.question)
        data.answers.append(sample.answers[0])
        data.kinds.append(sample.meta["kind"])
        if max_questions and len(rows) >= max_questions:
            break
    data.q_image = torch.tensor(rows, dtype=torch.long)
    data.q_words = torch.tensor([question_labels(q) for q in data.questions], dtype=torch.long).view(-1, 3)
    return data


def answer_group(question: str, answer: str, kind: str) -> str:
    """The stratum of a question for balanced sampling: its kind, answer and, for yes/no, negation.

    Without balance, "is there a <colour> shape?" is answered "no" 7 times in 8 and a
    small model settles on that prior instead of comparing the colour with the image.
    """
    if answer in ("yes", "no"):
        negated = bool(set(question.lower().rstrip("?").split()) & {"not", "no"})
        return f"{kind}|{answer}|{'negated' if negated else 'plain'}"
    return f"{kind}|{answer}"


def balanced_weights(data: EasyVQAData) -> torch.Tensor:
    """Question weights: every kind keeps its share of the data; its groups share it equally."""
    groups = [answer_group(q, a, k) for q, a, k in zip(data.questions, data.answers, data.kinds)]
    per_group: dict[str, int] = {}
    groups_of_kind: dict[str, set[str]] = {}
    for g, k in zip(groups, data.kinds):
        per_group[g] = per_group.get(g, 0) + 1
        groups_of_kind.setdefault(k, set()).add(g)
    kind_share = {k: data.kinds.count(k) / len(data) for k in groups_of_kind}
    w = [kind_share[k] / len(groups_of_kind[k]) / per_group[g] for g, k in zip(groups, data.kinds)]
    return torch.tensor(w, dtype=torch.double)


def question_labels(question: str) -> tuple[int, int, int]:
    """What a question names: colour index (8: none), shape index (3: none), negated (0/1)."""
    words = question.lower().rstrip("?").split()
    colour = next((COLOURS.index(w) for w in words if w in COLOURS), len(COLOURS))
    shape = next((SHAPES.index(w) for w in words if w in SHAPES), len(SHAPES))
    return colour, shape, int(bool(set(words) & {"not", "no"}))


def pixel_values(images: torch.Tensor, processor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> normalised float, as the CLIP image processor does for 64x64 input."""
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, gen: torch.Generator, max_shift: int, flip: bool) -> torch.Tensor:
    """Random horizontal flips and integer shifts (edge-replicated) of uint8 images."""
    b, _, h, w = images.shape
    out = images
    if flip:
        flips = torch.rand(b, generator=gen) < 0.5
        out = torch.where(flips.view(b, 1, 1, 1), out.flip(-1), out)
    if max_shift > 0:
        s = max_shift
        padded = F.pad(out.float(), (s, s, s, s), mode="replicate")
        dx = torch.randint(0, 2 * s + 1, (b,), generator=gen)
        dy = torch.randint(0, 2 * s + 1, (b,), generator=gen)
        out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)]).to(images.dtype)
    return out


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` left-padded; positions count real tokens from 0."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, n - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return ids, mask, pos


def qa_batch(data: EasyVQAData, idx: torch.Tensor, pad_id: int):
    """Teacher-forcing inputs for questions ``idx``: prompt + answer, labels on answer + </s>."""
    seqs, targets = [], []
    for q in idx.tolist():
        prompt, answer = data.q_prompt[q], data.q_answer[q]
        seqs.append(prompt + answer[:-1])
        targets.append(answer)
    ids, mask, pos = left_pad(seqs, pad_id)
    labels = torch.full_like(ids, -100)
    for i, t in enumerate(targets):
        labels[i, ids.shape[1] - len(t) :] = torch.tensor(t)  # position k predicts token k+1
    return ids, mask, pos, labels


# --------------------------------------------------------------------------- model pieces
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


# --------------------------------------------------------------------------- evaluation
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
            "recipe": _recipe_dict(recipe),
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


def _recipe_dict(recipe: Recipe) -> dict:
    d = asdict(recipe)
    d["shape"] = asdict(recipe.shape)
    return d


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


def model_card(info: dict) -> str:
    """The model card (markdown) from a training run's ``info``."""
    r = info["recipe"]
    s = r["shape"]
    sampling = (
        "evenly over answer groups within each question kind (yes/no also split by negation)"
        if r.get("balance")
        else "uniformly"
    )
    lines = [
        f"# {MODEL_NAME}",
        "",
        "A small LLaVA-architecture model (`LlavaForConditionalGeneration`: CLIP vision tower, linear-GELU-linear",
        "projector, Llama language model, word-level tokenizer over the easy-vqa vocabulary) trained by xbench from",
        "scratch on the easy-vqa train split. It is xbench's default model: explanations are only worth studying on a",
        "model that answers correctly, and it needs no download. Weights: `model.safetensors` (float32).",
        "",
        "## Configuration",
        "",
        "| part | setting |",
        "|---|---|",
        f"| vision tower | CLIP, {s['image_size']}px, patch {s['patch_size']} "
        f"({s['image_size'] // s['patch_size']}x{s['image_size'] // s['patch_size']} grid), "
        f"hidden {s['vision_hidden']}, {s['vision_layers']} layers, {s['vision_heads']} heads |",
        "| image features | `vision_feature_layer=-1` (last layer), strategy `default` (CLS dropped) |",
        f"| language model | Llama, hidden {s['text_hidden']}, {s['text_layers']} layers, {s['text_heads']} heads |",
        f"| parameters | {info['parameters']:,} |",
        "| attention | eager (attention weights available) |",
        "",
        "## Prompt",
        "",
        "`USER: <image>\\n{question}\\nAnswer the question using a single word or phrase. ASSISTANT:` - the model",
        "answers with one word followed by `</s>`.",
        "",
        "## Training recipe",
        "",
        f"- seed {r['seed']}; `torch.use_deterministic_algorithms(True)`; seeded data order and augmentation.",
        "- A. warm-up: vision tower + projector + a linear head classifying shape and colour from the mean image",
        f"  token; {r['warmup_steps']} steps, batch {r['warmup_batch']} images, AdamW lr {r['warmup_lr']}.",
        "- B. QA: whole model, teacher-forced cross-entropy on `answer </s>`, plus the warm-up loss at weight",
        f"  {r['aux_weight']}; {r['qa_steps']} steps, batch {r['qa_batch']} questions, AdamW lr {r['qa_lr']}.",
        f"  Questions are drawn {sampling}.",
        f"  A linear probe on the LM's hidden state after {r.get('probe_layer', 1)} layer(s) at the answer position predicts the",
        f"  colour and shape the question names, its negation and the image's shape and colour (weight {r.get('probe_weight', 0)}).",
        f"- Both phases: {r['lr_warmup']} linear warm-up steps then cosine decay, weight decay {r['weight_decay']},",
        f"  gradient clipping {r['grad_clip']}, horizontal flips and shifts up to {r['max_shift']} px (edge-replicated).",
        "- Shape/colour labels of the images come from the train questions (named, or decided by yes/no answers).",
        "- The auxiliary heads are dropped; the shipped weights are the LLaVA model's alone.",
        "",
        "## Results",
        "",
    ]
    w = info["wall_s"]
    lines += [
        f"Hardware: {info['hardware']}; torch {info['torch']}.",
        f"Wall time: {w['train']:.0f} s training, {w.get('evaluate', 0):.0f} s evaluation, {w['total']:.0f} s in all"
        + (f" ({info['cpu_s']:.0f} s of CPU time)" if "cpu_s" in info else "")
        + "; wall time grows when other jobs share the cores.",
        "",
    ]
    if "test" in info:
        t = info["test"]
        lines += [
            f"Greedy answers on the easy-vqa test split ({t['n']:,} questions), exact match:",
            "",
            "| question kind | questions | accuracy |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {v['n']:,} | {v['accuracy']:.4f} |" for k, v in t["by_kind"].items()]
        lines += [f"| **all** | {t['n']:,} | **{t['accuracy']:.4f}** |", ""]
    lines += ["## Reproduce", "", "```", reproduce_command(r), "```", ""]
    return "\n".join(lines)


def reproduce_command(recipe: dict) -> str:
    """The ``xbench zoo train`` command line giving ``recipe`` (flags only where it differs from the default)."""
    default = _recipe_dict(Recipe())
    cmd = f"xbench zoo train {MODEL_NAME} --out DIR --seed {recipe['seed']}"
    for key in ("warmup_steps", "qa_steps", "threads", "eval_limit"):
        if recipe.get(key) != default[key]:
            cmd += f" --{key.replace('_', '-')} {recipe[key]}"
    return cmd


def recipe_from_args(seed: int, warmup_steps: int | None, qa_steps: int | None, **overrides) -> Recipe:
    r = Recipe(seed=seed)
    if warmup_steps is not None:
        r = replace(r, warmup_steps=warmup_steps)
    if qa_steps is not None:
        r = replace(r, qa_steps=qa_steps)
    return replace(r, **{k: v for k, v in overrides.items() if v is not None})
