"""PaliGemma and Gemma 3: the zoo mirrors, checkpoints laid out as published, prompts, layouts and masks.

Independent computations written here: the published prompt formats as literal strings, PaliGemma's
own processor path (the tokens it builds from ``<image>`` + text), the cell boxes and pixel cells of
a resize-without-crop grid, Gemma 3's 4x4 average pooling recomputed from the tower's output, and the
attention masks the two families document (prefix-LM; bidirectional image block) read off the
eager attention weights.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from xbench.api import ATTENTIONS, Sample
from xbench.errors import ModelLoadError
from xbench.models import load_vlm, model_hash

PALIGEMMA, GEMMA3 = "tiny-random-paligemma", "tiny-random-gemma3"
QUESTION = "What color is the shape?"


@pytest.fixture(scope="module")
def zoo_dirs(plugins):
    return {name: plugins.registries.models.get(name).locate() for name in (PALIGEMMA, GEMMA3)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The two mirrors written as the hub lays the checkpoints out, weights sharded behind an index."""
    from xbench.zoo.gemma import build_tiny_gemma3, build_tiny_paligemma

    root = tmp_path_factory.mktemp("ckpt")
    build_tiny_paligemma(root / PALIGEMMA, max_shard_size="150KB")
    build_tiny_gemma3(root / GEMMA3, max_shard_size="150KB")
    return {PALIGEMMA: root / PALIGEMMA, GEMMA3: root / GEMMA3}


@pytest.fixture(scope="module")
def vlms(plugins, checkpoints):
    return {name: load_vlm(str(path), plugins.registries, needs=frozenset({ATTENTIONS}), device="cpu")
            for name, path in checkpoints.items()}


def image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def sample(i: int, h: int = 64, w: int = 64, question: str = QUESTION) -> Sample:
    return Sample(id=f"s{i}", question=question, answers=["red"], image=image(h, w, i))


# ---------------------------------------------------------------------------------------- files and config
def test_checkpoints_are_laid_out_as_published(checkpoints):
    pg = {f.name for f in checkpoints[PALIGEMMA].iterdir()}
    g3 = {f.name for f in checkpoints[GEMMA3].iterdir()}
    common = {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
              "tokenizer_config.json", "preprocessor_config.json", "processor_config.json"}
    assert common <= pg and common <= g3
    assert any(n.startswith("model-00002-of-") for n in pg) and any(n.startswith("model-00002-of-") for n in g3)
    assert "chat_template.json" not in pg and "chat_template.jinja" not in pg  # PaliGemma has none
    assert "chat_template.json" in g3
    assert json.loads((checkpoints[GEMMA3] / "processor_config.json").read_text()) == {
        "image_seq_length": 16, "processor_class": "Gemma3Processor"}


def test_paligemma_config_mirrors_the_public_fields(zoo_dirs):
    d = zoo_dirs[PALIGEMMA]
    cfg = json.loads((d / "config.json").read_text())
    pre = json.loads((d / "preprocessor_config.json").read_text())
    vocab = json.loads((d / "tokenizer.json").read_text())["model"]["vocab"]
    added = {t["content"]: t["id"] for t in json.loads((d / "tokenizer.json").read_text())["added_tokens"]}
    v, t = cfg["vision_config"], cfg["text_config"]
    assert cfg["model_type"] == "paligemma" and v["model_type"] == "siglip_vision_model" and t["model_type"] == "gemma"
    assert v["vision_use_head"] is False and cfg["projection_dim"] == t["hidden_size"] == v["projection_dim"]
    side = v["image_size"] // v["patch_size"]
    assert t["num_image_tokens"] == side * side == pre["image_seq_length"] == 64
    assert cfg["image_token_index"] == added["<image>"] and cfg["tie_word_embeddings"] is True
    assert t["num_key_value_heads"] == 1 and t["hidden_activation"] == "gelu_pytorch_tanh"
    assert {"<loc0000>", "<loc1023>", "<seg127>", "<bos>", "<eos>", "<pad>", "\n"} <= set(added) | set(vocab)
    assert cfg["vocab_size"] == t["vocab_size"] >= max(added.values()) + 1
    assert pre["size"] == {"height": v["image_size"], "width": v["image_size"]} and pre["resample"] == 3
    assert pre["image_mean"] == pre["image_std"] == [0.5, 0.5, 0.5] and "crop_size" not in pre


def test_gemma3_config_mirrors_the_public_fields(zoo_dirs):
    d = zoo_dirs[GEMMA3]
    cfg = json.loads((d / "config.json").read_text())
    pre = json.loads((d / "preprocessor_config.json").read_text())
    proc = json.loads((d / "processor_config.json").read_text())
    gen = json.loads((d / "generation_config.json").read_text())
    added = {t["content"]: t["id"] for t in json.loads((d / "tokenizer.json").read_text())["added_tokens"]}
    v, t = cfg["vision_config"], cfg["text_config"]
    patches = v["image_size"] // v["patch_size"]
    assert patches == 16 and cfg["mm_tokens_per_image"] == (patches // 4) ** 2 == proc["image_seq_length"] == 16
    assert pre["image_seq_length"] == 16
    assert cfg["boi_token_index"] == added["<start_of_image>"] and cfg["eoi_token_index"] == added["<end_of_image>"]
    assert cfg["image_token_index"] == added["<image_soft_token>"] and cfg["tie_word_embeddings"] is True
    assert sorted(cfg["eos_token_id"]) == sorted(gen["eos_token_id"]) == sorted([added["<eos>"], added["<end_of_turn>"]])
    assert "sliding_attention" in t["layer_types"] and t["layer_types"][-1] == "full_attention"
    assert t["rope_parameters"]["full_attention"]["rope_type"] == "linear"
    assert v["vision_use_head"] is False and t["query_pre_attn_scalar"] == t["head_dim"]
    assert pre.get("do_pan_and_scan") in (None, False) and pre["resample"] == 2
    assert pre["size"] == {"height": v["image_size"], "width": v["image_size"]} and "crop_size" not in pre
    assert gen["do_sample"] is True and gen["cache_implementation"] == "hybrid"  # as published: greedy regardless
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert (tok_cfg["boi_token"], tok_cfg["eoi_token"], tok_cfg["image_token"]) == ("<start_of_image>", "<end_of_image>", "<image_soft_token>")


@pytest.mark.parametrize("name, builder", [(PALIGEMMA, "build_tiny_paligemma"), (GEMMA3, "build_tiny_gemma3")])
def test_zoo_builds_are_deterministic(zoo_dirs, tmp_path, name, builder):
    import xbench.zoo.gemma as zoo

    getattr(zoo, builder)(tmp_path / "again")
    assert model_hash(tmp_path / "again") == model_hash(zoo_dirs[name])
    for f in ("tokenizer.json", "preprocessor_config.json", "config.json"):
        assert (tmp_path / "again" / f).read_text() == (zoo_dirs[name] / f).read_text()


# ---------------------------------------------------------------------------------------- prompts
def test_paligemma_prompt_is_the_processors_own_prefix(vlms):
    from transformers import AutoProcessor

    vlm = vlms[PALIGEMMA]
    assert vlm.prompt_format == "<image><bos>{prompt}\n" and "USER" not in vlm.prompt_format
    s = sample(0, 48, 80)
    (gen,) = vlm.generate([s], [QUESTION], 2)
    # the published processor, fed as its documentation says: "<image>" + the text
    proc = AutoProcessor.from_pretrained(str(vlm.path))
    ref = proc(images=[s.load_image()], text=["<image>" + QUESTION], return_tensors="pt")
    assert gen.prompt_ids == ref["input_ids"][0].tolist()
    torch.testing.assert_close(gen.pixel_values, ref["pixel_values"])
    tok = vlm.tokenizer
    assert gen.prompt_ids[64] == tok.bos_token_id and gen.prompt_ids.count(tok.bos_token_id) == 1
    assert gen.prompt_ids[-1] == tok.convert_tokens_to_ids("\n") and gen.image_positions == list(range(64))


def test_gemma3_prompt_is_the_public_template(vlms):
    vlm = vlms[GEMMA3]
    want = "<bos><start_of_turn>user\n<start_of_image>What color is the shape?<end_of_turn>\n<start_of_turn>model\n"
    assert vlm.render_prompt(QUESTION) == want
    assert vlm.render_prompt("  What color is the shape? \n") == want  # texts are trimmed
    assert vlm.prompt_format == want.replace(QUESTION, "{prompt}")
    (gen,) = vlm.generate([sample(1)], [QUESTION], 2)
    tok = vlm.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in ("<bos>", "<start_of_turn>", "\n", "<start_of_image>", "<image_soft_token>", "<end_of_image>")]
    bos, sot, nl, boi, img, eoi = ids
    assert gen.prompt_ids.count(bos) == 1 and gen.prompt_ids[0] == bos  # no second <bos> from the tokenizer
    start = gen.prompt_ids.index(boi)
    assert gen.prompt_ids[start - 2 : start] == [nl, nl]
    assert gen.prompt_ids[start + 1 : start + 17] == [img] * 16 and gen.prompt_ids[start + 17 : start + 20] == [eoi, nl, nl]
    assert gen.image_positions == list(range(start + 1, start + 17))


def test_gemma3_template_renders_conversations_as_the_public_one(vlms):
    proc = vlms[GEMMA3].processor
    conv = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi "}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "and the shape?"},
    ]
    got = proc.apply_chat_template(conv, add_generation_prompt=False, tokenize=False)
    assert got == ("<bos><start_of_turn>user\nBe brief.\n\n<start_of_image>Hi<end_of_turn>\n"
                   "<start_of_turn>model\nred<end_of_turn>\n<start_of_turn>user\nand the shape?<end_of_turn>\n")
    for bad in ([{"role": "assistant", "content": "x"}], [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]):
        with pytest.raises(Exception, match="alternate"):
            proc.apply_chat_template(bad, tokenize=False)


# ---------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("name", [PALIGEMMA, GEMMA3])
def test_answers_are_the_same_alone_and_left_padded_in_a_batch(vlms, name):
    vlm = vlms[name]
    questions = ["What color?", "Is there a red circle in the image?", QUESTION, "What shape is in the image?"]
    samples = [sample(i, 64, 48 + 8 * i, q) for i, q in enumerate(questions)]
    batch = vlm.generate(samples, questions, 4)
    assert len({g.prompt_len for g in batch}) > 1  # left padding was needed
    for s, q, b in zip(samples, questions, batch):
        (one,) = vlm.generate([s], [q], 4)
        assert (b.prompt_ids, b.answer_ids, b.text, b.image_positions) == (one.prompt_ids, one.answer_ids, one.text, one.image_positions)
        assert b.layout == one.layout


@pytest.mark.parametrize("name", [PALIGEMMA, GEMMA3])
def test_reforward_reproduces_generation_scores(vlms, name):
    """The teacher-forced re-forward (with the family's token_type_ids) gives generate's own scores;
    without them the attention mask differs and so do the logits (the test can fail)."""
    vlm = vlms[name]
    s = sample(2, 56, 72)
    inputs = vlm.encode([s.load_image()], [vlm.render_prompt(QUESTION)])
    with torch.no_grad():
        out = vlm.model.generate(**inputs, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=vlm.pad_id, eos_token_id=sorted(vlm.eos_ids), suppress_tokens=[vlm.image_token_id])
        (gen,) = vlm.generate([s], [QUESTION], 3)
        logits = vlm.forward(gen).logits[0, gen.query_positions]
        bare = vlm.model(input_ids=vlm.input_ids(gen), pixel_values=gen.pixel_values).logits[0, gen.query_positions]
    scores = torch.stack(out.scores[: len(gen.answer_ids)])[:, 0]
    finite = torch.isfinite(scores)
    torch.testing.assert_close(logits[finite], scores[finite], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(bare[finite], scores[finite], rtol=1e-4, atol=1e-4)


def test_paligemma_attends_the_prefix_bidirectionally(vlms):
    vlm = vlms[PALIGEMMA]
    (gen,) = vlm.generate([sample(3)], [QUESTION], 3)
    with torch.no_grad():
        att = vlm.forward(gen, output_attentions=True).attentions[0][0].amax(dim=0)  # [T, T]
    P, T = gen.prompt_len, att.shape[-1]
    assert T == P + len(gen.answer_ids)
    assert (att[:P, :P] > 0).all()  # every prefix token sees the whole prefix, later ones included
    assert (att[:P, P:] == 0).all() and (torch.triu(att[P:, P:], 1) == 0).all()  # the answer is causal


def test_gemma3_attends_image_tokens_bidirectionally_and_text_causally(vlms):
    vlm = vlms[GEMMA3]
    (gen,) = vlm.generate([sample(4)], [QUESTION], 3)
    types = vlm.model.config.get_text_config().layer_types
    with torch.no_grad():
        atts = vlm.forward(gen, output_attentions=True).attentions
    img = torch.tensor(gen.image_positions)
    window = vlm.model.config.get_text_config().sliding_window
    for kind, a in zip(types, atts):
        a = a[0].amax(dim=0)
        assert (a[img[:, None], img[None, :]] > 0).all(), kind  # the image block, both ways
        future = torch.triu(torch.ones_like(a, dtype=torch.bool), 1)
        future[img[:, None], img[None, :]] = False
        assert (a[future] == 0).all(), kind
        if kind == "sliding_attention":
            q = a.shape[0] - 1
            assert (a[q, : q - window + 1] == 0).all() and a[q, q - window + 1 :].gt(0).all()


# ---------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("name, side, block", [(PALIGEMMA, 8, 8), (GEMMA3, 4, 16)])
def test_cells_stretch_over_the_whole_image(vlms, name, side, block):
    vlm = vlms[name]
    H, W = 48, 80
    (gen,) = vlm.generate([sample(5, H, W)], [QUESTION], 1)
    assert gen.grid == (side, side) and gen.layout.image_size == (H, W)
    r, c = np.divmod(np.arange(side * side), side)
    want = np.stack([r * H / side, c * W / side, (r + 1) * H / side, (c + 1) * W / side], axis=1)
    np.testing.assert_allclose(gen.layout.boxes, want, atol=1e-9)
    cells = vlm.pixel_cells(gen)
    assert cells.shape == (1, 1, 64, 64)
    y, x = np.mgrid[0:64, 0:64]
    np.testing.assert_array_equal(cells[0, 0].numpy(), (y // block) * side + x // block)
    left = np.zeros((H, W), bool)
    left[:, : W // 2] = True
    cover = vlm.mask_to_grid(left, gen)
    np.testing.assert_allclose(cover, np.repeat([[1.0] * (side // 2) + [0.0] * (side // 2)], side, axis=0), atol=1e-6)


def test_gemma3_tokens_are_the_mean_of_their_patches(vlms):
    """vision_token_positions names the patches the projector pools into each image token."""
    vlm = vlms[GEMMA3]
    (gen,) = vlm.generate([sample(6)], [QUESTION], 1)
    members = vlm.vision_token_positions(gen)
    assert len(members) == 16 and all(len(m) == 16 for m in members)
    assert sorted(i for m in members for i in m) == list(range(256))
    projector = vlm.model.model.multi_modal_projector
    seen = {}
    h = projector.register_forward_hook(lambda _m, args, out: seen.update(tower=args[0], out=out))
    try:
        with torch.no_grad():
            vlm.forward(gen)
    finally:
        h.remove()
    tower = seen["tower"][0]  # [256, D]
    pooled = torch.stack([tower[m].mean(dim=0) for m in members])
    want = projector.mm_soft_emb_norm(pooled) @ projector.mm_input_projection_weight
    torch.testing.assert_close(seen["out"][0], want, rtol=1e-5, atol=1e-5)
    module, view = vlm.patch_features()
    cells = vlm.patch_cells(gen)
    assert cells.shape == (256,) and all((cells[m] == i).all() for i, m in enumerate(members))
    assert isinstance(module, torch.nn.Conv2d)


# ---------------------------------------------------------------------------------------- refusals and controls
def test_gemma3_with_pan_and_scan_on_is_refused(plugins, checkpoints, tmp_path):
    d = tmp_path / "pas"
    shutil.copytree(checkpoints[GEMMA3], d)
    pre = json.loads((d / "preprocessor_config.json").read_text())
    pre["do_pan_and_scan"] = True
    (d / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(ModelLoadError, match="pan-and-scan"):
        load_vlm(str(d), plugins.registries, device="cpu")


def test_gemma3_randomized_control_still_sees_the_image(vlms):
    control = vlms[GEMMA3].randomized(7)
    weight = control.model.model.multi_modal_projector.mm_input_projection_weight
    assert weight.abs().sum() > 0
    again = vlms[GEMMA3].randomized(7).model.model.multi_modal_projector.mm_input_projection_weight
    torch.testing.assert_close(weight, again)


@pytest.mark.parametrize("name", [PALIGEMMA, GEMMA3])
def test_a_checkpoint_directory_runs_with_only_model_dir(checkpoints, tmp_path, name, capsys):
    from xbench.cli import main

    out = tmp_path / "run"
    argv = ["run", "--method", "gradient_relevancy", "--model", str(checkpoints[name]), "--limit", "2", "--out", str(out),
            "--no-progress", "--warmup", "0"]
    assert main(argv) == 0
    assert "2 samples explained, 0 errors" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    fmt = {PALIGEMMA: "<image><bos>{prompt}\n",
           GEMMA3: "<bos><start_of_turn>user\n<start_of_image>{prompt}<end_of_turn>\n<start_of_turn>model\n"}[name]
    assert summary["model"]["prompt_format"] == fmt and summary["model"]["family"] == name.removeprefix("tiny-random-")
