"""The default run's speed: ``xbench run --method fastrm`` on the easy-vqa test split, and where
its wall time goes.

Three runs, each its own ``xbench run`` process with the CLI's defaults (default model and task,
batch size 4, one warm-up batch, the ``default`` metric preset):

1. ``default``: the whole test split (9,673 questions; ``--limit`` to shorten);
2. ``default-slice``: the default preset on the first ``--slice`` questions;
3. ``all-slice``: ``--metrics all`` (faithfulness curves included) on the same questions.

From each run's ``summary.json`` ``timings`` (:mod:`xbench.cost`): wall time, model load, warm-up,
generation, explanation, reference/control maps, metrics, and the harness's own time (wall minus
those) with its share of the wall time after model load (target <= 20%); plus the process's wall
time as the shell sees it (interpreter start, imports and writing the summary included).
The machine, its load before and after, and the commands are written beside the figures: other
processes on the machine inflate every time, so compare runs made side by side.

    python benchmarks/default_run.py [--limit N] [--slice 200] [--threads 1] [--out results/default-run]
    -> <out>/default-run.json, <out>/README.md, <out>/<run>-summary.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("model_load", "warmup", "generate", "explain", "companions", "metrics", "harness")


def run_xbench(name: str, extra: list[str], out: Path, threads: int) -> dict:
    """One ``xbench run --method fastrm`` process; its timings and the process's wall time."""
    cmd = [sys.executable, "-m", "xbench.cli", "run", "--method", "fastrm", "--out", str(out), "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    process_wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: xbench run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "command": "xbench " + " ".join(cmd[3:]).replace(str(out), "<out>"),
        "n_ok": summary["n_ok"],
        "n_errors": summary["n_errors"],
        "metrics": sorted(k for k, v in summary["metrics"].items() if v.get("category") != "cost"),
        "process_wall_s": process_wall,
        "timings": summary["timings"],
        "accuracy": summary["metrics"].get("accuracy", {}).get("value"),
        "summary": summary,
    }


def machine() -> dict:
    from xbench import provenance

    return {"cpu": provenance.cpu_model(), "cores": os.cpu_count(), "device": provenance.device_name("cpu"),
            "load_avg_1_5_15": list(os.getloadavg())}  # fmt: skip


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# The default run: wall time and the harness's share",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['device']}), OMP_NUM_THREADS={result['threads']}; "
        f"load average (1/5/15 min) {m['load_avg_1_5_15']} before, {result['load_after']} after.",
        f"Made {result['date']} at git {result['git_sha']} by `python benchmarks/default_run.py "
        f"{' '.join(result['argv'])}`.",
        "",
        result["load_note"],
        "",
        "| run | samples | process wall s | run wall s | " + " | ".join(f"{p} s" for p in PHASES)
        + " | harness share after load | s / sample after load |",
        "|---" * (6 + len(PHASES)) + "|",
    ]
    for name, r in result["runs"].items():
        t = r["timings"]
        per = (t["wall_s"] - t["model_load_s"]) / max(r["n_ok"] + r["n_errors"], 1)
        cells = [f"{t[p + '_s']:.1f}" for p in PHASES]
        lines.append(f"| {name} | {r['n_ok']} (+{r['n_errors']} errors) | {r['process_wall_s']:.1f} | {t['wall_s']:.1f} | "
                     + " | ".join(cells) + f" | {100 * t['harness_share_after_load']:.1f}% | {per:.4f} |")  # fmt: skip
    lines += ["", "Commands:", ""] + [f"- {name}: `{r['command']}`" for name, r in result["runs"].items()]
    lines += ["", "Phases (from each summary's `timings`, see xbench/cost.py): model_load = loading the model and "
              "its companions; warmup = the unrecorded first batch; generate / explain = the measured calls; "
              "companions = reference and control maps; metrics = every metric on every map; harness = the rest "
              "(data reading, records, bootstrap, summary).", ""]  # fmt: skip
    return "\n".join(lines)


def write(result: dict, out: Path) -> None:
    result["load_after"] = list(os.getloadavg())
    busy = max(result["machine"]["load_avg_1_5_15"][0], result["load_after"][0]) > (os.cpu_count() or 1)
    result["load_note"] = (
        "The machine was shared while these ran (load average above its core count): every time here is inflated "
        "by other processes and the lead may rerun it on an idle machine." if busy else
        "The machine was otherwise idle (load average at most its core count) before and after the runs.")  # fmt: skip
    (out / "default-run.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "README.md").write_text(markdown(result))


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    from xbench import provenance

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, help="questions of the default run (default: the whole split)")
    p.add_argument("--slice", type=int, default=200, help="questions of the default-vs-all comparison (default 200)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (default 1)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "default-run")
    args = p.parse_args(argv)
    result = {"argv": list(argv if argv is not None else sys.argv[1:]), "threads": args.threads,
              "date": provenance.now(), "git_sha": provenance.git_sha(), "machine": machine(), "runs": {}}  # fmt: skip
    plan = [("default-slice", ["--limit", str(args.slice)]),
            ("all-slice", ["--limit", str(args.slice), "--metrics", "all"]),
            ("default", [] if args.limit is None else ["--limit", str(args.limit)])]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in plan:  # results are written after each run: a cut-short benchmark keeps what it made
            r = run_xbench(name, extra, Path(tmp) / name, args.threads)
            (args.out / f"{name}-summary.json").write_text(json.dumps(r.pop("summary"), indent=2) + "\n")
            result["runs"][name] = r
            print(f"{name}: {r['n_ok']} ok, wall {r['timings']['wall_s']:.1f} s, harness "
                  f"{100 * r['timings']['harness_share_after_load']:.1f}% after load", flush=True)  # fmt: skip
            shutil.rmtree(Path(tmp) / name)
            write(result, args.out)
    print(f"wrote {args.out / 'default-run.json'} and {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
