"""Confidence: can a method's uncertainty tell wrong answers from right ones?

Per sample the metric records an uncertainty score: ``1 - extras["confidence"]`` when the
method provides a confidence (higher = more certain; FastRM's is ``1 - entropy / log(P)`` of
its predicted map normalised to a distribution), otherwise the entropy of the map itself,
normalised to [0, 1]: ``H(p) / log(P)`` with ``p = clip(map, 0) / sum`` over the P patches
(a map with no positive value counts as uniform, entropy 1).

The run's value is the AUROC of that score for predicting wrong answers (a sample is wrong
when the task's ``score_key`` score, default ``accuracy``, is below ``wrong_below``,
default 0.5); None when the run has only right or only wrong answers.
"""

from __future__ import annotations

from xbench.api import Metric
from xbench.hookspecs import hookimpl
from xbench.maps import map_entropy
from xbench.params import Param


class ConfidenceAUROC(Metric):
    name = "confidence_auroc"
    description = "AUROC of the map's uncertainty (FastRM confidence or map entropy) for wrong answers"
    category = "confidence"
    higher_is_better = True

    parameters = {
        "score_key": Param("accuracy", doc="the task score telling right answers from wrong ones"),
        "wrong_below": Param(0.5, doc="an answer is wrong when its score is below this"),
    }

    def compute(self, sample, generation, rmap):
        if "confidence" in rmap.extras:
            return 1.0 - float(rmap.extras["confidence"])
        return map_entropy(rmap.grid)

    def aggregate(self, values, records):
        from sklearn.metrics import roc_auc_score

        key, below = self.params["score_key"], self.params["wrong_below"]
        pairs = [(v, r["scores"].get(key)) for v, r in zip(values, records)]
        pairs = [(float(v), float(s) < below) for v, s in pairs if v is not None and s is not None]
        wrong = [w for _, w in pairs]
        if not pairs or all(wrong) or not any(wrong):
            return None
        return float(roc_auc_score(wrong, [v for v, _ in pairs]))


@hookimpl
def xbench_register_metrics(registry):
    registry.register(ConfidenceAUROC)
