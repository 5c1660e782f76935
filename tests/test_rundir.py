"""Run folders (xbench.rundir): identity recorded and checked on resume, one writer at a time,
an unwritable folder refused before the model loads, write errors as one clear line."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from xbench import records, rundir
from xbench.errors import RunDirectoryError
from xbench.hookspecs import hookimpl
from xbench.records import RecordWriter, read_records
from xbench.runner import Run, RunConfig, run


def _easyvqa_copy(plugins):
    """A second task identical to easyvqa but for its name (a task change that keeps the data)."""
    base = plugins.registries.tasks.get("easyvqa")

    class EasyVQACopy(base):
        name = "easyvqa_copy"

    class Plugin:
        @hookimpl
        def xbench_register_tasks(self, registry):
            registry.register(EasyVQACopy)

    from xbench.plugins import build

    return build(extra_plugins=(Plugin(),), load_entry_points=False)


@pytest.fixture(scope="module")
def two_task_plugins(plugins, tiny_model_dir):
    return _easyvqa_copy(plugins)


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    return model


def _prepare(config: RunConfig, plugins) -> rundir.RunFolder:
    r = Run(config, plugins)
    r._prepare_out_dir()
    return r.run_folder


def _base(out: Path, model: Path) -> RunConfig:
    return RunConfig(
        method="rollout", model=str(model), limit=2, device="cpu", out=out, resume=True, progress=False,
        metrics=["agreement_f1", "pointing_game"],
    )


def _change_weights(model: Path) -> None:
    data = bytearray((model / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    (model / "model.safetensors").write_bytes(bytes(data))


def _change_config(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["xbench_test_marker"] = 1
    (model / "config.json").write_text(json.dumps(config))


#: (identity field named in the error, change to the config, change to the world)
CHANGES = [
    ("method", dict(method="raw_attention"), None),
    ("method params", dict(method_params={"residual": 0.9}), None),
    ("model", dict(model="tiny-random-llava"), None),
    ("model config hash", {}, _change_config),
    ("model weights hash", {}, _change_weights),
    ("dtype", dict(dtype="bfloat16"), None),
    ("task", dict(task="easyvqa_copy"), None),
    ("split", dict(split="train"), None),
    ("task params", dict(task_params={"mask_tolerance": 8}), None),
    ("data hash", {}, "data"),
    ("seed", dict(seed=1), None),
    ("metrics", dict(metrics=["agreement_f1", "pointing_game", "energy_in_mask"]), None),
    ("metric params", dict(metric_params={"tau": 0.5}), None),
    ("reference", dict(reference="raw_attention"), None),
    ("reference params", dict(reference_params={"token": "first"}), None),
    ("control", dict(control="randomized"), None),
    ("max_new_tokens", dict(max_new_tokens=2), None),
    ("xbench version", {}, "version"),
]


@pytest.mark.parametrize("field, change, world", CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_with_each_identity_field_changed_is_refused_naming_it(field, change, world, tmp_path, model_copy,
                                                                         two_task_plugins, monkeypatch):
    out = tmp_path / "run"
    base = _base(out, model_copy)
    folder = _prepare(base, two_task_plugins)
    ident = json.loads((out / "run.json").read_text())
    assert ident["hash"] == folder.hash and ident["identity"]["method"] == "rollout"
    with RecordWriter(folder.records) as writer:
        writer.append({"id": "x", "error": "placeholder"})
    folder.release()
    assert [r["run_identity"] for r in read_records(folder.records)] == [folder.hash]
    _prepare(base, two_task_plugins).release()  # the same identity resumes

    if world == "data":
        task_cls = two_task_plugins.registries.tasks.get("easyvqa")
        monkeypatch.setattr(task_cls, "data_hash", lambda self: "0123456789abcdef")
    elif world == "version":
        import xbench

        monkeypatch.setattr(xbench, "__version__", "999.0")
    elif world is not None:
        world(model_copy)
    with pytest.raises(RunDirectoryError) as exc:
        _prepare(replace(base, **change), two_task_plugins)
    message = str(exc.value)
    old = ident["identity"][field]
    assert message.startswith(f"--resume: {out} was run with "), message
    assert f" {field} {old!r}, this run asks for " in message.replace("; ", " ").replace("with ", "with  "), message
    assert message.endswith("(its records would be mixed with this run's: choose another --out or move it away)")


def test_a_run_names_every_difference_at_once(tmp_path, model_copy, two_task_plugins):
    out = tmp_path / "run"
    base = _base(out, model_copy)
    folder = _prepare(base, two_task_plugins)
    with RecordWriter(folder.records) as writer:
        writer.append({"id": "x", "error": "placeholder"})
    folder.release()
    with pytest.raises(RunDirectoryError) as exc:
        _prepare(replace(base, method="raw_attention", seed=3), two_task_plugins)
    assert str(exc.value).startswith(
        f"--resume: {out} was run with method 'rollout', this run asks for 'raw_attention'; "
        "method params {'residual': 0.5, 'token': 'mean'}, this run asks for {'layer': -1, 'token': 'mean'}; "
        "seed 0, this run asks for 3 ("
    )


def test_records_without_an_identity_are_refused_and_an_empty_folder_gets_a_new_one(tmp_path, model_copy, plugins):
    out = tmp_path / "run"
    out.mkdir()
    (out / "samples.jsonl").write_text('{"id": "a", "error": "x"}\n')
    with pytest.raises(RunDirectoryError, match=r"holds records but no run.json .* nothing ties them to this run"):
        _prepare(_base(out, model_copy), plugins)
    (out / "samples.jsonl").write_text("")
    _prepare(replace(_base(out, model_copy), method="raw_attention"), plugins).release()
    assert json.loads((out / "run.json").read_text())["identity"]["method"] == "raw_attention"


def test_records_stamped_by_another_run_are_set_aside(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    records.write_json_atomic(out / "run.json", {"format": records.IDENTITY_FORMAT, "hash": "aaaa", "identity": {}})
    path = out / "samples.jsonl"
    path.write_text('{"id": "a", "run_identity": "aaaa"}\n{"id": "b", "run_identity": "bbbb"}\n{"id": "c"}\n')
    assert [r["id"] for r in read_records(path)] == ["a"]
    err = capsys.readouterr().err
    assert f"{path} line 2: record of id 'b' carries run identity bbbb, this folder's run.json has aaaa" in err
    assert f"{path} line 3: record of id 'c' carries no run identity" in err


# --------------------------------------------------------------------------- one writer


def test_a_held_folder_is_refused_at_once_naming_the_holder_and_a_dead_holder_is_not(tmp_path, model_copy, plugins):
    out = tmp_path / "run"
    config = _base(out, model_copy)
    first = _prepare(config, plugins)
    assert (out / ".xbench.lock").read_text().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(RunDirectoryError, match=rf"{out} is in use by another xbench run \(pid {os.getpid()} on .*\); "
                                                r"one process writes a run folder at a time"):
        _prepare(config, plugins)
    first.release()
    (out / ".xbench.lock").write_text("pid 999999999 on elsewhere since long ago\n")  # what a killed run leaves
    _prepare(config, plugins).release()
    # a lock held by another process (flock, as a second xbench would) refuses too
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(out / '.xbench.lock')!r}, os.O_RDWR)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryError, match="is in use by another xbench run"):
            _prepare(config, plugins)
    finally:
        holder.kill()
        holder.wait()
    _prepare(config, plugins).release()  # the kernel released the killed holder's lock


def test_two_concurrent_resumes_one_is_refused_and_no_id_is_recorded_twice(tmp_path, plugins, tiny_model_dir):
    """The first process is stopped (SIGSTOP) while it holds the folder, so the second
    certainly meets a live holder: no timing assumption."""
    out = tmp_path / "run"
    n = 6
    cmd = [sys.executable, "-m", "xbench.cli", "run", "--method", "raw_attention", "--limit", str(n), "--batch-size", "1",
           "--warmup", "0", "--no-progress", "--device", "cpu", "--out", str(out), "--resume"]  # fmt: skip
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 240
    while not (samples.exists() and samples.read_bytes().count(b"\n") >= 1) and first.poll() is None:
        assert time.monotonic() < deadline, "the first run wrote no record"
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_err = first.communicate(timeout=240)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip() == (
        f"xbench: error: {out} is in use by another xbench run (pid {first.pid} on "
        + second.stderr.split(f"(pid {first.pid} on ", 1)[1].split(")", 1)[0]
        + "); one process writes a run folder at a time: wait for it to finish or choose another --out"
    )
    ids = [json.loads(line)["id"] for line in samples.read_text().splitlines()]
    expected = [s.id for s in plugins.registries.tasks.get("easyvqa")().samples(n, 0)]
    assert ids == expected and len(set(ids)) == n
    assert json.loads((out / "summary.json").read_text())["n_records"] == n


# --------------------------------------------------------------------------- writability and write errors


def _unwritable_dir() -> Path | None:
    """An existing folder this process cannot create files in (root ignores permissions: use sysfs)."""
    for candidate in (Path("/sys/kernel"), Path("/proc/self")):
        try:
            fd = os.open(candidate / ".xbench-probe", os.O_CREAT | os.O_RDWR)
        except OSError:
            return candidate if candidate.is_dir() else None
        os.close(fd)
        os.unlink(candidate / ".xbench-probe")
    return None


def test_an_unwritable_out_fails_before_the_model_loads(plugins, tmp_path, monkeypatch):
    import xbench.runner

    monkeypatch.setattr(xbench.runner, "load_vlm", lambda *a, **k: pytest.fail("the model loaded"))
    target = _unwritable_dir()
    if target is None:
        pytest.skip("no unwritable folder here")
    config = RunConfig(method="raw_attention", limit=1, device="cpu", out=target, progress=False)
    with pytest.raises(RunDirectoryError, match=rf"^cannot write in the run directory {target}: "):
        run(config, plugins)
    with pytest.raises(RunDirectoryError, match=rf"^cannot create the run directory {target}/sub: "):
        run(replace(config, out=target / "sub"), plugins)


def test_disk_full_while_writing_records_is_one_line_naming_the_file(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "samples.jsonl"
    path.symlink_to("/dev/full")
    with pytest.raises(RunDirectoryError, match=rf"^cannot write a record to {path}: No space left on device$"):
        with RecordWriter(path) as writer:
            writer.append({"id": "a"})


def test_disk_full_in_a_run_is_one_clear_line(tmp_path, plugins, tiny_model_dir, capsys, monkeypatch):
    import xbench.runner
    from xbench.cli import main

    monkeypatch.setattr(xbench.runner, "default", lambda: plugins)
    out = tmp_path / "run"
    records_path = out / "samples.jsonl"
    real_write = os.write

    def write(fd, data):  # the disk fills up when the first record is written
        if records_path.exists() and os.fstat(fd).st_ino == records_path.stat().st_ino:
            real_write(fd, bytes(data)[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    code = main(["run", "--method", "raw_attention", "--limit", "2", "--warmup", "0", "--no-progress", "--device", "cpu",
                 "--out", str(out)])  # fmt: skip
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2 and err == f"xbench: error: cannot write a record to {records_path}: No space left on device\n"
    assert records_path.read_bytes() == b""  # the partial line was cut away
    assert not list(out.glob(".*.tmp"))


def test_records_that_are_not_a_regular_file_are_refused(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.symlink_to("/dev/zero")
    with pytest.raises(RunDirectoryError, match=rf"^{path} is not a regular file$"):
        read_records(path)


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")])
def test_summary_write_errors_name_the_file_and_leave_no_temporary(tmp_path, monkeypatch, code, text):
    target = tmp_path / "summary.json"

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(RunDirectoryError, match=rf"^cannot write {target}: {text}$"):
        records.write_json_atomic(target, {"v": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_non_finite_value_is_refused_naming_its_key_and_file(tmp_path):
    target = tmp_path / "summary.json"
    with pytest.raises(RunDirectoryError, match=rf"^cannot write {target}: metrics.tau.value = inf is not a finite number"):
        records.write_json_atomic(target, {"metrics": {"tau": {"value": float("inf")}}})
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_a_killed_writer_are_removed_under_the_lock(tmp_path, model_copy, plugins):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".summary.json.12345.tmp").write_text("{")
    (out / ".run.json.777.tmp").write_text("{")
    (out / "notes.tmp").write_text("mine")
    _prepare(_base(out, model_copy), plugins).release()
    assert sorted(p.name for p in out.iterdir()) == [".xbench.lock", "notes.tmp", "run.json"]


def test_the_lock_is_released_when_a_run_ends(tmp_path, plugins, tiny_model_dir):
    out = tmp_path / "run"
    config = RunConfig(method="raw_attention", limit=1, warmup=0, device="cpu", out=out, progress=False)
    run(config, plugins)
    fd = os.open(out / ".xbench.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if the run still held it
    finally:
        os.close(fd)
