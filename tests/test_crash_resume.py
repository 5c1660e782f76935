"""Crash safety: a run killed with SIGKILL at random points and resumed loses and duplicates nothing.

The kill test drives the real command line (``python -m xbench.cli run ... --resume``) in a
child process and kills it at 11 seeded random points: 4 a random time after start (most
land in imports or model loading, which are cheap to kill), 7 a random moment after the
child wrote its 1st-3rd new record (inside the next sample's compute or write). Each kill
costs a process start (importing torch and transformers dominates), hence so few. Batch size 1 keeps each sample's computation independent
of where a resume starts, so the final records must equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xbench.errors import RunDirectoryError
from xbench.records import COST_FIELDS, RecordWriter, read_records
from xbench.runner import RunConfig, run

N_SAMPLES = 32
KILL_SEED = 8
TIMING_KEYS = COST_FIELDS  # measured costs differ run to run


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_plan(rng: random.Random) -> list[tuple[str, float, int]]:
    """11 kills: 4 at a random time after start, 7 a random moment after 1-3 new records."""
    modes = ["startup"] * 4 + ["records"] * 7
    rng.shuffle(modes)
    return [(m, rng.uniform(0.2, 3.0) if m == "startup" else rng.uniform(0.0, 0.08), rng.randint(1, 3)) for m in modes]


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def test_sigkill_at_random_points_then_resume_loses_and_duplicates_nothing(tmp_path, plugins, tiny_model_dir):
    out = tmp_path / "run"
    samples = out / "samples.jsonl"
    cmd = [sys.executable, "-m", "xbench.cli", "run", "--method", "raw_attention", "--limit", str(N_SAMPLES)]
    cmd += ["--batch-size", "1", "--warmup", "0", "--no-progress", "--device", "cpu", "--out", str(out), "--resume"]
    log = open(tmp_path / "stderr.log", "w+b")
    kills, history = 0, []
    for mode, delay, n_new in _kill_plan(random.Random(KILL_SEED)):
        before = _lines(samples)
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        if mode == "records":
            deadline = time.monotonic() + 120
            while _lines(samples) < before + n_new and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += child.returncode == -signal.SIGKILL
        history.append((mode, round(delay, 3), n_new, before, _lines(samples), child.returncode))
    print("kills (mode, delay s, new records awaited, lines before, lines after, rc):", *history, sep="\n  ")
    assert kills >= 10, f"only {kills} kills hit a running process: {history}"
    assert not (out / "summary.json").exists(), f"the run ended before the last kill: {history}"

    final = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    log.seek(0)
    assert final.returncode == 0, final.stderr + log.read().decode()
    assert "Traceback" not in final.stderr

    raw = samples.read_bytes()
    assert raw.endswith(b"\n")
    records = [json.loads(line) for line in raw.decode().splitlines()]  # every line is valid JSON
    expected = [s.id for s in plugins.registries.tasks.get("easyvqa")().samples(N_SAMPLES, 0)]
    assert [r["id"] for r in records] == expected, f"lost or duplicated ids; kills: {history}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_records"] == summary["n_ok"] == N_SAMPLES

    # the same run without interruption writes the same records (timings aside)
    clean = tmp_path / "clean"
    run(RunConfig(method="raw_attention", limit=N_SAMPLES, batch_size=1, warmup=0, device="cpu", out=clean, progress=False))
    assert [_strip(r) for r in records] == [_strip(r) for r in read_records(clean / "samples.jsonl")]


def test_a_torn_last_line_is_cut_away_on_resume_and_its_sample_redone(tmp_path, plugins, tiny_model_dir):
    out = tmp_path / "run"
    config = RunConfig(method="raw_attention", limit=3, batch_size=1, warmup=0, device="cpu", out=out, progress=False)
    run(config)
    path = out / "samples.jsonl"
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # a crash inside the 3rd write
    (out / "summary.json").unlink()
    assert [r["id"] for r in read_records(path)] == [json.loads(x)["id"] for x in lines[:2]]
    config.resume = True
    summary = run(config)
    redone = path.read_bytes().splitlines(keepends=True)
    assert len(redone) == 3 and [json.loads(x)["id"] for x in redone] == [json.loads(x)["id"] for x in lines]
    assert summary["n_records"] == 3


DAMAGES = [
    (b"{not json}\n", "not JSON (Expecting property name enclosed in double quotes"),
    (b"[1, 2]\n", "a JSON list, not a record object"),
    (b'{"no_id": 1}\n', "no 'id'"),
    (b'{"id": 7}\n', "'id' is 7, not a string"),
    (b'{"id": null}\n', "'id' is None, not a string"),
    (b"\x00\x00\x00\n", "not JSON"),
    (b'{"id": "c", "metrics": [0.5]}\n', "field 'metrics' is a list, expected dict"),
    (b'{"id": "c", "explain_ms": "fast"}\n', "field 'explain_ms' is a string, expected int or float"),
    (b'{"id": "c", "error": true}\n', "field 'error' is a boolean, expected str"),
    (b'{"id": "c", "explain_ms": NaN}\n', "not JSON (non-finite number NaN"),
    (b'{"id": "c", "scores": {"accuracy": Infinity}}\n', "not JSON (non-finite number Infinity"),
    (b'{"id": "a"}\n', "id 'a' was recorded on an earlier line"),
]


@pytest.mark.parametrize("damage, reason", DAMAGES, ids=[d[1].split(" (")[0] for d in DAMAGES])
def test_a_malformed_line_is_reported_with_its_number_and_set_aside(tmp_path, capsys, damage, reason):
    path = tmp_path / "samples.jsonl"
    with RecordWriter(path) as writer:
        writer.append({"id": "a"})
    with open(path, "ab") as fh:
        fh.write(damage)
    with RecordWriter(path) as writer:
        writer.append({"id": "b"})
    assert [r["id"] for r in read_records(path, repair=True)] == ["a", "b"]
    err = capsys.readouterr().err
    assert err.startswith(f"xbench: warning: {path} line 2: {reason}"), err
    assert err.rstrip().endswith("; set aside (a resumed run explains that sample again)") and err.count("\n") == 1
    assert path.read_bytes().count(b"\n") == 3  # nothing truncated
    read_records(path)
    assert capsys.readouterr().err == ""  # reported once per process


def test_many_bad_lines_are_reported_up_to_a_count(tmp_path, capsys):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b"garbage\n" * 9 + b'{"id": "z"}\n')
    assert [r["id"] for r in read_records(path)] == ["z"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 6 and err[-1] == f"xbench: warning: {path}: 4 more lines set aside"


def test_a_run_with_bad_record_lines_resumes_and_redoes_those_samples(tmp_path, plugins, tiny_model_dir, capsys):
    out = tmp_path / "run"
    config = RunConfig(method="raw_attention", limit=4, batch_size=1, warmup=0, device="cpu", out=out, progress=False)
    run(config)
    path = out / "samples.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    ids = [json.loads(x)["id"] for x in lines]
    spoiled = json.loads(lines[1])
    spoiled["metrics"] = "lost"
    path.write_bytes(lines[0] + json.dumps(spoiled).encode() + b"\n" + b"{cut\n" + lines[3])
    (out / "summary.json").unlink()
    capsys.readouterr()
    config.resume = True
    summary = run(config)
    err = capsys.readouterr().err
    assert f"{path} line 2: field 'metrics' is a string, expected dict" in err and f"{path} line 3: not JSON" in err
    kept = read_records(path)
    assert sorted(r["id"] for r in kept) == sorted(ids) and len(kept) == 4
    assert summary["n_records"] == summary["n_ok"] == 4


def test_summary_is_replaced_atomically(tmp_path, monkeypatch):
    from xbench import records

    target = tmp_path / "summary.json"
    records.write_json_atomic(target, {"v": 1})

    def crash(src, dst):
        raise KeyboardInterrupt  # dies between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        records.write_json_atomic(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
