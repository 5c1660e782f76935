"""FastRM: labels and their cache, training, save/load, model checks, no extra forward, metrics."""

import json
import math

import numpy as np
import pytest
import torch

from xbench.errors import DataError
from xbench.fastrm.evaluate import best_threshold, confidence_metrics, map_metrics, noise_ceiling
from xbench.fastrm.labels import LABEL_DTYPE, LabelSet, build_labels
from xbench.fastrm.proxy import FastRMProxy, ProxyError, model_identity
from xbench.fastrm.testing import random_proxy
from xbench.fastrm.train import TrainConfig, train_proxy
from xbench.maps import binarise_each, normalise_each

REFERENCE = "gradient_relevancy"  # the default reference
SHORT = {"max_new_tokens": 2}  # the random model never stops: keep its answers short


@pytest.fixture(scope="module")
def reference(plugins):
    return plugins.registries.methods.get(REFERENCE)()


@pytest.fixture(scope="module")
def label_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fastrm-cache")


@pytest.fixture(scope="module")
def train_labels(plugins, tiny_vlm, reference, label_root):
    task = plugins.registries.tasks.get("easyvqa")("train")
    return build_labels(tiny_vlm, task, reference, 32, cache_root=label_root, batch_size=8, progress=False, **SHORT)


@pytest.fixture(scope="module")
def test_labels(plugins, tiny_vlm, reference, label_root):
    task = plugins.registries.tasks.get("easyvqa")("test")
    return build_labels(
        tiny_vlm, task, reference, 8, cache_root=label_root, batch_size=8, noise_std=0.05, progress=False, **SHORT
    )


@pytest.fixture(scope="module")
def trained(train_labels, tiny_vlm):
    cfg = TrainConfig(steps=30, batch_size=16, lr=3e-3, eval_every=10, warmup=5)
    return train_proxy(
        train_labels.subset(range(24)),
        train_labels.subset(range(24, 32)),
        cfg,
        model_identity(tiny_vlm),
        progress=False,
    )


@pytest.fixture(scope="module")
def generations(tiny_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    return tiny_vlm.generate(samples[:4], [task.prompt(s) for s in samples[:4]], 4, frozenset({"hidden_states"}))


# --------------------------------------------------------------------------- labels


def test_labels_hold_states_maps_and_meta(train_labels, tiny_vlm, test_labels):
    n, d = 32, tiny_vlm.model.config.text_config.hidden_size
    rows = list(train_labels.rows())
    assert len(train_labels) == n and len(rows) == n and {r.patches.shape for r in rows} == {(64, d)}
    assert {r.patches.dtype for r in rows} == {torch.float32}  # the tiny model is float32, so is its store
    assert train_labels.maps.shape == (n, 8, 8) and train_labels.grid == (8, 8)
    assert all(r.queries.shape == (2, d) for r in rows)  # two answer tokens (max_new_tokens 2, never stops)
    assert train_labels.perturbed is None and test_labels.perturbed.shape == (8, 8, 8)
    assert {m["kind"] for m in train_labels.meta} <= {"colour", "shape", "yes/no colour", "yes/no shape"}
    assert train_labels.spec["reference"] == REFERENCE and train_labels.spec["model_hash"] == tiny_vlm.model_hash
    t = train_labels.targets(0.3)
    assert t.dtype == bool and t.shape == (n, 64) and 0 < t.mean() < 1


def test_labels_match_the_reference_and_the_generation(train_labels, tiny_vlm, reference, plugins):
    task = plugins.registries.tasks.get("easyvqa")("train")
    samples = list(task.samples(limit=3, seed=0))
    gens = tiny_vlm.generate(samples, [task.prompt(s) for s in samples], 2, frozenset({"hidden_states", "attentions"}))
    maps = reference.explain(tiny_vlm, gens)
    assert train_labels.ids[:3] == [s.id for s in samples]
    rows = list(train_labels.rows(range(3)))
    for i, (g, m) in enumerate(zip(gens, maps)):
        np.testing.assert_allclose(train_labels.maps[i], m.grid, atol=1e-5)
        np.testing.assert_allclose(rows[i].patches.numpy(), g.hidden_states[g.image_positions].numpy(), atol=1e-5)
        np.testing.assert_allclose(rows[i].queries.numpy(), g.hidden_states[g.query_positions].numpy(), atol=1e-5)
        assert rows[i].map_shape == (8, 8)


def test_label_cache_hit_and_extension(plugins, tiny_vlm, reference, label_root, train_labels, monkeypatch):
    task = plugins.registries.tasks.get("easyvqa")("train")
    calls = []
    real = tiny_vlm.generate
    monkeypatch.setattr(
        tiny_vlm, "generate", lambda samples, *a, **k: calls.append(len(samples)) or real(samples, *a, **k)
    )
    again = build_labels(tiny_vlm, task, reference, 32, cache_root=label_root, batch_size=8, progress=False, **SHORT)
    assert calls == []  # served from disk
    assert again.ids == train_labels.ids
    for a, b in zip(again.rows(), train_labels.rows()):
        assert torch.equal(a.patches, b.patches) and torch.equal(a.queries, b.queries)
    np.testing.assert_array_equal(again.maps, train_labels.maps)
    prefix = build_labels(tiny_vlm, task, reference, 25, cache_root=label_root, batch_size=8, progress=False, **SHORT)
    assert calls == [] and prefix.ids == train_labels.ids[:25]
    more = build_labels(tiny_vlm, task, reference, 36, cache_root=label_root, batch_size=8, progress=False, **SHORT)
    assert sum(calls) == 4 and more.ids[:32] == train_labels.ids and len(more) == 36
    files = [p.suffix for p in (label_root / "labels").rglob("*") if p.is_file()]
    assert set(files) <= {".json", ".safetensors"}  # never pickle
    shard = json.loads(next((label_root / "labels").rglob("shard-00000.json")).read_text())
    assert shard["torch_threads"] == torch.get_num_threads()  # the maps' last bits depend on it


def test_label_cache_remembers_where_the_task_ran_out(tiny_vlm, reference, tmp_path, monkeypatch):
    from itertools import islice

    from xbench.tasks.easyvqa import EasyVQA

    class FiveQuestions(EasyVQA):
        def samples(self, limit=None, seed=0):
            yield from islice(super().samples(limit, seed), 5)

    logged = []
    kw = dict(cache_root=tmp_path, batch_size=8, progress=False, log=logged.append, **SHORT)
    first = build_labels(tiny_vlm, FiveQuestions("train"), reference, 8, **kw)
    assert len(first) == 5 and len(logged) == 1
    monkeypatch.setattr(tiny_vlm, "generate", lambda *a, **k: pytest.fail("the cache should have served this"))
    again = build_labels(tiny_vlm, FiveQuestions("train"), reference, 16, **kw)
    assert again.ids == first.ids and len(logged) == 1  # no second "labelling ..." for samples that do not exist
    assert again.positions == list(range(5))
    end = next(tmp_path.rglob("end.json"))
    end.write_text("{torn")
    with pytest.raises(DataError, match=f"label cache file {end} is unreadable.*delete"):
        build_labels(tiny_vlm, FiveQuestions("train"), reference, 16, **kw)


def test_label_cache_keeps_extending_a_task_without_a_data_hash(tiny_vlm, reference, tmp_path):
    from itertools import islice

    from xbench.tasks.easyvqa import EasyVQA

    class Growing(EasyVQA):
        size = 3

        def samples(self, limit=None, seed=0):
            yield from islice(super().samples(limit, seed), self.size)

        def data_hash(self):
            return None  # the default of Task: nothing says the data stayed the same

    kw = dict(cache_root=tmp_path, batch_size=8, progress=False, **SHORT)
    assert len(build_labels(tiny_vlm, Growing("train"), reference, 6, **kw)) == 3
    assert not list(tmp_path.rglob("end.json"))
    Growing.size = 5
    assert len(build_labels(tiny_vlm, Growing("train"), reference, 6, **kw)) == 5


def test_label_cache_key_follows_reference_params(plugins, tiny_vlm, label_root, train_labels):
    task = plugins.registries.tasks.get("easyvqa")("train")
    other = plugins.registries.methods.get(REFERENCE)(token="last")
    labels = build_labels(tiny_vlm, task, other, 4, cache_root=label_root, batch_size=4, progress=False, **SHORT)
    assert labels.spec["reference_params"]["token"] == "last"
    assert not np.allclose(labels.maps, train_labels.maps[:4])


def test_normalise_and_binarise():
    maps = np.array([[[0.0, 1.0], [2.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]], dtype=np.float32)
    np.testing.assert_allclose(normalise_each(maps, LABEL_DTYPE), [[0, 0.25, 0.5, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(binarise_each(maps, 0.3, LABEL_DTYPE), [[False, False, True, True], [False] * 4])


# --------------------------------------------------------------------------- training and files


def test_training_lowers_the_loss(trained, train_labels):
    proxy, history = trained
    assert history[0]["train_loss"] > history[-1]["train_loss"]
    targets = torch.from_numpy(train_labels.targets(0.3)[:24].astype(np.float32))
    fresh = random_proxy(proxy.model_info, proxy.grid)  # the same seeded initialisation
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=(1 - targets.mean()) / targets.mean())
    with torch.no_grad():
        before = loss(fresh(*train_labels.batch(range(24))), targets)
        after = loss(proxy(*train_labels.batch(range(24))), targets)
    assert after < before
    assert {"val_f1", "val_auroc", "val_loss"} <= set(history[-1])
    assert 0.05 <= proxy.decision_threshold <= 0.95


def test_validation_scores_are_kept_at_the_decision_threshold(trained, train_labels):
    from sklearn.metrics import f1_score

    proxy, _ = trained
    val = train_labels.subset(range(24, 32))
    with torch.no_grad():
        probs = torch.sigmoid(proxy(*val.batch(range(len(val))))).numpy()
    y = val.targets(0.3)
    scores = proxy.info["val"]
    assert scores["threshold"] == proxy.decision_threshold
    assert scores["f1"] == pytest.approx(f1_score(y.ravel(), probs.ravel() >= proxy.decision_threshold))
    assert scores["accuracy"] == pytest.approx(((probs >= proxy.decision_threshold) == y).mean())
    grid = [round(0.05 * k, 2) for k in range(1, 20)]  # the threshold is the best F1 on this grid
    f1s = [f1_score(y.ravel(), probs.ravel() >= t, zero_division=0) for t in grid]
    assert scores["f1"] == pytest.approx(max(f1s)) and proxy.decision_threshold == grid[int(np.argmax(f1s))]
    assert proxy.info["train"]["decision_threshold_from"] == "validation F1"


def test_training_is_seeded(train_labels, tiny_vlm):
    cfg = TrainConfig(steps=5, batch_size=8, eval_every=5, warmup=1)
    a, _ = train_proxy(train_labels, None, cfg, model_identity(tiny_vlm), progress=False)
    b, _ = train_proxy(train_labels, None, cfg, model_identity(tiny_vlm), progress=False)
    assert a.decision_threshold == 0.5 and a.info["val"] is None  # no validation samples: says so
    assert a.info["train"]["decision_threshold_from"] == "default 0.5 (no validation samples)"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_ema_weights_are_the_moving_average(train_labels, tiny_vlm):
    """``ema``: the proxy ends with the average of its trajectory; a decay near 0 keeps the last weights."""
    from dataclasses import replace

    cfg = TrainConfig(steps=6, batch_size=8, eval_every=6, warmup=1)
    info = model_identity(tiny_vlm)
    plain, _ = train_proxy(train_labels, None, cfg, info, progress=False)
    last, _ = train_proxy(train_labels, None, replace(cfg, ema=1e-12), info, progress=False)
    smooth, _ = train_proxy(train_labels, None, replace(cfg, ema=0.9), info, progress=False)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(last.state_dict()[k], v)
    assert any(not torch.allclose(smooth.state_dict()[k], v) for k, v in plain.state_dict().items())


@pytest.mark.parametrize("decay", [0.5, 0.9999])
def test_weight_average_warms_up_then_decays(decay):
    """The average after weights w_0, w_1, ...: a_0 = w_0, a_n = d_n a_(n-1) + (1 - d_n) w_n with
    d_n = min(decay, (1 + n) / (10 + n)), checked after each of 40 updates."""
    from xbench.fastrm.train import weight_average

    model = torch.nn.Linear(3, 2)
    averaged = weight_average(model, decay)
    gen = torch.Generator().manual_seed(0)
    expected = None
    for n in range(40):
        values = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
        with torch.no_grad():
            for p, v in zip(model.parameters(), values):
                p.copy_(v)
        averaged.update_parameters(model)
        d = min(decay, (1 + n) / (10 + n))  # the update adding w_n follows n earlier ones (w_0 ... w_(n-1))
        expected = values if expected is None else [d * e + (1 - d) * v for e, v in zip(expected, values)]
        for got, want in zip(averaged.module.parameters(), expected):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["attention", "mlp"])
def test_save_load_round_trip_gives_identical_maps(head, train_labels, tiny_vlm, generations, tmp_path, plugins):
    cfg = TrainConfig(head=head, steps=3, batch_size=8, eval_every=3, warmup=1)
    proxy, _ = train_proxy(train_labels, None, cfg, model_identity(tiny_vlm), progress=False)
    proxy.save(tmp_path / "p")
    cfg_json = json.loads((tmp_path / "p" / "proxy.json").read_text())
    assert cfg_json["model"]["model_hash"] == tiny_vlm.model_hash and cfg_json["model"]["id"] == "tiny-random-llava"
    assert cfg_json["hidden_size"] == 64 and cfg_json["head"] == head and cfg_json["model"]["config_hash"]
    loaded = FastRMProxy.load(tmp_path / "p")
    a, b = proxy.predict(generations), loaded.predict(generations)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    method = plugins.registries.methods.get("fastrm")(proxy=str(tmp_path / "p"))
    maps = method.explain(tiny_vlm, generations)
    np.testing.assert_array_equal(np.stack([m.grid for m in maps]), a["map"])


def _other_model(tmp_path_factory, plugins, seed=1):
    from xbench.models import load_vlm
    from xbench.zoo.tiny import build_tiny_llava

    path = tmp_path_factory.mktemp("other-model")
    build_tiny_llava(path, seed=seed)
    return load_vlm(str(path), plugins.registries, needs=frozenset({"hidden_states"}), device="cpu")


@pytest.fixture(scope="module")
def other_vlm(tmp_path_factory, plugins):
    return _other_model(tmp_path_factory, plugins)


def test_proxy_for_another_model_is_refused(trained, other_vlm, tmp_path, plugins):
    proxy, _ = trained
    proxy.save(tmp_path / "p")
    method = plugins.registries.methods.get("fastrm")(proxy=str(tmp_path / "p"))
    task = plugins.registries.tasks.get("easyvqa")()
    s = next(iter(task.samples(limit=1)))
    gens = other_vlm.generate([s], [task.prompt(s)], 2, frozenset({"hidden_states"}))
    with pytest.raises(ProxyError, match=r"trained for model 'tiny-random-llava' \(model hash .*\), not for model"):
        method.explain(other_vlm, gens)


def test_model_without_a_proxy_says_how_to_train_one(other_vlm, plugins):
    method = plugins.registries.methods.get("fastrm")()
    with pytest.raises(ProxyError, match="no FastRM 'attention' proxy for model .*xbench fastrm train --model"):
        method.proxy_for(other_vlm)


def test_default_proxy_is_found_by_model_hash(plugins, tiny_vlm, generations):
    method = plugins.registries.methods.get("fastrm")(head="mlp")
    assert method.proxy_for(tiny_vlm).head_name == "mlp"
    assert method.proxy_for(tiny_vlm).model_info["model_hash"] == tiny_vlm.model_hash


# --------------------------------------------------------------------------- bad proxies


@pytest.fixture
def saved(trained, tmp_path):
    return trained[0].save(tmp_path / "proxy")


def test_missing_proxy_dir(tmp_path, plugins):
    with pytest.raises(ProxyError, match=r"FastRM proxy directory '.*nope' does not exist"):
        plugins.registries.methods.get("fastrm")(proxy=str(tmp_path / "nope"))


def test_missing_weights_file(saved):
    (saved / "proxy.safetensors").unlink()
    with pytest.raises(ProxyError, match="has no proxy.safetensors"):
        FastRMProxy.load(saved)


def test_corrupt_safetensors(saved):
    (saved / "proxy.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(ProxyError, match=r"cannot read FastRM proxy weights .*proxy.safetensors"):
        FastRMProxy.load(saved)


def test_corrupt_config(saved):
    (saved / "proxy.json").write_text("{not json")
    with pytest.raises(ProxyError, match=r"cannot read FastRM proxy config .*proxy.json"):
        FastRMProxy.load(saved)
    (saved / "proxy.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ProxyError, match="is not a FastRM proxy config"):
        FastRMProxy.load(saved)


def test_config_hidden_size_disagrees_with_weights(saved):
    cfg = json.loads((saved / "proxy.json").read_text())
    cfg["hidden_size"] = 32
    (saved / "proxy.json").write_text(json.dumps(cfg))
    with pytest.raises(ProxyError, match=r"weights .* do not fit its config \(attention head, hidden size 32\)"):
        FastRMProxy.load(saved)


def test_wrong_hidden_size_for_the_model(tiny_vlm, generations):
    ident = {**model_identity(tiny_vlm), "hidden_size": 32}
    proxy = random_proxy(ident, (8, 8))
    with pytest.raises(ProxyError, match="with hidden size 32; model 'tiny-random-llava' has hidden size 64"):
        proxy.check_compatible(tiny_vlm)
    with pytest.raises(ProxyError, match="expects hidden size 32, but the model's hidden states have size 64"):
        proxy.predict(generations)


def test_unknown_head(plugins):
    from xbench.errors import ParameterError

    with pytest.raises(ParameterError, match=r"method 'fastrm': head='transformer' is not one of \['attention', 'mlp'\]"):
        plugins.registries.methods.get("fastrm")(head="transformer")


def test_head_param_must_match_the_proxy(saved, plugins):
    from xbench.errors import ParameterError

    with pytest.raises(ParameterError, match="has a 'attention' head, not 'mlp'"):
        plugins.registries.methods.get("fastrm")(proxy=str(saved), head="mlp")


def test_generation_without_hidden_states(plugins, tiny_vlm, easyvqa_samples):
    task, samples = easyvqa_samples
    gens = tiny_vlm.generate(samples[:1], [task.prompt(samples[0])], 2)
    with pytest.raises(ProxyError, match="has no hidden states"):
        plugins.registries.methods.get("fastrm")().explain(tiny_vlm, gens)


# --------------------------------------------------------------------------- the method


def test_fastrm_adds_no_forward_pass(plugins, tiny_vlm, generations, monkeypatch):
    method = plugins.registries.methods.get("fastrm")()
    assert method.needs == frozenset({"hidden_states"})
    calls = {"model": 0, "adapter": 0}

    def count(*_):
        calls["model"] += 1

    handles = [
        m.register_forward_pre_hook(count)
        for m in (tiny_vlm.model, tiny_vlm.language_model, tiny_vlm.model.model.vision_tower)
    ]
    real = tiny_vlm.forward
    monkeypatch.setattr(
        tiny_vlm, "forward", lambda *a, **k: calls.__setitem__("adapter", calls["adapter"] + 1) or real(*a, **k)
    )
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: pytest.fail("autograd used"), lambda t: t):
            maps = method.explain(tiny_vlm, generations)
        tiny_vlm.model(input_ids=tiny_vlm.input_ids(generations[0]), pixel_values=generations[0].pixel_values)
    finally:
        for h in handles:
            h.remove()
    assert len(maps) == 4
    assert calls == {"model": 3, "adapter": 0}  # only the control call above reached the model


def test_maps_and_confidence(plugins, tiny_vlm, generations):
    maps = plugins.registries.methods.get("fastrm")().explain(tiny_vlm, generations)
    for gen, m in zip(generations, maps):
        m.validate(gen.grid, "fastrm")
        assert m.per_token.shape == (len(gen.answer_ids), 8, 8)
        assert np.all((m.grid > 0) & (m.grid < 1))
        logits = np.log(m.per_token) - np.log1p(-m.per_token)  # the map is sigmoid(mean token logit)
        np.testing.assert_allclose(1 / (1 + np.exp(-logits.mean(axis=0))), m.grid, rtol=1e-4)
        q = m.grid.ravel().astype(np.float64) / m.grid.sum()
        h = -(q * np.log(q)).sum()
        assert m.extras["entropy"] == pytest.approx(h, rel=1e-4)
        assert m.extras["confidence"] == pytest.approx(1 - h / math.log(64), abs=1e-5)


def test_runner_records_confidence(plugins, tmp_path):
    from xbench.records import read_records
    from xbench.runner import RunConfig, run

    summary = run(
        RunConfig(method="fastrm", model="tiny-random-llava", limit=3, out=tmp_path / "r", warmup=0, progress=False),
        plugins,
    )
    assert summary["n_errors"] == 0 and summary["model"]["attn_implementation"] == "sdpa"
    for r in read_records(tmp_path / "r" / "samples.jsonl"):
        assert set(r["extras"]) == {"entropy", "confidence", "decision_threshold"} and r["explain_ms"] > 0
        assert r["extras"]["decision_threshold"] == 0.5  # the random proxy's (FastRMProxy's default)


# --------------------------------------------------------------------------- metrics


def test_map_metrics_against_hand_counts():
    y = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 1, 0]], dtype=bool)
    p = np.array([[0.9, 0.4, 0.6, 0.1, 0.2], [0.8, 0.3, 0.7, 0.65, 0.05]])
    m = map_metrics(p, y, threshold=0.5)
    # predicted positive: 0.9, 0.6, 0.8, 0.7, 0.65 -> TP = 3 (0.9, 0.8, 0.65), FP = 2, FN = 1 (0.4), TN = 4
    tp, fp, fn, tn = 3, 2, 1, 4
    assert m["accuracy"] == pytest.approx((tp + tn) / 10)
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))
    pos, neg = p[y], p[~y]
    auc = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])  # Mann-Whitney by hand
    assert m["auroc"] == pytest.approx(auc)
    assert m["positive_rate"] == pytest.approx(0.4) and m["n_patches"] == 10


def test_best_threshold_and_confidence_auroc():
    y = np.array([1, 1, 0, 0], dtype=bool)
    assert best_threshold(np.array([0.9, 0.35, 0.3, 0.1]), y) == pytest.approx(0.35)
    res = confidence_metrics(np.array([3.0, 1.0, 2.0, 0.5]), np.array([0.0, 1.0, 0.0, 1.0]))
    assert res == {"n": 4, "n_wrong": 2, "auroc_entropy_wrong": 1.0}  # higher entropy on both wrong answers
    assert confidence_metrics(np.array([1.0, 2.0]), np.array([1.0, 1.0]))["auroc_entropy_wrong"] is None


def test_noise_ceiling_by_hand(test_labels):
    ceiling = noise_ceiling(test_labels, 0.3)
    a = binarise_each(test_labels.maps, 0.3, LABEL_DTYPE).ravel()
    b = binarise_each(test_labels.perturbed, 0.3, LABEL_DTYPE).ravel()
    tp, fp, fn = np.sum(a & b), np.sum(~a & b), np.sum(a & ~b)
    assert ceiling["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert not np.array_equal(test_labels.maps, test_labels.perturbed)  # the noise reached the maps
    assert noise_ceiling(test_labels.subset(range(3)), 0.3)["n_patches"] == 3 * 64


def test_where_and_concat(train_labels):
    open_q = train_labels.where("kind", ["colour", "shape"])
    assert all(m["kind"] in ("colour", "shape") for m in open_q.meta)
    both = LabelSet.concat([open_q, train_labels.where("kind", ["yes/no colour", "yes/no shape"])])
    assert sorted(both.ids) == sorted(train_labels.ids)
    i = both.ids.index(train_labels.ids[5])
    np.testing.assert_array_equal(both.batch([i])[1], train_labels.batch([5])[1])


# --------------------------------------------------------------------------- heads


@pytest.mark.parametrize("head", ["attention", "mlp"])
def test_heads_match_their_plain_formulas(head):
    from xbench.fastrm.heads import HEADS

    torch.manual_seed(0)
    patches, queries = torch.randn(3, 16, 32), torch.randn(3, 2, 32)
    h = HEADS.get(head)(32, 16, normalise="none")
    for prm in h.parameters():
        torch.nn.init.normal_(prm, std=0.3)
    p, a = h.norm(patches), h.norm(queries)
    if head == "attention":  # <W_q a + b_q, W_k p + b_k + pos> / sqrt(dim)
        q = a @ h.q.weight.T + h.q.bias
        k = p @ h.k.weight.T + h.k.bias + h.pos
        plain = torch.einsum("bkd,bnd->bkn", q, k) / math.sqrt(h.q.out_features)
    else:  # out(gelu(W [p, a, p * a] + b + pos))
        pb, ab = torch.broadcast_tensors(p.unsqueeze(1), a.unsqueeze(2))
        x = torch.cat([pb, ab, pb * ab], dim=-1) @ h.inp.weight.T + h.inp.bias + h.pos
        plain = (torch.nn.functional.gelu(x) @ h.out.weight.T + h.out.bias).squeeze(-1)
    with torch.no_grad():
        torch.testing.assert_close(h(patches, queries), h.scale * plain + h.bias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalise", ["none", "max", "minmax", "softmax"])
@pytest.mark.parametrize("head,params", [("attention", {}), ("attention", {"pos": False}), ("mlp", {})])
def test_infer_equals_forward(head, params, normalise):
    """Every head's prediction path gives its training forward's numbers, also after the weights change."""
    from xbench.fastrm.heads import HEADS

    torch.manual_seed(0)
    h = HEADS.get(head)(32, 16, normalise=normalise, **params).eval()
    patches, queries = torch.randn(3, 16, 32), torch.randn(3, 2, 32)
    for _ in range(2):  # the second round after new weights: a cached folding must not go stale
        with torch.no_grad():
            for prm in h.parameters():
                prm.normal_(std=0.3)
            torch.testing.assert_close(h.infer(patches, queries), h(patches, queries), rtol=1e-4, atol=1e-4)


def test_max_normalisation_puts_each_maps_best_patch_at_the_bias():
    from xbench.fastrm.heads import HEADS

    torch.manual_seed(0)
    h = HEADS.get("attention")(32, 16, normalise="max")
    with torch.no_grad():
        h.bias.fill_(0.7)
        out = h(torch.randn(4, 16, 32), torch.randn(4, 3, 32))
    torch.testing.assert_close(out.amax(dim=-1), torch.full((4, 3), 0.7))


def test_minmax_normalisation_is_the_labels_normalisation():
    """The attention head's default: ``a * minmax(s) + b`` with minmax the labels' own per-map
    normalisation, so ``minmax(s) >= tau`` is the reference's binarisation rule applied to ``s``."""
    from xbench.fastrm.heads import HEADS, NORMALISATIONS

    assert HEADS.get("attention")(32, 16).params["normalise"] == "minmax"
    s = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(0)) * 5
    got = NORMALISATIONS["minmax"](s).numpy()
    np.testing.assert_allclose(got, normalise_each(s.reshape(12, 16).numpy(), LABEL_DTYPE).reshape(4, 3, 16), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(NORMALISATIONS["minmax"](torch.full((2, 16), 3.0)).numpy(), np.zeros((2, 16)))


def test_bad_head_parameters_are_proxy_errors(tiny_vlm):
    with pytest.raises(ProxyError, match=r"'mlp' head: head 'mlp' has no parameter\(s\) \['heads'\]"):
        FastRMProxy("mlp", 64, (8, 8), {"heads": 2})
    with pytest.raises(ProxyError, match="normalise='sum' is not one of"):
        FastRMProxy("attention", 64, (8, 8), {"normalise": "sum"})
    with pytest.raises(ProxyError, match="unknown FastRM head 'cnn'"):
        FastRMProxy("cnn", 64, (8, 8))


def test_confidence_on_task_scores_every_answer(plugins, tiny_vlm):
    from xbench.fastrm.evaluate import confidence_on_task

    task = plugins.registries.tasks.get("easyvqa")()
    res = confidence_on_task(tiny_vlm, task, plugins.registries.methods.get("fastrm")(), 5, progress=False)
    assert res["n"] == 5 and res["n_wrong"] == 5  # the random model is never right
    assert res["auroc_entropy_wrong"] is None  # one class only: no AUROC rather than a made-up one


def test_confidence_on_task_counts_right_and_unscored_answers(plugins, tiny_vlm, monkeypatch):
    from xbench.fastrm.evaluate import confidence_on_task

    task = plugins.registries.tasks.get("easyvqa")()
    ids = [s.id for s in task.samples(limit=5)]
    verdict = {ids[0]: {"accuracy": 1.0}, ids[1]: {}}  # one right, one the task does not score
    monkeypatch.setattr(task, "score", lambda s, answer: verdict.get(s.id, {"accuracy": 0.0}))
    res = confidence_on_task(tiny_vlm, task, plugins.registries.methods.get("fastrm")(), 5, progress=False)
    assert res["n"] == 4 and res["n_wrong"] == 3 and res["auroc_entropy_wrong"] is not None


def test_randomized_control_runs_the_proxy_on_the_random_copy(plugins, tmp_path):
    """`--control randomized`: the model's proxy reads the random copy's hidden states (the sanity
    control), while a model of its own with another hash is still refused."""
    from xbench.records import read_records
    from xbench.runner import RunConfig, run

    summary = run(
        RunConfig(method="fastrm", model="tiny-random-llava", limit=3, out=tmp_path / "r", warmup=0, progress=False,
                  control="randomized", metrics=["agreement_f1", "energy_in_mask"]),
        plugins,
    )
    assert summary["n_errors"] == 0
    records = list(read_records(tmp_path / "r" / "samples.jsonl"))
    assert not [r["control_error"] for r in records if "control_error" in r]
    assert all("energy_in_mask@control" in r["metrics"] and "control_map" in r for r in records)
    assert any(r["control_map"] != r["map"] for r in records)  # the proxy saw other hidden states
