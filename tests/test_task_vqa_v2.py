"""vqa_v2: official-format files generated here; scores checked against hand-computed values."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xbench.answers import llava_vqa_prediction, normalise_vqa, vqa_accuracy
from xbench.api import Sample, SampleError
from xbench.errors import DataError, ParameterError
from xbench.taskgen import write_vqa_v2

SPLIT = "val2014"


def write_vqa(root: Path, items: list[dict], split: str = SPLIT, image_dir: str | None = None, images: bool = True) -> Path:
    """Official VQA v2 files for ``items`` = [{qid, image_id, question, answers, answer_type}], with
    random-pixel 48x40 images (none with ``images=False``, none for an item with ``image: False``)."""
    rng = np.random.default_rng(0)
    pictures = {}
    for it in items:
        if images and it.get("image", True):
            pictures[it["image_id"]] = Image.fromarray(rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8))
    return write_vqa_v2(root, items, split, pictures, image_dir=image_dir)


ITEMS = [
    {"qid": 1001, "image_id": 1, "question": "Is it sunny?", "answers": ["yes"] * 10, "answer_type": "yes/no"},
    {"qid": 1002, "image_id": 1, "question": "How many dogs?", "answers": ["2"] * 7 + ["3"] * 3, "answer_type": "number"},
    {"qid": 1003, "image_id": 2, "question": "What colour is the car?", "answers": ["red"] * 8 + ["blue"] * 2, "answer_type": "other"},
    {"qid": 1004, "image_id": 3, "question": "What animal is it?", "answers": ["dog"] * 9 + ["cat"], "answer_type": "other"},
]


def leave_one_out(pred: str, gold: list[str]) -> float:
    """Independent form of the official rule: average over the 10 subsets of 9 human answers
    of min(1, matches / 3), on strings already normalised by hand."""
    subsets = list(combinations(gold, len(gold) - 1))
    return sum(min(1.0, sum(g == pred for g in s) / 3) for s in subsets) / len(subsets)


# ------------------------------------------------------------------ the metric


@pytest.mark.parametrize(
    "pred, gold, normalised_pred, normalised_gold, expected",
    [
        # unanimous humans: official leaves gold as is; LLaVA's processing fixes case and period
        ("Yes.", ["yes"] * 10, "yes", ["yes"] * 10, 1.0),
        ("no", ["yes"] * 10, "no", ["yes"] * 10, 0.0),
        # 7/3: the majority (number word -> digit) scores 1, the minority 3 matches -> 0.9
        ("two", ["2"] * 7 + ["3"] * 3, "2", ["2"] * 7 + ["3"] * 3, 1.0),
        ("Three", ["2"] * 7 + ["3"] * 3, "3", ["2"] * 7 + ["3"] * 3, 0.9),
        # 8/2: the minority with 2 matches -> 0.6 (article and punctuation removed)
        ("the blue!", ["red"] * 8 + ["blue"] * 2, "blue", ["red"] * 8 + ["blue"] * 2, 0.6),
        ("Red", ["red"] * 8 + ["blue"] * 2, "red", ["red"] * 8 + ["blue"] * 2, 1.0),
        # 9/1: a single match -> 0.3
        ("a cat.", ["dog"] * 9 + ["cat"], "cat", ["dog"] * 9 + ["cat"], 0.3),
        ("An apple", ["dog"] * 9 + ["cat"], "apple", ["dog"] * 9 + ["cat"], 0.0),
        # disagreeing humans are normalised too: "T-shirt"/"t-shirt" -> "t shirt", "the shirt" -> "shirt"
        ("T-shirt", ["t-shirt"] * 4 + ["T shirt"] * 2 + ["the shirt"] * 4, "t shirt", ["t shirt"] * 6 + ["shirt"] * 4, 1.0),
        # contractions restored on both sides; 5 matches
        ("dont know", ["don't know"] * 3 + ["dont know"] * 2 + ["no"] * 5, "don't know", ["don't know"] * 5 + ["no"] * 5, 1.0),
        # digit-comma-digit: every punctuation mark is removed, "1,000" -> "1000"
        ("1,000", ["1000"] * 2 + ["1,000"] + ["100"] * 7, "1000", ["1000"] * 3 + ["100"] * 7, 0.9),
        # "none" -> "0"; decimals keep their period
        ("none", ["0"] * 4 + ["zero"] * 1 + ["3.5"] * 5, "0", ["0"] * 5 + ["3.5"] * 5, 1.0),
        ("3.5.", ["0"] * 9 + ["3.5"], "3.5", ["0"] * 9 + ["3.5"], 0.3),
    ],
)
def test_vqa_accuracy_matches_hand_values(pred, gold, normalised_pred, normalised_gold, expected):
    assert leave_one_out(normalised_pred, normalised_gold) == pytest.approx(expected)
    assert vqa_accuracy(pred, gold) == pytest.approx(expected)


def test_accuracy_ladder_by_number_of_matches():
    """0, 1, 2, 3, 4+ matching humans out of 10 -> 0, 0.3, 0.6, 0.9, 1 (1 - 3/10 per missing match)."""
    for k, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        gold = ["x"] * k + ["y"] * (10 - k)
        assert vqa_accuracy("x", gold) == pytest.approx(expected)


def test_unanimous_humans_are_compared_unnormalised():
    """Official rule: with identical human answers nothing is normalised on the gold side, so a
    prediction that LLaVA's processing turns into "t shirt" misses a unanimous "t-shirt"."""
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10, llava_prediction=False) == 1.0
    assert vqa_accuracy("T-shirt", ["t-shirt"] * 9 + ["shirt"]) == 1.0


@pytest.mark.parametrize(
    "text, official, llava",
    [
        ("Two dogs.", "2 dogs", "2 dogs"),
        ("The man's hat", "man's hat", "man 's hat"),
        ("an apple", "apple", "apple"),
        ("yes!", "yes", "yes"),
        ("isnt", "isn't", "isn't"),
        ("couldnt've", "couldn't've", "couldn't've"),
        ("(left) side", "left side", "left side"),
        ("what ?", "what", "what"),
        ("red/white", "red white", "red white"),
        ("10:30", "10:30", "10:30"),
        ("Is it 2.5?", "is it 2.5", "is it 2.5"),
    ],
)
def test_normalisation_rules(text, official, llava):
    assert normalise_vqa(text) == official
    assert llava_vqa_prediction(text) == llava


# ------------------------------------------------------------------ the task


def make_task(plugins, root, **params):
    return plugins.registries.tasks.get("vqa_v2")(None, root, **params)


def test_samples_read_official_files(plugins, tmp_path):
    task = make_task(plugins, write_vqa(tmp_path / "vqa", ITEMS))
    samples = list(task.samples())
    assert sorted(s.id for s in samples) == ["1001", "1002", "1003", "1004"]
    s = next(s for s in samples if s.id == "1002")
    assert s.answers == ["2"] * 7 + ["3"] * 3
    assert s.meta["answer_type"] == "number"
    assert s.image_path == tmp_path / "vqa" / SPLIT / "COCO_val2014_000000000001.jpg"
    assert s.image is None  # opened lazily
    assert s.load_image().size == (48, 40)
    assert task.prompt(s) == "How many dogs?\nAnswer the question using a single word or phrase."
    assert [x.id for x in task.samples(limit=2, seed=3)] == [x.id for x in task.samples(limit=2, seed=3)]
    assert len(list(task.samples(limit=2))) == 2


def test_layout_prompt_and_subfolder_params(plugins, tmp_path):
    root = write_vqa(tmp_path / "data" / "vqa_v2", ITEMS, image_dir="images/val")
    task = make_task(plugins, tmp_path / "data", image_dir="images/val", prompt="plain")  # found in data/vqa_v2
    s = next(iter(task.samples()))
    assert s.image_path.parent == root / "images" / "val" and s.image_path.exists()
    assert task.prompt(s) == s.question
    custom = make_task(plugins, root, image_dir="images/val", prompt="Q: {question} A:")
    assert custom.prompt(s) == f"Q: {s.question} A:"
    assert custom.params["prompt"] == "Q: {question} A:" and custom.params["image_dir"] == "images/val"


def test_aggregate_breaks_down_by_answer_type(plugins, tmp_path):
    task = make_task(plugins, write_vqa(tmp_path / "vqa", ITEMS))
    by_id = {s.id: s for s in task.samples()}
    answers = {"1001": "Yes", "1002": "three", "1003": "blue", "1004": "cat"}  # 1, 0.9, 0.6, 0.3
    records = [{"scores": task.score(by_id[i], a), "meta": by_id[i].meta} for i, a in answers.items()]
    out = task.aggregate(records)
    assert out["accuracy"] == pytest.approx((1 + 0.9 + 0.6 + 0.3) / 4)
    assert out["accuracy[yes/no]"] == pytest.approx(1.0)
    assert out["accuracy[number]"] == pytest.approx(0.9)
    assert out["accuracy[other]"] == pytest.approx((0.6 + 0.3) / 2)
    assert task.answer_metrics["accuracy"] is True
    assert len(task.data_hash()) == 16


def test_bad_entries_become_sample_errors(plugins, tmp_path):
    items = ITEMS[:2] + [
        {"qid": 2001, "image_id": 5, "question": "Unannotated?", "answers": ["x"] * 10, "annotated": False},
        {"qid": 2002, "image_id": 6, "question": "No answers?", "answers": []},
    ]
    task = make_task(plugins, write_vqa(tmp_path / "vqa", items))
    out = {s.id: s for s in task.samples()}
    assert isinstance(out["1001"], Sample)
    err = out["2001"]
    assert isinstance(err, SampleError) and "v2_mscoco_val2014_annotations.json" in err.error and "2001" in err.error
    assert isinstance(out["2002"], SampleError) and "no usable human answers" in out["2002"].error
    # a question entry without its image id, and a human answer without text
    qfile = tmp_path / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json"
    data = json.loads(qfile.read_text())
    del data["questions"][0]["image_id"]
    qfile.write_text(json.dumps(data))
    afile = tmp_path / "vqa" / "v2_mscoco_val2014_annotations.json"
    data = json.loads(afile.read_text())
    del data["annotations"][1]["answers"][4]["answer"]
    afile.write_text(json.dumps(data))
    out = {s.id: s for s in make_task(plugins, tmp_path / "vqa").samples()}
    assert "questions[0]" in out and "questions[0] lacks image_id" in out["questions[0]"].error
    assert "v2_OpenEnded_mscoco_val2014_questions.json" in out["questions[0]"].error
    assert isinstance(out["1002"], SampleError) and "1002 has no usable human answers" in out["1002"].error


def test_missing_or_wrong_files_fail_before_the_run(plugins, tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        make_task(plugins, None)
    with pytest.raises(DataError, match="does not exist"):
        make_task(plugins, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="v2_OpenEnded_mscoco_val2014_questions.json"):
        make_task(plugins, tmp_path / "empty")
    root = write_vqa(tmp_path / "vqa", ITEMS)
    (root / "v2_mscoco_val2014_annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        make_task(plugins, root)
    (root / "v2_mscoco_val2014_annotations.json").write_text("[]")
    with pytest.raises(DataError, match="'annotations' list"):
        make_task(plugins, root)
    with pytest.raises(ParameterError, match="no split 'test2015'"):
        plugins.registries.tasks.get("vqa_v2")("test2015", root)
    with pytest.raises(ParameterError, match="no parameter"):
        make_task(plugins, root, imagedir="x")
    with pytest.raises(ParameterError, match="prompt"):
        make_task(plugins, root, prompt="nonsense")
    for param in ("questions_file", "annotations_file"):
        with pytest.raises(ParameterError, match=f"vqa_v2 {param} may use {{split}} only"):
            make_task(plugins, root, **{param: "v2_{year}.json"})


def test_run_end_to_end_counts_errors(tmp_path):
    from xbench.cli import main

    items = ITEMS[:3] + [{"qid": 3001, "image_id": 9, "question": "Where is the image?", "answers": ["here"] * 10, "image": False}]
    data = write_vqa(tmp_path / "vqa", items)
    out = tmp_path / "run"
    argv = ["run", "--task", "vqa_v2", "--data-dir", str(data), "--method", "rollout", "--model", "tiny-random-llava",
            "--limit", "4", "--no-progress", "--warmup", "0", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"]["name"] == "vqa_v2" and summary["task"]["params"]["prompt"] == "llava15"
    assert summary["n_ok"] == 3 and summary["n_errors"] == 1 and summary["errors_by_stage"] == {"image": 1}
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    bad = next(r for r in records if "error" in r)
    assert "COCO_val2014_000000000009.jpg" in bad["error"]
    ok = [r for r in records if "error" not in r]
    for r in ok:  # each record's score is the official accuracy of its own answer
        assert r["scores"]["accuracy"] == pytest.approx(vqa_accuracy(r["answer"], r["gold"]))
    assert summary["metrics"]["accuracy"]["value"] == pytest.approx(np.mean([r["scores"]["accuracy"] for r in ok]))
    assert {"accuracy[yes/no]", "accuracy[number]", "accuracy[other]"} <= set(summary["metrics"])


# ------------------------------------------------------------------ layouts (issue 19)

QUESTIONS_NAME = f"v2_OpenEnded_mscoco_{SPLIT}_questions.json"
ANNOTATIONS_NAME = f"v2_mscoco_{SPLIT}_annotations.json"


def write_official(root: Path, items: list[dict]) -> Path:
    """The files of ``write_vqa`` laid out as the official VQA API prescribes:
    Questions/, Annotations/ and Images/mscoco/<split>/."""
    flat = write_vqa(root.parent / (root.name + "-flat"), items)
    for folder, name in (("Questions", QUESTIONS_NAME), ("Annotations", ANNOTATIONS_NAME)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (flat / name).rename(root / folder / name)
    (root / "Images" / "mscoco").mkdir(parents=True, exist_ok=True)
    (flat / SPLIT).rename(root / "Images" / "mscoco" / SPLIT)
    return root


def test_official_vqa_api_layout_is_found_without_parameters(plugins, tmp_path):
    flat_hash = make_task(plugins, write_vqa(tmp_path / "flat", ITEMS)).data_hash()
    root = write_official(tmp_path / "data" / "vqa_v2", ITEMS)
    task = make_task(plugins, tmp_path / "data")  # found in data/vqa_v2, no task parameter
    assert task.questions_path == root / "Questions" / QUESTIONS_NAME
    assert task.annotations_path == root / "Annotations" / ANNOTATIONS_NAME
    samples = {s.id: s for s in task.samples()}
    assert sorted(samples) == ["1001", "1002", "1003", "1004"]
    assert samples["1003"].image_path == root / "Images" / "mscoco" / SPLIT / "COCO_val2014_000000000002.jpg"
    assert samples["1003"].load_image().size == (48, 40)
    assert samples["1002"].answers == ["2"] * 7 + ["3"] * 3
    assert task.params["questions_file"] is None and task.params["image_dir"] is None
    assert task.data_hash() == flat_hash  # the same files' names and bytes, wherever they lie


def test_a_missing_file_lists_every_layout_searched(plugins, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        make_task(plugins, tmp_path / "empty")
    assert str(info.value) == (
        f"task 'vqa_v2': no questions file for split 'val2014' in {str(tmp_path / 'empty')!r} or {str(tmp_path / 'empty' / 'vqa_v2')!r}; "
        f"searched {QUESTIONS_NAME} (flat), Questions/{QUESTIONS_NAME} (official VQA API) "
        "(xbench never downloads datasets: copy the official files there)"
    )
    root = write_official(tmp_path / "official", ITEMS)
    (root / "Annotations" / ANNOTATIONS_NAME).unlink()
    with pytest.raises(DataError, match="no annotations file for split 'val2014'") as info:
        make_task(plugins, root)
    assert f"searched {ANNOTATIONS_NAME} (flat), Annotations/{ANNOTATIONS_NAME} (official VQA API)" in str(info.value)
    root = write_vqa(tmp_path / "flat", ITEMS)
    for image in (root / SPLIT).iterdir():
        image.unlink()
    (root / SPLIT).rmdir()
    with pytest.raises(DataError, match="no image folder for split 'val2014'") as info:
        make_task(plugins, root)
    assert f"in {str(root)!r}; searched {SPLIT} (flat), Images/mscoco/{SPLIT} (official VQA API)" in str(info.value)


def test_ids_are_read_as_the_file_means_them(plugins, tmp_path):
    """An image id 1.9 is not image 1, a string question id is not the integer one."""
    root = write_vqa(tmp_path / "vqa", ITEMS[:3])
    qfile = root / QUESTIONS_NAME
    data = json.loads(qfile.read_text())
    data["questions"][0]["image_id"] = 1.9  # image 1 exists: 1.9 must not be read as it
    data["questions"][1]["question_id"] = "1002"
    qfile.write_text(json.dumps(data))
    out = {s.id: s for s in make_task(plugins, root).samples()}
    assert isinstance(out["1001"], SampleError) and out["1001"].error.endswith("image_id 1.9 (a float) is not an integer")
    assert isinstance(out["questions[1]"], SampleError) and "question_id '1002' (a string) is not an integer" in out["questions[1]"].error
    assert isinstance(out["1003"], Sample)


def test_an_annotation_without_an_integer_question_id_is_named_where_its_question_fails(plugins, tmp_path):
    """Not dropped without a word: the question left without an annotation says why."""
    root = write_vqa(tmp_path / "vqa", ITEMS)
    path = root / f"v2_mscoco_{SPLIT}_annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["question_id"] = str(data["annotations"][1]["question_id"])  # "1002"
    path.write_text(json.dumps(data))
    by_id = {s.id: s for s in make_task(plugins, root).samples()}
    error = by_id["1002"]
    assert isinstance(error, SampleError)
    assert error.error.endswith("question_id 1002 has no entry in v2_mscoco_val2014_annotations.json (1 annotation(s) "
                                "without an integer question_id were set aside, the first annotations[1])")
    assert not isinstance(by_id["1001"], SampleError)
