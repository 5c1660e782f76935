"""answer_prob_auroc: the answer's probability equals an independent computation; both confidence
AUROCs equal a Mann-Whitney count written here; the run records and summarises them."""

import json
import math

import numpy as np
import pytest

from xbench.api import MetricContext, RelevanceMap
from xbench.metrics.confidence import AnswerProbabilityAUROC, ConfidenceAUROC, answer_log_probability

TASK_PARAMS = {"corruption": "contrast", "severity": 0.85}  # the default model errs on ~40% of these


def mann_whitney_auroc(wrong, scores) -> float:
    """P(score of a wrong answer > score of a right one), ties counting half."""
    pos = [s for s, w in zip(scores, wrong) if w]
    neg = [s for s, w in zip(scores, wrong) if not w]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def independent_probability(vlm, generation, greedy: bool = True) -> float:
    """The answer's probability: the HF model called directly on prompt + answer (the adapter's
    model inputs for the image), a float64 numpy softmax at each position that predicted an
    answer token, the product of the picked entries. ``greedy``: check those are the argmax."""
    import torch

    ids = torch.tensor([generation.prompt_ids + generation.answer_ids])
    with torch.no_grad():
        inputs = vlm.forward_inputs(generation, generation.pixel_values)
        logits = vlm.model(input_ids=ids, **inputs, use_cache=False).logits[0].double().numpy()
    start = len(generation.prompt_ids) - 1
    rows = logits[start : start + len(generation.answer_ids)]
    if greedy:
        assert list(rows.argmax(axis=-1)) == generation.answer_ids  # these are the generated tokens
    probs = np.exp(rows - rows.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return float(np.prod([probs[k, t] for k, t in enumerate(generation.answer_ids)]))


@pytest.fixture(scope="module")
def default_model(plugins):
    from xbench.models import load_vlm

    return load_vlm("tiny-llava-easyvqa", plugins.registries, needs=frozenset(), device="cpu")


@pytest.fixture(scope="module")
def corrupted(plugins, default_model):
    """12 contrast-corrupted samples, their generations and the independent probabilities."""
    task = plugins.registries.tasks.get("easyvqa")(**TASK_PARAMS)
    samples = list(task.samples(limit=12, seed=0))
    gens = default_model.generate(samples, [task.prompt(s) for s in samples], task.max_new_tokens)
    return task, samples, gens, [independent_probability(default_model, g) for g in gens]


def test_answer_probability_equals_an_independent_computation(default_model, corrupted, tiny_vlm, easyvqa_samples):
    _task, samples, gens, probs = corrupted
    metric = AnswerProbabilityAUROC()
    context = MetricContext(vlm=default_model)
    values = [metric.compute(s, g, None, context) for s, g in zip(samples, gens)]
    np.testing.assert_allclose(values, [1 - p for p in probs], rtol=1e-5, atol=2e-6)  # float32 logits round differently
    assert max(values) > 0.05  # not every answer near-certain: the comparison is not of zeros
    task, few = easyvqa_samples  # a random-weight model: low, varied probabilities of multi-token answers
    rand = tiny_vlm.generate(few[:4], [task.prompt(s) for s in few[:4]], task.max_new_tokens)
    want = [independent_probability(tiny_vlm, g) for g in rand]
    got = [metric.compute(s, g, None, MetricContext(vlm=tiny_vlm)) for s, g in zip(few, rand)]
    np.testing.assert_allclose(got, [1 - p for p in want], rtol=1e-5, atol=2e-6)
    # 1 - p is near 1 for such small p: the log-probabilities tell the figures apart
    np.testing.assert_allclose([answer_log_probability(tiny_vlm, g) for g in rand], np.log(want), rtol=1e-5)


def test_auroc_equals_a_mann_whitney_count():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(40), 1)  # ties on purpose
    acc = (rng.random(40) > 0.4).astype(float)
    records = [{"scores": {"accuracy": a}} for a in acc]
    want = mann_whitney_auroc(acc < 0.5, scores)
    for metric in (ConfidenceAUROC(), AnswerProbabilityAUROC()):
        assert metric.aggregate(list(scores), records) == pytest.approx(want, abs=1e-12)
        assert metric.aggregate(list(scores[acc == 1]), [r for r in records if r["scores"]["accuracy"] == 1]) is None
    graded = [{"scores": {"vqa": v}} for v in (0.0, 0.3, 0.6, 1.0)]  # another score, another cut
    metric = AnswerProbabilityAUROC(score_key="vqa", wrong_below=0.5)
    assert metric.aggregate([0.9, 0.2, 0.3, 0.1], graded) == pytest.approx(mann_whitney_auroc([1, 1, 0, 0], [0.9, 0.2, 0.3, 0.1]))


def test_answer_prob_auroc_declares_what_it_is():
    m = AnswerProbabilityAUROC()
    assert m.needs == frozenset({"model"}) and m.uses_map is False and m.category == "confidence"
    assert ConfidenceAUROC().compute(None, None, RelevanceMap(np.ones((2, 2), np.float32))) == pytest.approx(1.0)


def test_run_records_and_summarises_the_answer_probability(plugins, tmp_path, corrupted):
    from xbench.runner import RunConfig, run

    _task, samples, _gens, probs = corrupted
    out = tmp_path / "run"
    summary = run(RunConfig(method="uniform", limit=12, out=out, progress=False, metrics=["confidence"],
                            task_params=TASK_PARAMS, device="cpu"), plugins)  # fmt: skip
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [s.id for s in samples]
    got = [r["metrics"]["answer_prob_auroc"] for r in records]
    np.testing.assert_allclose(got, [1 - p for p in probs], rtol=1e-5, atol=2e-6)  # float32 logits round differently
    wrong = [r["scores"]["accuracy"] < 0.5 for r in records]
    assert 0 < sum(wrong) < len(wrong)
    entry = summary["metrics"]["answer_prob_auroc"]
    assert entry["value"] == pytest.approx(mann_whitney_auroc(wrong, got), abs=1e-12)
    assert entry["category"] == "confidence" and entry["ci95"] is not None
    # uniform's map has maximal entropy everywhere: its confidence AUROC is chance, exactly
    assert summary["metrics"]["confidence_auroc"]["value"] == pytest.approx(0.5)
    assert all(math.isclose(r["metrics"]["confidence_auroc"], 1.0, abs_tol=1e-6) for r in records)


def tiny_random_models():
    from xbench.plugins import build

    return [name for name in build().registries.models.names() if name.startswith("tiny-random-") and name != "tiny-random-llava"]


@pytest.mark.parametrize("model", tiny_random_models())
def test_answer_probability_on_every_family(plugins, easyvqa_samples, model):
    """The same check on each family's tiny random model (their image inputs differ; the metric
    reads only ``vlm.forward``)."""
    from xbench.models import load_vlm

    vlm = load_vlm(model, plugins.registries, needs=frozenset(), device="cpu")
    task, samples = easyvqa_samples
    gens = vlm.generate(samples[:2], [task.prompt(s) for s in samples[:2]], task.max_new_tokens)
    want = [independent_probability(vlm, g, greedy=False) for g in gens]
    got = [AnswerProbabilityAUROC().compute(s, g, None, MetricContext(vlm=vlm)) for s, g in zip(samples, gens)]
    np.testing.assert_allclose(got, [1 - p for p in want], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose([answer_log_probability(vlm, g) for g in gens], np.log(want), rtol=1e-5, atol=1e-5)
