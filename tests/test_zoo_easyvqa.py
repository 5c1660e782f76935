"""tiny-llava-easyvqa: the shipped default model, its training code, its random control and the zoo CLI."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from xbench.zoo import train_easyvqa as T
from xbench.zoo.tiny import EASYVQA_SHAPE, TinyLlavaShape, words_of

NAME = "tiny-llava-easyvqa"
#: a very small architecture for training tests (not the shipped one)
SMALL = TinyLlavaShape(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=1, text_heads=2)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def shipped_dir(plugins) -> Path:
    return plugins.registries.models.get(NAME).locate()


@pytest.fixture(scope="module")
def shipped_vlm(plugins, shipped_dir):
    from xbench.models import load_vlm

    return load_vlm(NAME, plugins.registries, device="cpu")


# --------------------------------------------------------------------------- the shipped model
def test_shipped_inside_package_with_expected_files(plugins, shipped_dir):
    import xbench.zoo

    spec = plugins.registries.models.get(NAME)
    assert spec.shipped is not None and spec.build is None
    assert shipped_dir.resolve().is_relative_to(Path(xbench.zoo.__file__).resolve().parent / "data")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
              "README.md", "training.json"):  # fmt: skip
        assert (shipped_dir / f).is_file(), f
    config = json.loads((shipped_dir / "config.json").read_text())
    assert config["model_type"] == "llava" and config["vision_feature_layer"] == -1
    assert config["text_config"]["hidden_size"] == EASYVQA_SHAPE.text_hidden
    assert (shipped_dir / "model.safetensors").stat().st_size < 8 * 2**20  # a few MB


def test_default_model_is_the_shipped_one():
    from xbench.runner import DEFAULT_MODEL, DEFAULT_TASK, RunConfig

    assert DEFAULT_MODEL == NAME and DEFAULT_TASK == "easyvqa"
    assert RunConfig(method="rollout").model == NAME


def test_loads_offline(plugins, no_network):
    from xbench.models import load_vlm

    vlm = load_vlm(NAME, plugins.registries, needs=frozenset({"attentions"}), device="cpu")
    assert vlm.attn_implementation == "eager" and vlm.patch_grid == (8, 8)
    assert (
        sum(p.numel() for p in vlm.model.parameters())
        == json.loads((vlm.path / "training.json").read_text())["parameters"]
    )


def test_card_reports_the_measured_accuracy(shipped_dir):
    info = json.loads((shipped_dir / "training.json").read_text())
    card = (shipped_dir / "README.md").read_text()
    test = info["test"]
    assert test["n"] == 9673  # the full test split
    assert test["accuracy"] >= 0.95 and all(v["accuracy"] >= 0.90 for v in test["by_kind"].values())
    assert f"{test['accuracy']:.4f}" in card and info["hardware"] in card
    assert card == T.model_card(info)  # the card is rendered from the run's record


def test_answers_200_fixed_test_questions(plugins, shipped_vlm):
    """Greedy answers through xbench's adapter, scored by the task: >= 0.93 on 200 fixed questions."""
    task = plugins.registries.tasks.get("easyvqa")()
    samples = list(task.samples(limit=200, seed=0))
    scores = []
    for start in range(0, len(samples), 50):
        batch = samples[start : start + 50]
        gens = shipped_vlm.generate(batch, [task.prompt(s) for s in batch], task.max_new_tokens)
        scores += [task.score(s, g.text)["accuracy"] for s, g in zip(batch, gens)]
    assert len(scores) == 200
    assert sum(scores) / 200 >= 0.93
    assert all(g.answer_ids[-1] not in shipped_vlm.eos_ids for g in gens)  # one word, then it stopped


def test_training_evaluator_matches_the_adapter(shipped_vlm):
    """The evaluator used for the card decodes exactly like the adapter's ``generate``."""
    data = T.load_split("test", shipped_vlm.processor, max_questions=24)
    mine = T.greedy_answers(shipped_vlm.model, shipped_vlm.processor, data, list(range(len(data))), 4)
    from xbench.plugins import default

    task = default().registries.tasks.get("easyvqa")()
    samples = list(task.samples(limit=24, seed=0))
    assert [s.question for s in samples] == data.questions
    gens = shipped_vlm.generate(samples, [task.prompt(s) for s in samples], task.max_new_tokens)
    assert mine == [g.text for g in gens]


# --------------------------------------------------------------------------- training code
def test_image_labels_from_questions():
    qs = ["is there not a circle?", "is there a rectangle?", "what color is the shape?", "is no red shape present?"]
    ans = ["yes", "no", "blue", "yes"]
    labels = T.image_labels(qs, ans, [7, 7, 7, 8])
    assert labels[7] == (T.SHAPES.index("triangle"), T.COLOURS.index("blue"))
    assert labels[8] == (-100, -100)  # "not red" decides nothing


def test_prompt_and_targets_follow_the_adapter_template():
    _, processor = T.new_model(SMALL, 0)
    data = T.load_split("train", processor, max_images=4)
    tok = processor.tokenizer
    q = 0
    instruction = "Answer the question using a single word or phrase."
    expected = (
        ["user", ":"] + ["<image>"] * 64 + words_of(data.questions[q]) + words_of(instruction) + ["assistant", ":"]
    )
    assert tok.convert_ids_to_tokens(data.q_prompt[q]) == expected
    assert data.q_answer[q] == [tok.convert_tokens_to_ids(data.answers[q]), tok.eos_token_id]
    ids, mask, pos, labels = T.qa_batch(data, torch.tensor([q, 1]), tok.pad_token_id)
    row = int((labels[0] != -100).nonzero()[0])
    assert ids[0, row + 1] == data.q_answer[q][0] and labels[0, row] == data.q_answer[q][0]
    assert labels[0, -1] == tok.eos_token_id and int(pos[0, -1]) == int(mask[0].sum()) - 1


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model, processor = T.new_model(SMALL, 0)
    head = T.AuxHead(SMALL.text_hidden)
    data = T.load_split("train", processor, max_images=8)
    recipe = T.Recipe(shape=SMALL, qa_batch=16, max_shift=0, flip=False, lr_warmup=1)
    idx = torch.arange(len(data))
    pv = T.pixel_values(data.images[data.q_image], processor)

    def loss():
        model.eval()
        with torch.no_grad():
            return float(T.qa_loss(model, data, idx, pv, processor.tokenizer.pad_token_id))

    before = loss()
    opt, sched = T.make_optimizer(list(model.parameters()) + list(head.parameters()), 1e-2, 15, recipe)
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        T.train_step(model, head, opt, sched, data, processor, gen, recipe, "qa")
    after = loss()
    assert after < 0.6 * before, (before, after)


def _tiny_run(seed: int):
    recipe = T.Recipe(seed=seed, shape=SMALL, warmup_steps=3, qa_steps=3, warmup_batch=8, qa_batch=8, train_images=12)
    model, _, info = T.train(recipe, progress=False, evaluate_test=False)
    return model.state_dict(), info


def test_training_is_deterministic():
    a, info = _tiny_run(0)
    b, _ = _tiny_run(0)
    c, _ = _tiny_run(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert info["loss"]["qa"]["steps"] == 3 and "test" not in info


# --------------------------------------------------------------------------- random control and CLI
def test_random_control_is_the_same_architecture(plugins, shipped_dir):
    spec = plugins.registries.models.get("tiny-llava-easyvqa-random")
    assert spec.build is not None
    path = spec.locate()
    trained, control = (json.loads((d / "config.json").read_text()) for d in (shipped_dir, path))
    for part in ("vision_config", "text_config"):
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            assert trained[part][key] == control[part][key]
    assert (shipped_dir / "tokenizer.json").read_text() == (path / "tokenizer.json").read_text()
    from safetensors.torch import load_file

    w_trained, w_control = (load_file(d / "model.safetensors") for d in (shipped_dir, path))
    assert w_trained.keys() == w_control.keys()
    assert sum(not torch.equal(w_trained[k], w_control[k]) for k in w_trained) >= 0.9 * len(w_trained)
    # the control is exactly the recipe's seed-0 initialisation
    from transformers import LlavaForConditionalGeneration

    init, _ = T.new_model(EASYVQA_SHAPE, 0)
    control = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True).state_dict()
    assert init.state_dict().keys() == control.keys()
    assert all(torch.equal(v, control[k]) for k, v in init.state_dict().items())


def test_random_control_never_answers_with_an_image_placeholder(plugins):
    """An untrained model's greedy answers may hold ``<image>``; the adapter suppresses it (re-forwards need it)."""
    from xbench.models import load_vlm

    vlm = load_vlm("tiny-llava-easyvqa-random", plugins.registries, device="cpu")
    task = plugins.registries.tasks.get("easyvqa")()
    samples = list(task.samples(limit=16, seed=0))
    gens = vlm.generate(samples, [task.prompt(s) for s in samples], 4)
    assert not any(vlm.image_token_id in g.answer_ids for g in gens)
    assert all(len(g.answer_ids) >= 1 for g in gens)


def test_zoo_list_and_train_refuses_a_used_directory(tmp_path, capsys):
    from xbench.cli import main

    assert main(["zoo", "list"]) == 0
    listed = capsys.readouterr().out
    assert NAME in listed and "shipped" in listed and "tiny-llava-easyvqa-random" in listed
    (tmp_path / "x").write_text("taken")
    assert main(["zoo", "train", NAME, "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
