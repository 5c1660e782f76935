"""gqa: official-format balanced questions and scene graphs generated here; scores and masks by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xbench.answers import gqa_correct
from xbench.api import Sample, SampleError
from xbench import taskgen
from xbench.errors import DataError, ParameterError
from xbench.taskgen import gqa_question as question


QUESTIONS = {
    "q1": question("img1", "Is the cup on the table?", "yes", "verify", q_objects=["o1", "o2"]),
    "q2": question("img1", "What is on the table?", "cup", "query", q_objects=["o2"], a_objects=["o1"], full_objects=["o1", "o2"]),
    "q3": question("img2", "What colour is the sky?", "blue", "query"),
    "q4": question("img2", "Is it day or night?", "day", "choose"),
    "q5": question("img2", "Unbalanced question?", "no", "verify", balanced=False),
}
# img1 is stored at 40x30 in the scene graph; the image file is 80x60 (twice as large)
SCENES = {
    "img1": {"width": 40, "height": 30, "objects": {
        "o1": {"name": "cup", "x": 5, "y": 4, "w": 6, "h": 5, "attributes": ["white"], "relations": [{"object": "o2", "name": "on"}]},
        "o2": {"name": "table", "x": 0, "y": 20, "w": 40, "h": 10, "attributes": [], "relations": []},
    }},
}


def write_gqa(root: Path, questions=QUESTIONS, split="testdev", scenes=SCENES, missing_images=()) -> Path:
    sizes = {"img1": (80, 60), "img2": (50, 40)}
    images = {i: Image.new("RGB", size, (120, 30, 200)) for i, size in sizes.items() if i not in missing_images}
    return taskgen.write_gqa(root, questions, split, images, scenes)


def make_task(plugins, root, split=None, **params):
    return plugins.registries.tasks.get("gqa")(split, root, **params)


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("Yes.", "yes", True),  # final period stripped, lower-cased
        ("Table", "table", True),
        ("table.", "table", True),
        ("the table", "table", False),  # no article removal in GQA
        ("tables", "table", False),
        ("Left..", "left", True),  # rstrip removes every trailing period
        (" no ", "no", True),  # LLaVA strips its output first
        ("yes", "Yes", False),  # the gold answer is not processed
    ],
)
def test_exact_match_after_llava_processing(pred, gold, expected):
    assert gqa_correct(pred, gold) is expected


def test_samples_kinds_and_balanced_only(plugins, tmp_path):
    task = make_task(plugins, write_gqa(tmp_path / "gqa"))
    samples = {s.id: s for s in task.samples()}
    assert sorted(samples) == ["q1", "q2", "q3", "q4"]  # q5 is not balanced: eval.py does not score it
    assert samples["q1"].meta["kind"] == "binary" and samples["q4"].meta["kind"] == "binary"  # verify, choose
    assert samples["q2"].meta["kind"] == "open"
    assert samples["q2"].answers == ["cup"]
    assert samples["q2"].image_path == tmp_path / "gqa" / "images" / "img1.jpg"
    assert task.prompt(samples["q3"]) == "What colour is the sky?\nAnswer the question using a single word or phrase."


def test_aggregate_binary_and_open(plugins, tmp_path):
    task = make_task(plugins, write_gqa(tmp_path / "gqa"))
    samples = {s.id: s for s in task.samples()}
    answers = {"q1": "Yes.", "q2": "Cup", "q3": "grey", "q4": "night"}  # binary 1/2, open 1/2
    records = [{"scores": task.score(samples[i], a), "meta": samples[i].meta} for i, a in answers.items()]
    out = task.aggregate(records)
    assert out == pytest.approx({"accuracy": 0.5, "accuracy[binary]": 0.5, "accuracy[open]": 0.5})
    answers["q3"] = "blue."
    records = [{"scores": task.score(samples[i], a), "meta": samples[i].meta} for i, a in answers.items()]
    assert task.aggregate(records) == pytest.approx({"accuracy": 0.75, "accuracy[binary]": 0.5, "accuracy[open]": 1.0})


def test_scene_graph_objects_become_the_mask(plugins, tmp_path):
    root = write_gqa(tmp_path / "gqa")
    task = make_task(plugins, root, scene_graphs="testdev_sceneGraphs.json")
    samples = {s.id: s for s in task.samples()}
    # q2 annotates o2 (question), o1 (answer), o1 + o2 (full answer): union of both boxes,
    # doubled because the image is twice the scene graph's size
    expected = np.zeros((60, 80), dtype=bool)
    expected[8:18, 10:22] = True  # cup: x 5..11, y 4..9 at half size
    expected[40:60, 0:80] = True  # table: x 0..40, y 20..30 at half size
    mask = task.ground_truth_mask(samples["q2"])
    assert mask.shape == (60, 80) and mask.sum() == 12 * 10 + 80 * 20
    assert np.array_equal(mask, expected)
    assert np.array_equal(task.ground_truth_mask(samples["q1"]), expected)  # question annotates both
    assert task.ground_truth_mask(samples["q3"]) is None  # nothing annotated
    assert make_task(plugins, root, scene_graphs="none").ground_truth_mask(samples["q2"]) is None  # none asked for
    assert make_task(plugins, root, scene_graphs=None).ground_truth_mask(samples["q2"]) is None
    auto = make_task(plugins, root)  # scene_graphs=auto: the split's file is found by layout
    assert auto.scene_graphs_path == root / "testdev_sceneGraphs.json"
    assert np.array_equal(auto.ground_truth_mask(samples["q2"]), expected)
    broken = dict(SCENES, img1={**SCENES["img1"], "objects": {"o2": SCENES["img1"]["objects"]["o2"]}})
    (root / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match="no object o1"):
        make_task(plugins, root, scene_graphs="broken.json").ground_truth_mask(samples["q2"])


def test_bad_data(plugins, tmp_path):
    qs = dict(QUESTIONS, q6=question("img2", "No answer?", None, "query"))
    qs["q7"] = {"question": "No image id?", "answer": "x"}
    task = make_task(plugins, write_gqa(tmp_path / "gqa", qs))
    out = {s.id: s for s in task.samples()}
    assert isinstance(out["q6"], SampleError) and "testdev_balanced_questions.json" in out["q6"].error
    assert "q6" in out["q6"].error and "no answer" in out["q6"].error
    assert isinstance(out["q7"], SampleError) and "imageId" in out["q7"].error
    assert isinstance(out["q1"], Sample)
    with pytest.raises(DataError, match="val_balanced_questions.json"):
        make_task(plugins, tmp_path / "gqa", split="val")
    with pytest.raises(ParameterError, match="no split 'test'"):
        make_task(plugins, tmp_path / "gqa", split="test")
    (tmp_path / "gqa" / "testdev_balanced_questions.json").write_text(json.dumps(list(QUESTIONS.values())))
    with pytest.raises(DataError, match="keyed by question id"):
        make_task(plugins, tmp_path / "gqa")
    with pytest.raises(DataError, match="nope.json"):
        make_task(plugins, write_gqa(tmp_path / "gqa2"), scene_graphs="nope.json")


def test_run_end_to_end_with_localisation(tmp_path):
    from xbench.cli import main

    data = write_gqa(tmp_path / "gqa", missing_images=("img2",))
    out = tmp_path / "run"
    argv = ["run", "--task", "gqa", "--data-dir", str(data), "--method", "rollout", "--model", "tiny-random-llava",
            "--limit", "4", "--no-progress", "--warmup", "0", "--out", str(out),
            "--task-param", "scene_graphs=testdev_sceneGraphs.json", "--task-param", "prompt=plain"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"]["params"] == {"prompt": "plain", "image_dir": None, "questions_file": None,
                                         "scene_graphs": "testdev_sceneGraphs.json", "allow_outside_data_dir": False}
    assert summary["n_ok"] == 2 and summary["n_errors"] == 2 and summary["errors_by_stage"] == {"image": 2}
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    ok = [r for r in records if "error" not in r]
    assert all(r["metrics"]["energy_in_mask"] is not None for r in ok)  # both img1 questions have masks
    for r in ok:
        assert r["scores"]["accuracy"] == float(gqa_correct(r["answer"], r["gold"][0]))
    assert summary["metrics"]["energy_in_mask"]["n"] == 2
    assert {"accuracy", "accuracy[binary]", "accuracy[open]"} <= set(summary["metrics"])


# ------------------------------------------------------------------ layouts and strict reading (issues 17, 19)


def test_downloaded_layout_is_found_without_parameters(plugins, tmp_path):
    """questions1.2/ and sceneGraphs/ as the GQA downloads unpack, images/ beside them."""
    root = write_gqa(tmp_path / "gqa")
    (root / "questions1.2").mkdir()
    (root / "testdev_balanced_questions.json").rename(root / "questions1.2" / "testdev_balanced_questions.json")
    (root / "sceneGraphs").mkdir()
    (root / "testdev_sceneGraphs.json").rename(root / "sceneGraphs" / "testdev_sceneGraphs.json")
    task = make_task(plugins, tmp_path)  # found in tmp/gqa
    assert task.questions_path == root / "questions1.2" / "testdev_balanced_questions.json"
    assert task.scene_graphs_path == root / "sceneGraphs" / "testdev_sceneGraphs.json"
    samples = {s.id: s for s in task.samples()}
    assert sorted(samples) == ["q1", "q2", "q3", "q4"] and samples["q2"].image_path == root / "images" / "img1.jpg"
    assert task.ground_truth_mask(samples["q2"]).sum() == 12 * 10 + 80 * 20  # the boxes of the mask test
    with pytest.raises(DataError) as info:
        make_task(plugins, tmp_path, split="val")
    assert f"in {str(tmp_path)!r} or {str(root)!r}; searched val_balanced_questions.json (flat), " \
           "questions1.2/val_balanced_questions.json (questions1.2 download)" in str(info.value)


def test_repeated_question_id_is_refused_naming_it(plugins, tmp_path):
    root = write_gqa(tmp_path / "gqa")
    qfile = root / "testdev_balanced_questions.json"
    text = qfile.read_text()
    qfile.write_text(text[:-1] + ', "q3": ' + json.dumps(question("img1", "Dropped?", "no")) + "}")
    with pytest.raises(DataError, match="testdev_balanced_questions.json' repeats the key 'q3' in one object"):
        make_task(plugins, root)


def test_wrong_types_are_sample_errors(plugins, tmp_path):
    qs = {"q1": question(5, "Number image id?", "yes"), "q2": question("img1", None, "cup"),
          "q3": question("../../../etc/x", "Climbing?", "no"), "q4": question("img2", "Fine?", "yes")}  # fmt: skip
    out = {s.id: s for s in make_task(plugins, write_gqa(tmp_path / "gqa", qs)).samples()}
    assert out["q1"].error == "testdev_balanced_questions.json: question q1: imageId 5 (an integer) is not a string"
    assert out["q2"].error == "testdev_balanced_questions.json: question q2: question null is not a text"
    assert "image path '../../../etc/x.jpg' climbs out of the data folder" in out["q3"].error
    assert isinstance(out["q4"], Sample)
    allowed = {s.id: s for s in make_task(plugins, tmp_path / "gqa", allow_outside_data_dir=True).samples()}
    assert allowed["q3"].image_path == tmp_path / "gqa" / "images" / "../../../etc/x.jpg"
    with pytest.raises(ParameterError, match="allow_outside_data_dir='yes' is not true or false"):
        make_task(plugins, tmp_path / "gqa", allow_outside_data_dir="yes")
