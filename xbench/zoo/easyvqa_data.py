"""easy-vqa as training tensors for ``tiny-llava-easyvqa`` (see :mod:`xbench.zoo.train_easyvqa`).

A split is read through xbench's easyvqa task, so prompts are built exactly as a run builds
them; images get shape/colour labels inferred from their questions (:func:`image_labels`),
questions get balanced sampling weights (:func:`balanced_weights`) and probe labels
(:func:`question_labels`). Augmentation (:func:`augment`) is horizontal flips and
edge-replicated shifts drawn from the caller's generator; :func:`qa_batch` builds left-padded
teacher-forcing inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xbench.tasks.easyvqa import COLOURS, SHAPES, EasyVQA


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
            text = LlavaAdapter.fallback_prompt.format(prompt=task.prompt(sample))
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
