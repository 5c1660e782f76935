"""The FastRM CPU benchmark script end to end at tiny sizes: its report names the proxy it timed."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("fastrm_cpu")


def test_report_times_every_path_and_names_the_proxy(bench, tmp_path):
    argv = ["--limit", "4", "--batch-sizes", "2", "--repeats", "1", "--threads", "1", "--out", str(tmp_path),
            "--no-progress"]
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets the process's torch threads
    (json_file,) = tmp_path.glob("*.json")
    report = json.loads(json_file.read_text())
    assert report["proxy"]["head"] == "attention" and report["proxy"]["head_params"]["normalise"] == "minmax"
    (md_file,) = tmp_path.glob("*.md")
    text = md_file.read_text()
    assert "'normalise': 'minmax'" in text and "## Batch size 2" in text
