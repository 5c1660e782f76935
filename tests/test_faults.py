"""Faults inside a run: failing methods, invalid maps, out-of-memory batches, failing scores.

Each fault comes from a small test plugin registered through ``plugins.build(extra_plugins=...)``,
the same door outside plugins use. Every run is tiny-random-llava on a few easy-vqa samples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xbench.api import Method, RelevanceMap
from xbench.hookspecs import hookimpl
from xbench.records import read_records
from xbench.runner import RunConfig, SampleFailedError, run
from xbench.tasks.easyvqa import EasyVQA


class Boom(Method):
    """Raises for the sample ids in ``fail_ids``; a uniform map for the others."""

    name = "boom"

    @classmethod
    def default_params(cls):
        return {"fail_ids": []}

    def explain(self, vlm, generations):
        bad = [g.sample_id for g in generations if g.sample_id in self.params["fail_ids"]]
        if bad:
            raise RuntimeError(f"kaboom on {bad}")
        return [RelevanceMap(np.ones(g.grid, dtype=np.float32)) for g in generations]


class BadMap(Method):
    """Returns what ``kind`` says: a NaN map, a wrong shape, a bare array, too few maps..."""

    name = "bad_map"

    @classmethod
    def default_params(cls):
        return {"kind": "nan"}

    def explain(self, vlm, generations):
        kind = self.params["kind"]
        maps = []
        for g in generations:
            grid = np.ones(g.grid, dtype=np.float32)
            if kind == "nan":
                grid[0, 0] = np.nan
                maps.append(RelevanceMap(grid))
            elif kind == "inf_extra":
                maps.append(RelevanceMap(grid, extras={"confidence": float("inf")}))
            elif kind == "shape":
                maps.append(RelevanceMap(np.ones((3, 5), dtype=np.float32)))
            elif kind == "per_token_shape":
                maps.append(RelevanceMap(grid, per_token=np.ones((2, 3, 3), dtype=np.float32)))
            elif kind == "array":
                maps.append(grid)
        return maps if kind != "too_few" else []


class OOM(Method):
    """Raises CUDA's out-of-memory error when given more than ``max_batch`` generations."""

    name = "oom"
    calls: list[int] = []  # batch sizes seen, across runs (tests clear it)

    @classmethod
    def default_params(cls):
        return {"max_batch": 1}

    def explain(self, vlm, generations):
        OOM.calls.append(len(generations))
        if len(generations) > self.params["max_batch"]:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(generations)} GiB")
        return [RelevanceMap(np.full(g.grid, 0.5, dtype=np.float32)) for g in generations]


class BadScore(EasyVQA):
    """easy-vqa whose scorer fails on one sample id."""

    name = "easyvqa_badscore"
    fail_id = ""  # set by the test

    def score(self, sample, answer):
        if sample.id == self.fail_id:
            raise ValueError("gold answers unreadable")
        return super().score(sample, answer)


class FaultPlugin:
    @hookimpl
    def xbench_register_methods(self, registry):
        for cls in (Boom, BadMap, OOM):
            registry.register(cls)

    @hookimpl
    def xbench_register_tasks(self, registry):
        registry.register(BadScore)


@pytest.fixture(scope="module")
def fault_plugins(tiny_model_dir):
    from xbench.plugins import build

    return build(extra_plugins=(FaultPlugin(),), load_entry_points=False)


@pytest.fixture(scope="module")
def ids(fault_plugins):
    """The first 8 easy-vqa test ids of seed 0, in run order."""
    task = fault_plugins.registries.tasks.get("easyvqa")()
    return [s.id for s in task.samples(8, 0)]


def _run(plugins, tmp_path, method, params=None, **kw):
    kw = {"out": tmp_path / "run", "device": "cpu", "progress": False, "warmup": 0, **kw}
    config = RunConfig(method=method, method_params=params or {}, **kw)
    summary = run(config, plugins)
    return summary, read_records(tmp_path / "run" / "samples.jsonl")


def test_method_exception_is_a_per_sample_error_and_the_run_continues(fault_plugins, ids, tmp_path):
    fail = [ids[1], ids[4]]
    summary, records = _run(fault_plugins, tmp_path, "boom", {"fail_ids": fail}, limit=6, batch_size=3, warmup=1)
    assert [r["id"] for r in records] == ids[:6]
    errors = {r["id"]: r for r in records if "error" in r}
    assert set(errors) == set(fail)
    for r in errors.values():
        assert r["stage"] == "explain"
        assert r["error"].startswith("method 'boom' failed: RuntimeError: kaboom")
    ok = [r for r in records if "error" not in r]
    assert len(ok) == 4 and all(np.allclose(r["map"], 1.0) for r in ok)
    assert summary["n_ok"] == 4 and summary["n_errors"] == 2 and summary["errors_by_stage"] == {"explain": 2}


def test_fail_fast_stops_with_an_error_naming_method_and_sample(fault_plugins, ids, tmp_path):
    with pytest.raises(SampleFailedError) as info:
        _run(fault_plugins, tmp_path, "boom", {"fail_ids": [ids[1]]}, limit=4, batch_size=2, fail_fast=True, warmup=1)
    message = str(info.value)
    assert f"sample {ids[1]!r} failed at explain (--fail-fast)" in message
    assert "method 'boom' failed: RuntimeError: kaboom" in message
    records = read_records(tmp_path / "run" / "samples.jsonl")
    assert ids[1] not in {r["id"] for r in records}
    assert not (tmp_path / "run" / "summary.json").exists()


def test_fail_fast_stops_on_a_reference_failure_naming_sample_and_stage(fault_plugins, ids, tmp_path):
    with pytest.raises(SampleFailedError) as info:
        _run(fault_plugins, tmp_path, "uniform", limit=4, batch_size=2, fail_fast=True, reference="boom",
             reference_params={"fail_ids": [ids[2]]}, metrics=["agreement_f1"])  # fmt: skip
    message = str(info.value)
    assert f"sample {ids[2]!r} failed at reference (--fail-fast): reference \"boom" in message
    assert "RuntimeError: kaboom" in message


def test_fail_fast_on_the_command_line_is_one_clear_line(fault_plugins, ids, tmp_path, monkeypatch, capsys):
    import xbench.runner
    from xbench.cli import main

    monkeypatch.setattr(xbench.runner, "default", lambda: fault_plugins)
    argv = ["run", "--method", "boom", "--param", f'fail_ids=["{ids[0]}"]', "--limit", "2", "--out", str(tmp_path / "r")]
    code = main(argv + ["--warmup", "0", "--no-progress", "--device", "cpu", "--fail-fast"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"xbench: error: sample {ids[0]!r} failed at explain (--fail-fast): method 'boom' failed")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "kind, message",
    [
        ("nan", "method 'bad_map' returned a map with NaN or infinite values"),
        ("inf_extra", "method 'bad_map' returned a non-finite extra 'confidence'=inf"),
        ("shape", "method 'bad_map' returned a map of shape (3, 5), expected (8, 8)"),
        ("per_token_shape", "method 'bad_map' returned per-token maps of shape (2, 3, 3)"),
        ("array", "method 'bad_map' returned a ndarray, not a RelevanceMap"),
        ("too_few", "method 'bad_map' failed: returned 0 results for 1 inputs"),
    ],
)
def test_invalid_maps_are_validation_errors_naming_the_method(fault_plugins, ids, tmp_path, kind, message):
    summary, records = _run(fault_plugins, tmp_path, "bad_map", {"kind": kind}, limit=2, batch_size=2)
    assert [r["id"] for r in records] == ids[:2]
    for r in records:
        assert r["stage"] == "explain"
        assert message in r["error"]
    assert summary["n_ok"] == 0 and summary["n_errors"] == 2


def test_out_of_memory_batches_are_retried_at_half_size_down_to_one(fault_plugins, ids, tmp_path):
    OOM.calls.clear()
    summary, records = _run(fault_plugins, tmp_path, "oom", {"max_batch": 1}, limit=6, batch_size=4)
    # batch of 4 -> halves of 2 -> singles; then the last batch of 2 -> singles
    assert OOM.calls == [4, 2, 1, 1, 2, 1, 1, 2, 1, 1]
    assert [r["id"] for r in records] == ids[:6]
    assert all("error" not in r and np.allclose(r["map"], 0.5) for r in records)
    assert summary["n_errors"] == 0


def test_out_of_memory_stops_halving_where_the_batch_fits(fault_plugins, tmp_path):
    OOM.calls.clear()
    summary, _ = _run(fault_plugins, tmp_path, "oom", {"max_batch": 2}, limit=4, batch_size=4)
    assert OOM.calls == [4, 2, 2] and summary["n_ok"] == 4


def test_out_of_memory_on_a_single_sample_is_recorded(fault_plugins, tmp_path):
    OOM.calls.clear()
    summary, records = _run(fault_plugins, tmp_path, "oom", {"max_batch": 0}, limit=2, batch_size=2)
    assert OOM.calls == [2, 1, 1]
    assert all(r["error"].startswith("method 'oom' failed: OutOfMemoryError: CUDA out of memory") for r in records)
    assert summary["n_errors"] == 2


def test_a_failing_score_is_a_per_sample_error(fault_plugins, ids, tmp_path, monkeypatch):
    monkeypatch.setattr(BadScore, "fail_id", ids[1])
    summary, records = _run(fault_plugins, tmp_path, "raw_attention", task="easyvqa_badscore", limit=3, batch_size=3)
    bad = [r for r in records if "error" in r]
    assert len(records) == 3 and [r["id"] for r in bad] == [BadScore.fail_id]
    assert bad[0]["stage"] == "score"
    assert bad[0]["error"] == "task 'easyvqa_badscore' could not score the answer: ValueError: gold answers unreadable"
    assert summary["n_ok"] == 2


def test_records_of_a_faulty_run_are_valid_json_lines(fault_plugins, ids, tmp_path):
    _run(fault_plugins, tmp_path, "bad_map", {"kind": "nan"}, limit=2, batch_size=1)
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ids[:2]
