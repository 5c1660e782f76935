"""gradient_relevancy against a plain, full-matrix implementation written here.

The plain version follows the paper literally: pixel values that require grad, ``retain_grad``
on every attention map, one ``backward`` per answer token over the full prompt + answer, the
full ``[T, T]`` relevancy matrix R <- R + mean_heads((grad * A)+) @ R, then its row at the
token's query position.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xbench.errors import ParameterError
from _hooks import module_hooks

TOL = 1e-5




def plain_relevancy(vlm, gen, scope="llm"):
    """``[K, h, w]`` maps of every answer token, computed the long way."""
    model = vlm.model
    ids = torch.tensor([gen.prompt_ids + gen.answer_ids])
    pv = gen.pixel_values.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(input_ids=ids, pixel_values=pv, output_attentions=True, use_cache=False)
    atts = list(out.attentions)
    vis = list(out.image_outputs.attentions)
    n_vis_read = model.config.vision_feature_layer % (len(vis) + 1)
    vis = vis[:n_vis_read]
    for a in atts + vis:
        a.retain_grad()
    T = ids.shape[1]
    img = gen.image_positions
    maps = []
    for k, tok in enumerate(gen.answer_ids):
        for a in atts + vis:
            a.grad = None
        q = gen.prompt_len - 1 + k
        out.logits[0, q, tok].backward(retain_graph=True)
        R = torch.eye(T)
        for a in atts:
            cam = (a.grad[0] * a[0].detach()).clamp(min=0).mean(dim=0)
            R = R + cam @ R
        row = R[q, img]
        if scope == "all":
            Rv = torch.eye(len(img) + 1)
            for a in vis:
                cam = (a.grad[0] * a[0].detach()).clamp(min=0).mean(dim=0)
                Rv = Rv + cam @ Rv
            row = row @ Rv[1:, 1:]
        maps.append(row.reshape(gen.grid).numpy())
    return np.stack(maps)


@pytest.fixture(scope="module")
def generations(tiny_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    return tiny_vlm.generate(samples[:3], [task.prompt(s) for s in samples[:3]], 6)


@pytest.fixture(scope="module")
def deep_vlm(plugins, tmp_path_factory):
    """A 3+3-layer tiny LLaVA reading ViT layer -2, like LLaVA-1.5 (so the last ViT layer gets no grad)."""
    from xbench.models import load_vlm
    from xbench.zoo.tiny import TinyLlavaShape, build_tiny_llava

    path = tmp_path_factory.mktemp("deep-llava")
    build_tiny_llava(path, TinyLlavaShape(vision_layers=3, text_layers=3), seed=1)
    vlm = load_vlm(str(path), plugins.registries, needs=frozenset({"attentions"}), device="cpu")
    vlm.model.config.vision_feature_layer = -2
    return vlm


@pytest.fixture(scope="module")
def deep_generations(deep_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    return deep_vlm.generate(samples[3:5], [task.prompt(s) for s in samples[3:5]], 5)


def _method(plugins, **params):
    return plugins.registries.methods.get("gradient_relevancy")(**params)


@pytest.mark.parametrize("scope", ["llm", "all"])
@pytest.mark.parametrize("which", ["tiny", "deep"])
def test_equals_plain_implementation(plugins, which, scope, request):
    vlm = request.getfixturevalue("tiny_vlm" if which == "tiny" else "deep_vlm")
    gens = request.getfixturevalue("generations" if which == "tiny" else "deep_generations")
    maps = _method(plugins, scope=scope).explain(vlm, gens)
    worst = 0.0
    for gen, rmap in zip(gens, maps):
        expected = plain_relevancy(vlm, gen, scope)
        assert rmap.per_token.shape == expected.shape == (len(gen.answer_ids), *gen.grid)
        assert np.abs(expected).max() > 0  # the comparison is not between zeros
        diff = float(np.abs(rmap.per_token - expected).max())
        assert diff <= 1e-4 * float(np.abs(expected).max())  # relative too: random-model maps are small
        worst = max(worst, diff)
        np.testing.assert_allclose(rmap.grid, expected.mean(axis=0), atol=TOL, rtol=0)
    print(f"\ngradient_relevancy {which} scope={scope}: max abs difference to the plain implementation {worst:.3g}")
    assert worst <= TOL


def test_all_scope_differs_from_llm_scope(plugins, deep_vlm, deep_generations):
    llm = _method(plugins, scope="llm").explain(deep_vlm, deep_generations[:1])[0]
    full = _method(plugins, scope="all").explain(deep_vlm, deep_generations[:1])[0]
    assert not np.allclose(llm.grid, full.grid)


@pytest.mark.parametrize("token,index", [("first", 0), ("last", -1)])
def test_single_token_choices_compute_that_token(plugins, tiny_vlm, generations, token, index):
    all_tokens = _method(plugins).explain(tiny_vlm, generations)
    one = _method(plugins, token=token).explain(tiny_vlm, generations)
    for full, single in zip(all_tokens, one):
        assert single.per_token.shape[0] == 1
        np.testing.assert_allclose(single.grid, full.per_token[index], atol=TOL, rtol=0)


def test_leaves_the_model_as_found(plugins, tiny_vlm, generations):
    model = tiny_vlm.model
    tiny_vlm.forward(generations[0], output_attentions=True)  # transformers' own capture hooks go in once
    hooks = module_hooks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _method(plugins, scope="all").explain(tiny_vlm, generations[:1])
    _method(plugins).explain(tiny_vlm, generations[:1])
    for n, p in model.named_parameters():
        assert not p.requires_grad and p.grad is None, n
        assert torch.equal(p, before[n]), n
    assert not model.training
    assert module_hooks(model) == hooks


@pytest.mark.parametrize("params", [{"token": "middle"}, {"scope": "vit"}, {"steps": 3}])
def test_bad_parameters_are_refused(plugins, params):
    with pytest.raises(ParameterError, match="gradient_relevancy"):
        _method(plugins, **params)
