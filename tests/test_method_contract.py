"""Contract tests, parametrised over every method in the registry (future methods included).

Each method, on tiny-random-llava: finite maps on the generation's grid; two calls equal;
explaining 4 generations at once equals explaining each alone; no hook left on any module
nor among torch's global module hooks; no parameter left requiring grad or holding a
``.grad``; parameters, config, eval mode and grad mode as found; unknown parameters refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xbench.errors import ParameterError
from xbench.plugins import build
from _hooks import module_hooks

METHODS = build(load_entry_points=True).registries.methods.names()




@pytest.fixture(scope="module")
def generations(tiny_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    # keep the last hidden states for methods that read them (fastrm); the others ignore them
    gens = tiny_vlm.generate(samples[:4], [task.prompt(s) for s in samples[:4]], 4, frozenset({"hidden_states"}))
    # transformers installs its own output-capturing hooks once, on first use: let it, before any snapshot
    tiny_vlm.forward(gens[0], output_attentions=True)
    return gens


@pytest.fixture(scope="module")
def runs(plugins, tiny_vlm, generations):
    """Per method: a call on 4 generations, a second call on the first 2, one call per generation,
    and what the model looked like after them compared to before."""
    model = tiny_vlm.model
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config_before = model.config.to_dict()

    def call(name):
        hooks, grad_mode = module_hooks(model), torch.is_grad_enabled()
        method = plugins.registries.methods.get(name)()
        first = method.explain(tiny_vlm, generations)
        second = method.explain(tiny_vlm, generations[:2])
        alone = [method.explain(tiny_vlm, [g])[0] for g in generations]
        after = {
            "hooks_kept": module_hooks(model) == hooks,
            "grad_mode_kept": torch.is_grad_enabled() == grad_mode,
            "params_unchanged": all(torch.equal(p, params_before[n]) for n, p in model.named_parameters()),
            "frozen": [n for n, p in model.named_parameters() if p.requires_grad or p.grad is not None],
            "config_unchanged": model.config.to_dict() == config_before,
            "eval": not model.training,
        }
        return first, second, alone, after

    class Lazy(dict):
        def __missing__(self, name):
            self[name] = call(name)
            return self[name]

    return Lazy()


@pytest.mark.parametrize("name", METHODS)
def test_maps_are_finite_on_the_grid(name, runs, generations):
    first, _, _, _ = runs[name]
    assert len(first) == len(generations)
    for gen, rmap in zip(generations, first):
        rmap.validate(gen.grid, name)  # raises on a wrong shape or non-finite values
        assert rmap.grid.shape == gen.grid
        if rmap.per_token is not None:
            assert rmap.per_token.shape[1:] == gen.grid
            assert 1 <= rmap.per_token.shape[0] <= len(gen.answer_ids)


@pytest.mark.parametrize("name", METHODS)
def test_deterministic(name, runs):
    first, second, _, _ = runs[name]
    assert len(second) == 2
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.grid, b.grid)


@pytest.mark.parametrize("name", METHODS)
def test_batch_of_four_equals_one_at_a_time(name, runs):
    first, _, alone, _ = runs[name]
    for batched, single in zip(first, alone):
        np.testing.assert_allclose(batched.grid, single.grid, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", METHODS)
def test_leaves_the_model_as_found(name, runs):
    _, _, _, after = runs[name]
    assert after["hooks_kept"], "a hook was left on the model"
    assert after["frozen"] == [], "parameters left requiring grad or holding .grad"
    for key in ("grad_mode_kept", "params_unchanged", "config_unchanged", "eval"):
        assert after[key], key


@pytest.mark.parametrize("name", METHODS)
def test_unknown_parameter_is_refused(name, plugins):
    cls = plugins.registries.methods.get(name)
    with pytest.raises(ParameterError, match=name):
        cls(no_such_parameter=1)
    method = cls()
    assert method.label == name and method.params == cls.default_params()
