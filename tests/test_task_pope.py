"""pope: official JSON-lines files and COCO instances generated here; parsing, metrics and masks by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xbench.answers import pope_answer
from xbench.api import Sample, SampleError
from xbench import taskgen
from xbench.errors import DataError, ParameterError

LINES = [
    {"question_id": 1, "image": "COCO_val2014_000000000011.jpg", "text": "Is there a dog in the image?", "label": "yes"},
    {"question_id": 2, "image": "COCO_val2014_000000000011.jpg", "text": "Is there a car in the image?", "label": "no"},
    {"question_id": 3, "image": "COCO_val2014_000000000012.jpg", "text": "Is there a dining table in the image?", "label": "yes"},
    {"question_id": 4, "image": "COCO_val2014_000000000012.jpg", "text": "Is there an apple in the image?", "label": "no"},
]
# image 11 is 40x30; image 12 is stored at 20x15 in the annotations but the file is 40x30
INSTANCES = {
    "info": {},
    "images": [
        {"id": 11, "file_name": "COCO_val2014_000000000011.jpg", "width": 40, "height": 30},
        {"id": 12, "file_name": "COCO_val2014_000000000012.jpg", "width": 20, "height": 15},
        {"id": 99, "file_name": "COCO_val2014_000000000099.jpg", "width": 10, "height": 10},
    ],
    "licenses": [],
    "annotations": [
        # dog: a polygon rectangle (PIL fills its boundary: 21 x 11 pixels) and a crowd RLE
        {"id": 1, "image_id": 11, "category_id": 18, "iscrowd": 0, "bbox": [10, 10, 20, 10],
         "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
        {"id": 2, "image_id": 11, "category_id": 18, "iscrowd": 1, "bbox": [0, 0, 2, 3],
         "segmentation": {"size": [30, 40], "counts": [0, 3, 27, 3, 1167]}},
        {"id": 3, "image_id": 11, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 5, 5], "segmentation": [[0, 0, 5, 0, 5, 5]]},
        # dining table on the half-size annotation: a box only
        {"id": 4, "image_id": 12, "category_id": 67, "iscrowd": 0, "bbox": [2, 3, 5, 4], "segmentation": []},
        {"id": 5, "image_id": 99, "category_id": 18, "iscrowd": 0, "bbox": [0, 0, 1, 1], "segmentation": []},
    ],
    "categories": [
        {"supercategory": "animal", "id": 18, "name": "dog"},
        {"supercategory": "vehicle", "id": 3, "name": "car"},
        {"supercategory": "furniture", "id": 67, "name": "dining table"},
        {"supercategory": "food", "id": 53, "name": "apple"},
    ],
}


def write_pope(root: Path, lines=LINES, split="random", raw: str | None = None, images=True) -> Path:
    pictures = {line["image"]: Image.new("RGB", (40, 30), (10, 200, 90)) for line in lines} if images else {}
    return taskgen.write_pope(root, lines, split, pictures, instances=INSTANCES, raw=raw)


def make_task(plugins, root, split=None, **params):
    return plugins.registries.tasks.get("pope")(split, root, **params)


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("No, there is not.", "no"),  # comma removed -> the word "No"
        ("There is not a dog.", "no"),
        ("Not sure.", "yes"),  # "Not" is none of No / not / no: POPE's rule is case sensitive
        ("NO", "yes"),  # likewise
        ("Yes. There is no car.", "yes"),  # only the text before the first period counts
        ("no.", "no"),
        ("Nope", "yes"),
        ("", "yes"),
    ],
)
def test_pope_answer_parsing(text, parsed):
    assert pope_answer(text) == parsed


def test_metrics_against_hand_computation(plugins, tmp_path):
    """8 answers: TP 3, FP 1, TN 2, FN 2 -> acc 5/8, P 3/4, R 3/5, F1 2/3, yes-ratio 4/8."""
    task = make_task(plugins, write_pope(tmp_path / "pope"))
    cases = [  # (label, answer)
        ("yes", "Yes"), ("yes", "Yes, there is a dog."), ("yes", "NO"),  # TP x3 ("NO" parses as yes)
        ("no", "Not sure."),  # FP
        ("no", "No, there is not."), ("no", "no"),  # TN x2
        ("yes", "No"), ("yes", "There is no dog."),  # FN x2
    ]
    records = []
    for i, (label, answer) in enumerate(cases):
        s = Sample(id=str(i), question="Is there a dog in the image?", answers=[label], meta={"label": label})
        records.append({"scores": task.score(s, answer), "meta": s.meta})
    tp, fp, tn, fn = 3, 1, 2, 2
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    expected = {
        "accuracy": (tp + tn) / 8,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "yes_ratio": (tp + fp) / 8,
    }
    assert task.aggregate(records) == pytest.approx(expected)
    assert expected["f1"] == pytest.approx(2 / 3)
    # the per-sample means agree with the run-level accuracy and yes-ratio
    assert np.mean([r["scores"]["accuracy"] for r in records]) == pytest.approx(expected["accuracy"])
    assert task.answer_metrics["yes_ratio"] is None and task.answer_metrics["f1"] is True


def test_undefined_precision_is_none_not_zero(plugins, tmp_path):
    task = make_task(plugins, write_pope(tmp_path / "pope"))
    records = []
    for label in ("yes", "no"):
        s = Sample(id=label, question="q", answers=[label], meta={"label": label})
        records.append({"scores": task.score(s, "No."), "meta": s.meta})
    out = task.aggregate(records)
    assert out["precision"] is None and out["recall"] == 0.0 and out["f1"] == 0.0
    assert out["accuracy"] == 0.5 and out["yes_ratio"] == 0.0
    assert task.aggregate([]) == {}


def test_samples_and_prompt(plugins, tmp_path):
    root = write_pope(tmp_path / "data" / "pope", split="adversarial")
    task = make_task(plugins, tmp_path / "data", split="adversarial")  # found in data/pope
    samples = list(task.samples())
    assert sorted(s.id for s in samples) == ["1", "2", "3", "4"]
    s = next(s for s in samples if s.id == "3")
    assert s.answers == ["yes"] and s.meta["line"] == 3
    assert s.image_path == root / "val2014" / "COCO_val2014_000000000012.jpg"
    assert task.prompt(s) == "Is there a dining table in the image?\nAnswer the question using a single word or phrase."
    assert make_task(plugins, root, split="adversarial", prompt="plain").prompt(s) == s.question
    assert task.split == "adversarial"


def test_instance_masks(plugins, tmp_path):
    root = write_pope(tmp_path / "pope")
    task = make_task(plugins, root, instances="instances_val2014.json")
    samples = {s.id: s for s in task.samples()}
    dog = task.ground_truth_mask(samples["1"])
    expected = np.zeros((30, 40), dtype=bool)
    expected[10:21, 10:31] = True  # polygon, boundary included
    # RLE counts [0, 3, 27, 3, 1167] run down the columns: rows 0-2 of column 0 are set, 27 zeros
    # end column 0, then rows 0-2 of column 1 are set
    expected[0:3, 0] = True
    expected[0:3, 1] = True
    assert np.array_equal(dog, expected)
    assert dog.sum() == 21 * 11 + 6
    table = task.ground_truth_mask(samples["3"])  # box 2,3,5,4 on a 20x15 grid, doubled to the 40x30 file
    expected = np.zeros((30, 40), dtype=bool)
    expected[6:14, 4:14] = True
    assert np.array_equal(table, expected)
    assert task.ground_truth_mask(samples["2"]) is None  # label "no": the object is absent
    boxes = make_task(plugins, root, instances="instances_val2014.json", mask_from="bbox")
    expected = np.zeros((30, 40), dtype=bool)
    expected[10:20, 10:30] = True
    expected[0:3, 0:2] = True
    assert np.array_equal(boxes.ground_truth_mask(samples["1"]), expected)
    assert make_task(plugins, root).ground_truth_mask(samples["1"]) is None  # no instances given
    assert 99 not in task._instances  # only the images POPE asks about are kept


def test_bad_lines_are_sample_errors(plugins, tmp_path):
    good = [json.dumps(line) for line in LINES[:2]]
    raw = "\n".join([good[0], "{broken", json.dumps({"question_id": 7, "image": "x.jpg", "text": "q"}),
                     json.dumps({**LINES[2], "label": "maybe"}), "", good[1], json.dumps({**LINES[3], "question_id": 1})]) + "\n"
    task = make_task(plugins, write_pope(tmp_path / "pope", raw=raw))
    out = {s.id: s for s in task.samples(seed=0)}
    errors = {s.id: s.error for s in out.values() if isinstance(s, SampleError)}
    assert errors["line-2"].startswith("coco_pope_random.json:2: not valid JSON")
    assert "line-3" in errors and "label" in errors["line-3"]
    assert "'maybe'" in errors["line-4"]
    assert "repeats line 1" in errors["line-7"]
    assert isinstance(out["1"], Sample) and isinstance(out["2"], Sample)


def test_whole_file_errors(plugins, tmp_path):
    with pytest.raises(DataError, match="coco_pope_random.json"):
        make_task(plugins, tmp_path)
    with pytest.raises(DataError, match="no JSON object on any line"):
        make_task(plugins, write_pope(tmp_path / "a", raw="1\n[2]\n"))
    with pytest.raises(DataError, match="no JSON object on any line"):
        make_task(plugins, write_pope(tmp_path / "a", raw="[1, 2]"))
    with pytest.raises(ParameterError, match="no split 'easy'"):
        make_task(plugins, write_pope(tmp_path / "b"), split="easy")
    with pytest.raises(ParameterError, match="mask_from"):
        make_task(plugins, tmp_path / "b", mask_from="rle")
    with pytest.raises(DataError, match="instances.json"):
        make_task(plugins, tmp_path / "b", instances="instances.json")


# ------------------------------------------------------------------ end to end + leaderboard


def run(argv):
    from xbench.cli import main

    common = ["--method", "rollout", "--model", "tiny-random-llava", "--no-progress", "--warmup", "0"]
    assert main(["run", *argv, *common]) == 0


@pytest.fixture(scope="module")
def pope_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pope-e2e")
    lines = LINES + [{"question_id": 5, "image": "COCO_val2014_000000000013.jpg", "text": "Is there a cat in the image?", "label": "no"}]
    data = write_pope(base / "data", lines=lines)
    (data / "val2014" / "COCO_val2014_000000000013.jpg").write_bytes(b"not a jpeg")
    out = base / "runs" / "pope"
    run(["--task", "pope", "--data-dir", str(data), "--limit", "5", "--out", str(out), "--task-param", "instances=instances_val2014.json"])
    return base, out


def test_run_end_to_end(pope_run):
    _, out = pope_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"]["name"] == "pope" and summary["task"]["split"] == "random"
    assert summary["task"]["params"]["instances"] == "instances_val2014.json"
    assert summary["n_ok"] == 4 and summary["n_errors"] == 1 and summary["errors_by_stage"] == {"image": 1}
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert "COCO_val2014_000000000013.jpg" in next(r for r in records if "error" in r)["error"]
    ok = [r for r in records if "error" not in r]
    y_true = [r["gold"][0] == "yes" for r in ok]
    y_pred = [pope_answer(r["answer"]) == "yes" for r in ok]
    tp = sum(t and p for t, p in zip(y_true, y_pred))
    m = summary["metrics"]
    assert m["accuracy"]["value"] == pytest.approx(np.mean([t == p for t, p in zip(y_true, y_pred)]))
    assert m["yes_ratio"]["value"] == pytest.approx(np.mean(y_pred)) and m["yes_ratio"]["higher_is_better"] is None
    assert m["recall"]["value"] == pytest.approx(tp / sum(y_true))
    # "yes" questions (dog, dining table) have masks, so localisation is scored on them only
    assert m["energy_in_mask"]["n"] == 2


def test_leaderboard_groups_by_task(pope_run, tmp_path):
    from xbench.cli import main
    from test_task_vqa_v2 import ITEMS, write_vqa

    base, _ = pope_run
    data = write_vqa(tmp_path / "vqa", ITEMS[:2])
    run(["--task", "vqa_v2", "--data-dir", str(data), "--limit", "2", "--out", str(base / "runs" / "vqa")])
    table = base / "board.md"
    assert main(["leaderboard", str(base / "runs"), "--output", str(table)]) == 0
    assert " f1 ↑ |" in table.read_text().split("### ")[1]  # the headline shows POPE's F1 as its answer metric
    assert main(["leaderboard", str(base / "runs"), "--columns", "all", "--output", str(table)]) == 0
    text = table.read_text()
    sections = text.split("### ")[1:]
    titles = [s.splitlines()[0] for s in sections]
    assert [t.split(" · split: ")[0] for t in titles] == [
        "task: pope · model: tiny-random-llava",
        "task: vqa_v2 · model: tiny-random-llava",
    ]
    pope_section, vqa_section = sections
    assert "f1 ↑" in pope_section and "yes_ratio" in pope_section and "yes_ratio ↑" not in pope_section
    assert "accuracy\\[number\\] ↑" in vqa_section and "| f1 ↑" not in vqa_section  # markdown-escaped brackets
    assert main(["leaderboard", str(base / "runs"), "--task", "vqa_v2", "--output", str(table)]) == 0
    assert "pope" not in table.read_text()


def test_data_dir_defaults_to_the_environment(monkeypatch, tmp_path):
    from xbench.cli import build_parser

    monkeypatch.setenv("XBENCH_DATA_DIR", str(tmp_path))
    args = build_parser().parse_args(["run", "--method", "rollout", "--task", "pope"])
    assert args.data_dir == str(tmp_path)


# ------------------------------------------------------------------ official sources and layouts (issue 19)


def test_official_sources_are_found_without_parameters(plugins, tmp_path):
    # A-OKVQA as the official repository ships it: a JSON array under output/seem/aokvqa/
    a = write_pope(tmp_path / "a")
    (a / "coco_pope_random.json").unlink()
    seem = a / "output" / "seem" / "aokvqa" / "aokvqa_pope_seem_random.json"
    seem.parent.mkdir(parents=True)
    seem.write_text(json.dumps(LINES, indent=1))
    task = make_task(plugins, a)
    assert task.source == "aokvqa" and task.questions_path == seem
    samples = {s.id: s for s in task.samples()}
    assert sorted(samples) == ["1", "2", "3", "4"] and samples["3"].meta["entry"] == 2
    assert samples["3"].image_path == a / "val2014" / "COCO_val2014_000000000012.jpg"
    # GQA: JSON lines in gqa/, images in images/
    g = tmp_path / "g"
    gqa_lines = [{**line, "image": f"23{line['question_id']}.jpg"} for line in LINES]
    (g / "gqa").mkdir(parents=True)
    (g / "gqa" / "gqa_pope_popular.json").write_text("".join(json.dumps(line) + "\n" for line in gqa_lines))
    (g / "images").mkdir()
    task = make_task(plugins, g, split="popular")
    assert task.source == "gqa" and task.image_folder == g / "images"
    assert next(s for s in task.samples() if s.id == "2").image_path == g / "images" / "232.jpg"
    with pytest.raises(ParameterError, match="apply to the coco and aokvqa sources, not 'gqa'"):
        make_task(plugins, g, split="popular", instances="instances_val2014.json")


def test_several_sources_are_refused_unless_one_is_chosen(plugins, tmp_path):
    root = write_pope(tmp_path / "pope")
    (root / "gqa").mkdir()
    (root / "gqa" / "gqa_pope_random.json").write_text((root / "coco_pope_random.json").read_text())
    (root / "images").mkdir()
    with pytest.raises(DataError) as info:
        make_task(plugins, root)
    message = str(info.value)
    assert "of 2 source datasets were found" in message and "choose one with --task-param source=coco|gqa" in message
    assert f"{str(root / 'coco_pope_random.json')!r} (coco, flat)" in message
    assert f"{str(root / 'gqa' / 'gqa_pope_random.json')!r} (gqa, gqa/)" in message
    assert make_task(plugins, root, source="coco").questions_path == root / "coco_pope_random.json"
    assert make_task(plugins, root, source="gqa").image_folder == root / "images"
    with pytest.raises(ParameterError, match="source='vg' is not one of \\['auto', 'coco', 'aokvqa', 'gqa'\\]"):
        make_task(plugins, root, source="vg")
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(DataError) as info:
        make_task(plugins, tmp_path / "nothing-here")
    for name in ("coco_pope_random.json", "output/coco/coco_pope_random.json", "output/seem/gqa/gqa_pope_seem_random.json"):
        assert name in str(info.value)


def test_question_ids_that_would_collide_are_refused(plugins, tmp_path):
    raw = "".join(json.dumps(line) + "\n" for line in [LINES[0], {**LINES[1], "question_id": "1"}, {**LINES[2], "question_id": 1.0}])
    out = {s.id: s for s in make_task(plugins, write_pope(tmp_path / "pope", raw=raw)).samples()}
    assert isinstance(out["1"], Sample) and out["1"].meta["line"] == 1
    assert out["line-2"].error == ("coco_pope_random.json:2: question_id '1' (a string) and 1 (an integer) on line 1 "
                                   "would both be sample '1'; refused (xbench does not guess which is meant)")  # fmt: skip
    assert out["line-3"].error == "coco_pope_random.json:3: question_id 1.0 (a float) is neither an integer nor a non-empty string"
