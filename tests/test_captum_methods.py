"""The Captum family: the forward target, the pooling, and a few methods against plain
computations written here; non-zero maps on the default model; parameters from the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from xbench.errors import ParameterError
from xbench.methods.captum_common import CaptumMethod, answer_logprob_fn, pool_to_grid
from xbench.methods.saliency import SaliencyMethod
from xbench.plugins import build

CAPTUM_METHODS = sorted(e.name for e in build().registries.methods if issubclass(e.obj, CaptumMethod))


def plain_logprob(vlm, gen, pixel_values, n_tokens):
    """Sum of the log-probabilities of the first ``n_tokens`` answer tokens, full forward."""
    ids = torch.tensor([gen.prompt_ids + gen.answer_ids]).expand(len(pixel_values), -1)
    logits = vlm.model(input_ids=ids, pixel_values=pixel_values, use_cache=False).logits
    total = 0.0
    for k in range(n_tokens):
        total = total + torch.log_softmax(logits[:, gen.prompt_len - 1 + k], dim=-1)[:, gen.answer_ids[k]]
    return total


def loop_pool(attribution, grid, p, signed=False):
    a = attribution[0] if signed else attribution[0].abs()
    a = a.sum(0)
    return np.array([[float(a[i * p : (i + 1) * p, j * p : (j + 1) * p].sum()) for j in range(grid[1])] for i in range(grid[0])])


@pytest.fixture(scope="module")
def gens(tiny_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    out = tiny_vlm.generate(samples[:2], [task.prompt(s) for s in samples[:2]], 4)
    assert all(len(g.answer_ids) > 1 for g in out)
    return out


def _method(plugins, name, **params):
    return plugins.registries.methods.get(name)(**params)


def test_all_eight_captum_methods_are_registered():
    assert CAPTUM_METHODS == sorted(
        ["saliency", "input_x_gradient", "integrated_gradients", "gradient_shap", "smoothgrad", "occlusion",
         "feature_ablation", "layer_gradcam"]
    )


@pytest.mark.parametrize("target,n", [("first", 1), ("answer", None)])
def test_forward_target_equals_plain_log_probability(tiny_vlm, gens, target, n):
    gen = gens[0]
    pv = torch.cat([gen.pixel_values, gen.pixel_values * 0.5])
    with torch.no_grad():
        got = answer_logprob_fn(tiny_vlm, gen, target)(pv)
        want = plain_logprob(tiny_vlm, gen, pv, n or len(gen.answer_ids))
    assert got.shape == (2,)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])  # the image matters to the target


def test_pooling_sums_absolute_values_per_patch(tiny_vlm, gens):
    """Through the LLaVA adapter's ``pixels_to_grid`` (8x8-pixel cells of its 8x8 grid)."""
    on_8x8 = replace(gens[0], pixel_values=torch.zeros(1, 3, 64, 64))
    attribution = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(pool_to_grid(tiny_vlm, attribution, on_8x8), loop_pool(attribution, (8, 8), 8), rtol=1e-5)
    signed = pool_to_grid(tiny_vlm, attribution, on_8x8, "signed")
    np.testing.assert_allclose(signed, loop_pool(attribution, (8, 8), 8, signed=True), rtol=1e-5, atol=1e-6)
    assert (signed < 0).any()  # evidence against the answer stays negative
    with pytest.raises(ParameterError, match=r"method 'saliency': pool='max' is not one of \['abs', 'signed'\]"):
        SaliencyMethod(pool="max")  # refused when the method is built, never at pooling time


@pytest.mark.parametrize("name", ["saliency", "smoothgrad"])
def test_signed_pooling_keeps_the_gradients_sign(plugins, tiny_vlm, gens, name):
    """Under ``pool=signed`` saliency is the plain signed gradient summed per patch; SmoothGrad
    averages signed gradients (one noise draw with zero noise: the same map)."""
    gen = gens[0]
    pv = gen.pixel_values.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(plain_logprob(tiny_vlm, gen, pv, 1).sum(), pv)
    params = {"nt_samples": 1, "stdevs": 0.0} if name == "smoothgrad" else {}
    (signed,) = _method(plugins, name, pool="signed", **params).explain(tiny_vlm, [gen])
    (absolute,) = _method(plugins, name, **params).explain(tiny_vlm, [gen])
    np.testing.assert_allclose(signed.grid, loop_pool(grad, gen.grid, 8, signed=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(absolute.grid, loop_pool(grad, gen.grid, 8), rtol=1e-4, atol=1e-7)
    assert (signed.grid < 0).any()


def test_saliency_equals_plain_gradient(plugins, tiny_vlm, gens):
    gen = gens[0]
    pv = gen.pixel_values.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(plain_logprob(tiny_vlm, gen, pv, 1).sum(), pv)
    expected = loop_pool(grad, gen.grid, 8)
    (rmap,) = _method(plugins, "saliency").explain(tiny_vlm, [gen])
    np.testing.assert_allclose(rmap.grid, expected, rtol=1e-4, atol=1e-7)


def test_occlusion_equals_blanking_patches_by_hand(plugins, tiny_vlm, gens):
    gen = gens[1]
    (occ,) = _method(plugins, "occlusion").explain(tiny_vlm, [gen])
    (abl,) = _method(plugins, "feature_ablation").explain(tiny_vlm, [gen])
    np.testing.assert_allclose(occ.grid, abl.grid, rtol=1e-5, atol=1e-6)  # same perturbation at defaults
    p, pv = 8, gen.pixel_values
    with torch.no_grad():
        base = plain_logprob(tiny_vlm, gen, pv, 1)
        for i, j in [(0, 0), (3, 5), (7, 7)]:
            blank = pv.clone()
            blank[..., i * p : (i + 1) * p, j * p : (j + 1) * p] = 0.0
            drop = float((base - plain_logprob(tiny_vlm, gen, blank, 1)).abs())
            assert occ.grid[i, j] == pytest.approx(drop, rel=1e-3, abs=1e-5)


def test_layer_gradcam_equals_plain_gradcam(plugins, tiny_vlm, gens):
    gen = gens[0]
    conv = tiny_vlm.model.model.vision_tower.embeddings.patch_embedding
    store = {}

    def keep(_m, _i, out):
        out.retain_grad()
        store["act"] = out

    handle = conv.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            pv = gen.pixel_values.detach().clone().requires_grad_(True)
            plain_logprob(tiny_vlm, gen, pv, 1).sum().backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach(), store["act"].grad
    expected = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1))[0].numpy()
    (rmap,) = _method(plugins, "layer_gradcam").explain(tiny_vlm, [gen])
    np.testing.assert_allclose(rmap.grid, expected, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients"])
def test_whole_answer_target_differs_from_first_token(plugins, tiny_vlm, gens, name):
    small = {"n_steps": 4, "internal_batch_size": 4} if name == "integrated_gradients" else {}
    (first,) = _method(plugins, name, **small).explain(tiny_vlm, gens[:1])
    (answer,) = _method(plugins, name, target="answer", **small).explain(tiny_vlm, gens[:1])
    assert not np.allclose(first.grid, answer.grid)


@pytest.mark.parametrize("name,params", [("gradient_shap", {"n_samples": 4}), ("smoothgrad", {"nt_samples": 4})])
def test_noise_is_seeded_by_the_run_seed(plugins, tiny_vlm, gens, name, params):
    def run(seed):
        method = _method(plugins, name, **params)
        method.seed = seed
        return method.explain(tiny_vlm, gens[:1])[0].grid

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))
    state = np.random.get_state()[1].copy()
    run(2)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # numpy's global state restored


@pytest.mark.parametrize(
    "name,params",
    [("integrated_gradients", {"n_steps": 0}), ("smoothgrad", {"stdevs": -1.0}), ("occlusion", {"window": "big"}),
     ("saliency", {"target": "last"}), ("layer_gradcam", {"relu": "yes"}), ("gradient_shap", {"n_samples": 2.5}),
     ("saliency", {"pool": "max"}), ("layer_gradcam", {"pool": "abs"})],
)
def test_bad_parameter_values_are_refused(plugins, name, params):
    with pytest.raises(ParameterError, match=name):
        _method(plugins, name, **params)


@pytest.fixture(scope="module")
def default_vlm(plugins):
    """The default model of ``xbench run`` (follows runner.DEFAULT_MODEL)."""
    from xbench.models import load_vlm
    from xbench.runner import DEFAULT_MODEL

    return load_vlm(DEFAULT_MODEL, plugins.registries, device="cpu")


@pytest.mark.parametrize("name", CAPTUM_METHODS)
def test_maps_are_not_zero_on_the_default_model(plugins, default_vlm, easyvqa_samples, name):
    task, samples = easyvqa_samples
    gens = default_vlm.generate(samples[4:6], [task.prompt(s) for s in samples[4:6]], 4)
    for rmap in _method(plugins, name).explain(default_vlm, gens):
        assert np.isfinite(rmap.grid).all() and np.abs(rmap.grid).max() > 0


def test_parameters_from_the_cli_reach_the_summary(tmp_path, capsys):
    from xbench.cli import main

    out = tmp_path / "run"
    argv = ["run", "--method", "integrated_gradients", "--param", "n_steps=3", "--param", "target=answer",
            "--limit", "2", "--batch-size", "2", "--out", str(out), "--no-progress", "--warmup", "0"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == 2
    assert summary["method"]["params"] == {
        "target": "answer", "pool": "abs", "n_steps": 3, "internal_batch_size": 16, "baseline": 0.0
    }
    assert summary["method"]["label"] == "integrated_gradients n_steps=3,target=answer"
    assert main(argv[:3] + ["--param", "steps=3", "--out", str(tmp_path / "bad")]) == 2
    assert "has no parameter(s) ['steps']" in capsys.readouterr().err


def test_occlusion_signed_keeps_the_direction_of_each_drop(plugins, tiny_vlm, gens):
    """One window per patch: each patch's attribution is one number, so |signed map| is the abs map,
    and the signed map is the log-probability drop itself (negative where blanking helps the answer)."""
    gen = gens[1]
    (signed,) = _method(plugins, "occlusion", pool="signed").explain(tiny_vlm, [gen])
    (absolute,) = _method(plugins, "occlusion").explain(tiny_vlm, [gen])
    np.testing.assert_allclose(np.abs(signed.grid), absolute.grid, rtol=1e-5, atol=1e-6)
    p, pv = 8, gen.pixel_values
    with torch.no_grad():
        blank = pv.clone()
        blank[..., 0:p, 0:p] = 0.0
        drop = float(plain_logprob(tiny_vlm, gen, pv, 1) - plain_logprob(tiny_vlm, gen, blank, 1))
    assert signed.grid[0, 0] == pytest.approx(drop, rel=1e-3, abs=1e-5)
