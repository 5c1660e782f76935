"""Layout helpers for adapters whose image is one square-patch tiling of one processed image.

Used by adapters only (LLaVA-1.5 style: ``pixel_values [1, C, H, W]`` with ``H = h * patch``,
one grid cell per patch); methods and metrics reach them through the adapter's
:class:`~xbench.vlm.VLM` methods, never directly, so another layout is another adapter.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from xbench.errors import ParameterError


def sum_per_cell(values: torch.Tensor, grid: Sequence[int]) -> np.ndarray:
    """``[..., H, W] -> [h, w]`` float32: the sum over leading dims and over each cell's pixels.

    A :class:`ParameterError` when ``H x W`` does not tile the ``h x w`` grid exactly.
    """
    h, w = grid
    a = values.detach().float()
    a = a.reshape(-1, *a.shape[-2:]).sum(dim=0)
    H, W = a.shape
    if H % h or W % w:
        raise ParameterError(f"pixel attribution of size {H}x{W} does not tile a {h}x{w} patch grid")
    return a.reshape(h, H // h, w, W // w).sum(dim=(1, 3)).cpu().numpy().astype(np.float32)


def cell_index(grid: Sequence[int], patch: int, device=None) -> torch.Tensor:
    """``[1, 1, h * patch, w * patch]`` long: the row-major cell index of every pixel."""
    h, w = grid
    ids = torch.arange(h * w, device=device).reshape(h, w)
    return ids.repeat_interleave(patch, dim=0).repeat_interleave(patch, dim=1)[None, None]


def centre_crop_cover(mask: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Fraction of each cell covered by a pixel mask, ``[h, w]`` float32.

    The mask is centre-cropped to a square first, matching CLIP's resize-shortest-edge +
    centre-crop preprocessing, then area-averaged onto the grid.
    """
    from PIL import Image

    mask = np.asarray(mask, dtype=bool)
    H, W = mask.shape
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    square = mask[top : top + side, left : left + side].astype(np.float32)
    h, w = grid
    if side % h == 0 and side % w == 0:
        return square.reshape(h, side // h, w, side // w).mean(axis=(1, 3))
    img = Image.fromarray(square, mode="F").resize((w, h), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32)
