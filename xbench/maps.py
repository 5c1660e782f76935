"""Shared helpers turning model tensors into patch-grid maps (masks go through ``VLM.mask_to_grid``)."""

from __future__ import annotations

import numpy as np

from xbench.api import Generation
from xbench.params import Param

#: the ``token`` parameter: per choice, the answer tokens it needs (given the answer's length) and
#: how their per-token maps combine into one
TOKEN_RULES = {
    "mean": (lambda n_answer: list(range(n_answer)), lambda per_token: per_token.mean(axis=0)),
    "first": (lambda n_answer: [0], lambda per_token: per_token[0]),
    "last": (lambda n_answer: [n_answer - 1], lambda per_token: per_token[-1]),
}
TOKEN_CHOICES = tuple(TOKEN_RULES)
TOKEN_PARAM = Param("mean", choices=TOKEN_CHOICES, doc="which answer tokens make the map: their mean, the first or the last")


def rows_to_token_maps(rows, generation: Generation) -> np.ndarray:
    """``rows``: ``[K, T]`` relevance of each answer token's query position over all positions.

    Returns ``[K, *generation.grid]`` float32: the image-token columns (cell order) as maps.
    """
    cols = rows[:, generation.image_positions]
    arr = cols.detach().float().cpu().numpy() if hasattr(cols, "detach") else np.asarray(cols, dtype=np.float32)
    return arr.reshape(len(arr), *generation.grid).astype(np.float32)


def combine_tokens(per_token: np.ndarray, how: str) -> np.ndarray:
    """One map from per-answer-token maps: their mean, or the first / last token's
    (``how`` from :data:`TOKEN_CHOICES`, checked when the method was built)."""
    return TOKEN_RULES[how][1](per_token)


def token_indices(n_answer: int, how: str) -> list[int]:
    """Indices of the answer tokens a ``token`` choice (checked when the method was built) needs."""
    return TOKEN_RULES[how][0](n_answer)

#: the default labelling threshold: a patch is relevant when its min-max normalised relevance
#: reaches tau (FastRM's labels and the agreement metrics)
DEFAULT_TAU = 0.3
#: the precision FastRM's labels are normalised and binarised in (that of the stored maps)
LABEL_DTYPE = np.float32
#: the method whose maps the agreement metrics and FastRM's labels compare with by default
DEFAULT_REFERENCE = "gradient_relevancy"


def normalise_each(maps: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``[n, N]``: each map of ``[n, ...]`` min-max normalised to [0, 1], computed in ``dtype``;
    a constant map becomes all zeros."""
    flat = np.asarray(maps, dtype=dtype).reshape(len(maps), -1)
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    return np.where(span > 0, (flat - lo) / np.where(span > 0, span, 1), 0.0).astype(dtype)


def binarise_each(maps: np.ndarray, tau: float = DEFAULT_TAU, dtype=np.float64) -> np.ndarray:
    """``[n, N]`` booleans: patches whose min-max normalised relevance (:func:`normalise_each`)
    is at least ``tau``; a constant map has no positive patch."""
    flat = np.asarray(maps, dtype=dtype).reshape(len(maps), -1)
    varies = flat.max(axis=1, keepdims=True) > flat.min(axis=1, keepdims=True)
    return (normalise_each(flat, dtype) >= tau) & varies


def normalise(grid: np.ndarray) -> np.ndarray:
    """One map min-max normalised to [0, 1] (float64, same shape); a constant map becomes zeros."""
    g = np.asarray(grid)
    return normalise_each(g.reshape(1, -1)).reshape(g.shape)


def binarise(grid: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """One map's ``normalise(grid) >= tau`` (same shape); a constant map has no positive patch."""
    g = np.asarray(grid)
    return binarise_each(g.reshape(1, -1), tau).reshape(g.shape)


def entropy_each(maps: np.ndarray) -> np.ndarray:
    """``[n]``: the entropy of each map of ``[n, ...]`` as a distribution over its P patches,
    normalised to [0, 1] by ``log(P)``: ``H(p) / log(P)`` with ``p = clip(map, 0) / sum``
    (1: uniform, 0: all mass on one patch); a map with no positive value counts as uniform (1),
    one with a single patch as certain (0)."""
    p = np.clip(np.asarray(maps, dtype=np.float64).reshape(len(maps), -1), 0, None)
    if p.shape[1] < 2:
        return np.zeros(len(p))
    total = p.sum(axis=1, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    terms = q * np.log(q, out=np.zeros_like(q), where=q > 0)
    return np.where(total[:, 0] > 0, -terms.sum(axis=1) / np.log(p.shape[1]), 1.0)


def map_entropy(grid: np.ndarray) -> float:
    """:func:`entropy_each` of one map."""
    return float(entropy_each(np.asarray(grid).reshape(1, -1))[0])
