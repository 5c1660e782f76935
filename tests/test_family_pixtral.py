"""llava_pixtral: LLaVA checkpoints with a Pixtral tower (mistral-community/pixtral-12b's layout).

A directory laid out as the public repository (sharded weights, hand-written processor files, JSON or
Jinja chat template) runs with only ``--model DIR``; grids follow each image's aspect ratio by the
processor's rules (recomputed here); the image tokens are the ``[IMG]`` tokens only; a batch of
differently sized images generates what each generates alone and its padding feeds nothing; B copies
re-forward as one; the tower hook points agree with plain computations written here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xbench.api import ATTENTIONS, Sample
from xbench.errors import ModelLoadError

PATCH, LONGEST = 16, 128


def image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def sample(width: int, height: int, seed: int = 0) -> Sample:
    return Sample(id=f"img-{width}x{height}", question="what color is the shape?", answers=["red"],
                  image=image(width, height, seed))  # fmt: skip


def expected_grid(height: int, width: int) -> tuple[int, int]:
    """Pixtral's rule: shrink (never enlarge) to fit the longest edge, floor, then whole patches, up."""
    ratio = max(height / LONGEST, width / LONGEST)
    if ratio > 1:
        height, width = math.floor(height / ratio), math.floor(width / ratio)
    return math.ceil(height / PATCH), math.ceil(width / PATCH)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A public-style directory: weights in shards with an index, processor files, chat_template.json."""
    from xbench.zoo.pixtral import build_pixtral

    out = tmp_path_factory.mktemp("pixtral") / "pixtral-12b-tiny"
    build_pixtral(out, max_shard_size="200KB")
    return out


@pytest.fixture(scope="module")
def vlm(plugins, model_dir):
    from xbench.models import load_vlm

    return load_vlm(str(model_dir), plugins.registries, needs=frozenset({ATTENTIONS}), device="cpu")


def test_the_directory_is_laid_out_as_the_public_one(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "preprocessor_config.json", "processor_config.json", "chat_template.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1  # sharded
    config = json.loads((model_dir / "config.json").read_text())
    vision, text = config["vision_config"], config["text_config"]
    assert (config["model_type"], vision["model_type"], text["model_type"]) == ("llava", "pixtral", "mistral")
    assert (vision["patch_size"], vision["rope_theta"], vision["hidden_act"]) == (16, 10000.0, "silu")
    assert vision["head_dim"] == vision["hidden_size"] // vision["num_attention_heads"]
    assert (text["rope_theta"], text["sliding_window"], text["max_position_embeddings"]) == (1e9, None, 1024000)
    assert (config["image_token_index"], config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (10, -1, "full")
    assert config["projector_hidden_act"] == "gelu"
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "PixtralImageProcessor" and pre["size"] == {"longest_edge": LONGEST}
    assert pre["patch_size"] == {"height": 16, "width": 16} and pre["resample"] == 3
    proc = json.loads((model_dir / "processor_config.json").read_text())
    assert (proc["image_token"], proc["image_break_token"], proc["image_end_token"]) == ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
    assert (proc["patch_size"], proc["spatial_merge_size"]) == (16, 1)


def test_the_build_is_deterministic(model_dir, tmp_path):
    from xbench.zoo.pixtral import build_pixtral

    build_pixtral(tmp_path / "again", max_shard_size="200KB")
    for name in sorted(p.name for p in model_dir.iterdir()):
        assert (tmp_path / "again" / name).read_bytes() == (model_dir / name).read_bytes(), name


def test_families_tell_the_towers_apart(vlm, model_dir, plugins):
    from xbench.models.llava import LlavaAdapter
    from xbench.models.llava_pixtral import LlavaPixtralAdapter

    config = json.loads((model_dir / "config.json").read_text())
    assert vlm.family == "llava_pixtral" and LlavaPixtralAdapter.accepts(config) and not LlavaAdapter.accepts(config)
    clip = json.loads((plugins.registries.models.get("tiny-random-llava").locate() / "config.json").read_text())
    assert LlavaAdapter.accepts(clip) and not LlavaPixtralAdapter.accepts(clip)
    assert not hasattr(vlm, "patch_grid")  # no fixed grid to claim


def test_the_prompt_is_what_the_public_template_renders(vlm):
    assert vlm.render_prompt("is there a red circle?") == "<s>[INST][IMG]is there a red circle?[/INST]"
    assert vlm.prompt_format == "<s>[INST][IMG]{prompt}[/INST]"
    turns = [{"role": "system", "content": "be brief"},
             {"role": "user", "content": [{"type": "text", "text": "what is"}, {"type": "image"}]}]  # fmt: skip
    assert vlm.processor.apply_chat_template(turns, add_generation_prompt=True) == "<s>[INST]be brief\n\nwhat is[IMG][/INST]"


@pytest.mark.parametrize("jinja", [False, True])
def test_the_directory_runs_with_only_model_dir(model_dir, tmp_path, capsys, jinja):
    import shutil

    from xbench.cli import main
    from xbench.records import read_records

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    if jinja:  # the newer layout: the template in its own file
        template = json.loads((model / "chat_template.json").read_text())["chat_template"]
        (model / "chat_template.json").unlink()
        (model / "chat_template.jinja").write_text(template)
    out = tmp_path / "run"
    argv = ["run", "--method", "gradient_relevancy", "--model", str(model), "--limit", "2", "--out", str(out),
            "--no-progress", "--warmup", "0"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    records = list(read_records(out / "samples.jsonl"))
    assert [r.get("error") for r in records] == [None, None]
    model_record = json.loads((out / "summary.json").read_text())["model"]
    assert (model_record["family"], model_record["prompt_format"]) == ("llava_pixtral", "<s>[INST][IMG]{prompt}[/INST]")


def test_a_checkpoint_without_chat_template_is_refused(model_dir, tmp_path, plugins):
    import shutil

    from xbench.models import load_vlm

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    (model / "chat_template.json").unlink()
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_vlm(str(model), plugins.registries, device="cpu")


@pytest.mark.parametrize(
    "file, key, value, culprit",
    [("config.json", "vision_feature_select_strategy", "default", "vision_feature_select_strategy"),
     ("processor_config.json", "spatial_merge_size", 2, "spatial_merge_size")],
)  # fmt: skip
def test_layouts_it_cannot_follow_are_refused(model_dir, tmp_path, plugins, file, key, value, culprit):
    import shutil

    from xbench.models import load_vlm

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    data = json.loads((model / file).read_text())
    data[key] = value
    (model / file).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=culprit):
        load_vlm(str(model), plugins.registries, device="cpu")


@pytest.fixture(scope="module")
def shapes():
    """(width, height) of images of different aspect ratios, one larger than the longest edge."""
    return [(100, 40), (40, 100), (300, 150), (64, 64)]


@pytest.fixture(scope="module")
def generations(vlm, shapes):
    samples = [sample(w, h, seed=k) for k, (w, h) in enumerate(shapes)]
    return samples, vlm.generate(samples, [s.question for s in samples], 3, keep=frozenset({"hidden_states"}))


def test_grids_follow_the_aspect_ratio(vlm, generations):
    samples, gens = generations
    img, brk, end = vlm.tokenizer.convert_tokens_to_ids(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    grids = []
    for s, gen in zip(samples, gens):
        H, W = s.image.height, s.image.width
        gh, gw = expected_grid(H, W)
        grids.append((gh, gw))
        assert gen.layout.grids == ((gh, gw),) and gen.grid == (gh, gw)
        assert tuple(gen.pixel_values.shape) == (1, 3, gh * PATCH, gw * PATCH)
        assert gen.image_inputs["image_sizes"].tolist() == [[gh * PATCH, gw * PATCH]]
        first = gen.prompt_ids.index(img)
        block = gen.prompt_ids[first : first + gh * (gw + 1)]
        assert block == ([img] * gw + [brk]) * (gh - 1) + [img] * gw + [end]
        assert gen.image_positions == [first + r * (gw + 1) + c for r in range(gh) for c in range(gw)]
        want = [(r * H / gh, c * W / gw, (r + 1) * H / gh, (c + 1) * W / gw) for r in range(gh) for c in range(gw)]
        np.testing.assert_allclose(gen.layout.boxes, want, atol=1e-9)
        cells = vlm.pixel_cells(gen)[0, 0]
        rows, cols = torch.meshgrid(torch.arange(gh * PATCH), torch.arange(gw * PATCH), indexing="ij")
        assert torch.equal(cells, (rows // PATCH) * gw + cols // PATCH)
        assert vlm.patch_cells(gen).tolist() == list(range(gh * gw))
    assert grids[0] != grids[1] and grids[0] == grids[1][::-1] and grids[2] == (4, 8)


def test_a_batch_of_different_sizes_generates_what_each_generates_alone(vlm, generations):
    samples, gens = generations
    for s, gen in zip(samples, gens):
        alone = vlm.generate([s], [s.question], 3, keep=frozenset({"hidden_states"}))[0]
        assert (alone.prompt_ids, alone.answer_ids, alone.image_positions) == (gen.prompt_ids, gen.answer_ids, gen.image_positions)
        assert alone.layout == gen.layout
        torch.testing.assert_close(alone.pixel_values, gen.pixel_values)
        torch.testing.assert_close(alone.hidden_states, gen.hidden_states, rtol=1e-4, atol=1e-5)


def test_padding_in_a_batch_feeds_nothing(vlm, shapes):
    """Noise in the padded part of a processed batch changes no logit."""
    samples = [sample(w, h, seed=k) for k, (w, h) in enumerate(shapes[:2])]
    prompts = [vlm.render_prompt(s.question) for s in samples]
    inputs = vlm.encode([s.image for s in samples], prompts)
    sizes = inputs["image_sizes"]
    noisy = inputs["pixel_values"].clone()
    pad = torch.ones_like(noisy, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes.tolist()):
        pad[i, :, :h, :w] = False
    assert pad.any()
    noisy[pad] = torch.randn(int(pad.sum()), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = vlm.model(**inputs).logits
        dirty = vlm.model(**{**inputs, "pixel_values": noisy}).logits
    torch.testing.assert_close(clean, dirty, rtol=0, atol=0)


@pytest.mark.parametrize("tower_tokens, calls", [(None, [3]), (1, [1, 1, 1]), ("2n", [2, 1])])
def test_b_copies_reforward_as_one(vlm, generations, monkeypatch, tower_tokens, calls):
    """Copies reach the tower in groups of at most TOWER_TOKENS patches, with the numbers of one forward each."""
    from xbench.models import llava_pixtral

    _, gens = generations
    gen = gens[2]
    n = gen.layout.n_cells
    if tower_tokens is not None:
        monkeypatch.setattr(llava_pixtral, "TOWER_TOKENS", 2 * n if tower_tokens == "2n" else tower_tokens)
    keep = torch.tensor([[1.0] * n, [0.0] * n, [0.5] * n])
    batch = vlm.perturb(gen, keep, vlm.fill_value(gen, "mean"))
    seen = []
    handle = vlm.model.model.vision_tower.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            together = vlm.forward(gen, pixel_values=batch).logits
    finally:
        handle.remove()
    assert seen == [(c, *gen.pixel_values.shape[1:]) for c in calls]
    with torch.no_grad():
        apart = torch.cat([vlm.forward(gen, pixel_values=batch[b : b + 1]).logits for b in range(3)])
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(apart[0], vlm.forward(gen).logits[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="do not match the image size"):
        vlm.forward(gen, pixel_values=gens[0].pixel_values)


def test_tower_hook_points(vlm, generations):
    _, gens = generations
    gen = gens[0]
    n = gen.layout.n_cells
    assert vlm.vision_token_positions(gen) == [[i] for i in range(n)]
    assert vlm.vision_layers_read() == vlm.model.config.vision_config.num_hidden_layers
    out = vlm.forward(gen, output_attentions=True)
    heads = vlm.model.config.vision_config.num_attention_heads
    assert [tuple(a.shape) for a in out.vision_attentions] == [(1, heads, n, n)] * vlm.vision_layers_read()
    module, view = vlm.patch_features()
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, o: captured.append(o))
    try:
        with torch.no_grad():
            vlm.forward(gen)
    finally:
        handle.remove()
    conv = torch.nn.functional.conv2d(gen.pixel_values, module.weight, stride=PATCH)[0]  # [D, gh, gw]
    torch.testing.assert_close(view(captured[0], gen), conv.flatten(1))
    with vlm.image_features_as_leaf():
        leaf = []
        handle = vlm.model.model.language_model.register_forward_pre_hook(
            lambda _m, a, kw: leaf.append(kw["inputs_embeds"]), with_kwargs=True
        )
        try:
            with torch.enable_grad():
                vlm.forward(gen)
        finally:
            handle.remove()
    assert leaf[0].requires_grad


def test_gradient_relevancy_through_the_tower_equals_full_products(vlm, generations):
    """scope='all' against full ``T x T`` products in the language model, then ``n x n`` ones in the tower."""
    from xbench.methods.gradient_relevancy import answer_relevancy

    _, gens = generations
    gen = gens[1]
    got = answer_relevancy(vlm, gen, scope="all")
    with torch.enable_grad():
        pv = gen.pixel_values.detach().clone().requires_grad_(True)
        out = vlm.forward(gen, pixel_values=pv, output_attentions=True)
        llm, tower = list(out.attentions), list(out.vision_attentions)
        maps = []
        for k, tok in enumerate(gen.answer_ids):
            q = gen.prompt_len - 1 + k
            grads = torch.autograd.grad(out.logits[0, q, tok], llm + tower, retain_graph=True)
            cam = [(g[0].float() * a[0].detach().float()).clamp(min=0).mean(dim=0) for a, g in zip(llm + tower, grads)]
            R = torch.eye(llm[0].shape[-1])
            for c in cam[: len(llm)]:
                R = R + c @ R
            V = torch.eye(tower[0].shape[-1])
            for c in cam[len(llm) :]:
                V = V + c @ V
            maps.append((R[q, gen.image_positions] @ V).reshape(gen.grid).numpy())
    assert got.shape == (len(gen.answer_ids), *gen.grid)
    np.testing.assert_allclose(got, np.stack(maps), rtol=1e-4, atol=1e-6)
