"""``xbench zoo list`` and ``xbench zoo train NAME --out DIR``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from xbench.cli import command, positive_int
from xbench.errors import ParameterError, RunDirectoryError

def _zoo_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="zoo_command", required=True)
    sub.add_parser("list", help="named models: shipped, built offline, or trainable")
    t = sub.add_parser("train", help="train a zoo model from scratch into --out")
    t.add_argument("name", help="a zoo model that names a trainer (see `xbench zoo list`)")
    t.add_argument("--out", type=Path, required=True, help="new directory for the model (Hugging Face layout)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--warmup-steps", type=int, help="steps of the auxiliary shape/colour warm-up (default 800)")
    t.add_argument("--qa-steps", type=int, help="steps of question-answering training (default 2500)")
    t.add_argument("--threads", type=positive_int, help="torch CPU threads (default 1)")
    t.add_argument("--eval-limit", type=positive_int, help="evaluate on the first N test questions (default: all)")
    t.add_argument("--no-progress", action="store_true")


@command("zoo", _zoo_args)
def cmd_zoo(args: argparse.Namespace) -> int:
    """The model zoo: list named models, or train one (`xbench zoo train tiny-llava-easyvqa --out DIR`)."""
    if args.zoo_command == "list":
        return _list()
    return _train(args)


def _list() -> int:
    from tabulate import tabulate

    from xbench.plugins import default

    rows = []
    for e in default().registries.models:
        spec = e.obj
        how = "shipped" if getattr(spec, "shipped", None) else "built offline" if getattr(spec, "build", None) else "?"
        trainable = "yes" if spec.trainer else ""
        rows.append([e.name, how, trainable, e.origin, spec.description])
    print(tabulate(rows, headers=["name", "weights", "trainable", "from", "description"], tablefmt="github"))
    return 0


def _train(args: argparse.Namespace) -> int:
    import importlib

    from xbench.plugins import default

    spec = default().registries.models.get(args.name)  # an unknown name: did-you-mean
    if not spec.trainer:
        trainable = [e.name for e in default().registries.models if e.obj.trainer]
        raise ParameterError(f"zoo model {args.name!r} cannot be trained by xbench; trainable: {trainable}")
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise RunDirectoryError(f"--out {out} is not empty; choose a new directory")
    module = importlib.import_module(spec.trainer)
    recipe = module.recipe_from_args(
        args.seed, args.warmup_steps, args.qa_steps, threads=args.threads, eval_limit=args.eval_limit
    )
    command_line = "xbench " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["zoo"] else None
    info = module.train_and_save(out, recipe, progress=not args.no_progress, command=command_line)
    print(f"wrote {out} ({info['parameters']:,} parameters, {info['wall_s']['total']:.0f} s)")
    test = info.get("test")
    if test:
        print(f"  test accuracy {test['accuracy']:.4f} on {test['n']:,} questions")
        for kind, v in test["by_kind"].items():
            print(f"    {kind:16s} {v['accuracy']:.4f}  (n={v['n']:,})")
    return 0
