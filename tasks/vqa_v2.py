"""VQA v2 from a local copy of the official files; the official 10-human-answer accuracy.

Reads ``v2_OpenEnded_mscoco_<split>_questions.json`` and ``v2_mscoco_<split>_annotations.json``
from the data folder (or its ``vqa_v2/`` subfolder) and COCO images
``<image_dir>/COCO_<split>_<image_id:012d>.jpg`` (both parts are templates: task parameters
``image_dir`` and ``image_name``). Scoring is :func:`xbench.answers.vqa_accuracy`; the run
summary adds ``accuracy[yes/no]``, ``accuracy[number]`` and ``accuracy[other]`` by the
annotation's answer type. There is no localisation ground truth.

Task parameters: ``prompt`` (``llava15`` | ``plain`` | a template with ``{question}``),
``normalise_prediction`` (LLaVA-1.5's answer processing first, default true), ``image_dir``,
``image_name``, ``questions_file``, ``annotations_file``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, NamedTuple


from xbench.answers import vqa_accuracy
from xbench.api import Sample, SampleError, Task
from xbench.errors import DataError, ParameterError
from xbench.hookspecs import hookimpl
from xbench.params import Param
from xbench.taskdata import PROMPT_PARAM, LocalFiles, data_file, data_root, load_json, pick, resolve_prompt



class _Question(NamedTuple):
    question_id: Any
    image_id: Any
    question: Any


def _compact_question(obj: dict) -> Any:
    """``json.load`` hook turning each complete question object into a small tuple."""
    if "question_id" in obj and "image_id" in obj and "question" in obj and "answers" not in obj:
        return _Question(obj["question_id"], obj["image_id"], obj["question"])
    return obj


class _Annotation(NamedTuple):
    answers: tuple  # the human answers (str), or the raw entries when one is malformed
    answer_type: Any
    question_type: Any


class _Loader:
    """``json.load`` hook that shrinks the annotations while parsing: each human answer object
    becomes its (shared) answer string and each annotation a small tuple, so the hundreds of MB
    of dicts never exist at once."""

    def __init__(self) -> None:
        self.strings: dict[str, str] = {}

    def share(self, value: Any) -> Any:
        return self.strings.setdefault(value, value) if isinstance(value, str) else value

    def __call__(self, obj: dict) -> Any:
        if "answer_id" in obj and isinstance(obj.get("answer"), str):
            return self.share(obj["answer"])
        if "question_id" in obj and "answers" in obj and "image_id" in obj:
            answers = obj["answers"]
            answers = tuple(answers) if isinstance(answers, list) else answers
            return obj["question_id"], _Annotation(answers, self.share(obj.get("answer_type")), self.share(obj.get("question_type")))
        return obj


class VQAv2(LocalFiles, Task):
    name = "vqa_v2"
    description = "VQA v2 open-ended on COCO (local official files); official 10-human-answer accuracy"
    splits = ("val2014", "train2014")
    max_new_tokens = 8
    breakdown_key = "answer_type"
    answer_metrics = {"accuracy": True}
    parameters = {
        "prompt": PROMPT_PARAM,
        "normalise_prediction": Param(True, doc="apply LLaVA-1.5's answer processing before scoring"),
        "image_dir": Param("{split}", doc="the images' folder, relative to the data folder ({split} is filled in)"),
        "image_name": Param("COCO_{split}_{image_id:012d}.jpg", doc="an image's file name ({split}, {image_id})"),
        "questions_file": Param("v2_OpenEnded_mscoco_{split}_questions.json", doc="the questions file"),
        "annotations_file": Param("v2_mscoco_{split}_annotations.json", doc="the annotations file"),
    }

    def __init__(self, split=None, data_dir=None, **params) -> None:
        super().__init__(split, data_dir, **params)
        params = self.params
        self.template = resolve_prompt(params["prompt"])
        fmt = {"split": self.split}
        try:
            params["image_name"].format(image_id=0, **fmt)
            image_dir = params["image_dir"].format(**fmt)
        except (KeyError, IndexError, ValueError) as exc:
            raise ParameterError(f"vqa_v2 image_dir/image_name templates may use {{split}} and {{image_id}} only: {exc}") from None
        questions_name = self.split_name("questions_file", params["questions_file"])
        self.root = data_root(self.name, data_dir, questions_name)
        self.image_folder = self.root / image_dir
        self.questions_path = data_file(self.root, questions_name, "VQA v2 questions")
        annotations_name = self.split_name("annotations_file", params["annotations_file"])
        self.annotations_path = data_file(self.root, annotations_name, "VQA v2 annotations")
        self._questions = self._load_questions()
        self._annotations = self._load_annotations()

    # ------------------------------------------------------------------ loading
    def _load_questions(self) -> list:
        data = load_json(self.questions_path, "an object with a 'questions' list", object_hook=_compact_question)
        questions = data.get("questions") if isinstance(data, dict) else None
        if not isinstance(questions, list):
            raise DataError(f"{str(self.questions_path)!r} has no 'questions' list; is it a VQA v2 questions file?")
        return questions

    def _load_annotations(self) -> dict:
        data = load_json(self.annotations_path, "an object with an 'annotations' list", object_hook=_Loader())
        annotations = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(annotations, list):
            raise DataError(f"{str(self.annotations_path)!r} has no 'annotations' list; is it a VQA v2 annotations file?")
        table = {}
        for entry in annotations:
            if isinstance(entry, tuple):
                table.setdefault(entry[0], entry[1])
        return table

    # ------------------------------------------------------------------ samples
    def samples(self, limit=None, seed=0) -> Iterator[Sample | SampleError]:
        """Questions in a seeded shuffled order, first ``limit``; a question that cannot be scored
        (no annotation, no answers, missing fields, repeated id) is a :class:`SampleError`."""
        seen: set = set()
        for idx in pick(self._questions, limit, seed):
            yield self._sample(idx, seen)

    def _sample(self, idx: int, seen: set) -> Sample | SampleError:
        where = f"{self.questions_path.name}: questions[{idx}]"
        q = self._questions[idx]
        if not isinstance(q, _Question):
            return SampleError(f"questions[{idx}]", f"{where} lacks question_id, image_id or question")
        qid = q.question_id
        if qid in seen:
            return SampleError(f"questions[{idx}]", f"{where} repeats question_id {qid}")
        seen.add(qid)
        sid, meta = str(qid), {"question_id": qid, "image_id": q.image_id}
        ann = self._annotations.get(qid)
        if ann is None:
            return SampleError(sid, f"{where}: question_id {qid} has no entry in {self.annotations_path.name}", meta)
        answers = ann.answers
        if not isinstance(answers, tuple) or not answers or not all(isinstance(a, str) for a in answers):
            return SampleError(sid, f"{self.annotations_path.name}: question_id {qid} has no usable human answers", meta)
        try:
            image_name = self.params["image_name"].format(split=self.split, image_id=int(q.image_id))
        except (TypeError, ValueError):
            return SampleError(sid, f"{where} has a non-integer image_id {q.image_id!r}", meta)
        meta.update(answer_type=ann.answer_type, question_type=ann.question_type)
        return Sample(
            id=sid,
            question=str(q.question),
            answers=list(answers),
            image_path=self.image_folder / image_name,
            meta=meta,
        )

    # ------------------------------------------------------------------ scoring
    def score(self, sample: Sample, answer: str) -> dict[str, float]:
        return {"accuracy": vqa_accuracy(answer, sample.answers, llava_prediction=self.params["normalise_prediction"])}

    def data_files(self) -> list[Path]:
        return [self.questions_path, self.annotations_path]


@hookimpl
def xbench_register_tasks(registry):
    registry.register(VQAv2)
