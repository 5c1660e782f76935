"""FastRM beside gradient_relevancy and plain answers, side by side on the same samples (CPU).

For each batch size (default 1, 4 (the runner's default) and 16), on batches of the same samples
(the model's default FastRM proxy, ``--threads`` torch threads):

* plain answer: ``vlm.generate`` keeping nothing (sdpa attention);
* FastRM-explained answer: ``vlm.generate`` keeping the last hidden states, then
  ``fastrm.explain`` (its time alone is the FastRM map time);
* gradient_relevancy map: ``gradient_relevancy.explain`` of the same generations on the same
  weights loaded with eager attention (it needs attention weights).

The three are interleaved batch by batch, each repeated ``--repeats`` times (order rotated),
after ``--warmup`` untimed batches; per-sample time is the batch time over the batch size
(as the runner records it), the minimum over repeats (robust to other processes on a shared
machine), and the tables give medians over samples. Then the same comparison from the
runner's own records: ``xbench run`` with fastrm and with gradient_relevancy on the same
samples, reading ``explain_ms`` / ``generate_ms``.

Targets (ANCHORS / issue): gradient_relevancy map time / FastRM map time >= 100x;
explained answer / plain answer latency <= 1.05x.

    python benchmarks/fastrm_cpu.py [--model NAME] [--head attention|mlp] [--limit 48] [--batch-sizes 1,4,16] [--repeats 3] [--threads 2]
    -> results/fastrm/cpu_benchmark-<head>-<threads>threads.{json,md}
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


def load(model: str, head: str) -> dict:
    """The model twice (sdpa keeping hidden states; eager for gradient_relevancy), both methods, the task."""
    from xbench.models import load_vlm
    from xbench.plugins import default
    from xbench.runner import DEFAULT_TASK

    reg = default().registries
    return {
        "fast_vlm": load_vlm(model, reg, needs=frozenset({"hidden_states"}), device="cpu"),
        "eager_vlm": load_vlm(model, reg, needs=frozenset({"attentions"}), device="cpu"),
        "fastrm": reg.methods.get("fastrm")(head=head),
        "reference": reg.methods.get("gradient_relevancy")(),
        "task": reg.tasks.get(DEFAULT_TASK)(),
    }


def side_by_side(setup: dict, limit: int, batch_size: int, repeats: int, warmup: int, progress: bool) -> dict:
    """Interleaved plain / explained / gradient_relevancy on batches of ``batch_size`` samples;
    per-sample times are batch times divided by the batch size (as the runner records them)."""
    from tqdm.auto import tqdm

    from xbench.runner import batched

    fast_vlm, eager_vlm, task = setup["fast_vlm"], setup["eager_vlm"], setup["task"]
    fastrm, reference = setup["fastrm"], setup["reference"]
    samples = list(task.samples(limit=limit + warmup * batch_size, seed=0))
    keep = frozenset({"hidden_states"})
    rows = []
    for i, batch in enumerate(
        tqdm(list(batched(samples, batch_size)), desc=f"batch {batch_size}", disable=not progress)
    ):
        prompts, n_new, b = [task.prompt(s) for s in batch], task.max_new_tokens, len(batch)
        t = {"plain": [], "explained": [], "fastrm_map": [], "gradient_relevancy_map": []}
        state = {}

        def plain():
            t["plain"].append(timed(lambda: fast_vlm.generate(batch, prompts, n_new))[1] / b)

        def explained():
            gens, g_ms = timed(lambda: fast_vlm.generate(batch, prompts, n_new, keep))
            maps, m_ms = timed(lambda: fastrm.explain(fast_vlm, gens))
            t["explained"].append((g_ms + m_ms) / b)
            t["fastrm_map"].append(m_ms / b)
            state["gens"], state["maps"] = gens, maps

        def relevancy():  # the rotation runs explained before relevancy in the first repeat
            gens = state["gens"]
            t["gradient_relevancy_map"].append(timed(lambda: reference.explain(eager_vlm, gens))[1] / b)

        steps = [plain, explained, relevancy]
        for r in range(repeats):
            for step in steps[r % 3 :] + steps[: r % 3]:
                step()
        if i < warmup:
            continue
        best = {k: min(v) for k, v in t.items()}  # per batch: the least disturbed repeat
        for gen, rmap in zip(state["gens"], state["maps"]):
            rows.append(
                {
                    "id": gen.sample_id,
                    "answer": gen.text,
                    "answer_tokens": len(gen.answer_ids),
                    "confidence": rmap.extras["confidence"],
                    **best,
                }
            )
    proxy = fastrm.proxy_for(fast_vlm)
    return {
        "rows": rows,
        "model": fast_vlm.name,
        "model_hash": fast_vlm.model_hash,
        "proxy": {"source": _shown(proxy.source), "head": proxy.head_name, "head_params": proxy.head.params},
    }


def _shown(path: str | None) -> str | None:
    """A path relative to the package or the repository when inside them (no machine-specific prefix)."""
    import xbench

    for root in (Path(xbench.__file__).resolve().parent.parent, ROOT):
        try:
            return str(Path(path).resolve().relative_to(root))
        except (TypeError, ValueError):
            continue
    return path


def summarise(rows: list[dict]) -> dict:
    med = {
        k: statistics.median(r[k] for r in rows) for k in ("plain", "explained", "fastrm_map", "gradient_relevancy_map")
    }
    return {
        "median_ms": med,
        "map_speedup": med["gradient_relevancy_map"] / med["fastrm_map"],
        "map_speedup_per_sample_median": statistics.median(r["gradient_relevancy_map"] / r["fastrm_map"] for r in rows),
        "latency_ratio": med["explained"] / med["plain"],
        "latency_ratio_per_sample_median": statistics.median(r["explained"] / r["plain"] for r in rows),
        "n": len(rows),
    }


def from_runner(model: str, head: str, limit: int, batch_size: int, out_root: Path) -> dict:
    """``xbench run`` with fastrm and with gradient_relevancy on the same samples."""
    from xbench.records import read_records
    from xbench.runner import RunConfig, run

    res = {}
    for method in ("fastrm", "gradient_relevancy"):
        out = out_root / f"{method}-b{batch_size}"
        summary = run(
            RunConfig(
                method=method,
                method_params={"head": head} if method == "fastrm" else {},
                model=model,
                limit=limit,
                batch_size=batch_size,
                device="cpu",
                out=out,
                progress=False,
                metrics=[],
            )
        )
        recs = [r for r in read_records(out / "samples.jsonl") if "error" not in r]
        res[method] = {
            "n": len(recs),
            "errors": summary["n_errors"],
            "explain_ms_p50": summary["metrics"]["explain_ms_p50"]["value"],
            "generate_ms_p50": summary["metrics"]["generate_ms_p50"]["value"],
            "ids": [r["id"] for r in recs],
        }
    same = res["fastrm"].pop("ids") == res["gradient_relevancy"].pop("ids")
    return {
        **res,
        "batch_size": batch_size,
        "same_samples": same,
        "map_speedup_p50": res["gradient_relevancy"]["explain_ms_p50"] / res["fastrm"]["explain_ms_p50"],
    }


def markdown(r: dict) -> str:
    from tabulate import tabulate

    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    parts = [
        "# FastRM vs gradient_relevancy vs plain answers, CPU\n",
        f"Model {r['model']} (hash {r['model_hash']}), FastRM proxy: {r['proxy']['head']} head {r['proxy'].get('head_params', '')} ({r['proxy']['source']}); "
        f"device {r['environment']['device_name']}, {r['threads']} torch threads; {r['limit']} samples of easyvqa/test "
        f"(seed 0) per batch size, {r['repeats']} interleaved repeats each (rotated order), after {r['warmup']} warm-up "
        f"batch(es); per-sample time = batch time / batch size, the least disturbed repeat of each batch; medians over "
        f"samples. Wall time {r['wall_seconds']:.0f} s.\n",
    ]
    for b, s in r["side_by_side"].items():
        rows = [[k, f"{v:.3f}"] for k, v in s["median_ms"].items()]
        parts.append(f"## Batch size {b}\n")
        parts.append(tabulate(rows, headers=["path", "median ms / sample"], tablefmt="github") + "\n")
        parts.append(
            f"- gradient_relevancy map / FastRM map: **{s['map_speedup']:.0f}x** (per-sample median "
            f"{s['map_speedup_per_sample_median']:.0f}x); target >= {MAP_TARGET:.0f}x: {ok(s['map_speedup'] >= MAP_TARGET)}\n"
            f"- FastRM-explained answer / plain answer latency: **{s['latency_ratio']:.4f}x** (per-sample median "
            f"{s['latency_ratio_per_sample_median']:.4f}x); target <= {LATENCY_TARGET}x: {ok(s['latency_ratio'] <= LATENCY_TARGET)}\n"
        )
    run_rows = []
    for b, run in r["runner"].items():
        for m in ("fastrm", "gradient_relevancy"):
            run_rows.append(
                [
                    b,
                    m,
                    run[m]["n"],
                    f"{run[m]['generate_ms_p50']:.2f}",
                    f"{run[m]['explain_ms_p50']:.3f}",
                    f"{run['map_speedup_p50']:.0f}x" if m == "fastrm" else "",
                    run["same_samples"],
                ]
            )
    parts.append("## From the runner's own records (`xbench run`, same samples)\n")
    parts.append(
        tabulate(
            run_rows,
            headers=[
                "batch",
                "method",
                "samples",
                "generate_ms p50",
                "explain_ms p50",
                "gradient_relevancy / fastrm",
                "same ids",
            ],
            tablefmt="github",
        )
        + "\n"
    )
    parts.append(f"git {r['environment']['git_sha']}, torch {r['environment']['torch']}, {r['finished']}\n")
    return "\n".join(parts)


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    import torch

    from xbench import provenance
    from xbench.fastrm.proxy_store import DEFAULT_HEAD
    from xbench.runner import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--head", default=DEFAULT_HEAD, help=f"FastRM proxy head (default {DEFAULT_HEAD})")
    p.add_argument("--limit", type=int, default=48)
    p.add_argument(
        "--batch-sizes", default="1,4,16", help="comma-separated (default 1,4,16; 4 is the runner's default)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "fastrm")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    report = {"side_by_side": {}, "runner": {}, "rows": {}}
    setup = load(args.model, args.head)
    for b in sizes:
        res = side_by_side(setup, args.limit, b, args.repeats, args.warmup, not args.no_progress)
        report["rows"][b] = res.pop("rows")
        report.update(res)
        report["side_by_side"][b] = summarise(report["rows"][b])
    with tempfile.TemporaryDirectory() as tmp:
        for b in sizes:
            report["runner"][b] = from_runner(args.model, args.head, args.limit, b, Path(tmp))
    report.update(
        threads=args.threads,
        limit=args.limit,
        repeats=args.repeats,
        warmup=args.warmup,
        wall_seconds=time.perf_counter() - started,
        environment=provenance.environment("cpu"),
        finished=provenance.now(),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"cpu_benchmark-{args.head}-{args.threads}threads"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
