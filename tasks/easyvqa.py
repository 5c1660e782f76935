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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from xbench.api import Sample, SampleError, Task
from xbench.hookspecs import hookimpl
from xbench.params import Param
from xbench.taskdata import PROMPTS, fill_prompt, pick

FLIPS = ("none", "horizontal", "vertical", "both")
COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
PROMPT = PROMPTS["llava15"]  # LLaVA-1.5's short-answer instruction after the question


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
        import easy_vqa

        if self.split == "train":
            self._questions = easy_vqa.get_train_questions()
            self._paths = easy_vqa.get_train_image_paths()
        else:
            self._questions = easy_vqa.get_test_questions()
            self._paths = easy_vqa.get_test_image_paths()

    def samples(self, limit=None, seed=0) -> Iterator[Sample | SampleError]:
        """Questions in a seeded shuffled order (the same ids for the same seed), first ``limit``."""
        texts, answers, image_ids = self._questions
        flip = self.params["flip"]
        suffix = "" if flip == "none" else f"-flip-{flip}"
        for idx in pick(texts, limit, seed):
            sid = f"{self.split}-{idx}{suffix}"
            path = self._paths.get(image_ids[idx])
            if path is None:
                yield SampleError(sid, f"easy-vqa {self.split} question {idx} names image {image_ids[idx]}, not found")
                continue
            yield FlippedSample(
                id=sid,
                question=texts[idx],
                answers=[answers[idx]],
                image_path=Path(path),
                meta={"image_id": image_ids[idx], "kind": question_kind(texts[idx], answers[idx])},
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
