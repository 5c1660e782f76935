"""Cost columns: resident memory per phase (memory-profiler), and where a run's time went."""

import numpy as np
import pytest

from xbench.records import Record, Summary, Timings, read_records
from xbench.runner import DEFAULT_MODEL, RunConfig, run
from xbench.summary import TIMED_PHASES


RSS_CHILD = """
import json, numpy as np
from xbench import cost
with cost.measure("cpu") as m:
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page touched
    block.sum()
del block
with cost.measure("cpu") as idle:
    sum(range(1000))
print(json.dumps([m.rss_peak_mib, idle.rss_peak_mib, idle.peak_gpu_bytes]))
"""


def test_rss_watch_sees_what_the_block_allocates():
    """In a fresh process: this one, after the rest of the suite, has threads and caches that free memory
    while the block runs, which the resident size (all the process's memory) cannot tell apart."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", RSS_CHILD], capture_output=True, text=True, check=True)
    block, idle, gpu = json.loads(out.stdout.strip().splitlines()[-1])
    assert block >= 48, block
    assert 0 <= idle < 8 and gpu is None


def _run(plugins, out, method):
    return run(RunConfig(method=method, model=DEFAULT_MODEL, limit=4, batch_size=2, out=out, warmup=0,
                         progress=False, metrics=["energy_in_mask"]), plugins)


@pytest.fixture(scope="module")
def two_runs(plugins, tmp_path_factory):
    root = tmp_path_factory.mktemp("costs")
    return {m: (root / m, _run(plugins, root / m, m)) for m in ("uniform", "integrated_gradients")}


def test_memory_per_phase_is_measured_off_gpu_and_tells_methods_apart(two_runs):
    maxima = {}
    for method, (out, summary) in two_runs.items():
        for r in read_records(out / "samples.jsonl"):
            assert r["generate_rss_peak_mib"] is not None and r["explain_rss_peak_mib"] is not None, method
            assert r["generate_rss_peak_mib"] >= 0 and r["explain_rss_peak_mib"] >= 0
            assert r["explain_peak_gpu_mib"] is None  # off-GPU: null, not 0
        m = summary["metrics"]
        for key in ("generate_rss_peak_mib", "explain_rss_peak_mib"):
            values = [r[key] for r in read_records(out / "samples.jsonl")]
            assert m[f"{key}_max"]["value"] == max(values) and m[f"{key}_p50"]["value"] == np.median(values)
        maxima[method] = m["explain_rss_peak_mib_max"]["value"]
    # integrated gradients runs the model 50 times per sample with gradients; uniform returns a constant
    assert maxima["integrated_gradients"] > maxima["uniform"], maxima


def test_timings_account_for_the_wall_time(two_runs):
    for out, summary in two_runs.values():
        t = summary["timings"]
        assert set(t) == set(Timings.__annotations__)
        phases = sum(t[f"{p}_s"] for p in TIMED_PHASES)
        assert all(t[f"{p}_s"] >= 0 for p in TIMED_PHASES) and t["model_load_s"] > 0
        assert t["harness_s"] == pytest.approx(t["wall_s"] - phases) and 0 <= phases <= t["wall_s"]
        assert t["harness_share_after_load"] == pytest.approx(t["harness_s"] / (t["wall_s"] - t["model_load_s"]))
        records = read_records(out / "samples.jsonl")
        assert t["explain_s"] == pytest.approx(sum(r["explain_ms"] for r in records) / 1e3, rel=1e-6)


def test_records_follow_the_typed_schema(two_runs):
    out, summary = two_runs["uniform"]
    for r in read_records(out / "samples.jsonl"):
        assert Record.__required_keys__ <= set(r) <= Record.__required_keys__ | Record.__optional_keys__
    assert Summary.__required_keys__ <= set(summary) <= Summary.__required_keys__ | Summary.__optional_keys__
