"""``xbench fastrm labels|train|evaluate|ablate|install``: the proxy lifecycle from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xbench.cli import checked, command, parse_params, positive_int
from xbench.errors import ParameterError

#: easy-vqa's question kinds (tasks/easyvqa.py question_kind): open questions vs yes/no probes
TRANSFER_GROUPS = "open=colour,shape;yes/no=yes/no colour,yes/no shape"
DEFAULT_REFERENCE = "gradient_relevancy"
ABLATION_TABLES = ("threshold", "size", "steps", "transfer")
#: ``xbench fastrm labels|train`` defaults: the recipe of the default model's shipped attention
#: proxy (easy-vqa has 38,575 training questions; validation comes from the test split's questions
#: on the 366 of its 1,000 images that the 1,000 test questions do not show; the proxy ends with
#: the moving average of its weights, decay 0.9999)
TRAIN_RECIPE = {"samples": 38000, "steps": 160000, "ema": 0.9999}
#: ``xbench fastrm ablate`` defaults: a shorter base recipe, so that every table (every head,
#: every setting) is made in about half an hour on two CPU cores
ABLATION_RECIPE = {"samples": 23500, "steps": 4000}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def _common(p: argparse.ArgumentParser, recipe: dict | None = TRAIN_RECIPE) -> None:
    """The options every fastrm command shares; with a ``recipe``, the training ones too."""
    from xbench.runner import DEFAULT_MODEL, DEFAULT_TASK

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name or HF directory (default {DEFAULT_MODEL})")
    p.add_argument("--task", default=DEFAULT_TASK, help=f"task adapter (default {DEFAULT_TASK})")
    p.add_argument("--task-param", action="append", metavar="KEY=VALUE", help="task parameter, every split (repeatable)")
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help=f"reference method (default {DEFAULT_REFERENCE})")
    p.add_argument("--reference-param", action="append", metavar="KEY=VALUE", help="reference method parameter")
    p.add_argument(
        "--threshold", "--tau", dest="tau", type=float, default=0.3, help="labelling threshold tau (default 0.3)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of sample order, proxy init and batches (default 0)")
    p.add_argument("--test-samples", type=positive_int, default=1000, help="held-out test samples (default 1000)")
    p.add_argument("--test-split", default="test", help="held-out split (default test)")
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
        samples, steps = recipe["samples"], recipe["steps"]
        p.add_argument("--samples", type=positive_int, default=samples, help=f"training samples (default {samples})")
        p.add_argument("--val-samples", type=positive_int, default=2000, help="validation samples (default 2000)")
        p.add_argument("--train-split", default="train", help="split to train on (default train)")
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


@dataclass
class Context:
    vlm: Any
    reference: Any
    cache: Path
    args: argparse.Namespace

    def task(self, split: str, extra: dict | None = None):
        """The task adapter on ``split`` with ``--task-param`` and ``extra`` parameters."""
        from xbench.plugins import default

        params = {**parse_params(self.args.task_param, "--task-param"), **(extra or {})}
        return default().registries.tasks.get(self.args.task)(split, **params)

    def labels(self, split: str, n: int, noise: bool, extra: dict | None = None):
        from xbench.fastrm.labels import build_labels

        task = self.task(split, extra)
        return build_labels(
            self.vlm,
            task,
            self.reference,
            n,
            seed=self.args.seed,
            cache_root=self.cache,
            batch_size=self.args.label_batch_size,
            noise_std=self.args.noise_std if noise else None,
            max_new_tokens=self.args.max_new_tokens,
            progress=not self.args.no_progress,
            log=_log,
        )

    def train_val(self):
        """``(train, val)``: the first ``--samples`` of the training split, plus each ``--augment``
        copy of them, and ``--val-samples`` validation samples (:meth:`val_from` says which)."""
        from xbench.fastrm.labels import LabelSet

        a = self.args
        if self.val_split == a.train_split:
            n = a.samples + a.val_samples
            train, val = self._split(self.labels(a.train_split, n, noise=False))
            held = set(val.positions)  # a copy keeps the samples the plain training set holds, never validation's
            copies = [c.subset([i for i, pos in enumerate(c.positions) if pos not in held])
                      for c in (self.labels(a.train_split, n, False, extra) for extra in a.augment or [])]  # fmt: skip
        else:
            train = self.labels(a.train_split, a.samples, noise=False)
            copies = [self.labels(a.train_split, a.samples, False, extra) for extra in a.augment or []]
            val = self._heldout_val()
        return (LabelSet.concat([train, *copies]) if copies else train), val

    @property
    def val_split(self) -> str:
        return self.args.val_split or self.args.test_split

    def val_from(self) -> str:
        a = self.args
        if self.val_split == a.train_split:
            return f"{a.train_split} split, the samples after the training ones (they may show training images)"
        if self.val_split == a.test_split:
            return f"{a.test_split} split, past the test samples, on images none of them shows"
        return f"{self.val_split} split"

    def _heldout_val(self):
        """``--val-samples`` of the validation split in its seeded order; on the test split, only
        samples past the test ones whose image (the task's ``image_key``) no test sample shows."""
        a = self.args
        on_test = self.val_split == a.test_split
        from xbench.plugins import default

        key = default().registries.tasks.get(a.task).image_key
        taken, seen = set(), set()
        if on_test:
            test = self.test()
            taken = set(test.ids)
            seen = {m.get(key, sid) for sid, m in zip(test.ids, test.meta)}
            if not any(key in m for m in test.meta):
                _log(f"warning: no test sample has meta {key!r} (the task's image_key): validation samples may "
                     "show test images")  # fmt: skip
        n, found = (a.test_samples + 2 * a.val_samples if on_test else a.val_samples), -1
        while True:
            data = self.labels(self.val_split, n, noise=on_test and a.noise_std > 0)
            keep = [i for i, (sid, m) in enumerate(zip(data.ids, data.meta))
                    if sid not in taken and m.get(key, sid) not in seen]  # fmt: skip
            if len(keep) >= a.val_samples or len(data) == found:  # enough, or the split is used up
                break
            found, n = len(data), 2 * n
        if not keep:
            raise ParameterError(
                f"no validation samples in the {self.val_from()}: ask for fewer --test-samples, or "
                f"validate on the training split (--val-split {a.train_split})"
            )
        if len(keep) < a.val_samples:
            _log(f"only {len(keep)} validation samples in the {self.val_from()}")
        return data.subset(keep[: a.val_samples])

    def _split(self, data):
        a = self.args
        if len(data) < 2:
            raise ParameterError(f"only {len(data)} labelled training samples")
        n_val = min(a.val_samples, len(data) // 5) if len(data) < a.samples + a.val_samples else a.val_samples
        return data.subset(range(len(data) - n_val)), data.subset(range(len(data) - n_val, len(data)))

    def test(self):
        return self.labels(self.args.test_split, self.args.test_samples, noise=self.args.noise_std > 0)

    def confidence(self, proxy_dir) -> dict | None:
        """Confidence AUROC on ``--confidence-samples`` held-out answers (None when 0)."""
        from xbench.fastrm.evaluate import confidence_on_task
        from xbench.plugins import default

        n = self.args.confidence_samples
        if not n:
            return None
        task = self.task(self.args.test_split)
        method = default().registries.methods.get("fastrm")(proxy=str(proxy_dir))
        return confidence_on_task(
            self.vlm,
            task,
            method,
            None if n < 0 else n,
            seed=self.args.seed,
            batch_size=self.args.label_batch_size,
            progress=not self.args.no_progress,
        )


def _context(args) -> Context:
    from xbench.models import load_vlm, xbench_home
    from xbench.plugins import default

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    plugins = default()
    reference = plugins.registries.methods.get(args.reference)(**parse_params(args.reference_param, "--reference-param"))
    probe = Context(None, reference, None, args)  # bad task or task parameters: fail before loading the model
    probe.task(args.test_split)
    if hasattr(args, "train_split"):
        probe.task(args.train_split)
        probe.task(probe.val_split)
    for extra in getattr(args, "augment", None) or []:
        probe.task(args.train_split, extra)
    vlm = load_vlm(
        args.model, plugins.registries, needs=frozenset(reference.needs | {"hidden_states"}), device=args.device
    )
    cache = args.cache or xbench_home() / "fastrm"
    return Context(vlm, reference, cache, args)


def _train_config(args, head: str | None = None):
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
    )


def _print_scores(title: str, res: dict) -> None:
    m, c, nc = res["map"], res["confidence"], res["noise_ceiling"]
    print(f"{title} ({res['n_samples']} samples, tau={res['tau']}, decision threshold {m['threshold']}):")
    print(
        "  "
        + "  ".join(
            f"{k}={m[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1", "iou", "auroc") if m[k] is not None
        )
    )
    if nc:
        print(
            f"  noise ceiling (reference vs itself under pixel noise): f1={nc['f1']:.4f} iou={nc['iou']:.4f} "
            f"accuracy={nc['accuracy']:.4f}"
        )
    for label, c in (("labelled samples", c), ("held-out answers", res.get("confidence_task"))):
        if c is None:
            continue
        auc = c["auroc_entropy_wrong"]
        print(
            f"  confidence on {label}: AUROC of map entropy for wrong answers = "
            f"{'n/a' if auc is None else f'{auc:.4f}'} ({c['n_wrong']} wrong of {c['n']})"
        )


# --------------------------------------------------------------------------- subcommands


def _labels(args) -> int:
    ctx = _context(args)
    started = time.perf_counter()
    train, val = ctx.train_val()
    te = ctx.test()
    print(
        f"labels: {len(train)} {args.train_split} + {len(val)} validation ({ctx.val_from()}) + {len(te)} "
        f"{args.test_split} samples in "
        f"{time.perf_counter() - started:.1f} s (cache {ctx.cache})"
    )
    return 0


def _train(args) -> int:
    from xbench.fastrm.evaluate import evaluate
    from xbench.fastrm.proxy import model_identity
    from xbench.fastrm.registry import install
    from xbench.fastrm.train import train_proxy

    ctx = _context(args)
    t0 = time.perf_counter()
    train, val = ctx.train_val()
    test = ctx.test()
    if args.train_filter:
        train, val = train.where(*args.train_filter), val.where(*args.train_filter)
    if args.eval_filter:
        test = test.where(*args.eval_filter)
    t_labels = time.perf_counter() - t0
    _log(f"training on {len(train)} samples, validating on {len(val)}, testing on {len(test)}")
    proxy, _ = train_proxy(
        train, val, _train_config(args), model_identity(ctx.vlm), progress=not args.no_progress, log=_log
    )
    t_train = time.perf_counter() - t0 - t_labels
    proxy.info["train"].update(augment=args.augment or [], val_from=ctx.val_from())
    res = evaluate(proxy, test, args.tau)
    proxy.info["test"] = res
    proxy.info["seconds"] = {"labels": t_labels, "train": t_train}
    out = proxy.save(args.out)
    res["confidence_task"] = ctx.confidence(out)
    if res["confidence_task"] is not None:
        proxy.info["test"] = res
        proxy.save(args.out)
    (out / "metrics.json").write_text(json.dumps(res, indent=2) + "\n")
    v = proxy.info.get("val")
    if v:
        print(
            f"validation ({len(val)} samples: {ctx.val_from()}; decision threshold {v['threshold']}): "
            + "  ".join(f"{k}={v[k]:.4f}" for k in ("accuracy", "f1", "auroc") if v[k] is not None)
        )
    _print_scores(f"FastRM {proxy.head_name} vs {ctx.reference.label} on {args.task}/{args.test_split}", res)
    print(f"labels {t_labels:.1f} s, training {t_train:.1f} s; proxy written to {out}")
    if args.install:
        print(f"installed as the default {proxy.head_name} proxy of {ctx.vlm.name}: {install(out)}")
    return 0


def _evaluate(args) -> int:
    from xbench.fastrm.evaluate import evaluate
    from xbench.fastrm.proxy import FastRMProxy

    proxy = FastRMProxy.load(args.proxy)
    ctx = _context(args)
    proxy.check_compatible(ctx.vlm, where=str(args.proxy))
    test = ctx.test()
    if args.eval_filter:
        test = test.where(*args.eval_filter)
    res = evaluate(proxy, test, args.tau)
    res["confidence_task"] = ctx.confidence(args.proxy)
    _print_scores(f"FastRM {proxy.head_name} ({args.proxy}) vs {ctx.reference.label}", res)
    if args.output:
        args.output.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def _ablate(args) -> int:
    from xbench.fastrm import ablate
    from xbench.fastrm.heads import HEADS
    from xbench.fastrm.proxy import model_identity

    unknown = set(args.tables) - set(ABLATION_TABLES)
    if unknown:
        raise ParameterError(f"unknown ablation table(s) {sorted(unknown)}; choose from {list(ABLATION_TABLES)}")
    ctx = _context(args)
    t0 = time.perf_counter()
    train, val = ctx.train_val()
    test = ctx.test()
    t_labels = time.perf_counter() - t0
    trainer = ablate.Trainer(train, val, model_identity(ctx.vlm), not args.no_progress, _log)
    base = _train_config(args, head=args.heads[0])
    aux = (
        "per head: " + ", ".join(f"{h} {HEADS[h].aux_weight:g}" for h in args.heads)
        if args.aux_weight is None
        else args.aux_weight
    )
    heads = "; ".join(f"{h} {HEADS[h].resolve_params({})}" for h in args.heads)  # parameters as trained
    setup = {
        "model": f"{ctx.vlm.name} (model hash {ctx.vlm.model_hash})",
        "task": f"{args.task}: train {len(train)} from {args.train_split}"
        + "".join(f" + a copy with {extra}" for extra in args.augment or [])
        + (" (size fractions count the plain samples first, then the copies)" if args.augment else "")
        + f", val {len(val)} from the {ctx.val_from()}, test {len(test)} from {args.test_split}",
        "reference": ctx.reference.label,
        "heads": heads,
        "training": f"{args.steps} steps, batch {args.batch_size}, AdamW lr {args.lr}, seed {base.seed}, "
        f"BCE with positive-class weighting + map KL (weight {aux}), decision threshold by validation F1"
        + (f", weight average (decay {base.ema})" if base.ema else ", last weights"),
        "metrics": "per patch, pooled over test samples, against the reference min-max normalised and binarised at tau",
        "command": _ablate_command(args),
    }
    tables = {
        "threshold": (
            "Labelling threshold (tau): proxy trained and scored at each tau",
            lambda: ablate.threshold_table(trainer, test, base, args.heads, args.taus),
        ),
        "size": (
            "Training-set size (tau fixed)",
            lambda: ablate.size_table(trainer, test, base, args.heads, args.fractions),
        ),
        "steps": (
            "Training steps (tau fixed)",
            lambda: ablate.steps_table(trainer, test, base, args.heads, args.step_grid),
        ),
        "transfer": (
            "Transfer across question types: trained on one, scored on each (training sets size-matched)",
            lambda: ablate.transfer_table(trainer, test, base, args.heads, args.transfer_key, args.transfer_groups),
        ),
    }
    for name in args.tables:
        title, make = tables[name]
        t = time.perf_counter()
        rows = make()
        path = ablate.write_table(
            args.out,
            f"ablation_{name}" if name != "transfer" else "transfer",
            title,
            rows,
            {
                **setup,
                "tau": args.tau if name != "threshold" else args.taus,
                "wall_seconds": round(time.perf_counter() - t, 1),
                "label_seconds": round(t_labels, 1),
            },
        )
        print(f"wrote {path}")
    return 0


def _joined(xs) -> str:
    return ",".join(str(x) for x in xs)


def _one(flag: str, value) -> list[str]:
    return [flag, str(value)]


def _comma_list(flag: str, values) -> list[str]:
    return [flag, _joined(values)]


def _each(flag: str, values) -> list[str]:
    return [w for v in values for w in (flag, v)]


def _each_pairs(flag: str, dicts) -> list[str]:
    return _each(flag, [_joined(f"{k}={v}" for k, v in d.items()) for d in dicts])


def _grouped(flag: str, groups) -> list[str]:
    return [flag, ";".join(f"{name}={_joined(values)}" for name, values in groups.items())]


#: what ``xbench fastrm ablate`` records of its options in the tables' command, as (dest, words):
#: the flag is ``--<dest with dashes>``. The recipe is recorded in full; the other options, every
#: one that can change a table, where they differ from their defaults.
ABLATE_RECIPE_OPTIONS = (
    ("model", _one), ("task", _one), ("reference", _one), ("samples", _one), ("val_samples", _one),
    ("test_samples", _one), ("steps", _one), ("batch_size", _one), ("lr", _one), ("seed", _one),
    ("tau", _one), ("heads", _comma_list), ("taus", _comma_list), ("fractions", _comma_list),
    ("step_grid", _comma_list), ("tables", _comma_list), ("out", _one),
)
ABLATE_OTHER_OPTIONS = (
    ("val_split", _one), ("train_seed", _one), ("train_split", _one), ("test_split", _one),
    ("weight_decay", _one), ("aux_weight", _one), ("ema", _one), ("noise_std", _one),
    ("max_new_tokens", _one), ("transfer_key", _one), ("transfer_groups", _grouped),
    ("task_param", _each), ("reference_param", _each), ("augment", _each_pairs),
)


def _ablate_command(args) -> str:
    """The ``xbench fastrm ablate`` command line that remakes these tables."""
    import shlex

    from xbench.cli import build_parser

    defaults = vars(build_parser().parse_args(["fastrm", "ablate"]))
    chosen = [(d, w) for d, w in ABLATE_OTHER_OPTIONS if getattr(args, d) not in (None, defaults[d])]
    words = ["xbench", "fastrm", "ablate"]
    for dest, to_words in (*ABLATE_RECIPE_OPTIONS, *chosen):
        words += to_words("--" + dest.replace("_", "-"), getattr(args, dest))
    return shlex.join(words)


def _install(args) -> int:
    from xbench.fastrm.registry import install

    print(f"installed {install(args.proxy)}")
    return 0


def _fastrm_args(p: argparse.ArgumentParser) -> None:
    from xbench.fastrm.heads import HEADS
    from xbench.fastrm.registry import DEFAULT_HEAD

    sub = p.add_subparsers(dest="fastrm_command", required=True)
    lab = sub.add_parser("labels", help="compute (or find cached) reference labels and hidden states")
    _common(lab)
    lab.set_defaults(fastrm_func=_labels)

    tr = sub.add_parser("train", help="train a proxy, score it on held-out samples, save it")
    _common(tr)
    tr.add_argument(
        "--head",
        default=DEFAULT_HEAD,
        choices=sorted(HEADS),
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
    tr.set_defaults(fastrm_func=_train)

    ev = sub.add_parser("evaluate", help="score a proxy against the reference on held-out samples")
    _common(ev, recipe=None)
    ev.add_argument("--proxy", type=Path, required=True)
    ev.add_argument("--eval-filter", type=_filter, metavar="KEY=V1,V2")
    ev.add_argument("--output", type=Path, help="write the scores as JSON")
    ev.set_defaults(fastrm_func=_evaluate)

    ab = sub.add_parser("ablate", help="labelling threshold, training-set size, steps and transfer tables")
    _common(ab, recipe=ABLATION_RECIPE)
    ab.add_argument("--heads", type=_names, default=sorted(HEADS, key=lambda h: h != "attention"))
    ab.add_argument("--taus", type=_floats, default=[0.1, 0.2, 0.3, 0.4, 0.5])
    ab.add_argument("--fractions", type=_floats, default=[0.1, 0.25, 0.5, 1.0])
    ab.add_argument("--step-grid", type=_ints, default=[500, 1000, 2000, 4000])
    ab.add_argument("--tables", type=_names, default=list(ABLATION_TABLES), help=f"default {','.join(ABLATION_TABLES)}")
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

    ins = sub.add_parser("install", help="make a proxy directory its model's default proxy")
    ins.add_argument("proxy", type=Path)
    ins.set_defaults(fastrm_func=_install)


@command("fastrm", _fastrm_args)
def cmd_fastrm(args: argparse.Namespace) -> int:
    """FastRM proxies: compute labels, train, evaluate, ablate, install."""
    return args.fastrm_func(args)
