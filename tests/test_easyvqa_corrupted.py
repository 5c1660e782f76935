"""easy-vqa's seeded image corruptions: deterministic, as declared, severity 0 clean, bad values refused."""

import json

import numpy as np
import pytest
from PIL import Image

from xbench.errors import ParameterError
from xbench.tasks.easyvqa import CORRUPTIONS, Corruption, EasyVQA, background_mask

KINDS = [k for k in CORRUPTIONS if k != "none"]


def first(task, n=1, seed=0):
    return list(task.samples(limit=n, seed=seed))


def pixels(sample) -> np.ndarray:
    return np.asarray(sample.load_image(), dtype=np.int16)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_images_other_seed_other_draws(kind):
    a, b = first(EasyVQA(corruption=kind, severity=0.4), 4, seed=5), first(EasyVQA(corruption=kind, severity=0.4), 4, seed=5)
    assert [s.id for s in a] == [s.id for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(pixels(x), pixels(y))
        x.image = None  # freed (as FastRM labelling does) and loaded again: the same pixels
        np.testing.assert_array_equal(pixels(x), pixels(y))
    clean = first(EasyVQA(), 1, seed=5)[0].load_image()
    key = first(EasyVQA(), 1, seed=5)[0].id
    draws = {(seed, k): np.asarray(Corruption(kind, 0.4, seed).apply(clean, k)[0]) for seed in (5, 6) for k in (key, "other")}
    np.testing.assert_array_equal(draws[(5, key)], pixels(a[0]))  # the task's draws: run seed and clean sample id
    if kind != "contrast":  # contrast draws nothing
        assert not np.array_equal(draws[(5, key)], draws[(6, key)])
        assert not np.array_equal(draws[(5, key)], draws[(5, "other")])


@pytest.mark.parametrize("kind", KINDS)
def test_severity_zero_is_the_clean_image_and_ids_say_the_corruption(kind):
    clean = first(EasyVQA(), 3, seed=2)
    zero = first(EasyVQA(corruption=kind, severity=0.0), 3, seed=2)
    some = first(EasyVQA(corruption=kind, severity=0.25), 3, seed=2)
    for c, z, s in zip(clean, zero, some):
        assert z.id == f"{c.id}-{kind}-0.0" and s.id == f"{c.id}-{kind}-0.25"
        assert (z.question, z.answers, z.meta) == (c.question, c.answers, c.meta)
        np.testing.assert_array_equal(pixels(z), pixels(c))
        assert not np.array_equal(pixels(s), pixels(c))


def test_noise_has_the_declared_standard_deviation():
    grey = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    for severity in (0.02, 0.05, 0.1):
        out, occluded = Corruption("noise", severity, seed=3).apply(grey, "k")
        diff = np.asarray(out, np.float64) - 128
        assert abs(diff.std() - severity * 255) < 0.03 * severity * 255  # 12,288 draws: ~0.6% sampling error
        assert abs(diff.mean()) < 0.05 * severity * 255 and not occluded.any()
    # on real images: the noise is everywhere, and clipped to the 8-bit range
    s = first(EasyVQA(corruption="noise", severity=0.1), seed=1)[0]
    diff = pixels(s) - np.asarray(s.clean_image(), np.int16)
    assert (diff != 0).mean() > 0.9 and 0.5 * 25.5 < diff.std() < 25.5 * 1.03


def test_occlusion_covers_the_declared_share_of_the_shape_with_the_background():
    for severity in (0.1, 0.5, 0.9, 1.0):
        task = EasyVQA(corruption="occlusion", severity=severity)
        for s in first(task, 6, seed=4):
            clean = np.asarray(s.clean_image(), np.int16)
            shape = background_mask(s.clean_image())
            img = pixels(s)
            covered = s.occluded & shape
            assert covered.sum() == round(severity * shape.sum())
            colours, counts = np.unique(clean.reshape(-1, 3), axis=0, return_counts=True)
            assert (img[s.occluded] == colours[counts.argmax()]).all()  # painted in the background colour
            np.testing.assert_array_equal(img[~s.occluded], clean[~s.occluded])  # nothing else touched
            np.testing.assert_array_equal(task.ground_truth_mask(s), shape & ~s.occluded)
    half = first(EasyVQA(corruption="occlusion", severity=0.5), seed=4)[0]
    most = first(EasyVQA(corruption="occlusion", severity=0.9), seed=4)[0]
    half.load_image(), most.load_image()
    assert (half.occluded <= most.occluded).all()  # one cut direction per sample: the levels are nested


def test_contrast_shrinks_every_channel_range_as_declared():
    for s in first(EasyVQA(), 5, seed=7):
        clean = np.asarray(s.load_image(), np.float64)
        grey = (clean @ [0.299, 0.587, 0.114]).mean()
        for severity in (0.3, 0.7, 1.0):
            out = np.asarray(Corruption("contrast", severity).apply(s.load_image(), s.id)[0], np.float64)
            want = (1 - severity) * np.ptp(clean, axis=(0, 1))
            assert np.all(np.abs(np.ptp(out, axis=(0, 1)) - want) <= 1.0)
            assert abs((out @ [0.299, 0.587, 0.114]).mean() - grey) < 1.0  # pulled toward the mean grey
    corrupted = first(EasyVQA(corruption="contrast", severity=0.7), seed=7)[0]
    np.testing.assert_array_equal(pixels(corrupted), np.asarray(Corruption("contrast", 0.7).apply(corrupted.clean_image(), "")[0]))


def test_flip_then_corruption():
    s = first(EasyVQA(flip="horizontal", corruption="occlusion", severity=0.5), seed=1)[0]
    assert s.id.endswith("-flip-horizontal-occlusion-0.5")
    np.testing.assert_array_equal(np.asarray(s.clean_image()), np.flip(np.asarray(first(EasyVQA(), seed=1)[0].load_image()), 1))


@pytest.mark.parametrize("params, message", [
    ({"corruption": "blur"}, r"task 'easyvqa': corruption='blur' is not one of \['none', 'noise', 'occlusion', 'contrast'\]"),
    ({"corruption": "noise", "severity": 1.5}, r"severity=1.5 is not a finite number >= 0 and <= 1"),
    ({"corruption": "noise", "severity": -0.1}, r"severity=-0.1 is not a finite number >= 0"),
    ({"corruption": "noise", "severity": float("nan")}, r"severity=nan is not a finite number"),
    ({"corruption": "noise", "severity": "high"}, r"severity='high' is not a finite number"),
    ({"severity": 0.3}, r"task 'easyvqa': severity=0.3 needs a corruption \(one of \['noise', 'occlusion', 'contrast'\]\); corruption is 'none'"),
    ({"corruptoin": "noise"}, r"has no parameter\(s\) \['corruptoin'\] \(did you mean 'corruption'\?\)"),
])  # fmt: skip
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ParameterError, match=message):
        EasyVQA(**params)


def test_corruption_is_recorded_in_the_run(plugins, tmp_path):
    from xbench.runner import RunConfig, run

    out = tmp_path / "r"
    summary = run(RunConfig(method="uniform", model="tiny-random-llava", limit=2, out=out, progress=False, seed=3,
                            task_params={"corruption": "noise", "severity": 0.3}), plugins)  # fmt: skip
    identity = json.loads((out / "run.json").read_text())["identity"]
    assert identity["task params"] == {"mask_tolerance": 16, "flip": "none", "corruption": "noise", "severity": 0.3}
    assert identity["seed"] == 3 and summary["config"]["task_params"] == {"corruption": "noise", "severity": 0.3}
    ids = [json.loads(line)["id"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert ids == [s.id for s in first(EasyVQA(corruption="noise", severity=0.3), 2, seed=3)]
    with pytest.raises(ParameterError, match="severity=2 is not a finite number >= 0 and <= 1"):
        run(RunConfig(method="uniform", model="tiny-random-llava", limit=1, out=tmp_path / "bad", progress=False,
                      task_params={"corruption": "noise", "severity": 2}), plugins)  # fmt: skip
