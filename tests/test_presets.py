"""Metric presets (``--metrics default|all|<category>|<preset>``), declared on the metric classes."""

import pytest

from xbench import presets
from xbench.api import Metric
from xbench.cli import main
from xbench.errors import UnknownNameError
from xbench.hookspecs import hookimpl
from xbench.plugins import build
from xbench.runner import RunConfig, run

FAITHFULNESS = ["deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random"]


class Costly(Metric):
    """An outside metric that keeps itself out of the default set and names its own preset."""

    name = "costly"
    description = "a metric too slow for a quick run"
    category = "localisation"
    presets = frozenset({"slow"})

    def compute(self, sample, generation, rmap):
        return float(rmap.grid.max())


class Extra:
    @hookimpl
    def xbench_register_metrics(self, registry):
        registry.register(Costly)


def test_default_preset_is_quick_and_all_is_everything(plugins):
    reg = plugins.registries.metrics
    default = presets.resolve(None, reg)
    assert default == presets.resolve(["default"], reg)
    assert not set(FAITHFULNESS) & set(default)
    assert {"agreement_f1", "agreement_auroc", "energy_in_mask", "pointing_game", "confidence_auroc",
            "sanity_spearman"} <= set(default)
    assert set(default) == {e.name for e in reg if "default" in e.obj.presets}
    assert presets.resolve(["all"], reg) == reg.names()
    assert presets.resolve(["faithfulness"], reg) == FAITHFULNESS


def test_presets_and_names_mix_in_order_each_once(plugins):
    reg = plugins.registries.metrics
    got = presets.resolve(["pointing_game", "localisation", "agreement_f1"], reg)
    assert got == ["pointing_game", "energy_in_mask", "top_region_iou", "agreement_f1"]


def test_membership_is_declared_on_the_class():
    reg = build(extra_plugins=(Extra(),), load_entry_points=False).registries.metrics
    assert "costly" not in presets.resolve(None, reg)
    assert presets.resolve(["slow"], reg) == ["costly"]
    assert "costly" in presets.resolve(["localisation"], reg) and "costly" in presets.resolve(["all"], reg)


def test_unknown_name_gets_a_did_you_mean(plugins):
    reg = plugins.registries.metrics
    with pytest.raises(UnknownNameError, match="unknown metric 'faithfulnes'. Did you mean 'faithfulness'"):
        presets.resolve(["faithfulnes"], reg)
    with pytest.raises(UnknownNameError, match="Did you mean 'agreement_f1'"):
        presets.resolve(["agreement_f"], reg)


def test_cli_refuses_an_unknown_preset_in_one_line(capsys):
    assert main(["run", "--method", "rollout", "--metrics", "defualt", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("xbench: error: ") and "Did you mean 'default'?" in err


def test_a_default_run_has_no_faithfulness_columns(plugins, tmp_path):
    summary = run(RunConfig(method="rollout", model="tiny-random-llava", limit=2, out=tmp_path / "r", warmup=0,
                            progress=False), plugins)
    cols = set(summary["metrics"])
    assert "agreement_f1" in cols and "energy_in_mask" in cols and "explain_ms_p50" in cols
    assert not {c for c in cols if c.startswith(("deletion", "insertion"))}
    assert summary["config"]["metrics"] is None
