"""Idefics3 (SmolVLM) image layout: tiles + a global image, pixel-shuffled into token grids.

Used by the idefics3 adapter only (methods and metrics see the result through
:class:`~xbench.vlm.ImageLayout` and the adapter's members). What the processor does, and
what is read back here:

* the image is resized (longest edge to ``size``), stretched to ``rows*M x cols*M`` (``M`` =
  ``max_image_size``) and cut into ``rows x cols`` tiles of ``M x M``, row-major, then the whole
  image squashed to ``M x M`` is appended (the global image); an image no larger than one tile
  is the global image alone (``rows = cols = 0``). ``pixel_values`` is ``[n_tiles, C, S, S]``
  per image, padded with zero tiles and bottom/right zero pixels in a batch
  (``pixel_attention_mask`` is 0 there).
* in the prompt each tile is ``<fake_token_around_image><row_r_col_c>`` + ``image_seq_len``
  ``<image>`` tokens, and the global image ``<fake_token_around_image><global-img>`` + as many.
  Rows and columns are read from those markers, never guessed.
* the tower's patches (``patch`` px, no CLS, ``side = S // patch`` per edge: the last
  ``S - side*patch`` pixels of a tile feed no patch) are pixel-shuffled by ``scale``: token
  ``(a, b)`` of a tile gathers patches ``(a*scale + i, b*scale + j)``, ``i, j < scale``, so a tile
  is a ``g x g`` grid of tokens, ``g = side / scale``, each covering ``scale*patch`` pixels.

Cell order (= image-token order in the prompt): tile (0, 0) row-major, ..., tile
(rows-1, cols-1), then the global image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from xbench.errors import ModelCapabilityError


@dataclass(frozen=True)
class TileGeometry:
    """The model's fixed sizes: ``patch`` px, pixel-shuffle ``scale``, tile side ``S`` (pixels)."""

    patch: int
    scale: int
    tile: int

    @property
    def side(self) -> int:
        """Patches per tile edge (the convolution drops the remainder)."""
        return self.tile // self.patch

    @property
    def grid(self) -> int:
        """Tokens per tile edge after the pixel shuffle."""
        return self.side // self.scale

    @property
    def cell_px(self) -> int:
        """Tile pixels per token edge."""
        return self.patch * self.scale

    @property
    def tokens_per_tile(self) -> int:
        return self.grid**2

    @property
    def patches_per_tile(self) -> int:
        return self.side**2


@dataclass(frozen=True)
class SplitLayout:
    """One image's split as the processor made it: ``rows x cols`` tiles (0 x 0: global only),
    ``content`` = the ``(height, width)`` of real pixels in each tile (top-left, rest padding)."""

    rows: int
    cols: int
    content: tuple[tuple[int, int], ...]

    @property
    def n_tiles(self) -> int:
        return len(self.content)


@dataclass(frozen=True)
class Markers:
    """Token ids of the prompt's image structure."""

    image: int
    global_image: int
    tiles: dict[int, tuple[int, int]]  # marker id -> (row, col), 1-based


def read_split(prompt_ids: Sequence[int], markers: Markers, tokens_per_tile: int, model: str) -> tuple[int, int, list[int]]:
    """``(rows, cols, image positions)`` from the prompt: every run of ``tokens_per_tile`` image
    tokens must follow its tile marker in row-major order (the global image's last), else a
    :class:`ModelCapabilityError` naming what differs."""
    positions = [k for k, t in enumerate(prompt_ids) if t == markers.image]
    if not positions or len(positions) % tokens_per_tile:
        raise ModelCapabilityError(
            f"model {model!r}: {len(positions)} image tokens are not whole tiles of {tokens_per_tile}"
        )
    starts = positions[::tokens_per_tile]
    for k, s in enumerate(starts):
        if positions[k * tokens_per_tile : (k + 1) * tokens_per_tile] != list(range(s, s + tokens_per_tile)):
            raise ModelCapabilityError(f"model {model!r}: the image tokens of a tile starting at {s} are not contiguous")
    found = [markers.tiles.get(prompt_ids[s - 1]) if s > 0 else None for s in starts[:-1]]
    if prompt_ids[starts[-1] - 1] != markers.global_image or any(f is None for f in found):
        raise ModelCapabilityError(
            f"model {model!r}: the prompt's image is not tiles with <row_r_col_c> markers followed by one <global-img>"
        )
    rows = max((r for r, _ in found), default=0)
    cols = max((c for _, c in found), default=0)
    expected = [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]
    if found != expected:
        raise ModelCapabilityError(f"model {model!r}: tile markers {found} are not the row-major {rows}x{cols} split")
    return rows, cols, positions


def content_sizes(pixel_mask: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """``(height, width)`` of real pixels in each tile of a ``[n_tiles, S, S]`` mask (padding is
    bottom/right); a tile with no real pixel is refused."""
    sizes = []
    for t, m in enumerate(pixel_mask.bool()):
        h = int(m.any(dim=1).sum())
        w = int(m.any(dim=0).sum())
        if h == 0 or w == 0 or not bool(m[:h, :w].all()) or bool(m.sum() != h * w):
            raise ModelCapabilityError(f"tile {t} of the image has no top-left block of real pixels")
        sizes.append((h, w))
    return tuple(sizes)


def _tile_regions(split: SplitLayout, image_size: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """Original-image ``(top, left, bottom, right)`` each tile shows: the row-major tiles of the
    stretched image, then the whole image (global)."""
    H, W = (float(v) for v in image_size)
    regions = [
        (r * H / split.rows, c * W / split.cols, (r + 1) * H / split.rows, (c + 1) * W / split.cols)
        for r in range(split.rows)
        for c in range(split.cols)
    ]
    return regions + [(0.0, 0.0, H, W)]


def cell_boxes(geometry: TileGeometry, split: SplitLayout, image_size: tuple[int, int]) -> np.ndarray:
    """float32 ``[n_tiles * g * g, 4]``: the original-image box of every cell, in cell order.

    A tile's real pixels (its ``content`` block) are a linear stretch of its region; a cell's
    tile pixels are clipped to that block first, so cells over padding get boxes clipped to the
    image (empty when wholly over padding)."""
    g, cp = geometry.grid, geometry.cell_px
    edges = np.arange(g + 1, dtype=np.float64) * cp
    out = []
    for (top, left, bottom, right), (h, w) in zip(_tile_regions(split, image_size), split.content):
        ys = top + np.minimum(edges, h) * (bottom - top) / h
        xs = left + np.minimum(edges, w) * (right - left) / w
        y0, x0 = np.meshgrid(ys[:-1], xs[:-1], indexing="ij")
        y1, x1 = np.meshgrid(ys[1:], xs[1:], indexing="ij")
        out.append(np.stack([y0, x0, y1, x1], axis=-1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def pixel_cells(geometry: TileGeometry, pixel_mask: torch.Tensor) -> torch.Tensor:
    """``[1, n_tiles, 1, S, S]`` long: the cell fed by each pixel of ``pixel_values [1, n_tiles, C, S, S]``;
    -1 for padding (``pixel_mask`` 0) and for the tile's edge pixels no patch covers."""
    n, S = pixel_mask.shape[0], geometry.tile
    g, cp = geometry.grid, geometry.cell_px
    idx = torch.arange(S, device=pixel_mask.device) // cp
    inside = idx < g
    within = (idx[:, None] * g + idx[None, :]).expand(n, S, S)
    offsets = (torch.arange(n, device=pixel_mask.device) * g * g)[:, None, None]
    cells = within + offsets
    keep = pixel_mask.bool() & inside[:, None] & inside[None, :]
    return torch.where(keep, cells, torch.full_like(cells, -1))[None, :, None]


def patch_mask(geometry: TileGeometry, pixel_mask: torch.Tensor) -> torch.Tensor:
    """``[n_tiles, side, side]`` bool: the patches holding a real pixel (the tower attends to those
    only, as transformers derives its ``patch_attention_mask``)."""
    n, side, p = pixel_mask.shape[0], geometry.side, geometry.patch
    return pixel_mask[:, : side * p, : side * p].reshape(n, side, p, side, p).bool().any(dim=(2, 4))


def patch_cells(geometry: TileGeometry, pixel_mask: torch.Tensor) -> torch.Tensor:
    """``[n_tiles * side * side]`` long: the cell of every vision-tower patch, crop-major (tile
    ``t``'s patch ``(y, x)`` is ``t * side**2 + y * side + x``); -1 for a patch wholly over padding
    (the tower masks it out)."""
    n, side, s, g = pixel_mask.shape[0], geometry.side, geometry.scale, geometry.grid
    rows = torch.arange(side, device=pixel_mask.device) // s
    within = rows[:, None] * g + rows[None, :]
    cells = within[None] + (torch.arange(n, device=pixel_mask.device) * g * g)[:, None, None]
    return torch.where(patch_mask(geometry, pixel_mask), cells, torch.full_like(cells, -1)).reshape(-1)


def vision_token_positions(geometry: TileGeometry, n_tiles: int) -> list[list[int]]:
    """For each image token in cell order, the crop-major indices of the ``scale**2`` patches the
    pixel shuffle concatenates into it."""
    side, s, g = geometry.side, geometry.scale, geometry.grid
    out = []
    for t in range(n_tiles):
        for a in range(g):
            for b in range(g):
                out.append([t * side * side + (a * s + i) * side + (b * s + j) for i in range(s) for j in range(s)])
    return out
