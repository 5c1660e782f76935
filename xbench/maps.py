"""Shared helpers turning model tensors into patch-grid maps (masks go through ``VLM.mask_to_grid``)."""

from __future__ import annotations

import numpy as np

from xbench.api import Generation
from xbench.params import Param

#: how per-answer-token maps combine into one (the ``token`` parameter)
COMBINE_TOKENS = {
    "mean": lambda per_token: per_token.mean(axis=0),
    "first": lambda per_token: per_token[0],
    "last": lambda per_token: per_token[-1],
}
TOKEN_CHOICES = tuple(COMBINE_TOKENS)
TOKEN_PARAM = Param("mean", choices=TOKEN_CHOICES, doc="which answer tokens make the map: their mean, the first or the last")


def rows_to_token_maps(rows, generation: Generation) -> np.ndarray:
    """``rows``: ``[K, T]`` relevance of each answer token's query position over all positions.

    Returns ``[K, h, w]`` float32: the image-token columns laid on the patch grid.
    """
    h, w = generation.grid
    cols = rows[:, generation.image_positions]
    arr = cols.detach().float().cpu().numpy() if hasattr(cols, "detach") else np.asarray(cols, dtype=np.float32)
    return arr.reshape(len(arr), h, w).astype(np.float32)


def combine_tokens(per_token: np.ndarray, how: str) -> np.ndarray:
    """One map from per-answer-token maps: their mean, or the first / last token's
    (``how`` from :data:`TOKEN_CHOICES`, checked when the method was built)."""
    return COMBINE_TOKENS[how](per_token)

