"""GQA balanced questions from a local copy of the official files; exact-match accuracy.

Reads ``<split>_balanced_questions.json`` (an object keyed by question id) and images
``images/<imageId>.jpg`` from the data folder (or its ``gqa/`` subfolder), laid out as the
downloads unpack (``questions1.2/``, ``sceneGraphs/``, ``images/``) or flat; no task parameter is
needed. Scoring follows GQA's ``eval.py`` after LLaVA-1.5's processing
(:func:`xbench.answers.gqa_correct`); only balanced questions are scored, as ``eval.py`` does
(``isBalanced: false`` entries are skipped). The run summary adds ``accuracy[binary]`` and
``accuracy[open]`` (open = structural type ``query``).

Scene graphs (``<split>_sceneGraphs.json``, flat or in ``sceneGraphs/``; official for train and
val only) are used when found (``scene_graphs=auto``, the default), or read from the file given as
``scene_graphs=FILE``, or not at all with ``scene_graphs=none``: the objects a question's
``annotations`` point at (in the question, answer and full answer) become the ground-truth mask,
the union of their boxes ``(x, y, w, h)``, scaled to the image when it is stored at another size.

Ids are read as the file means them: a question id repeated in the file is refused naming it,
image and object ids must be strings, image paths stay inside the data folder.

Task parameters: ``prompt``, ``questions_file``, ``image_dir``, ``scene_graphs``,
``allow_outside_data_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from xbench.answers import gqa_correct
from xbench.api import Sample, SampleError, Task
from xbench.datafiles import describe, finite_numbers, integer, load_json, text
from xbench.errors import DataError
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
    pick,
    resolve_prompt,
    task_bases,
)

QUESTIONS = (Candidate("flat", "{split}_balanced_questions.json"),
             Candidate("questions1.2 download", "questions1.2/{split}_balanced_questions.json"))
SCENE_GRAPHS = (Candidate("flat", "{split}_sceneGraphs.json"), Candidate("sceneGraphs download", "sceneGraphs/{split}_sceneGraphs.json"))
IMAGES = (Candidate("images download", "images"),)
_ANNOTATED_PARTS = ("question", "answer", "fullAnswer")


class _Question(NamedTuple):
    image_id: Any
    question: Any
    answer: Any
    structural: Any
    objects: tuple  # scene-graph object ids annotated in the question / answer / full answer (as read)
    balanced: Any


def _compact_question(obj: dict) -> Any:
    """``json.load`` hook keeping only what scoring and masks need from each question."""
    if "imageId" in obj and "question" in obj:
        types = obj.get("types") if isinstance(obj.get("types"), dict) else {}
        ann = obj.get("annotations") if isinstance(obj.get("annotations"), dict) else {}
        objects = []
        for part in _ANNOTATED_PARTS:
            pointers = ann.get(part)
            if isinstance(pointers, dict):
                objects.extend(pointers.values())
        return _Question(
            obj["imageId"], obj["question"], obj.get("answer"), types.get("structural"),
            tuple(dict.fromkeys(o if isinstance(o, str) else _Bad(describe(o)) for o in objects)), obj.get("isBalanced", True),
        )
    return obj


class _Bad(NamedTuple):
    """An annotation pointer that is not an object id string (kept to be reported)."""

    value: Any


def _compact_scene(obj: dict) -> Any:
    """``json.load`` hook keeping each scene-graph object's box only."""
    if all(k in obj for k in ("x", "y", "w", "h")) and "name" in obj:
        return (obj["x"], obj["y"], obj["w"], obj["h"])
    return obj


class GQA(LocalFiles, Task):
    name = "gqa"
    description = "GQA balanced questions (local official files); exact-match accuracy, binary/open"
    splits = ("testdev", "val", "train")
    max_new_tokens = 8
    breakdown_key = "kind"
    answer_metrics = {"accuracy": True}
    parameters = {
        "prompt": PROMPT_PARAM,
        "image_dir": Param(None, type=str, doc="the images' folder, relative to the data folder; default: images/"),
        "questions_file": Param(None, type=str, doc="the questions file ({split} is filled in); default: found by layout"),
        "scene_graphs": Param("auto", nullable=True, doc="a scene-graph file giving ground-truth masks; auto: the split's file when found; none: no masks"),
        "allow_outside_data_dir": ALLOW_OUTSIDE_PARAM,
    }

    def __init__(self, split=None, data_dir=None, **params) -> None:
        super().__init__(split, data_dir, **params)
        params = self.params
        self.template = resolve_prompt(params["prompt"])
        self.folder = data_folder(self.name, data_dir, "the GQA balanced questions and images")
        hit = self.find("questions file", "questions_file", QUESTIONS, task_bases(self.name, self.folder))
        self.root, self.questions_path = hit.base, hit.path
        self.image_folder = self.find("image folder", "image_dir", IMAGES, [self.root]).path
        data = load_json(self.questions_path, "an object keyed by question id", object_hook=_compact_question)
        if not isinstance(data, dict):
            raise DataError(f"{str(self.questions_path)!r} is not an object keyed by question id; is it a GQA questions file?")
        self._ids = [qid for qid, q in data.items() if not (isinstance(q, _Question) and q.balanced is False)]
        self._questions = data
        self.scene_graphs_path = self._find_scene_graphs(params["scene_graphs"])
        self._scenes: dict | None = None
        if self.scene_graphs_path is not None:
            scenes = load_json(self.scene_graphs_path, "an object keyed by image id", object_hook=_compact_scene)
            if not isinstance(scenes, dict):
                raise DataError(f"{str(self.scene_graphs_path)!r} is not an object keyed by image id; is it a GQA scene-graph file?")
            self._scenes = scenes

    def _find_scene_graphs(self, value: Any) -> Path | None:
        """``scene_graphs``: ``auto`` finds the split's file when there is one; None or ``none``: none."""
        if value is None or value == "none":
            return None
        hit = self.find("scene-graph file", "scene_graphs", SCENE_GRAPHS, [self.root], required=value != "auto")
        return None if hit is None else hit.path

    # ------------------------------------------------------------------ samples
    def samples(self, limit=None, seed=0) -> Iterator[Sample | SampleError]:
        """Balanced questions in a seeded shuffled order, first ``limit``; a question without an
        image id, text or answer, or with one of the wrong type, is a :class:`SampleError` naming
        the file and question id."""
        for idx in pick(self._ids, limit, seed):
            yield self._sample(self._ids[idx])

    def _sample(self, qid: str) -> Sample | SampleError:
        q = self._questions[qid]
        where = f"{self.questions_path.name}: question {qid}"
        if not isinstance(q, _Question):
            return SampleError(qid, f"{where} lacks imageId or question")
        meta = {"image_id": q.image_id} if text(q.image_id) is not None else {}
        problem = (
            f"imageId {describe(q.image_id)} is not a string" if text(q.image_id) is None
            else f"question {describe(q.question)} is not a text" if text(q.question) is None
            else f"has no answer ({describe(q.answer)})" if text(q.answer) is None
            else f"isBalanced {describe(q.balanced)} is not true or false" if not isinstance(q.balanced, bool)
            else next((f"annotations point at {o.value}, not an object id string" for o in q.objects if isinstance(o, _Bad)), None)
        )  # fmt: skip
        if problem is not None:
            return SampleError(qid, f"{where}{'' if problem.startswith('has') else ':'} {problem}", meta)
        path = self.member(self.image_folder, f"{q.image_id}.jpg")
        if isinstance(path, str):
            return SampleError(qid, f"{where}: {path}", meta)
        kind = "open" if q.structural == "query" else "binary"
        meta.update(kind=kind, objects=list(q.objects))
        return Sample(id=qid, question=q.question, answers=[q.answer], image_path=path, meta=meta)

    # ------------------------------------------------------------------ scoring
    def score(self, sample: Sample, answer: str) -> dict[str, float]:
        return {"accuracy": float(gqa_correct(answer, sample.answers[0]))}


    def ground_truth_mask(self, sample: Sample) -> np.ndarray | None:
        """Union of the annotated objects' boxes on the image's pixels; None without scene graphs
        or when nothing is annotated. An image or object missing from the scene graphs, a box that
        is not four finite numbers, or a size that is not positive integers is a :class:`DataError`
        (the runner notes it in the record's meta)."""
        if self._scenes is None or not sample.meta["objects"]:
            return None
        name, image_id = self.scene_graphs_path.name, sample.meta["image_id"]
        scene = self._scenes.get(image_id)
        if not isinstance(scene, dict) or not isinstance(scene.get("objects"), dict):
            raise DataError(f"{name} has no scene graph for image {image_id}")
        boxes = []
        for oid in sample.meta["objects"]:
            box = scene["objects"].get(oid)
            if not isinstance(box, tuple):
                raise DataError(f"{name}: image {image_id} has no object {oid} with a box")
            if not finite_numbers(box):
                raise DataError(f"{name}: image {image_id} object {oid} has box {box!r}, not four finite numbers")
            boxes.append(box)
        size = sample.load_image().size
        stored = []
        for key, default in (("width", size[0]), ("height", size[1])):
            value = scene.get(key, default)
            if integer(value) is None or value < 1:
                raise DataError(f"{name}: image {image_id} has {key} {describe(value)}, not a positive integer")
            stored.append(value)
        return fit_mask(box_mask(tuple(stored), boxes), size)

    def data_files(self) -> list[Path]:
        return [self.questions_path, self.scene_graphs_path]


@hookimpl
def xbench_register_tasks(registry):
    registry.register(GQA)
