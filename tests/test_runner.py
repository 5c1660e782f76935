import json

import numpy as np
import pytest

from xbench.api import Method, SampleError, Task
from xbench.errors import RunDirectoryError
from xbench.hookspecs import hookimpl
from xbench.plugins import build
from xbench.records import read_records
from xbench.runner import RunConfig, run

RECORD_KEYS = {
    "id", "question", "gold", "answer", "answer_ids", "prompt_len", "meta", "scores", "metrics", "extras",
    "generate_ms", "explain_ms", "generate_peak_gpu_mib", "explain_peak_gpu_mib", "generate_rss_peak_mib",
    "explain_rss_peak_mib", "grid", "layout", "map",
    "run_identity",  # the run folder's identity hash (run.json), stamped by RecordWriter
}


def _config(tmp_path, **kw):
    base = dict(method="rollout", model="tiny-random-llava", limit=6, out=tmp_path / "run", warmup=0, progress=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, plugins):
    out = tmp_path_factory.mktemp("r")
    summary = run(_config(out, batch_size=4), plugins)
    return out / "run", summary


def test_records_schema_and_summary(finished_run):
    out, summary = finished_run
    records = read_records(out / "samples.jsonl")
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    for r in records:
        assert set(r) == RECORD_KEYS
        assert r["grid"] == [8, 8] and np.asarray(r["map"]).shape == (8, 8)
        assert r["generate_peak_gpu_mib"] is None and r["explain_peak_gpu_mib"] is None  # CPU: null, not 0
        assert r["explain_ms"] > 0 and r["scores"]["accuracy"] in (0.0, 1.0)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["n_records"] == 6 and summary["n_errors"] == 0
    m = summary["metrics"]
    assert m["accuracy"]["value"] == np.mean([r["scores"]["accuracy"] for r in records])
    assert m["explain_ms_p50"]["value"] == pytest.approx(np.percentile([r["explain_ms"] for r in records], 50))
    assert m["explain_peak_gpu_mib"]["value"] is None and m["peak_rss_mib"]["value"] > 50
    assert m["accuracy"]["higher_is_better"] is True and m["explain_ms_p50"]["higher_is_better"] is False
    prov = summary["provenance"]
    for key in ("xbench", "python", "torch", "transformers", "device_name", "started", "finished"):
        assert prov[key], key
    assert summary["model"]["dtype"] == "float32" and summary["model"]["model_hash"]
    assert summary["task"]["data_hash"] and summary["config"]["seed"] == 0
    assert summary["method"] == {"name": "rollout", "label": "rollout", "params": {"residual": 0.5, "token": "mean"}}


def test_same_seed_same_records(finished_run, plugins, tmp_path):
    out, _ = finished_run
    run(_config(tmp_path, batch_size=1), plugins)  # batch size must not matter either
    a = read_records(out / "samples.jsonl")
    b = read_records(tmp_path / "run" / "samples.jsonl")
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["answer"] == rb["answer"]
        np.testing.assert_allclose(ra["map"], rb["map"], atol=1e-5)


def test_seed_changes_sample_choice(plugins):
    task = plugins.registries.tasks.get("easyvqa")()
    ids = lambda seed: [s.id for s in task.samples(limit=5, seed=seed)]  # noqa: E731
    assert ids(0) == ids(0) and ids(0) != ids(1)


def test_existing_records_need_resume(finished_run, plugins):
    out, _ = finished_run
    with pytest.raises(RunDirectoryError, match="--resume"):
        run(RunConfig(method="rollout", model="tiny-random-llava", limit=2, out=out, warmup=0, progress=False), plugins)


def test_resume_after_torn_write_holds_each_id_once(plugins, tmp_path):
    run(_config(tmp_path, limit=3), plugins)
    path = tmp_path / "run" / "samples.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"id": "test-half-written", "question')  # a crash mid-write
    summary = run(_config(tmp_path, limit=7, resume=True), plugins)
    records = read_records(path)
    ids = [r["id"] for r in records]
    assert len(ids) == 7 and len(set(ids)) == 7
    assert ids == [s.id for s in plugins.registries.tasks.get("easyvqa")().samples(limit=7, seed=0)]
    assert summary["n_records"] == 7
    assert path.read_bytes().endswith(b"\n")


# --------------------------------------------------------------------------- faults
class BadImagesTask(Task):
    """easy-vqa questions where every second image is unreadable and one sample is broken."""

    name = "bad_images"

    def samples(self, limit=None, seed=0):
        from xbench.tasks.easyvqa import EasyVQA

        for i, s in enumerate(EasyVQA().samples(limit=limit, seed=seed)):
            if i == 1:
                yield SampleError("broken", "questions.json line 2: no answers")
                continue
            if i % 2:
                s.image_path = self.data_dir / f"corrupt-{i}.png"
                s.image_path.write_bytes(b"\x89PNG garbage")
            yield s

    def score(self, sample, answer):
        return {"accuracy": float(answer == sample.answers[0])}


class ExplodingMethod(Method):
    name = "exploding"
    needs = frozenset()

    def explain(self, vlm, generations):
        if any(g.sample_id.endswith("4") for g in generations):
            raise RuntimeError("kaboom")
        return [__import__("xbench.api").api.RelevanceMap(np.ones(g.grid, np.float32)) for g in generations]


class FaultPlugin:
    @hookimpl
    def xbench_register_tasks(self, registry):
        registry.register(BadImagesTask)

    @hookimpl
    def xbench_register_methods(self, registry):
        registry.register(ExplodingMethod)


def test_bad_images_and_failing_method_become_error_records(tmp_path):
    plugins = build(extra_plugins=(FaultPlugin(),), load_entry_points=False)
    cfg = _config(tmp_path, task="bad_images", method="raw_attention", data_dir=str(tmp_path), limit=6)
    summary = run(cfg, plugins)
    records = read_records(tmp_path / "run" / "samples.jsonl")
    assert len(records) == 6
    errors = {r["id"]: r for r in records if "error" in r}
    assert errors["broken"]["stage"] == "data" and "no answers" in errors["broken"]["error"]
    image_errors = [r for r in errors.values() if r["stage"] == "image"]
    assert len(image_errors) == 2 and all("corrupt-" in r["error"] for r in image_errors)
    assert summary["n_errors"] == 3 and summary["errors_by_stage"] == {"data": 1, "image": 2}
    assert summary["n_ok"] == 3

    ids = [s.id for s in plugins.registries.tasks.get("easyvqa")().samples(limit=8, seed=0)]
    assert any(i.endswith("4") for i in ids[:8]), ids
    summary = run(_config(tmp_path / "m", method="exploding", limit=8, batch_size=4), plugins)
    records = read_records(tmp_path / "m" / "run" / "samples.jsonl")
    failed = [r for r in records if "error" in r]
    assert failed and all("method 'exploding' failed" in r["error"] and "kaboom" in r["error"] for r in failed)
    assert {r["id"] for r in failed} == {i for i in ids if i.endswith("4")}
    assert summary["n_ok"] == 8 - len(failed)  # the rest of each batch survived


def test_unknown_method_param_is_refused(plugins, tmp_path):
    from xbench.errors import ParameterError

    with pytest.raises(ParameterError, match="no parameter"):
        run(_config(tmp_path, method_params={"stepz": 3}), plugins)
