"""Every model family x every built-in method, as a researcher would run them: ``xbench run --method M
--model tiny-random-F --limit N`` for each pair, plus each family's model-load and first-sample times.

    python benchmarks/families_matrix.py [--limit 4] [--out results/families]

Per family (each ``tiny-random-*`` zoo model mirrors one public checkpoint with the big dimensions
shrunk), a fresh process times ``load_vlm`` (eager attention, CPU: ``load_s``, after the zoo
directory is built) and the first sample through ``generate`` and ``gradient_relevancy``
(``first_sample_s``). Then each (method, family) run goes through the runner with default metrics;
its error records are counted (by stage) and the map shape of the first record kept. Writes
``matrix.json`` and ``matrix.md`` (the machine named) into ``--out``. Random weights: the answers
are noise, the figures are about whether each pair runs correctly, not about quality.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING_CHILD = r"""
import json, sys, time
from xbench.plugins import default
from xbench.models import load_vlm
name = sys.argv[1]
plugins = default()
plugins.registries.models.get(name).locate()  # built once, outside the timing
t0 = time.perf_counter()
vlm = load_vlm(name, plugins.registries, needs=frozenset({"attentions"}), device="cpu")
t1 = time.perf_counter()
task = plugins.registries.tasks.get("easyvqa")()
sample = next(iter(task.samples(limit=1)))
method = plugins.registries.methods.get("gradient_relevancy")()
t2 = time.perf_counter()
gen = vlm.generate([sample], [task.prompt(sample)], task.max_new_tokens)[0]
method.explain(vlm, [gen])
t3 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "first_sample_s": t3 - t2, "grid": list(gen.grid),
                  "grids": [list(g) for g in gen.layout.grids], "image_tokens": len(gen.image_positions),
                  "family": vlm.family, "prompt_format": vlm.prompt_format}))
"""


def family_models(plugins) -> list[str]:
    return sorted(n for n in plugins.registries.models.names() if n.startswith("tiny-random-"))


def time_family(name: str) -> dict:
    out = subprocess.run([sys.executable, "-c", TIMING_CHILD, name], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_pair(plugins, model: str, method: str, limit: int, root: Path) -> dict:
    from xbench.errors import XbenchError
    from xbench.records import read_records
    from xbench.runner import RunConfig, run

    out = root / f"{model}--{method}"
    try:
        summary = run(RunConfig(method=method, model=model, limit=limit, out=out, warmup=0, progress=False,
                                device="cpu"), plugins)
    except XbenchError as exc:
        return {"refused": str(exc)}
    records = read_records(out / "samples.jsonl")
    ok = [r for r in records if "error" not in r]
    return {"records": summary["n_records"], "errors": summary["n_errors"], "errors_by_stage": summary["errors_by_stage"],
            "first_error": next((r["error"] for r in records if "error" in r), None),
            "grid": ok[0]["grid"] if ok else None}


def markdown(result: dict) -> str:
    families, methods = result["families"], result["methods"]
    lines = [f"# Model families x methods ({result['machine']})", "",
             f"`python benchmarks/families_matrix.py --limit {result['limit']}`: error records of "
             f"`xbench run --method M --model F --limit {result['limit']}` (0 = every sample explained and scored).", "",
             "| family (zoo model) | mirrors | image tokens | map shape | load s | first sample s |",
             "|---|---|---|---|---|---|"]
    for f in families:
        t = result["timing"][f]
        if "error" in t:
            lines.append(f"| {f} | {result['mirrors'][f]} | load failed: {t['error']} | | | |")
            continue
        lines.append(f"| {t['family']} ({f}) | {result['mirrors'][f]} | {t['image_tokens']} | {t['grid']} | "
                     f"{t['load_s']:.2f} | {t['first_sample_s']:.2f} |")
    lines += ["", "| method | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for m in methods:
        cells = []
        for f in families:
            cell = result["runs"][f][m]
            cells.append("refused" if "refused" in cell else f"{cell['errors']}/{cell['records']}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    refusals = [(f, m, c["refused"]) for f in families for m, c in result["runs"][f].items() if "refused" in c]
    errors = [(f, m, c["first_error"]) for f in families for m, c in result["runs"][f].items() if c.get("first_error")]
    if refusals or errors:
        lines += ["", "Refusals and first errors:", ""]
        lines += [f"- {f} / {m}: refused: {why}" for f, m, why in refusals]
        lines += [f"- {f} / {m}: {why}" for f, m, why in errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("results/families"))
    p.add_argument("--models", help="comma-separated zoo models (default: every tiny-random-*)")
    p.add_argument("--methods", help="comma-separated methods (default: every built-in)")
    args = p.parse_args()

    from xbench.plugins import default

    plugins = default()
    families = args.models.split(",") if args.models else family_models(plugins)
    methods = args.methods.split(",") if args.methods else sorted(plugins.registries.methods.names())
    import os

    from xbench.provenance import cpu_model

    result = {"machine": f"{cpu_model()}, {os.cpu_count()} cores, CPU only", "limit": args.limit,
              "families": families, "methods": methods, "timing": {}, "runs": {},
              "mirrors": {f: plugins.registries.models.get(f).description for f in families}}
    with tempfile.TemporaryDirectory() as tmp:
        for f in families:
            result["timing"][f] = time_family(f)
            result["runs"][f] = {m: run_pair(plugins, f, m, args.limit, Path(tmp)) for m in methods}
            print(f, {m: c.get("errors", "refused") for m, c in result["runs"][f].items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matrix.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "matrix.md").write_text(markdown(result))
    print(f"wrote {args.out / 'matrix.md'}")


if __name__ == "__main__":
    main()
