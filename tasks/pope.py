"""POPE (object hallucination) from a local copy of the official question files.

Reads ``<source>_pope_<split>.json`` (split = random | popular | adversarial; entries
``{"question_id", "image", "text", "label"}`` as JSON lines or one JSON array) from the data folder
(or its ``pope/`` subfolder), flat, in ``<source>/`` or as the official repository ships them
(``output/coco/``, ``output/seem/aokvqa/aokvqa_pope_seem_<split>.json``, ``output/seem/gqa/...``).
The source dataset (``coco``, ``aokvqa``, ``gqa``) is the one whose files are there; when several
are, ``source=NAME`` chooses (xbench refuses to guess, listing what it found). Images are read from
``val2014/`` (COCO and A-OKVQA) or ``images/`` (GQA). Answers are parsed as POPE does
(:func:`xbench.answers.pope_answer`); the run summary has accuracy, precision, recall and F1 with
"yes" as the positive class, and the share of "yes" answers (``yes_ratio``, no direction), all
computed with scikit-learn over the run's records.

With ``instances=FILE`` (COCO ``instances_val2014.json``; COCO-image sources only), a question
whose label is "yes" gets a ground-truth mask: every instance of the asked category in the image
(polygon or uncompressed-RLE segmentation, or boxes with ``mask_from=bbox``). Questions labelled
"no" have no mask: the object is absent.

Ids are read as the file means them: ``question_id`` is a JSON integer or a non-empty string, and
two entries that would give one sample id (``1`` and ``"1"`` included) make the later one a
per-sample error naming the first; image paths stay inside the data folder.

Task parameters: ``prompt``, ``source``, ``questions_file``, ``image_dir``, ``instances``,
``mask_from``, ``allow_outside_data_dir``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from xbench.answers import pope_answer
from xbench.api import Sample, SampleError, Task
from xbench.datafiles import Record, describe, finite_numbers, integer, load_json, read_records, text
from xbench.errors import DataError, ParameterError
from xbench.hookspecs import hookimpl
from xbench.params import Param
from xbench.taskdata import (
    ALLOW_OUTSIDE_PARAM,
    PROMPT_PARAM,
    Candidate,
    LocalFiles,
    box_mask,
    data_folder,
    fit_mask,
    listing,
    pick,
    polygon_mask,
    resolve_prompt,
    rle_mask,
    search,
    task_bases,
)

#: source dataset -> its image folder (relative to the data folder)
SOURCES = {"coco": "val2014", "aokvqa": "val2014", "gqa": "images"}
COCO_IMAGE_SOURCES = ("coco", "aokvqa")


def _question_layouts(source: str) -> list[Candidate]:
    """Where ``source``'s question files may be: flat, in ``<source>/``, or in the official repository's
    ``output/<source>/`` (and, for A-OKVQA and GQA, ``output/seem/<source>/<source>_pope_seem_<split>.json``)."""
    name = f"{source}_pope_{{split}}.json"
    found = [Candidate(f"{source}, flat", name, source), Candidate(f"{source}, {source}/", f"{source}/{name}", source),
             Candidate(f"{source}, POPE repository", f"output/{source}/{name}", source)]  # fmt: skip
    if source != "coco":
        found.append(Candidate(f"{source}, POPE repository", f"output/seem/{source}/{source}_pope_seem_{{split}}.json", source))
    return found


QUESTIONS = [c for source in SOURCES for c in _question_layouts(source)]
MASK_SOURCES = ("segmentation", "bbox")
_FIELDS = ("question_id", "image", "text", "label")
_OBJECT = re.compile(r"^\s*is there an? (.+?) in the (?:image|picture)\s*\?", re.IGNORECASE)
_IMAGE_ID = re.compile(r"(\d+)\.\w+$")


def _sample_id(qid: Any) -> str | None:
    """The sample id of a question id: a JSON integer or a non-empty string; None for anything else."""
    if integer(qid) is not None:
        return str(qid)
    return qid if text(qid) is not None else None


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
            if integer(obj["image_id"]) is None or obj["image_id"] not in self.wanted:
                return None
            return {k: obj.get(k) for k in ("image_id", "category_id", "bbox", "segmentation", "iscrowd")}
        if "file_name" in obj and "id" in obj:
            return obj if integer(obj["id"]) is not None and obj["id"] in self.wanted else None
        return obj


class POPE(LocalFiles, Task):
    name = "pope"
    description = "POPE object-hallucination yes/no questions on COCO, A-OKVQA or GQA images (local official files); acc, P, R, F1, yes-ratio"
    splits = ("random", "popular", "adversarial")
    max_new_tokens = 8
    answer_metrics = {"accuracy": True, "precision": True, "recall": True, "f1": True, "yes_ratio": None}
    image_key = "image"
    parameters = {
        "prompt": PROMPT_PARAM,
        "source": Param("auto", choices=("auto", *SOURCES), doc="the source dataset of the questions; auto: the one whose files are there"),
        "image_dir": Param(None, type=str, doc="the images' folder, relative to the data folder; default: val2014/ (COCO, A-OKVQA) or images/ (GQA)"),
        "questions_file": Param(None, type=str, doc="the questions file ({split} is filled in); default: found by layout"),
        "instances": Param(None, type=str, doc="COCO instance annotations giving ground-truth masks (instances_val2014.json)"),
        "mask_from": Param("segmentation", choices=MASK_SOURCES, doc="the instances' segmentations or their boxes (bbox)"),
        "allow_outside_data_dir": ALLOW_OUTSIDE_PARAM,
    }

    def __init__(self, split=None, data_dir=None, **params) -> None:
        super().__init__(split, data_dir, **params)
        params = self.params
        self.template = resolve_prompt(params["prompt"])
        self.folder = data_folder(self.name, data_dir, "the POPE question files and their images")
        hit = self.find("POPE questions file", "questions_file", self._question_candidates(), task_bases(self.name, self.folder))
        self.root, self.questions_path = hit.base, hit.path
        self.source = hit.candidate.group or self._source_of(hit.path.name)
        self.image_folder = self.find("image folder", "image_dir", [Candidate(self.source, SOURCES[self.source])], [self.root]).path
        self._lines = self._read_lines()
        self._first = self._first_entries()
        self.instances_path = None
        self._instances: dict[int, list] | None = None
        self._categories: dict[str, Any] = {}
        self._image_sizes: dict[int, Any] = {}
        if params["instances"]:
            if self.source not in COCO_IMAGE_SOURCES:
                raise ParameterError(f"pope instances (COCO annotations) apply to the {' and '.join(COCO_IMAGE_SOURCES)} sources, not {self.source!r}")
            self.instances_path = self.find("COCO instances file", "instances", [], [self.root]).path
            self._load_instances()

    # ------------------------------------------------------------------ loading
    def _question_candidates(self) -> list[Candidate]:
        """The question files of the chosen source; with ``source=auto`` all sources, refused when
        files of more than one are present."""
        source = self.params["source"]
        if source != "auto":
            return _question_layouts(source)
        _, found = search(task_bases(self.name, self.folder), self.split, QUESTIONS)
        sources = sorted({f.candidate.group for f in found})
        if len(sources) > 1 and not self.params["questions_file"]:
            raise DataError(
                f"task 'pope': question files for split {self.split!r} of {len(sources)} source datasets were found: "
                f"{listing(found)}; choose one with --task-param source={'|'.join(sources)}"
            )
        return QUESTIONS

    def _source_of(self, file_name: str) -> str:
        """The source of a question file the user named (``source``, or its file-name prefix; else coco)."""
        if self.params["source"] != "auto":
            return self.params["source"]
        return next((s for s in SOURCES if file_name.startswith(f"{s}_pope")), "coco")

    def _read_lines(self) -> list[Record]:
        """Each entry of the questions file (JSON lines or a JSON array), parsed strictly."""
        entries = read_records(self.questions_path, "POPE questions")
        if not any(isinstance(r.value, dict) for r in entries):
            raise DataError(
                f"{str(self.questions_path)!r} has no JSON object on any line; expected JSON lines "
                '{"question_id", "image", "text", "label"} (POPE format) or a JSON array of them'
            )
        return entries

    def _first_entries(self) -> dict[str, int]:
        """Sample id -> index of the first entry with a usable question_id giving it."""
        first: dict[str, int] = {}
        for idx, r in enumerate(self._lines):
            sid = _sample_id(r.value.get("question_id")) if isinstance(r.value, dict) else None
            if sid is not None:
                first.setdefault(sid, idx)
        return first

    def _load_instances(self) -> None:
        wanted = {coco_image_id(r.value["image"]) for r in self._lines if isinstance(r.value, dict) and isinstance(r.value.get("image"), str)}
        data = load_json(self.instances_path, "COCO instance annotations", object_hook=_Instances(wanted - {None}))
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list) or not isinstance(data.get("categories"), list):
            raise DataError(f"{str(self.instances_path)!r} lacks 'annotations' or 'categories'; is it a COCO instances file?")
        self._categories = {str(c["name"]).lower(): c.get("id") for c in data["categories"] if isinstance(c, dict) and "name" in c}
        self._image_sizes = {
            im["id"]: (im.get("width"), im.get("height"))
            for im in data.get("images") or []
            if isinstance(im, dict) and ("width" in im or "height" in im)
        }
        self._instances = {}
        for ann in data["annotations"]:
            if ann is not None:
                self._instances.setdefault(ann["image_id"], []).append(ann)

    # ------------------------------------------------------------------ samples
    def samples(self, limit=None, seed=0) -> Iterator[Sample | SampleError]:
        """Entries in a seeded shuffled order, first ``limit``; a malformed entry is a
        :class:`SampleError` naming the file and line number (or array index)."""
        for idx in pick(self._lines, limit, seed):
            yield self._sample(idx)

    def _sample(self, idx: int) -> Sample | SampleError:
        r = self._lines[idx]
        obj, where = r.value, r.where
        if isinstance(obj, Exception):
            return SampleError(r.sid, f"{where}: {obj}")
        if not isinstance(obj, dict) or not all(k in obj for k in _FIELDS):
            missing = [k for k in _FIELDS if not isinstance(obj, dict) or k not in obj]
            return SampleError(r.sid, f"{where}: expected an object with {', '.join(_FIELDS)} (missing {', '.join(missing)})")
        qid, label, sid = obj["question_id"], obj["label"], _sample_id(obj["question_id"])
        problem = (
            f"question_id {describe(qid)} is neither an integer nor a non-empty string" if sid is None
            else f"label {label!r} is not 'yes' or 'no'" if label not in ("yes", "no")
            else f"text {describe(obj['text'])} is not a text" if text(obj["text"]) is None
            else self._repeat(idx, qid, sid)
        )  # fmt: skip
        if problem is not None:
            return SampleError(r.sid, f"{where}: {problem}")
        path = self.member(self.image_folder, obj["image"])
        if isinstance(path, str):
            return SampleError(r.sid, f"{where}: {path}")
        meta = {"question_id": qid, "image": obj["image"], "label": label, **r.meta}
        return Sample(id=sid, question=obj["text"], answers=[label], image_path=path, meta=meta)

    def _repeat(self, idx: int, qid: Any, sid: str) -> str | None:
        """Why entry ``idx`` is refused as a repeat of an earlier entry giving sample id ``sid``, or None."""
        first = self._lines[self._first[sid]]
        if self._first[sid] == idx:
            return None
        if type(first.value["question_id"]) is type(qid):
            return f"question_id {qid!r} repeats {first.ref}"
        return (f"question_id {describe(qid)} and {describe(first.value['question_id'])} on {first.ref} would both be "
                f"sample {sid!r}; refused (xbench does not guess which is meant)")  # fmt: skip

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
        name = self.instances_path.name
        category = self._categories.get(m.group(1).strip().lower())
        if category is None:
            raise DataError(f"POPE object {m.group(1)!r} is not a category of {name}")
        image_id = coco_image_id(sample.meta["image"])
        everything = self._instances.get(image_id, [])
        bad = [v for v in [category, *(a["category_id"] for a in everything)] if integer(v) is None]
        if bad:
            raise DataError(f"{name}: category id {describe(bad[0])} (of {m.group(1)!r} or in image {image_id}) is not an integer")
        anns = [a for a in everything if a["category_id"] == category]
        if not anns:
            raise DataError(f"{name} has no {m.group(1)!r} instance in image {image_id}")
        size = sample.load_image().size
        stored = self._image_sizes.get(image_id, size)
        if not all(integer(v) is not None and v > 0 for v in stored):
            raise DataError(f"{name}: image {image_id} has width/height {describe(stored[0])}/{describe(stored[1])}, not positive integers")
        mask = np.zeros((stored[1], stored[0]), dtype=bool)
        for ann in anns:
            mask |= self._instance_mask(ann, stored)
        return fit_mask(mask, size)

    def _instance_mask(self, ann: dict, size: tuple[int, int]) -> np.ndarray:
        seg = ann.get("segmentation")
        if self.params["mask_from"] == "bbox" or not seg:
            if not ann.get("bbox"):
                raise DataError(f"{self.instances_path.name}: an annotation of image {ann['image_id']} has neither segmentation nor bbox")
            if not isinstance(ann["bbox"], list) or len(ann["bbox"]) != 4 or not finite_numbers(ann["bbox"]):
                raise DataError(f"{self.instances_path.name}: an annotation of image {ann['image_id']} has bbox {ann['bbox']!r}, not four finite numbers")
            return box_mask(size, [ann["bbox"]])
        if isinstance(seg, list):
            if not all(isinstance(poly, list) and finite_numbers(poly) for poly in seg):
                raise DataError(f"{self.instances_path.name}: a polygon of image {ann['image_id']} holds something other than finite numbers")
            return polygon_mask(size, seg)
        if isinstance(seg, dict):
            return fit_mask(rle_mask(seg), size)
        raise DataError(f"{self.instances_path.name}: unrecognised segmentation of type {type(seg).__name__}")

    def data_files(self) -> list[Path]:
        return [self.questions_path, self.instances_path]


@hookimpl
def xbench_register_tasks(registry):
    registry.register(POPE)
