"""benchmarks/families_matrix.py on a slice: its table holds what the runs recorded."""

from __future__ import annotations

import json
import sys


def test_matrix_counts_are_the_runs_error_records(benchmark_script, tmp_path, monkeypatch):
    script = benchmark_script("families_matrix")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["families_matrix.py", "--models", "tiny-random-llava", "--methods",
                                      "random,uniform", "--limit", "2", "--out", str(out)])
    script.main()
    result = json.loads((out / "matrix.json").read_text())
    runs = result["runs"]["tiny-random-llava"]
    assert {m: (c["records"], c["errors"], c["grid"]) for m, c in runs.items()} == {
        "random": (2, 0, [8, 8]), "uniform": (2, 0, [8, 8])}
    timing = result["timing"]["tiny-random-llava"]
    assert timing["family"] == "llava" and timing["image_tokens"] == 64 and timing["load_s"] > 0
    assert timing["prompt_format"] == "USER: <image>\n{prompt} ASSISTANT:"
    table = (out / "matrix.md").read_text()
    assert "| random | 0/2 |" in table and "| uniform | 0/2 |" in table
