"""Agreement of a map with the reference method's map for the same generation.

Both maps are min-max normalised per sample (a constant map becomes all zeros) and the
binary scores compare ``normalised >= tau`` patch by patch (``tau`` default 0.3, the
FastRM labelling threshold), the reference giving the labels: accuracy, precision,
recall, F1 and IoU (Jaccard). AUROC scores the method's continuous normalised map
against the binarised reference; Spearman correlates the two continuous maps. A score
that is undefined on a sample (no positive patch, a constant map) is None there, not 0.
scikit-learn and scipy compute them.
"""

from __future__ import annotations

import warnings

import numpy as np

from xbench.api import Metric
from xbench.errors import MapValidationError, XbenchError
from xbench.hookspecs import hookimpl
from xbench.params import Param

DEFAULT_TAU = 0.3


def normalise(grid: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1]; a constant map becomes zeros."""
    g = np.asarray(grid, dtype=np.float64)
    lo, hi = float(g.min()), float(g.max())
    return np.zeros_like(g) if hi <= lo else (g - lo) / (hi - lo)


def binarise(grid: np.ndarray, tau: float) -> np.ndarray:
    """``normalise(grid) >= tau`` (a constant map has no positive patch)."""
    g = normalise(grid)
    return (g >= tau) & (g.max() > 0)


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
        ref = None if context is None else context.reference
        if ref is None:
            why = context.reference_error if context is not None else None
            raise XbenchError(f"no reference map for sample {sample.id!r}" + (f": {why}" if why else ""))
        if ref.grid.shape != rmap.grid.shape:
            raise MapValidationError(f"reference map shape {ref.grid.shape} differs from the map's {rmap.grid.shape}")
        return self.score(np.asarray(rmap.grid).ravel(), np.asarray(ref.grid).ravel(), self.params["tau"])

    def score(self, pred: np.ndarray, ref: np.ndarray, tau: float) -> float | None:
        raise NotImplementedError


class BinaryAgreement(Agreement):
    """A scikit-learn binary score of ``binarise(map)`` against ``binarise(reference)``."""

    @staticmethod
    def sklearn_score(y_true, y_pred):
        raise NotImplementedError

    def score(self, pred, ref, tau):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _none_if_nan(type(self).sklearn_score(binarise(ref, tau), binarise(pred, tau)))


def _sk(name: str, **kw):
    def fn(y_true, y_pred):
        import sklearn.metrics

        return getattr(sklearn.metrics, name)(y_true, y_pred, **kw)

    return staticmethod(fn)


class AgreementAccuracy(BinaryAgreement):
    name = "agreement_accuracy"
    description = "share of patches where the binarised map and reference agree"
    sklearn_score = _sk("accuracy_score")


class AgreementPrecision(BinaryAgreement):
    name = "agreement_precision"
    description = "precision of the binarised map against the binarised reference"
    sklearn_score = _sk("precision_score", zero_division=np.nan)


class AgreementRecall(BinaryAgreement):
    name = "agreement_recall"
    description = "recall of the binarised map against the binarised reference"
    sklearn_score = _sk("recall_score", zero_division=np.nan)


class AgreementF1(BinaryAgreement):
    name = "agreement_f1"
    description = "F1 of the binarised map against the binarised reference (FastRM's score)"
    sklearn_score = _sk("f1_score", zero_division=np.nan)


class AgreementIoU(BinaryAgreement):
    name = "agreement_iou"
    description = "IoU (Jaccard) of the binarised map and the binarised reference"
    sklearn_score = _sk("jaccard_score", zero_division=0.0)  # scikit-learn has no NaN option here

    def score(self, pred, ref, tau):
        if not (binarise(ref, tau) | binarise(pred, tau)).any():
            return None  # empty union: undefined
        return super().score(pred, ref, tau)


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


AGREEMENT_METRICS = (
    AgreementAccuracy,
    AgreementPrecision,
    AgreementRecall,
    AgreementF1,
    AgreementIoU,
    AgreementAUROC,
    AgreementSpearman,
)


@hookimpl
def xbench_register_metrics(registry):
    for cls in AGREEMENT_METRICS:
        registry.register(cls)
