import pytest

from xbench.api import Method
from xbench.errors import DuplicateNameError, UnknownNameError
from xbench.hookspecs import hookimpl
from xbench.plugins import build
from xbench.registry import Registry


class _A(Method):
    name = "alpha_method"


def test_register_and_get_records_origin():
    reg = Registry("method")
    reg.origin = "plugin 'one'"
    reg.register(_A)
    assert reg.get("alpha_method") is _A
    assert reg.entry("alpha_method").origin == "plugin 'one'"
    assert "alpha_method" in reg and reg.names() == ["alpha_method"]


def test_duplicate_names_both_origins():
    reg = Registry("method")
    reg.origin = "plugin 'one'"
    reg.register(_A)
    reg.origin = "plugin 'two'"
    with pytest.raises(DuplicateNameError) as err:
        reg.register(_A)
    assert "plugin 'one'" in str(err.value) and "plugin 'two'" in str(err.value)


def test_unknown_name_did_you_mean_and_choices():
    reg = Registry("method")
    reg.register(_A)
    with pytest.raises(UnknownNameError) as err:
        reg.get("alpha_metod")
    msg = str(err.value)
    assert "Did you mean 'alpha_method'?" in msg and "Choices: alpha_method" in msg


def test_unknown_name_without_close_match_lists_choices():
    reg = Registry("task")
    reg.register(_A)
    msg = reg.unknown_message("zzz")
    assert "Did you mean" not in msg and "alpha_method" in msg


def test_builtins_registered_through_hooks(plugins):
    reg = plugins.registries
    assert {"rollout", "raw_attention"} <= set(reg.methods.names())
    assert "easyvqa" in reg.tasks
    assert "tiny-random-llava" in reg.models
    assert "llava" in reg.model_families
    assert reg.methods.entry("rollout").origin == "built-in 'xbench.methods.rollout'"


class _DuplicatePlugin:
    @hookimpl
    def xbench_register_methods(self, registry):
        class Clash(Method):
            name = "rollout"

        registry.register(Clash)


def test_outside_plugin_clashing_with_builtin_is_an_error():
    with pytest.raises(DuplicateNameError) as err:
        build(extra_plugins=(_DuplicatePlugin(),), load_entry_points=False)
    assert "built-in 'xbench.methods.rollout'" in str(err.value)


class _BrokenPlugin:
    @hookimpl
    def xbench_register_tasks(self, registry):
        raise RuntimeError("boom")


def test_broken_outside_plugin_reported_by_name(capsys):
    plugins = build(extra_plugins=(_BrokenPlugin(),), load_entry_points=False)
    (name, msg), = plugins.broken.items()
    assert "boom" in msg and name in msg
    assert "easyvqa" in plugins.registries.tasks  # built-ins unaffected
    assert name in capsys.readouterr().err
    with pytest.raises(UnknownNameError) as err:
        plugins.registries.tasks.get("nope")
    assert "boom" in str(err.value)
