"""FastRM proxy heads: small modules mapping last-layer hidden states to per-patch logits.

Every head takes ``patches [B, N, d]`` (the image tokens' states), ``queries [B, K, d]``
(the states at the answer tokens' query positions) and returns logits ``[B, K, N]``, one
per answer token and image patch. Heads register by name in :data:`HEADS`; the proxy
builds them from ``HEADS[name](hidden_size, n_patches, **params)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

#: head name -> head class (filled by :func:`register_head`)
HEADS: dict[str, type["Head"]] = {}


def register_head(cls: type["Head"]) -> type["Head"]:
    """Class decorator adding a head to :data:`HEADS` under ``cls.name``."""
    if cls.name in HEADS:
        raise ValueError(f"FastRM head {cls.name!r} is registered twice")
    HEADS[cls.name] = cls
    return cls


class Head(nn.Module):
    """Base class. ``defaults`` lists the constructor parameters (saved in the proxy's config)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, hidden_size: int, n_patches: int, **params: Any) -> None:
        super().__init__()
        self.hidden_size, self.n_patches = hidden_size, n_patches
        self.params = {**self.defaults, **params}

    def forward(self, patches: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@register_head
class AttentionHead(Head):
    """The paper's proxy: LayerNorm, then single-head scaled dot-product attention logits.

    ``logit[k, n] = <W_q LN(query_k), W_k LN(patch_n)> / sqrt(dim) + b``; no softmax over
    patches (each patch gets its own sigmoid probability).
    """

    name = "attention"
    description = "LayerNorm + single-head attention logits (FastRM paper)"
    defaults = {"dim": 256}

    def __init__(self, hidden_size: int, n_patches: int, **params: Any) -> None:
        super().__init__(hidden_size, n_patches, **params)
        dim = int(self.params["dim"])
        self.norm = nn.LayerNorm(hidden_size)
        self.q = nn.Linear(hidden_size, dim)
        self.k = nn.Linear(hidden_size, dim)
        self.bias = nn.Parameter(torch.zeros(()))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, patches, queries):
        q = self.q(self.norm(queries))  # [B, K, dim]
        k = self.k(self.norm(patches))  # [B, N, dim]
        return torch.einsum("bkd,bnd->bkn", q, k) * self.scale + self.bias


@register_head
class MLPHead(Head):
    """Per-patch MLP over ``[patch, answer, patch * answer]`` (LayerNormed) plus a learned
    position embedding of the patch."""

    name = "mlp"
    description = "per-patch MLP over [patch, answer, product] + learned position embedding"
    defaults = {"dim": 128}

    def __init__(self, hidden_size: int, n_patches: int, **params: Any) -> None:
        super().__init__(hidden_size, n_patches, **params)
        dim = int(self.params["dim"])
        self.norm = nn.LayerNorm(hidden_size)
        self.inp = nn.Linear(3 * hidden_size, dim)
        self.pos = nn.Parameter(torch.zeros(n_patches, dim))
        self.out = nn.Sequential(nn.GELU(), nn.Linear(dim, 1))

    def forward(self, patches, queries):
        p = self.norm(patches).unsqueeze(1)  # [B, 1, N, d]
        a = self.norm(queries).unsqueeze(2)  # [B, K, 1, d]
        p, a = torch.broadcast_tensors(p, a)
        h = self.inp(torch.cat([p, a, p * a], dim=-1)) + self.pos
        return self.out(h).squeeze(-1)  # [B, K, N]
