"""Contract tests over every model family x every built-in method (timm-style parametrisation).

Every registered zoo model named ``tiny-random-*`` stands for its family (each mirrors one public
checkpoint with the big dimensions shrunk). For each: the image layout is consistent, the image
positions are exactly the tokens whose language-model input embeddings change with the image,
``gradient_relevancy`` equals a plain implementation written here, and every built-in method
gives finite maps of the layout's shape, identical between a batch of 4 and one sample at a time,
leaving no hook behind and no parameter trainable; a whole run of 4 samples has no error record.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xbench.api import ATTENTIONS
from xbench.plugins import build
from _hooks import module_hooks

_REGISTRIES = build().registries
FAMILY_MODELS = sorted(n for n in _REGISTRIES.models.names() if n.startswith("tiny-random-"))
METHODS = sorted(_REGISTRIES.methods.names())
N = 4




@pytest.fixture(scope="module", params=FAMILY_MODELS)
def family(request, plugins):
    """``(model name, adapter with eager attention, 4 samples, their prompts)``."""
    from xbench.fastrm.testing import install_random_proxies_for
    from xbench.models import load_vlm

    name = request.param
    vlm = load_vlm(name, plugins.registries, needs=frozenset({ATTENTIONS}), device="cpu")
    task = plugins.registries.tasks.get("easyvqa")()
    samples = list(task.samples(limit=N, seed=0))
    prompts = [task.prompt(s) for s in samples]
    # fixed-grid proxies for the grid of these samples' images (some families' grids vary per image)
    first = vlm.generate(samples[:1], prompts[:1], 1)[0]
    install_random_proxies_for(vlm, grid=first.grid)
    # transformers installs its output-capturing hooks on the whole model, for good, the first time
    # attentions are asked for (utils/output_capturing.py): install them before any hook snapshot, so
    # the contract test sees only what a method itself leaves behind
    with torch.no_grad():
        vlm.forward(first, output_attentions=True)
    return name, vlm, samples, prompts


@pytest.fixture(scope="module")
def batched(family):
    """The 4 samples generated in one batch, with hidden states kept."""
    _, vlm, samples, prompts = family
    return vlm.generate(samples, prompts, 3, keep=frozenset({"hidden_states"}))


@pytest.fixture(scope="module")
def singles(family):
    _, vlm, samples, prompts = family
    return [vlm.generate([s], [p], 3, keep=frozenset({"hidden_states"}))[0] for s, p in zip(samples, prompts)]


def test_generation_is_the_same_alone_and_in_a_batch(batched, singles):
    for b, s in zip(batched, singles):
        assert b.prompt_ids == s.prompt_ids and b.answer_ids == s.answer_ids and b.image_positions == s.image_positions
        assert b.layout == s.layout
        torch.testing.assert_close(b.pixel_values, s.pixel_values)


def test_the_layout_covers_the_image_tokens(family, batched):
    _, vlm, samples, _ = family
    for gen, sample in zip(batched, samples):
        layout = gen.layout
        image = sample.load_image()
        assert layout.image_size == (image.height, image.width)
        assert layout.n_cells == len(gen.image_positions) == len(set(gen.image_positions))
        assert gen.grid == layout.map_shape
        boxes = layout.boxes
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= image.height).all() and (boxes[:, [1, 3]] <= image.width).all()
        cells = vlm.pixel_cells(gen)
        assert cells.ndim == gen.pixel_values.ndim and cells.shape[0] == 1
        used = torch.unique(cells[cells >= 0])
        assert used.max() < layout.n_cells
        full = np.ones(layout.image_size, bool)
        cover = layout.cover(full)
        assert cover.shape == gen.grid and np.all((cover >= 0) & (cover <= 1 + 1e-6))


def test_image_positions_are_the_tokens_the_image_changes(family, batched):
    """Teacher-forced, the language model's input embeddings change with the image exactly at the
    recorded image positions (elements feeding no cell are left alone)."""
    _, vlm, _, _ = family
    gen = batched[0]
    seen = []
    handle = vlm.language_model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(kwargs["inputs_embeds"].detach().clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            vlm.forward(gen)
            noise = torch.randn(gen.pixel_values.shape, generator=torch.Generator().manual_seed(0))
            feeds = (vlm.pixel_cells(gen) >= 0).expand_as(gen.pixel_values)
            vlm.forward(gen, pixel_values=gen.pixel_values + noise.to(gen.pixel_values.dtype) * feeds)
    finally:
        handle.remove()
    changed = (seen[0][0] - seen[1][0]).abs().amax(dim=-1) > 0
    assert changed.nonzero().flatten().tolist() == gen.image_positions


def plain_llm_relevancy(vlm, gen) -> np.ndarray:
    """Chefer et al.'s relevancy of every answer token the long way: full ``T x T`` products."""
    with torch.enable_grad():
        pv = gen.pixel_values.detach().clone().requires_grad_(True)
        out = vlm.forward(gen, pixel_values=pv, output_attentions=True)
        atts = list(out.attentions)
        T = atts[0].shape[-1]
        maps = []
        for k, tok in enumerate(gen.answer_ids):
            q = gen.prompt_len - 1 + k
            grads = torch.autograd.grad(out.logits[0, q, tok], atts, retain_graph=True)
            R = torch.eye(T)
            for a, g in zip(atts, grads):
                R = R + (g[0].float() * a[0].detach().float()).clamp(min=0).mean(dim=0) @ R
            maps.append(R[q, gen.image_positions].reshape(gen.grid).numpy())
    return np.stack(maps)


def test_gradient_relevancy_equals_a_plain_implementation(family, batched):
    from xbench.methods.gradient_relevancy import answer_relevancy

    _, vlm, _, _ = family
    for gen in batched[:2]:
        got = answer_relevancy(vlm, gen)
        want = plain_llm_relevancy(vlm, gen)
        assert got.shape == want.shape == (len(gen.answer_ids), *gen.grid)
        assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("method_name", METHODS)
def test_method_contract(plugins, family, batched, singles, method_name):
    _, vlm, _, _ = family
    method = plugins.registries.methods.get(method_name)()
    method.check(vlm)
    hooks = module_hooks(vlm.model)
    maps = method.explain(vlm, batched)
    alone = [method.explain(vlm, [g])[0] for g in singles]
    assert module_hooks(vlm.model) == hooks, "hooks left on the model"
    assert not any(p.requires_grad or p.grad is not None for p in vlm.model.parameters())
    for gen, rmap, one in zip(batched, maps, alone):
        rmap.validate(gen.grid, method_name)
        assert np.isfinite(rmap.grid).all()
        np.testing.assert_allclose(rmap.grid, one.grid, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method_name", METHODS)
def test_a_run_of_four_samples_has_no_error_record(plugins, family, tmp_path, method_name):
    from xbench.records import read_records
    from xbench.runner import RunConfig, run

    config = RunConfig(method=method_name, model=family[0], limit=N, batch_size=2, out=tmp_path / "run", warmup=0,
                       progress=False, device="cpu")
    summary = run(config, plugins)
    records = list(read_records(tmp_path / "run" / "samples.jsonl"))
    assert summary["n_records"] == N and [r.get("error") for r in records] == [None] * N, summary["error_digest"]
