"""Faithfulness: does the model's answer depend on the patches the map ranks highest?

Deletion (Petsiuk et al. 2018, RISE): image patches are replaced by a fill, most relevant
first, in ``steps`` equal steps (step i covers ``round(i * P / steps)`` of the P patches);
after each step the model re-reads the image with the generated answer teacher-forced and
the score is the probability of that answer. The metric is the area under this curve over
the removed fraction 0..1 (trapezoid rule): lower is better. Insertion starts from an
all-fill image and reveals the patches in the same order: higher is better.

* ``fill="mean"`` (default): the per-channel mean of the processed image (normalised
  space), i.e. the image's average colour; ``fill="zero"``: zero in normalised space,
  i.e. the vision encoder's dataset-mean colour (``vlm.fill_value``; the adapter's
  ``vlm.perturb`` lays the cells on its pixels).
* ``score="answer"`` (default): the probability of the whole generated answer (product of
  its tokens' probabilities); ``score="first"``: of its first token only.
* Ties in a map are broken in a random order fixed by the run seed and sample id.
* ``deletion_auc_random`` / ``insertion_auc_random``: the same curves for a random patch
  order (seeded per sample, identical for every method): the control each method's AUC
  should beat. They do not depend on the map (``uses_map = False``).

All ``steps + 1`` perturbed images of a curve go through the model in batches of ``chunk``
(``vlm.forward(generation, pixel_values=batch)``); a curve is computed once per sample and
order (``context.cache``).
"""

from __future__ import annotations

import numpy as np

from xbench.api import Metric
from xbench.hookspecs import hookimpl
from xbench.params import Param

FILLS = ("mean", "zero")
SCORES = ("answer", "first")


def step_counts(n_patches: int, steps: int) -> np.ndarray:
    """Patches covered after each of the ``steps + 1`` points: ``round(i * P / steps)``."""
    return np.rint(np.arange(steps + 1) * n_patches / steps).astype(int)


def step_masks(order: np.ndarray, steps: int) -> np.ndarray:
    """``[steps + 1, P]`` bool: row i marks the first ``step_counts[i]`` patches of ``order``."""
    n = len(order)
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    return rank[None, :] < step_counts(n, steps)[:, None]


def perturbed_images(vlm, generation, masks: np.ndarray, fill: str, mode: str):
    """``[S, ...]`` images (``vlm.perturb``): deletion fills the marked cells, insertion keeps only them."""
    import torch

    marked = torch.as_tensor(masks, dtype=torch.float32)
    keep = 1.0 - marked if mode == "deletion" else marked
    return vlm.perturb(generation, keep, vlm.fill_value(generation, fill))


def answer_probability(vlm, generation, images, score: str, chunk: int) -> np.ndarray:
    """Probability of ``generation``'s answer (``score="answer"``) or of its first token
    (``"first"``) under each image, teacher-forced, in batches."""
    import torch

    targets = torch.tensor(generation.answer_ids, device=images.device)
    positions = generation.query_positions
    if score == "first":
        targets, positions = targets[:1], positions[:1]
    out = []
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            logits = vlm.forward(generation, pixel_values=images[start : start + chunk]).logits
            logp = torch.log_softmax(logits[:, positions].float(), dim=-1)
            picked = logp.gather(-1, targets.expand(len(logp), -1)[..., None])[..., 0]
            out.append(picked.sum(dim=-1).exp().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def curve_auc(curve: np.ndarray) -> float:
    """Trapezoid area under a curve sampled at fractions 0, 1/k, ..., 1."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def relevance_order(grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patch indices, most relevant first; ties in a random order from ``rng``."""
    flat = np.asarray(grid, dtype=np.float64).ravel()
    return np.lexsort((rng.random(flat.size), -flat))


class Perturbation(Metric):
    """Deletion / insertion AUC for the map's order (or a random one)."""

    category = "faithfulness"
    needs = frozenset({"model"})
    presets = frozenset()  # 17 model forwards per curve and sample: only with --metrics all / faithfulness
    mode = "deletion"
    random_order = False

    parameters = {
        "steps": Param(16, min=1, doc="equal steps from no patch to every patch"),
        "fill": Param("mean", choices=FILLS, doc="mean: the image's mean colour; zero: zero in normalised space"),
        "score": Param("answer", choices=SCORES, doc="answer: the whole answer's probability; first: its first token's"),
        "chunk": Param(32, min=1, doc="perturbed images per forward"),
    }

    def order(self, sample, rmap, context) -> np.ndarray:
        if self.random_order:
            return context.rng("faithfulness-random-order", sample.id).permutation(rmap.grid.size)
        return relevance_order(rmap.grid, context.rng("faithfulness-ties", sample.id))

    def curve(self, sample, generation, rmap, context) -> np.ndarray:
        p = self.params
        steps, chunk = p["steps"], p["chunk"]
        order = self.order(sample, rmap, context)
        key = ("faithfulness", self.mode, steps, p["fill"], p["score"], order.tobytes())
        if key not in context.cache:
            masks = step_masks(order, steps)
            images = perturbed_images(context.vlm, generation, masks, p["fill"], self.mode)
            context.cache[key] = answer_probability(context.vlm, generation, images, p["score"], chunk)
        return context.cache[key]

    def compute(self, sample, generation, rmap, context=None):
        return curve_auc(self.curve(sample, generation, rmap, context))


class DeletionAUC(Perturbation):
    name = "deletion_auc"
    description = "area under the answer probability as top patches are deleted (lower is better)"
    higher_is_better = False


class InsertionAUC(Perturbation):
    name = "insertion_auc"
    description = "area under the answer probability as top patches are revealed (higher is better)"
    higher_is_better = True
    mode = "insertion"


class DeletionAUCRandom(Perturbation):
    name = "deletion_auc_random"
    description = "deletion AUC for a random patch order: the control for deletion_auc"
    higher_is_better = None
    random_order = True
    uses_map = False


class InsertionAUCRandom(Perturbation):
    name = "insertion_auc_random"
    description = "insertion AUC for a random patch order: the control for insertion_auc"
    higher_is_better = None
    mode = "insertion"
    random_order = True
    uses_map = False


FAITHFULNESS_METRICS = (DeletionAUC, InsertionAUC, DeletionAUCRandom, InsertionAUCRandom)


@hookimpl
def xbench_register_metrics(registry):
    for cls in FAITHFULNESS_METRICS:
        registry.register(cls)
