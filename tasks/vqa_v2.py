"""VQA v2 from a local copy of the official files; the official 10-human-answer accuracy.

Reads ``v2_OpenEnded_mscoco_<split>_questions.json``, ``v2_mscoco_<split>_annotations.json`` and
COCO images ``COCO_<split>_<image_id:012d>.jpg`` from the data folder (or its ``vqa_v2/``
subfolder), laid out either as the official VQA API prescribes (``Questions/``, ``Annotations/``,
``Images/mscoco/<split>/``) or flat (both JSON files beside a ``<split>/`` image folder); no task
parameter is needed for either. Scoring is :func:`xbench.answers.vqa_accuracy`; the run summary
adds ``accuracy[yes/no]``, ``accuracy[number]`` and ``accuracy[other]`` by the annotation's answer
type. There is no localisation ground truth.

Ids are read as the files mean them: question and image ids must be JSON integers (``1.9``,
``1.0``, ``"1"`` are per-sample errors, never image 1), a question id used twice or annotated
twice is a per-sample error, and image paths stay inside the data folder.

Task parameters: ``prompt`` (``llava15`` | ``plain`` | a template with ``{question}``),
``normalise_prediction`` (LLaVA-1.5's answer processing first, default true), ``questions_file``,
``annotations_file``, ``image_dir`` (paths relative to the data folder, ``{split}`` filled in;
default: found by layout), ``image_name`` (with ``{split}`` and ``{image_id}``), and
``allow_outside_data_dir`` (default false).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, NamedTuple

from xbench.answers import vqa_accuracy
from xbench.api import Sample, SampleError, Task
from xbench.datafiles import describe, integer, load_json, text
from xbench.errors import DataError, ParameterError
from xbench.hookspecs import hookimpl
from xbench.params import Param
from xbench.taskdata import (
    ALLOW_OUTSIDE_PARAM,
    PROMPT_PARAM,
    Candidate,
    LocalFiles,
    data_folder,
    pick,
    resolve_prompt,
    task_bases,
)

_API = "official VQA API"
QUESTIONS = (Candidate("flat", "v2_OpenEnded_mscoco_{split}_questions.json"),
             Candidate(_API, "Questions/v2_OpenEnded_mscoco_{split}_questions.json"))
ANNOTATIONS = (Candidate("flat", "v2_mscoco_{split}_annotations.json"),
               Candidate(_API, "Annotations/v2_mscoco_{split}_annotations.json"))
IMAGES = (Candidate("flat", "{split}"), Candidate(_API, "Images/mscoco/{split}"))
_QUESTION_FIELDS = ("question_id", "image_id", "question")


class _Question(NamedTuple):
    question_id: Any
    image_id: Any
    question: Any


def _compact_question(obj: dict) -> Any:
    """``json.load`` hook turning each complete question object into a small tuple."""
    if all(k in obj for k in _QUESTION_FIELDS) and "answers" not in obj:
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
        "image_dir": Param(None, type=str, doc="the images' folder, relative to the data folder ({split} is filled in); default: found by layout"),
        "image_name": Param("COCO_{split}_{image_id:012d}.jpg", doc="an image's file name ({split}, {image_id})"),
        "questions_file": Param(None, type=str, doc="the questions file ({split} is filled in); default: found by layout"),
        "annotations_file": Param(None, type=str, doc="the annotations file ({split} is filled in); default: found by layout"),
        "allow_outside_data_dir": ALLOW_OUTSIDE_PARAM,
    }

    def __init__(self, split=None, data_dir=None, **params) -> None:
        super().__init__(split, data_dir, **params)
        params = self.params
        self.template = resolve_prompt(params["prompt"])
        try:
            params["image_name"].format(image_id=0, split=self.split)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ParameterError(f"vqa_v2 image_name template may use {{split}} and {{image_id}} only: {exc}") from None
        self.folder = data_folder(self.name, data_dir, "the VQA v2 questions, annotations and images")
        hit = self.find("questions file", "questions_file", QUESTIONS, task_bases(self.name, self.folder))
        self.root, self.questions_path = hit.base, hit.path
        self.annotations_path = self.find("annotations file", "annotations_file", ANNOTATIONS, [self.root]).path
        self.image_folder = self.find("image folder", "image_dir", IMAGES, [self.root]).path
        self._questions = self._load_questions()
        self._first = self._first_index()
        self._annotations = self._load_annotations()

    # ------------------------------------------------------------------ loading
    def _load_questions(self) -> list:
        data = load_json(self.questions_path, "an object with a 'questions' list", object_hook=_compact_question)
        questions = data.get("questions") if isinstance(data, dict) else None
        if not isinstance(questions, list):
            raise DataError(f"{str(self.questions_path)!r} has no 'questions' list; is it a VQA v2 questions file?")
        return questions

    def _first_index(self) -> dict[int, int]:
        """Integer question id -> index of the first question carrying it."""
        first: dict[int, int] = {}
        for idx, q in enumerate(self._questions):
            if isinstance(q, _Question) and integer(q.question_id) is not None:
                first.setdefault(q.question_id, idx)
        return first

    def _load_annotations(self) -> dict:
        """Integer question id -> its annotation; ``self._repeated``: ids annotated more than once;
        ``self._unusable``: indices of annotations whose question_id is not an integer (set aside, and
        named in the error of every question left without an annotation)."""
        data = load_json(self.annotations_path, "an object with an 'annotations' list", object_hook=_Loader())
        annotations = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(annotations, list):
            raise DataError(f"{str(self.annotations_path)!r} has no 'annotations' list; is it a VQA v2 annotations file?")
        table: dict[int, _Annotation] = {}
        self._repeated: dict[int, int] = {}
        self._unusable: list[int] = []
        for index, entry in enumerate(annotations):
            if not (isinstance(entry, tuple) and integer(entry[0]) is not None):
                self._unusable.append(index)
            elif entry[0] in table:
                self._repeated[entry[0]] = self._repeated.get(entry[0], 1) + 1
            else:
                table[entry[0]] = entry[1]
        return table

    # ------------------------------------------------------------------ samples
    def samples(self, limit=None, seed=0) -> Iterator[Sample | SampleError]:
        """Questions in a seeded shuffled order, first ``limit``; a question that cannot be scored
        (no annotation or several, no answers, missing or wrongly typed fields, a repeated id) is a
        :class:`SampleError` naming the file and the question's index."""
        for idx in pick(self._questions, limit, seed):
            yield self._sample(idx)

    def _sample(self, idx: int) -> Sample | SampleError:
        where = f"{self.questions_path.name}: questions[{idx}]"
        q = self._questions[idx]
        if not isinstance(q, _Question):
            missing = [k for k in _QUESTION_FIELDS if not isinstance(q, dict) or k not in q]
            return SampleError(f"questions[{idx}]", f"{where} lacks {', '.join(missing) or 'question_id, image_id or question'}")
        qid = integer(q.question_id)
        if qid is None:
            return SampleError(f"questions[{idx}]", f"{where}: question_id {describe(q.question_id)} is not an integer")
        if self._first[qid] != idx:
            return SampleError(f"questions[{idx}]", f"{where} repeats question_id {qid} of questions[{self._first[qid]}]")
        if integer(q.image_id) is None:
            return SampleError(str(qid), f"{where}: image_id {describe(q.image_id)} is not an integer", {"question_id": qid})
        sid, meta = str(qid), {"question_id": qid, "image_id": q.image_id}
        if text(q.question) is None:
            return SampleError(sid, f"{where}: question {describe(q.question)} is not a text", meta)
        ann = self._annotation(qid, meta)
        if isinstance(ann, SampleError):
            return ann
        path = self.member(self.image_folder, self.params["image_name"].format(split=self.split, image_id=q.image_id))
        if isinstance(path, str):
            return SampleError(sid, f"{where}: {path}", meta)
        meta.update(answer_type=ann.answer_type, question_type=ann.question_type)
        return Sample(id=sid, question=q.question, answers=list(ann.answers), image_path=path, meta=meta)

    def _annotation(self, qid: int, meta: dict) -> _Annotation | SampleError:
        name = self.annotations_path.name
        ann = self._annotations.get(qid)
        if ann is None:
            unusable = "" if not self._unusable else (
                f" ({len(self._unusable)} annotation(s) without an integer question_id were set aside, the first "
                f"annotations[{self._unusable[0]}])")
            return SampleError(str(qid), f"{self.questions_path.name}: question_id {qid} has no entry in {name}{unusable}", meta)
        if qid in self._repeated:
            return SampleError(str(qid), f"{name}: question_id {qid} is annotated {self._repeated[qid]} times; xbench will not choose one", meta)
        answers = ann.answers
        if not isinstance(answers, tuple) or not answers:
            return SampleError(str(qid), f"{name}: question_id {qid} has no usable human answers", meta)
        bad = next((k for k, a in enumerate(answers) if not isinstance(a, str)), None)
        if bad is not None:
            return SampleError(str(qid), f"{name}: question_id {qid} has no usable human answers (answers[{bad}] "
                                         f"is {describe(answers[bad])}, not an object with an 'answer' string)", meta)  # fmt: skip
        for key in ("answer_type", "question_type"):
            value = getattr(ann, key)
            if value is not None and not isinstance(value, str):
                return SampleError(str(qid), f"{name}: question_id {qid} has {key} {describe(value)}, not a string", meta)
        return ann

    # ------------------------------------------------------------------ scoring
    def score(self, sample: Sample, answer: str) -> dict[str, float]:
        return {"accuracy": vqa_accuracy(answer, sample.answers, llava_prediction=self.params["normalise_prediction"])}

    def data_files(self) -> list[Path]:
        return [self.questions_path, self.annotations_path]


@hookimpl
def xbench_register_tasks(registry):
    registry.register(VQAv2)
