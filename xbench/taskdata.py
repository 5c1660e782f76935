"""Shared code for task adapters that read official dataset files from a local folder.

Nothing here downloads. A missing folder or file, or a file that is wrong as a whole, is a
:class:`~xbench.errors.DataError` naming the path and what was expected there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from xbench.errors import DataError, ParameterError
from xbench.params import Param

#: Prompt templates a task may be asked for with ``--task-param prompt=NAME``. ``llava15`` is the
#: short-answer instruction LLaVA-1.5 appends for VQA v2, GQA and POPE alike.
PROMPTS: dict[str, str] = {
    "llava15": "{question}\nAnswer the question using a single word or phrase.",
    "plain": "{question}",
}


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


def data_root(task: str, data_dir: str | Path | None, expected: str) -> Path:
    """The folder holding ``expected``: ``data_dir`` itself or its subfolder named after the task
    (so one ``$XBENCH_DATA_DIR`` can hold several datasets)."""
    if data_dir is None:
        raise DataError(
            f"task {task!r} reads local files: pass --data-dir DIR (or set $XBENCH_DATA_DIR) "
            f"naming a folder that holds {expected}"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} for task {task!r} does not exist (it should hold {expected})")
    for candidate in (root, root / task):
        if (candidate / expected).exists():
            return candidate
    raise DataError(
        f"task {task!r} expects {expected} in {str(root)!r} or {str(root / task)!r}; not found "
        "(xbench never downloads datasets: copy the official files there)"
    )


def data_file(root: Path, name: str | Path, what: str) -> Path:
    """``name`` (absolute, or relative to ``root``) as an existing file, else a :class:`DataError`."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} not found")
    return path


def load_json(path: Path, what: str, object_hook: Callable[[dict], Any] | None = None) -> Any:
    """Parse a JSON file; unreadable or invalid JSON is a :class:`DataError` saying what was expected.

    The raw bytes are dropped once decoded, before parsing, so a large file costs its text
    once (not bytes + text) on top of the parsed objects; ``object_hook`` may shrink those.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        del raw
        return json.loads(text, object_hook=object_hook)
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{str(path)!r} is not valid JSON ({exc}); expected {what}") from None


def file_digest(paths: Iterable[Path | None]) -> str:
    """First 16 hex digits of a sha256 over the names and bytes of ``paths`` (None entries skipped)."""
    h = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


class LocalFiles:
    """Mixin of tasks that read official files from a local folder: the prompt template
    (``self.template``, from :func:`resolve_prompt`), file names holding ``{split}``, and
    ``data_hash()``: :func:`file_digest` of ``data_files()``, computed once."""

    template: str
    _digest: str | None = None

    def prompt(self, sample) -> str:
        return fill_prompt(self.template, sample.question)

    def split_name(self, param: str, template: str) -> str:
        """``template`` with ``{split}`` filled in; any other field is a :class:`ParameterError`."""
        try:
            return template.format(split=self.split)
        except (KeyError, IndexError, ValueError) as exc:
            raise ParameterError(f"{self.name} {param} may use {{split}} only: {exc}") from None

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
