"""easy-vqa (PyPI ``easy-vqa``): 64x64 images of one coloured shape; the zero-download default task.

Prompts follow LLaVA-1.5's short-answer instruction; scoring is exact match after
lower-casing and stripping a final period. The ground-truth mask is the set of pixels
whose colour differs from the background (the image's most common colour) by more than
``mask_tolerance`` in some channel, which leaves out anti-aliasing halos.

``flip`` (``none``, ``horizontal``, ``vertical``, ``both``) mirrors every image. Each
question asks about the shape's colour or kind, which a mirror image keeps, so the
answers stay right: a flipped copy of the training split is more data for training a
proxy on (``xbench fastrm train --augment flip=horizontal``). Flipped samples' ids end in
``-flip-<flip>``.

The package's files (``data/<split>/questions.json``: ``[question, answer, image id]`` triples;
``data/<split>/images/<id>.png``) are read strictly, as the other tasks' files are: a triple whose
question or answer is not a text or whose image id is not a JSON integer (``1.9``, ``1.0``,
``"1"``, ``true``) is a per-sample error naming the file and index, never another image; two
image files naming one id (``01.png`` and ``1.png``) are refused.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from xbench.api import Sample, SampleError, Task
from xbench.datafiles import describe, integer, load_json, text
from xbench.errors import DataError
from xbench.hookspecs import hookimpl
from xbench.params import Param
from xbench.taskdata import PROMPTS, fill_prompt, pick

FLIPS = ("none", "horizontal", "vertical", "both")
COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
PROMPT = PROMPTS["llava15"]  # LLaVA-1.5's short-answer instruction after the question
_IMAGE_NAME = re.compile(r"^(\d+)\.png$")


def package_folder() -> Path:
    """The ``data/`` folder of the installed ``easy-vqa`` package."""
    import easy_vqa

    return Path(easy_vqa.__file__).parent / "data"


def read_questions(path: Path) -> tuple[list, list, list]:
    """``(texts, answers, image_ids)`` of an easy-vqa questions file, as ``easy_vqa`` returns them,
    read strictly (:func:`xbench.datafiles.load_json`); an entry that is not a triple leaves None in
    all three lists (the sample built from it reports it)."""
    entries = load_json(path, "a list of [question, answer, image id] triples")
    if not isinstance(entries, list):
        raise DataError(f"{str(path)!r} holds {describe(entries)[:60]}, not a list of [question, answer, image id] triples")
    triples = [e if isinstance(e, list) and len(e) == 3 else (None, None, None) for e in entries]
    return [t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples]


def read_image_paths(folder: Path) -> dict[int, Path]:
    """Image id -> path of each ``<id>.png`` in ``folder``; two files naming one id are refused."""
    images: dict[int, Path] = {}
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError as exc:
        raise DataError(f"cannot list easy-vqa images in {str(folder)!r}: {exc.strerror or exc}") from None
    for name in names:
        m = _IMAGE_NAME.match(name)
        if m is None:
            continue
        image_id = int(m.group(1))
        if image_id in images:
            raise DataError(f"easy-vqa images {images[image_id].name!r} and {name!r} in {str(folder)!r} are both image {image_id}")
        images[image_id] = folder / name
    return images


def question_kind(question: str, answer: str) -> str:
    """colour | shape | yes/no colour | yes/no shape."""
    words = set(question.lower().rstrip("?").split())
    if answer in ("yes", "no"):
        return "yes/no colour" if words & set(COLOURS) else "yes/no shape"
    return "colour" if answer in COLOURS else "shape"


def background_mask(image, tolerance: int = 16) -> np.ndarray:
    """Boolean H x W: pixels differing from the most common colour by more than ``tolerance``."""
    arr = np.asarray(image.convert("RGB"), dtype=np.int16)
    colours, counts = np.unique(arr.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return np.abs(arr - background).max(axis=-1) > tolerance


@dataclass
class FlippedSample(Sample):
    """A sample whose image is mirrored when it is loaded (``flip`` as in :data:`FLIPS`)."""

    flip: str = "none"

    def load_image(self):
        from PIL import ImageOps

        if self.image is None:
            image = super().load_image()
            if self.flip in ("horizontal", "both"):
                image = ImageOps.mirror(image)
            if self.flip in ("vertical", "both"):
                image = ImageOps.flip(image)
            self.image = image
        return self.image


def normalise_answer(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


class EasyVQA(Task):
    name = "easyvqa"
    description = "easy-vqa (PyPI): one coloured shape per 64x64 image; 13 answers, 74% yes/no"
    splits = ("test", "train")
    max_new_tokens = 4
    breakdown_key = "kind"
    answer_metrics = {"accuracy": True}
    parameters = {
        "mask_tolerance": Param(16, min=0, max=255, doc="how far a pixel's colour may be from the background's and not count"),
        "flip": Param("none", choices=FLIPS, doc="mirror every image: none, horizontal, vertical or both"),
    }

    def __init__(self, split=None, data_dir=None, **params) -> None:
        """``data_dir`` is not used: the data ships with the ``easy-vqa`` package."""
        super().__init__(split, None, **params)
        folder = package_folder() / self.split
        self._questions_path = folder / "questions.json"
        self._questions = read_questions(self._questions_path)
        self._paths = read_image_paths(folder / "images")

    def samples(self, limit=None, seed=0) -> Iterator[Sample | SampleError]:
        """Questions in a seeded shuffled order (the same ids for the same seed), first ``limit``."""
        texts, answers, image_ids = self._questions
        flip = self.params["flip"]
        suffix = "" if flip == "none" else f"-flip-{flip}"
        for idx in pick(texts, limit, seed):
            sid = f"{self.split}-{idx}{suffix}"
            where = f"easy-vqa {self.split} {self._questions_path.name} [{idx}]"
            question, answer, image_id = texts[idx], answers[idx], image_ids[idx]
            problem = (
                "is not a [question, answer, image id] triple" if question is answer is image_id is None
                else f"question {describe(question)} is not a text" if text(question) is None
                else f"answer {describe(answer)} is not a text" if text(answer) is None
                else f"image id {describe(image_id)} is not an integer" if integer(image_id) is None
                else f"names image {image_id}, not found" if image_id not in self._paths
                else None
            )  # fmt: skip
            if problem is not None:
                yield SampleError(sid, f"{where}: {problem}")
                continue
            yield FlippedSample(
                id=sid,
                question=question,
                answers=[answer],
                image_path=self._paths[image_id],
                meta={"image_id": image_id, "kind": question_kind(question, answer)},
                flip=flip,
            )

    def prompt(self, sample: Sample) -> str:
        return fill_prompt(PROMPT, sample.question)

    def ground_truth_mask(self, sample: Sample) -> np.ndarray:
        return background_mask(sample.load_image(), self.params["mask_tolerance"])

    def score(self, sample: Sample, answer: str) -> dict[str, float]:
        return {"accuracy": float(normalise_answer(answer) in {normalise_answer(a) for a in sample.answers})}

    def data_hash(self) -> str:
        texts, answers, image_ids = self._questions
        h = hashlib.sha256(repr((texts, answers, image_ids)).encode())
        return h.hexdigest()[:16]


@hookimpl
def xbench_register_tasks(registry):
    registry.register(EasyVQA)
