"""The llava family on its two public layouts: LLaVA-1.5 (CLIP with CLS, ``default`` strategy) and
llava-interleave (SigLIP without CLS, ``full`` strategy, patches that do not tile the image, ChatML)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xbench.cli import main


@pytest.mark.parametrize("shards", [False, True])
def test_a_public_layout_directory_runs_with_only_model_dir(tmp_path, shards):
    from xbench.zoo.llava_variants import LLAVA15_TEMPLATE
    from xbench.zoo.tiny import build_tiny_llava

    model_dir = tmp_path / "llava-1.5-mirror"
    build_tiny_llava(model_dir, seed=1, chat_template=LLAVA15_TEMPLATE, public_layout=True,
                     **({"max_shard_size": "100KB"} if shards else {}))
    files = {f.name for f in model_dir.iterdir()}
    assert {"config.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
            "tokenizer.json", "tokenizer_config.json"} <= files
    assert ("model.safetensors.index.json" in files) == shards
    out = tmp_path / "run"
    assert main(["run", "--model", str(model_dir), "--method", "rollout", "--limit", "2", "--out", str(out),
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_errors"] == 0 and summary["model"]["family"] == "llava"
    assert summary["model"]["prompt_format"] == "USER: <image>\n{prompt} ASSISTANT:"


def test_interleave_prompt_and_layout(plugins):
    from xbench.models import load_vlm

    vlm = load_vlm("tiny-random-llava-interleave", plugins.registries, needs=frozenset({"attentions"}), device="cpu")
    assert vlm.prompt_format == "<|im_start|>user\n<image>\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    task = plugins.registries.tasks.get("easyvqa")()
    (sample,) = task.samples(limit=1, seed=0)
    (gen,) = vlm.generate([sample], [task.prompt(sample)], 2)
    assert gen.grid == (4, 4) and len(gen.image_positions) == 16  # no CLS: every tower token is a patch
    # 4 patches of 14 px read 56 of the 64 processed pixels: the last 8 rows/cols feed no cell, and the
    # boxes cover the top-left 56/64 of the (stretched, uncropped) original image
    cells = vlm.pixel_cells(gen)[0, 0]
    assert (cells[56:] == -1).all() and (cells[:, 56:] == -1).all() and (cells[:56, :56] >= 0).all()
    assert cells[13, 13] == 0 and cells[14, 14] == 5
    H, W = gen.layout.image_size
    np.testing.assert_allclose(gen.layout.boxes[-1], [H * 42 / 64, W * 42 / 64, H * 56 / 64, W * 56 / 64], atol=1e-6)
    assert vlm.vision_token_positions(gen) == [[i] for i in range(16)]


def test_interleave_relevancy_through_the_tower_equals_a_plain_implementation(plugins):
    """scope='all' on a tower without CLS (``full`` strategy): image token i is tower token i."""
    from xbench.methods.gradient_relevancy import answer_relevancy
    from xbench.models import load_vlm

    vlm = load_vlm("tiny-random-llava-interleave", plugins.registries, needs=frozenset({"attentions"}), device="cpu")
    task = plugins.registries.tasks.get("easyvqa")()
    (sample,) = task.samples(limit=1, seed=0)
    (gen,) = vlm.generate([sample], [task.prompt(sample)], 2)
    ids = torch.tensor([gen.prompt_ids + gen.answer_ids])
    with torch.enable_grad():
        pv = gen.pixel_values.detach().clone().requires_grad_(True)
        out = vlm.model(input_ids=ids, pixel_values=pv, output_attentions=True, use_cache=False)
        atts, vis = list(out.attentions), list(out.image_outputs.attentions)  # feature layer -1: every layer
        maps = []
        for k, tok in enumerate(gen.answer_ids):
            q = gen.prompt_len - 1 + k
            grads = torch.autograd.grad(out.logits[0, q, tok], atts + vis, retain_graph=True)
            R = torch.eye(ids.shape[1])
            for a, g in zip(atts, grads[: len(atts)]):
                R = R + (g[0] * a[0].detach()).clamp(min=0).mean(dim=0) @ R
            Rv = torch.eye(vis[0].shape[-1])
            for a, g in zip(vis, grads[len(atts):]):
                Rv = Rv + (g[0] * a[0].detach()).clamp(min=0).mean(dim=0) @ Rv
            maps.append((R[q, gen.image_positions] @ Rv).reshape(gen.grid).numpy())
    got = answer_relevancy(vlm, gen, scope="all")
    assert np.abs(got - np.stack(maps)).max() <= 1e-5
