"""FastRM beside gradient_relevancy and plain answers, side by side on the same samples (CPU).

Per sample (batch size 1, the model's default FastRM proxy, ``--threads`` torch threads):

* plain answer: ``vlm.generate`` keeping nothing (sdpa attention);
* FastRM-explained answer: ``vlm.generate`` keeping the last hidden states, then
  ``fastrm.explain`` (its time alone is the FastRM map time);
* gradient_relevancy map: ``gradient_relevancy.explain`` of the same generation on the same
  weights loaded with eager attention (it needs attention weights).

The three are interleaved sample by sample, each repeated ``--repeats`` times (order rotated),
after ``--warmup`` untimed samples; a sample's time is the minimum over its repeats (robust
to other processes on a shared machine), and the tables give medians over samples. Then the
same comparison from the runner's own records: ``xbench run`` with fastrm and with
gradient_relevancy on the same samples (batch 1), reading ``explain_ms`` / ``generate_ms``.

Targets (ANCHORS / issue): gradient_relevancy map time / FastRM map time >= 100x;
explained answer / plain answer latency <= 1.05x.

    python benchmarks/fastrm_cpu.py [--model NAME] [--limit 50] [--repeats 3] [--threads 2]
    -> results/fastrm/cpu_benchmark.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP_TARGET, LATENCY_TARGET = 100.0, 1.05


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def side_by_side(model: str, limit: int, repeats: int, warmup: int, progress: bool) -> dict:
    from tqdm.auto import tqdm

    from xbench.models import load_vlm
    from xbench.plugins import default
    from xbench.runner import DEFAULT_TASK

    reg = default().registries
    fast_vlm = load_vlm(model, reg, needs=frozenset({"hidden_states"}), device="cpu")
    eager_vlm = load_vlm(model, reg, needs=frozenset({"attentions"}), device="cpu")
    fastrm = reg.methods.get("fastrm")()
    reference = reg.methods.get("gradient_relevancy")()
    task = reg.tasks.get(DEFAULT_TASK)()
    samples = list(task.samples(limit=limit + warmup, seed=0))
    keep = frozenset({"hidden_states"})
    rows = []
    for i, s in enumerate(tqdm(samples, desc="samples", disable=not progress)):
        prompt, n_new = [task.prompt(s)], task.max_new_tokens
        t = {"plain": [], "explained": [], "fastrm_map": [], "gradient_relevancy_map": []}

        def plain():
            t["plain"].append(timed(lambda: fast_vlm.generate([s], prompt, n_new))[1])

        def explained():
            gens, g_ms = timed(lambda: fast_vlm.generate([s], prompt, n_new, keep))
            maps, m_ms = timed(lambda: fastrm.explain(fast_vlm, gens))
            t["explained"].append(g_ms + m_ms)
            t["fastrm_map"].append(m_ms)
            t["gen"] = gens[0]
            t["map"] = maps[0]

        def relevancy():
            gen = t.get("gen") or fast_vlm.generate([s], prompt, n_new, keep)[0]
            t["gradient_relevancy_map"].append(timed(lambda: reference.explain(eager_vlm, [gen]))[1])

        steps = [plain, explained, relevancy]
        for r in range(repeats):
            for step in steps[r % 3 :] + steps[: r % 3]:
                step()
        if i < warmup:
            continue
        rows.append({"id": s.id, "answer": t["gen"].text, "answer_tokens": len(t["gen"].answer_ids),
                     "confidence": t["map"].extras["confidence"],
                     **{k: min(v) for k, v in t.items() if isinstance(v, list)}})
    proxy = fastrm.proxy_for(fast_vlm)
    return {"rows": rows, "model": fast_vlm.name, "model_hash": fast_vlm.model_hash,
            "proxy": {"source": proxy.source, "head": proxy.head_name}}


def summarise(rows: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in rows) for k in ("plain", "explained", "fastrm_map", "gradient_relevancy_map")}
    per_sample_latency = [r["explained"] / r["plain"] for r in rows]
    per_sample_speedup = [r["gradient_relevancy_map"] / r["fastrm_map"] for r in rows]
    return {
        "median_ms": med,
        "map_speedup": med["gradient_relevancy_map"] / med["fastrm_map"],
        "map_speedup_per_sample_median": statistics.median(per_sample_speedup),
        "latency_ratio": med["explained"] / med["plain"],
        "latency_ratio_per_sample_median": statistics.median(per_sample_latency),
        "n": len(rows),
    }


def from_runner(model: str, limit: int, out_root: Path) -> dict:
    """``xbench run`` with fastrm and with gradient_relevancy on the same samples, batch 1."""
    from xbench.records import read_records
    from xbench.runner import RunConfig, run

    res = {}
    for method in ("fastrm", "gradient_relevancy"):
        summary = run(RunConfig(method=method, model=model, limit=limit, batch_size=1, device="cpu",
                                out=out_root / method, progress=False, metrics=[]))
        recs = [r for r in read_records(out_root / method / "samples.jsonl") if "error" not in r]
        res[method] = {
            "n": len(recs), "errors": summary["n_errors"],
            "explain_ms_p50": summary["metrics"]["explain_ms_p50"]["value"],
            "generate_ms_p50": summary["metrics"]["generate_ms_p50"]["value"],
            "ids": [r["id"] for r in recs],
        }
    same = res["fastrm"].pop("ids") == res["gradient_relevancy"].pop("ids")
    return {**res, "same_samples": same,
            "map_speedup_p50": res["gradient_relevancy"]["explain_ms_p50"] / res["fastrm"]["explain_ms_p50"]}


def markdown(r: dict) -> str:
    from tabulate import tabulate

    s = r["side_by_side"]
    rows = [[k, f"{v:.3f}"] for k, v in s["median_ms"].items()]
    table = tabulate(rows, headers=["path (per sample, min over repeats)", "median ms"], tablefmt="github")
    run = r["runner"]
    run_rows = [[m, run[m]["n"], f"{run[m]['generate_ms_p50']:.2f}", f"{run[m]['explain_ms_p50']:.3f}"]
                for m in ("fastrm", "gradient_relevancy")]
    run_table = tabulate(run_rows, headers=["xbench run (batch 1)", "samples", "generate_ms p50", "explain_ms p50"],
                         tablefmt="github")
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    return (
        f"# FastRM vs gradient_relevancy vs plain answers, CPU\n\n"
        f"Model {r['model']} (hash {r['model_hash']}), proxy {r['proxy']['head']} ({r['proxy']['source']}); "
        f"device {r['environment']['device_name']}, {r['threads']} torch threads; {s['n']} samples of easyvqa/test, "
        f"{r['repeats']} interleaved repeats each, after {r['warmup']} warm-up samples. Wall time {r['wall_seconds']:.0f} s.\n\n"
        f"{table}\n\n"
        f"- gradient_relevancy map / FastRM map: **{s['map_speedup']:.0f}x** (per-sample median {s['map_speedup_per_sample_median']:.0f}x); "
        f"target >= {MAP_TARGET:.0f}x: {ok(s['map_speedup'] >= MAP_TARGET)}\n"
        f"- FastRM-explained answer / plain answer latency: **{s['latency_ratio']:.4f}x** (per-sample median "
        f"{s['latency_ratio_per_sample_median']:.4f}x); target <= {LATENCY_TARGET}x: {ok(s['latency_ratio'] <= LATENCY_TARGET)}\n\n"
        f"From the runner's records on the same samples (same ids: {run['same_samples']}):\n\n{run_table}\n\n"
        f"- explain_ms p50 ratio gradient_relevancy / fastrm: {run['map_speedup_p50']:.0f}x\n\n"
        f"git {r['environment']['git_sha']}, torch {r['environment']['torch']}, {r['finished']}\n"
    )


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    import torch

    from xbench import provenance
    from xbench.runner import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "fastrm")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report = side_by_side(args.model, args.limit, args.repeats, args.warmup, not args.no_progress)
    report["side_by_side"] = summarise(report["rows"])
    with tempfile.TemporaryDirectory() as tmp:
        report["runner"] = from_runner(args.model, args.limit, Path(tmp))
    report.update(threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                  wall_seconds=time.perf_counter() - started, environment=provenance.environment("cpu"),
                  finished=provenance.now())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "cpu_benchmark.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
