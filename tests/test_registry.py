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


# ---- base classes and needs, checked when a plugin registers


def _registries():
    from xbench.registry import Registries

    reg = Registries.empty()
    for table in (reg.methods, reg.tasks, reg.metrics, reg.models, reg.model_families):
        table.origin = "plugin 'acme'"
    return reg


def test_each_table_refuses_the_wrong_base_class_naming_the_plugin():
    from xbench.api import Metric, Task
    from xbench.errors import PluginDeclarationError

    class NotAMethod:
        name = "odd"

    class SomeTask(Task):
        name = "some_task"

    reg = _registries()
    cases = [
        (reg.methods, NotAMethod, "is not a subclass of xbench.api.Method"),
        (reg.methods, _A(), "is not a subclass of xbench.api.Method"),  # an instance, not the class
        (reg.methods, SomeTask, "is not a subclass of xbench.api.Method"),
        (reg.tasks, _A, "is not a subclass of xbench.api.Task"),
        (reg.metrics, SomeTask, "is not a subclass of xbench.api.Metric"),
        (reg.models, SomeTask, "is not a xbench.models.ModelSpec"),
        (reg.model_families, Metric, "is not a subclass of xbench.vlm.VLM"),
    ]
    for table, obj, reason in cases:
        with pytest.raises(PluginDeclarationError) as err:
            table.register(obj)
        assert str(err.value).startswith("plugin 'acme' registered ") and reason in str(err.value), str(err.value)
        assert f"as a {table.kind}" in str(err.value)
    assert reg.tasks.register(SomeTask) is SomeTask and reg.tasks.names() == ["some_task"]


def test_needs_must_be_declared_constants():
    from xbench.api import ATTENTIONS, CONTROL, GRADIENTS, HIDDEN_STATES, MODEL, REFERENCE, Metric
    from xbench.errors import PluginDeclarationError

    def method(needs):
        return type("M", (Method,), {"name": "m", "needs": needs})

    def metric(needs):
        return type("X", (Metric,), {"name": "x", "needs": needs})

    reg = _registries()
    with pytest.raises(PluginDeclarationError, match=r"unknown needs \['attention'\]; a method may need \['attentions', 'gradients', 'hidden_states'\]"):
        reg.methods.register(method(frozenset({"attention"})))
    with pytest.raises(PluginDeclarationError, match=r"needs 'attentions': expected a set of"):
        reg.methods.register(method("attentions"))  # a bare string is not a set of needs
    with pytest.raises(PluginDeclarationError, match=r"unknown needs \['model'\]"):
        reg.methods.register(method(frozenset({MODEL})))  # a metric's need, not a method's
    with pytest.raises(PluginDeclarationError, match=r"unknown needs \['gradients'\]; a metric may need \['control', 'model', 'reference'\]"):
        reg.metrics.register(metric(frozenset({GRADIENTS})))
    reg.methods.register(method(frozenset({ATTENTIONS, GRADIENTS, HIDDEN_STATES})))
    reg.metrics.register(metric(frozenset({MODEL, REFERENCE, CONTROL})))
    assert len(reg.methods) == len(reg.metrics) == 1


def test_model_families_register_under_their_family_name():
    from xbench.api import VLM

    class Family(VLM):
        family = "acme_vl"
        model_types = ("acme",)

    reg = _registries()
    reg.model_families.register(Family)
    assert reg.model_families.get("acme_vl") is Family


class _BadNeedsPlugin:
    @hookimpl
    def xbench_register_methods(self, registry):
        class Typo(Method):
            name = "typo_needs"
            needs = frozenset({"hidden_state"})

        registry.register(Typo)


def test_outside_plugin_with_undeclared_needs_is_reported_by_name(capsys):
    plugins = build(extra_plugins=(_BadNeedsPlugin(),), load_entry_points=False)
    (name, msg), = plugins.broken.items()
    assert name in msg and "unknown needs ['hidden_state']" in msg and "PluginDeclarationError" in msg
    assert "typo_needs" not in plugins.registries.methods and "rollout" in plugins.registries.methods
    assert "unknown needs ['hidden_state']" in capsys.readouterr().err

