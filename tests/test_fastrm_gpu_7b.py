"""benchmarks/fastrm_gpu_7b.py's label-store and proxy-training figures, in its ``--tiny`` mode on CPU."""

from __future__ import annotations

import json

import pytest


def test_tiny_mode_reports_labelling_store_and_training(benchmark_script, tmp_path):
    argv = ["--tiny", "--device", "cpu", "--repeats", "1", "--label-samples", "2", "--train-steps", "3",
            "--train-batch", "2", "--out", str(tmp_path)]  # fmt: skip
    assert benchmark_script("fastrm_gpu_7b").main(argv) == 0
    (report_file,) = tmp_path.glob("*.json")
    report = json.loads(report_file.read_text())
    store, results = report["store"], report["results"]
    # the tiny config: hidden 64, 8 x 8 image tokens, answers forced to 8 tokens, float32 on CPU
    formula = (64 + 8) * 64 * 4 + 64 * 4
    assert store["store_dtype"] == "float32" and store["formula_bytes_per_sample"] == formula
    assert abs(store["bytes_per_sample"] - formula) / formula < 0.05
    labelling = results["labelling_per_sample"]
    assert len(labelling["all_seconds"]) == 2 and labelling["peak_gpu_gib"] is None
    assert store["labelling_samples_per_second"] == pytest.approx(1 / labelling["seconds"])
    step = results["proxy_training_step"]
    assert step["seconds"] > 0 and step["peak_gpu_gib"] is None and store["train_steps"] == 3
    assert store["train_rows"] == 8  # the labelled rows repeated to 4 batches
    md = next(tmp_path.glob("*.md")).read_text()
    assert "samples/s" in md and "ms/step at batch 2" in md
