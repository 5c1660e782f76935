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

``corruption`` (``none``, ``noise``, ``occlusion``, ``contrast``) with ``severity`` in [0, 1]
degrades every image in memory, after the flip and before the model's processor (no file is
written), so that the default model errs often enough to measure a confidence signal on:

* ``noise``: Gaussian noise of standard deviation ``severity * 255`` added to every channel
  of every pixel, then rounded and clipped to 0..255;
* ``occlusion``: ``round(severity * n)`` of the shape's ``n`` pixels (the ground-truth mask of
  the clean image) are painted over in the background colour by a straight cut whose direction
  is drawn at random: every pixel whose projection on that direction comes before the last
  covered shape pixel's (ties in row-major order) is painted, halo pixels included;
* ``contrast``: every channel pulled toward the image's mean grey ``g`` (mean luminance, ITU-R
  601 weights): ``g + (1 - severity) * (pixel - g)``, rounded, so every channel's range shrinks
  by ``1 - severity``.

Severity 0 is the clean image. The draws come from the run seed (the ``seed`` of
:meth:`EasyVQA.samples`) and the sample's id without its corruption suffix, never from the
severity: one question at two severities gets the same draws scaled (the same noise pattern,
the same cut direction), so accuracy across levels compares like with like. Corrupted samples'
ids end in ``-<corruption>-<severity>``. The ground-truth mask is the clean image's shape minus
the occluded pixels (noise would make every pixel differ from the background).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from xbench.api import Sample, SampleError, Task, seeded_rng
from xbench.datafiles import describe, integer, load_json, text
from xbench.errors import DataError, ParameterError
from xbench.hookspecs import hookimpl
from xbench.params import Param
from xbench.taskdata import PROMPTS, fill_prompt, pick

FLIPS = ("none", "horizontal", "vertical", "both")
CORRUPTIONS = ("none", "noise", "occlusion", "contrast")
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


def most_common_colour(arr: np.ndarray) -> np.ndarray:
    """The most common RGB colour of an ``H x W x 3`` array (easy-vqa's background)."""
    colours, counts = np.unique(arr.reshape(-1, 3), axis=0, return_counts=True)
    return colours[counts.argmax()]


def background_mask(image, tolerance: int = 16) -> np.ndarray:
    """Boolean H x W: pixels differing from the most common colour by more than ``tolerance``."""
    arr = np.asarray(image.convert("RGB"), dtype=np.int16)
    return np.abs(arr - most_common_colour(arr)).max(axis=-1) > tolerance


@dataclass(frozen=True)
class Corruption:
    """One image corruption (see the module docstring): ``kind`` in :data:`CORRUPTIONS`,
    ``severity`` in [0, 1], draws from ``seed``; ``tolerance`` is the shape mask's (occlusion)."""

    kind: str = "none"
    severity: float = 0.0
    seed: int = 0
    tolerance: int = 16

    @property
    def suffix(self) -> str:
        """What a corrupted sample's id ends with (empty without a corruption)."""
        return "" if self.kind == "none" else f"-{self.kind}-{self.severity!r}"

    def apply(self, image, key: str):
        """``(corrupted RGB image, occluded H x W mask)`` of the clean ``image``; draws fixed by
        the seed, the kind and ``key`` (the clean sample id). Severity 0 returns ``image`` itself."""
        from PIL import Image

        arr = np.asarray(image.convert("RGB"))
        occluded = np.zeros(arr.shape[:2], dtype=bool)
        if self.kind == "none" or self.severity == 0:
            return image, occluded
        rng = seeded_rng(self.seed, "easyvqa-corruption", self.kind, key)
        if self.kind == "noise":
            noisy = arr + rng.standard_normal(arr.shape) * (self.severity * 255.0)
            out = np.clip(np.rint(noisy), 0, 255)
        elif self.kind == "contrast":
            grey = float((arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).mean())
            out = np.clip(np.rint(grey + (1.0 - self.severity) * (arr - grey)), 0, 255)
        else:
            occluded = occlusion_mask(background_mask(image, self.tolerance), self.severity, rng)
            out = arr.copy()
            out[occluded] = most_common_colour(arr)
        return Image.fromarray(out.astype(np.uint8), "RGB"), occluded


def occlusion_mask(shape: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A straight cut across the image in a direction drawn from ``rng``: every pixel up to (in the
    order of their projection on that direction, ties row-major) the ``round(fraction * n)``-th of
    the ``n`` True pixels of ``shape``, so exactly that many shape pixels are covered (and the
    anti-aliasing halo beside them with them)."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    rows, cols = np.indices(shape.shape)
    order = np.argsort((cols * np.cos(angle) + rows * np.sin(angle)).ravel(), kind="stable")
    covered = int(round(fraction * int(shape.sum())))
    mask = np.zeros(shape.size, dtype=bool)
    if covered:
        last = np.flatnonzero(shape.ravel()[order])[covered - 1]
        mask[order[: last + 1]] = True
    return mask.reshape(shape.shape)


@dataclass
class FlippedSample(Sample):
    """A sample whose image is mirrored (``flip`` as in :data:`FLIPS`), then corrupted, when it is
    loaded; :attr:`occluded` marks the pixels the corruption painted over (set on load)."""

    flip: str = "none"
    corruption: Corruption = field(default_factory=Corruption)
    occluded: np.ndarray | None = None

    def clean_image(self):
        """The mirrored image before any corruption (read again from the file each call)."""
        from PIL import ImageOps

        image = Sample(self.id, self.question, self.answers, image_path=self.image_path).load_image()
        if self.flip in ("horizontal", "both"):
            image = ImageOps.mirror(image)
        if self.flip in ("vertical", "both"):
            image = ImageOps.flip(image)
        return image

    def load_image(self):
        if self.image is None:
            clean_id = self.id[: len(self.id) - len(self.corruption.suffix)]
            self.image, self.occluded = self.corruption.apply(self.clean_image(), clean_id)
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
        "corruption": Param("none", choices=CORRUPTIONS, doc="degrade every image: none, noise, occlusion or contrast"),
        "severity": Param(0.0, min=0.0, max=1.0, doc="how much: noise sd / 255, share of the shape occluded, contrast lost"),
    }

    def __init__(self, split=None, data_dir=None, **params) -> None:
        """``data_dir`` is not used: the data ships with the ``easy-vqa`` package. A ``severity``
        above 0 without a ``corruption`` is refused (it would change nothing)."""
        super().__init__(split, None, **params)
        if self.params["corruption"] == "none" and self.params["severity"] != 0:
            raise ParameterError(
                f"task 'easyvqa': severity={self.params['severity']!r} needs a corruption "
                f"(one of {list(CORRUPTIONS[1:])}); corruption is 'none'"
            )
        folder = package_folder() / self.split
        self._questions_path = folder / "questions.json"
        self._questions = read_questions(self._questions_path)
        self._paths = read_image_paths(folder / "images")

    def samples(self, limit=None, seed=0) -> Iterator[Sample | SampleError]:
        """Questions in a seeded shuffled order (the same ids for the same seed), first ``limit``;
        ``seed`` also fixes the corruption's draws."""
        texts, answers, image_ids = self._questions
        flip = self.params["flip"]
        corruption = Corruption(self.params["corruption"], self.params["severity"], seed, self.params["mask_tolerance"])
        suffix = ("" if flip == "none" else f"-flip-{flip}") + corruption.suffix
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
                corruption=corruption,
            )

    def prompt(self, sample: Sample) -> str:
        return fill_prompt(PROMPT, sample.question)

    def ground_truth_mask(self, sample: Sample) -> np.ndarray:
        """The clean (mirrored) image's shape pixels that no occlusion painted over."""
        image = sample.load_image()
        clean = image if sample.corruption.severity == 0 else sample.clean_image()
        return background_mask(clean, self.params["mask_tolerance"]) & ~sample.occluded

    def score(self, sample: Sample, answer: str) -> dict[str, float]:
        return {"accuracy": float(normalise_answer(answer) in {normalise_answer(a) for a in sample.answers})}

    def data_hash(self) -> str:
        texts, answers, image_ids = self._questions
        h = hashlib.sha256(repr((texts, answers, image_ids)).encode())
        return h.hexdigest()[:16]


@hookimpl
def xbench_register_tasks(registry):
    registry.register(EasyVQA)
