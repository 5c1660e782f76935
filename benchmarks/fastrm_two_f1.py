"""The gap between `xbench fastrm evaluate`'s F1 and the leaderboard's `agreement_f1`, on the same test labels.

The shipped attention proxy's map on the 1,000 test questions of `xbench fastrm evaluate` (labels from the cache
under $XBENCH_HOME/fastrm, made on first use), cut two ways (at the proxy's decision threshold; min-max normalised
at tau, the leaderboard's rule) and combined two ways (pooled over patches; mean of per-sample F1).
Prints JSON (results/fastrm/two_f1.json): ``python benchmarks/fastrm_two_f1.py > results/fastrm/two_f1.json``.
"""
import json
import numpy as np
from xbench.cli import build_parser
from xbench.fastrm.cli import _context
from xbench.fastrm.evaluate import predict
from xbench.fastrm.proxy import FastRMProxy
from xbench.maps import binarise
from sklearn.metrics import f1_score

P = "xbench/fastrm/data/proxies/tiny-llava-easyvqa-attention"
args = build_parser().parse_args(["fastrm", "evaluate", "--proxy", P, "--threads", "2", "--no-progress"])
ctx = _context(args)
labels = ctx.test()
proxy = FastRMProxy.load(P)
probs, _ = predict(proxy, labels)
targets = labels.targets(0.3)
t = proxy.decision_threshold
op = probs >= t
tau_rule = np.stack([binarise(p, 0.3) for p in probs])  # the leaderboard's rule on the proxy's map
def pooled(pred): return float(f1_score(targets.ravel(), pred.ravel()))
def per_sample(pred):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vals = [f1_score(y, p, zero_division=np.nan) for y, p in zip(targets, pred)]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)), len(vals)
out = {
    "n": len(labels), "threshold": t,
    "operating_pooled": pooled(op), "operating_per_sample_mean": per_sample(op),
    "tau_rule_pooled": pooled(tau_rule), "tau_rule_per_sample_mean": per_sample(tau_rule),
    "positive_rate": float(targets.mean()), "predicted_rate_operating": float(op.mean()),
    "predicted_rate_tau_rule": float(tau_rule.mean()),
    "precision_recall_operating": [float((op & targets).sum() / op.sum()), float((op & targets).sum() / targets.sum())],
    "precision_recall_tau_rule": [float((tau_rule & targets).sum() / tau_rule.sum()), float((tau_rule & targets).sum() / targets.sum())],
}
print(json.dumps(out, indent=1))
