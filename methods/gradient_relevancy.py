"""Gradient-weighted attention relevancy (Chefer et al., ICCV 2021), as ported to LLaVA by lvlm-interpret.

For answer token k, with logit y_k taken at its query position q_k, and every language-model
self-attention layer l with attention A_l ``[heads, T, T]``::

    Abar_l = mean_heads((dy_k/dA_l * A_l) clamped at 0)
    R = I;  R <- R + Abar_l @ R   for l = 1..L        (so R = (I + Abar_L) ... (I + Abar_1))
    map_k = R[q_k, image positions]  on the patch grid

Only row q_k of R is needed, so it is computed as a row vector from the top layer down
(``r <- r + r @ Abar_l``, l = L..1): the same numbers as the full product at a fraction of the cost.

Lean by design: one teacher-forced forward over prompt + answer (cut after the last token
explained: causal attention makes later tokens irrelevant), gradients with respect to the
attention maps only (parameters stay frozen, no parameter ``.grad`` is ever made), one
``torch.autograd.grad`` per explained answer token with the graph retained until the last.
In ``scope="llm"`` the graph starts at the image features (``vlm.image_features_as_leaf()``
makes the projector's output a leaf), so the vision tower runs without autograd bookkeeping.

``scope="all"`` continues the propagation into the vision tower, up to the layer whose
hidden state the language model reads (``vlm.vision_layers_read()``; later ViT layers get no
gradient), as lvlm-interpret's "all" mode does. Here the answer's row over the image tokens is
carried on through the ViT layers the same way: with ``v`` zero but at the vision tokens of the
image tokens (``vlm.vision_token_positions``; for LLaVA's "default" feature selection image
token i is ViT token i + 1, CLS being dropped), ``v[those] = map_k``, and the vision layers
f..1, ``v <- v + v @ Abar_l``; the map is ``v[those]``. This is the answer row of the chained
product R_llm * R_vit; lvlm-interpret instead seeds the ViT rollout with the image-image block
of R_llm and reads the CLS row, which does not depend on the answer token's row.

Parameters: ``token`` (mean | first | last: which answer tokens make the map; first / last
compute only that token), ``scope`` (llm | all). ``per_token`` holds the maps of the tokens
computed (all answer tokens for ``token=mean``).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from xbench.api import ATTENTIONS, GRADIENTS, Generation, Method, RelevanceMap
from xbench.errors import ModelCapabilityError, ParameterError
from xbench.hookspecs import hookimpl
from xbench.maps import TOKEN_PARAM, combine_tokens, token_indices
from xbench.params import Param

SCOPES = ("llm", "all")


def _head_mean_cam(attention: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """mean over heads of (grad * A) clamped at 0, float32 ``[T, T]``."""
    return (grad[0].float() * attention[0].detach().float()).clamp_(min=0).mean(dim=0)


def _propagate(row: torch.Tensor, attentions: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``row @ (I + Abar_L) ... (I + Abar_1)`` for layers given first to last."""
    for attention, grad in zip(reversed(attentions), reversed(grads)):
        row = row + row @ _head_mean_cam(attention, grad)
    return row


def _vision_seed(image_row: torch.Tensor, members: torch.Tensor, n_vision: int) -> torch.Tensor:
    """A row over the (crop-major) vision tokens, zero but at the tokens each image token is made of
    (``members [N, k]``, -1 padding), which carry that image token's relevance."""
    row = image_row.new_zeros(n_vision + 1)  # the last slot absorbs padding
    row[members.where(members >= 0, n_vision).reshape(-1)] = image_row.repeat_interleave(members.shape[1])
    return row[:n_vision]


def _vision_read(row: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Each image token's relevance: the mean over the vision tokens it is made of."""
    valid = members >= 0
    picked = row[members.clamp(min=0)] * valid
    return picked.sum(dim=1) / valid.sum(dim=1)


def _propagate_crops(row: torch.Tensor, attentions, grads) -> torch.Tensor:
    """:func:`_propagate` within each crop: attentions ``[C, heads, n, n]``, row over ``C * n`` tokens."""
    crops, n = attentions[0].shape[0], attentions[0].shape[-1]
    rows = row.reshape(crops, n)
    for attention, grad in zip(reversed(attentions), reversed(grads)):
        cam = (grad.float() * attention.detach().float()).clamp_(min=0).mean(dim=1)  # [C, n, n]
        rows = rows + torch.bmm(rows[:, None, :], cam)[:, 0]
    return rows.reshape(-1)


def _members(positions: list[list[int]], device) -> torch.Tensor:
    """``[N, k]`` long: each image token's vision tokens, right-padded with -1."""
    k = max(len(p) for p in positions)
    return torch.tensor([p + [-1] * (k - len(p)) for p in positions], device=device)


def answer_relevancy(vlm, generation: Generation, tokens: Sequence[int] | None = None, scope: str = "llm") -> np.ndarray:
    """Relevancy maps ``[len(tokens), *grid]`` (float32) of answer tokens ``tokens`` (default: all);
    ``scope`` one of :data:`SCOPES`."""
    tokens = list(range(len(generation.answer_ids))) if tokens is None else list(tokens)
    last = max(tokens)
    gen = replace(generation, answer_ids=generation.answer_ids[: last + 1])
    image_positions = torch.tensor(gen.image_positions, device=vlm.device)
    with torch.enable_grad():
        if scope == "all":
            ctx, pixel_values = contextlib.nullcontext(), gen.pixel_values.detach().requires_grad_(True)
        else:
            ctx, pixel_values = vlm.image_features_as_leaf(), None
        with ctx:
            out = vlm.forward(gen, output_attentions=True, pixel_values=pixel_values, logits_to_keep=last + 2)
        attentions = list(out.attentions)
        vision = []
        if scope == "all":
            vision = list(out.vision_attentions[: vlm.vision_layers_read()])
            members = _members(vlm.vision_token_positions(gen), vlm.device)
        logits = out.logits[0]  # row k: the logits at query position of answer token k
        del out
        n_llm = len(attentions)
        maps = []
        for i, k in enumerate(tokens):
            target = logits[k, gen.answer_ids[k]]
            grads = torch.autograd.grad(target, attentions + vision, retain_graph=i < len(tokens) - 1)
            row = torch.zeros(attentions[0].shape[-1], dtype=torch.float32, device=vlm.device)
            row[gen.query_positions[k]] = 1.0
            image_row = _propagate(row, attentions, grads[:n_llm])[image_positions]
            if vision:
                n_vision = vision[0].shape[0] * vision[0].shape[-1]
                row = _vision_seed(image_row, members, n_vision)
                image_row = _vision_read(_propagate_crops(row, vision, grads[n_llm:]), members)
            del grads
            maps.append(image_row.reshape(gen.grid).cpu().numpy())
    return np.stack(maps).astype(np.float32)


class GradientRelevancy(Method):
    name = "gradient_relevancy"
    description = "gradient-weighted attention relevancy over the LLM (Chefer et al. 2021; lvlm-interpret)"
    needs = frozenset({ATTENTIONS, GRADIENTS})
    parameters = {
        "token": TOKEN_PARAM,
        "scope": Param("llm", choices=SCOPES, doc="llm: the language model's layers; all: on through the vision tower"),
    }

    def check(self, vlm):
        """``scope='all'`` needs image features that follow one path into a vision tower."""
        if self.params["scope"] == "all":
            try:
                vlm.vision_layers_read()
            except ModelCapabilityError as exc:
                raise ParameterError(f"{self.name}: scope='all' cannot be followed on this model: {exc}") from None

    def explain(self, vlm, generations):
        maps = []
        for gen in generations:
            tokens = token_indices(len(gen.answer_ids), self.params["token"])
            per_token = answer_relevancy(vlm, gen, tokens, self.params["scope"])
            maps.append(RelevanceMap(combine_tokens(per_token, self.params["token"]), per_token))
        return maps


@hookimpl
def xbench_register_methods(registry):
    registry.register(GradientRelevancy)
