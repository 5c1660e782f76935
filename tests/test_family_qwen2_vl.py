"""Qwen2-VL / Qwen2.5-VL: the zoo mirrors, checkpoint directories laid out like the public ones,
per-image grids, the patch order, M-RoPE re-forwards under left padding, and gradient relevancy
against a plain implementation that drives the transformers model directly."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from xbench.api import ATTENTIONS, Sample
from xbench.errors import ParameterError
from xbench.zoo.qwen2_vl import DEFAULT_SYSTEM, MIRRORS, QWEN2_VL, build_mirror
from _images import samples_of

#: what the public Instruct checkpoints' templates render for one user turn (image + text), with
#: the generation prompt: ChatML with the default system turn
PUBLIC_PROMPT = (
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
#: the public repositories' files, but vocab.json / merges.txt (a byte-level BPE's; ours is word-level)
PUBLIC_FILES = {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                "tokenizer_config.json", "preprocessor_config.json", "chat_template.json"}  # fmt: skip


def load(name_or_dir, plugins):
    from xbench.models import load_vlm

    return load_vlm(str(name_or_dir), plugins.registries, needs=frozenset({ATTENTIONS}), device="cpu")


@pytest.fixture(scope="module")
def qwen2(plugins):
    return load(QWEN2_VL.name, plugins)


@pytest.fixture(scope="module", params=[m.name for m in MIRRORS])
def mirror_vlm(request, plugins):
    return load(request.param, plugins)




def expected_grid(height: int, width: int) -> tuple[int, int]:
    """Merged cells of a 14-px, merge-2 processor for an image inside its pixel range (no rescale)."""
    return round(height / 28), round(width / 28)


# ---------------------------------------------------------------------------- the zoo mirrors
@pytest.mark.parametrize("mirror", MIRRORS, ids=lambda m: m.name)
def test_mirror_config_follows_the_public_checkpoint(mirror, plugins):
    path = plugins.registries.models.get(mirror.name).locate()
    config = json.loads((path / "config.json").read_text())
    tok = json.loads((path / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    vision = config["vision_config"]
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (14, 2, 2)
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert sum(config["rope_scaling"]["mrope_section"]) == head_dim // 2
    assert config["rope_scaling"]["mrope_section"] == [head_dim * s // 128 for s in (16, 24, 24)]
    assert config["tie_word_embeddings"] is True and config["rope_theta"] == 1e6
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
                       ("eos_token_id", "<|im_end|>"), ("bos_token_id", "<|endoftext|>")):  # fmt: skip
        assert config[key] == ids[token], key
    if mirror.model_type == "qwen2_5_vl":
        assert vision["window_size"] == 112 and vision["fullatt_block_indexes"] == [1, 3]
    pre = json.loads((path / "preprocessor_config.json").read_text())
    assert (pre["patch_size"], pre["merge_size"], pre["temporal_patch_size"]) == (14, 2, 2)
    assert pre["min_pixels"] == 56 * 56 and pre["max_pixels"] == 28 * 28 * 64
    assert pre["image_std"] == [0.26862954, 0.26130258, 0.27577711]
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]


def test_mirror_builds_are_deterministic(tmp_path):
    def digest(d):
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}

    build_mirror(QWEN2_VL, tmp_path / "a")
    build_mirror(QWEN2_VL, tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_prompt_is_the_public_templates_rendering(mirror_vlm):
    assert mirror_vlm.prompt_format == PUBLIC_PROMPT
    # image-only processor: transformers' video processors need torchvision, which is not required
    assert getattr(mirror_vlm.processor, "video_processor", None) is None


def test_decoding_is_greedy_whatever_the_checkpoint_suggests(mirror_vlm):
    """The public generation configs sample (Qwen2.5-VL with a 1.05 repetition penalty); xbench's
    answers are greedy, with the checkpoint's end tokens."""
    on_disk = json.loads((mirror_vlm.path / "generation_config.json").read_text())
    assert on_disk["do_sample"] is True
    used = mirror_vlm.model.generation_config
    assert not used.do_sample and used.repetition_penalty in (None, 1.0) and used.num_beams in (None, 1)
    assert mirror_vlm.eos_ids == set(on_disk["eos_token_id"])


# ---------------------------------------------------------------------------- a public-style directory
@pytest.mark.parametrize("template_file", ["chat_template.json", "chat_template.jinja"])
@pytest.mark.parametrize("mirror", MIRRORS, ids=lambda m: m.name)
def test_a_public_style_directory_runs_with_only_model_dir(tmp_path, mirror, template_file):
    from xbench.cli import main
    from xbench.records import read_records

    ckpt = tmp_path / "ckpt"
    build_mirror(mirror, ckpt, max_shard_size="200KB")  # sharded, with model.safetensors.index.json
    if template_file == "chat_template.jinja":  # the layout newer saves use
        template = json.loads((ckpt / "chat_template.json").read_text())["chat_template"]
        (ckpt / "chat_template.jinja").write_text(template)
        (ckpt / "chat_template.json").unlink()
    files = {f.name for f in ckpt.iterdir()}
    assert PUBLIC_FILES - {"chat_template.json"} <= files and template_file in files
    assert len([f for f in files if f.endswith(".safetensors")]) > 1
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == mirror.model_type
    out = tmp_path / "run"
    code = main(["run", "--method", "gradient_relevancy", "--model", str(ckpt), "--limit", "2", "--out", str(out),
                 "--no-progress", "--warmup", "0"])  # fmt: skip
    assert code == 0
    records = list(read_records(out / "samples.jsonl"))
    assert len(records) == 2 and all(r.get("error") is None for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["prompt_format"] == PUBLIC_PROMPT


def test_a_directory_without_any_chat_template_is_refused(tmp_path, plugins):
    from xbench.errors import ModelLoadError

    build_mirror(QWEN2_VL, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "chat_template.json").unlink()
    with pytest.raises(ModelLoadError, match="no chat template"):
        load(tmp_path / "ckpt", plugins)


# ---------------------------------------------------------------------------- per-image grids
SIZES = ((64, 64), (64, 160), (150, 90))


@pytest.fixture(scope="module")
def mixed(mirror_vlm):
    """Three images of different aspect ratios generated in one left-padded batch, and alone."""
    samples = samples_of(*SIZES)
    prompts = [s.question for s in samples]
    keep = frozenset({"hidden_states"})
    batch = mirror_vlm.generate(samples, prompts, 3, keep=keep)
    alone = [mirror_vlm.generate([s], [p], 3, keep=keep)[0] for s, p in zip(samples, prompts)]
    return mirror_vlm, samples, batch, alone


def test_each_image_gets_its_own_grid_and_boxes(mixed):
    vlm, samples, batch, _ = mixed
    grids = [g.grid for g in batch]
    assert grids == [expected_grid(h, w) for h, w in SIZES] and len(set(grids)) == len(SIZES)
    for gen, (H, W) in zip(batch, SIZES):
        gh, gw = gen.grid
        assert gen.layout.image_size == (H, W) and gen.pixel_values.shape == (1, gh * gw * 4, 3 * 2 * 14 * 14)
        assert gen.image_inputs["image_grid_thw"].tolist() == [[1, 2 * gh, 2 * gw]]
        rows, cols = np.divmod(np.arange(gh * gw), gw)
        want = np.stack([rows * H / gh, cols * W / gw, (rows + 1) * H / gh, (cols + 1) * W / gw], axis=1)
        np.testing.assert_allclose(gen.layout.boxes, want, atol=1e-9)
        p = gen.image_positions
        assert p == list(range(p[0], p[0] + gh * gw))


def test_a_batch_gives_what_each_sample_gives_alone(mixed):
    _, _, batch, alone = mixed
    for b, a in zip(batch, alone):
        assert (b.prompt_ids, b.answer_ids, b.layout) == (a.prompt_ids, a.answer_ids, a.layout)
        torch.testing.assert_close(b.pixel_values, a.pixel_values)
        torch.testing.assert_close(b.hidden_states, a.hidden_states, atol=1e-5, rtol=1e-4)


def test_re_forwards_see_the_positions_generation_saw(mixed):
    """M-RoPE under left padding: teacher-forced hidden states equal those kept while generating a
    padded batch, and the re-forward's greedy choice is every generated token."""
    vlm, _, batch, _ = mixed
    assert len({len(g.prompt_ids) for g in batch}) == len(batch)  # the batch really was padded
    for gen in batch:
        torch.testing.assert_close(vlm.last_hidden_states(gen), gen.hidden_states, atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            logits = vlm.forward(gen).logits[0]
        assert logits[gen.query_positions].argmax(-1).tolist() == gen.answer_ids


def test_pixel_cells_follow_the_processors_patch_order(qwen2):
    """An image whose 28-px merge windows each have their own grey level (its size needs no resize):
    every patch row ``pixel_cells`` assigns to cell ``c`` shows window ``c``'s grey, and cell ``c``'s box
    is that window (the processor groups each 2x2 window's rows together, windows row-major)."""
    gh, gw = 2, 5
    levels = (np.arange(gh * gw) * 20 + 30).reshape(gh, gw).astype(np.uint8)
    image = Image.fromarray(np.repeat(np.repeat(levels, 28, axis=0), 28, axis=1)).convert("RGB")
    sample = Sample(id="windows", question="what color is the shape?", answers=["gray"], image=image)
    gen = qwen2.generate([sample], [sample.question], 1)[0]
    assert gen.grid == (gh, gw)
    mean, std = qwen2.processor.image_processor.image_mean[0], qwen2.image_std[0]
    red = gen.pixel_values[0, :, : 2 * 14 * 14] * std + mean  # channel 0 of each row, both frames
    cells = qwen2.pixel_cells(gen)[0, :, 0]
    for r in range(red.shape[0]):
        np.testing.assert_allclose(red[r].numpy() * 255, levels.flat[int(cells[r])], atol=1.0)
    for c, (top, left, bottom, right) in enumerate(gen.layout.boxes):
        i, j = divmod(c, gw)
        assert (top, left, bottom, right) == (28 * i, 28 * j, 28 * i + 28, 28 * j + 28)


def test_forward_runs_b_copies(mixed):
    vlm, _, batch, _ = mixed
    gen = batch[2]
    with torch.no_grad():
        one = vlm.forward(gen).logits
        three = vlm.forward(gen, pixel_values=gen.pixel_values.expand(3, -1, -1)).logits
    assert three.shape[0] == 3
    for b in range(3):
        torch.testing.assert_close(three[b : b + 1], one, atol=1e-5, rtol=1e-4)


def test_mean_fill_is_the_per_channel_mean(qwen2):
    gen = qwen2.generate(samples_of((64, 160)), ["what color is the shape?"], 1)[0]
    fill = qwen2.fill_value(gen, "mean")
    rows = gen.pixel_values[0].reshape(gen.pixel_values.shape[1], 3, -1)
    means = [rows[:, c].mean() for c in range(3)]
    want = torch.stack(means).repeat_interleave(2 * 14 * 14)[None, None]
    torch.testing.assert_close(fill, want)


def test_patch_features_are_the_conv3d_output_per_patch(qwen2):
    gen = qwen2.generate(samples_of((64, 160)), ["what color is the shape?"], 1)[0]
    module, view = qwen2.patch_features()
    rows = gen.pixel_values[0]
    weight = module.proj.weight  # [D, C, T, p, p]: each row is one (C, T, p, p) patch
    want = rows @ weight.reshape(weight.shape[0], -1).T  # [L, D]
    with torch.no_grad():
        got = view(module(rows), gen)
    torch.testing.assert_close(got, want.T, atol=1e-5, rtol=1e-4)
    assert qwen2.patch_cells(gen).tolist() == [r // 4 for r in range(rows.shape[0])]


def test_vision_token_positions_follow_the_tower_order(mirror_vlm):
    """Each image token is the 4 tower tokens merged into it; Qwen2.5-VL's tower visits the merged
    groups window by window (112-px windows: 4x4 groups, row-major, the last row of windows partial)."""
    gen = mirror_vlm.generate(samples_of((140, 336)), ["what color is the shape?"], 1)[0]
    members = mirror_vlm.vision_token_positions(gen)
    gh, gw = gen.grid
    assert (gh, gw) == (5, 12) and all(len(m) == 4 and m == list(range(m[0], m[0] + 4)) for m in members)
    slots = [m[0] // 4 for m in members]
    assert sorted(slots) == list(range(gh * gw))
    if mirror_vlm.family == "qwen2_vl":
        assert slots == list(range(gh * gw))
    else:
        at = {(r, c): slots[r * gw + c] for r in range(gh) for c in range(gw)}
        assert (at[0, 0], at[0, 3], at[1, 0], at[0, 4], at[3, 11]) == (0, 3, 4, 16, 47)
        assert (at[4, 0], at[4, 5], at[4, 11]) == (48, 53, 59)


# ---------------------------------------------------------------------------- gradient relevancy
def plain_relevancy(vlm, gen) -> np.ndarray:
    """Chefer et al.'s relevancy the long way, on the transformers model itself: the flat patch rows
    and grid as the processor made them, positions left to the model, full ``T x T`` products."""
    model = vlm.model
    ids = torch.tensor([gen.prompt_ids + gen.answer_ids])
    thw = gen.image_inputs["image_grid_thw"]
    with torch.enable_grad():
        pixels = gen.pixel_values[0].detach().clone().requires_grad_(True)
        out = model(input_ids=ids, pixel_values=pixels, image_grid_thw=thw, mm_token_type_ids=(ids == vlm.image_token_id).int(),
                    output_attentions=True, use_cache=False)  # fmt: skip
        atts = list(out.attentions)
        T = ids.shape[1]
        maps = []
        for k, tok in enumerate(gen.answer_ids):
            q = len(gen.prompt_ids) - 1 + k
            grads = torch.autograd.grad(out.logits[0, q, tok], atts, retain_graph=True)
            R = torch.eye(T)
            for a, g in zip(atts, grads):
                R = R + (g[0] * a[0]).clamp(min=0).mean(dim=0) @ R
            maps.append(R[q, gen.image_positions].reshape(gen.grid).detach().numpy())
    return np.stack(maps)


def test_gradient_relevancy_equals_a_plain_implementation(qwen2):
    from xbench.methods.gradient_relevancy import answer_relevancy

    for gen in qwen2.generate(samples_of((64, 160), (120, 64)), ["what color is the shape?"] * 2, 3):
        assert len(gen.answer_ids) > 1 and gen.grid[0] != gen.grid[1]
        got = answer_relevancy(qwen2, gen)
        want = plain_relevancy(qwen2, gen)
        assert got.shape == want.shape == (len(gen.answer_ids), *gen.grid)
        assert np.abs(want).max() > 0
        assert np.abs(got - want).max() <= 1e-5


def test_scope_all_is_refused_at_check(mirror_vlm, plugins):
    method = plugins.registries.methods.get("gradient_relevancy")(scope="all")
    with pytest.raises(ParameterError, match="attention weights"):
        method.check(mirror_vlm)
    with torch.no_grad():
        gen = mirror_vlm.generate(samples_of((64, 64)), ["what color is the shape?"], 1)[0]
        assert mirror_vlm.forward(gen, output_attentions=True).vision_attentions is None


def test_expected_grid_is_the_processors_resize():
    """The sizes used stay inside the processor's pixel range, where its resize only rounds."""
    for h, w in SIZES + ((140, 336),):
        gh, gw = expected_grid(h, w)
        assert 56 * 56 <= (28 * gh) * (28 * gw) <= 28 * 28 * 64
