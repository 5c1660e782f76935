"""Each quality metric against a value computed by hand on a small example."""

import math

import numpy as np
import pytest
import torch

from xbench.api import VLM, Generation, MetricContext, ModelIdentity, RelevanceMap, Sample
from xbench.image_layout import single_grid
from xbench.errors import ParameterError, XbenchError
from xbench.metrics.agreement import (
    AgreementAccuracy,
    AgreementAUROC,
    AgreementF1,
    AgreementIoU,
    AgreementPrecision,
    AgreementRecall,
    AgreementSpearman,
)
from xbench.maps import binarise, map_entropy, normalise
from xbench.metrics.confidence import ConfidenceAUROC
from xbench.metrics.faithfulness import (
    DeletionAUC,
    DeletionAUCRandom,
    InsertionAUC,
    InsertionAUCRandom,
    step_counts,
)
from xbench.metrics.localisation import TopRegionIoU
from xbench.stats import bootstrap

# ----------------------------------------------------------------------------- agreement
# pred normalises to 0, 1/8, ..., 1 -> positives at tau 0.3: patches 3..8
# ref  normalises to [1,0,0, 0,1,0, .5,0,1] -> positives: patches 0, 4, 6, 8
PRED = np.arange(9, dtype=np.float32).reshape(3, 3)
REF = np.array([[8, 0, 0], [0, 8, 0], [4, 0, 8]], np.float32)
# TP {4,6,8}=3  FP {3,5,7}=3  FN {0}=1  TN {1,2}=2
HAND = {
    AgreementAccuracy: 5 / 9,
    AgreementPrecision: 3 / 6,
    AgreementRecall: 3 / 4,
    AgreementF1: 2 * 0.5 * 0.75 / (0.5 + 0.75),
    AgreementIoU: 3 / 7,
    # positives score {0, .5, .75, 1}, negatives {.125, .25, .375, .625, .875}: 0+3+4+5 of 20 pairs
    AgreementAUROC: 12 / 20,
    # ranks: pred 1..9, ref [8,3,3,3,8,3,6,3,8]; deviations give 6 / sqrt(60 * 48)
    AgreementSpearman: 6 / math.sqrt(60 * 48),
}


def _ctx(ref=None, **kw):
    return MetricContext(reference=None if ref is None else RelevanceMap(ref), **kw)


@pytest.mark.parametrize("cls", list(HAND), ids=lambda c: c.name)
def test_agreement_hand_computed(cls):
    sample = Sample("s", "q", ["a"])
    assert cls().compute(sample, None, RelevanceMap(PRED), _ctx(REF)) == pytest.approx(HAND[cls])
    assert cls.needs == {"reference"} and cls.category == "agreement"


SKLEARN_SCORES = {
    AgreementAccuracy: ("accuracy_score", {}),
    AgreementPrecision: ("precision_score", {"zero_division": np.nan}),
    AgreementRecall: ("recall_score", {"zero_division": np.nan}),
    AgreementF1: ("f1_score", {"zero_division": np.nan}),
    AgreementIoU: ("jaccard_score", {"zero_division": 0.0}),  # no NaN option: an empty union is undefined here
}


@pytest.mark.parametrize("cls", list(SKLEARN_SCORES), ids=lambda c: c.name)
def test_binary_agreement_equals_scikit_learn_on_random_maps(cls):
    """The counted scores are scikit-learn's, undefined cases (NaN there) being None here."""
    import warnings

    import sklearn.metrics

    name, kw = SKLEARN_SCORES[cls]
    rng = np.random.default_rng(0)
    sample, checked = Sample("s", "q", ["a"]), 0
    for trial in range(300):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        pred, ref = (rng.random(shape).astype(np.float32) ** rng.uniform(0.2, 5) for _ in range(2))
        if trial % 10 == 0:
            pred = np.full(shape, 2.0, np.float32)  # constant: no predicted positive
        if trial % 15 == 0:
            ref = np.zeros(shape, np.float32)  # constant: no reference positive
        tau = float(rng.choice([0.0, 0.3, 0.5, 0.9, 1.0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = getattr(sklearn.metrics, name)(binarise(ref, tau).ravel(), binarise(pred, tau).ravel(), **kw)
        got = cls(tau=tau).compute(sample, None, RelevanceMap(pred), _ctx(ref))
        if cls is AgreementIoU and not (binarise(ref, tau) | binarise(pred, tau)).any():
            want = np.nan
        if np.isnan(want):
            assert got is None
        else:
            assert got == pytest.approx(float(want), abs=1e-12)
            checked += 1
    assert checked > 150


def test_normalise_and_binarise_edges():
    np.testing.assert_allclose(normalise(np.array([2.0, 4.0, 3.0])), [0, 1, 0.5])
    assert not binarise(np.full((2, 2), 5.0), 0.3).any()  # constant map: no positive patch
    assert binarise(np.array([0.0, 0.3, 1.0]), 0.3).tolist() == [False, True, True]  # >= tau


def test_agreement_tau_parameter_changes_binarisation():
    # at tau 0.8 pred positives are {7, 8}, ref positives {0, 4, 8}: precision 1/2, recall 1/3
    sample = Sample("s", "q", ["a"])
    assert AgreementPrecision(tau=0.8).compute(sample, None, RelevanceMap(PRED), _ctx(REF)) == pytest.approx(0.5)
    assert AgreementRecall(tau=0.8).compute(sample, None, RelevanceMap(PRED), _ctx(REF)) == pytest.approx(1 / 3)
    with pytest.raises(ParameterError, match="agreement_f1.*'threshold'"):
        AgreementF1(threshold=0.3)


def test_agreement_f1_operating_pools_patches_at_the_methods_threshold():
    from sklearn.metrics import f1_score

    from xbench.api import DECISION_THRESHOLD, Pooled
    from xbench.records import recorded_value, split_pooled
    from xbench.metrics.agreement import AgreementF1Operating

    metric = AgreementF1Operating()
    sample = Sample("s", "q", ["a"])
    # the map cut at its own 5.5 (not at tau of its normalised values): positives 6, 7, 8
    first = metric.compute(sample, None, RelevanceMap(PRED, extras={DECISION_THRESHOLD: 5.5}), _ctx(REF))
    assert isinstance(first, Pooled) and first.counts == {"tp": 2, "fp": 1, "fn": 2, "patches": 9}  # ref {0,4,6,8}
    assert first.value == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    other = np.array([[0, 1, 1], [0, 0, 0], [0, 0, 0]], np.float32)  # ref positives {1, 2}
    second = metric.compute(sample, None, RelevanceMap(other.T, extras={DECISION_THRESHOLD: 0.5}), _ctx(other))
    assert second.counts == {"tp": 0, "fp": 2, "fn": 2, "patches": 9} and second.value == 0.0
    preds = np.concatenate([PRED.ravel() >= 5.5, other.T.ravel() >= 0.5])
    targets = np.concatenate([[1, 0, 0, 0, 1, 0, 1, 0, 1], other.ravel() > 0])
    assert metric.aggregate([first, second, None], [{}] * 3) == pytest.approx(f1_score(targets, preds))  # pooled
    assert metric.aggregate([first.value, second.value], [{}] * 2) is None  # counts lost: no pooled value
    # a map without a decision threshold: the score does not apply (and needs no reference)
    assert metric.compute(sample, None, RelevanceMap(PRED), None) is None
    # the record keeps the value and the counts apart, and gives the Pooled back
    values, counts = split_pooled({"agreement_f1_operating": first, "agreement_f1": 0.5})
    assert values == {"agreement_f1_operating": first.value, "agreement_f1": 0.5}
    record = {"metrics": values, "counts": counts}
    assert recorded_value(record, "agreement_f1_operating") == first
    assert recorded_value(record, "agreement_f1") == 0.5


def test_agreement_undefined_is_none_not_zero():
    sample = Sample("s", "q", ["a"])
    flat = RelevanceMap(np.ones((3, 3), np.float32))
    ctx = _ctx(REF)
    assert AgreementPrecision().compute(sample, None, flat, ctx) is None  # no predicted positive
    assert AgreementSpearman().compute(sample, None, flat, ctx) is None
    assert AgreementRecall().compute(sample, None, flat, ctx) == 0.0  # defined: reference has positives
    both_flat = _ctx(np.ones((3, 3), np.float32))
    for cls in (AgreementIoU, AgreementF1, AgreementAUROC):
        assert cls().compute(sample, None, flat, both_flat) is None


def test_agreement_without_reference_names_why():
    sample = Sample("s7", "q", ["a"])
    with pytest.raises(XbenchError, match="no reference map for sample 's7': ref run failed"):
        AgreementF1().compute(sample, None, RelevanceMap(PRED), MetricContext(reference_error="ref run failed"))
    with pytest.raises(XbenchError, match="shape"):
        AgreementF1().compute(sample, None, RelevanceMap(PRED), _ctx(np.ones((2, 2), np.float32)))


# ----------------------------------------------------------------------------- faithfulness
class FakeVLM(VLM):
    """Answer probability s = 0.1 + 0.2 * sum(pixels) at every query position (2-word vocabulary);
    one pixel per cell, so the base class's perturbation and fill apply."""

    family = "fake"

    def __init__(self):
        super().__init__(ModelIdentity("fake"), "cpu", torch.float32, "eager")
        self.batches = []

    def pixel_cells(self, generation):
        return torch.arange(4).reshape(1, 1, 2, 2)

    def forward(self, generation, pixel_values=None, **kw):
        pv = generation.pixel_values if pixel_values is None else pixel_values
        self.batches.append(len(pv))
        s = 0.1 + 0.2 * pv.sum(dim=(1, 2, 3))
        T = generation.prompt_len + len(generation.answer_ids)
        logits = torch.stack([s.log(), (1 - s).log()], dim=-1)[:, None, :].expand(-1, T, -1)

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


def _faith_setup(answer_ids=(0,)):
    pv = torch.tensor([[[[2.0, 1.0], [0.5, 0.5]]]])  # 1 channel, 2x2 pixels, one pixel per patch; sum 4
    gen = Generation("s", "x", [5, 6, 7], list(answer_ids), [], single_grid((2, 2), (0, 0, 2, 2), (2, 2)), pixel_values=pv)
    rmap = RelevanceMap(np.array([[4, 3], [2, 1]], np.float32))  # order: patch 0, 1, 2, 3
    return Sample("s", "q", ["a"]), gen, rmap


def test_deletion_and_insertion_auc_hand_computed():
    sample, gen, rmap = _faith_setup()
    vlm = FakeVLM()
    ctx = MetricContext(vlm=vlm)
    # fill zero, one patch per step. deletion sums 4, 2, 1, .5, 0 -> s .9 .5 .3 .2 .1
    # trapezoid with dx .25: .25 * (.9/2 + .5 + .3 + .2 + .1/2) = .375
    assert DeletionAUC(steps=4, fill="zero").compute(sample, gen, rmap, ctx) == pytest.approx(0.375)
    # insertion sums 0, 2, 3, 3.5, 4 -> s .1 .5 .7 .8 .9 -> .25 * (.05 + 2.0 + .45) = .625
    assert InsertionAUC(steps=4, fill="zero").compute(sample, gen, rmap, ctx) == pytest.approx(0.625)
    assert vlm.batches == [5, 5]  # one batched forward per curve
    # fill mean (= 1): deletion sums 4, 3, 3, 3.5, 4 -> s .9 .7 .7 .8 .9 -> .25 * 3.1
    assert DeletionAUC(steps=4, fill="mean").compute(sample, gen, rmap, MetricContext(vlm=FakeVLM())) == pytest.approx(0.775)


def test_answer_score_whole_answer_or_first_token_and_chunking():
    sample, gen, rmap = _faith_setup(answer_ids=(0, 0))
    # two answer tokens, each with probability s: the answer's probability is s^2
    s = np.array([0.9, 0.5, 0.3, 0.2, 0.1])
    expected = float(np.sum((s[1:] ** 2 + s[:-1] ** 2) / 2) * 0.25)
    vlm = FakeVLM()
    got = DeletionAUC(steps=4, fill="zero", chunk=2).compute(sample, gen, rmap, MetricContext(vlm=vlm))
    assert got == pytest.approx(expected) and vlm.batches == [2, 2, 1]
    first = DeletionAUC(steps=4, fill="zero", score="first").compute(sample, gen, rmap, MetricContext(vlm=FakeVLM()))
    assert first == pytest.approx(0.375)


def test_random_order_control_and_cache():
    sample, gen, rmap = _faith_setup()
    vlm = FakeVLM()
    ctx = MetricContext(vlm=vlm, seed=3)
    perm = ctx.rng("faithfulness-random-order", sample.id).permutation(4)
    pixels = np.array([2.0, 1.0, 0.5, 0.5])
    removed = [pixels[perm[:i]].sum() for i in range(5)]
    curve = [0.1 + 0.2 * (4 - r) for r in removed]
    expected = sum((curve[i] + curve[i + 1]) / 2 * 0.25 for i in range(4))
    metric = DeletionAUCRandom(steps=4, fill="zero")
    assert metric.compute(sample, gen, rmap, ctx) == pytest.approx(expected)
    other_map = RelevanceMap(np.zeros((2, 2), np.float32))
    assert metric.compute(sample, gen, other_map, ctx) == pytest.approx(expected)  # ignores the map
    assert len(vlm.batches) == 1  # second call came from the per-sample cache
    assert DeletionAUCRandom.uses_map is False and InsertionAUCRandom.higher_is_better is None
    assert DeletionAUC.higher_is_better is False and InsertionAUC.higher_is_better is True


def test_ties_broken_by_seeded_random_order_not_row_major():
    sample, gen, _ = _faith_setup()
    flat = RelevanceMap(np.zeros((2, 2), np.float32))
    ctx = MetricContext(vlm=FakeVLM(), seed=0)
    values = {DeletionAUC(steps=4, fill="zero").compute(Sample(f"s{i}", "q", ["a"]), gen, flat, ctx) for i in range(8)}
    assert len(values) > 1  # a constant map's order differs across samples


def test_step_counts_and_parameter_checks():
    assert step_counts(64, 16).tolist() == list(range(0, 65, 4))
    assert step_counts(10, 4).tolist() == [0, 2, 5, 8, 10]  # round half to even: 2.5 -> 2, 7.5 -> 8
    with pytest.raises(ParameterError, match="fill"):
        DeletionAUC(fill="blur")
    with pytest.raises(ParameterError, match="steps"):
        InsertionAUC(steps=0)


# ----------------------------------------------------------------------------- localisation
def test_top_region_iou_hand_computed(tiny_vlm):
    """The mask is laid on a 2x2 grid by the LLaVA adapter (centre crop, area average)."""
    from types import SimpleNamespace

    from xbench.api import MetricContext

    gen, ctx = SimpleNamespace(grid=(2, 2), layout=single_grid((2, 2), (0, 0, 4, 4), (4, 4))), MetricContext(vlm=tiny_vlm)
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # top-left patch fully covered
    mask[0, 2] = True  # top-right patch covered 1/4: below min_cover 0.5
    sample = Sample("s", "q", ["a"], gt_mask=mask)
    rmap = RelevanceMap(np.array([[3, 0], [2, 1]], np.float32))
    assert TopRegionIoU(top_percent=50).compute(sample, gen, rmap, ctx) == pytest.approx(1 / 2)  # {0,2} vs {0}
    assert TopRegionIoU(top_percent=25).compute(sample, gen, rmap, ctx) == pytest.approx(1.0)  # {0} vs {0}
    assert TopRegionIoU(top_percent=25, min_cover=0.2).compute(sample, gen, rmap, ctx) == pytest.approx(1 / 2)
    assert TopRegionIoU(top_percent=25).compute(sample, gen, RelevanceMap(np.eye(2, dtype=np.float32)[::-1].copy()), ctx) == 0.0
    assert TopRegionIoU().compute(Sample("s", "q", ["a"]), gen, rmap, ctx) is None
    tiny = np.zeros((4, 4), bool)
    tiny[0, 0] = True
    assert TopRegionIoU().compute(Sample("s", "q", ["a"], gt_mask=tiny), gen, rmap, ctx) is None


# ----------------------------------------------------------------------------- confidence
def test_map_entropy_hand_computed():
    assert map_entropy(np.array([[1.0, 1.0], [0.0, 0.0]])) == pytest.approx(math.log(2) / math.log(4))
    assert map_entropy(np.ones((3, 3))) == pytest.approx(1.0)
    assert map_entropy(np.array([[5.0, -1.0], [0.0, 0.0]])) == pytest.approx(0.0)
    assert map_entropy(np.zeros((2, 2))) == 1.0  # nothing positive: as uncertain as uniform


def test_confidence_auroc_hand_computed():
    m = ConfidenceAUROC()
    sample = Sample("s", "q", ["a"])
    assert m.compute(sample, None, RelevanceMap(np.ones((2, 2), np.float32), extras={"confidence": 0.25})) == 0.75
    assert m.compute(sample, None, RelevanceMap(np.ones((2, 2), np.float32))) == pytest.approx(1.0)
    values = [0.9, 0.5, 0.3, 0.4, None]
    records = [{"scores": {"accuracy": a}} for a in (0.0, 1.0, 0.0, 1.0, 0.0)]
    # wrong: .9, .3 ; right: .5, .4 -> pairs won: .9>.5, .9>.4 -> 2 of 4
    assert m.aggregate(values, records) == pytest.approx(0.5)
    values[2] = 0.45
    assert m.aggregate(values, records) == pytest.approx(3 / 4)
    assert m.aggregate([0.1, 0.2], [{"scores": {"accuracy": 1.0}}] * 2) is None  # no wrong answer


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_matches_scipy_percentile_interval_for_a_mean():
    from scipy.stats import bootstrap as scipy_bootstrap

    x = np.random.default_rng(1).normal(size=200)
    ours = bootstrap(lambda idx: {"mean": x[idx].mean()}, len(x), seed=0)["mean"]
    ref = scipy_bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.03) and ours[1] == pytest.approx(ref.high, abs=0.03)
    assert ours[0] < x.mean() < ours[1]
    assert bootstrap(lambda idx: {"mean": x[idx].mean()}, len(x), seed=0)["mean"] == ours  # seeded


def test_bootstrap_undefined_statistic_and_tiny_n():
    assert bootstrap(lambda idx: {"m": None}, 10) == {"m": None}
    assert bootstrap(lambda idx: {"m": 1.0}, 1) == {"m": None}
