"""The 7B GPU benchmark scripts in their ``--tiny`` mode on CPU: every path is timed, its call
count kept, and peak GPU memory is null off-GPU (never 0)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    "script,paths",
    [
        ("relevancy_gpu_7b", {"generate_sdpa", "generate_eager", "gradient_relevancy", "gradient_relevancy_first_token"}),
        ("fastrm_gpu_7b", {"plain_answer", "fastrm_explained_answer", "fastrm_map", "gradient_relevancy_map"}),
    ],
)
def test_tiny_mode_times_every_path(benchmark_script, tmp_path, script, paths):
    assert benchmark_script(script).main(["--tiny", "--device", "cpu", "--repeats", "2", "--out", str(tmp_path)]) == 0
    (report_file,) = tmp_path.glob("*.json")
    results = json.loads(report_file.read_text())["results"]
    assert paths <= set(results)
    for name in ("generate_sdpa", "plain_answer", "fastrm_explained_answer"):
        if name in results:  # interleaved or measured with repeats: one time per call
            assert len(results[name]["all_seconds"]) == 2
    for res in results.values():
        assert res["seconds"] > 0 and res["peak_gpu_gib"] is None
