"""Idefics3 / SmolVLM: the tiny-random-smolvlm mirror, a checkpoint directory laid out like
HuggingFaceTB/SmolVLM-Instruct, the tile layout (image tokens = sum of cells, tile markers left
out), boxes and pixel cells recomputed here from the processor's rules, the pixel shuffle checked
against the model's own connector, and batches of images with different numbers of tiles."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from xbench.api import ATTENTIONS
from xbench.errors import ModelLoadError
from xbench.zoo.idefics3 import TILE_MARKERS, SmolVLMShape, build_tiny_smolvlm
from _images import picture, samples_of

#: what SmolVLM-Instruct's chat template renders for one user turn (image, then text) with the
#: generation prompt
PUBLIC_PROMPT = "<|im_start|>User:<image>{prompt}<end_of_utterance>\nAssistant:"
#: the public repository's files, but vocab.json / merges.txt (a byte-level BPE's; ours is word-level)
PUBLIC_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "preprocessor_config.json", "processor_config.json", "chat_template.json"}  # fmt: skip
SHAPE = SmolVLMShape()


def load(name_or_dir, plugins):
    from xbench.models import load_vlm

    return load_vlm(str(name_or_dir), plugins.registries, needs=frozenset({ATTENTIONS}), device="cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A directory written like the public checkpoint (the zoo's builder, outside the zoo cache)."""
    path = tmp_path_factory.mktemp("smolvlm") / "SmolVLM-Instruct-tiny"
    build_tiny_smolvlm(path, seed=0)
    return path


@pytest.fixture(scope="module")
def smolvlm(plugins):
    return load("tiny-random-smolvlm", plugins)




def expected_split(height: int, width: int, tile: int = SHAPE.tile, longest: int = SHAPE.tile * 4) -> tuple[int, int]:
    """Rows and columns of tiles by the processor's rules: longest edge to ``longest`` (the other
    even), then each side up to a multiple of ``tile``; one tile is the global image alone."""
    if width >= height:
        w, h = longest, int(longest * height / width)
        h += h % 2
    else:
        h, w = longest, int(longest * width / height)
        w += w % 2
    rows, cols = math.ceil(h / tile), math.ceil(w / tile)
    return (0, 0) if rows * cols == 1 else (rows, cols)


def expected_boxes(height: int, width: int) -> np.ndarray:
    """Each cell's box on the original image: a tile shows its share of the stretched image and a
    cell ``patch * scale`` of the tile's ``tile`` pixels (the last ``tile % patch`` pixels feed no
    patch); the global image shows the whole image."""
    rows, cols = expected_split(height, width)
    g, px = (SHAPE.tile // SHAPE.patch) // SHAPE.scale_factor, SHAPE.patch * SHAPE.scale_factor
    regions = [(r * height / rows, c * width / cols, height / rows, width / cols) for r in range(rows) for c in range(cols)]
    boxes = []
    for top, left, h, w in regions + [(0.0, 0.0, float(height), float(width))]:
        for i in range(g):
            for j in range(g):
                boxes.append([top + i * px * h / SHAPE.tile, left + j * px * w / SHAPE.tile,
                              top + (i + 1) * px * h / SHAPE.tile, left + (j + 1) * px * w / SHAPE.tile])  # fmt: skip
    return np.array(boxes)


# ---------------------------------------------------------------------------- the checkpoint
def test_the_checkpoint_is_laid_out_like_the_public_one(checkpoint):
    assert {p.name for p in checkpoint.iterdir()} == PUBLIC_FILES
    config = json.loads((checkpoint / "config.json").read_text())
    vision, text = config["vision_config"], config["text_config"]
    assert config["architectures"] == ["Idefics3ForConditionalGeneration"] and config["model_type"] == "idefics3"
    assert vision["model_type"] == "idefics3_vision" and vision["hidden_act"] == "gelu_pytorch_tanh"
    assert text["model_type"] == "llama" and config["tie_word_embeddings"] is False and text["tie_word_embeddings"] is False
    assert config["scale_factor"] == 3 and vision["image_size"] % vision["patch_size"] != 0  # like 384 / 14
    pre = json.loads((checkpoint / "preprocessor_config.json").read_text())
    assert (pre["image_processor_type"], pre["processor_class"]) == ("Idefics3ImageProcessor", "Idefics3Processor")
    assert pre["do_image_splitting"] is True and pre["do_pad"] is True and pre["resample"] == 1  # LANCZOS
    assert pre["max_image_size"] == {"longest_edge": vision["image_size"]}
    assert pre["size"] == {"longest_edge": 4 * vision["image_size"]}
    assert pre["image_mean"] == pre["image_std"] == [0.5, 0.5, 0.5] and pre["rescale_factor"] == pytest.approx(1 / 255)
    proc = json.loads((checkpoint / "processor_config.json").read_text())
    side = vision["image_size"] // vision["patch_size"]
    assert proc == {"image_seq_len": side**2 // config["scale_factor"] ** 2, "processor_class": "Idefics3Processor"}
    tokens = {t["content"]: t for t in json.loads((checkpoint / "tokenizer.json").read_text())["added_tokens"]}
    named = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<|im_start|>", "<|im_end|>")
    for name in named + TILE_MARKERS:
        assert tokens[name]["special"] and not tokens[name]["normalized"], name
    assert config["image_token_id"] == tokens["<image>"]["id"]
    tok_cfg = json.loads((checkpoint / "tokenizer_config.json").read_text())
    roles = (tok_cfg["eos_token"], tok_cfg["bos_token"], tok_cfg["pad_token"])
    assert roles == ("<end_of_utterance>", "<|im_start|>", "<|im_end|>")
    assert json.loads((checkpoint / "generation_config.json").read_text())["eos_token_id"] == tokens["<end_of_utterance>"]["id"]


def test_the_mirror_is_built_deterministically(checkpoint, plugins, tmp_path):
    build_tiny_smolvlm(tmp_path / "again", seed=0)
    for name in PUBLIC_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (checkpoint / name).read_bytes(), name


def test_the_chat_template_renders_the_public_prompt(smolvlm):
    assert smolvlm.render_prompt("What color is the shape?") == PUBLIC_PROMPT.format(prompt="What color is the shape?")
    assert smolvlm.prompt_format == PUBLIC_PROMPT


def test_the_directory_runs_with_only_model_dir(checkpoint, tmp_path):
    from xbench.cli import main
    from xbench.records import read_records

    out = tmp_path / "run"
    assert main(["run", "--method", "gradient_relevancy", "--model", str(checkpoint), "--limit", "2", "--out", str(out),
                 "--no-progress", "--warmup", "0"]) == 0  # fmt: skip
    records = list(read_records(out / "samples.jsonl"))
    assert len(records) == 2 and all(r.get("error") is None for r in records)
    model = json.loads((out / "summary.json").read_text())["model"]
    assert (model["family"], model["prompt_format"]) == ("idefics3", PUBLIC_PROMPT)


@pytest.mark.parametrize(
    "file, change, error",
    [
        ("processor_config.json", {"image_seq_len": 81}, "image_seq_len 81"),
        ("preprocessor_config.json", {"max_image_size": {"longest_edge": 42}}, "tiles of 42 px"),
        ("preprocessor_config.json", {"do_pad": False}, "do_pad false"),
    ],
)
def test_a_processor_disagreeing_with_the_tower_is_refused_at_load(checkpoint, plugins, tmp_path, file, change, error):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    settings = json.loads((broken / file).read_text())
    (broken / file).write_text(json.dumps({**settings, **change}))
    with pytest.raises(ModelLoadError, match=error):
        load(broken, plugins)


# ---------------------------------------------------------------------------- the layout
@pytest.mark.parametrize("size", [(64, 64), (40, 100), (150, 60), (30, 400)])
def test_the_layout_is_one_grid_per_tile_then_the_global_image(smolvlm, size):
    (gen,) = smolvlm.generate(samples_of(size), ["what shape is in the image?"], 1)
    rows, cols = expected_split(*size)
    n = rows * cols + 1
    g = (SHAPE.tile // SHAPE.patch) // SHAPE.scale_factor
    assert gen.layout.grids == ((g, g),) * n and gen.pixel_values.shape == (1, n, 3, SHAPE.tile, SHAPE.tile)
    assert gen.grid == ((n * g * g,) if n > 1 else (g, g))
    tokens = smolvlm.tokenizer.convert_ids_to_tokens(gen.prompt_ids)
    image = [k for k, t in enumerate(tokens) if t == "<image>"]
    assert gen.image_positions == image and len(image) == gen.layout.n_cells == n * g * g
    markers = [t for t in tokens if t.startswith("<row_")]
    assert markers == [f"<row_{r}_col_{c}>" for r in range(1, rows + 1) for c in range(1, cols + 1)]
    left_out = {k for k, t in enumerate(tokens) if t in ("<fake_token_around_image>", "<global-img>") or t.startswith("<row_")}
    assert tokens.count("<fake_token_around_image>") == n + 1 and not left_out & set(gen.image_positions)
    np.testing.assert_allclose(gen.layout.boxes, expected_boxes(*size), rtol=0, atol=1e-4)


def test_pixel_cells_follow_the_tiles(smolvlm):
    (gen,) = smolvlm.generate(samples_of((40, 100)), ["what shape is in the image?"], 1)
    cells = smolvlm.pixel_cells(gen)
    n, S, px, g = gen.pixel_values.shape[1], SHAPE.tile, SHAPE.patch * SHAPE.scale_factor, 3
    assert cells.shape == (1, n, 1, S, S)
    read = (S // SHAPE.patch) * SHAPE.patch  # 36 of 38 px: the rest feeds no patch
    assert (cells[..., read:, :] == -1).all() and (cells[..., :, read:] == -1).all()
    for t in range(n):
        for i in range(g):
            for j in range(g):
                block = cells[0, t, 0, i * px : (i + 1) * px, j * px : (j + 1) * px]
                assert (block == t * g * g + i * g + j).all()
    per_cell = torch.bincount(cells[cells >= 0], minlength=gen.layout.n_cells)
    assert (per_cell == px * px).all()


def test_a_mask_over_one_tile_covers_that_tile_and_its_share_of_the_global_image(smolvlm):
    (gen,) = smolvlm.generate(samples_of((64, 64)), ["what shape is in the image?"], 1)
    mask = np.zeros((64, 64), bool)
    mask[16:32, 48:64] = True  # tile (1, 3) of the 4x4 split
    cover = smolvlm.mask_to_grid(mask, gen).reshape(17, 3, 3)
    tile = 1 * 4 + 3
    np.testing.assert_allclose(cover[tile], 1.0, atol=1e-6)
    assert np.all(np.delete(cover[:16], tile, axis=0) == 0)
    global_boxes = gen.layout.boxes[16 * 9 :]
    inter = np.clip(np.minimum(global_boxes[:, 2], 32) - np.maximum(global_boxes[:, 0], 16), 0, None) * np.clip(
        np.minimum(global_boxes[:, 3], 64) - np.maximum(global_boxes[:, 1], 48), 0, None
    )
    area = (global_boxes[:, 2] - global_boxes[:, 0]) * (global_boxes[:, 3] - global_boxes[:, 1])
    np.testing.assert_allclose(cover[16].reshape(-1), inter / area, atol=1e-4)


def test_padding_feeds_no_cell_and_its_cells_are_clipped():
    """The processor pads a batch's tiles bottom/right (pixel_attention_mask 0): those pixels feed
    no cell and a cell over padding covers only the tile's real pixels."""
    from xbench.models import idefics3_layout as lay

    geo = lay.TileGeometry(patch=4, scale=3, tile=38)
    mask = torch.zeros(2, 38, 38, dtype=torch.long)
    mask[0] = 1
    mask[1, :30, :] = 1  # rows 30.. are padding: cell row 2 (px 24..36) is half real
    split = lay.SplitLayout(1, 1, lay.content_sizes(mask))
    assert split.content == ((38, 38), (30, 38))
    boxes = lay.cell_boxes(geo, split, (60, 90)).reshape(2, 3, 3, 4)
    # the tile shows rows 0..60 of the image through its 30 real pixel rows: 2 px of image per tile px
    np.testing.assert_allclose(boxes[1, :, 0, [0, 2]].T, [[0, 24], [24, 48], [48, 60]], atol=1e-5)
    cells = lay.pixel_cells(geo, mask)
    assert (cells[0, 1, 0, 30:] == -1).all() and (cells[0, 1, 0, 24:30, :36] >= 0).all()
    patches = lay.patch_cells(geo, mask).reshape(2, 9, 9)
    assert (patches[1, 8] == -1).all() and (patches[1, 7] >= 0).all()  # patch rows 28..32 hold real pixels


def test_without_splitting_the_global_image_is_one_grid(checkpoint, plugins, tmp_path):
    whole = tmp_path / "no-split"
    shutil.copytree(checkpoint, whole)
    pre = json.loads((whole / "preprocessor_config.json").read_text())
    (whole / "preprocessor_config.json").write_text(json.dumps({**pre, "do_image_splitting": False}))
    vlm = load(whole, plugins)
    (gen,) = vlm.generate(samples_of((40, 100)), ["what shape is in the image?"], 1)
    assert gen.layout.grids == ((3, 3),) and gen.grid == (3, 3) and gen.pixel_values.shape[1] == 1
    px = SHAPE.patch * SHAPE.scale_factor / SHAPE.tile  # the global image squashes the whole image to one tile
    np.testing.assert_allclose(gen.layout.boxes[4], [40 * px, 100 * px, 80 * px, 200 * px], atol=1e-4)


# ---------------------------------------------------------------------------- the vision tower
def test_vision_tokens_are_the_patches_the_connector_shuffles_together(smolvlm):
    (gen,) = smolvlm.generate(samples_of((40, 100)), ["what shape is in the image?"], 1)
    n, P = gen.pixel_values.shape[1], (SHAPE.tile // SHAPE.patch) ** 2
    d = smolvlm.model.config.vision_config.hidden_size
    tagged = torch.zeros(n, P, d)
    tagged[..., 0] = torch.arange(n * P, dtype=torch.float32).reshape(n, P)  # each patch carries its index
    shuffled = smolvlm.model.model.connector.pixel_shuffle(tagged, SHAPE.scale_factor)
    members = shuffled.reshape(n * shuffled.shape[1], SHAPE.scale_factor**2, d)[..., 0].long()
    assert members.tolist() == smolvlm.vision_token_positions(gen)
    cells = smolvlm.patch_cells(gen)
    for c, patches in enumerate(members.tolist()):
        assert (cells[patches] == c).all()
    assert torch.bincount(cells, minlength=gen.layout.n_cells).tolist() == [SHAPE.scale_factor**2] * gen.layout.n_cells


def test_re_forwards_match_transformers_and_survive_zero_tiles(smolvlm):
    """The adapter's own tower path gives transformers' logits; a tile a perturbation filled with
    zeros (which transformers would drop as batch padding) still feeds its image tokens."""
    (gen,) = smolvlm.generate(samples_of((40, 100)), ["what shape is in the image?"], 2)
    ids = smolvlm.input_ids(gen)
    with torch.no_grad():
        ours = smolvlm.forward(gen).logits
        theirs = smolvlm.model(input_ids=ids, pixel_values=gen.pixel_values,
                               pixel_attention_mask=gen.image_inputs["pixel_attention_mask"], use_cache=False).logits  # fmt: skip
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert ours[0, gen.query_positions].argmax(-1).tolist() == gen.answer_ids  # teacher forcing = greedy
        keep = torch.ones(2, gen.layout.n_cells)
        keep[1, :9] = 0  # copy 1: the first tile wholly zero where it feeds cells
        pv = smolvlm.perturb(gen, keep, 0.0)
        pv[1, 0] = 0.0  # and its unread edge too
        both = smolvlm.forward(gen, pixel_values=pv).logits
    torch.testing.assert_close(both[0], ours[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(both[1]).all() and not torch.allclose(both[1], ours[0])


def test_batches_of_images_with_different_tile_counts_equal_one_at_a_time(smolvlm):
    samples = samples_of((64, 64), (40, 100), (30, 30), (150, 60))
    prompts = [s.question for s in samples]
    batch = smolvlm.generate(samples, prompts, 3, keep=frozenset({"hidden_states"}))
    assert [len(g.layout.grids) for g in batch] == [math.prod(expected_split(*s.image.size[::-1])) + 1 for s in samples]
    assert len({len(g.layout.grids) for g in batch}) == 2
    for sample, prompt, b in zip(samples, prompts, batch):
        (one,) = smolvlm.generate([sample], [prompt], 3, keep=frozenset({"hidden_states"}))
        assert (b.prompt_ids, b.answer_ids, b.image_positions) == (one.prompt_ids, one.answer_ids, one.image_positions)
        assert b.layout == one.layout
        torch.testing.assert_close(b.pixel_values, one.pixel_values)
        torch.testing.assert_close(b.image_inputs["pixel_attention_mask"], one.image_inputs["pixel_attention_mask"])
        torch.testing.assert_close(b.hidden_states, one.hidden_states, rtol=1e-4, atol=1e-5)


def test_gradient_relevancy_follows_the_image_tokens_into_the_tower(smolvlm):
    """scope=all: relevance seeds the patches each image token shuffles together and propagates
    within each tile's attention (one crop per tile), then is read back per cell."""
    from xbench.methods.gradient_relevancy import answer_relevancy

    (gen,) = smolvlm.generate(samples_of((40, 100)), ["what shape is in the image?"], 2)
    with torch.no_grad():
        out = smolvlm.forward(gen, output_attentions=True)
    n = gen.pixel_values.shape[1]
    assert len(out.vision_attentions) == smolvlm.vision_layers_read() == 2
    assert out.vision_attentions[0].shape[0] == n and out.vision_attentions[0].shape[-1] == (SHAPE.tile // SHAPE.patch) ** 2
    deep = answer_relevancy(smolvlm, gen, scope="all")
    shallow = answer_relevancy(smolvlm, gen, scope="llm")
    assert deep.shape == shallow.shape == (len(gen.answer_ids), gen.layout.n_cells)
    assert np.isfinite(deep).all() and not np.allclose(deep, shallow)


def test_the_public_sizes_give_the_public_token_count(checkpoint, plugins, tmp_path):
    """The mirror's files with SmolVLM-Instruct's sizes put back (tower 384 px / patch 14, tiles of
    384, longest edge 1536, image_seq_len 81) give the 1,377 image tokens (17 tiles x 81) the public
    processor gives a 64x64 image (ANCHORS.md), through the family's own loading."""
    from xbench.models.idefics3 import Idefics3Adapter

    full = tmp_path / "full"
    full.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json"):
        shutil.copy(checkpoint / name, full / name)
    pre = json.loads((checkpoint / "preprocessor_config.json").read_text())
    pre.update(size={"longest_edge": 1536}, max_image_size={"longest_edge": 384})
    (full / "preprocessor_config.json").write_text(json.dumps(pre))
    (full / "processor_config.json").write_text(json.dumps({"image_seq_len": 81, "processor_class": "Idefics3Processor"}))
    processor = Idefics3Adapter.load_processor(full)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is it?"}]}],
        add_generation_prompt=True, tokenize=False)  # fmt: skip
    ids = processor(images=[picture(64, 64, 0)], text=[text], return_tensors="pt")["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == 1377 == 17 * (384 // 14) ** 2 // 9
