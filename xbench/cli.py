"""``xbench`` command line. Subcommands register themselves in :data:`COMMANDS`.

Errors the user can fix print one line (``xbench: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

from xbench.errors import ParameterError, XbenchError
from xbench.params import finite

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}
#: modules whose ``@command`` functions join the CLI (imported when the parser is built)
COMMAND_MODULES: tuple[str, ...] = (
    "xbench.cli_sweep",
    "xbench.report",
    "xbench.show",
    "xbench.zoo.commands",
    "xbench.fastrm.cli",
)


def command(name: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args) -> exit code`` as subcommand ``name``."""

    def deco(fn):
        COMMANDS[name] = (add_arguments, fn)
        return fn

    return deco


def _refuse_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def parse_value(text: str):
    """``--param`` values: JSON when it parses (numbers, true/false, lists), else the string.

    A non-finite number (``NaN``, ``Infinity``, ``-Infinity``, or one too large for a float such
    as ``1e999``) is a :class:`ParameterError`; quote it as JSON (``'"NaN"'``) to mean the text."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        if not str(exc).startswith("non-finite number"):
            return text
        value = math.nan
    if not finite(value):
        what = "holds a non-finite number" if text.strip()[:1] in ("[", "{") else "is not a finite number"
        raise ParameterError(f"{text!r} {what}")
    return value


def parse_params(pairs: list[str] | None, flag: str) -> dict:
    """``KEY=VALUE`` pairs as a dict of :func:`parse_value` values; errors name ``flag`` and the key."""
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParameterError(f"{flag} expects key=value, got {pair!r}")
        try:
            params[key.strip()] = parse_value(value)
        except ParameterError as exc:
            raise ParameterError(f"{flag} {key.strip()}: {exc} (NaN and infinities are refused)") from None
    return params


def checked(convert, ok, expected: str):
    """An argparse ``type``: ``convert(text)``, refused with "expected <expected>, got '<text>'"
    when it fails or ``ok`` rejects the value."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = checked(int, lambda v: v >= 1, "a positive integer")


# --------------------------------------------------------------------------- run
def _run_args(p: argparse.ArgumentParser) -> None:
    from xbench.runner import DEFAULT_MODEL, DEFAULT_REFERENCE, DEFAULT_TASK

    p.add_argument("--method", required=True, help="explanation method (see `xbench plugins`)")
    p.add_argument("--task", default=DEFAULT_TASK, help=f"task adapter (default {DEFAULT_TASK})")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name or local HF directory (default {DEFAULT_MODEL})")
    p.add_argument("--split", help="task split (default: the task's first)")
    p.add_argument("--data-dir", default=os.environ.get("XBENCH_DATA_DIR"), help="task data directory ($XBENCH_DATA_DIR)")
    p.add_argument("--limit", type=positive_int, help="number of samples (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="run directory (default runs/<method>-<task>-<model>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue a run, skipping recorded sample ids")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--task-param", action="append", metavar="KEY=VALUE", help="task parameter (repeatable)")
    p.add_argument("--metrics", help="comma-separated metric names or presets: default (used when the option is not "
                   "given: every metric that declares that preset), all, a category such as faithfulness, or another "
                   "preset a metric declares")
    p.add_argument("--metric-param", action="append", metavar="KEY=VALUE",
                   help="metric parameter, given to every metric that declares KEY (e.g. tau=0.3, steps=16)")
    p.add_argument("--reference", default=DEFAULT_REFERENCE,
                   help=f"reference method of the agreement metrics, run on the same generations (default {DEFAULT_REFERENCE})")
    p.add_argument("--reference-param", action="append", metavar="KEY=VALUE", help="reference method parameter")
    p.add_argument("--reference-run", type=Path,
                   help="read the reference maps from this earlier run of the same model, task and samples")
    p.add_argument("--control", choices=["randomized"],
                   help="also explain on a seeded random-weight copy of the model; map metrics get a name@control column")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--dtype", help="float32, bfloat16, float16 (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--max-new-tokens", type=positive_int)
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up batches (default 1)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing sample")
    p.add_argument("--no-progress", action="store_true")


@command("run", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    """Run one method on one task and model; write records and a summary."""
    from xbench.runner import RunConfig, run

    config = RunConfig(
        method=args.method,
        task=args.task,
        model=args.model,
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        out=args.out,
        resume=args.resume,
        split=args.split,
        data_dir=args.data_dir,
        method_params=parse_params(args.param, "--param"),
        task_params=parse_params(args.task_param, "--task-param"),
        metrics=[m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None,
        device=args.device,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        warmup=args.warmup,
        fail_fast=args.fail_fast,
        progress=not args.no_progress,
        metric_params=parse_params(args.metric_param, "--metric-param"),
        reference=args.reference,
        reference_params=parse_params(args.reference_param, "--reference-param"),
        reference_run=args.reference_run,
        control=args.control,
    )
    summary = run(config)
    digest = summary["error_digest"]
    common = "" if digest is None else f" (most common, {digest['most_common_count']}x: {digest['most_common']})"
    print(f"run {summary['run_id']}: {summary['n_ok']} samples explained, {summary['n_errors']} errors{common}")
    print(f"records: {Path(summary['config']['out']) / 'samples.jsonl'}")
    for name, m in summary["metrics"].items():
        if m["value"] is not None:
            print(f"  {name:28s} {m['value']:.4g}")
    t = summary["timings"]
    share = "" if t["harness_share_after_load"] is None else f", harness {100 * t['harness_share_after_load']:.0f}% after load"
    print(f"time: {t['wall_s']:.1f} s wall, model load {t['model_load_s']:.1f} s, generate {t['generate_s']:.1f} s, "
          f"explain {t['explain_s']:.1f} s, reference/control {t['companions_s']:.1f} s, metrics {t['metrics_s']:.1f} s"
          + share)
    if summary["n_records"] and not summary["n_ok"]:
        print(f"xbench: error: every sample failed; the first, {digest['first_id']!r}: {digest['first']}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- leaderboard
def _leaderboard_args(p: argparse.ArgumentParser) -> None:
    from xbench.leaderboard import FORMATS

    p.add_argument("dir", nargs="?", default="results", type=Path, help="folder of runs (default results)")
    p.add_argument("--format", default="github", choices=FORMATS)
    p.add_argument("--task", help="only this task")
    p.add_argument("--sort-by", help="metric column to sort by (best first)")
    p.add_argument("--columns", help="'all', or comma-separated fnmatch patterns of the columns to show, e.g. "
                   "'accuracy,agreement_f1*,*_ms_p50' ('[[]' matches a literal '['); default: the headline table "
                   "(csv/json: every column)")
    p.add_argument("--output", type=Path, help="write to this file instead of stdout")


@command("leaderboard", _leaderboard_args)
def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Tables of methods x metrics, one per task and model, from run summaries."""
    from xbench.leaderboard import render

    text = render(args.dir, args.format, args.task, args.sort_by, args.columns)
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------- plugins
@command("plugins", lambda p: None)
def cmd_plugins(args: argparse.Namespace) -> int:
    """Every registered method, task, metric, model and model family with its plugin."""
    from tabulate import tabulate

    from xbench.plugins import REGISTRATION_HOOKS, default

    plugins = default()
    rows = []
    for attr in REGISTRATION_HOOKS.values():
        registry = getattr(plugins.registries, attr)
        for e in registry:
            rows.append([registry.kind, e.name, e.origin, getattr(e.obj, "description", "")])
    print(tabulate(rows, headers=["kind", "name", "from", "description"], tablefmt="github"))
    for msg in plugins.broken.values():
        print(f"broken: {msg}")
    return 0


# --------------------------------------------------------------------------- main
def build_parser(only: set[str | None] | None = None) -> argparse.ArgumentParser:
    """The ``xbench`` parser; ``only``: the subcommands whose options are added (default all).

    The others get their one-line help but no options, since a command's options may import
    heavy modules (torch): ``main`` adds only the command being run, so ``xbench --help``,
    ``xbench run --help`` and argparse's errors start without importing torch."""
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="xbench", description="Benchmark explanation methods on VLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0], description=fn.__doc__)
        if only is None or name in only:
            add_arguments(p)
        p.set_defaults(func=fn)
    return parser


def requested_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option (the top level has only -h)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only={requested_command(argv)})
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except XbenchError as exc:
        print(f"xbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if os.environ.get("XBENCH_DEBUG"):
            raise
        print(f"xbench: internal error: {type(exc).__name__}: {exc} (set XBENCH_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    # ``python -m xbench.cli``: use the importable module, where COMMAND_MODULES register their commands
    from xbench.cli import main as _main

    sys.exit(_main())
