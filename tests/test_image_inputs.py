"""Images the layouts cannot take are per-sample errors naming the sample: several images per
prompt, animations and videos (multi-frame files)."""

from __future__ import annotations

import pytest
from PIL import Image

from xbench.api import Sample
from xbench.errors import BadImageError


def test_a_multi_frame_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "clip.gif"
    frames = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(BadImageError, match=r"clip\.gif has 3 frames \(an animation or video\)"):
        Sample("s", "q", ["a"], image_path=path).load_image()
    still = tmp_path / "still.gif"
    frames[0].save(still)
    assert Sample("s", "q", ["a"], image_path=still).load_image().size == (16, 16)


def test_several_images_per_prompt_fail_that_sample_only(plugins, tiny_vlm, easyvqa_samples):
    """In a batch, the sample with two images fails alone (the batch is split), the other is answered."""
    from xbench.batching import call_splitting

    task, samples = easyvqa_samples
    good = samples[0]
    two = Sample("two-images", good.question, good.answers, image=[good.load_image(), good.load_image()])
    results = {item.id: result for item, result, _ in call_splitting(
        lambda batch: tiny_vlm.generate(batch, [task.prompt(s) for s in batch], 2), [good, two], "cpu")}
    assert isinstance(results["two-images"], BadImageError)
    assert "sample 'two-images' has 2 images; the model adapters take one still image per prompt" in str(results["two-images"])
    assert results[good.id].sample_id == good.id


def test_a_torchvision_that_does_not_import_is_refused_with_the_fix(tmp_path, monkeypatch):
    """PyPI's torchvision beside the CPU torch wheel fails to import, and transformers then fails on
    every image processor; loading names the cause and the fix instead."""
    import sys

    from xbench.errors import ModelLoadError
    from xbench.models import check_torchvision

    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    with pytest.raises(ModelLoadError, match=r"torchvision is installed but does not import beside torch .*"
                       r"operator torchvision::nms does not exist.*pip uninstall torchvision"):
        check_torchvision()
