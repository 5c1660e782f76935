"""Attention rollout (Abnar & Zuidema, 2020) over the language model's layers.

Per layer: A_hat = (1 - residual) * mean_heads(A) + residual * I, rows normalised to 1;
R = A_hat_L @ ... @ A_hat_1. The map of answer token k is R[query position of k, image
positions]; ``token`` picks how answer tokens combine.
"""

import torch

from xbench.api import ATTENTIONS, Method, RelevanceMap
from xbench.hookspecs import hookimpl
from xbench.maps import TOKEN_PARAM, combine_tokens, rows_to_token_maps
from xbench.params import Param


def rollout(attentions, residual: float = 0.5) -> torch.Tensor:
    """``attentions``: per-layer ``[heads, T, T]``; returns the ``[T, T]`` rollout."""
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float32, device=attentions[0].device)
    result = eye
    for layer in attentions:
        a = (1 - residual) * layer.float().mean(dim=0) + residual * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result


class Rollout(Method):
    name = "rollout"
    description = "attention rollout over the LLM layers (Abnar & Zuidema 2020)"
    needs = frozenset({ATTENTIONS})

    parameters = {
        "residual": Param(0.5, min=0.0, max=1.0, doc="weight of the identity (the residual path) in each layer's matrix"),
        "token": TOKEN_PARAM,
    }

    def explain(self, vlm, generations):
        maps = []
        for gen in generations:
            with torch.no_grad():
                out = vlm.forward(gen, output_attentions=True)
            r = rollout([a[0] for a in out.attentions], self.params["residual"])
            per_token = rows_to_token_maps(r[gen.query_positions], gen)
            maps.append(RelevanceMap(combine_tokens(per_token, self.params["token"]), per_token))
        return maps


@hookimpl
def xbench_register_methods(registry):
    registry.register(Rollout)
