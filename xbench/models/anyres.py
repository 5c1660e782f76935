"""Geometry of LLaVA-NeXT's "anyres" image tokens (shared by the llava_next and llava_onevision adapters).

The processor shows the language model one image twice (``pixel_values [1, n_crops, C, S, S]``):

* crop 0, the *base* image: the whole original image resized (squashed) to ``S x S``;
* crops 1.., the *high-resolution* image: the original resized, keeping its aspect ratio, to fit
  the best of ``image_grid_pinpoints`` (``select_best_resolution``), pasted centred on a zero
  canvas of that resolution and cut row-major into ``S x S`` crops.

The tower reads each crop as ``side x side`` patches (``side = S // patch``; when ``patch`` does
not divide ``S``, as SigLIP's 14 px patches in a 384 px crop, the last ``S - side * patch`` rows
and columns of every crop feed no patch). The model joins the crops' patch grids into one *full*
feature grid, cuts away the rows or columns that lie on the canvas padding (``unpad_image``),
optionally shrinks what is left by bilinear interpolation (LLaVA-OneVision's ``anyres_max_N``),
and appends one ``image_newline`` token after every row. The image tokens are therefore: the base
grid (``side x side``), then the high-resolution grid row by row, each row followed by a newline
token that shows no part of the image.

Everything here is computed from the processor's and the model's own functions or formulas and
returned as plain arrays; the adapters turn them into :class:`~xbench.image_layout.ImageLayout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class AnyresGrid:
    """Where the image tokens of one image come from (see the module docstring).

    ``image_size``: original ``(H, W)``; ``crop``: ``S``; ``patch``: the tower's patch side;
    ``side``: patches per crop side; ``best``: the chosen pinpoint ``(height, width)``;
    ``resized`` / ``paste``: size and top-left corner of the resized image on that canvas;
    ``kept``: ``(top, left, rows, cols)`` of the full feature grid that survives unpadding;
    ``shape``: the high-resolution grid the language model reads (``(rows, cols)``, or smaller
    when pooled).
    """

    image_size: tuple[int, int]
    crop: int
    patch: int
    side: int
    best: tuple[int, int]
    resized: tuple[int, int]
    paste: tuple[int, int]
    kept: tuple[int, int, int, int]
    shape: tuple[int, int]

    @property
    def crops(self) -> tuple[int, int]:
        """High-resolution crops per column and per row of the canvas."""
        return self.best[0] // self.crop, self.best[1] // self.crop

    @property
    def n_crops(self) -> int:
        """Crops the tower reads: the base image plus the high-resolution crops."""
        return 1 + self.crops[0] * self.crops[1]

    @property
    def pooled(self) -> bool:
        """Whether the high-resolution grid was shrunk by interpolation (each cell then mixes patches)."""
        return self.shape != self.kept[2:]

    @property
    def n_base(self) -> int:
        return self.side * self.side

    @property
    def n_cells(self) -> int:
        return self.n_base + self.shape[0] * self.shape[1]


def anyres_grid(
    image_size: Sequence[int], *, pinpoints: list, crop: int, patch: int, max_patches: int | None = None
) -> AnyresGrid:
    """The :class:`AnyresGrid` of an image of ``image_size = (H, W)``; ``max_patches``: the N of
    ``anyres_max_N`` (None: never pooled, LLaVA-NeXT)."""
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    H, W = int(image_size[0]), int(image_size[1])
    best = tuple(int(v) for v in select_best_resolution((H, W), pinpoints))
    shape_only = np.broadcast_to(np.zeros((), np.uint8), (1, H, W))  # the function reads the size only
    resized = tuple(int(v) for v in get_patch_output_size(shape_only, best, input_data_format=ChannelDimension.FIRST))
    paste = ((best[0] - resized[0]) // 2, (best[1] - resized[1]) // 2)
    side = crop // patch
    full = (best[0] // crop * side, best[1] // crop * side)
    index = torch.arange(full[0] * full[1]).reshape(1, *full)
    kept_index = unpad_image(index, (H, W))[0]  # the model's own unpadding, on cell indices
    top, left = divmod(int(kept_index[0, 0]), full[1])
    rows, cols = kept_index.shape
    shape = (rows, cols)
    if max_patches is not None:
        # modeling_llava_onevision.pack_image_features: bilinear shrink when too many patches
        ratio = math.sqrt(rows * cols / (max_patches * side**2))
        if ratio > 1.1:
            shape = (int(rows // ratio), int(cols // ratio))
    return AnyresGrid((H, W), crop, patch, side, best, resized, paste, (top, left, rows, cols), shape)


# ---------------------------------------------------------------------- boxes
def _canvas_edges(g: AnyresGrid, u: np.ndarray, start: bool) -> np.ndarray:
    """Canvas pixel (along one axis) of continuous full-grid coordinate ``u``.

    Patches tile each crop's first ``side * patch`` pixels; a coordinate on a crop boundary is
    the start of the next crop for a box's start edge and the end of the previous one's patches
    for its end edge."""
    side, p, S = g.side, g.patch, g.crop
    if start:
        k = np.floor(u / side)
    else:
        k = np.maximum(np.ceil(u / side) - 1, 0)
    return k * S + (u - k * side) * p


def _axis_bounds(g: AnyresGrid, n: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end, in original pixels, of the ``n`` high-resolution cells along ``axis``."""
    offset, kept = g.kept[axis], g.kept[2 + axis]
    u = np.arange(n + 1) * kept / n
    lo = _canvas_edges(g, offset + u[:-1], start=True)
    hi = _canvas_edges(g, offset + u[1:], start=False)
    scale = g.image_size[axis] / g.resized[axis]
    return (lo - g.paste[axis]) * scale, (hi - g.paste[axis]) * scale


def cell_boxes(g: AnyresGrid) -> np.ndarray:
    """``[n_cells, 4]`` (top, left, bottom, right) boxes on the original image: base cells, then
    high-resolution cells (a pooled cell covers the span of the unpadded grid it was interpolated
    over). Boxes over canvas padding extend past the image (the layout clips them)."""
    H, W = g.image_size
    edges = np.arange(g.side + 1) * g.patch
    ys, xs = edges * H / g.crop, edges * W / g.crop
    base = [(ys[r], xs[c], ys[r + 1], xs[c + 1]) for r in range(g.side) for c in range(g.side)]
    t, b = _axis_bounds(g, g.shape[0], 0)
    l, r = _axis_bounds(g, g.shape[1], 1)
    high = [(t[i], l[j], b[i], r[j]) for i in range(g.shape[0]) for j in range(g.shape[1])]
    return np.asarray(base + high, dtype=np.float64).reshape(-1, 4)


# ---------------------------------------------------------------------- cells of pixels and patches
def _high_index(g: AnyresGrid, u: torch.Tensor, axis: int) -> torch.Tensor:
    """High-resolution row (axis 0) or column index of continuous full-grid coordinate ``u``; -1 outside."""
    offset, kept, n = g.kept[axis], g.kept[2 + axis], g.shape[axis]
    v = u - offset
    idx = torch.floor(v * n / kept).long()
    return torch.where((v >= 0) & (v < kept), idx, torch.full_like(idx, -1))


def _crop_cells(g: AnyresGrid, pos: torch.Tensor) -> torch.Tensor:
    """``[n_crops, L, L]`` cells of points at in-crop coordinates ``pos`` (``[L]``, in patch units)
    of every crop; points past the crop's patches (``pos >= side``) feed no cell (-1)."""
    L = len(pos)
    inside = pos < g.side
    out = torch.full((g.n_crops, L, L), -1, dtype=torch.long)
    base = torch.floor(pos).long()
    base_cells = base[:, None] * g.side + base[None, :]
    out[0] = torch.where(inside[:, None] & inside[None, :], base_cells, out[0])
    n_rows, n_cols = g.crops
    for k in range(n_rows * n_cols):
        i, j = divmod(k, n_cols)
        rows = _high_index(g, i * g.side + pos, 0)
        cols = _high_index(g, j * g.side + pos, 1)
        ok = inside[:, None] & inside[None, :] & (rows[:, None] >= 0) & (cols[None, :] >= 0)
        cells = g.n_base + rows[:, None] * g.shape[1] + cols[None, :]
        out[1 + k] = torch.where(ok, cells, out[1 + k])
    return out


def pixel_cells(g: AnyresGrid) -> torch.Tensor:
    """``[1, n_crops, 1, S, S]`` long: the cell each pixel of each crop lies in (its box holds the
    pixel); -1 for pixels on cut-away padding or past the crop's patches."""
    pos = (torch.arange(g.crop, dtype=torch.float64) + 0.5) / g.patch
    return _crop_cells(g, pos)[None, :, None]


def patch_cells(g: AnyresGrid) -> torch.Tensor:
    """``[n_crops * side * side]`` long, crop-major: the cell fed by each tower patch, -1 for patches
    cut away with the padding. Only exact without pooling (the adapter checks :attr:`AnyresGrid.pooled`)."""
    pos = torch.arange(g.side, dtype=torch.float64) + 0.5
    return _crop_cells(g, pos).reshape(-1)
