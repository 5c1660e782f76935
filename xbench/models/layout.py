"""Layout helpers for adapters (never for methods or metrics, which go through the adapter).

* :func:`processed_region`: the box of the original image that a CLIP/SigLIP-style processor's
  pad-to-square, resize and centre crop turn into its square tensor;
* :func:`square_cells`, :func:`patch_region`: the cell of every pixel of an image cut into square
  patches, and the part of the region those patches read.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def _size_of(value: Any) -> tuple[float | None, float | None, float | None]:
    """``(shortest_edge, height, width)`` of a processor's ``size`` / ``crop_size`` setting."""
    if value is None:
        return None, None, None
    if isinstance(value, (int, float)):
        return float(value), None, None
    get = value.get if hasattr(value, "get") else lambda k, d=None: getattr(value, k, d)
    edge, h, w = get("shortest_edge", None), get("height", None), get("width", None)
    return (None if edge is None else float(edge)), (None if h is None else float(h)), (None if w is None else float(w))


def processed_region(image_processor, image_size: Sequence[int]) -> tuple[float, float, float, float]:
    """``(top, left, bottom, right)`` in original pixels of the region the processor's output shows:
    optional pad to a centred square (``do_pad``), resize (shortest edge, or to height x width),
    optional centre crop. Boxes outside the image (padding) are clipped by the layout."""
    H, W = float(image_size[0]), float(image_size[1])
    top, left, h, w = 0.0, 0.0, H, W
    if getattr(image_processor, "do_pad", False) and getattr(image_processor, "pad_size", None) is None:
        side = max(h, w)
        top, left, h, w = top - (side - h) / 2, left - (side - w) / 2, side, side
    scale_y = scale_x = 1.0
    if getattr(image_processor, "do_resize", True):
        edge, rh, rw = _size_of(getattr(image_processor, "size", None))
        if edge is not None:
            scale_y = scale_x = edge / min(h, w)
        elif rh is not None and rw is not None:
            scale_y, scale_x = rh / h, rw / w
    if getattr(image_processor, "do_center_crop", False):
        _, ch, cw = _size_of(getattr(image_processor, "crop_size", None))
        if ch is not None and cw is not None:
            top += (h * scale_y - ch) / 2 / scale_y
            left += (w * scale_x - cw) / 2 / scale_x
            h, w = ch / scale_y, cw / scale_x
    return top, left, top + h, left + w


def square_cells(grid: Sequence[int], patch: int, pixels: Sequence[int], first_cell: int = 0, device=None) -> torch.Tensor:
    """``[H, W]`` long: the row-major cell (offset by ``first_cell``) of every pixel of an ``H x W``
    image cut into ``patch x patch`` patches on the ``h x w`` ``grid`` from its top-left corner;
    -1 for pixels past the last whole patch (a stride-``patch`` convolution never reads them)."""
    h, w = int(grid[0]), int(grid[1])
    rows = torch.arange(int(pixels[0]), device=device) // patch
    cols = torch.arange(int(pixels[1]), device=device) // patch
    cells = first_cell + rows[:, None] * w + cols[None, :]
    return torch.where((rows[:, None] < h) & (cols[None, :] < w), cells, torch.full_like(cells, -1))


def patch_region(region: Sequence[float], covered: Sequence[float]) -> tuple[float, float, float, float]:
    """The part of ``region`` (top, left, bottom, right) whose processed pixels the patches read:
    the leading ``covered = (fy, fx)`` fraction of each side (e.g. 27 x 14 / 384 for SigLIP-384)."""
    top, left, bottom, right = (float(v) for v in region)
    return top, left, top + (bottom - top) * covered[0], left + (right - left) * covered[1]
