"""Start-up time and peak memory of the vqa_v2 task on a file of the real VQA v2 val size.

Generates synthetic files in the official format (``v2_OpenEnded_mscoco_val2014_questions.json``,
``v2_mscoco_val2014_annotations.json``; by default 214,354 questions with 10 human answers each,
the size of the real val2014 split), then measures, each in a fresh Python process:

* ``imports``   - importing the task module (the floor every other row includes);
* ``json_load`` - a plain ``json.load`` of both files, for reference;
* ``construct`` - constructing the task (both files parsed and indexed);
* ``iterate``   - constructing it and building every Sample (images are not opened: that is lazy).

Peak RSS is the measuring process's ``VmHWM`` (its own high-water mark: unlike ``ru_maxrss``
it does not inherit the parent's size across fork + exec); the files are generated in a
separate process too. Results go to ``results/tasks-scale/`` as JSON and
Markdown. Usage: ``python benchmarks/tasks_scale.py [--questions N] [--repeats R] [--data DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLIT = "val2014"
QUESTIONS = f"v2_OpenEnded_mscoco_{SPLIT}_questions.json"
ANNOTATIONS = f"v2_mscoco_{SPLIT}_annotations.json"
MODES = ("imports", "json_load", "construct", "iterate")

ANSWERS = {
    "yes/no": ["yes", "no"],
    "number": [str(n) for n in range(0, 21)] + ["many", "lots"],
    "other": """white red blue black green brown gray yellow orange pink purple tan frisbee tennis baseball pizza
    kitchen bathroom man woman dog cat horse giraffe elephant zebra bear cow sheep left right wood metal grass
    snow water sky skateboarding surfing skiing baseball bat stop sign fire hydrant table chair bed couch
    nothing sitting standing eating walking umbrella kite train bus truck car bicycle motorcycle airplane
    boat clock laptop phone cell phone remote banana apple sandwich hot dog cake donut broccoli carrot""".split(),
}
QUESTION_TYPES = {
    "yes/no": ["is the", "are there", "is this", "does the", "is there a", "are the", "can you", "do you"],
    "number": ["how many", "how many people are", "what number is"],
    "other": ["what color is the", "what is the", "what is", "where is the", "what is the man", "which", "why", "what sport is"],
}
CONFIDENCE = ("yes", "maybe", "no")


def generate(folder: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Write the two official-format files for ``n`` questions (5 per image); returns file sizes."""
    rng = random.Random(seed)
    (folder / SPLIT).mkdir(parents=True, exist_ok=True)  # the image folder: the task checks it exists, opens no image
    questions, annotations = [], []
    for i in range(n):
        image_id = 100000 + i // 5
        qid = image_id * 1000 + i % 5
        answer_type = rng.choices(("yes/no", "number", "other"), weights=(38, 12, 50))[0]
        qtype = rng.choice(QUESTION_TYPES[answer_type])
        pool = ANSWERS[answer_type]
        majority = rng.choice(pool)
        agree = rng.random()
        answers = [
            {"answer": majority if rng.random() < agree else rng.choice(pool), "answer_confidence": rng.choice(CONFIDENCE), "answer_id": k + 1}
            for k in range(10)
        ]
        questions.append({"image_id": image_id, "question": f"{qtype.capitalize()} {rng.choice(ANSWERS['other'])} in the picture?", "question_id": qid})
        annotations.append({"question_type": qtype, "multiple_choice_answer": majority, "answers": answers,
                            "image_id": image_id, "answer_type": answer_type, "question_id": qid})
    info = {"description": "synthetic VQA v2 (xbench benchmark)", "version": "2.0"}
    with open(folder / QUESTIONS, "w") as fh:
        json.dump({"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": SPLIT, "questions": questions}, fh)
    with open(folder / ANNOTATIONS, "w") as fh:
        json.dump({"info": info, "license": {}, "data_subtype": SPLIT, "annotations": annotations, "data_type": "mscoco"}, fh)
    return {name: (folder / name).stat().st_size for name in (QUESTIONS, ANNOTATIONS)}


def measure(mode: str, folder: Path) -> dict:
    """One measurement in this (fresh) process; prints nothing, returns the numbers."""
    t0 = time.perf_counter()
    from xbench.cost import peak_rss_mib
    from xbench.tasks.vqa_v2 import VQAv2

    out = {"mode": mode, "import_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    if mode == "json_load":
        for name in (QUESTIONS, ANNOTATIONS):
            with open(folder / name, "rb") as fh:
                json.load(fh)
        out["load_s"] = time.perf_counter() - t1
    elif mode in ("construct", "iterate"):
        task = VQAv2(SPLIT, folder)
        out["construct_s"] = time.perf_counter() - t1
        if mode == "iterate":
            t2 = time.perf_counter()
            n = sum(1 for _ in task.samples())
            out["iterate_s"] = time.perf_counter() - t2
            out["samples"] = n
    out["peak_rss_mib"] = peak_rss_mib()
    out["end_rss_mib"] = proc_status_mib("VmRSS")  # what stays resident while the task is in use
    return out


def proc_status_mib(field: str) -> float | None:
    """A memory line of /proc/self/status in MiB (VmHWM: peak resident set, VmRSS: current); None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_fresh(mode: str, folder: Path) -> dict:
    """``mode`` measured in a fresh interpreter (``generate`` writes the files the same way)."""
    cmd = [sys.executable, __file__, "--measure", mode, "--data", str(folder)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and k != "samples"]
    return {k: {"median": statistics.median(r[k] for r in rows), "min": min(r[k] for r in rows), "max": max(r[k] for r in rows)} for k in keys}


def markdown(report: dict) -> str:
    lines = [
        "# vqa_v2 task at real size",
        "",
        f"Synthetic official-format VQA v2 {SPLIT} files: {report['questions']:,} questions x 10 human answers; "
        f"annotations {report['file_mib'][ANNOTATIONS]:.1f} MiB, questions {report['file_mib'][QUESTIONS]:.1f} MiB. "
        f"Each row: a fresh Python process, {report['repeats']} repeats, median (min-max).",
        f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['platform']}, Python {report['machine']['python']}; "
        f"measured {report['date']}. The machine was shared with other jobs, so times are upper bounds.",
        "",
        "| measurement | wall time (s) | peak RSS (MiB) | RSS at the end (MiB) |",
        "|---|---|---|---|",
    ]
    labels = {
        "imports": ("import the task module", "import_s"),
        "json_load": ("plain json.load of both files (reference)", "load_s"),
        "construct": ("construct the task (parse + index)", "construct_s"),
        "iterate": ("construct + build every Sample", None),
    }
    for mode in MODES:
        s = report["results"][mode]["summary"]
        label, key = labels[mode]
        if key is None:
            c, it = s["construct_s"], s["iterate_s"]
            wall = f"{c['median']:.2f} + {it['median']:.2f} ({c['min']:.2f}-{c['max']:.2f} + {it['min']:.2f}-{it['max']:.2f})"
        else:
            wall = f"{s[key]['median']:.2f} ({s[key]['min']:.2f}-{s[key]['max']:.2f})"
        rss, end = s["peak_rss_mib"], s["end_rss_mib"]
        lines.append(f"| {label} | {wall} | {rss['median']:.0f} ({rss['min']:.0f}-{rss['max']:.0f}) | {end['median']:.0f} |")
    n = report["results"]["iterate"]["runs"][0]["samples"]
    lines += [
        "",
        f"Samples built per iteration: {n:,}. Images are opened only when a sample is used.",
        "The json.load row parses both files and keeps nothing: its peak is what naive loading pays. The task "
        "drops the file's bytes before parsing and shrinks each answer object to a shared string while parsing.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=214_354)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, help="folder for the generated files (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "tasks-scale")
    p.add_argument("--measure", choices=MODES + ("generate",), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure == "generate":
        print(json.dumps(generate(args.data, args.questions)))
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure, args.data)))
        return 0
    with tempfile.TemporaryDirectory(prefix="xbench-vqa-scale-") as tmp:
        folder = args.data or Path(tmp)
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--measure", "generate", "--data", str(folder), "--questions", str(args.questions)]
        sizes = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(f"generated {args.questions:,} questions in {time.perf_counter() - t:.1f} s: "
              + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()), flush=True)
        results = {}
        for mode in MODES:
            runs = [run_fresh(mode, folder) for _ in range(args.repeats)]
            results[mode] = {"runs": runs, "summary": summarise(runs)}
            print(mode, json.dumps(results[mode]["summary"]), flush=True)
    report = {
        "benchmark": "vqa_v2 task start-up at real size",
        "date": time.strftime("%Y-%m-%d"),
        "questions": args.questions,
        "repeats": args.repeats,
        "file_mib": {k: v / 2**20 for k, v in sizes.items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vqa_v2_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "vqa_v2_scale.md").write_text(markdown(report))
    print(f"wrote {args.out / 'vqa_v2_scale.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
