"""``xbench fastrm labels|train|evaluate|ablate|paper|install``: the proxy lifecycle from the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from xbench.cli import checked, command, parse_params, positive_int
from xbench.errors import ParameterError
from xbench.fastrm.splits import log_stderr as _log
from xbench.maps import DEFAULT_REFERENCE, DEFAULT_TAU

#: easy-vqa's question kinds (tasks/easyvqa.py question_kind): open questions vs yes/no probes
TRANSFER_GROUPS = "open=colour,shape;yes/no=yes/no colour,yes/no shape"
#: ``xbench fastrm labels|train`` defaults: the recipe of the default model's shipped attention
#: proxy (results/fastrm/README.md); the proxy ends with the moving average of its weights
TRAIN_RECIPE = {"samples": 38000, "steps": 160000, "ema": 0.9999}
#: ``xbench fastrm ablate`` defaults: a shorter base recipe, so that every table (every head,
#: every setting) is made in one sitting on a CPU
ABLATION_RECIPE = {"samples": 23500, "steps": 4000}


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    return [int(x) for x in _floats(text)]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _groups(text: str) -> dict[str, list[str]]:
    groups = {}
    for part in text.split(";"):
        name, sep, values = part.partition("=")
        if not sep or not name.strip() or not _names(values):
            raise argparse.ArgumentTypeError(f"expected NAME=V1,V2;NAME=V3 (e.g. {TRANSFER_GROUPS!r}), got {text!r}")
        groups[name.strip()] = _names(values)
    return groups


def _pairs(text: str) -> dict[str, Any]:
    """``KEY=VALUE[,KEY=VALUE]`` -> dict (values parsed as in ``--param``)."""
    try:
        params = parse_params(_names(text), "--augment")
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not params:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE], got {text!r}")
    return params


_decay = checked(float, lambda v: 0 <= v < 1, "a decay in [0, 1)")


def _filter(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2 (e.g. kind=colour,shape), got {text!r}")
    return key.strip(), _names(values)


# --------------------------------------------------------------------------- shared setup


def _common(p: argparse.ArgumentParser, recipe: dict | None = TRAIN_RECIPE, task: bool = True) -> None:
    """The options every fastrm command shares; with a ``recipe``, the training ones too; without
    ``task``, no ``--task``/``--task-param`` (a command whose tasks are fixed sets their defaults)."""
    from xbench.runner import DEFAULT_MODEL, DEFAULT_TASK

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name or HF directory (default {DEFAULT_MODEL})")
    if task:
        p.add_argument("--task", default=DEFAULT_TASK, help=f"task adapter (default {DEFAULT_TASK})")
        p.add_argument("--task-param", action="append", metavar="KEY=VALUE", help="task parameter, every split (repeatable)")
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help=f"reference method (default {DEFAULT_REFERENCE})")
    p.add_argument("--reference-param", action="append", metavar="KEY=VALUE", help="reference method parameter")
    p.add_argument("--threshold", "--tau", dest="tau", type=float, default=DEFAULT_TAU,
                   help=f"labelling threshold tau (default {DEFAULT_TAU})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of sample order, proxy init and batches (default 0)")
    p.add_argument("--test-samples", type=positive_int, default=1000, help="held-out test samples (default 1000)")
    p.add_argument("--test-split", default="test", help="held-out split (default %(default)s)")
    p.add_argument(
        "--confidence-samples",
        type=int,
        default=0,
        help="also score the confidence on this many held-out answers, no reference needed "
        "(0: skip; -1: the whole split)",
    )
    p.add_argument(
        "--noise-std",
        type=float,
        default=2 / 255,
        help="pixel noise of the noise ceiling, intensity units (default 2/255)",
    )
    p.add_argument("--cache", type=Path, help="label cache root (default $XBENCH_HOME/fastrm)")
    p.add_argument("--label-batch-size", type=positive_int, default=16)
    p.add_argument("--max-new-tokens", type=positive_int, help="answer length limit (default: the task's)")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda when present)")
    p.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (default: torch's; 1 is fastest on a busy machine)"
    )
    p.add_argument("--no-progress", action="store_true")
    if recipe:
        _training_options(p, recipe)


def _training_options(p: argparse.ArgumentParser, recipe: dict) -> None:
    """The options of the commands that train (``labels``, ``train``, ``ablate``), with ``recipe``'s defaults."""
    samples, steps = recipe["samples"], recipe["steps"]
    p.add_argument("--samples", type=positive_int, default=samples, help=f"training samples (default {samples})")
    p.add_argument("--val-samples", type=positive_int, default=2000, help="validation samples (default 2000)")
    p.add_argument("--train-split", default="train", help="split to train on (default %(default)s)")
    p.add_argument(
        "--val-split",
        help="split to validate on (default: the held-out split, past the test samples and on images none "
        "of them shows; the training split: the samples right after the training ones)",
    )
    p.add_argument(
        "--augment",
        type=_pairs,
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="also train on a copy of the training samples (never the validation ones) under these extra "
        "task parameters, e.g. flip=horizontal on easyvqa; repeatable, one copy each",
    )
    p.add_argument("--steps", type=positive_int, default=steps, help=f"optimiser steps (default {steps})")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument(
        "--aux-weight",
        type=float,
        help="weight of the map-matching KL term (default: the head's, 1 attention, 3 mlp; "
        "0 = plain BCE as in the paper)",
    )
    p.add_argument(
        "--train-seed",
        type=int,
        help="seed of the proxy's initial weights and batch order only (default: --seed); the samples stay "
        "those of --seed, so proxies trained with other train seeds are scored on the same test samples",
    )
    p.add_argument("--eval-every", type=positive_int, default=500)
    ema = recipe.get("ema")
    p.add_argument(
        "--ema",
        type=_decay,
        default=ema,
        help="end with the exponential moving average of the weights, with this decay "
        f"(default {ema if ema else 'none: the last weights'}; 0: the last weights)",
    )


def _plan(args):
    from xbench.fastrm.splits import SplitPlan

    training = {}
    if hasattr(args, "train_split"):  # train, labels and ablate; evaluate only scores
        training = dict(train_split=args.train_split, samples=args.samples, val_split=args.val_split,
                        val_samples=args.val_samples, augment=tuple(args.augment or ()))  # fmt: skip
    return SplitPlan(task=args.task, task_params=parse_params(args.task_param, "--task-param"), seed=args.seed,
                     test_split=args.test_split, test_samples=args.test_samples, noise_std=args.noise_std,
                     **training)  # fmt: skip


def _context(args, plan=None):
    """The labelled data of the command's split plan (``plan``, default :func:`_plan`'s;
    :class:`xbench.fastrm.splits.FastRMData`)."""
    from xbench.fastrm.splits import FastRMData, LabelSettings
    from xbench.models import load_vlm, xbench_home
    from xbench.plugins import default

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    plugins = default()
    reference = plugins.registries.methods.get(args.reference)(**parse_params(args.reference_param, "--reference-param"))
    settings = LabelSettings(args.label_batch_size, args.max_new_tokens, not args.no_progress, _log,
                             getattr(args, "store_dtype", None), int(getattr(args, "shard_mb", 256) * 2**20))  # fmt: skip
    data = FastRMData(plan or _plan(args), None, reference, args.cache or xbench_home() / "fastrm", settings)
    data.check_tasks()  # before loading the model
    data.vlm = load_vlm(
        args.model, plugins.registries, needs=frozenset(reference.needs | {"hidden_states"}), device=args.device
    )
    return data


def _train_config(args, head: str | None = None, device: str = "cpu"):
    """The training recipe of the command line; the proxy trains on ``device``."""
    from xbench.fastrm.train import TrainConfig

    return TrainConfig(
        head=head or args.head,
        head_params=parse_params(getattr(args, "head_param", None), "--head-param"),
        tau=args.tau,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed if args.train_seed is None else args.train_seed,
        eval_every=min(args.eval_every, args.steps),
        aux_weight=args.aux_weight,
        ema=args.ema or None,
        shuffle_buffer_mb=getattr(args, "shuffle_buffer_mb", TrainConfig.shuffle_buffer_mb),
        device=device,
    )


# --------------------------------------------------------------------------- subcommands


def _evaluate(args) -> int:
    from xbench.fastrm.evaluate import evaluate, score_report
    from xbench.fastrm.proxy import FastRMProxy

    proxy = FastRMProxy.load(args.proxy)
    ctx = _context(args)
    proxy.check_compatible(ctx.vlm, where=str(args.proxy))
    test = ctx.test()
    if args.eval_filter:
        test = test.where(*args.eval_filter)
    res = evaluate(proxy, test, args.tau)
    res["confidence_task"] = ctx.confidence(args.proxy, args.confidence_samples)
    print(score_report(f"FastRM {proxy.head_name} ({args.proxy}) vs {ctx.reference.label}", res))
    if args.output:
        args.output.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def _ablate(args) -> int:
    from xbench.fastrm import ablate
    from xbench.fastrm.proxy import model_identity

    ablate.check_tables(args.tables)
    ctx = _context(args)
    t0 = time.perf_counter()
    train, val = ctx.train_val()
    test = ctx.test()
    t_labels = time.perf_counter() - t0
    trainer = ablate.Trainer(train, val, model_identity(ctx.vlm), not args.no_progress, _log)
    base = _train_config(args, head=args.heads[0])
    grids = ablate.Grids(args.taus, args.fractions, args.step_grid, args.transfer_key, args.transfer_groups)
    inputs = ablate.Inputs(trainer, test, base, args.heads, grids, {f"{args.task}/{args.test_split}": test})
    command = ablate.command_line(vars(args), _defaults("ablate"))
    for path in ablate.write_tables(args.tables, inputs, args.out,
                                    _ablation_setup(args, ctx, train, val, test, base, command), t_labels):  # fmt: skip
        print(f"wrote {path}")
    return 0


def _paper(args) -> int:
    """``xbench fastrm paper`` (:func:`xbench.fastrm.paper.run`)."""
    from xbench.fastrm import paper

    return paper.run(args)


def _defaults(*words: str) -> dict:
    """The parsed defaults of ``xbench fastrm <words>`` (a subcommand and its required options)."""
    from xbench.cli import build_parser

    return vars(build_parser().parse_args(["fastrm", *words]))


def _ablation_setup(args, ctx, train, val, test, base, command: str) -> dict:
    """What every ablation table records about how it was made (``command``: the one that remakes it)."""
    from xbench.fastrm import ablate

    heads, aux = ablate.head_setup(args.heads, args.aux_weight)
    return {
        "model": f"{ctx.vlm.name} (model hash {ctx.vlm.model_hash})",
        "task": f"{args.task}: train {len(train)} from {args.train_split}"
        + "".join(f" + a copy with {extra}" for extra in args.augment or [])
        + (" (size fractions count the plain samples first, then the copies)" if args.augment else "")
        + f", val {len(val)} from the {ctx.plan.val_from()}, test {len(test)} from {args.test_split}",
        "reference": ctx.reference.label,
        "heads": heads,
        "training": f"{args.steps} steps, batch {args.batch_size}, AdamW lr {args.lr}, seed {base.seed}, "
        f"BCE with positive-class weighting + map KL (weight {aux}), decision threshold by validation F1"
        + (f", weight average (decay {base.ema})" if base.ema else ", last weights"),
        "metrics": "per patch, pooled over test samples, against the reference min-max normalised and binarised at tau",
        "command": command,
    }


def _install(args) -> int:
    from xbench.fastrm.proxy_store import install

    print(f"installed {install(args.proxy)}")
    return 0


def _fastrm_args(p: argparse.ArgumentParser) -> None:
    from xbench.fastrm.ablate import ABLATE_TABLES
    from xbench.fastrm.cli_train import labels_command, store_options, streaming_options, train_command
    from xbench.fastrm.heads import HEADS
    from xbench.fastrm.proxy_store import DEFAULT_HEAD

    sub = p.add_subparsers(dest="fastrm_command", required=True)
    lab = sub.add_parser("labels", help="compute (or find cached) reference labels and hidden states")
    _common(lab)
    store_options(lab)
    lab.set_defaults(fastrm_func=labels_command)

    tr = sub.add_parser("train", help="train a proxy, score it on held-out samples, save it")
    _common(tr)
    store_options(tr)
    streaming_options(tr)
    tr.add_argument(
        "--head",
        default=DEFAULT_HEAD,
        choices=HEADS.names(),
        help=f"proxy head (default {DEFAULT_HEAD}; attention is the paper's)",
    )
    tr.add_argument("--head-param", action="append", metavar="KEY=VALUE", help="head parameter (e.g. dim=128)")
    tr.add_argument("--out", type=Path, required=True, help="proxy directory to write")
    tr.add_argument("--install", action="store_true", help="also make it the model's default proxy ($XBENCH_HOME)")
    tr.add_argument(
        "--train-filter", type=_filter, metavar="KEY=V1,V2", help="train only on samples whose meta[KEY] is listed"
    )
    tr.add_argument(
        "--eval-filter", type=_filter, metavar="KEY=V1,V2", help="score only samples whose meta[KEY] is listed"
    )
    tr.set_defaults(fastrm_func=train_command)

    ev = sub.add_parser("evaluate", help="score a proxy against the reference on held-out samples")
    _common(ev, recipe=None)
    store_options(ev)
    ev.add_argument("--proxy", type=Path, required=True)
    ev.add_argument("--eval-filter", type=_filter, metavar="KEY=V1,V2")
    ev.add_argument("--output", type=Path, help="write the scores as JSON")
    ev.set_defaults(fastrm_func=_evaluate)

    ab = sub.add_parser("ablate", help="labelling threshold, training-set size, steps and transfer tables")
    _common(ab, recipe=ABLATION_RECIPE)
    _table_options(ab, ABLATE_TABLES)
    ab.add_argument(
        "--transfer-key", default="kind", help="sample meta field the transfer groups split on (default kind)"
    )
    ab.add_argument(
        "--transfer-groups",
        type=_groups,
        default=_groups(TRANSFER_GROUPS),
        help=f"groups of meta values (default {TRANSFER_GROUPS!r})",
    )
    ab.add_argument("--out", type=Path, default=Path("results/fastrm"))
    ab.set_defaults(fastrm_func=_ablate, head_param=None)

    _paper_parser(sub)

    ins = sub.add_parser("install", help="make a proxy directory its model's default proxy")
    ins.add_argument("proxy", type=Path)
    ins.set_defaults(fastrm_func=_install)


def _table_options(p: argparse.ArgumentParser, tables) -> None:
    """The settings the ablation tables vary, and which ``tables`` to make (all by default)."""
    from xbench.fastrm.heads import HEADS
    from xbench.fastrm.proxy_store import DEFAULT_HEAD

    p.add_argument("--heads", type=_names, default=sorted(HEADS.names(), key=lambda h: h != DEFAULT_HEAD))
    p.add_argument("--taus", type=_floats, default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--fractions", type=_floats, default=[0.1, 0.25, 0.5, 1.0])
    p.add_argument("--step-grid", type=_ints, default=[500, 1000, 2000, 4000])
    p.add_argument("--tables", type=_names, default=list(tables), help=f"default {','.join(tables)}")


def _paper_parser(sub) -> None:
    from xbench.fastrm import paper

    pp = sub.add_parser(
        "paper",
        help="the FastRM paper's tables: train on VQA v2, score on VQA v2, GQA and POPE, with the ablations",
        description="Label VQA v2's training split with the reference, train a proxy per head, score it on VQA v2's "
        "held-out split, GQA and POPE, and write the transfer and ablation tables (markdown + json) under --out.",
    )
    _common(pp, recipe=ABLATION_RECIPE, task=False)
    _table_options(pp, paper.PAPER_TABLES)
    for flag, what in (("--vqa-v2", "VQA v2"), ("--gqa", "GQA"), ("--pope", "POPE")):
        pp.add_argument(flag, type=Path, required=True, metavar="DIR", help=f"local {what} files (official layout)")
    pp.add_argument("--gqa-split", default=paper.GQA_SPLIT, help=f"GQA split scored (default {paper.GQA_SPLIT})")
    pp.add_argument("--pope-splits", type=_names, default=list(paper.POPE_SPLITS),
                    help=f"POPE splits scored (default {','.join(paper.POPE_SPLITS)})")  # fmt: skip
    pp.add_argument("--out", type=Path, default=Path("results/fastrm/paper"))
    pp.add_argument("--proxies", type=Path, help="where every trained proxy is saved (default <out>/proxies)")
    pp.set_defaults(fastrm_func=_paper, head_param=None, task=paper.TRAIN_TASK, task_param=None,
                    train_split=paper.TRAIN_SPLIT, test_split=paper.HELDOUT_SPLIT)  # fmt: skip


@command("fastrm", _fastrm_args)
def cmd_fastrm(args: argparse.Namespace) -> int:
    """FastRM proxies: compute labels, train, evaluate, ablate, make the paper's tables, install."""
    return args.fastrm_func(args)
