"""GQA balanced questions from a local copy of the official files; exact-match accuracy.

Reads ``<split>_balanced_questions.json`` (an object keyed by question id) from the data folder
(or its ``gqa/`` subfolder) and images ``images/<imageId>.jpg``. Scoring follows GQA's
``eval.py`` after LLaVA-1.5's processing (:func:`xbench.answers.gqa_correct`); only balanced
questions are scored, as ``eval.py`` does (``isBalanced: false`` entries are skipped). The run
summary adds ``accuracy[binary]`` and ``accuracy[open]`` (open = structural type ``query``).

With ``scene_graphs=FILE`` (e.g. ``val_sceneGraphs.json``), the objects a question's
``annotations`` point at (in the question, answer and full answer) become the ground-truth mask:
the union of their boxes ``(x, y, w, h)``, scaled to the image when it is stored at another size.

Task parameters: ``prompt``, ``image_dir``, ``questions_file``, ``scene_graphs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from xbench.answers import gqa_correct
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
    resolve_prompt,
)

_ANNOTATED_PARTS = ("question", "answer", "fullAnswer")


class _Question(NamedTuple):
    image_id: Any
    question: Any
    answer: Any
    structural: Any
    objects: tuple  # scene-graph object ids annotated in the question / answer / full answer
    balanced: bool


def _compact_question(obj: dict) -> Any:
    """``json.load`` hook keeping only what scoring and masks need from each question."""
    if "imageId" in obj and "question" in obj:
        types = obj.get("types") if isinstance(obj.get("types"), dict) else {}
        ann = obj.get("annotations") if isinstance(obj.get("annotations"), dict) else {}
        objects = []
        for part in _ANNOTATED_PARTS:
            pointers = ann.get(part)
            if isinstance(pointers, dict):
                objects.extend(str(v) for v in pointers.values())
        return _Question(
            obj["imageId"], obj["question"], obj.get("answer"), types.get("structural"),
            tuple(dict.fromkeys(objects)), obj.get("isBalanced", True) is not False,
        )
    return obj


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
        "image_dir": Param("images", doc="the images' folder, relative to the data folder"),
        "questions_file": Param("{split}_balanced_questions.json", doc="the questions file ({split} is filled in)"),
        "scene_graphs": Param(None, type=str, doc="a scene-graph file giving ground-truth masks (e.g. val_sceneGraphs.json)"),
    }

    def __init__(self, split=None, data_dir=None, **params) -> None:
        super().__init__(split, data_dir, **params)
        params = self.params
        self.template = resolve_prompt(params["prompt"])
        questions_name = self.split_name("questions_file", params["questions_file"])
        self.root = data_root(self.name, data_dir, questions_name)
        self.questions_path = data_file(self.root, questions_name, "GQA questions")
        data = load_json(self.questions_path, "an object keyed by question id", object_hook=_compact_question)
        if not isinstance(data, dict):
            raise DataError(f"{str(self.questions_path)!r} is not an object keyed by question id; is it a GQA questions file?")
        self._ids = [qid for qid, q in data.items() if not (isinstance(q, _Question) and not q.balanced)]
        self._questions = data
        self.scene_graphs_path = None
        self._scenes: dict | None = None
        if params["scene_graphs"]:
            self.scene_graphs_path = data_file(self.root, params["scene_graphs"], "GQA scene graphs")
            scenes = load_json(self.scene_graphs_path, "an object keyed by image id", object_hook=_compact_scene)
            if not isinstance(scenes, dict):
                raise DataError(f"{str(self.scene_graphs_path)!r} is not an object keyed by image id; is it a GQA scene-graph file?")
            self._scenes = scenes

    # ------------------------------------------------------------------ samples
    def samples(self, limit=None, seed=0) -> Iterator[Sample | SampleError]:
        """Balanced questions in a seeded shuffled order, first ``limit``; a question without an
        image id, text or answer is a :class:`SampleError` naming the file and question id."""
        for idx in pick(self._ids, limit, seed):
            qid = self._ids[idx]
            q = self._questions[qid]
            where = f"{self.questions_path.name}: question {qid}"
            if not isinstance(q, _Question):
                yield SampleError(str(qid), f"{where} lacks imageId or question")
                continue
            if not isinstance(q.answer, str) or not q.answer:
                yield SampleError(str(qid), f"{where} has no answer", {"image_id": q.image_id})
                continue
            kind = "open" if q.structural == "query" else "binary"
            yield Sample(
                id=str(qid),
                question=str(q.question),
                answers=[q.answer],
                image_path=self.root / self.params["image_dir"] / f"{q.image_id}.jpg",
                meta={"image_id": q.image_id, "kind": kind, "objects": list(q.objects)},
            )

    # ------------------------------------------------------------------ scoring
    def score(self, sample: Sample, answer: str) -> dict[str, float]:
        return {"accuracy": float(gqa_correct(answer, sample.answers[0]))}


    def ground_truth_mask(self, sample: Sample) -> np.ndarray | None:
        """Union of the annotated objects' boxes on the image's pixels; None without scene graphs
        or when nothing is annotated. An image or object missing from the scene graphs is a
        :class:`DataError` (the runner notes it in the record's meta)."""
        if self._scenes is None or not sample.meta["objects"]:
            return None
        image_id = sample.meta["image_id"]
        scene = self._scenes.get(image_id)
        if not isinstance(scene, dict) or not isinstance(scene.get("objects"), dict):
            raise DataError(f"{self.scene_graphs_path.name} has no scene graph for image {image_id}")
        boxes = []
        for oid in sample.meta["objects"]:
            box = scene["objects"].get(oid)
            if not isinstance(box, tuple):
                raise DataError(f"{self.scene_graphs_path.name}: image {image_id} has no object {oid} with a box")
            boxes.append(box)
        size = sample.load_image().size
        stored = (int(scene.get("width") or size[0]), int(scene.get("height") or size[1]))
        return fit_mask(box_mask(stored, boxes), size)

    def data_files(self) -> list[Path]:
        return [self.questions_path, self.scene_graphs_path]


@hookimpl
def xbench_register_tasks(registry):
    registry.register(GQA)
