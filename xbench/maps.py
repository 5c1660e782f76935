"""Shared helpers turning model tensors into patch-grid maps (masks go through ``VLM.mask_to_grid``)."""

from __future__ import annotations

import numpy as np

from xbench.api import Generation
from xbench.errors import ParameterError

TOKEN_CHOICES = ("mean", "first", "last")


def rows_to_token_maps(rows, generation: Generation) -> np.ndarray:
    """``rows``: ``[K, T]`` relevance of each answer token's query position over all positions.

    Returns ``[K, h, w]`` float32: the image-token columns laid on the patch grid.
    """
    h, w = generation.grid
    cols = rows[:, generation.image_positions]
    arr = cols.detach().float().cpu().numpy() if hasattr(cols, "detach") else np.asarray(cols, dtype=np.float32)
    return arr.reshape(len(arr), h, w).astype(np.float32)


def combine_tokens(per_token: np.ndarray, how: str) -> np.ndarray:
    """One map from per-answer-token maps: their mean, or the first / last token's."""
    if how == "mean":
        return per_token.mean(axis=0)
    if how == "first":
        return per_token[0]
    if how == "last":
        return per_token[-1]
    raise ParameterError(f"token={how!r} is not one of {TOKEN_CHOICES}")
