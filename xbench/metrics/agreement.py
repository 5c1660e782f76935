"""Agreement of a map with the reference method's map for the same generation.

Both maps are min-max normalised per sample (a constant map becomes all zeros) and the
binary scores compare ``normalised >= tau`` patch by patch (``tau`` default 0.3, the
FastRM labelling threshold), the reference giving the labels: accuracy, precision,
recall, F1 and IoU (Jaccard). AUROC scores the method's continuous normalised map
against the binarised reference; Spearman correlates the two continuous maps. A score
that is undefined on a sample (no positive patch, a constant map) is None there, not 0.
The binary scores come from the patch counts (checked against scikit-learn in the tests);
scikit-learn computes the AUROC and scipy the Spearman correlation.

``agreement_f1_operating`` scores a method at its own operating point instead: its map cut at
the decision threshold it carries (``RelevanceMap.extras[DECISION_THRESHOLD]``, FastRM's
proxy threshold) against the same binarised reference, pooled over the patches of every
sample as ``xbench fastrm evaluate`` scores; None for methods without a threshold.
"""

from __future__ import annotations

import numpy as np

from xbench.api import DECISION_THRESHOLD, Metric, Pooled
from xbench.errors import MapValidationError, XbenchError
from xbench.hookspecs import hookimpl
from xbench.maps import DEFAULT_TAU, LABEL_DTYPE, binarise, binarise_each, normalise
from xbench.params import Param

def _none_if_nan(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


class Agreement(Metric):
    """Base of the agreement metrics: fetches and checks the reference map."""

    category = "agreement"
    higher_is_better = True
    needs = frozenset({"reference"})

    parameters = {"tau": Param(DEFAULT_TAU, min=0.0, max=1.0, doc="threshold on the min-max normalised maps")}

    def compute(self, sample, generation, rmap, context=None):
        ref = self.reference_grid(sample, rmap, context)
        return self.score(np.asarray(rmap.grid).ravel(), ref.ravel(), self.params["tau"])

    @staticmethod
    def reference_grid(sample, rmap, context) -> np.ndarray:
        """The reference map of ``sample``, checked to have the map's shape."""
        ref = None if context is None else context.reference
        if ref is None:
            why = context.reference_error if context is not None else None
            raise XbenchError(f"no reference map for sample {sample.id!r}" + (f": {why}" if why else ""))
        if ref.grid.shape != rmap.grid.shape:
            raise MapValidationError(f"reference map shape {ref.grid.shape} differs from the map's {rmap.grid.shape}")
        return np.asarray(ref.grid)

    def score(self, pred: np.ndarray, ref: np.ndarray, tau: float) -> float | None:
        raise NotImplementedError


class BinaryAgreement(Agreement):
    """A binary score of ``binarise(map)`` against ``binarise(reference)``, from the patch counts.

    Subclasses give :meth:`from_counts`; the counts are taken once per call with numpy (the
    scores equal scikit-learn's ``accuracy_score``, ``precision_score``, ``recall_score``,
    ``f1_score`` with ``zero_division=nan`` and ``jaccard_score``: tests/test_quality_metrics.py
    checks them against it on random maps), since scikit-learn's input validation costs more
    than the scores on maps of a few hundred patches.
    """

    @staticmethod
    def from_counts(tp: int, fp: int, fn: int, tn: int) -> float | None:
        raise NotImplementedError

    def score(self, pred, ref, tau):
        y_true, y_pred = binarise(ref, tau), binarise(pred, tau)
        tp = int(np.count_nonzero(y_true & y_pred))
        fp = int(np.count_nonzero(y_pred)) - tp
        fn = int(np.count_nonzero(y_true)) - tp
        return type(self).from_counts(tp, fp, fn, y_true.size - tp - fp - fn)


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``; None (undefined) when the denominator is 0."""
    return None if denominator == 0 else numerator / denominator


class AgreementAccuracy(BinaryAgreement):
    name = "agreement_accuracy"
    description = "share of patches where the binarised map and reference agree"

    @staticmethod
    def from_counts(tp, fp, fn, tn):
        return _ratio(tp + tn, tp + fp + fn + tn)


class AgreementPrecision(BinaryAgreement):
    name = "agreement_precision"
    description = "precision of the binarised map against the binarised reference"

    @staticmethod
    def from_counts(tp, fp, fn, tn):
        return _ratio(tp, tp + fp)


class AgreementRecall(BinaryAgreement):
    name = "agreement_recall"
    description = "recall of the binarised map against the binarised reference"

    @staticmethod
    def from_counts(tp, fp, fn, tn):
        return _ratio(tp, tp + fn)


class AgreementF1(BinaryAgreement):
    name = "agreement_f1"
    description = "F1 of the binarised map against the binarised reference (every map cut at tau: the common rule)"

    @staticmethod
    def from_counts(tp, fp, fn, tn):
        return _f1(tp, fp, fn)


class AgreementIoU(BinaryAgreement):
    name = "agreement_iou"
    description = "IoU (Jaccard) of the binarised map and the binarised reference"

    @staticmethod
    def from_counts(tp, fp, fn, tn):
        return _ratio(tp, tp + fp + fn)  # empty union: undefined


class AgreementAUROC(Agreement):
    name = "agreement_auroc"
    description = "AUROC of the continuous map for the binarised reference's patches"

    def score(self, pred, ref, tau):
        from sklearn.metrics import roc_auc_score

        labels = binarise(ref, tau)
        if labels.all() or not labels.any():
            return None
        return float(roc_auc_score(labels, normalise(pred)))


class AgreementSpearman(Agreement):
    name = "agreement_spearman"
    description = "Spearman rank correlation of the map with the reference map"

    def score(self, pred, ref, tau):
        from scipy.stats import spearmanr

        if np.ptp(pred) == 0 or np.ptp(ref) == 0:
            return None
        return _none_if_nan(spearmanr(pred, ref).statistic)


def _f1(tp: float, fp: float, fn: float) -> float | None:
    """``2 tp / (2 tp + fp + fn)``; None when there is no positive patch in map or reference."""
    return None if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


class AgreementF1Operating(Agreement):
    """F1 at the method's own operating point, pooled over every patch of every sample.

    A patch is predicted relevant when the method's map reaches the method's own decision
    threshold (``extras[DECISION_THRESHOLD]``, for FastRM the one its proxy chose on
    validation); the target is the reference map min-max normalised and binarised at tau, in
    the precision FastRM's labels use (float32), so that the run's value is the F1 ``xbench
    fastrm evaluate`` reports on the same samples. Each sample records its own F1 and its
    true-positive, false-positive and false-negative patch counts (a :class:`~xbench.api.Pooled`
    value); the run's value is the F1 of the summed counts. None for a method whose maps carry
    no decision threshold (the score does not apply), and where no patch is positive in either map.
    """

    name = "agreement_f1_operating"
    description = (
        "F1 of the map cut at the method's own decision threshold against the binarised reference, "
        "pooled over the patches of every sample (FastRM: its proxy's threshold, as `xbench fastrm evaluate`)"
    )

    def compute(self, sample, generation, rmap, context=None):
        threshold = rmap.extras.get(DECISION_THRESHOLD)
        if threshold is None:
            return None
        ref = self.reference_grid(sample, rmap, context)
        target = binarise_each(ref.reshape(1, -1), float(self.params["tau"]), LABEL_DTYPE)[0]
        pred = np.asarray(rmap.grid, dtype=np.float64).ravel() >= float(threshold)
        counts = {
            "tp": int((pred & target).sum()),
            "fp": int((pred & ~target).sum()),
            "fn": int((~pred & target).sum()),
            "patches": int(pred.size),
        }
        return Pooled(_f1(counts["tp"], counts["fp"], counts["fn"]), counts)

    def aggregate(self, values, records):
        pooled = [v.counts for v in values if isinstance(v, Pooled)]
        if not pooled:
            return None
        return _f1(*(sum(c[k] for c in pooled) for k in ("tp", "fp", "fn")))


AGREEMENT_METRICS = (
    AgreementAccuracy,
    AgreementPrecision,
    AgreementRecall,
    AgreementF1,
    AgreementF1Operating,
    AgreementIoU,
    AgreementAUROC,
    AgreementSpearman,
)


@hookimpl
def xbench_register_metrics(registry):
    for cls in AGREEMENT_METRICS:
        registry.register(cls)
