import numpy as np
import pytest
from PIL import Image

from xbench.errors import ParameterError
from xbench.tasks.easyvqa import EasyVQA, background_mask, question_kind


def test_real_data_splits():
    test, train = EasyVQA("test"), EasyVQA("train")
    assert len(test._questions[0]) == 9673 and len(train._questions[0]) == 38575
    with pytest.raises(ParameterError, match="no split 'val'"):
        EasyVQA("val")


def test_samples_are_lazy_and_prompt_is_llava_style():
    task = EasyVQA()
    s = next(task.samples(limit=1))
    assert s.image is None and s.image_path.exists()
    assert task.prompt(s) == s.question + "\nAnswer the question using a single word or phrase."
    assert s.load_image().size == (64, 64)


def test_exact_match_scoring():
    task = EasyVQA()
    s = next(task.samples(limit=1))
    gold = s.answers[0]
    assert task.score(s, gold)["accuracy"] == 1.0
    assert task.score(s, gold.upper() + ".")["accuracy"] == 1.0
    assert task.score(s, gold + " shape")["accuracy"] == 0.0


def test_question_kinds():
    assert question_kind("what color is the shape?", "red") == "colour"
    assert question_kind("what shape is this?", "circle") == "shape"
    assert question_kind("is there a red shape in the image?", "no") == "yes/no colour"
    assert question_kind("does the image contain a circle?", "yes") == "yes/no shape"


def test_mask_is_the_non_background_pixels():
    img = np.full((10, 12, 3), (240, 250, 245), np.uint8)
    img[2:5, 3:9] = (200, 0, 0)
    img[6, 6] = (235, 248, 244)  # anti-aliasing halo, within tolerance
    mask = background_mask(Image.fromarray(img))
    expected = np.zeros((10, 12), bool)
    expected[2:5, 3:9] = True
    np.testing.assert_array_equal(mask, expected)


def test_real_mask_covers_the_shape():
    task = EasyVQA()
    s = next(task.samples(limit=1))
    m = task.ground_truth_mask(s)
    assert m.shape == (64, 64) and 0.01 < m.mean() < 0.7


def test_aggregate_by_kind():
    task = EasyVQA()
    recs = [
        {"scores": {"accuracy": 1.0}, "meta": {"kind": "colour"}},
        {"scores": {"accuracy": 0.0}, "meta": {"kind": "colour"}},
        {"scores": {"accuracy": 1.0}, "meta": {"kind": "shape"}},
    ]
    agg = task.aggregate(recs)
    assert agg["accuracy"] == pytest.approx(2 / 3)
    assert agg["accuracy[colour]"] == 0.5 and agg["accuracy[shape]"] == 1.0


def test_unknown_task_param_is_refused(plugins, tmp_path):
    from xbench.runner import RunConfig, run

    with pytest.raises(ParameterError, match=r"task 'easyvqa' has no parameter\(s\) \['mask_tolerence'\] \(did you mean 'mask_tolerance'\?\)"):
        run(RunConfig(method="uniform", model="tiny-random-llava", limit=1, out=tmp_path / "r",
                      task_params={"mask_tolerence": 3}, progress=False), plugins)


@pytest.mark.parametrize("flip, axes", [("horizontal", (1,)), ("vertical", (0,)), ("both", (0, 1))])
def test_flip_mirrors_image_and_mask_and_keeps_the_question(flip, axes):
    plain, flipped = EasyVQA("train"), EasyVQA("train", flip=flip)
    a, b = next(plain.samples(limit=1, seed=3)), next(flipped.samples(limit=1, seed=3))
    assert b.id == f"{a.id}-flip-{flip}" and (b.question, b.answers, b.meta) == (a.question, a.answers, a.meta)
    img_a, img_b = np.asarray(a.load_image()), np.asarray(b.load_image())
    assert not np.array_equal(img_a, img_b)  # the shape is not symmetric about the image's centre lines
    np.testing.assert_array_equal(img_b, np.flip(img_a, axis=axes))
    np.testing.assert_array_equal(flipped.ground_truth_mask(b), np.flip(plain.ground_truth_mask(a), axis=axes))
    assert b.load_image() is b.load_image()  # mirrored once, on first load


def test_flip_is_recorded_and_checked():
    assert EasyVQA().params == {"mask_tolerance": 16, "flip": "none", "corruption": "none", "severity": 0.0}
    with pytest.raises(ParameterError, match=r"flip='sideways' is not one of \['none', 'horizontal'"):
        EasyVQA(flip="sideways")


def test_package_files_are_read_strictly(tmp_path, monkeypatch):
    """Image ids are JSON integers: 3.0 and "3" are not image 3; a missing image is named."""
    import json

    import xbench.tasks.easyvqa as easyvqa
    from xbench.api import SampleError
    from xbench.errors import DataError

    images = tmp_path / "test" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 64), "white").save(images / "3.png")
    (images / "notes.txt").write_text("not an image")
    entries = [["what colour is the shape?", "red", 3], ["what colour is the shape?", "red", 3.0],
               ["what colour is the shape?", "red", "3"], ["what colour is the shape?", "red", 4]]  # fmt: skip
    (tmp_path / "test" / "questions.json").write_text(json.dumps(entries))
    monkeypatch.setattr(easyvqa, "package_folder", lambda: tmp_path)
    out = {s.id: s for s in EasyVQA().samples()}
    assert out["test-0"].image_path == images / "3.png" and out["test-0"].answers == ["red"]
    assert isinstance(out["test-1"], SampleError) and out["test-1"].error == "easy-vqa test questions.json [1]: image id 3.0 (a float) is not an integer"
    assert out["test-2"].error == "easy-vqa test questions.json [2]: image id '3' (a string) is not an integer"
    assert out["test-3"].error == "easy-vqa test questions.json [3]: names image 4, not found"
    (tmp_path / "test" / "questions.json").write_text('{"what": 1}')
    with pytest.raises(DataError, match="not a list of \\[question, answer, image id\\] triples"):
        EasyVQA()
