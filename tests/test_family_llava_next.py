"""The llava_next and llava_onevision families: checkpoints laid out like the public ones, the anyres
layout checked against the processor's and the model's own code, and gradient relevancy against a
plain implementation written here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from xbench.api import ATTENTIONS, Sample
from xbench.errors import ModelCapabilityError, ModelLoadError

NEXT, ONEVISION = "tiny-random-llava-next", "tiny-random-llava-onevision"
FAMILIES = (NEXT, ONEVISION)
#: (height, width): square, wide, tall, and a tall one cut on two sides; none pooled by anyres_max_9
SIZES = ((64, 64), (40, 100), (100, 37), (150, 64))
POOLED_SIZE = (200, 200)  # OneVision: a 32x32 high-resolution grid, shrunk to 24x24
LO, HI = 30, 230


def shape_sample(size, name="s") -> tuple[Sample, np.ndarray]:
    """A dark image of ``size`` with a bright rectangle away from the borders, and its mask."""
    H, W = size
    mask = np.zeros((H, W), bool)
    mask[H // 4 : H // 2 + H // 8, W // 3 : W // 3 + W // 4] = True
    pixels = np.where(mask[..., None], HI, LO).astype(np.uint8).repeat(3, axis=2)
    sample = Sample(id=f"{name}-{H}x{W}", question="what color is the shape?", answers=["white"], image=Image.fromarray(pixels))
    return sample, mask


@pytest.fixture(scope="module")
def adapters(plugins):
    from xbench.models import load_vlm

    return {n: load_vlm(n, plugins.registries, needs=frozenset({ATTENTIONS}), device="cpu") for n in FAMILIES}


def generate(vlm, size, name="s"):
    sample, mask = shape_sample(size, name)
    return vlm.generate([sample], [sample.question], 2)[0], mask


# ---------------------------------------------------------------------- checkpoints and prompts
@pytest.mark.parametrize("name, shards", [(NEXT, True), (ONEVISION, False)])
def test_a_public_layout_directory_runs_with_only_model_dir(plugins, tmp_path, name, shards):
    from xbench.cli import main
    from xbench.records import read_records

    model_dir = tmp_path / "checkpoint"
    plugins.registries.models.get(name).build(model_dir)
    files = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
            "tokenizer.json", "tokenizer_config.json"} <= files
    assert ("model.safetensors.index.json" in files) == shards and any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    out = tmp_path / "run"
    argv = ["run", "--model", str(model_dir), "--method", "gradient_relevancy", "--limit", "2", "--out", str(out),
            "--no-progress", "--warmup", "0"]
    assert main(argv) == 0
    records = list(read_records(out / "samples.jsonl"))
    assert len(records) == 2 and [r.get("error") for r in records] == [None, None]


def test_the_prompt_is_what_the_public_template_renders(adapters):
    nxt, ov = adapters[NEXT], adapters[ONEVISION]
    assert nxt.render_prompt("what is it?") == "[INST] <image>\nwhat is it? [/INST]"
    assert ov.render_prompt("what is it?") == "<|im_start|>user <image>\nwhat is it?<|im_end|><|im_start|>assistant\n"
    gen, _ = generate(nxt, (64, 64))
    assert gen.prompt_ids[0] == nxt.tokenizer.bos_token_id  # Mistral's tokenizer adds BOS, the template does not
    assert ov.tokenizer.bos_token_id is None


def test_a_processor_that_disagrees_with_the_config_is_refused(plugins, tmp_path):
    from xbench.models import load_vlm

    model_dir = tmp_path / "m"
    shutil.copytree(plugins.registries.models.get(NEXT).locate(), model_dir)
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    pre["image_grid_pinpoints"] = [[64, 64]]
    (model_dir / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(ModelLoadError, match="image_grid_pinpoints"):
        load_vlm(str(model_dir), plugins.registries, device="cpu")


# ---------------------------------------------------------------------- layout
def packed_tokens(vlm, gen, features):
    """The model's own ``pack_image_features`` over ``features [n_crops, side * side, k]``, newline -1."""
    m = vlm.model.model
    newline = torch.full((features.shape[-1],), -1.0)
    sizes = gen.image_inputs["image_sizes"]
    if vlm.family == "llava_onevision":
        packed, _ = m.pack_image_features([features], sizes, image_newline=newline,
                                          vision_aspect_ratio=vlm.model.config.vision_aspect_ratio)
    else:
        packed, _ = m.pack_image_features([features], sizes, "default", image_newline=newline)
    return packed[0]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_layout_matches_the_processor_and_the_model(adapters, name, size):
    vlm = adapters[name]
    gen, _ = generate(vlm, size)
    layout = gen.layout
    (hb, wb), (h, w) = layout.grids
    assert layout.n_cells == hb * wb + h * w == len(gen.image_positions) and gen.grid == (layout.n_cells,)
    placeholders = [j for j, t in enumerate(gen.prompt_ids) if t == vlm.image_token_id]
    assert len(placeholders) == layout.n_cells + h  # one newline per high-resolution row, not a cell
    newlines = sorted(set(placeholders) - set(gen.image_positions))
    assert newlines == [placeholders[hb * wb + r * (w + 1) + w] for r in range(h)]
    assert gen.pixel_values.shape[:3] == (1, vlm.grid_of(size).n_crops, 3)
    # the model's packing of features that name their (crop, patch): cell c reads vision token c
    side = vlm.patch_grid[0]
    n_crops = gen.pixel_values.shape[1]
    index = torch.arange(n_crops * side * side, dtype=torch.float32).reshape(n_crops, side * side, 1)
    packed = packed_tokens(vlm, gen, index)[:, 0]
    read = packed[packed >= 0].long()
    crop, patch = read // (side * side), read % (side * side)
    expected = crop * vlm.tower_tokens + vlm.first_vision_token + patch
    assert [t for (t,) in vlm.vision_token_positions(gen)] == expected.tolist()
    assert vlm.patch_cells(gen)[read].tolist() == list(range(layout.n_cells))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_boxes_cover_the_image_and_hold_the_pixels_of_their_cells(adapters, name, size):
    """The base grid covers the image (up to the strip past the last patch of a crop, which no
    patch sees), the high-resolution grid too but for at most one patch along the sides the model
    unpads (it rounds the cut to whole patches); the processed pixels of each cell show the part
    of the image its box names."""
    vlm = adapters[name]
    gen, mask = generate(vlm, size)
    layout = gen.layout
    H, W = size
    boxes = layout.boxes
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= H).all() and (boxes[:, [1, 3]] <= W).all()
    g = vlm.grid_of(size)
    ys, xs = np.arange(H) + 0.5, np.arange(W) + 0.5
    seen = g.side * g.patch - 1.5  # in-crop pixels past the patches (none for NeXT, 2 of 66 here) feed no cell

    def unseen(y_scale, x_scale, y0=0.0, x0=0.0):
        return ((ys * y_scale + y0) % g.crop >= seen)[:, None] | ((xs * x_scale + x0) % g.crop >= seen)[None, :]

    base_unseen = unseen(g.crop / H, g.crop / W)
    high_unseen = unseen(g.resized[0] / H, g.resized[1] / W, g.paste[0], g.paste[1])
    py, px = g.patch * H / g.resized[0], g.patch * W / g.resized[1]  # one high-resolution patch
    cut = (ys[:, None] < py) | (ys[:, None] > H - py) | (xs[None, :] < px) | (xs[None, :] > W - px)
    for part, margin in ((boxes[: g.n_base], base_unseen), (boxes[g.n_base :], high_unseen | cut)):
        held = np.zeros((H, W), bool)
        for t, l, b, r in part:
            held[np.ix_((ys >= t) & (ys < b), (xs >= l) & (xs < r))] = True
        assert held[~margin].all()
    ip = vlm.processor.image_processor
    mean, std = torch.tensor(ip.image_mean)[:, None, None], torch.tensor(ip.image_std)[:, None, None]
    shown = (gen.pixel_values[0] * std + mean)[:, 0]  # [n_crops, S, S], the red channel in [0, 1]
    cells = vlm.pixel_cells(gen)[0, :, 0]
    bright = (shown - LO / 255) / ((HI - LO) / 255)
    counts = torch.bincount(cells[cells >= 0], minlength=layout.n_cells).double()
    means = torch.zeros(layout.n_cells, dtype=torch.float64).index_add_(0, cells[cells >= 0], bright[cells >= 0].double())
    padded = torch.zeros(layout.n_cells, dtype=torch.bool).index_put_((cells[(cells >= 0) & (shown < 1e-3)],), torch.tensor(True))
    cover = layout.cover(mask)
    fair = (counts > 0) & ~padded  # cells over canvas padding show black, not the image
    assert fair.sum() > 0.8 * layout.n_cells
    np.testing.assert_allclose((means / counts.clamp(min=1))[fair].numpy(), cover[fair.numpy()], atol=0.12)


def test_pooled_onevision_cells_are_where_the_interpolation_samples(adapters):
    """anyres_max_9 shrinks a 32x32 grid to 24x24 bilinearly: each pooled cell's box is centred on
    the point the interpolation samples (fed the canvas position of every patch, the model's own
    packing returns each cell's centre), and the patch-level hook points refuse the sample."""
    vlm = adapters[ONEVISION]
    gen, _ = generate(vlm, POOLED_SIZE, "pooled")
    g = vlm.grid_of(POOLED_SIZE)
    assert g.pooled and g.kept[2:] == (32, 32) and gen.layout.grids[1] == (24, 24)
    placeholders = sum(t == vlm.image_token_id for t in gen.prompt_ids)
    assert placeholders == gen.layout.n_cells + 24
    n_rows, n_cols = g.crops
    t = (torch.arange(g.side) + 0.5) * g.patch
    feats = []
    for k in range(g.n_crops):
        i, j = divmod(k - 1, n_cols) if k else (0, 0)
        y, x = torch.meshgrid(i * g.crop + t, j * g.crop + t, indexing="ij")
        feats.append(torch.stack([y.flatten(), x.flatten()], dim=-1))
    packed = packed_tokens(vlm, gen, torch.stack(feats).float())
    high = packed[g.n_base + 0 :]
    high = high[high[:, 0] >= 0]  # drop the newlines
    boxes = gen.layout.boxes[g.n_base :]
    H, W = POOLED_SIZE
    centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 * g.resized[0] / H + g.paste[0],
                       (boxes[:, 1] + boxes[:, 3]) / 2 * g.resized[1] / W + g.paste[1]], axis=1)
    inner = (np.abs(centre - centre.mean(0)) < 0.45 * np.array(g.best)).all(axis=1)  # edges clamp in bilinear
    np.testing.assert_allclose(high.numpy()[inner], centre[inner], atol=g.crop - g.side * g.patch + 0.5)
    with pytest.raises(ModelCapabilityError, match="bilinear"):
        vlm.vision_token_positions(gen)
    with pytest.raises(ModelCapabilityError, match="bilinear"):
        vlm.patch_cells(gen)


def test_pooled_samples_get_a_map_or_a_clear_error(plugins, adapters):
    from xbench.methods.gradient_relevancy import answer_relevancy

    vlm = adapters[ONEVISION]
    gen, _ = generate(vlm, POOLED_SIZE, "pooled")
    maps = answer_relevancy(vlm, gen, scope="llm")
    assert maps.shape == (len(gen.answer_ids), gen.layout.n_cells) and np.isfinite(maps).all()
    with pytest.raises(ModelCapabilityError, match="bilinear"):
        answer_relevancy(vlm, gen, scope="all")
    gradcam = plugins.registries.methods.get("layer_gradcam")()
    gradcam.check(vlm)  # the model has per-patch features; this sample's cells are not made of patches
    with pytest.raises(ModelCapabilityError, match="bilinear"):
        gradcam.explain(vlm, [gen])


# ---------------------------------------------------------------------- gradient relevancy
def plain_relevancy(vlm, gen, scope: str) -> np.ndarray:
    """Chefer et al.'s rule with full matrices: ``R = prod_l (I + Abar_l)`` over the language model,
    the answer row over the image tokens; for ``scope='all'`` that row seeds the image tokens' vision
    tokens and goes through each crop's ``prod (I + Abar)`` over the tower layers read."""
    with torch.enable_grad():
        pv = gen.pixel_values.detach().clone().requires_grad_(True)
        out = vlm.forward(gen, pixel_values=pv, output_attentions=True)
        atts = list(out.attentions)
        vision = list(out.vision_attentions[: vlm.vision_layers_read()]) if scope == "all" else []
        T = atts[0].shape[-1]
        maps = []
        for k, tok in enumerate(gen.answer_ids):
            q = gen.prompt_len - 1 + k
            grads = torch.autograd.grad(out.logits[0, q, tok], atts + vision, retain_graph=True)
            R = torch.eye(T)
            for a, g in zip(atts, grads):
                R = R + (g[0] * a[0]).clamp(min=0).mean(dim=0) @ R
            m = R[q, gen.image_positions]
            if vision:
                crops, n = vision[0].shape[0], vision[0].shape[-1]
                per_crop = []
                for c in range(crops):
                    Rc = torch.eye(n)
                    for a, g in zip(vision, grads[len(atts) :]):
                        Rc = Rc + (g[c] * a[c]).clamp(min=0).mean(dim=0) @ Rc
                    per_crop.append(Rc)
                tokens = [t for (t,) in vlm.vision_token_positions(gen)]
                seed = torch.zeros(crops * n)
                seed[tokens] = m
                m = (seed @ torch.block_diag(*per_crop))[tokens]
            maps.append(m.detach().numpy())
    return np.stack(maps)


@pytest.mark.parametrize("scope", ["llm", "all"])
@pytest.mark.parametrize("name, size", [(NEXT, (64, 64)), (NEXT, (40, 100)), (ONEVISION, (40, 100))])
def test_gradient_relevancy_equals_a_plain_implementation(adapters, scope, name, size):
    from xbench.methods.gradient_relevancy import answer_relevancy

    vlm = adapters[name]
    gen, _ = generate(vlm, size)
    got = answer_relevancy(vlm, gen, scope=scope)
    want = plain_relevancy(vlm, gen, scope)
    assert got.shape == want.shape == (len(gen.answer_ids), gen.layout.n_cells)
    assert np.abs(want).max() > 0
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("name", FAMILIES)
def test_the_mirrors_build_deterministically(plugins, tmp_path, name):
    import hashlib

    spec = plugins.registries.models.get(name)
    digests = []
    for k in range(2):
        spec.build(tmp_path / str(k))
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / str(k)).iterdir())})
    assert digests[0] == digests[1]
    assert spec.description.split("mirror of ")[1].startswith("llava-hf/")
