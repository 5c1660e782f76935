"""Confidence: can an uncertainty score tell wrong answers from right ones?

Both metrics record an uncertainty score per sample (higher = less certain) and take as the
run's value the AUROC of that score for predicting wrong answers (a sample is wrong when the
task's ``score_key`` score, default ``accuracy``, is below ``wrong_below``, default 0.5); None
when the run has only right or only wrong answers. AUROC 0.5 is chance; below 0.5 the score
ranks right answers as the less certain ones.

* ``confidence_auroc``: the map's uncertainty. ``1 - extras["confidence"]`` when the method
  provides a confidence (FastRM's is ``1 - entropy / log(P)`` of its predicted map normalised
  to a distribution), otherwise the entropy of the map itself, normalised to [0, 1]:
  ``H(p) / log(P)`` with ``p = clip(map, 0) / sum`` over the P patches (a map with no positive
  value counts as uniform, entropy 1).
* ``answer_prob_auroc``: the answer's own uncertainty, ``1 - p(answer)``, where ``p(answer)``
  is the probability of the generated answer tokens (their product) under the model, read
  from one teacher-forced forward of the generation (``vlm.forward``) with a float64 softmax
  over the whole vocabulary. It ignores the map (the same for every method on the same
  generations): the baseline a map-based confidence has to beat to be worth computing.
"""

from __future__ import annotations

import math

from xbench.api import MODEL, Metric
from xbench.hookspecs import hookimpl
from xbench.maps import map_entropy
from xbench.params import Param


class WrongAnswerAUROC(Metric):
    """Shared parameters and run value: the AUROC of the per-sample uncertainty for wrong answers."""

    category = "confidence"
    higher_is_better = True

    parameters = {
        "score_key": Param("accuracy", doc="the task score telling right answers from wrong ones"),
        "wrong_below": Param(0.5, doc="an answer is wrong when its score is below this"),
    }

    def aggregate(self, values, records):
        from sklearn.metrics import roc_auc_score

        key, below = self.params["score_key"], self.params["wrong_below"]
        pairs = [(v, r["scores"].get(key)) for v, r in zip(values, records)]
        pairs = [(float(v), float(s) < below) for v, s in pairs if v is not None and s is not None]
        wrong = [w for _, w in pairs]
        if not pairs or all(wrong) or not any(wrong):
            return None
        return float(roc_auc_score(wrong, [v for v, _ in pairs]))


class ConfidenceAUROC(WrongAnswerAUROC):
    name = "confidence_auroc"
    description = "AUROC of the map's uncertainty (FastRM confidence or map entropy) for wrong answers"

    def compute(self, sample, generation, rmap):
        if "confidence" in rmap.extras:
            return 1.0 - float(rmap.extras["confidence"])
        return map_entropy(rmap.grid)


def answer_log_probability(vlm, generation) -> float:
    """``log p(answer)``: the sum over the generated answer tokens of their log-softmax (float64)
    at the positions that predicted them, in one teacher-forced forward of ``generation``."""
    import torch

    positions = generation.query_positions
    with torch.no_grad():
        logits = vlm.forward(generation, logits_to_keep=len(positions) + 1).logits[0, : len(positions)]
    logp = torch.log_softmax(logits.double(), dim=-1)
    targets = torch.tensor(generation.answer_ids, device=logp.device)
    return float(logp.gather(-1, targets[:, None]).sum())


class AnswerProbabilityAUROC(WrongAnswerAUROC):
    name = "answer_prob_auroc"
    description = "AUROC of the answer's own uncertainty (1 - its probability under the model) for wrong answers: the baseline"
    needs = frozenset({MODEL})
    uses_map = False
    presets = frozenset()  # one more forward per sample: with --metrics confidence / all

    def compute(self, sample, generation, rmap, context=None):
        return -math.expm1(answer_log_probability(context.vlm, generation))  # 1 - p, exact near p = 1


@hookimpl
def xbench_register_metrics(registry):
    registry.register(ConfidenceAUROC)
    registry.register(AnswerProbabilityAUROC)
