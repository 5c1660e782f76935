"""The parameter contract, over every registered method, metric and task, every FastRM head
and every sweep executor: defaults validate, an unknown key gets a did-you-mean, and each
declared choice, type, range and finiteness is enforced when the plugin is built."""

from __future__ import annotations

import math
import re

import pytest

from xbench.api import Method
from xbench.errors import ParameterError
from xbench.params import Param, resolve, shared
from xbench.plugins import default


def _plugins():
    """``(id, kind, name, declared, build)`` for every plugin taking parameters."""
    from xbench.fastrm.heads import HEADS
    from xbench.sweep import EXECUTORS

    reg = default().registries
    out = []
    for e in reg.methods:
        out.append((f"method-{e.name}", "method", e.name, e.obj.declared_params(), e.obj))
    for e in reg.metrics:
        out.append((f"metric-{e.name}", "metric", e.name, e.obj.declared_params(), e.obj))
    for e in reg.tasks:  # parameters are checked before any data is read
        out.append((f"task-{e.name}", "task", e.name, e.obj.declared_params(), lambda cls=e.obj, **kw: cls(None, None, **kw)))
    for e in HEADS:
        out.append((f"head-{e.name}", "head", e.name, e.obj.hyperparameters, lambda cls=e.obj, **kw: cls(32, 16, **kw)))
    for e in EXECUTORS:
        out.append((f"executor-{e.name}", "executor", e.name, e.obj.declared_params(), e.obj))
    return out


PLUGINS = _plugins()
IDS = [p[0] for p in PLUGINS]


def _params_where(test):
    """``pytest.param(plugin, key, param)`` for every declared parameter ``test(param)`` selects."""
    return [pytest.param(p, key, param, id=f"{p[0]}.{key}") for p in PLUGINS for key, param in p[3].items() if test(param)]


def _refused(build, kind, name, key, value, accepted: str | None = None):
    with pytest.raises(ParameterError) as err:
        build(**{key: value})
    message = str(err.value)
    assert message.startswith(f"{kind} {name!r}: {key}={value!r} is not "), message
    if accepted is not None:
        assert accepted in message, message
    return message


def test_every_kind_is_covered():
    assert {p[1] for p in PLUGINS} == {"method", "metric", "task", "head", "executor"}
    assert len(_params_where(lambda p: p.choices is not None)) >= 10
    assert len(_params_where(lambda p: p.value_type is float)) >= 8


@pytest.mark.parametrize("plugin", PLUGINS, ids=IDS)
def test_defaults_validate_and_are_documented(plugin):
    _, kind, name, declared, _build = plugin
    assert resolve(kind, name, declared, {}) == {k: p.default for k, p in declared.items()}
    for key, param in declared.items():
        assert param.doc and "\n" not in param.doc, f"{name}.{key} needs a one-line doc"
        assert param.value_type is not None, f"{name}.{key} declares no type"


@pytest.mark.parametrize("plugin", PLUGINS, ids=IDS)
def test_unknown_key_gets_a_did_you_mean(plugin):
    _, kind, name, declared, build = plugin
    if not declared:
        with pytest.raises(ParameterError, match=rf"^{kind} '{name}' has no parameter\(s\) \['alpha'\]; it takes none$"):
            build(alpha=1)
        return
    key = sorted(declared)[0]
    typo = key[:-1] + ("x" if key[-1] != "x" else "y")
    with pytest.raises(ParameterError) as err:
        build(**{typo: declared[key].default})
    assert str(err.value) == (
        f"{kind} {name!r} has no parameter(s) [{typo!r}] (did you mean {key!r}?); it takes {', '.join(sorted(declared))}"
    )


@pytest.mark.parametrize("plugin, key, param", _params_where(lambda p: p.choices is not None))
def test_each_choice_refuses_a_bogus_value(plugin, key, param):
    _, kind, name, _, build = plugin
    _refused(build, kind, name, key, "bogus", f"one of {list(param.options())}")
    for choice in param.options():
        assert param.convert(choice) == (choice, None)


NUMERIC = _params_where(lambda p: p.value_type in (int, float))


@pytest.mark.parametrize("plugin, key, param", NUMERIC)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_each_number_refuses_nan_and_infinities(plugin, key, param, value):
    _, kind, name, _, build = plugin
    with pytest.raises(ParameterError, match=rf"^{kind} '{name}': {key}={value!r} is not (a finite number|an integer)"):
        build(**{key: value})


@pytest.mark.parametrize("plugin, key, param", _params_where(lambda p: p.value_type is not None))
def test_each_parameter_refuses_a_wrong_type(plugin, key, param):
    _, kind, name, _, build = plugin
    wrong = {bool: "yes", int: "3", float: "0.5", str: 3, list: "x"}[param.value_type]
    _refused(build, kind, name, key, wrong)
    if param.value_type in (int, float):
        _refused(build, kind, name, key, True)  # a boolean is not a number


RANGED = _params_where(lambda p: p.min is not None or p.max is not None)


@pytest.mark.parametrize("plugin, key, param", RANGED)
def test_ranges_are_enforced_at_their_bounds(plugin, key, param):
    _, kind, name, declared, build = plugin
    step = 1 if param.value_type is int else 1e-6
    for bound, exclusive, outside in ((param.min, param.min_exclusive, -step), (param.max, param.max_exclusive, step)):
        if bound is None:
            continue
        bound = param.value_type(bound)
        _refused(build, kind, name, key, bound + outside)
        if exclusive:
            _refused(build, kind, name, key, bound)
        else:
            assert resolve(kind, name, declared, {key: bound})[key] == bound


def test_range_messages_say_what_is_accepted():
    reg = default().registries
    with pytest.raises(ParameterError, match=r"^metric 'agreement_f1': tau=1.5 is not a finite number >= 0 and <= 1$"):
        reg.metrics.get("agreement_f1")(tau=1.5)
    with pytest.raises(ParameterError, match=r"^metric 'top_region_iou': top_percent=0 is not a finite number > 0 and <= 100$"):
        reg.metrics.get("top_region_iou")(top_percent=0)
    with pytest.raises(ParameterError, match=r"^method 'integrated_gradients': n_steps=0 is not an integer >= 1$"):
        reg.methods.get("integrated_gradients")(n_steps=0)
    with pytest.raises(ParameterError, match=r"^method 'fastrm': head=3 is not one of \['attention', 'mlp'\] or null$"):
        reg.methods.get("fastrm")(head=3)


def test_values_are_converted_once():
    reg = default().registries
    rollout = reg.methods.get("rollout")(residual=1)
    assert rollout.params["residual"] == 1.0 and isinstance(rollout.params["residual"], float)
    ig = reg.methods.get("integrated_gradients")(n_steps=4.0)
    assert ig.params["n_steps"] == 4 and isinstance(ig.params["n_steps"], int)
    with pytest.raises(ParameterError, match=r"n_steps=4.5 is not an integer >= 1"):
        reg.methods.get("integrated_gradients")(n_steps=4.5)
    with pytest.raises(ParameterError, match=r"baseline=10{309} is not a finite number$"):
        reg.methods.get("occlusion")(baseline=10**309)  # too large for a float


def test_custom_checks_name_what_is_accepted():
    task = default().registries.tasks.get("gqa")
    with pytest.raises(ParameterError, match=r"^task 'gqa': prompt='Q:' is not a template name \(llava15, plain\) or a template containing '\{question\}'$"):
        task(None, None, prompt="Q:")


def test_plugins_declaring_defaults_the_old_way_still_work():
    class Old(Method):
        name = "old"

        @classmethod
        def default_params(cls):
            return {"sigma": 0.25, "ids": []}

    assert Old().params == {"sigma": 0.25, "ids": []} and Old(sigma=1, ids=["a"]).params == {"sigma": 1, "ids": ["a"]}
    with pytest.raises(ParameterError, match=r"method 'old' has no parameter\(s\) \['sigm'\] \(did you mean 'sigma'\?\)"):
        Old(sigm=1)
    with pytest.raises(ParameterError, match=r"^method 'old': sigma=nan is not a value without NaN or infinities or null$"):  # every float is finite
        Old(sigma=math.nan)
    with pytest.raises(ParameterError, match=r"ids=\[1.0, inf\]"):
        Old(ids=[1.0, math.inf])


def test_shared_parameters_reach_the_plugins_declaring_them():
    a, b = {"tau": Param(0.3, doc="t")}, {"steps": Param(16, doc="s")}
    assert shared("metric", [a, b], {"tau": 0.5}) == [{"tau": 0.5}, {}]
    with pytest.raises(ParameterError, match=r"^no selected metric takes parameter\(s\) \['tua'\] \(did you mean 'tau'\?\); metric parameters: steps, tau$"):
        shared("metric", [a, b], {"tua": 0.5})


def test_several_unknown_keys_each_get_their_hint():
    with pytest.raises(ParameterError, match=r"\['stesp', 'tua'\] \(did you mean 'steps' for 'stesp'\?; did you mean 'tau' for 'tua'\?\)"):
        resolve("metric", "m", {"tau": Param(0.3), "steps": Param(1)}, {"tua": 1, "stesp": 2})


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999", "[0.5, NaN]"])
def test_command_line_values_refuse_non_finite_numbers(text):
    from xbench.cli import parse_params

    with pytest.raises(ParameterError, match=rf"^--metric-param tau: '{re.escape(text)}' (is not a finite number|holds a non-finite number)"):
        parse_params([f"tau={text}"], "--metric-param")
    assert parse_params(['prompt="NaN"', "tau=0.5", "layer=-2"], "--param") == {"prompt": "NaN", "tau": 0.5, "layer": -2}
