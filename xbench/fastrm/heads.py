"""FastRM proxy heads: small modules mapping last-layer hidden states to per-patch logits.

Every head takes ``patches [B, N, d]`` (the image tokens' states), ``queries [B, K, d]``
(the states at the answer tokens' query positions) and returns logits ``[B, K, N]``, one
per answer token and image patch. A head computes raw scores ``s`` (:meth:`Head.scores`);
the shared :meth:`Head.forward` turns them into logits ``a * norm(s) + b`` with learned
scalars ``a, b`` and ``norm`` one of :data:`NORMALISATIONS` over the patches of each map:

* ``none``: ``s`` itself;
* ``max``: ``s - max(s)`` (the labels are min-max normalised per map, so "relevant" means
  "close to this map's maximum": the best patch always sits at logit ``b``);
* ``minmax``: ``(s - min(s)) / (max(s) - min(s))``, the labels' own normalisation: a
  reference patch is positive when its min-max normalised relevancy reaches tau, so with
  ``a * minmax(s) + b`` the proxy thresholds its scores the same way (attention default);
* ``softmax``: ``log_softmax(s)`` (the log attention weights of a single-head attention).

Heads register by name in :data:`HEADS` (an :class:`xbench.registry.Registry`); the proxy
builds them from ``HEADS.get(name)(hidden_size, n_patches, **params)``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xbench.params import Param, resolve
from xbench.registry import Registry

#: head name -> head class; a head class registers with ``@HEADS.register``
HEADS: Registry[type["Head"]] = Registry("FastRM head")
HEADS.origin = __name__


def _minmax(s: torch.Tensor) -> torch.Tensor:
    """Min-max over the last axis; a map whose scores span less than 1e-6 (float32 noise) counts
    as constant and maps to (near) zeros, as a constant reference map gives no positives."""
    lo, hi = torch.aminmax(s, dim=-1, keepdim=True)
    return (s - lo) / (hi - lo).clamp_min(1e-6)


#: per-map normalisation of raw scores [..., N] over the patches
NORMALISATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda s: s,
    "max": lambda s: s - s.amax(dim=-1, keepdim=True),
    "minmax": _minmax,
    "softmax": lambda s: torch.log_softmax(s, dim=-1),
}


#: the ``normalise`` parameter every head takes (see :data:`NORMALISATIONS`)
NORMALISE = Param("max", choices=tuple(NORMALISATIONS), doc="per-map normalisation of the raw scores")


class Head(nn.Module):
    """Base class. :attr:`hyperparameters` declares the constructor parameters (saved in the
    proxy's config; not ``parameters``, which is :class:`torch.nn.Module`'s); every head takes
    ``normalise``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hyperparameters: ClassVar[dict[str, Param]] = {"normalise": NORMALISE}
    aux_weight: ClassVar[float] = 1.0  # default weight of the training's map-matching term

    def __init__(self, hidden_size: int, n_patches: int, **params: Any) -> None:
        super().__init__()
        self.hidden_size, self.n_patches = hidden_size, n_patches
        self.params = self.resolve_params(params)
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))

    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter of this head with ``params`` over its defaults, checked by
        :func:`xbench.params.resolve` (a :class:`~xbench.errors.ParameterError`)."""
        return resolve("head", cls.name, cls.hyperparameters, params)

    def scores(self, patches: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Raw scores ``[B, K, N]``."""
        raise NotImplementedError

    def forward(self, patches: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return self.logits(self.scores(patches, queries))

    def logits(self, s: torch.Tensor) -> torch.Tensor:
        return self.scale * NORMALISATIONS[self.params["normalise"]](s) + self.bias

    def infer(self, patches: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for prediction without gradients; a head may compute it in fewer
        operations (the same numbers up to float rounding; a test holds every head to that)."""
        return self(patches, queries)


@HEADS.register
class AttentionHead(Head):
    """The paper's proxy: LayerNorm, then single-head scaled dot-product attention.

    ``s[k, n] = <W_q LN(query_k), W_k LN(patch_n) + p_n> / sqrt(dim)`` where ``p_n`` is a
    learned position embedding of patch ``n`` (``pos=True``, default; the language model
    sees image tokens through rotary positions the states do not carry). Scores are min-max
    normalised per map by default (``normalise="minmax"``, the labels' own normalisation).
    """

    name = "attention"
    description = "LayerNorm + single-head attention (FastRM paper)"
    hyperparameters = {
        "normalise": replace(NORMALISE, default="minmax"),
        "dim": Param(256, min=1, doc="width of the query and key projections"),
        "pos": Param(True, doc="add a learned position embedding to each patch's key"),
    }

    def __init__(self, hidden_size: int, n_patches: int, **params: Any) -> None:
        super().__init__(hidden_size, n_patches, **params)
        dim = self.params["dim"]
        self.norm = nn.LayerNorm(hidden_size)
        self.q = nn.Linear(hidden_size, dim)
        self.k = nn.Linear(hidden_size, dim)
        self.pos = nn.Parameter(torch.zeros(n_patches, dim)) if self.params["pos"] else None
        self.temperature = 1.0 / math.sqrt(dim)

    def scores(self, patches, queries):
        # <q, W_k x_n + b_k + p_n> computed as <W_k^T q, x_n> + <q, b_k + p_n>: the query is
        # moved into state space instead of projecting every patch (same numbers, N x fewer FLOPs)
        q = F.linear(self.norm(queries), self.q.weight, self.q.bias)  # [B, K, dim]
        s = (q @ self.k.weight) @ self.norm(patches).transpose(1, 2)  # [B, K, N]
        key_bias = self.k.bias if self.pos is None else self.k.bias + self.pos  # [dim] or [N, dim]
        s = s + (q @ key_bias.T if key_bias.dim() == 2 else (q @ key_bias).unsqueeze(-1))
        return s * self.temperature

    def infer(self, patches, queries):
        # The same scores folded into one product per side. With LN(x) = x' * g + b (x' the
        # plain normalised state), q = W_q LN(a) + b_q and r_n = W_k b + b_k + p_n:
        #   s_n = t <q, W_k (x'_n * g) + r_n> = <LN(a) U + c, x'_n> + (LN(a) V + e)_n
        # with U = t W_q^T W_k diag(g), c = t b_q^T W_k diag(g), V = t W_q^T R^T, e = t R b_q:
        # one linear map of the query gives [u | v], then one batched product with the patches.
        weight, bias = self._folded()
        d = self.hidden_size
        uv = F.linear(self.norm(queries), weight, bias)  # [B, K, d + N] (N = 1 without positions)
        plain = F.layer_norm(patches, (d,), eps=self.norm.eps)
        s = torch.baddbmm(uv[..., d:], uv[..., :d], plain.transpose(1, 2))
        return self.logits(s)

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight [d + N, d], bias [d + N])`` of :meth:`infer`, recomputed when a parameter changes."""
        params = (self.norm.weight, self.norm.bias, self.q.weight, self.q.bias, self.k.weight, self.k.bias, self.pos)
        key = tuple((p.data_ptr(), p._version) for p in params if p is not None)
        if getattr(self, "_folded_key", None) != key:
            with torch.no_grad():
                t = self.temperature
                wk_g = self.k.weight * self.norm.weight  # W_k diag(g)  [dim, d]
                r = self.k.weight @ self.norm.bias + self.k.bias  # [dim]
                r = (r + self.pos) if self.pos is not None else r.unsqueeze(0)  # [N or 1, dim]
                weight = torch.cat([t * wk_g.T @ self.q.weight, t * r @ self.q.weight])  # [d + N, d]
                bias = torch.cat([t * self.q.bias @ wk_g, t * r @ self.q.bias])
            self._folded_cache, self._folded_key = (weight, bias), key
        return self._folded_cache


@HEADS.register
class MLPHead(Head):
    """Per-patch MLP over ``[patch, answer, patch * answer]`` (LayerNormed) plus a learned
    position embedding of the patch."""

    name = "mlp"
    description = "per-patch MLP over [patch, answer, product] + learned position embedding"
    hyperparameters = {**Head.hyperparameters, "dim": Param(128, min=1, doc="width of the hidden layer")}
    aux_weight = 3.0

    def __init__(self, hidden_size: int, n_patches: int, **params: Any) -> None:
        super().__init__(hidden_size, n_patches, **params)
        dim = self.params["dim"]
        self.norm = nn.LayerNorm(hidden_size)
        self.inp = nn.Linear(3 * hidden_size, dim)
        self.pos = nn.Parameter(torch.zeros(n_patches, dim))
        self.out = nn.Linear(dim, 1)

    def scores(self, patches, queries):
        # W [p, a, p * a] = (W_p + W_pa * a) p + W_a a: one [dim, d] matrix per answer token
        p = self.norm(patches)  # [B, N, d]
        a = self.norm(queries)  # [B, K, d]
        w_p, w_a, w_pa = self.inp.weight.split(self.hidden_size, dim=1)
        m = w_p + w_pa * a.unsqueeze(-2)  # [B, K, dim, d]
        h = torch.matmul(p.unsqueeze(1), m.transpose(-1, -2))  # [B, K, N, dim]
        h = h + (F.linear(a, w_a, self.inp.bias).unsqueeze(2) + self.pos)
        return F.linear(F.gelu(h), self.out.weight, self.out.bias).squeeze(-1)  # [B, K, N]
