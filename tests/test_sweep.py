"""Sweeps on the local executor: planning, skipping complete cells, resuming, recording failures."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from xbench.errors import ParameterError, UnknownNameError
from xbench.records import read_records
from xbench.sweep import (
    EXECUTORS,
    ExecutorError,
    LocalExecutor,
    RayExecutor,
    SuiteError,
    load_suite,
    plan,
    prepare,
    sweep,
)

SUITE = """
models = ["tiny-random-llava"]
tasks = ["easyvqa"]
seeds = [0, 3]

[methods]
raw_attention = {}

[run]
limit = 2
batch_size = 2
warmup = 0
device = "cpu"
"""


def write_suite(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def ids_of(cell_dir: Path) -> list[str]:
    return [r["id"] for r in read_records(cell_dir / "samples.jsonl")]


def test_plan_expands_the_grid_into_deterministic_folders(plugins, tmp_path):
    suite = load_suite(write_suite(tmp_path, SUITE.replace("raw_attention = {}", "raw_attention = {}\nrollout = [{}, {residual = 0.9, token = \"last\"}]")))
    cells = plan(suite, tmp_path / "out", plugins.registries)
    keys = [c.key for c in cells]
    assert keys == [
        f"easyvqa/tiny-random-llava/{m}/seed{s}"
        for m in ("raw_attention", "rollout", "rollout_residual=0.9,token=last")
        for s in (0, 3)
    ]
    last = cells[-1].config
    assert (last.method, last.method_params, last.seed, last.limit, last.batch_size) == ("rollout", {"residual": 0.9, "token": "last"}, 3, 2, 2)
    assert last.out == (tmp_path / "out").resolve() / keys[-1] and last.resume and not last.progress
    assert [c.key for c in plan(suite, tmp_path / "out", plugins.registries)] == keys


def test_suite_defaults_and_task_tables(plugins, tmp_path):
    suite = {"methods": {"rollout": {}}, "tasks": {"easyvqa": {"split": "train", "params": {"mask_tolerance": 8}}}}
    from xbench.runner import DEFAULT_MODEL

    (cell,) = plan(suite, tmp_path, plugins.registries)  # no models: the default model
    assert cell.key == f"easyvqa/{DEFAULT_MODEL}/rollout/seed0"
    assert (cell.config.split, cell.config.task_params, cell.config.model) == ("train", {"mask_tolerance": 8}, DEFAULT_MODEL)


def test_names_are_checked_before_anything_runs(plugins, tmp_path, monkeypatch):
    import xbench.runner

    monkeypatch.setattr(xbench.runner, "run", lambda *a, **k: pytest.fail("a cell ran"))
    bad = write_suite(tmp_path, SUITE.replace("seeds = [0, 3]", "seeds = [0, 3]\n[methods.rolout]\n"))
    with pytest.raises(UnknownNameError, match="unknown method 'rolout'. Did you mean 'rollout'"):
        sweep(bad, tmp_path / "out", plugins=plugins)
    assert not (tmp_path / "out").exists()


def test_local_sweep_runs_then_skips_complete_cells(plugins, tmp_path, monkeypatch, capsys):
    suite = write_suite(tmp_path)
    lines = []
    counts = sweep(suite, tmp_path / "out", plugins=plugins, echo=lines.append)
    assert counts == {"ok": 2}
    index = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert index["counts"] == {"ok": 2} and index["finished"]
    assert [(c["key"], c["status"], c["n_ok"], c["pid"]) for c in index["cells"]] == [
        (f"easyvqa/tiny-random-llava/raw_attention/seed{s}", "ok", 2, os.getpid()) for s in (0, 3)
    ]
    seed0 = tmp_path / "out/easyvqa/tiny-random-llava/raw_attention/seed0"
    seed3 = seed0.parent / "seed3"
    task = plugins.registries.tasks.get("easyvqa")()
    assert ids_of(seed0) == [s.id for s in task.samples(2, 0)]
    assert ids_of(seed3) == [s.id for s in task.samples(2, 3)] != ids_of(seed0)
    assert len(lines) == 2 and lines[0].startswith("[1/2] ok ")

    import xbench.runner

    monkeypatch.setattr(xbench.runner, "run", lambda *a, **k: pytest.fail("a complete cell ran again"))
    assert sweep(suite, tmp_path / "out", plugins=plugins) == {"skipped": 2}
    index = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [(c["status"], c["n_ok"]) for c in index["cells"]] == [("skipped", 2), ("skipped", 2)]


def test_an_interrupted_cell_is_resumed_and_a_grown_limit_extends_cells(plugins, tmp_path):
    suite = write_suite(tmp_path)
    sweep(suite, tmp_path / "out", plugins=plugins)
    cell = tmp_path / "out/easyvqa/tiny-random-llava/raw_attention/seed0"
    full = ids_of(cell)
    lines = (cell / "samples.jsonl").read_bytes().splitlines(keepends=True)
    (cell / "samples.jsonl").write_bytes(lines[0] + lines[1][:40])  # killed while writing the 2nd record
    (cell / "summary.json").unlink()
    assert sweep(suite, tmp_path / "out", plugins=plugins) == {"ok": 1, "skipped": 1}
    assert ids_of(cell) == full

    grown = write_suite(tmp_path, SUITE.replace("limit = 2", "limit = 3"))
    assert sweep(grown, tmp_path / "out", plugins=plugins) == {"ok": 2}
    task = plugins.registries.tasks.get("easyvqa")()
    assert ids_of(cell) == [s.id for s in task.samples(3, 0)]


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(plugins, tiny_model_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken-llava"
    shutil.copytree(tiny_model_dir, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "lm_head" not in k}, str(broken / "model.safetensors"))
    suite = write_suite(tmp_path, SUITE.replace('models = ["tiny-random-llava"]', f'models = ["{broken}", "tiny-random-llava"]'))
    counts = sweep(suite, tmp_path / "out", plugins=plugins)
    assert counts == {"failed": 2, "ok": 2}
    index = json.loads((tmp_path / "out" / "sweep.json").read_text())
    failed = [c for c in index["cells"] if c["status"] == "failed"]
    assert [c["key"] for c in failed] == [f"easyvqa/broken-llava/raw_attention/seed{s}" for s in (0, 3)]
    for c in failed:
        assert "do not match its config.json: missing lm_head.weight" in c["error"]
        error = json.loads((tmp_path / "out" / c["key"] / "error.json").read_text())
        assert error["type"] == "ModelLoadError" and error["error"] == c["error"] and "traceback" not in error

    shutil.copy(tiny_model_dir / "model.safetensors", broken / "model.safetensors")  # repaired: failed cells rerun
    assert sweep(suite, tmp_path / "out", plugins=plugins) == {"ok": 2, "skipped": 2}
    assert not list((tmp_path / "out").rglob("error.json"))


def test_a_cell_folder_of_other_settings_is_refused(plugins, tmp_path):
    suite = write_suite(tmp_path)
    sweep(suite, tmp_path / "out", plugins=plugins)
    changed = write_suite(tmp_path, SUITE.replace("[run]", "[run]\nmax_new_tokens = 2"))
    assert sweep(changed, tmp_path / "out", plugins=plugins) == {"failed": 2}
    index = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert "holds a run with other settings (max_new_tokens 4 there, 2 here)" in index["cells"][0]["error"]
    shrunk = write_suite(tmp_path, SUITE.replace("limit = 2", "limit = 1"))
    assert sweep(shrunk, tmp_path / "out", plugins=plugins) == {"failed": 2}
    assert "limit 2 there, 1 here (a run cannot shrink)" in json.loads((tmp_path / "out" / "sweep.json").read_text())["cells"][0]["error"]


def test_cli_sweep_exit_codes_and_dry_run(plugins, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import xbench.plugins
    import xbench.runner
    from xbench.cli import main

    monkeypatch.setattr(xbench.plugins, "default", lambda: plugins)
    monkeypatch.setattr(xbench.runner, "default", lambda: plugins)
    suite = write_suite(tmp_path)
    assert main(["sweep", str(suite), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "to run    easyvqa/tiny-random-llava/raw_attention/seed0" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    assert main(["sweep", str(suite), "--out", str(tmp_path / "out")]) == 0
    assert "2 ok; index: " in capsys.readouterr().out
    bad = write_suite(tmp_path, SUITE.replace("[run]", "[run]\nmax_new_tokens = 2"))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "2 failed" in captured.out and "Traceback" not in captured.err


def test_executors_are_looked_up_by_name():
    assert EXECUTORS.names() == ["local", "ray"]
    assert EXECUTORS.get("local") is LocalExecutor and EXECUTORS.get("ray") is RayExecutor
    with pytest.raises(UnknownNameError, match="unknown executor 'rey'. Did you mean 'ray'"):
        EXECUTORS.get("rey")
    with pytest.raises(ParameterError, match=r"executor 'local' has no parameter\(s\) \['address'\]; it takes none"):
        LocalExecutor(address="auto")
    assert RayExecutor(address="auto").address == "auto" and RayExecutor().address is None


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ExecutorError, match=r"the ray executor needs Ray: pip install 'xbench\[ray\]'"):
        RayExecutor().run([], lambda r: None)


@pytest.mark.parametrize("resources, asks", [({"CPU": 8.0, "GPU": 2.0}, {"num_gpus": 1}), ({"CPU": 2.0}, {"num_cpus": 1})])
def test_ray_cells_ask_for_a_gpu_when_the_cluster_has_one(resources, asks):
    class Cluster:
        @staticmethod
        def cluster_resources():
            return resources

    assert RayExecutor.resources(Cluster) == asks


def test_suite_out_defaults_to_runs_and_suite_name(plugins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    planned = prepare(write_suite(tmp_path), plugins=plugins)
    assert planned.out == (tmp_path / "runs" / "suite").resolve()
    with pytest.raises(SuiteError, match="not found"):
        prepare(tmp_path / "missing.toml", plugins=plugins)


def test_a_ray_init_failure_is_a_clear_error(monkeypatch):
    import types

    fake = types.SimpleNamespace(is_initialized=lambda: False)

    def init(**kwargs):
        raise ConnectionError(f"could not connect to {kwargs['address']}")

    fake.init = init
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(ExecutorError, match=r"cannot start or reach Ray at 'auto': ConnectionError: could not"):
        RayExecutor(address="auto").run([], lambda r: None)


def _closed_local_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_unreachable_ray_address_fails_at_once_naming_it(monkeypatch, form):
    import time
    import types

    def init(**kwargs):
        pytest.fail("ray.init was called for an address nothing listens on")

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False, init=init))
    address = form.format(port=_closed_local_port())
    start = time.monotonic()
    with pytest.raises(ExecutorError, match=rf"^cannot reach Ray at '{address}': Connection refused \(within 10 s\)$"):
        RayExecutor(address=address).run([], lambda r: None)
    assert time.monotonic() - start < 30


def test_suites_with_non_finite_numbers_or_dates_are_refused_with_the_key_path(plugins, tmp_path):
    for text, message in [
        ("[methods]\nrollout = {residual = inf}\n", "suite.methods.rollout.residual is inf: a suite takes finite numbers only"),
        ("[methods]\nrollout = [{}, {residual = nan}]\n", "suite.methods.rollout[1].residual is nan"),
        ("seeds = [0]\nwhen = 2024-01-01\n[methods]\nrollout = {}\n", "suite: unknown key 'when'"),
        ("[methods]\nrollout = {token = 2024-01-01T10:00:00}\n", "suite.methods.rollout.token is the TOML date/time 2024-01-01T10:00:00"),
        ("[methods]\nrollout = {}\n[tasks.easyvqa]\nparams = {mask_tolerance = 07:30:00}\n", "suite.tasks.easyvqa.params.mask_tolerance is the TOML date/time 07:30:00"),
    ]:
        with pytest.raises(SuiteError) as exc:
            plan(load_suite(write_suite(tmp_path, text)), tmp_path / "out", plugins.registries)
        assert message in str(exc.value), str(exc.value)


def test_a_huge_grid_is_refused_with_its_count_before_building_anything(plugins, tmp_path, monkeypatch):
    monkeypatch.setattr(plugins.registries.methods.get("rollout"), "__init__", lambda *a, **k: pytest.fail("a method was built"))
    seeds = ", ".join(str(i) for i in range(1000))
    variants = ", ".join(["{}"] * 1000)
    suite = f"seeds = [{seeds}]\n[methods]\nrollout = [{variants}]\n"
    with pytest.raises(SuiteError, match=r"^suite expands to 1000000 cells, more than the limit of 10000: split it"):
        plan(load_suite(write_suite(tmp_path, suite)), tmp_path / "out", plugins.registries)


def test_the_sweep_index_is_appended_per_cell_not_rewritten(plugins, tmp_path, monkeypatch):
    from xbench import sweep as sweep_module

    writes = []
    real = sweep_module.write_json_atomic
    monkeypatch.setattr(sweep_module, "write_json_atomic", lambda path, obj: (writes.append(Path(path).name), real(path, obj)))
    suite = write_suite(tmp_path, SUITE.replace("seeds = [0, 3]", "seeds = [0, 1, 2]").replace("limit = 2", "limit = 1"))
    assert sweep(suite, tmp_path / "out", plugins=plugins) == {"ok": 3}
    assert writes.count("sweep.json") == 2  # at the start and at the end, whatever the number of cells
    log = [json.loads(line) for line in (tmp_path / "out" / "sweep.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log] == ["started", "cell", "cell", "cell"]
    assert [e["key"] for e in log[1:]] == [f"easyvqa/tiny-random-llava/raw_attention/seed{s}" for s in (0, 1, 2)]
    assert all(e["status"] == "ok" and e["n_ok"] == 1 for e in log[1:])


def test_a_cell_folder_with_records_but_no_summary_goes_through_the_identity_check(plugins, tmp_path):
    suite = write_suite(tmp_path)
    sweep(suite, tmp_path / "out", plugins=plugins)
    cell = tmp_path / "out/easyvqa/tiny-random-llava/raw_attention/seed0"
    (cell / "summary.json").unlink()
    other = write_suite(tmp_path, SUITE.replace("raw_attention = {}", "raw_attention = {layer = 0}"))
    # the relabelled cell is a new folder; point it at the old one to see the refusal
    (cell.parent.parent / "raw_attention_layer=0").mkdir()
    shutil.copytree(cell, cell.parent.parent / "raw_attention_layer=0" / "seed0")
    counts = sweep(other, tmp_path / "out", plugins=plugins)
    assert counts == {"failed": 1, "ok": 1}
    index = json.loads((tmp_path / "out" / "sweep.json").read_text())
    failed = [c for c in index["cells"] if c["status"] == "failed"]
    assert failed[0]["key"] == "easyvqa/tiny-random-llava/raw_attention_layer=0/seed0"
    assert "was run with method params {'layer': -1, 'token': 'mean'}, this run asks for {'layer': 0, 'token': 'mean'}" in failed[0]["error"]


SHIPPED_SUITES = sorted((Path(__file__).parent.parent / "benchmarks" / "suites").glob("*.toml"))


def test_the_shipped_suites_are_found():
    assert {p.name for p in SHIPPED_SUITES} >= {"smoke.toml", "pixel_pooling.toml"}


@pytest.mark.parametrize("suite_file", SHIPPED_SUITES, ids=lambda p: p.name)
def test_shipped_suites_plan_and_build_their_methods(plugins, tmp_path, suite_file):
    cells = plan(load_suite(suite_file), tmp_path / "out", plugins.registries)
    assert cells
    for cell in cells:  # a misspelt method parameter fails here, not mid-sweep
        plugins.registries.methods.get(cell.config.method)(**cell.config.method_params)
