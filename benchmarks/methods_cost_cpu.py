"""Per method: explain time per sample and peak memory on the default model, on CPU.

Each method runs as its own ``xbench run`` in a fresh process (peak RSS is a per-process
high-water mark), batch size 1, after the runner's untimed warm-up batch, with the method's
default parameters. Figures come from the run summaries: explain time p50 / p95 and mean,
peak RSS of the process, and its excess over the ``uniform`` baseline's run (same model and
data, a method that costs nothing); peak GPU memory is null off-GPU. One torch thread by
default: on a shared 2-core machine, 2 threads made the same runs 10-60x slower and erratic.

    python benchmarks/methods_cost_cpu.py [--limit 12] [--model NAME] [--methods a,b]
    -> results/methods_cost/<model>-cpu.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_method(method: str, model: str, limit: int, out: Path, threads: int) -> dict:
    cmd = [sys.executable, "-m", "xbench.cli", "run", "--method", method, "--model", model, "--limit", str(limit),
           "--batch-size", "1", "--device", "cpu", "--out", str(out), "--no-progress", "--metrics", ""]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{method}: xbench run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]
    ok = [r for r in records if "error" not in r]
    m = summary["metrics"]
    return {
        "n": len(ok),
        "errors": summary["n_errors"],
        "explain_ms_p50": m["explain_ms_p50"]["value"],
        "explain_ms_p95": m["explain_ms_p95"]["value"],
        "explain_ms_mean": sum(r["explain_ms"] for r in ok) / len(ok),
        "generate_ms_p50": m["generate_ms_p50"]["value"],
        "peak_rss_mib": m["peak_rss_mib"]["value"],
        "explain_peak_gpu_mib": m["explain_peak_gpu_mib"]["value"],
        "params": summary["method"]["params"],
        "device_name": summary["provenance"]["device_name"],
        "git_sha": summary["provenance"]["git_sha"],
    }


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    from xbench import provenance
    from xbench.plugins import default
    from xbench.runner import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--limit", type=int, default=12, help="samples per method (default 12)")
    p.add_argument("--methods", help="comma-separated (default: every registered method)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (OMP_NUM_THREADS; default 1: on a shared machine more threads wait on each other)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "methods_cost")
    args = p.parse_args(argv)
    methods = args.methods.split(",") if args.methods else default().registries.methods.names()
    if "uniform" not in methods:
        methods = ["uniform"] + methods
    load_before = os.getloadavg()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            rows[method] = run_method(method, args.model, args.limit, Path(tmp) / method, args.threads)
            print(f"{method:22s} {rows[method]['explain_ms_p50']:10.1f} ms p50  peak RSS {rows[method]['peak_rss_mib']:.0f} MiB",
                  flush=True)
    floor = rows["uniform"]["peak_rss_mib"]
    for r in rows.values():
        r["peak_rss_over_uniform_mib"] = r["peak_rss_mib"] - floor
    report = {
        "what": "explain time per sample and peak memory per method (CPU)",
        "model": args.model,
        "device_name": rows["uniform"]["device_name"],
        "threads": args.threads,
        "samples_per_method": args.limit,
        "load_average_before_after": [load_before, os.getloadavg()],
        "methods": rows,
        "environment": provenance.environment("cpu"),
        "finished": provenance.now(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.model).name) + "-cpu"
    (args.out / f"{slug}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{slug}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    from tabulate import tabulate

    rows = [[name, f"{v['explain_ms_p50']:.1f}", f"{v['explain_ms_p95']:.1f}", f"{v['explain_ms_mean']:.1f}",
             f"{v['peak_rss_mib']:.0f}", f"{v['peak_rss_over_uniform_mib']:+.0f}", "null" if v["explain_peak_gpu_mib"] is None
             else f"{v['explain_peak_gpu_mib']:.0f}"] for name, v in sorted(r["methods"].items(), key=lambda kv: kv[1]["explain_ms_p50"])]
    table = tabulate(rows, headers=["method", "explain ms p50", "p95", "mean", "peak RSS MiB", "vs uniform", "peak GPU MiB"],
                     tablefmt="github")
    la = r["load_average_before_after"]
    return (
        f"# {r['what']}\n\nModel {r['model']}; device {r['device_name']}, {r['threads']} torch threads; "
        f"{r['samples_per_method']} samples per method, batch size 1, default parameters, each method in a fresh process "
        f"after an untimed warm-up.\nHost load average (1/5/15 min) before {la[0][0]:.1f}/{la[0][1]:.1f}/{la[0][2]:.1f}, "
        f"after {la[1][0]:.1f}/{la[1][1]:.1f}/{la[1][2]:.1f}: the machine was shared, so times are indicative.\n\n"
        f"{table}\n\ngit {r['environment']['git_sha']}, torch {r['environment']['torch']}, "
        f"transformers {r['environment']['transformers']}, captum {r['environment']['captum']}, {r['finished']}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
