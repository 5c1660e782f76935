import json
import shutil

import numpy as np
import pytest
import torch

from xbench.api import Sample
from xbench.errors import AttentionsUnavailableError, ModelLoadError, UnknownNameError
from xbench.models import check_model_dir, load_vlm, model_hash


def _sample(task, i=0):
    return list(task.samples(limit=i + 1, seed=0))[i]


def test_unknown_zoo_name_suggests(plugins):
    with pytest.raises(UnknownNameError) as err:
        load_vlm("tiny-random-lava", plugins.registries)
    assert "Did you mean 'tiny-random-llava'?" in str(err.value)
    assert "local model directory" in str(err.value)


def test_missing_directory_never_downloads(plugins, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vlm(str(tmp_path / "nope"), plugins.registries)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vlm("llava-hf/llava-1.5-7b-hf", plugins.registries)  # a hub id is not fetched


@pytest.mark.parametrize(
    "remove, expected",
    [("config.json", "config.json"), ("model.safetensors", "model.safetensors"), ("tokenizer.json", "tokenizer")],
)
def test_incomplete_directory_names_missing_file(plugins, tiny_model_dir, tmp_path, remove, expected):
    broken = tmp_path / "m"
    shutil.copytree(tiny_model_dir, broken)
    for f in broken.glob(remove.split(".")[0] + "*"):
        f.unlink()
    with pytest.raises(ModelLoadError) as err:
        load_vlm(str(broken), plugins.registries)
    assert expected in str(err.value) and str(broken) in str(err.value)


def test_unsupported_model_type(plugins, tiny_model_dir, tmp_path):
    other = tmp_path / "m"
    shutil.copytree(tiny_model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "blip-2"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="'blip-2'.*no model family"):
        load_vlm(str(other), plugins.registries)


def test_check_model_dir_returns_config(tiny_model_dir):
    assert check_model_dir(tiny_model_dir)["model_type"] == "llava"
    assert len(model_hash(tiny_model_dir)) == 16


def test_zoo_build_is_deterministic(plugins, tiny_model_dir, tmp_path):
    from xbench.zoo.tiny import build_tiny_llava

    build_tiny_llava(tmp_path / "again", seed=0)
    assert model_hash(tmp_path / "again") == model_hash(tiny_model_dir)


def test_generation_fields(tiny_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    (gen,) = tiny_vlm.generate(samples[:1], [task.prompt(samples[0])], 4)
    assert gen.grid == (8, 8)
    assert len(gen.image_positions) == 64
    assert all(gen.prompt_ids[p] == tiny_vlm.image_token_id for p in gen.image_positions)
    assert 1 <= len(gen.answer_ids) <= 4
    assert gen.query_positions[0] == gen.prompt_len - 1
    assert gen.text == tiny_vlm.tokenizer.decode(gen.answer_ids, skip_special_tokens=True).strip()
    # greedy: the first answer token is the argmax of the teacher-forced logits at its query position
    with torch.no_grad():
        logits = tiny_vlm.forward(gen).logits[0]
    assert int(logits[gen.query_positions[0]].argmax()) == gen.answer_ids[0]


def test_left_padded_batch_matches_single(tiny_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    prompts = [task.prompt(s) for s in samples[:4]]
    assert len({len(p) for p in prompts}) > 1  # different lengths, so padding happens
    batch = tiny_vlm.generate(samples[:4], prompts, 4, keep=frozenset({"hidden_states"}))
    for s, p, b in zip(samples[:4], prompts, batch):
        (single,) = tiny_vlm.generate([s], [p], 4, keep=frozenset({"hidden_states"}))
        assert single.prompt_ids == b.prompt_ids and single.answer_ids == b.answer_ids
        torch.testing.assert_close(single.hidden_states, b.hidden_states, atol=1e-4, rtol=1e-4)


def test_kept_hidden_states_equal_teacher_forced_last_layer(tiny_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    (gen,) = tiny_vlm.generate(samples[1:2], [task.prompt(samples[1])], 4, keep=frozenset({"hidden_states"}))
    with torch.no_grad():
        out = tiny_vlm.model(input_ids=tiny_vlm.input_ids(gen), pixel_values=gen.pixel_values,
                             output_hidden_states=True, use_cache=False)
        ref = out.hidden_states[-1][0]
    n = gen.prompt_len + len(gen.answer_ids) - 1
    assert gen.hidden_states.shape == (n, tiny_vlm.model.config.text_config.hidden_size)
    torch.testing.assert_close(gen.hidden_states, ref[:n], atol=1e-4, rtol=1e-4)
    norm = tiny_vlm.language_model.norm
    assert not norm._forward_hooks  # capture hook removed


def test_sdpa_attentions_are_refused(plugins, easyvqa_samples):
    task, samples = easyvqa_samples
    vlm = load_vlm("tiny-random-llava", plugins.registries, device="cpu")  # no method needs attentions
    assert vlm.attn_implementation == "sdpa"
    (gen,) = vlm.generate(samples[:1], [task.prompt(samples[0])], 2)
    with pytest.raises(AttentionsUnavailableError, match="eager"):
        vlm.forward(gen, output_attentions=True)


def test_cpu_defaults(tiny_vlm):
    assert tiny_vlm.dtype == torch.float32 and str(tiny_vlm.device) == "cpu"
    assert not any(p.requires_grad for p in tiny_vlm.model.parameters())


def test_bad_image_names_file(tmp_path):
    from xbench.errors import BadImageError

    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="x.jpg"):
        Sample("s", "q", ["a"], image_path=bad).load_image()
    with pytest.raises(BadImageError, match="not found"):
        Sample("s", "q", ["a"], image_path=tmp_path / "missing.png").load_image()
    assert np.asarray(Sample("s", "q", ["a"], image=None, image_path=_png(tmp_path, "LA")).load_image()).shape[-1] == 3


def _png(tmp_path, mode):
    from PIL import Image

    path = tmp_path / f"{mode}.png"
    Image.new(mode, (5, 5)).save(path)
    return path


def test_identity_is_set_at_load_and_read_only(tiny_vlm, tiny_model_dir):
    from xbench.models import config_hash

    ident = tiny_vlm.identity
    assert (ident.name, ident.path) == ("tiny-random-llava", tiny_model_dir)
    assert ident.model_hash == model_hash(tiny_model_dir) and ident.config_hash == config_hash(json.loads((tiny_model_dir / "config.json").read_text()))
    assert (tiny_vlm.name, tiny_vlm.model_hash, tiny_vlm.randomized_from) == (ident.name, ident.model_hash, None)
    with pytest.raises(AttributeError):
        tiny_vlm.model_hash = "other"


def test_randomized_control_carries_its_own_identity(tiny_vlm):
    control = tiny_vlm.randomized(7)
    assert control.name == "tiny-random-llava[randomized seed=7]" and control.path is None
    assert control.config_hash == tiny_vlm.config_hash and control.model_hash is None  # weights only in memory
    assert control.randomized_from == {"model": "tiny-random-llava", "model_hash": tiny_vlm.model_hash, "seed": 7}
    assert tiny_vlm.randomized_from is None  # the original is untouched


def test_prompt_longer_than_the_context_is_refused_before_generating(tiny_vlm, easyvqa_samples, monkeypatch):
    from xbench.errors import PromptTooLongError

    task, samples = easyvqa_samples
    calls = []
    monkeypatch.setattr(tiny_vlm.model, "generate", lambda **kw: calls.append(kw))
    prompts = [task.prompt(samples[0]), "colour " * 300]
    with pytest.raises(PromptTooLongError, match=rf"sample {samples[1].id!r}: its prompt of \d+ tokens plus up to 4 answer tokens does not fit the context window of model 'tiny-random-llava' \(256 tokens\)"):
        tiny_vlm.generate(samples[:2], prompts, 4)
    assert calls == []  # nothing generated
