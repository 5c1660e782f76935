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


def full_size_archs():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "families_gpu.py"
    spec = importlib.util.spec_from_file_location("families_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sorted(module.FULL_SIZE)


@pytest.mark.parametrize("arch", full_size_archs())
def test_full_size_files_give_the_public_image_token_count(benchmark_script, tmp_path, arch):
    script = benchmark_script("families_gpu")
    folder = script.full_size_dir(arch, tmp_path / arch, tiny=False)
    config = json.loads((folder / "config.json").read_text())
    from xbench.plugins import default

    family = next(e.obj for e in default().registries.model_families
                  if config["model_type"] in e.obj.model_types and e.obj.accepts(config))
    processor = family.load_processor(folder)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is it?"}]}],
        add_generation_prompt=True, tokenize=False)
    ids = processor(images=[Image.new("RGB", (64, 64), (120, 30, 200))], text=[text], return_tensors="pt")["input_ids"][0]
    image_token = getattr(processor, "image_token_id", None) or processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert int((ids == image_token).sum()) == script.FULL_SIZE[arch]["image_tokens_at_64px"]
