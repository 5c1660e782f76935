"""The model-randomisation sanity benchmark: what it re-initialises, and its report on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def sanity(benchmark_script):
    return benchmark_script("sanity_randomization")


def test_randomise_touches_only_the_named_modules(sanity, plugins):
    from xbench.models import load_vlm

    vlm = load_vlm("tiny-random-llava", plugins.registries, needs=frozenset({"attentions"}), device="cpu")
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    modules = sanity.STAGES["language_model"](vlm.model)
    n = sanity.randomise(modules, std=0.02, g=torch.Generator().manual_seed(1))
    inside = {id(p) for m in modules for p in m.parameters()}
    changed = {name for name, p in vlm.model.named_parameters() if not torch.equal(p, before[name])}
    touched = {name for name, p in vlm.model.named_parameters() if id(p) in inside}
    assert n == len(inside) and changed and changed <= touched
    assert not any(name.startswith(("model.vision_tower", "model.multi_modal_projector")) for name in changed)
    # norm scales become 1, biases 0: the rule the docstring states
    for name, p in vlm.model.named_parameters():
        if id(p) in inside and p.ndim == 1:
            assert torch.all(p == (0.0 if name.endswith("bias") else 1.0)), name


def test_report_has_the_check_and_the_cascade(sanity, tmp_path):
    methods = "gradient_relevancy,saliency,saliency:pool=signed"
    assert sanity.main(["--model", "tiny-random-llava", "--limit", "2", "--methods", methods,
                        "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "tiny-random-llava.json").read_text())
    assert list(report["methods"]) == ["gradient_relevancy", "saliency", "saliency pool=signed"]
    for res in report["methods"].values():
        assert res["spearman_abs_mean"] is None or -1.0 <= res["spearman_abs_mean"] <= 1.0
    saliency = report["methods"]["saliency"]  # already non-negative: |map| is the map
    assert saliency["spearman_abs_mean"] == pytest.approx(saliency["spearman_mean"])
    assert [s["stage"] for s in report["cascade"]] == list(sanity.STAGES)
    assert report["methods"] == report["cascade"][0]["methods"]  # the check = the first stage
    counts = [s["randomised_tensors"] for s in report["cascade"]]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # each stage adds tensors
    for stage in report["cascade"]:
        for res in stage["methods"].values():
            assert res["n"] == 2 and (res["spearman_mean"] is None or -1.0 <= res["spearman_mean"] <= 1.0)
    assert "## Cascade" in (tmp_path / "tiny-random-llava.md").read_text()


def test_default_specs_add_a_signed_run_of_every_pixel_method(sanity, plugins):
    specs = sanity.default_specs(plugins.registries)
    assert "gradient_relevancy" in specs and "gradient_relevancy:pool=signed" not in specs
    assert "layer_gradcam" in specs and "layer_gradcam:pool=signed" not in specs  # already on the grid
    for name in ("saliency", "smoothgrad", "input_x_gradient", "integrated_gradients", "gradient_shap"):
        assert name in specs and f"{name}:pool=signed" in specs


def test_a_repeated_method_spec_is_refused(sanity, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sanity.main(["--model", "tiny-random-llava", "--limit", "1", "--methods", "saliency, saliency:pool=abs"])
    assert exit_info.value.code == 2
    assert "repeats 'saliency'" in capsys.readouterr().err
