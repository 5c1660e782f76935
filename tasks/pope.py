"""POPE (object hallucination) from a local copy of the official question files.

Reads the JSON-lines file ``coco_pope_<split>.json`` (split = random | popular | adversarial;
lines ``{"question_id", "image", "text", "label"}``) from the data folder (or its ``pope/``
subfolder) and COCO images ``val2014/<image>``. Answers are parsed as POPE does
(:func:`xbench.answers.pope_answer`); the run summary has accuracy, precision, recall and F1
with "yes" as the positive class, and the share of "yes" answers (``yes_ratio``, no direction),
all computed with scikit-learn over the run's records.

With ``instances=FILE`` (COCO ``instances_val2014.json``), a question whose label is "yes"
gets a ground-truth mask: every instance of the asked category in the image (polygon or
uncompressed-RLE segmentation, or boxes with ``mask_from=bbox``). Questions labelled "no" have
no mask: the object is absent.

Task parameters: ``prompt``, ``image_dir``, ``questions_file``, ``instances``, ``mask_from``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from xbench.answers import pope_answer
from xbench.api import Sample, SampleError, Task
from xbench.errors import DataError
from xbench.hookspecs import hookimpl
from xbench.params import Param
from xbench.taskdata import (
    PROMPT_PARAM,
    LocalFiles,
    box_mask,
    data_file,
    data_root,
    fit_mask,
    load_json,
    pick,
    polygon_mask,
    resolve_prompt,
    rle_mask,
)

MASK_SOURCES = ("segmentation", "bbox")
_FIELDS = ("question_id", "image", "text", "label")
_OBJECT = re.compile(r"^\s*is there an? (.+?) in the (?:image|picture)\s*\?", re.IGNORECASE)
_IMAGE_ID = re.compile(r"(\d+)\.\w+$")


def coco_image_id(file_name: str) -> int | None:
    """The image id at the end of a COCO file name (``COCO_val2014_000000310196.jpg`` -> 310196)."""
    m = _IMAGE_ID.search(file_name)
    return int(m.group(1)) if m else None


class _Instances:
    """``json.load`` hook for COCO instance annotations keeping only the images POPE asks about."""

    def __init__(self, image_ids: set[int]) -> None:
        self.wanted = image_ids

    def __call__(self, obj: dict) -> Any:
        if "category_id" in obj and "image_id" in obj:
            if obj["image_id"] not in self.wanted:
                return None
            return {k: obj.get(k) for k in ("image_id", "category_id", "bbox", "segmentation", "iscrowd")}
        if "file_name" in obj and "id" in obj:
            return obj if obj["id"] in self.wanted else None
        return obj


class POPE(LocalFiles, Task):
    name = "pope"
    description = "POPE object-hallucination yes/no questions on COCO (local official files); acc, P, R, F1, yes-ratio"
    splits = ("random", "popular", "adversarial")
    max_new_tokens = 8
    answer_metrics = {"accuracy": True, "precision": True, "recall": True, "f1": True, "yes_ratio": None}
    image_key = "image"
    parameters = {
        "prompt": PROMPT_PARAM,
        "image_dir": Param("val2014", doc="the COCO images' folder, relative to the data folder"),
        "questions_file": Param("coco_pope_{split}.json", doc="the questions file ({split} is filled in)"),
        "instances": Param(None, type=str, doc="COCO instance annotations giving ground-truth masks (instances_val2014.json)"),
        "mask_from": Param("segmentation", choices=MASK_SOURCES, doc="the instances' segmentations or their boxes (bbox)"),
    }

    def __init__(self, split=None, data_dir=None, **params) -> None:
        super().__init__(split, data_dir, **params)
        params = self.params
        self.template = resolve_prompt(params["prompt"])
        questions_name = self.split_name("questions_file", params["questions_file"])
        self.root = data_root(self.name, data_dir, questions_name)
        self.questions_path = data_file(self.root, questions_name, "POPE questions")
        self._lines = self._read_lines()
        self.instances_path = None
        self._instances: dict[int, list] | None = None
        self._categories: dict[str, int] = {}
        self._image_sizes: dict[int, tuple[int, int]] = {}
        if params["instances"]:
            self.instances_path = data_file(self.root, params["instances"], "COCO instance annotations")
            self._load_instances()

    # ------------------------------------------------------------------ loading
    def _read_lines(self) -> list[tuple[int, Any]]:
        """``(line number, parsed object or the parse error)`` for each non-blank line."""
        try:
            text = self.questions_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read POPE questions {str(self.questions_path)!r}: {exc}") from None
        lines = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append((n, json.loads(line)))
            except ValueError as exc:
                lines.append((n, exc))
        if not any(isinstance(obj, dict) for _, obj in lines):
            raise DataError(
                f"{str(self.questions_path)!r} has no JSON object on any line; expected JSON lines "
                '{"question_id", "image", "text", "label"} (POPE format)'
            )
        return lines

    def _load_instances(self) -> None:
        wanted = {coco_image_id(obj["image"]) for _, obj in self._lines if isinstance(obj, dict) and isinstance(obj.get("image"), str)}
        data = load_json(self.instances_path, "COCO instance annotations", object_hook=_Instances(wanted - {None}))
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list) or not isinstance(data.get("categories"), list):
            raise DataError(f"{str(self.instances_path)!r} lacks 'annotations' or 'categories'; is it a COCO instances file?")
        self._categories = {str(c["name"]).lower(): c["id"] for c in data["categories"] if isinstance(c, dict) and "name" in c}
        self._image_sizes = {
            im["id"]: (int(im["width"]), int(im["height"]))
            for im in data.get("images") or []
            if isinstance(im, dict) and "width" in im and "height" in im
        }
        self._instances = {}
        for ann in data["annotations"]:
            if ann is not None:
                self._instances.setdefault(ann["image_id"], []).append(ann)

    # ------------------------------------------------------------------ samples
    def samples(self, limit=None, seed=0) -> Iterator[Sample | SampleError]:
        """Lines in a seeded shuffled order, first ``limit``; a malformed line is a
        :class:`SampleError` naming the file and line number."""
        seen: dict[Any, int] = {}
        for idx in pick(self._lines, limit, seed):
            yield self._sample(*self._lines[idx], seen)

    def _sample(self, lineno: int, obj: Any, seen: dict) -> Sample | SampleError:
        where = f"{self.questions_path.name}:{lineno}"
        sid = f"line-{lineno}"
        if isinstance(obj, Exception):
            return SampleError(sid, f"{where}: not valid JSON ({obj})")
        if not isinstance(obj, dict) or not all(k in obj for k in _FIELDS):
            return SampleError(sid, f"{where}: expected an object with {', '.join(_FIELDS)}")
        label = obj["label"]
        if label not in ("yes", "no"):
            return SampleError(sid, f"{where}: label {label!r} is not 'yes' or 'no'")
        if not isinstance(obj["image"], str) or not isinstance(obj["text"], str):
            return SampleError(sid, f"{where}: 'image' and 'text' must be strings")
        qid = obj["question_id"]
        if qid in seen:
            return SampleError(sid, f"{where}: question_id {qid!r} repeats line {seen[qid]}")
        seen[qid] = lineno
        return Sample(
            id=str(qid),
            question=obj["text"],
            answers=[label],
            image_path=self.root / self.params["image_dir"] / obj["image"],
            meta={"question_id": qid, "image": obj["image"], "label": label, "line": lineno},
        )

    # ------------------------------------------------------------------ scoring
    def score(self, sample: Sample, answer: str) -> dict[str, float]:
        """``accuracy``: the parsed answer equals the label; ``yes_ratio``: 1 when it parses as yes."""
        parsed = pope_answer(answer)
        return {"accuracy": float(parsed == sample.answers[0]), "yes_ratio": float(parsed == "yes")}

    def aggregate(self, records):
        """Accuracy, precision, recall, F1 (positive = yes) and yes-ratio over the run.
        Precision (no "yes" answer) or F1 (no "yes" anywhere) that is undefined is None."""
        from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

        if not records:
            return {}
        y_true = np.array([r["meta"]["label"] == "yes" for r in records])
        y_pred = np.array([r["scores"]["yes_ratio"] == 1.0 for r in records])
        kw = {"pos_label": True, "zero_division": np.nan}
        out = {
            "accuracy": accuracy_score(y_true, y_pred),
            "precision": precision_score(y_true, y_pred, **kw),
            "recall": recall_score(y_true, y_pred, **kw),
            "f1": f1_score(y_true, y_pred, **kw),
            "yes_ratio": float(y_pred.mean()),
        }
        return {k: (None if math.isnan(v) else float(v)) for k, v in out.items()}

    def ground_truth_mask(self, sample: Sample) -> np.ndarray | None:
        """All instances of the asked category on the image's pixels, for "yes" questions when
        instance annotations were given; None otherwise. A question naming no COCO category, or
        an image without that category, is a :class:`DataError` (noted in the record's meta)."""
        if self._instances is None or sample.meta["label"] != "yes":
            return None
        m = _OBJECT.match(sample.question)
        if m is None:
            raise DataError(f"cannot find the object in POPE question {sample.question!r} (expected 'Is there a X in the image?')")
        category = self._categories.get(m.group(1).strip().lower())
        if category is None:
            raise DataError(f"POPE object {m.group(1)!r} is not a category of {self.instances_path.name}")
        image_id = coco_image_id(sample.meta["image"])
        anns = [a for a in self._instances.get(image_id, []) if a["category_id"] == category]
        if not anns:
            raise DataError(f"{self.instances_path.name} has no {m.group(1)!r} instance in image {image_id}")
        size = sample.load_image().size
        stored = self._image_sizes.get(image_id, size)
        mask = np.zeros((stored[1], stored[0]), dtype=bool)
        for ann in anns:
            mask |= self._instance_mask(ann, stored)
        return fit_mask(mask, size)

    def _instance_mask(self, ann: dict, size: tuple[int, int]) -> np.ndarray:
        seg = ann.get("segmentation")
        if self.params["mask_from"] == "bbox" or not seg:
            if not ann.get("bbox"):
                raise DataError(f"{self.instances_path.name}: an annotation of image {ann['image_id']} has neither segmentation nor bbox")
            return box_mask(size, [ann["bbox"]])
        if isinstance(seg, list):
            return polygon_mask(size, seg)
        if isinstance(seg, dict):
            return fit_mask(rle_mask(seg), size)
        raise DataError(f"{self.instances_path.name}: unrecognised segmentation of type {type(seg).__name__}")

    def data_files(self) -> list[Path]:
        return [self.questions_path, self.instances_path]


@hookimpl
def xbench_register_tasks(registry):
    registry.register(POPE)
