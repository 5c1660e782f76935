"""Training a FastRM proxy on cached labels: BCE with positive-class weighting, AdamW, seeded.

The positive weight is ``negatives / positives`` over the training targets. With
``aux_weight > 0`` (default: the head's, 1 for attention, 3 for mlp) a second term matches
the reference map itself, not only its binarisation: the KL divergence from the min-max
normalised reference map, scaled to sum to one, to the softmax over patches of the proxy's
logits (times a learned temperature used only in training); ``aux_weight=0`` is the paper's
plain BCE (results/fastrm/README.md has what the term did on easy-vqa). The learning rate warms
up linearly then decays on a cosine to 10%. With ``ema`` (a decay, e.g. 0.9999) the proxy
ends with the exponential moving average of its weights over training
(``torch.optim.swa_utils.AveragedModel``, see :func:`ema_decay`), not its last weights; the
validation metrics logged during training are the current weights', ``info["val"]`` the final
proxy's. Validation metrics are logged every
``eval_every`` steps. With a validation set the decision threshold is the one with the best
validation F1 (``decision="val-f1"``; 0.5 when there are no validation samples), otherwise
``decision`` itself (a number); ``info["train"]["decision_threshold_from"]`` says which, and the
final validation scores at that threshold are kept in ``info["val"]``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from xbench.fastrm.evaluate import best_threshold, map_metrics, predict
from xbench.fastrm.labels import LABEL_DTYPE, LabelSet
from xbench.fastrm.proxy import FastRMProxy
from xbench.fastrm.proxy_store import DEFAULT_HEAD
from xbench.maps import DEFAULT_TAU, normalise_each


@dataclass
class TrainConfig:
    head: str = DEFAULT_HEAD
    head_params: dict[str, Any] = field(default_factory=dict)
    tau: float = DEFAULT_TAU
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    seed: int = 0
    eval_every: int = 500
    decision: str | float = "val-f1"
    aux_weight: float | None = None  # None: the head's ``aux_weight``
    ema: float | None = None  # decay of an exponential moving average of the weights, used at the end


def ema_decay(decay: float, n_averaged: int) -> float:
    """The decay of the weight average's update after ``n_averaged`` updates: ``decay``, capped
    at ``(1 + n) / (10 + n)``, so that a short run's average is not dominated by its initial
    weights (the warm-up of TensorFlow's ExponentialMovingAverage ``num_updates``). The cap
    binds while ``n < (10 decay - 1) / (1 - decay)``: about 90,000 updates at 0.9999."""
    return min(decay, (1 + n_averaged) / (10 + n_averaged))


def weight_average(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s parameters with :func:`ema_decay`'s warm-up."""

    def update(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return torch.lerp(averaged, current, 1 - ema_decay(decay, int(n)))

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=update)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _training_targets(train: LabelSet, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets [n, N], dist [n, N])``: the binarised reference maps (BCE) and the min-max
    normalised maps scaled to sum to one (the map-matching term)."""
    targets = torch.from_numpy(train.targets(tau).astype(np.float32))
    dist = torch.from_numpy(normalise_each(train.maps, LABEL_DTYPE))
    return targets, dist / dist.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _progress_entry(step: int, losses, started: float, proxy, val: LabelSet | None, tau: float, loss_fn) -> dict:
    """The training log's entry at ``step``: mean recent loss, time, and the current weights'
    validation loss and scores (at threshold 0.5)."""
    entry = {"step": step, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - started}
    if val is not None and len(val):
        probs, _ = predict(proxy, val)
        vt = val.targets(tau)
        entry["val_loss"] = float(
            loss_fn(torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6)), torch.from_numpy(vt.astype(np.float32)))
        )
        m = map_metrics(probs, vt, 0.5)
        entry.update({f"val_{k}": m[k] for k in ("f1", "accuracy", "auroc")})
    return entry


def _set_decision_threshold(proxy, val: LabelSet | None, cfg: TrainConfig, log) -> tuple[dict | None, str]:
    """Set the trained proxy's decision threshold (``cfg.decision``); return the final validation
    scores at it (None without validation samples) and where the threshold came from, in words."""
    by_val = cfg.decision == "val-f1"
    if not by_val:
        proxy.decision_threshold = float(cfg.decision)
    val_scores = None
    if val is not None and len(val):
        probs, _ = predict(proxy, val)
        val_targets = val.targets(cfg.tau)
        if by_val:
            proxy.decision_threshold = best_threshold(probs, val_targets)
        val_scores = map_metrics(probs, val_targets, proxy.decision_threshold)
    elif by_val and log:
        log("no validation samples: the decision threshold stays at 0.5")
    threshold_from = "given" if not by_val else "validation F1" if val_scores else "default 0.5 (no validation samples)"
    return val_scores, threshold_from


def _recipe(cfg: TrainConfig, train: LabelSet, val: LabelSet | None, found: dict, seconds: float) -> dict:
    """``info["train"]``: the config, the sample counts, what training ``found`` and the labels' spec."""
    return {
        **asdict(cfg),
        "aux_weight": found["aux_weight"],
        "n_train": len(train),
        "n_val": len(val) if val is not None else 0,
        "positive_rate": found["positive_rate"],
        "pos_weight": found["pos_weight"],
        "decision_threshold_from": found["decision_threshold_from"],
        "labels": train.spec,
        "seconds": seconds,
    }


def train_proxy(
    train: LabelSet,
    val: LabelSet | None,
    cfg: TrainConfig,
    model_info: dict[str, Any],
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[FastRMProxy, list[dict[str, Any]]]:
    """Train a proxy; returns it (with its decision threshold and recipe in ``info``) and the log."""
    from tqdm.auto import tqdm

    targets, dist = _training_targets(train, cfg.tau)
    pos = float(targets.mean())
    pos_weight = torch.tensor((1 - pos) / max(pos, 1e-6))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        proxy = FastRMProxy(cfg.head, train.patches.shape[-1], train.grid, cfg.head_params, model_info)
    aux_weight = proxy.head.aux_weight if cfg.aux_weight is None else cfg.aux_weight
    aux_temp = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.AdamW(list(proxy.parameters()) + [aux_temp], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    order = torch.randperm(len(train), generator=gen)
    averaged = weight_average(proxy, cfg.ema) if cfg.ema else None
    cursor, losses, started = 0, [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"fastrm {cfg.head}", unit="step", disable=not progress, leave=False)
    for step in bar:
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(train), generator=gen), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        proxy.train()
        patches, queries, mask = train.batch(idx)
        logits = proxy(patches, queries, mask)
        loss = loss_fn(logits, targets[idx])
        if aux_weight:  # the map-matching term
            logp = torch.log_softmax(logits * aux_temp, dim=-1)
            loss = loss + aux_weight * torch.nn.functional.kl_div(logp, dist[idx], reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if averaged is not None:
            averaged.update_parameters(proxy)
        losses.append(loss.item())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            entry = _progress_entry(step + 1, losses[-cfg.eval_every :], started, proxy, val, cfg.tau, loss_fn)
            history.append(entry)
            bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k.startswith(("train_loss", "val_f1"))})
            if log:
                log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
    bar.close()
    if averaged is not None:
        proxy.load_state_dict(averaged.module.state_dict())
    proxy.eval()
    val_scores, threshold_from = _set_decision_threshold(proxy, val, cfg, log)
    recipe = {"aux_weight": aux_weight, "positive_rate": pos, "pos_weight": float(pos_weight),
              "decision_threshold_from": threshold_from}  # fmt: skip
    proxy.info = {
        "train": _recipe(cfg, train, val, recipe, time.perf_counter() - started),
        "history": history,
        "val": val_scores,  # at the decision threshold: compare recipes here, not on the test split
    }
    return proxy.requires_grad_(False), history
