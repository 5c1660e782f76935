"""``xbench fastrm labels`` and ``xbench fastrm train``: label (and report the store's size),
train from the split plan's store, from labels made online, or from a store directory."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from xbench.cli import checked
from xbench.errors import ParameterError
from xbench.fastrm.splits import log_stderr as _log

_size_mb = checked(float, lambda v: v > 0, "a positive size in MiB")


def store_options(p: argparse.ArgumentParser) -> None:
    """How labels are stored (``labels``, ``train``, ``evaluate``)."""
    from xbench.fastrm.store import STORE_DTYPES

    p.add_argument("--store-dtype", choices=sorted(STORE_DTYPES),
                   help="dtype of the stored hidden states (default: the model's; maps stay float32)")  # fmt: skip
    p.add_argument("--shard-mb", type=_size_mb, default=256,
                   help="label store shard size in MiB; one shard is held in memory while labelling (default 256)")  # fmt: skip


def streaming_options(p: argparse.ArgumentParser) -> None:
    """Where ``train`` reads its rows from and how it shuffles them."""
    from xbench.fastrm.train import TrainConfig

    size = TrainConfig.shuffle_buffer_mb
    p.add_argument("--shuffle-buffer-mb", type=_size_mb,
                   default=size, help="states held in memory for shuffling: a window of consecutive stored rows, "
                   f"permuted (default {size:g} MiB)")  # fmt: skip
    p.add_argument("--online", action="store_true",
                   help="label the training samples as training reads them, storing nothing (each pass over "
                   "them labels again; validation and test samples are stored as usual)")  # fmt: skip
    p.add_argument("--store", type=Path, help="train on this label store directory instead (no model loaded)")
    p.add_argument("--val-store", type=Path, help="with --store: validate on this store directory")


def labels_command(args) -> int:
    from xbench.fastrm.cli import _context
    from xbench.fastrm.labelset import describe_store

    ctx = _context(args)
    started = time.perf_counter()
    train, val = ctx.train_val()
    te = ctx.test()
    print(
        f"labels: {len(train)} {args.train_split} + {len(val)} validation ({ctx.plan.val_from()}) + {len(te)} "
        f"{args.test_split} samples in "
        f"{time.perf_counter() - started:.1f} s (cache {ctx.cache})"
    )
    for name, labels in (("train", train), ("validation", val), ("test", te)):
        print("  " + describe_store(name, labels))
    return 0


def train_command(args) -> int:
    from xbench.fastrm.cli import _context
    from xbench.fastrm.evaluate import evaluate, score_report
    from xbench.fastrm.proxy import model_identity
    from xbench.fastrm.proxy_store import install

    if args.store:
        return _train_from_store(args)
    ctx = _context(args)
    t0 = time.perf_counter()
    if args.online:
        from xbench.fastrm.sources import online_source

        train, val = online_source(ctx, args.train_filter), ctx.heldout_val()
    else:
        train, val = ctx.train_val()
        if args.train_filter:
            train = train.where(*args.train_filter)
    if args.train_filter:
        val = val.where(*args.train_filter)
    test = ctx.test()
    if args.eval_filter:
        test = test.where(*args.eval_filter)
    t_labels = time.perf_counter() - t0
    _log(f"training on {'online labels' if args.online else f'{len(train)} samples'}, validating on {len(val)}, "
         f"testing on {len(test)}")  # fmt: skip
    proxy = _fit(args, train, val, model_identity(ctx.vlm), str(ctx.vlm.device))
    t_train = time.perf_counter() - t0 - t_labels
    proxy.info["train"].update(augment=args.augment or [], val_from=ctx.plan.val_from())
    res = evaluate(proxy, test, args.tau)
    proxy.info["test"] = res
    proxy.info["seconds"] = {"labels": t_labels, "train": t_train}
    out = proxy.save(args.out)
    res["confidence_task"] = ctx.confidence(out, args.confidence_samples)
    if res["confidence_task"] is not None:
        proxy.info["test"] = res
        proxy.save(args.out)
    (out / "metrics.json").write_text(json.dumps(res, indent=2) + "\n")
    _print_val(proxy, len(val), ctx.plan.val_from())
    print(score_report(f"FastRM {proxy.head_name} vs {ctx.reference.label} on {args.task}/{args.test_split}", res))
    print(f"labels {t_labels:.1f} s, training {t_train:.1f} s; proxy written to {out}")
    if args.install:
        print(f"installed as the default {proxy.head_name} proxy of {ctx.vlm.name}: {install(out)}")
    return 0


def _fit(args, train, val, model_info: dict, device: str):
    from xbench.fastrm.cli import _train_config
    from xbench.fastrm.train import train_proxy

    cfg = _train_config(args, device=device)
    return train_proxy(train, val, cfg, model_info, progress=not args.no_progress, log=_log)[0]


def _print_val(proxy, n_val: int, val_from: str) -> None:
    v = proxy.info.get("val")
    if v:
        print(
            f"validation ({n_val} samples: {val_from}; decision threshold {v['threshold']}): "
            + "  ".join(f"{k}={v[k]:.4f}" for k in ("accuracy", "f1", "auroc") if v[k] is not None)
        )


def _train_from_store(args) -> int:
    """``train --store DIR``: train on a store directory made beforehand; no model is loaded, no
    test split scored (score the proxy with ``xbench fastrm evaluate``)."""
    import torch

    from xbench.fastrm.sources import stored_sets

    if args.online:
        raise ParameterError("--online and --store exclude each other (online labels are never stored)")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train, val, model = stored_sets(args.store, args.val_store)
    if args.train_filter:
        train = train.where(*args.train_filter)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    _log(f"training on {len(train)} stored samples ({args.store}), validating on {len(val) if val else 0}")
    proxy = _fit(args, train, val, model, device)
    proxy.info["train"].update(store=str(args.store), val_store=args.val_store and str(args.val_store))
    proxy.info["seconds"] = {"train": time.perf_counter() - t0}
    out = proxy.save(args.out)
    _print_val(proxy, len(val) if val else 0, f"--val-store {args.val_store}")
    print(f"training {proxy.info['seconds']['train']:.1f} s on {len(train)} stored samples; proxy written to {out} "
          "(not scored on a test split: use `xbench fastrm evaluate`)")  # fmt: skip
    return 0
