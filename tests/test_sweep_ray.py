"""The Ray executor on a local Ray instance (2 CPUs) gives the local executor's records.

One Ray session for the module (start-up costs seconds). Needs the ``ray`` extra, which
tox and CI install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xbench.records import COST_FIELDS, read_records
from xbench.sweep import sweep

ray = pytest.importorskip("ray")

SUITE = """
models = ["tiny-random-llava"]
tasks = ["easyvqa"]
seeds = [0, 1]

[methods]
rollout = {}
raw_attention = {}

[run]
limit = 4
batch_size = 2
warmup = 0
"""
TIMING = COST_FIELDS  # measured costs differ run to run
RUN_DEPENDENT = {"run_id", "config", "provenance", "timings"}  # folder names, times, versions


@pytest.fixture(scope="module")
def ray_session(xbench_home, tiny_model_dir):
    """A local Ray instance; workers inherit XBENCH_HOME (the tiny model is already built)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _records(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_records(path)]


def _summary(path):
    summary = json.loads(path.read_text())
    metrics = {k: m["value"] for k, m in summary["metrics"].items() if m["category"] != "cost"}
    return {**{k: v for k, v in summary.items() if k not in RUN_DEPENDENT | {"metrics"}}, "metrics": metrics}


def test_ray_sweep_gives_the_local_records(ray_session, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    # the local sweep in a fresh process too, as each Ray worker is: the records are compared bit for bit,
    # and this test process carries whatever state earlier tests left in torch and in loaded models
    local_run = subprocess.run([sys.executable, "-m", "xbench", "sweep", str(suite), "--out", str(tmp_path / "local")],
                               capture_output=True, text=True, check=False)
    assert local_run.returncode == 0, local_run.stderr
    assert sweep(suite, tmp_path / "ray", executor="ray") == {"ok": 4}

    local = json.loads((tmp_path / "local" / "sweep.json").read_text())
    remote = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert [c["key"] for c in remote["cells"]] == [c["key"] for c in local["cells"]]
    assert len(remote["cells"]) == 4 and {c["method"] for c in remote["cells"]} == {"rollout", "raw_attention"}
    assert all(c["pid"] != os.getpid() for c in remote["cells"])  # each cell ran in a Ray worker
    for cell in local["cells"]:
        a, b = tmp_path / "local" / cell["key"], tmp_path / "ray" / cell["key"]
        records = _records(a / "samples.jsonl")
        assert len(records) == 4 and all("error" not in r for r in records)
        assert _records(b / "samples.jsonl") == records, cell["key"]
        assert _summary(b / "summary.json") == _summary(a / "summary.json"), cell["key"]

    # a second Ray sweep finds every cell complete
    assert sweep(suite, tmp_path / "ray", executor="ray") == {"skipped": 4}
