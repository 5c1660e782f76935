"""Where a generation's image tokens sit on the image: one or more grids of cells, each cell a box.

Every image token of a prompt is one *cell* of an :class:`ImageLayout`. Cells are numbered in
prompt order: grid 0 row-major, then grid 1, ... (LLaVA-1.5: one 24x24 grid; LLaVA-NeXT: the base
grid then the high-resolution grid without its newline tokens; a CLS token read as an image
token: a 1x1 grid covering the whole image; SmolVLM: one grid per tile plus the global image).
Each cell carries the box of the *original* image it covers, in pixels, following the
processor's resize, crop, padding and tiling, so that a map on the model's cells can be scored
against masks on the original image and drawn over it.

A relevance map is an array of shape :attr:`ImageLayout.map_shape`: ``(h, w)`` for a layout of
one grid (the model's own grid), ``(N,)`` over all cells for several (:meth:`split` gives the
per-grid views).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True, eq=False)
class ImageLayout:
    """``grids``: ``((h, w), ...)`` in token order; ``boxes``: float ``[N, 4]`` (top, left, bottom,
    right) of the original image covered by each cell, ``N = sum(h * w)``; ``image_size``: the
    original image's ``(height, width)``. Boxes may be fractional; a box over padding the
    processor added is clipped to the image (and may be empty)."""

    grids: tuple[tuple[int, int], ...]
    boxes: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        grids = tuple((int(h), int(w)) for h, w in self.grids)
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        if not grids or any(h < 1 or w < 1 for h, w in grids):
            raise ValueError(f"an image layout needs at least one non-empty grid, got {self.grids!r}")
        if len(boxes) != sum(h * w for h, w in grids):
            raise ValueError(f"{len(boxes)} cell boxes for grids {grids} of {sum(h * w for h, w in grids)} cells")
        H, W = self.image_size
        clipped = np.clip(boxes, 0, [H, W, H, W])
        object.__setattr__(self, "grids", grids)
        object.__setattr__(self, "boxes", clipped)
        object.__setattr__(self, "image_size", (int(H), int(W)))

    # ------------------------------------------------------------------ shape
    @property
    def n_cells(self) -> int:
        return len(self.boxes)

    @property
    def map_shape(self) -> tuple[int, ...]:
        """``(h, w)`` for one grid, ``(N,)`` for several."""
        return self.grids[0] if len(self.grids) == 1 else (self.n_cells,)

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """A map (any shape with ``N`` elements, cell order) as one ``[h, w]`` array per grid."""
        flat = np.asarray(values).reshape(-1)
        if flat.size != self.n_cells:
            raise ValueError(f"a map of {flat.size} values on a layout of {self.n_cells} cells")
        out, start = [], 0
        for h, w in self.grids:
            out.append(flat[start : start + h * w].reshape(h, w))
            start += h * w
        return out

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ImageLayout)
            and self.grids == other.grids
            and self.image_size == other.image_size
            and np.array_equal(self.boxes, other.boxes)
        )

    # ------------------------------------------------------------------ the original image
    def cover(self, mask: np.ndarray) -> np.ndarray:
        """Fraction of each cell's box covered by a boolean mask on the original image
        (``[H, W]`` = :attr:`image_size`), shaped :attr:`map_shape` (0 for an empty box).
        Fractional box edges weigh the boundary pixels by their overlap."""
        mask = np.asarray(mask, dtype=np.float64)
        if mask.shape != self.image_size:
            raise ValueError(f"a {mask.shape} mask on an image of size {self.image_size}")
        H, W = self.image_size
        integral = np.zeros((H + 1, W + 1))
        integral[1:, 1:] = mask.cumsum(0).cumsum(1)
        covered = _box_sums(integral, self.boxes)
        area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        frac = np.divide(covered, area, out=np.zeros_like(area), where=area > 0)
        return np.clip(frac, 0.0, 1.0).astype(np.float32).reshape(self.map_shape)

    def paint(self, values: np.ndarray, size: Sequence[int] | None = None) -> np.ndarray:
        """``[H, W]`` float64 on the original image (or scaled to ``size = (H', W')``): each pixel
        the mean of the values of the cells whose boxes hold its centre; NaN where no cell does."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if flat.size != self.n_cells:
            raise ValueError(f"a map of {flat.size} values on a layout of {self.n_cells} cells")
        H, W = self.image_size
        out_h, out_w = (H, W) if size is None else (int(size[0]), int(size[1]))
        ys = (np.arange(out_h) + 0.5) * H / out_h
        xs = (np.arange(out_w) + 0.5) * W / out_w
        total = np.zeros((out_h, out_w))
        count = np.zeros((out_h, out_w))
        for value, (top, left, bottom, right) in zip(flat, self.boxes):
            rows = (ys >= top) & (ys < bottom)
            cols = (xs >= left) & (xs < right)
            if rows.any() and cols.any():
                block = np.ix_(rows, cols)
                total[block] += value
                count[block] += 1
        return np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)


def _box_sums(integral: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Sum of the (bilinearly interpolated) integral image over fractional boxes."""

    def at(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        y0 = np.clip(np.floor(y).astype(int), 0, integral.shape[0] - 1)
        x0 = np.clip(np.floor(x).astype(int), 0, integral.shape[1] - 1)
        y1 = np.clip(y0 + 1, 0, integral.shape[0] - 1)
        x1 = np.clip(x0 + 1, 0, integral.shape[1] - 1)
        fy, fx = y - y0, x - x0
        top = integral[y0, x0] * (1 - fx) + integral[y0, x1] * fx
        bottom = integral[y1, x0] * (1 - fx) + integral[y1, x1] * fx
        return top * (1 - fy) + bottom * fy

    t, l, b, r = boxes.T
    return at(b, r) - at(t, r) - at(b, l) + at(t, l)


def grid_boxes(grid: Sequence[int], region: Sequence[float]) -> np.ndarray:
    """``[h * w, 4]`` boxes (row-major) splitting ``region = (top, left, bottom, right)`` evenly
    into the ``h x w`` cells of ``grid``."""
    h, w = int(grid[0]), int(grid[1])
    top, left, bottom, right = (float(v) for v in region)
    ys = np.linspace(top, bottom, h + 1)
    xs = np.linspace(left, right, w + 1)
    t, l = np.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    b, r = np.meshgrid(ys[1:], xs[1:], indexing="ij")
    return np.stack([t.ravel(), l.ravel(), b.ravel(), r.ravel()], axis=1)


def single_grid(grid: Sequence[int], region: Sequence[float], image_size: Sequence[int]) -> ImageLayout:
    """A layout of one ``grid`` laid evenly over ``region`` of an image of ``image_size``."""
    return ImageLayout(((int(grid[0]), int(grid[1])),), grid_boxes(grid, region), tuple(image_size))


def to_record(layout: ImageLayout) -> dict:
    """A JSON-able layout: per grid its shape and either the region it splits evenly or its boxes
    (rounded to 0.01 px), and the image size."""
    grids, start = [], 0
    for h, w in layout.grids:
        boxes = layout.boxes[start : start + h * w]
        start += h * w
        region = [boxes[0, 0], boxes[0, 1], boxes[-1, 2], boxes[-1, 3]]
        entry: dict = {"shape": [h, w]}
        if np.allclose(grid_boxes((h, w), region), boxes, atol=1e-3):
            entry["region"] = [round(float(v), 2) for v in region]
        else:
            entry["boxes"] = np.round(boxes, 2).tolist()
        grids.append(entry)
    return {"grids": grids, "image_size": list(layout.image_size)}


def from_record(record: dict) -> ImageLayout:
    """The :class:`ImageLayout` of :func:`to_record` (a ``ValueError`` for a malformed one)."""
    try:
        shapes = [tuple(int(v) for v in g["shape"]) for g in record["grids"]]
        boxes = [np.asarray(g["boxes"], dtype=np.float64) if "boxes" in g else grid_boxes(shape, g["region"])
                 for g, shape in zip(record["grids"], shapes)]
        return ImageLayout(tuple(shapes), np.concatenate(boxes), tuple(int(v) for v in record["image_size"]))
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"malformed layout record: {exc!r}") from None
