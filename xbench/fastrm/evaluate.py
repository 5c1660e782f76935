"""Scoring a FastRM proxy against the reference maps (scikit-learn metrics).

Per-patch metrics pool every patch of every sample (as the paper scores per-patch accuracy
and F1): the proxy's probability thresholded at its decision threshold against the
reference map min-max normalised and binarised at ``tau``; AUROC uses the probabilities.
The confidence score is the AUROC of the map's entropy for telling wrong answers from
right ones. The noise ceiling scores the reference against itself under a tiny pixel
perturbation, the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xbench.fastrm.labels import LabelSet
from xbench.maps import DEFAULT_TAU


def predict(proxy, labels: LabelSet, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, entropy [n])`` of ``proxy`` on stored features; the probabilities are
    ``[n, N]``, or flat ``[sum N_i]`` when the samples' grids differ (as :meth:`LabelSet.targets`)."""
    from xbench.fastrm.proxy import entropy_confidence

    probs, ents = [], []
    proxy.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            b = labels.batch(range(start, min(start + batch_size, len(labels))), proxy.head.bias.device)
            p = torch.sigmoid(proxy(*b)).cpu().numpy()
            mask = None if b.patch_mask is None else b.patch_mask.cpu().numpy()
            probs.extend(p if mask is None else [row[m] for row, m in zip(p, mask)])
            ents.append(entropy_confidence(p, mask)[0])
    if not probs:
        return np.zeros((0, 1), np.float32), np.zeros(0)
    flat = labels.grid is None
    out = np.concatenate(probs) if flat else np.stack(probs)
    return out.astype(np.float32), np.concatenate(ents).astype(np.float64)


def map_metrics(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Per-patch accuracy, precision, recall, F1, IoU (of ``probs >= threshold``) and AUROC (of ``probs``)."""
    from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score, roc_auc_score

    y = np.asarray(targets, dtype=bool).ravel()
    s = np.asarray(probs, dtype=np.float64).ravel()
    pred = s >= threshold
    both = bool(y.any()) and not bool(y.all())
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "iou": float(jaccard_score(y, pred, zero_division=0)),
        "auroc": float(roc_auc_score(y, s)) if both else None,
        "positive_rate": float(y.mean()) if y.size else None,
        "predicted_rate": float(pred.mean()) if pred.size else None,
        "threshold": float(threshold),
        "n_patches": int(y.size),
    }


def best_threshold(probs: np.ndarray, targets: np.ndarray) -> float:
    """The decision threshold (0.05 ... 0.95) with the highest per-patch F1 (ties: the lowest)."""
    from sklearn.metrics import f1_score

    y = np.asarray(targets, dtype=bool).ravel()
    s = np.asarray(probs).ravel()
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    scores = [f1_score(y, s >= t, zero_division=0) for t in grid]
    return float(grid[int(np.argmax(scores))])


def confidence_metrics(entropy: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """AUROC of the map entropy as a score for *wrong* answers (None with only one class)."""
    from sklearn.metrics import roc_auc_score

    wrong = np.asarray(correct) < 0.5
    out: dict[str, Any] = {"n": int(wrong.size), "n_wrong": int(wrong.sum())}
    out["auroc_entropy_wrong"] = float(roc_auc_score(wrong, entropy)) if 0 < wrong.sum() < wrong.size else None
    return out


def noise_ceiling(labels: LabelSet, tau: float = DEFAULT_TAU) -> dict[str, Any] | None:
    """The reference against itself under pixel noise: binarised perturbed maps vs binarised maps
    (F1, IoU, accuracy...) and AUROC of the normalised perturbed map; None without perturbed maps."""
    if not labels.has_perturbed:
        return None
    targets = labels.targets(tau)
    out = map_metrics(labels.normalised(perturbed=True), targets, threshold=tau)
    out["predicted_rate"] = float(labels.targets(tau, perturbed=True).mean())
    return out


def evaluate(proxy, labels: LabelSet, tau: float = DEFAULT_TAU, threshold: float | None = None) -> dict[str, Any]:
    """Every score of ``proxy`` on ``labels``: map metrics, confidence, noise ceiling, sample counts."""
    probs, entropy = predict(proxy, labels)
    threshold = proxy.decision_threshold if threshold is None else threshold
    return {
        "n_samples": len(labels),
        "tau": tau,
        "map": map_metrics(probs, labels.targets(tau), threshold),
        "confidence": confidence_metrics(entropy, labels.correct),
        "noise_ceiling": noise_ceiling(labels, tau),
        "answer_accuracy": float(np.mean(labels.correct)) if len(labels) else None,
    }


def score_report(title: str, res: dict[str, Any]) -> str:
    """:func:`evaluate`'s scores as the lines ``xbench fastrm train|evaluate`` print."""
    m, nc = res["map"], res["noise_ceiling"]
    lines = [f"{title} ({res['n_samples']} samples, tau={res['tau']}, decision threshold {m['threshold']}):"]
    keys = ("accuracy", "precision", "recall", "f1", "iou", "auroc")
    lines.append("  " + "  ".join(f"{k}={m[k]:.4f}" for k in keys if m[k] is not None))
    if nc:
        lines.append(f"  noise ceiling (reference vs itself under pixel noise): f1={nc['f1']:.4f} iou={nc['iou']:.4f} "
                     f"accuracy={nc['accuracy']:.4f}")  # fmt: skip
    for label, c in (("labelled samples", res["confidence"]), ("held-out answers", res.get("confidence_task"))):
        if c is not None:
            auc = c["auroc_entropy_wrong"]
            lines.append(f"  confidence on {label}: AUROC of map entropy for wrong answers = "
                         f"{'n/a' if auc is None else f'{auc:.4f}'} ({c['n_wrong']} wrong of {c['n']})")  # fmt: skip
    return "\n".join(lines)


def confidence_on_task(
    vlm, task, method, n: int | None, *, seed: int = 0, batch_size: int = 32, progress: bool = True
) -> dict[str, Any]:
    """AUROC of FastRM's map entropy for telling wrong answers from right ones, over the first
    ``n`` samples of ``task`` (all when None): the model answers, ``method`` (fastrm) explains,
    the task scores. Needs no reference maps, so it can cover a whole split when wrong answers
    are rare."""
    from tqdm.auto import tqdm

    from xbench.batching import batched
    from xbench.pipeline import generate_explain

    entropy, correct, failed = [], [], 0
    bar = tqdm(total=n, desc="confidence", unit="sample", disable=not progress, leave=False)
    for batch in batched(task.samples(limit=n, seed=seed), batch_size):
        for o in generate_explain(vlm, task, method, batch, task.max_new_tokens):
            if not o.ok:  # counted, not scored: a failed sample is neither right nor wrong
                failed += 1
                continue
            accuracy = task.score(o.sample, o.generation.text).get("accuracy")
            if accuracy is not None:  # an answer the task does not score is left out, not counted wrong
                entropy.append(o.rmap.extras["entropy"])
                correct.append(accuracy)
            o.sample.image = None
        bar.update(len(batch))
    bar.close()
    return {**confidence_metrics(np.asarray(entropy), np.asarray(correct)), "n_failed": failed}
