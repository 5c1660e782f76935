"""FastRM proxy heads: small modules mapping last-layer hidden states to per-patch logits.

Every head takes ``patches [B, N, d]`` (the image tokens' states), ``queries [B, K, d]``
(the states at the answer tokens' query positions) and optionally ``patch_mask [B, N]`` (True
for real image tokens when samples with fewer tokens are zero-padded to the longest), and
returns logits ``[B, K, N]``, one per answer token and image patch (0 at padded patches). A head computes raw scores ``s`` (:meth:`Head.scores`);
the shared :meth:`Head.forward` turns them into logits ``a * norm(s) + b`` with learned
scalars ``a, b`` and ``norm`` one of :data:`NORMALISATIONS` over the patches of each map:

* ``none``: ``s`` itself;
* ``max``: ``s - max(s)`` (the labels are min-max normalised per map, so "relevant" means
  "close to this map's maximum": the best patch always sits at logit ``b``);
* ``minmax``: ``(s - min(s)) / (max(s) - min(s))``, the labels' own normalisation: a
  reference patch is positive when its min-max normalised relevancy reaches tau, so with
  ``a * minmax(s) + b`` the proxy thresholds its scores the same way (attention default);
* ``softmax``: ``log_softmax(s)`` (the log attention weights of a single-head attention).

With a mask, each normalisation runs over the sample's real patches only.

Grids per image: a head without position embeddings (``attention`` with ``pos=False``) reads
any number and arrangement of image tokens, so it trains and predicts on samples whose grids
differ. A head with learned position embeddings (``attention`` with ``pos=True``, ``mlp``) has
one embedding per token of the layout it was built for (``n_patches``): another count, or
padded samples, is a :class:`~xbench.errors.ParameterError` naming the counts (no
interpolation: the embeddings are of token indices, and token index ``n`` of another layout is
not the same place in the image).

Heads register by name in :data:`HEADS` (an :class:`xbench.registry.Registry`); the proxy
builds them from ``HEADS.get(name)(hidden_size, n_patches, **params)`` (``n_patches`` None:
the layout varies, which only position-free heads accept).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xbench.errors import ParameterError
from xbench.params import Param, resolve
from xbench.registry import Registry

#: head name -> head class; a head class registers with ``@HEADS.register``
HEADS: Registry[type["Head"]] = Registry("FastRM head")
HEADS.origin = __name__


def _minmax(s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max over the last axis; a map whose scores span less than 1e-6 (float32 noise) counts
    as constant and maps to (near) zeros, as a constant reference map gives no positives."""
    if mask is None:
        lo, hi = torch.aminmax(s, dim=-1, keepdim=True)
    else:
        lo = s.masked_fill(~mask, float("inf")).amin(dim=-1, keepdim=True)
        hi = s.masked_fill(~mask, float("-inf")).amax(dim=-1, keepdim=True)
    return (s - lo) / (hi - lo).clamp_min(1e-6)


def _max(s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return s - (s if mask is None else s.masked_fill(~mask, float("-inf"))).amax(dim=-1, keepdim=True)


def _log_softmax(s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return torch.log_softmax(s if mask is None else s.masked_fill(~mask, float("-inf")), dim=-1)


#: per-map normalisation of raw scores [..., N] over the patches; ``mask`` (broadcastable to the
#: scores, True at real patches) restricts it to a sample's real patches
NORMALISATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "none": lambda s, mask=None: s,
    "max": _max,
    "minmax": _minmax,
    "softmax": _log_softmax,
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

    def __init__(self, hidden_size: int, n_patches: int | None, **params: Any) -> None:
        super().__init__()
        self.hidden_size, self.n_patches = hidden_size, n_patches
        self.params = self.resolve_params(params)
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def positional(self) -> bool:
        """Whether the head learns an embedding per image-token index (then it reads only
        layouts of ``n_patches`` tokens)."""
        return False

    def _needs_count(self) -> int:
        """``n_patches``, which a positional head cannot do without (ParameterError)."""
        if self.n_patches is None:
            raise ParameterError(
                f"FastRM {self.name!r} head learns a position embedding per image token, so it needs one "
                "token count, but the samples' grids differ; use the attention head with pos=false "
                "(--head attention --head-param pos=false), which reads any layout"
            )
        return int(self.n_patches)

    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter of this head with ``params`` over its defaults, checked by
        :func:`xbench.params.resolve` (a :class:`~xbench.errors.ParameterError`)."""
        return resolve("head", cls.name, cls.hyperparameters, params)

    def check_layout(self, patches: torch.Tensor, patch_mask: torch.Tensor | None) -> None:
        """A positional head refuses another token count than its own, or padded samples."""
        if not self.positional:
            return
        counts = {patches.shape[1]} if patch_mask is None else {int(c) for c in patch_mask.sum(dim=1)}
        if counts != {self.n_patches}:
            raise ParameterError(
                f"FastRM {self.name!r} head has learned position embeddings for {self.n_patches} image tokens; "
                f"these samples have {sorted(counts)}. Train a proxy on this layout, or use the attention head "
                "with pos=false, which reads any number of image tokens"
            )

    def scores(self, patches: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Raw scores ``[B, K, N]``."""
        raise NotImplementedError

    def forward(self, patches: torch.Tensor, queries: torch.Tensor, patch_mask: torch.Tensor | None = None):
        self.check_layout(patches, patch_mask)
        return self.logits(self.scores(patches, queries), patch_mask)

    def logits(self, s: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        if patch_mask is None:
            return self.scale * NORMALISATIONS[self.params["normalise"]](s) + self.bias
        mask = patch_mask[:, None, :]
        out = self.scale * NORMALISATIONS[self.params["normalise"]](s, mask) + self.bias
        return out.masked_fill(~mask, 0.0)

    def infer(self, patches: torch.Tensor, queries: torch.Tensor, patch_mask: torch.Tensor | None = None):
        """:meth:`forward` for prediction without gradients; a head may compute it in fewer
        operations (the same numbers up to float rounding; a test holds every head to that)."""
        return self(patches, queries, patch_mask)


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

    def __init__(self, hidden_size: int, n_patches: int | None, **params: Any) -> None:
        super().__init__(hidden_size, n_patches, **params)
        dim = self.params["dim"]
        self.norm = nn.LayerNorm(hidden_size)
        self.q = nn.Linear(hidden_size, dim)
        self.k = nn.Linear(hidden_size, dim)
        self.pos = nn.Parameter(torch.zeros(self._needs_count(), dim)) if self.params["pos"] else None
        self.temperature = 1.0 / math.sqrt(dim)

    @property
    def positional(self) -> bool:
        return self.pos is not None

    def scores(self, patches, queries):
        # <q, W_k x_n + b_k + p_n> computed as <W_k^T q, x_n> + <q, b_k + p_n>: the query is
        # moved into state space instead of projecting every patch (same numbers, N x fewer FLOPs)
        q = F.linear(self.norm(queries), self.q.weight, self.q.bias)  # [B, K, dim]
        s = (q @ self.k.weight) @ self.norm(patches).transpose(1, 2)  # [B, K, N]
        key_bias = self.k.bias if self.pos is None else self.k.bias + self.pos  # [dim] or [N, dim]
        s = s + (q @ key_bias.T if key_bias.dim() == 2 else (q @ key_bias).unsqueeze(-1))
        return s * self.temperature

    def infer(self, patches, queries, patch_mask=None):
        # The same scores folded into one product per side. With LN(x) = x' * g + b (x' the
        # plain normalised state), q = W_q LN(a) + b_q and r_n = W_k b + b_k + p_n:
        #   s_n = t <q, W_k (x'_n * g) + r_n> = <LN(a) U + c, x'_n> + (LN(a) V + e)_n
        # with U = t W_q^T W_k diag(g), c = t b_q^T W_k diag(g), V = t W_q^T R^T, e = t R b_q:
        # one linear map of the query gives [u | v], then one batched product with the patches.
        weight, bias = self._folded()
        d = self.hidden_size
        uv = F.linear(self.norm(queries), weight, bias)  # [B, K, d + N] (N = 1 without positions)
        plain = F.layer_norm(patches, (d,), eps=self.norm.eps)
        self.check_layout(patches, patch_mask)
        s = torch.baddbmm(uv[..., d:], uv[..., :d], plain.transpose(1, 2))
        return self.logits(s, patch_mask)

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

    def __init__(self, hidden_size: int, n_patches: int | None, **params: Any) -> None:
        super().__init__(hidden_size, n_patches, **params)
        dim = self.params["dim"]
        self.norm = nn.LayerNorm(hidden_size)
        self.inp = nn.Linear(3 * hidden_size, dim)
        self.pos = nn.Parameter(torch.zeros(self._needs_count(), dim))
        self.out = nn.Linear(dim, 1)

    @property
    def positional(self) -> bool:
        return True

    def scores(self, patches, queries):
        # W [p, a, p * a] = (W_p + W_pa * a) p + W_a a: one [dim, d] matrix per answer token
        p = self.norm(patches)  # [B, N, d]
        a = self.norm(queries)  # [B, K, d]
        w_p, w_a, w_pa = self.inp.weight.split(self.hidden_size, dim=1)
        m = w_p + w_pa * a.unsqueeze(-2)  # [B, K, dim, d]
        h = torch.matmul(p.unsqueeze(1), m.transpose(-1, -2))  # [B, K, N, dim]
        h = h + (F.linear(a, w_a, self.inp.bias).unsqueeze(2) + self.pos)
        return F.linear(F.gelu(h), self.out.weight, self.out.bias).squeeze(-1)  # [B, K, N]
