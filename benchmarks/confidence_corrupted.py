"""Confidence, honestly measured: do explanation maps flag wrong answers better than the answer's
own probability?

On clean easy-vqa the default model is almost always right (31 wrong answers in 9,673), so no
confidence signal can be measured there. This benchmark corrupts the images (the ``easyvqa``
task's ``corruption`` / ``severity`` parameters: seeded Gaussian noise, occlusion of part of the
shape, lost contrast) and, with xbench's own runs (:func:`xbench.runner.run`, the same code as
``xbench run``):

1. **Accuracy per level**: ``xbench run --method uniform --metrics answer_prob_auroc`` with
   ``--task-param corruption=K --task-param severity=S`` for each ``--levels`` entry, on the first
   ``--accuracy-limit`` test questions (the same questions at every level): accuracy with its
   bootstrap interval, per question kind, and the answer-probability AUROC.
2. **Confidence table**: for each ``--settings`` entry, ``xbench run --method M --metrics
   confidence`` for every method ``M`` (default: every registered one) on the first ``--limit``
   questions: ``confidence_auroc`` (FastRM's entropy confidence, every other method's map
   entropy) and ``answer_prob_auroc`` (1 - the generated answer's probability under the model,
   the baseline), each with the run's seeded bootstrap interval; and the paired difference
   ``confidence_auroc - answer_prob_auroc`` on the same samples with a seeded bootstrap interval
   (the resamples of :func:`xbench.stats.resamples`, each AUROC a Mann-Whitney rank count).

The conclusion is derived from those intervals and written with the tables. Per-sample
uncertainties go to ``per_sample/<setting>.csv`` (enough to recompute every AUROC); the runs
themselves (maps inline) go to a temporary folder unless ``--keep-runs DIR``.

    python benchmarks/confidence_corrupted.py [--model tiny-llava-easyvqa] [--limit 400]
        [--settings noise:0.75 occlusion:0.9 contrast:0.7] [--methods a,b,...]
        [--accuracy-limit 300] [--levels none:0 noise:0.2 ...] [--seed 0] [--out results/confidence]
    -> <out>/confidence-<model>.json, <out>/confidence-<model>.md, <out>/per_sample/<setting>.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LEVELS = ["none:0", "noise:0.2", "noise:0.5", "noise:1", "occlusion:0.3", "occlusion:0.7", "occlusion:1",
          "contrast:0.3", "contrast:0.7", "contrast:0.95"]  # fmt: skip
SETTINGS = ["noise:0.75", "occlusion:0.9", "contrast:0.7"]
BASELINE = "answer_prob_auroc"
SIGNAL = "confidence_auroc"


def setting(text: str) -> tuple[str, float]:
    """``KIND:SEVERITY`` (``none:0`` for the clean images) as ``(kind, severity)``."""
    kind, sep, severity = text.partition(":")
    try:
        return kind, float(severity) if sep else 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not KIND:SEVERITY (e.g. noise:0.5)") from None


def slug(kind: str, severity: float) -> str:
    return "clean" if kind == "none" else f"{kind}-{severity:g}"


def task_params(kind: str, severity: float) -> dict:
    return {} if kind == "none" else {"corruption": kind, "severity": severity}


def one_run(plugins, cfg: dict, method: str, level: tuple[str, float], metrics: list[str], limit: int, runs: Path):
    """One ``xbench run`` through the Python API into ``runs/<level>/<method>``: ``(summary,
    successful records, error messages, wall s)``."""
    from xbench.records import SAMPLES, read_records
    from xbench.runner import RunConfig, run

    out = runs / slug(*level) / method
    start = time.perf_counter()
    summary = run(RunConfig(method=method, model=cfg["model"], limit=limit, seed=cfg["seed"], out=out, device="cpu",
                            task_params=task_params(*level), metrics=metrics, progress=False), plugins)  # fmt: skip
    wall = time.perf_counter() - start
    records = read_records(out / SAMPLES)
    ok = [r for r in records if "error" not in r]
    return summary, ok, [r["error"] for r in records if "error" in r], wall


def value_ci(summary: dict, name: str) -> dict:
    entry = summary["metrics"].get(name) or {}
    return {"value": entry.get("value"), "ci95": entry.get("ci95")}


def accuracy_rows(plugins, cfg: dict, levels, limit: int, runs: Path) -> list[dict]:
    """Accuracy (and the baseline AUROC) of the model per corruption level, one ``uniform`` run each."""
    rows = []
    for level in levels:
        summary, ok, errors, wall = one_run(plugins, cfg, "uniform", level, [BASELINE], limit, runs / "accuracy")
        kinds = {k[len("accuracy["):-1]: v["value"] for k, v in summary["metrics"].items() if k.startswith("accuracy[")}
        rows.append({"corruption": level[0], "severity": level[1], "n": len(ok), "errors": len(errors),
                     "accuracy": value_ci(summary, "accuracy"), "accuracy_by_kind": kinds,
                     "wrong": sum(r["scores"]["accuracy"] < 0.5 for r in ok), BASELINE: value_ci(summary, BASELINE),
                     "wall_s": wall})  # fmt: skip
        print(f"accuracy {slug(*level):16s} {rows[-1]['accuracy']['value']:.3f} (n={len(ok)}, {wall:.0f} s)", flush=True)
    return rows


def auroc_rows(wrong: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` for ``wrong`` per row of ``[k, n]`` arrays (Mann-Whitney with average
    ranks, ties counting half: what ``sklearn.metrics.roc_auc_score`` gives); NaN for a row
    with one class only."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    pos = wrong.sum(axis=1)
    neg = wrong.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * wrong).sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)


def paired_difference(records: list[dict], seed: int) -> list[float] | None:
    """Seeded bootstrap interval (:func:`xbench.stats.resamples`, the draws of every xbench
    interval) of ``confidence_auroc - answer_prob_auroc`` over the same records, vectorised
    over resamples; None when fewer than half of the resamples have both classes."""
    from xbench import stats

    if len(records) < 2:
        return None
    wrong = np.array([r["scores"]["accuracy"] < 0.5 for r in records])
    signal = np.array([r["metrics"][SIGNAL] for r in records], dtype=np.float64)
    baseline = np.array([r["metrics"][BASELINE] for r in records], dtype=np.float64)
    draws = [auroc_rows(wrong[idx], signal[idx]) - auroc_rows(wrong[idx], baseline[idx])
             for idx in stats.resamples(len(records), seed)]  # fmt: skip
    return stats._interval(np.concatenate(draws), stats.N_RESAMPLES, stats.LEVEL)


def confidence_setting(plugins, cfg: dict, level, methods: list[str], limit: int, runs: Path, out: Path) -> dict:
    """Every method's ``confidence_auroc`` and the baseline on one corruption setting."""
    rows, per_sample = {}, {}
    for method in methods:
        summary, ok, errors, wall = one_run(plugins, cfg, method, level, ["confidence"], limit, runs / "confidence")
        signal, baseline = value_ci(summary, SIGNAL), value_ci(summary, BASELINE)
        diff = signal["value"] - baseline["value"] if None not in (signal["value"], baseline["value"]) else None
        rows[method] = {SIGNAL: signal, BASELINE: baseline, "difference": {"value": diff, "ci95": paired_difference(ok, cfg["seed"])},
                        "n": len(ok), "errors": len(errors), "error_examples": errors[:3],
                        "accuracy": value_ci(summary, "accuracy")["value"], "wrong": sum(r["scores"]["accuracy"] < 0.5 for r in ok),
                        "explain_ms_p50": value_ci(summary, "explain_ms_p50")["value"], "wall_s": wall}  # fmt: skip
        per_sample[method] = {r["id"]: r for r in ok}
        print(f"confidence {slug(*level):14s} {method:22s} {signal['value']} vs {baseline['value']} ({wall:.0f} s)", flush=True)
    write_per_sample(out / "per_sample" / f"{slug(*level)}.csv", per_sample)
    answers = {m: {i: (r["answer"], r["metrics"].get(BASELINE)) for i, r in recs.items()} for m, recs in per_sample.items()}
    first = answers[methods[0]]
    same = all(a.keys() == first.keys() and all(a[i][0] == first[i][0] for i in a) for a in answers.values())
    spread = max(abs(a[i][1] - first[i][1]) for a in answers.values() for i in a if i in first)
    return {"corruption": level[0], "severity": level[1], "methods": rows,
            "baseline": rows[methods[0]][BASELINE], "same_answers_in_every_run": same,
            "baseline_max_abs_difference_between_runs": spread}  # fmt: skip


def write_per_sample(path: Path, per_sample: dict) -> None:
    """id, kind, answer, accuracy, the answer's uncertainty (1 - p) and each method's map uncertainty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    methods = list(per_sample)
    base = per_sample[methods[0]]
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["id", "kind", "answer", "accuracy", "answer_uncertainty"] + methods)
        for sid, r in base.items():
            cells = [per_sample[m].get(sid, {}).get("metrics", {}).get(SIGNAL) for m in methods]
            out.writerow([sid, r["meta"].get("kind"), r["answer"], r["scores"]["accuracy"], r["metrics"][BASELINE]] + cells)


def conclusion(settings: list[dict]) -> list[str]:
    """One sentence per setting and one overall, read off the intervals."""
    lines, beaten_anywhere = [], []
    for s in settings:
        name = slug(s["corruption"], s["severity"])
        rows = {m: r for m, r in s["methods"].items() if r["difference"]["ci95"] is not None}
        above = [m for m, r in rows.items() if r["difference"]["ci95"][0] > 0]
        below = [m for m, r in rows.items() if r["difference"]["ci95"][1] < 0]
        chance = [m for m, r in s["methods"].items() if (r[SIGNAL]["ci95"] or [0, 1])[0] <= 0.5 <= (r[SIGNAL]["ci95"] or [0, 1])[1]]
        best = max(s["methods"], key=lambda m: s["methods"][m][SIGNAL]["value"] or 0)
        b = s["baseline"]
        lines.append(
            f"- **{name}**: the answer's probability flags wrong answers with AUROC {fmt(b['value'])} {ci(b['ci95'])}; "
            f"the best map signal is {best} ({fmt(s['methods'][best][SIGNAL]['value'])}). "
            f"Significantly better than the baseline (paired 95% interval of the difference above 0): "
            f"{', '.join(above) or 'none'}; significantly worse: {', '.join(below) or 'none'}; "
            f"not distinguishable from chance (interval holding 0.5): {', '.join(chance) or 'none'}.")  # fmt: skip
        beaten_anywhere += [f"{m} on {name}" for m in above]
    verdict = ("No map-based confidence signal beats the answer's own probability on any setting."
               if not beaten_anywhere else f"Map signals that beat the answer's own probability: {', '.join(beaten_anywhere)}.")
    return lines + ["", f"**Conclusion:** {verdict}"]


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def ci(c) -> str:
    return "[n/a]" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# Confidence on corrupted easy-vqa: map entropy against the answer's own probability ({r['model']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['device']}), OMP_NUM_THREADS={m['omp_threads']}; load average "
        f"{m['load_avg_1_5_15']} before, {r['load_after']} after (times are indicative on a shared machine).",
        f"Made {r['date']} at git {r['git_sha']} by `{r['command']}` (seed {r['seed']}; {r['minutes']:.0f} min).",
        "",
        f"## Accuracy per corruption level (`xbench run --method uniform --metrics {BASELINE} --limit "
        f"{r['accuracy_limit']} --task-param corruption=K --task-param severity=S`)",
        "",
        "| corruption | severity | n | accuracy [95% CI] | colour | shape | yes/no colour | yes/no shape | wrong "
        "| answer-prob AUROC [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in r["accuracy"]:
        k = a["accuracy_by_kind"]
        lines.append(f"| {a['corruption']} | {a['severity']:g} | {a['n']} | {fmt(a['accuracy']['value'])} {ci(a['accuracy']['ci95'])} | "
                     + " | ".join(fmt(k.get(x)) for x in ("colour", "shape", "yes/no colour", "yes/no shape"))
                     + f" | {a['wrong']} | {fmt(a[BASELINE]['value'])} {ci(a[BASELINE]['ci95'])} |")  # fmt: skip
    names = [slug(s["corruption"], s["severity"]) for s in r["settings"]]
    lines += ["", f"## AUROC for flagging wrong answers (`xbench run --method M --metrics confidence --limit {r['limit']} "
              "--task-param corruption=K --task-param severity=S`)", "",
              "Higher is better; 0.5 is chance. Δ: the method's AUROC minus the baseline's on the same samples, with a "
              "paired seeded bootstrap interval (1000 resamples).", "",
              " | ".join(["| signal"] + [f"{n}: AUROC [95% CI] | {n}: Δ vs answer prob [95% CI]" for n in names])
              + " | explain ms p50 |", "|---" * (2 + 2 * len(names)) + "|"]  # fmt: skip
    cells = [f"{fmt(s['baseline']['value'])} {ci(s['baseline']['ci95'])} | —" for s in r["settings"]]
    lines.append("| **answer probability (baseline)** | " + " | ".join(cells) + " | — |")
    for method in r["methods"]:
        row = [s["methods"][method] for s in r["settings"]]
        label = f"{method} (entropy confidence)" if method == "fastrm" else f"{method} (map entropy)"
        cells = [f"{fmt(x[SIGNAL]['value'])} {ci(x[SIGNAL]['ci95'])} | {fmt(x['difference']['value'])} {ci(x['difference']['ci95'])}"
                 for x in row]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(row[0]['explain_ms_p50'])} |")
    lines += ["", "Per setting: " + "; ".join(
        f"{n}: {s['methods'][r['methods'][0]]['n']} samples, accuracy {fmt(s['methods'][r['methods'][0]]['accuracy'])}, "
        f"{s['methods'][r['methods'][0]]['wrong']} wrong, errors {sum(x['errors'] for x in s['methods'].values())}, "
        f"same answers in every run: {s['same_answers_in_every_run']}, baseline spread between runs "
        f"{s['baseline_max_abs_difference_between_runs']:.1e}" for n, s in zip(names, r["settings"])) + ".", ""]  # fmt: skip
    done = [slug(s["corruption"], s["severity"]) for s in r["settings"]]
    if done != r["planned_settings"]:
        lines += [f"**Partial:** settings done {done} of {r['planned_settings']}.", ""]
    if r["not_run"]:
        lines += [f"Registered methods not run: {', '.join(r['not_run'])}" + (f" ({r['not_run_reason']})" if r["not_run_reason"] else "") + ".", ""]
    lines += ["## Conclusion", ""] + r["conclusion"] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    from xbench import provenance
    from xbench.plugins import default
    from xbench.runconfig import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--limit", type=int, default=400, help="questions per setting and method (default 400)")
    p.add_argument("--settings", nargs="+", type=setting, default=[setting(s) for s in SETTINGS], metavar="KIND:SEVERITY")
    p.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    p.add_argument("--not-run-reason", default="", help="why registered methods were left out (written with the table)")
    p.add_argument("--accuracy-limit", type=int, default=300, help="questions per accuracy level (default 300)")
    p.add_argument("--levels", nargs="+", type=setting, default=[setting(s) for s in LEVELS], metavar="KIND:SEVERITY")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "confidence")
    p.add_argument("--keep-runs", type=Path, help="keep the runs here (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    plugins = default()
    registered = plugins.registries.methods.names()
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else registered
    unknown = sorted(set(methods) - set(registered))
    if unknown:
        p.error(f"--methods: unknown {unknown}; registered: {', '.join(registered)}")
    started = time.perf_counter()
    result = {"command": "python benchmarks/confidence_corrupted.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": args.model, "seed": args.seed, "limit": args.limit, "accuracy_limit": args.accuracy_limit,
              "date": provenance.now(), "git_sha": provenance.git_sha(), "methods": methods,
              "not_run": [m for m in registered if m not in methods], "not_run_reason": args.not_run_reason,
              "machine": {"cpu": provenance.cpu_model(), "cores": os.cpu_count(), "device": provenance.device_name("cpu"),
                          "omp_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_1_5_15": list(os.getloadavg())},
              "environment": provenance.environment("cpu")}  # fmt: skip
    runs = args.keep_runs or Path(tempfile.mkdtemp(prefix="xbench-confidence-"))
    cfg = {"model": args.model, "seed": args.seed}
    result["planned_settings"] = [slug(*level) for level in args.settings]
    try:
        result["accuracy"], result["settings"] = accuracy_rows(plugins, cfg, args.levels, args.accuracy_limit, runs), []
        for level in args.settings:  # the files are rewritten after each setting: a cut-short run keeps what it made
            result["settings"].append(confidence_setting(plugins, cfg, level, methods, args.limit, runs, args.out))
            write(result, args.out, args.model, started)
    finally:
        if args.keep_runs is None:
            shutil.rmtree(runs, ignore_errors=True)
    print(markdown(result))
    return 0


def write(result: dict, out: Path, model: str, started: float) -> None:
    """``confidence-<model>.json`` and ``.md`` in ``out`` from the settings done so far."""
    result["conclusion"] = conclusion(result["settings"])
    result["minutes"] = (time.perf_counter() - started) / 60
    result["load_after"] = list(os.getloadavg())
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"confidence-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"confidence-{name}.md").write_text(markdown(result))


if __name__ == "__main__":
    raise SystemExit(main())
