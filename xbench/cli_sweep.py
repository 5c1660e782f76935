"""``xbench sweep SUITE.toml``: run a grid of models x tasks x methods x seeds (see :mod:`xbench.sweep`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xbench.cli import command


def _sweep_args(p: argparse.ArgumentParser) -> None:
    from xbench.sweep import EXECUTORS

    p.add_argument("suite", type=Path, help="suite file (TOML): models, tasks, methods, seeds, [run] options")
    p.add_argument("--executor", default="local", choices=EXECUTORS.names(), help="where cells run (default local)")
    p.add_argument("--address", help="Ray cluster address for --executor ray (default: start a local instance)")
    p.add_argument("--out", type=Path, help="sweep folder (default runs/<suite file name>)")
    p.add_argument("--dry-run", action="store_true", help="validate the suite and list its cells without running")


@command("sweep", _sweep_args)
def cmd_sweep(args: argparse.Namespace) -> int:
    """Run every cell of a suite; complete cells are skipped, failed cells recorded (exit 1 if any failed)."""
    from xbench.sweep import INDEX, is_complete, make_executor, prepare

    executor = make_executor(args.executor, args.address)
    planned = prepare(args.suite, args.out)
    if args.dry_run:
        for cell in planned.cells:
            print(f"{'complete' if is_complete(cell) else 'to run':8s}  {cell.key}")
        print(f"{len(planned.cells)} cells in {planned.out}")
        return 0
    print(f"sweep {args.suite}: {len(planned.cells)} cells on {executor.name}, folder {planned.out}", flush=True)
    counts = planned.execute(executor, echo=lambda line: print(line, flush=True))
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + f"; index: {planned.out / INDEX}")
    return 1 if counts.get("failed") else 0
