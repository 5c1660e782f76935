"""benchmarks/families_gpu.py: the tiny mode runs every path on CPU (GPU memory null, never 0), and the
full-size files it builds reproduce the public processors' image-token counts (no weights needed)."""

from __future__ import annotations

import json

import pytest
from PIL import Image


def test_tiny_mode_times_every_path(benchmark_script, tmp_path):
    script = benchmark_script("families_gpu")
    assert script.main(["--tiny", "--device", "cpu", "--dtype", "float32", "--repeats", "2", "--answer-len", "2",
                        "--archs", "llava-1.5-7b", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "tiny.json").read_text())
    entry = report["archs"]["llava-1.5-7b"]
    assert set(entry["results"]) == {"generate", "generate_eager", "gradient_relevancy", "fastrm"}
    for res in entry["results"].values():
        assert res["seconds"] > 0 and res["peak_gpu_gib"] is None and len(res["all_seconds"]) == 2
    assert entry["image_tokens"] == 64 and entry["grids"] == [[8, 8]]


def full_size_archs(having: str | None = None):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "families_gpu.py"
    spec = importlib.util.spec_from_file_location("families_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sorted(a for a, spec in module.FULL_SIZE.items() if having is None or having in spec)


@pytest.mark.parametrize("arch", full_size_archs(having="image_tokens_at_64px"))
def test_full_size_files_give_the_public_image_token_count(benchmark_script, tmp_path, arch):
    """The family's adapter (over a weightless meta-device model) encodes a 64x64 image with its own
    prompt into as many image tokens as the public processor does."""
    import torch
    import transformers

    from xbench.api import ModelIdentity
    from xbench.plugins import default

    script = benchmark_script("families_gpu")
    folder = script.full_size_dir(arch, tmp_path / arch, tiny=False)
    config = json.loads((folder / "config.json").read_text())
    family = next(e.obj for e in default().registries.model_families
                  if config["model_type"] in e.obj.model_types and e.obj.accepts(config))
    with torch.device("meta"):
        model = getattr(transformers, family.model_class)._from_config(
            transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True))
    vlm = family(model, family.load_processor(folder), ModelIdentity(arch), "cpu", torch.float32, "eager")
    inputs = vlm.encode([Image.new("RGB", (64, 64), (120, 30, 200))], [vlm.render_prompt("what shape is it?")])
    assert int((inputs["input_ids"][0] == vlm.image_token_id).sum()) == script.FULL_SIZE[arch]["image_tokens_at_64px"]


@pytest.mark.parametrize("arch", full_size_archs(having="public_parameters_b"))
def test_full_size_configs_have_the_public_parameter_count(benchmark_script, tmp_path, arch):
    import torch
    import transformers

    script = benchmark_script("families_gpu")
    want = script.FULL_SIZE[arch]["public_parameters_b"]
    folder = script.full_size_dir(arch, tmp_path / arch, tiny=False)
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    model_class = transformers.AutoModelForImageTextToText._model_mapping[type(config)]
    with torch.device("meta"):
        model = model_class._from_config(config)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(want, abs=0.006)
