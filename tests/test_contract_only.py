"""Meta-test: built-in methods, metrics, companions and the runner use a model only through
the :class:`xbench.api.VLM` contract.

:class:`ContractOnly` wraps a loaded adapter and forwards exactly the names ``VLM`` declares
(its public methods, properties and annotated attributes); any other name (``.model``,
``.processor``, ``.language_model``...) raises :class:`UndeclaredAttribute`, an
``AssertionError`` so that not even ``getattr(vlm, name, default)`` or ``hasattr`` can hide
it. Every registered method runs on the wrapper, batch 1 and 2, on tiny-random-llava (with
its ``check``); then a whole run with every metric, an in-run reference and the randomized
control goes through the runner with the adapter's ``load`` returning the wrapper.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from xbench.api import HIDDEN_STATES, VLM
from xbench.models.llava import LlavaAdapter
from xbench.plugins import build
from xbench.runner import RunConfig, run

METHODS = build(load_entry_points=False).registries.methods.names()


def contract_names(cls: type = VLM) -> frozenset[str]:
    """The public names ``cls`` declares: methods, properties, class attributes, annotations."""
    declared = {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}
    for klass in cls.__mro__:
        declared |= {name for name in getattr(klass, "__annotations__", {}) if not name.startswith("_")}
    return frozenset(declared)


CONTRACT = contract_names()


class UndeclaredAttribute(AssertionError):
    """A plugin touched a model attribute the VLM contract does not declare."""


class ContractOnly:
    """A loaded adapter seen through the VLM contract only; records the names used in ``touched``."""

    def __init__(self, vlm: VLM) -> None:
        object.__setattr__(self, "_vlm", vlm)
        object.__setattr__(self, "touched", set())

    def __getattr__(self, name: str):
        if name not in CONTRACT:
            raise UndeclaredAttribute(f"{name!r} is not part of the VLM contract (xbench/vlm.py)")
        self.touched.add(name)
        if name == "randomized":  # the control model is seen through the contract too
            return lambda seed: ContractOnly(self._vlm.randomized(seed))
        return getattr(self._vlm, name)

    def __setattr__(self, name: str, value) -> None:
        raise UndeclaredAttribute(f"a plugin set {name!r} on the model; the VLM contract is read-only")


def test_the_wrapper_refuses_what_the_contract_does_not_declare(tiny_vlm):
    wrapped = ContractOnly(tiny_vlm)
    assert {"generate", "forward", "image_features_as_leaf", "pixels_to_grid", "name", "device"} <= CONTRACT
    for name in ("model", "processor", "tokenizer", "language_model", "input_ids", "grid"):
        with pytest.raises(UndeclaredAttribute, match=repr(name)):
            getattr(wrapped, name)
        with pytest.raises(UndeclaredAttribute):
            hasattr(wrapped, name)
    with pytest.raises(UndeclaredAttribute):
        wrapped.name = "renamed"
    assert wrapped.name == tiny_vlm.name and wrapped.touched == {"name"}


@pytest.fixture(scope="module")
def generations(tiny_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    wrapped = ContractOnly(tiny_vlm)
    gens = wrapped.generate(samples[:2], [task.prompt(s) for s in samples[:2]], 4, frozenset({HIDDEN_STATES}))
    assert wrapped.touched == {"generate"}
    return gens


@pytest.mark.parametrize("name", METHODS)
def test_method_uses_only_the_contract(name, plugins, tiny_vlm, generations):
    wrapped = ContractOnly(tiny_vlm)
    method = plugins.registries.methods.get(name)()
    method.check(wrapped)
    pair = method.explain(wrapped, generations)
    (alone,) = method.explain(wrapped, generations[:1])
    assert len(pair) == 2
    for gen, rmap in zip(generations, pair):
        rmap.validate(gen.grid, name)
    np.testing.assert_allclose(alone.grid, pair[0].grid, rtol=1e-5, atol=1e-7)


def test_a_whole_run_uses_only_the_contract(plugins, tmp_path, monkeypatch):
    """Runner, every metric, the in-run reference and the randomized control, on the wrapper."""
    seen: list[ContractOnly] = []
    load = LlavaAdapter.load.__func__

    def load_wrapped(cls, *args, **kwargs):
        seen.append(ContractOnly(load(cls, *args, **kwargs)))
        return seen[-1]

    monkeypatch.setattr(LlavaAdapter, "load", classmethod(load_wrapped))
    config = RunConfig(method="rollout", model="tiny-random-llava", limit=2, batch_size=2, out=tmp_path / "run",
                       warmup=0, progress=False, control="randomized", fail_fast=True)
    summary = run(config, plugins)
    assert summary["n_errors"] == 0 and summary["n_records"] == 2
    (wrapped,) = seen
    assert {"generate", "forward", "mask_to_grid", "randomized"} <= wrapped.touched


def test_a_family_without_a_hook_point_is_refused_by_name_before_the_work(plugins):
    """The base class refuses every optional hook point naming the family; methods that need one
    say so from ``check`` (called once after loading), not per sample."""
    from xbench.api import ModelIdentity
    from xbench.errors import ModelCapabilityError, ParameterError

    class Bare(VLM):
        family = "bare"

    bare = Bare(ModelIdentity("bare-model"), "cpu", None, "sdpa")
    calls = [bare.image_features_as_leaf, bare.vision_layers_read, bare.patch_features, lambda: bare.randomized(0),
             lambda: bare.num_layers, lambda: bare.hidden_size, lambda: bare.attention("eager")]  # fmt: skip
    for call in calls:
        with pytest.raises(ModelCapabilityError, match=r"^model family 'bare' \(model 'bare-model'\) cannot "):
            call()
    assert bare.image_std is None and bare.name == "bare-model"
    methods = plugins.registries.methods
    with pytest.raises(ParameterError, match="gradient_relevancy: scope='all' cannot be followed on this model: model family 'bare'"):
        methods.get("gradient_relevancy")(scope="all").check(bare)
    with pytest.raises(ModelCapabilityError, match="method 'layer_gradcam' cannot run: model family 'bare'"):
        methods.get("layer_gradcam")().check(bare)
    with pytest.raises(ModelCapabilityError, match="cannot report its number of layers"):
        methods.get("raw_attention")().check(bare)
