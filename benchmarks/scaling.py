"""Scaling of one run with its number of samples: wall time and peak RSS, each size in a fresh process.

Each point runs ``python -m xbench.cli run`` in a new process (peak RSS is a per-process
high-water mark, so every size needs its own process) and reads that child's own
``ru_maxrss`` from ``os.wait4``. Wall time covers the whole process: start-up, imports and
model loading give the fit's intercept ``a``, the per-sample cost its slope ``b`` in
``time = a + b * n``.

    python benchmarks/scaling.py                      # 100 250 500 1000 2000 samples, raw_attention
    python benchmarks/scaling.py --sizes 50 100 --out /tmp/scaling

Writes ``<out>/scaling.json`` and ``<out>/scaling.md`` (default ``results/scaling``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def position_trend(samples: Path) -> dict:
    """Median per-sample compute (generate + explain, ms) in the first and last fifth of a run.

    Equal medians mean a sample costs the same however many came before it: time is
    linear in n whatever the load on the machine was.
    """
    per = [r["generate_ms"] + r["explain_ms"] for r in map(json.loads, samples.read_text().splitlines()) if "error" not in r]
    k = max(len(per) // 5, 1)
    first, last = float(np.median(per[:k])), float(np.median(per[-k:]))
    return {"first_fifth_ms": round(first, 2), "last_fifth_ms": round(last, 2), "last_over_first": round(last / first, 3)}


def measure(n: int, args: argparse.Namespace, work: Path) -> dict:
    """One run of ``n`` samples in a fresh process: wall seconds, child peak RSS, its summary."""
    out = work / f"n{n}"
    cmd = [sys.executable, "-m", "xbench.cli", "run", "--method", args.method, "--model", args.model, "--task", args.task,
           "--limit", str(n), "--batch-size", str(args.batch_size), "--warmup", "1", "--no-progress",
           "--device", args.device, "--out", str(out)]  # fmt: skip
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    load_before = load_average()
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    stderr = child.stderr.read().decode()
    child.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run of {n} samples failed:\n{stderr}")
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]
    return {
        "n": n,
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "n_ok": summary["n_ok"],
        "n_errors": summary["n_errors"],
        "explain_ms_p50": m.get("explain_ms_p50", {}).get("value"),
        "generate_ms_p50": m.get("generate_ms_p50", {}).get("value"),
        "load_average_before": load_before,
        "position_trend": position_trend(out / "samples.jsonl"),
        "device_name": summary["provenance"]["device_name"],
    }


def fit(points: list[dict], key: str = "wall_s") -> dict:
    """Least squares ``points[key] = a + b n`` and its R^2."""
    n = np.array([p["n"] for p in points], dtype=float)
    t = np.array([p[key] for p in points], dtype=float)
    b, a = np.polyfit(n, t, 1)
    pred = a + b * n
    r2 = 1.0 - float(((t - pred) ** 2).sum()) / float(((t - t.mean()) ** 2).sum())
    return {"a_s": round(float(a), 3), "b_s_per_sample": round(float(b), 5), "r2": round(r2, 5)}


def write(points: list[dict], args: argparse.Namespace, out: Path) -> dict:
    from xbench import provenance

    out.mkdir(parents=True, exist_ok=True)
    linear, cpu = fit(points), fit(points, "cpu_s")
    first, last = points[0], points[-1]
    growth = (last["peak_rss_mib"] - first["peak_rss_mib"]) / first["peak_rss_mib"]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "what": "wall time and peak RSS of one `xbench run` vs number of samples, each size in a fresh process",
        "method": args.method,
        "model": args.model,
        "task": args.task,
        "batch_size": args.batch_size,
        "device": args.device,
        "threads": args.threads,
        "device_name": first["device_name"],
        "cpu": provenance.cpu_model(),
        "cpu_count": os.cpu_count(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "fit": linear,
        "fit_cpu_time": cpu,
        "peak_rss_growth": round(growth, 4),
        "peak_rss_within_5pct": abs(growth) <= 0.05,
        "points": points,
    }
    (out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {p['n']} | {p['wall_s']:.1f} | {linear['a_s'] + linear['b_s_per_sample'] * p['n']:.1f} | "
        f"{p['cpu_s']:.1f} | {p['peak_rss_mib']:.1f} | {p['explain_ms_p50']:.1f} | {p['generate_ms_p50']:.1f} | "
        f"{p['position_trend']['first_fifth_ms']:.0f} / {p['position_trend']['last_fifth_ms']:.0f} | {p['n_ok']} | {p['load_average_before']} |"
        for p in points
    )
    md = f"""# Scaling: wall time and peak RSS vs number of samples

`xbench run --method {args.method} --model {args.model} --task {args.task} --batch-size {args.batch_size} --warmup 1
--device {args.device}`{f" with OMP_NUM_THREADS={args.threads}" if args.threads else ""}, each size in a fresh process
(`python benchmarks/scaling.py{f" --threads {args.threads}" if args.threads else ""}`), commit {commit}, {result['date']}.
Device: {first['device_name']}; CPU: {result['cpu']} ({result['cpu_count']} cores, shared with other jobs: the
load average before each point is listed).

| samples | wall (s) | fit (s) | CPU time (s) | peak RSS (MiB) | explain p50 (ms) | generate p50 (ms) | sample ms, first / last fifth | ok | load avg before |
|---|---|---|---|---|---|---|---|---|---|
{rows}

- Fit: wall = {linear['a_s']:.2f} s + {linear['b_s_per_sample'] * 1000:.2f} ms x n, R^2 = {linear['r2']:.4f}
  (the intercept is process start-up, imports and model loading).
- CPU time of the child (user + system): {cpu['a_s']:.2f} s + {cpu['b_s_per_sample'] * 1000:.2f} ms x n,
  R^2 = {cpu['r2']:.4f} (less sensitive than wall time to other jobs on the same cores).
- Peak RSS from {first['n']} to {last['n']} samples: {first['peak_rss_mib']:.1f} -> {last['peak_rss_mib']:.1f} MiB,
  {growth * 100:+.2f}% ({'within' if result['peak_rss_within_5pct'] else 'NOT within'} 5%).
"""
    (out / "scaling.md").write_text(md)
    return result


def main(argv: list[str] | None = None) -> int:
    from xbench.runner import DEFAULT_MODEL, DEFAULT_TASK

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000, 2000])
    p.add_argument("--method", default="raw_attention")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--task", default=DEFAULT_TASK)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="OMP/MKL threads of each run (default: torch's choice); 1 keeps "
                   "CPU time meaningful on cores shared with other jobs")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "scaling")
    args = p.parse_args(argv)
    if len(set(args.sizes)) < 2:
        p.error("--sizes needs at least two different sizes to fit a line")
    points = []
    with tempfile.TemporaryDirectory(prefix="xbench-scaling-") as tmp:
        for n in args.sizes:
            points.append(measure(n, args, Path(tmp)))
            print(json.dumps(points[-1]), flush=True)
    result = write(points, args, args.out)
    print(json.dumps({k: result[k] for k in ("fit", "peak_rss_growth", "peak_rss_within_5pct")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
