"""Every hook is documented, and every hook is exercised by a run."""

import inspect

from xbench import hookspecs
from xbench.hookspecs import hookimpl
from xbench.plugins import REGISTRATION_HOOKS, build
from xbench.runner import RunConfig, run

HOOKS = [name for name, fn in vars(hookspecs).items() if name.startswith("xbench_") and callable(fn)]


def test_every_hook_has_a_docstring_with_its_arguments():
    assert len(HOOKS) >= 8
    for name in HOOKS:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 40, name
        for arg in inspect.signature(fn).parameters:
            assert f":param {arg}:" in doc, (name, arg)


def test_every_registration_hook_is_wired():
    assert set(REGISTRATION_HOOKS) == {h for h in HOOKS if h.startswith("xbench_register_")}


class Observer:
    def __init__(self):
        self.calls = []

    @hookimpl
    def xbench_run_started(self, run):
        self.calls.append(("started", run["method"]))

    @hookimpl
    def xbench_sample_recorded(self, run, record):
        self.calls.append(("sample", record["id"]))

    @hookimpl
    def xbench_run_finished(self, run, summary):
        self.calls.append(("finished", summary["n_records"]))


def test_lifecycle_hooks_called_in_order(tmp_path):
    obs = Observer()
    plugins = build(extra_plugins=(obs,), load_entry_points=False)
    cfg = RunConfig(method="raw_attention", model="tiny-random-llava", limit=3, out=tmp_path / "r", warmup=0, progress=False)
    run(cfg, plugins)
    kinds = [c[0] for c in obs.calls]
    assert kinds == ["started", "sample", "sample", "sample", "finished"]
    assert obs.calls[-1] == ("finished", 3)
