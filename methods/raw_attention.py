"""Raw attention: the last language-model layer's attention, heads averaged.

The map of answer token k is mean_heads(A_L)[query position of k, image positions].
"""

import torch

from xbench.api import ATTENTIONS, Method, RelevanceMap
from xbench.errors import ParameterError
from xbench.hookspecs import hookimpl
from xbench.maps import TOKEN_PARAM, combine_tokens, rows_to_token_maps
from xbench.params import Param


class RawAttention(Method):
    name = "raw_attention"
    description = "last LLM layer's attention from the answer to the image, heads averaged"
    needs = frozenset({ATTENTIONS})

    parameters = {
        "layer": Param(-1, doc="the language-model layer whose attention is read (negative: from the top)"),
        "token": TOKEN_PARAM,
    }

    def check(self, vlm):
        """``layer`` (an integer, checked at construction) must index one of the model's language-model layers."""
        layer, n = self.params["layer"], vlm.num_layers
        if not -n <= layer < n:
            raise ParameterError(
                f"method {self.name!r}: layer={layer!r} is not a layer of model {vlm.name!r}, "
                f"which has {n} language-model layers (use {-n}..{n - 1})"
            )

    def explain(self, vlm, generations):
        maps = []
        for gen in generations:
            with torch.no_grad():
                out = vlm.forward(gen, output_attentions=True)
            att = out.attentions[self.params["layer"]][0].float().mean(dim=0)
            per_token = rows_to_token_maps(att[gen.query_positions], gen)
            maps.append(RelevanceMap(combine_tokens(per_token, self.params["token"]), per_token))
        return maps


@hookimpl
def xbench_register_methods(registry):
    registry.register(RawAttention)
