"""Shared code for task adapters that read official dataset files from a local folder.

Nothing here downloads. Files are found by layout (:class:`Candidate`, :func:`find_one`): each
official way of laying a dataset out is a candidate path; a missing file is a
:class:`~xbench.errors.DataError` listing every path searched, two matches one naming the task
parameter that chooses. Paths stay inside the data folder (:func:`check_inside` for paths given as
task parameters, :func:`member_path` for names read from data files) unless the task parameter
``allow_outside_data_dir`` is true. Reading itself is strict: see :mod:`xbench.datafiles`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from xbench.datafiles import describe, file_digest
from xbench.errors import DataError, ParameterError
from xbench.params import Param

#: Prompt templates a task may be asked for with ``--task-param prompt=NAME``. ``llava15`` is the
#: short-answer instruction LLaVA-1.5 appends for VQA v2, GQA and POPE alike.
PROMPTS: dict[str, str] = {
    "llava15": "{question}\nAnswer the question using a single word or phrase.",
    "plain": "{question}",
}
#: The task parameter that lets image and data paths lie outside the data folder.
ALLOW_OUTSIDE = "allow_outside_data_dir"
ALLOW_OUTSIDE_PARAM = Param(False, doc="let image and data paths lie outside the data folder (absolute, or climbing out with ..)")


def prompt_problem(value: str) -> str | None:
    """None when ``value`` names a template in :data:`PROMPTS` or is one holding ``{question}``,
    else what the ``prompt`` parameter accepts."""
    if value in PROMPTS or "{question}" in value:
        return None
    return f"a template name ({', '.join(PROMPTS)}) or a template containing '{{question}}'"


#: the ``prompt`` task parameter of the tasks reading official files
PROMPT_PARAM = Param("llava15", check=prompt_problem, doc="a template name (llava15, plain) or a template holding {question}")


def resolve_prompt(value: str) -> str:
    """The template named ``value`` in :data:`PROMPTS`, or ``value`` itself (a custom template,
    checked by :data:`PROMPT_PARAM` when the task was built)."""
    return PROMPTS.get(value, value)


def fill_prompt(template: str, question: str) -> str:
    return template.replace("{question}", question)


def data_folder(task: str, data_dir: str | Path | None, expected: str) -> Path:
    """``data_dir`` as an existing folder; a :class:`DataError` when it is not given or absent."""
    if data_dir is None:
        raise DataError(
            f"task {task!r} reads local files: pass --data-dir DIR (or set $XBENCH_DATA_DIR) "
            f"naming a folder that holds {expected}"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} for task {task!r} does not exist (it should hold {expected})")
    return root


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Candidate:
    """One place a file or folder may be: ``template`` (may hold ``{split}``) relative to the data
    folder, in the layout named ``layout``; ``group`` tells sources of one task apart (POPE)."""

    layout: str
    template: str
    group: str = ""

    def path(self, base: Path, split: str) -> Path:
        return base / self.template.format(split=split)


@dataclass(frozen=True)
class Found:
    """A path looked for: where it is (``path``), in which base folder, as which :class:`Candidate`."""

    path: Path
    base: Path
    candidate: Candidate


def search(bases: Sequence[Path], split: str, candidates: Sequence[Candidate]) -> tuple[list[Found], list[Found]]:
    """``(searched, found)``: every path looked at in ``bases`` (in order), and those that exist."""
    searched = [Found(c.path(base, split), base, c) for base in bases for c in candidates]
    return searched, [f for f in searched if f.path.exists()]


def listing(entries: Iterable[Found]) -> str:
    return "; ".join(f"{str(f.path)!r} ({f.candidate.layout})" for f in entries)


def find_one(task: str, what: str, bases: Sequence[Path], split: str, candidates: Sequence[Candidate], param: str,
             required: bool = True) -> Found | None:
    """The one existing path among ``candidates`` in ``bases``. None found: a :class:`DataError` naming
    the bases and every candidate path searched in them (or None when not ``required``); several: a
    :class:`DataError` listing them and naming the task parameter ``param`` that chooses."""
    _, found = search(bases, split, candidates)
    if not found:
        if not required:
            return None
        places = " or ".join(repr(str(base)) for base in bases)
        layouts = ", ".join(f"{c.path(Path(), split)} ({c.layout})" for c in candidates)
        raise DataError(
            f"task {task!r}: no {what} for split {split!r} in {places}; searched {layouts} "
            "(xbench never downloads datasets: copy the official files there)"
        )
    if len(found) > 1:
        raise DataError(
            f"task {task!r}: found {len(found)} {what}s for split {split!r}: {listing(found)}; "
            f"choose one with --task-param {param}=PATH (relative to the data folder)"
        )
    return found[0]


def task_bases(task: str, root: Path) -> list[Path]:
    """The folders a task's files may lie in: the data folder and its subfolder named after the task
    (so one ``$XBENCH_DATA_DIR`` can hold several datasets)."""
    return [root, root / task]


def given(param: str, value: str) -> list[Candidate]:
    """The candidate list of a path the user gave as task parameter ``param`` (``{split}`` already
    filled in: other braces are taken literally)."""
    return [Candidate(f"--task-param {param}", str(value).replace("{", "{{").replace("}", "}}"))]


# --------------------------------------------------------------------------- paths inside the data folder


def outside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies outside ``root`` once ``..`` parts are resolved (lexically: a symbolic
    link inside the data folder is the folder owner's choice and is followed)."""
    rel = os.path.relpath(os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root)))
    return rel == os.pardir or rel.startswith(os.pardir + os.sep)


@functools.lru_cache(maxsize=64)
def _outside_folder(folder: Path, root: Path) -> bool:
    """:func:`outside` of an image folder, remembered (names without ``..`` stay where it is)."""
    return outside(folder, root)


def check_inside(task: str, param: str, path: Path, root: Path, allowed: bool) -> Path:
    """``path`` (from task parameter ``param``) when it lies inside the data folder ``root`` or
    ``allowed``; otherwise a :class:`ParameterError` naming both and the option that allows it."""
    if not allowed and outside(path, root):
        raise ParameterError(
            f"task {task!r}: {param} {str(path)!r} lies outside the data folder {str(root)!r}; "
            f"pass --task-param {ALLOW_OUTSIDE}=true to read it"
        )
    return path


def member_path(folder: Path, name: Any, root: Path, allowed: bool) -> Path | str:
    """``folder / name`` for a file name ``name`` read from a data file, or the reason it is refused:
    not a non-empty string, an absolute path, or one that climbs out of the data folder ``root``
    (both allowed with ``allow_outside_data_dir=true``)."""
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        return f"image name {describe(name)} is not a file name"
    climbs = os.pardir in name.replace(os.sep, "/").replace(os.altsep or "/", "/").split("/")
    if not allowed and (os.path.isabs(name) or (outside(folder / name, root) if climbs else _outside_folder(folder, root))):
        kind = "is an absolute path, outside" if os.path.isabs(name) else "climbs out of"
        return f"image path {name!r} {kind} the data folder {str(root)!r}; pass --task-param {ALLOW_OUTSIDE}=true to allow it"
    return folder / name


class LocalFiles:
    """Mixin of tasks that read official files from a local folder: the prompt template
    (``self.template``, from :func:`resolve_prompt`), file names holding ``{split}``, and
    ``data_hash()``: :func:`file_digest` of ``data_files()``, computed once. Tasks set ``self.folder``
    (the data folder, from :func:`data_folder`) before calling :meth:`find`."""

    template: str
    folder: Path
    _digest: str | None = None

    def prompt(self, sample) -> str:
        return fill_prompt(self.template, sample.question)

    def split_name(self, param: str, template: str) -> str:
        """``template`` with ``{split}`` filled in; any other field is a :class:`ParameterError`."""
        try:
            return template.format(split=self.split)
        except (KeyError, IndexError, ValueError) as exc:
            raise ParameterError(f"{self.name} {param} may use {{split}} only: {exc}") from None

    def layout_candidates(self, param: str, layouts: Sequence[Candidate]) -> list[Candidate]:
        """The path the user gave as ``param`` when there is one (not None or ``auto``), else the
        task's ``layouts``."""
        value = self.params.get(param)
        return given(param, self.split_name(param, value)) if value and value != "auto" else list(layouts)

    def allow_outside(self) -> bool:
        """The ``allow_outside_data_dir`` task parameter (declared as :data:`ALLOW_OUTSIDE_PARAM`,
        which admits true or false only); false for a task that does not declare it."""
        return self.params.get(ALLOW_OUTSIDE, False) is True

    def find(self, what: str, param: str, layouts: Sequence[Candidate], bases: Sequence[Path], required: bool = True) -> Found | None:
        """:func:`find_one` of ``param``'s path (or ``layouts``) in ``bases``, checked to lie inside the
        data folder ``self.folder`` unless :meth:`allow_outside`."""
        candidates = self.layout_candidates(param, layouts)
        for base in bases:
            for candidate in candidates:
                check_inside(self.name, param, candidate.path(base, self.split), self.folder, self.allow_outside())
        return find_one(self.name, what, bases, self.split, candidates, param, required)

    def member(self, image_folder: Path, name: Any) -> Path | str:
        """:func:`member_path` of ``name`` (read from a data file) in ``image_folder``."""
        return member_path(image_folder, name, self.folder, self.allow_outside())

    def data_files(self) -> list[Path | None]:  # pragma: no cover - every user overrides it
        """The files whose bytes identify the task's data."""
        raise NotImplementedError

    def data_hash(self) -> str:
        if self._digest is None:
            self._digest = file_digest(self.data_files())
        return self._digest


def pick(items: Sequence[Any], limit: int | None, seed: int) -> list[int]:
    """Indices of ``items`` in a seeded shuffled order (the same for the same seed), first ``limit``."""
    import random

    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return order[:limit]


# --------------------------------------------------------------------------- masks


def box_mask(size: tuple[int, int], boxes: Iterable[Sequence[float]]) -> np.ndarray:
    """Boolean ``H x W`` (``size`` is ``(W, H)``): pixels whose centre lies in a box ``(x, y, w, h)``."""
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        x0, x1 = (int(np.ceil(v - 0.5)) for v in (x, x + w))
        y0, y1 = (int(np.ceil(v - 0.5)) for v in (y, y + h))
        mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def polygon_mask(size: tuple[int, int], polygons: Iterable[Sequence[float]]) -> np.ndarray:
    """Boolean ``H x W``: the union of flat ``[x1, y1, x2, y2, ...]`` polygons, filled by PIL ImageDraw."""
    from PIL import Image, ImageDraw

    canvas = Image.new("1", size, 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        points = [(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)]
        if len(points) >= 3:
            draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def rle_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Boolean ``H x W`` from COCO's uncompressed run-length encoding ``{"size": [h, w], "counts": [...]}``
    (runs alternate 0 and 1, starting with 0, in column-major order)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        raise DataError(
            "compressed RLE segmentations (string 'counts') are not supported; use mask_from=bbox "
            "or annotations with polygon / uncompressed RLE segmentations"
        )
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width:
        raise DataError(f"RLE counts sum to {int(counts.sum())}, expected {height}x{width}={height * width}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(width, height).T.copy()


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` resized (nearest) to ``size`` = ``(W, H)`` when the image was stored at another size."""
    if mask.shape == (size[1], size[0]):
        return mask
    from PIL import Image

    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST), dtype=bool)
