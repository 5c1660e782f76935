"""Are relevance maps on tiny-llava-easyvqa meaningful? Localisation beside a random-weight control.

For every registered method, two ``xbench run``s on the same easy-vqa test questions:
the trained ``tiny-llava-easyvqa`` and ``tiny-llava-easyvqa-random`` (same architecture
and tokenizer, the recipe's seed-0 initial weights). Metrics: ``energy_in_mask`` (share of
positive relevance inside the shape) and ``pointing_game`` (top patch touches the shape).
Chance levels come from the masks alone: a uniform map's energy is the mask's area share
on the patch grid; a uniformly random top patch hits with the share of patches touching it.

    python benchmarks/default_model_study.py [--limit 500] [--out results/default-model-study]

Writes ``<out>/runs/<method>--<model>/`` (records + summary), ``<out>/study.json`` and ``<out>/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

MODELS = ("tiny-llava-easyvqa", "tiny-llava-easyvqa-random")
METRICS = ("energy_in_mask", "pointing_game")


def run_all(limit: int, out: Path, methods: list[str], seed: int) -> dict:
    from xbench.plugins import default
    from xbench.runner import RunConfig, run

    plugins = default()
    results = {}
    for method in methods:
        for model in MODELS:
            run_dir = out / "runs" / f"{method}--{model}"
            if (run_dir / "summary.json").exists() and (run_dir / "samples.jsonl").exists():
                summary = json.loads((run_dir / "summary.json").read_text())
            else:
                t = time.perf_counter()
                summary = run(
                    RunConfig(method=method, model=model, limit=limit, seed=seed, out=run_dir, batch_size=16,
                              metrics=list(METRICS), progress=False),
                    plugins,
                )  # fmt: skip
                print(f"{method:16s} {model:28s} {time.perf_counter() - t:6.1f} s", flush=True)
            results[(method, model)] = (summary, run_dir)
    return results


def per_sample(run_dir: Path) -> dict[str, dict]:
    """The run's successful records by sample id."""
    from xbench.records import read_records

    return {r["id"]: r for r in read_records(run_dir / "samples.jsonl") if "error" not in r}


def chance_levels(limit: int, seed: int, grid: tuple[int, int]) -> dict:
    """Uniform-map energy and random-patch pointing from the task's masks alone."""
    from xbench.image_layout import single_grid
    from xbench.plugins import default

    task = default().registries.tasks.get("easyvqa")()
    area, touch = [], []
    for s in task.samples(limit, seed):
        mask = task.ground_truth_mask(s)
        H, W = mask.shape
        side = min(H, W)  # CLIP's resize-shortest-edge + centre crop
        region = ((H - side) / 2, (W - side) / 2, (H + side) / 2, (W + side) / 2)
        cover = single_grid(grid, region, (H, W)).cover(mask)
        area.append(float(cover.mean()))
        touch.append(float((cover > 0).mean()))
    return {"energy_in_mask": float(np.mean(area)), "pointing_game": float(np.mean(touch)), "n": len(area)}


def run_seconds(summary: dict) -> float:
    from datetime import datetime

    p = summary["provenance"]
    return (datetime.fromisoformat(p["finished"]) - datetime.fromisoformat(p["started"])).total_seconds()


def top_patch_mode(maps) -> dict:
    """The most frequent top patch (row-major index) and the share of maps whose top patch it is."""
    tops = [int(np.argmax(np.asarray(m))) for m in maps]
    values, counts = np.unique(tops, return_counts=True)
    return {"index": int(values[counts.argmax()]), "share": float(counts.max() / len(tops))}


def mean_sem(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/default-model-study"))
    p.add_argument("--methods", help="comma-separated (default: every registered method)")
    args = p.parse_args()

    from xbench.plugins import default

    methods = args.methods.split(",") if args.methods else default().registries.methods.names()
    results = run_all(args.limit, args.out, methods, args.seed)
    any_summary = next(iter(results.values()))[0]
    grid = tuple(next(iter(per_sample(next(iter(results.values()))[1]).values()))["grid"])
    chance = chance_levels(args.limit, args.seed, grid)

    study = {"limit": args.limit, "seed": args.seed, "grid": list(grid), "chance": chance, "methods": {}}
    for method in methods:
        trained, random_ = (per_sample(results[(method, m)][1]) for m in MODELS)
        common = sorted(set(trained) & set(random_))
        entry = {"n": len(common)}
        for model, recs in zip(MODELS, (trained, random_)):
            summ = results[(method, model)][0]
            entry[model] = {
                "accuracy": summ["metrics"]["accuracy"]["value"],
                **{m: dict(zip(("mean", "sem"), mean_sem([recs[i]["metrics"][m] for i in common]))) for m in METRICS},
                "explain_ms_p50": summ["metrics"].get("explain_ms_p50", {}).get("value"),
                "top_patch": top_patch_mode(recs[i]["map"] for i in common),
            }
        diffs = {
            m: dict(
                zip(("mean", "sem"), mean_sem([trained[i]["metrics"][m] - random_[i]["metrics"][m] for i in common]))
            )
            for m in METRICS
        }
        entry["trained_minus_random"] = diffs
        kinds = sorted({trained[i]["meta"]["kind"] for i in common})
        entry["trained_by_kind"] = {
            k: {m: float(np.mean([trained[i]["metrics"][m] for i in common if trained[i]["meta"]["kind"] == k]))
                for m in METRICS} | {"n": sum(trained[i]["meta"]["kind"] == k for i in common)}
            for k in kinds
        }  # fmt: skip
        study["methods"][method] = entry
    study["provenance"] = {
        "xbench": any_summary["provenance"].get("xbench"),
        "git_sha": any_summary["provenance"].get("git_sha"),
        "torch": any_summary["provenance"].get("torch"),
        "device": any_summary["provenance"].get("device_name"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "runs_wall_s": sum(run_seconds(summ) for summ, _ in results.values()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    text = render(study) + "\n" + render_extras(args.out)
    (args.out / "README.md").write_text(text)
    print(text)


def render(study: dict) -> str:
    c = study["chance"]
    lines = [
        "# Are maps on tiny-llava-easyvqa meaningful?",
        "",
        f"easy-vqa test split, the first {study['limit']} questions of the seed-{study['seed']} order; maps on the "
        f"{study['grid'][0]}x{study['grid'][1]} patch grid. Each method runs on the trained default model and on "
        "`tiny-llava-easyvqa-random` (same architecture and tokenizer, the recipe's seed-0 initial weights). "
        "Values are means over the same questions +- standard error; the last columns are the paired difference.",
        "",
        f"Chance levels from the masks alone: a uniform map puts **{c['energy_in_mask']:.3f}** of its mass inside "
        f"the shape (its area share); a uniformly random top patch touches the shape with probability "
        f"**{c['pointing_game']:.3f}**.",
        "",
        "| method | metric | trained | random weights | trained - random |",
        "|---|---|---|---|---|",
    ]
    for method, e in study["methods"].items():
        for m in METRICS:
            t, r, d = e[MODELS[0]][m], e[MODELS[1]][m], e["trained_minus_random"][m]
            lines.append(
                f"| {method} | {m} | {t['mean']:.3f} +- {t['sem']:.3f} | {r['mean']:.3f} +- {r['sem']:.3f} "
                f"| {d['mean']:+.3f} +- {d['sem']:.3f} |"
            )
    lines += ["", "Most frequent top patch (row-major index on the grid) and its share of the questions: " + "; ".join(
        f"{method} {'trained' if m == MODELS[0] else 'random'} #{e[m]['top_patch']['index']} "
        f"({e[m]['top_patch']['share']:.0%})" for method, e in study["methods"].items() for m in MODELS) + "."]  # fmt: skip
    lines += ["", "## Reading", ""] + [f"- {line}" for line in verdicts(study)]
    lines += ["", "Answer accuracy on these questions: " + ", ".join(
        f"{m} {study['methods'][next(iter(study['methods']))][m]['accuracy']:.3f}" for m in MODELS) + ".", ""]  # fmt: skip
    lines += ["## Trained model by question kind", "", "| method | kind | n | energy_in_mask | pointing_game |",
              "|---|---|---|---|---|"]  # fmt: skip
    for method, e in study["methods"].items():
        for k, v in e["trained_by_kind"].items():
            lines.append(f"| {method} | {k} | {v['n']} | {v['energy_in_mask']:.3f} | {v['pointing_game']:.3f} |")
    lines += [
        "",
        "## Reproduce",
        "",
        "```",
        f"python benchmarks/default_model_study.py --limit {study['limit']} --seed {study['seed']}",
        "xbench leaderboard results/default-model-study/runs",
        "```",
        "",
        f"The {2 * len(study['methods'])} runs took {study['provenance']['runs_wall_s']:.0f} s of wall time on "
        f"{study['provenance']['device']}{cores(study['provenance'])} "
        f"(torch {study['provenance']['torch']}, xbench {study['provenance']['git_sha']}).",
        "",
    ]
    return "\n".join(lines)


def verdicts(study: dict) -> list[str]:
    """One sentence per method and metric, decided by the numbers (2 standard errors)."""
    out = []
    for method, e in study["methods"].items():
        for m in METRICS:
            t, r, d, c = e[MODELS[0]][m], e[MODELS[1]][m], e["trained_minus_random"][m], study["chance"][m]
            vs_control = (
                "above"
                if d["mean"] - 2 * d["sem"] > 0
                else "below"
                if d["mean"] + 2 * d["sem"] < 0
                else "not distinguishable from"
            )
            ctrl_vs_chance = (
                "above" if r["mean"] - 2 * r["sem"] > c else "below" if r["mean"] + 2 * r["sem"] < c else "at"
            )
            out.append(
                f"{method}, {m}: trained {t['mean']:.3f} is {vs_control} the random-weight control {r['mean']:.3f} "
                f"({t['mean'] / c:.1f}x chance {c:.3f}); the control itself is {ctrl_vs_chance} chance."
            )
    return out


def cores(prov: dict) -> str:
    return f", {prov['cpus']} logical cores" if prov.get("cpus") else ""


def render_extras(out: Path) -> str:
    """Sections from ``reproduce.json`` (compare_training_runs.py) and ``load_time.json`` (zoo_load_time.py)."""
    lines = []
    if (out / "reproduce.json").exists():
        r = json.loads((out / "reproduce.json").read_text())
        lines += [
            "## Training the default model, twice",
            "",
            "| run | command | test accuracy | wall time | CPU time | hardware |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("shipped", "reproduced"):
            e = r[name]
            cpu = f"{e['cpu_s']:.0f} s" if e.get("cpu_s") else "-"
            lines.append(
                f"| {name} | `{e['command']}` | {e['accuracy']:.4f} | {e['wall_s']['total']:.0f} s | {cpu} "
                f"| {e['hardware']} |"
            )
        kinds = r["shipped"]["accuracy_by_kind"]
        lines += ["", "By kind (shipped / reproduced): " + "; ".join(
            f"{k} {kinds[k]:.4f} / {r['reproduced']['accuracy_by_kind'][k]:.4f}" for k in kinds) + ".", "",
            f"Difference {r['accuracy_difference_points']:+.2f} points; identical weights (sha256 of "
            f"model.safetensors): {r['identical_weights']}. Wall time varies with the load on the machine; CPU "
            "time does much less.", ""]  # fmt: skip
    full = out / "full-test-split" / "summary.json"
    if full.exists():
        f = json.loads(full.read_text())
        acc = {k: v["value"] for k, v in f["metrics"].items() if k.startswith("accuracy")}
        lines += [
            "## The default model through `xbench run` on the full test split",
            "",
            f"`xbench run --method {f['method']['name']} --limit {f['config']['limit']} --batch-size "
            f"{f['config']['batch_size']}` (default model and task; {f['n_ok']} questions, {f['n_errors']} errors): "
            + ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
            + f". Summary in `full-test-split/` (xbench {f['provenance']['git_sha']}).",
            "",
        ]
    if (out / "load_time.json").exists():
        t = json.loads((out / "load_time.json").read_text())
        lines += ["## Loading the default model", "",
                  f"Median of {t['repeats']} fresh processes, network refused: `load_vlm(\"tiny-llava-easyvqa\")` "
                  f"**{t['load_s_median']:.2f} s** (weights, tokenizer, processor, hashes; {t['reload_s_median']:.2f} s "
                  f"when repeated in the same process). Paid once per process before it, by any LLaVA model: "
                  f"{t['setup_s_median']:.1f} s importing torch/transformers/xbench and {t['imports_s_median']:.1f} s for "
                  f"transformers' lazily imported LLaVA/CLIP/Llama modules. First greedy answer: "
                  f"{t['first_answer_s_median']:.2f} s. (`python benchmarks/zoo_load_time.py`)", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
