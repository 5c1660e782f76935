"""The metric contract in runs: context for metrics with needs, references, the randomized control, intervals."""

import json
import shutil

import numpy as np
import pytest

from xbench.api import Metric
from xbench.errors import ParameterError, RunDirectoryError, UnknownNameError
from xbench.hookspecs import hookimpl
from xbench.metrics.agreement import AgreementF1
from xbench.plugins import build
from xbench.records import read_records
from xbench.columns import control_column
from xbench.runner import DEFAULT_MODEL, RunConfig, run

LIMIT = 4
AGREEMENT = ["agreement_f1", "agreement_spearman"]


def _cfg(out, **kw):
    base = dict(model="tiny-random-llava", limit=LIMIT, out=out, warmup=0, progress=False, batch_size=2)
    base.update(kw)
    return RunConfig(**base)


class Probe(Metric):
    """Records what the runner hands over."""

    name = "probe"
    category = "agreement"
    needs = frozenset({"model", "reference"})
    seen: list = []

    def compute(self, sample, generation, rmap, context=None):
        Probe.seen.append((sample.id, context))
        return float(np.abs(context.reference.grid - rmap.grid).max())


class OldStyle(Metric):
    """A metric written before the context existed: three arguments only."""

    name = "old_style"
    category = "localisation"

    def compute(self, sample, generation, rmap):
        return float(rmap.grid.max())


class Extra:
    @hookimpl
    def xbench_register_metrics(self, registry):
        registry.register(Probe)
        registry.register(OldStyle)


@pytest.fixture(scope="module")
def extra_plugins():
    return build(extra_plugins=(Extra(),), load_entry_points=False)


def test_context_reaches_metrics_that_declare_needs(extra_plugins, tmp_path):
    Probe.seen.clear()
    summary = run(_cfg(tmp_path / "r", method="rollout", reference="rollout", metrics=["probe", "old_style"]), extra_plugins)
    assert [sid for sid, _ in Probe.seen] == [r["id"] for r in read_records(tmp_path / "r" / "samples.jsonl")]
    ctx = Probe.seen[0][1]
    assert ctx.vlm is not None and ctx.vlm.name == "tiny-random-llava" and ctx.reference is not None
    # the method is its own reference: the reference is its map
    assert summary["metrics"]["probe"]["value"] == 0.0
    assert summary["metrics"]["old_style"]["value"] > 0
    assert summary["reference"] == {"method": "rollout", "params": {"residual": 0.5, "token": "mean"}, "source": "same run"}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, plugins):
    out = tmp_path_factory.mktemp("ref") / "grad"
    run(_cfg(out, method="gradient_relevancy", metrics=["energy_in_mask"]), plugins)
    return out


def test_in_run_reference_equals_a_recorded_reference(plugins, reference_run, tmp_path):
    in_run = run(_cfg(tmp_path / "a", method="raw_attention", metrics=AGREEMENT), plugins)
    recorded = run(_cfg(tmp_path / "b", method="raw_attention", metrics=AGREEMENT, reference_run=reference_run), plugins)
    a = read_records(tmp_path / "a" / "samples.jsonl")
    b = read_records(tmp_path / "b" / "samples.jsonl")
    for ra, rb in zip(a, b):
        for m in AGREEMENT:
            assert ra["metrics"][m] == pytest.approx(rb["metrics"][m], abs=1e-5)
    assert in_run["reference"]["source"] == "same run" and in_run["reference"]["method"] == "gradient_relevancy"
    assert recorded["reference"]["source"] == str(reference_run) and recorded["reference"]["method"] == "gradient_relevancy"
    # a hand check of one sample: F1 against the recorded map
    ref_rec = {r["id"]: r for r in read_records(reference_run / "samples.jsonl")}
    r0 = b[0]
    from xbench.api import MetricContext, RelevanceMap, Sample

    f1 = AgreementF1().compute(
        Sample(r0["id"], "q", ["a"]), None, RelevanceMap(np.asarray(r0["map"], np.float32)),
        MetricContext(reference=RelevanceMap(np.asarray(ref_rec[r0["id"]]["map"], np.float32))),
    )
    assert r0["metrics"]["agreement_f1"] == pytest.approx(f1, abs=1e-4)


def test_recorded_reference_must_match_model_and_samples(plugins, reference_run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(reference_run, bad)
    summary = json.loads((bad / "summary.json").read_text())
    summary["model"]["model_hash"] = "0" * 16
    (bad / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(RunDirectoryError, match="another model weights"):
        run(_cfg(tmp_path / "r", method="rollout", metrics=AGREEMENT, reference_run=bad), plugins)
    with pytest.raises(RunDirectoryError, match="no summary.json"):
        run(_cfg(tmp_path / "r2", method="rollout", metrics=AGREEMENT, reference_run=tmp_path / "nowhere"), plugins)
    # samples the reference run did not cover get a per-sample note, not a crash
    summary = run(_cfg(tmp_path / "r3", method="rollout", metrics=AGREEMENT, reference_run=reference_run, limit=LIMIT + 2), plugins)
    records = read_records(tmp_path / "r3" / "samples.jsonl")
    missing = [r for r in records if r["metrics"]["agreement_f1"] is None]
    assert len(missing) == 2 and "has no record of sample" in missing[0]["meta"]["metric_errors"]["agreement_f1"]
    assert summary["metrics"]["agreement_f1"]["n"] == LIMIT


def test_unknown_reference_and_metric_params(plugins, tmp_path):
    with pytest.raises(UnknownNameError, match="gradient_relevancy"):
        run(_cfg(tmp_path / "a", method="rollout", metrics=AGREEMENT, reference="gradient_relevence"), plugins)
    with pytest.raises(ParameterError, match=r"no selected metric takes parameter\(s\) \['tua'\]"):
        run(_cfg(tmp_path / "b", method="rollout", metrics=AGREEMENT, metric_params={"tua": 0.5}), plugins)


@pytest.fixture(scope="module")
def control_run(tmp_path_factory, plugins):
    out = tmp_path_factory.mktemp("ctl") / "run"
    metrics = ["energy_in_mask", "deletion_auc", "deletion_auc_random", "agreement_f1", "confidence_auroc"]
    summary = run(_cfg(out, method="rollout", control="randomized", metrics=metrics,
                       metric_params={"steps": 4, "tau": 0.5}), plugins)
    return out, summary


def test_control_columns_beside_each_map_metric(control_run):
    out, summary = control_run
    records = read_records(out / "samples.jsonl")
    for r in records:
        cols = set(r["metrics"])
        assert {"energy_in_mask@control", "deletion_auc@control", "agreement_f1@control"} <= cols
        assert "deletion_auc_random@control" not in cols  # a random order does not depend on the map
        assert not np.allclose(r["map"], r["control_map"])
    m = summary["metrics"]
    entry = m["energy_in_mask@control"]
    assert entry["control_of"] == "energy_in_mask" and entry["higher_is_better"] is None
    assert entry["value"] == pytest.approx(np.mean([r["metrics"]["energy_in_mask@control"] for r in records]))
    assert summary["control"]["kind"] == "randomized" and "randomized" in summary["control"]["model"]
    assert summary["metric_params"]["agreement_f1"] == {"tau": 0.5}
    assert summary["metric_params"]["deletion_auc"]["steps"] == 4


def test_control_model_is_a_seeded_reinit_of_the_same_architecture(tiny_vlm):
    import torch

    a, b = tiny_vlm.randomized(5), tiny_vlm.randomized(5)
    pa, pb, p0 = (dict(v.model.named_parameters()) for v in (a, b, tiny_vlm))
    assert pa.keys() == p0.keys() and all(pa[k].shape == p0[k].shape for k in pa)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)  # seeded
    assert any(not torch.equal(pa[k], p0[k]) for k in pa)  # re-randomised
    assert a.model.config.to_dict() == tiny_vlm.model.config.to_dict()


def test_summary_intervals(control_run):
    out, summary = control_run
    records = read_records(out / "samples.jsonl")
    for name in ("accuracy", "energy_in_mask", "deletion_auc", "explain_ms_p50"):
        lo, hi = summary["metrics"][name]["ci95"]
        assert lo <= summary["metrics"][name]["value"] <= hi, name
    values = [r["metrics"]["energy_in_mask"] for r in records]
    lo, hi = summary["metrics"]["energy_in_mask"]["ci95"]
    assert min(values) <= lo and hi <= max(values)
    assert summary["bootstrap"] == {"resamples": 1000, "level": 0.95, "method": "percentile", "seed": 0}


def test_random_order_deletion_is_worse_than_gradient_relevancy_on_the_default_model(plugins, tmp_path):
    """Acceptance: on the default model, deleting patches in gradient relevancy's order lowers the
    answer's probability faster than a random order (the in-run control)."""
    cfg = RunConfig(method="gradient_relevancy", model=DEFAULT_MODEL, limit=24, out=tmp_path / "g", warmup=0,
                    progress=False, batch_size=8, metrics=["deletion_auc", "deletion_auc_random"],
                    metric_params={"steps": 8})
    summary = run(cfg, plugins)
    m = summary["metrics"]
    assert m["deletion_auc"]["n"] == m["deletion_auc_random"]["n"] == 24
    assert m["deletion_auc_random"]["value"] > m["deletion_auc"]["value"] + 0.02, (m["deletion_auc"], m["deletion_auc_random"])
    assert summary["model"]["id"] == DEFAULT_MODEL == "tiny-llava-easyvqa" and m["accuracy"]["value"] > 0.9


CATEGORIES = {"answer", "agreement", "faithfulness", "localisation", "confidence", "sanity", "cost"}


def test_every_registered_metric_keeps_the_contract_in_an_all_metrics_run(plugins, tmp_path):
    """Every metric (built-in or not) declares what the leaderboard needs and lands in a ``--metrics all`` run."""
    reg = plugins.registries.metrics
    for entry in reg:
        cls = entry.obj
        assert cls.category in CATEGORIES and cls.higher_is_better in (True, False, None), entry.name
        assert cls.needs <= {"model", "reference", "control"} and cls.description, entry.name
        cls()  # defaults construct
    summary = run(_cfg(tmp_path / "r", method="rollout", limit=3, control="randomized", metrics=["all"],
                       metric_params={"steps": 2}), plugins)
    records = read_records(tmp_path / "r" / "samples.jsonl")
    assert not [r["meta"]["metric_errors"] for r in records if "metric_errors" in r.get("meta", {})]
    for entry in reg:
        on_control = entry.obj.uses_map and "control" not in entry.obj.needs
        cols = [entry.name] + ([control_column(entry.name)] if on_control else [])
        for col in cols:
            assert all(col in r["metrics"] for r in records), col
            values = [r["metrics"][col] for r in records]
            assert all(v is None or np.isfinite(v) for v in values), col
    assert {"agreement_f1", "deletion_auc", "energy_in_mask", "top_region_iou", "sanity_spearman"} <= set(summary["metrics"])


def test_in_run_reference_keeps_the_methods_loading(plugins, tmp_path):
    """A method without attention needs stays on sdpa; the reference switches to eager only for its own
    call and gives the maps an eager-loaded model gives."""
    from xbench.api import RelevanceMap
    from xbench.companions import InRunReference
    from xbench.models import load_vlm

    summary = run(_cfg(tmp_path / "r", method="random", metrics=["agreement_f1"]), plugins)
    assert summary["model"]["attn_implementation"] == "sdpa" and summary["metrics"]["agreement_f1"]["n"] == LIMIT
    task, samples = plugins.registries.tasks.get("easyvqa")(), None
    samples = list(task.samples(limit=2))
    sdpa = load_vlm("tiny-random-llava", plugins.registries, device="cpu")
    gens = sdpa.generate(samples, [task.prompt(s) for s in samples], 4)
    ref = plugins.registries.methods.get("gradient_relevancy")()
    maps = InRunReference(ref, False).maps(sdpa, gens, [None, None])
    assert sdpa.attn_implementation == "sdpa" and sdpa.model.config.text_config._attn_implementation == "sdpa"
    eager = load_vlm("tiny-random-llava", plugins.registries, device="cpu", needs=frozenset({"attentions"}))
    for got, want in zip(maps, ref.explain(eager, gens)):
        assert isinstance(got, RelevanceMap)
        np.testing.assert_allclose(got.grid, want.grid, rtol=1e-5, atol=1e-7)
