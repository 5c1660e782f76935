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

Training streams (:class:`RowSource`): each pass over the training rows goes through windows
of consecutive rows holding ``shuffle_buffer_mb`` of states; each window is permuted (seeded)
and cut into batches, the rows left at the end of a pass dropped (one batch of every row when
there are fewer rows than a batch). Only one window is in memory, so peak memory follows the
buffer, not the number of samples; with a buffer larger than the data this is the plain
per-pass permutation. Before the first step one pass reads the maps only, for the positive
weight. Rows come from the store (:meth:`RowSource.stored`, shards memory-mapped) or straight
from labelling (:meth:`RowSource.online`, each pass labels again); the two give the same
batches, so the same proxy, for the same rows and seed. Samples whose grids differ are
padded with masks (loss and normalisation over each sample's real patches).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from xbench.errors import DataError
from xbench.fastrm.evaluate import best_threshold, map_metrics, predict
from xbench.fastrm.labels import LABEL_DTYPE, LabelSet, collate
from xbench.fastrm.proxy import FastRMProxy
from xbench.fastrm.proxy_store import DEFAULT_HEAD
from xbench.fastrm.store import Row
from xbench.maps import DEFAULT_TAU, binarise_each, normalise_each


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
    shuffle_buffer_mb: float = 1024.0  # states held for shuffling (a window of consecutive rows)
    device: str = "cpu"  # where the proxy trains (batches move there; the proxy comes back on the CPU)


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


class RowSource:
    """The training rows, one pass at a time, always in the same order.

    ``passes()`` gives a fresh iterator over every row; ``maps_pass()`` one that may leave the
    states out (the survey before training reads only maps); ``spec`` is what the labels record.
    """

    def __init__(self, passes: Callable[[], Iterable[Row]], spec: dict, maps_pass=None, where: str = "") -> None:
        self.passes, self.spec, self.where = passes, spec, where
        self.maps_pass = maps_pass or passes

    @classmethod
    def stored(cls, labels: LabelSet) -> "RowSource":
        """Rows read from the store (each pass memory-maps the shards anew)."""
        return cls(labels.rows, labels.spec, lambda: labels.rows(states=False), "stored labels")

    @classmethod
    def online(cls, parts: Sequence[Callable[[], Iterable[Row]]], spec: dict,
               keep: Callable[[Row], bool] | None = None) -> "RowSource":  # fmt: skip
        """Rows labelled as they are read, never stored: ``parts`` make the rows of each part
        (the training samples, then each augmented copy) in order; ``keep`` filters them."""

        def passes():
            for part in parts:
                yield from (r for r in part() if keep is None or keep(r))

        return cls(passes, spec, where="online labels (labelled again each pass)")


@dataclass
class Survey:
    """What one maps-only pass found: row count, hidden size, grids, positives at tau."""

    n: int
    hidden_size: int
    grids: set
    positives: int
    cells: int

    @property
    def positive_rate(self) -> float:
        # as torch's float32 mean of the 0/1 targets (the weights then match the earlier in-memory training)
        return float(torch.tensor(float(self.positives)) / torch.tensor(float(max(self.cells, 1))))


def survey(source: RowSource, tau: float, hidden_size: int | None = None) -> Survey:
    n = positives = cells = 0
    grids: set = set()
    for row in source.maps_pass():
        n += 1
        grids.add(tuple(row.map_shape))
        positives += int(binarise_each(row.map[None], tau, LABEL_DTYPE).sum())
        cells += row.map.size
        if hidden_size is None and row.patches.numel():
            hidden_size = int(row.patches.shape[1])
    if not n:
        raise DataError(f"no training samples ({source.where})")
    return Survey(n, int(hidden_size or 0), grids, positives, cells)


def windows(rows: Iterable[Row], limit_bytes: float) -> Iterator[list[Row]]:
    """Consecutive rows, cut each time they hold ``limit_bytes`` (at least one row a window)."""
    window, size = [], 0
    for row in rows:
        window.append(row)
        size += row.nbytes
        if size >= limit_bytes:
            yield window
            window, size = [], 0
    if window:
        yield window


def training_batches(source: RowSource, n: int, cfg: TrainConfig, gen: torch.Generator) -> Iterator[list[Row]]:
    """Batches of rows, pass after pass (see the module docstring), without end."""
    limit = cfg.shuffle_buffer_mb * 2**20
    while True:
        pending: list[Row] = []
        for window in windows(source.passes(), limit):
            pending.extend(window[i] for i in torch.randperm(len(window), generator=gen).tolist())
            del window  # the rows live on in ``pending`` only: one window in memory, not two
            while len(pending) >= cfg.batch_size:
                yield pending[: cfg.batch_size]
                del pending[: cfg.batch_size]
        if n < cfg.batch_size and pending:  # fewer rows than a batch: one batch of them all
            yield pending


def _targets(rows: Sequence[Row], tau: float, patch_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets [B, N], dist [B, N])`` of the rows' maps (zero-padded as the batch): the binarised
    reference maps (BCE) and the min-max normalised maps scaled to sum to one (the map-matching term)."""
    if patch_mask is None:
        maps = np.stack([r.map for r in rows])
        targets = torch.from_numpy(binarise_each(maps, tau, LABEL_DTYPE).astype(np.float32))
        dist = torch.from_numpy(normalise_each(maps, LABEL_DTYPE))
        return targets, dist / dist.sum(dim=1, keepdim=True).clamp_min(1e-12)
    targets, dist = torch.zeros(patch_mask.shape), torch.zeros(patch_mask.shape)
    for i, r in enumerate(rows):
        t, d = _targets([r], tau, None)
        targets[i, : r.map.size], dist[i, : r.map.size] = t[0], d[0]
    return targets, dist


def _loss(logits, targets, dist, patch_mask, loss_fn, aux_weight: float, aux_temp) -> torch.Tensor:
    """BCE (over each sample's real patches) plus ``aux_weight`` times the map-matching KL term."""
    if patch_mask is None:
        loss = loss_fn(logits, targets)
    else:
        each = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=loss_fn.pos_weight,
                                                                    reduction="none")  # fmt: skip
        loss = (each * patch_mask).sum() / patch_mask.sum()
    if aux_weight:
        scaled = logits * aux_temp
        if patch_mask is not None:
            scaled = scaled.masked_fill(~patch_mask, float("-inf"))
        logp = torch.log_softmax(scaled, dim=-1)
        if patch_mask is not None:
            logp = logp.masked_fill(~patch_mask, 0.0)
        loss = loss + aux_weight * torch.nn.functional.kl_div(logp, dist, reduction="batchmean")
    return loss


def _proxy_grid(found: Survey, cfg: TrainConfig) -> tuple[int, ...] | None:
    """The proxy's grid: the one every sample has; None when they differ, which only a
    position-free head accepts (a ParameterError naming the grids otherwise)."""
    if len(found.grids) == 1:
        return next(iter(found.grids))
    from xbench.fastrm.heads import HEADS

    HEADS.get(cfg.head)(found.hidden_size, None, **cfg.head_params)  # a positional head: ParameterError
    return None


def _progress_entry(step: int, losses, started: float, proxy, val: LabelSet | None, tau: float, loss_fn) -> dict:
    """The training log's entry at ``step``: mean recent loss, time, and the current weights'
    validation loss and scores (at threshold 0.5)."""
    entry = {"step": step, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - started}
    if val is not None and len(val):
        probs, _ = predict(proxy, val)
        vt = val.targets(tau)
        logits = torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6))
        entry["val_loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(vt.astype(np.float32)), pos_weight=loss_fn.pos_weight.cpu()))  # fmt: skip
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


def _recipe(cfg: TrainConfig, source: RowSource, val: LabelSet | None, found: dict, seconds: float) -> dict:
    """``info["train"]``: the config, the sample counts, what training ``found`` and the labels' spec."""
    return {
        **asdict(cfg),
        "aux_weight": found["aux_weight"],
        "n_train": found["n_train"],
        "n_val": len(val) if val is not None else 0,
        "positive_rate": found["positive_rate"],
        "pos_weight": found["pos_weight"],
        "decision_threshold_from": found["decision_threshold_from"],
        "labels": source.spec,
        "rows_from": source.where,
        "seconds": seconds,
    }


def train_proxy(
    train: LabelSet | RowSource,
    val: LabelSet | None,
    cfg: TrainConfig,
    model_info: dict[str, Any],
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[FastRMProxy, list[dict[str, Any]]]:
    """Train a proxy on ``train`` (stored labels or a :class:`RowSource`); returns it (with its
    decision threshold and recipe in ``info``) and the log."""
    from tqdm.auto import tqdm

    source = RowSource.stored(train) if isinstance(train, LabelSet) else train
    found = survey(source, cfg.tau, train.hidden_size if isinstance(train, LabelSet) and len(train) else None)
    pos = found.positive_rate
    pos_weight = torch.tensor((1 - pos) / max(pos, 1e-6))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        proxy = FastRMProxy(cfg.head, found.hidden_size, _proxy_grid(found, cfg), cfg.head_params, model_info)
    device = torch.device(cfg.device)
    proxy.to(device)
    aux_weight = proxy.head.aux_weight if cfg.aux_weight is None else cfg.aux_weight
    aux_temp = torch.nn.Parameter(torch.ones((), device=device))
    opt = torch.optim.AdamW(list(proxy.parameters()) + [aux_temp], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device))
    batches = training_batches(source, found.n, cfg, torch.Generator().manual_seed(cfg.seed))
    history: list[dict[str, Any]] = []
    averaged = weight_average(proxy, cfg.ema) if cfg.ema else None
    losses, started = [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"fastrm {cfg.head}", unit="step", disable=not progress, leave=False)
    for step in bar:
        rows = next(batches)
        proxy.train()
        b = collate(rows, device)
        targets, dist = (t.to(device) for t in _targets(rows, cfg.tau, b.patch_mask))
        logits = proxy(*b)
        loss = _loss(logits, targets, dist, b.patch_mask, loss_fn, aux_weight, aux_temp)
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
    proxy.cpu().eval()
    val_scores, threshold_from = _set_decision_threshold(proxy, val, cfg, log)
    recipe = {"aux_weight": aux_weight, "positive_rate": pos, "pos_weight": float(pos_weight),
              "decision_threshold_from": threshold_from, "n_train": found.n}  # fmt: skip
    proxy.info = {
        "train": _recipe(cfg, source, val, recipe, time.perf_counter() - started),
        "history": history,
        "val": val_scores,  # at the decision threshold: compare recipes here, not on the test split
    }
    return proxy.requires_grad_(False), history
