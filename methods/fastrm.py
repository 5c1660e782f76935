"""FastRM (arXiv 2412.01487): a learned proxy predicting the relevancy map from last hidden states.

Gradient-free and without an extra forward: the proxy reads the last-layer hidden states
the generation already computed (``needs = {"hidden_states"}``): queries from the answer
tokens' query positions, keys from the image tokens. The map is the sigmoid of one logit
per patch; ``extras`` carry the entropy of the map normalised to a distribution,
``confidence = 1 - entropy / log(patches)`` and the proxy's decision threshold
(``decision_threshold``: a patch is relevant when its probability reaches it).

Parameters: ``proxy`` a proxy directory (from ``xbench fastrm train``); without it, the
default proxy for the model (installed or shipped, matched by model hash) with head
``head`` (default ``attention``, the paper's; ``mlp`` is the per-patch MLP).
"""

from xbench.api import DECISION_THRESHOLD, HIDDEN_STATES, Method, RelevanceMap
from xbench.errors import ParameterError
from xbench.hookspecs import hookimpl
from xbench.params import Param


def head_names() -> list[str]:
    """The FastRM heads registered (the ``head`` parameter's choices)."""
    from xbench.fastrm.heads import HEADS

    return HEADS.names()


class FastRM(Method):
    name = "fastrm"
    description = "learned proxy of gradient relevancy over last hidden states (FastRM, arXiv 2412.01487)"
    needs = frozenset({HIDDEN_STATES})

    parameters = {
        "proxy": Param(None, type=str, doc="a proxy directory from `xbench fastrm train` (default: the model's default proxy)"),
        "head": Param(None, type=str, choices=head_names, doc="the head of the default proxy (default: attention)"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self._given = self._load(self.params["proxy"]) if self.params["proxy"] else None  # bad files fail here
        self._proxy = None
        self._vlm = None

    def _load(self, path):
        from xbench.fastrm.proxy import FastRMProxy

        proxy = FastRMProxy.load(path)
        head = self.params["head"]
        if head is not None and proxy.head_name != head:
            raise ParameterError(f"method 'fastrm': proxy {str(path)!r} has a {proxy.head_name!r} head, not {head!r}")
        return proxy

    def proxy_for(self, vlm):
        """The proxy for ``vlm``: the given one or the model's default, checked against it, on its device."""
        if self._proxy is None or self._vlm is not vlm:
            from xbench.fastrm.proxy_store import DEFAULT_HEAD, find_proxy

            proxy = self._given or self._load(find_proxy(vlm, self.params["head"] or DEFAULT_HEAD))
            proxy.check_compatible(vlm, where=proxy.source)
            self._proxy, self._vlm = proxy.to(vlm.device), vlm
        return self._proxy

    def check(self, vlm):
        """The proxy (given or the model's default) must exist and fit ``vlm``, before any sample."""
        self.proxy_for(vlm)

    def explain(self, vlm, generations):
        proxy = self.proxy_for(vlm)
        out = proxy.predict(generations)
        return [
            RelevanceMap(
                out["map"][i],
                out["per_token"][i][: len(gen.answer_ids)],
                {
                    "entropy": float(out["entropy"][i]),
                    "confidence": float(out["confidence"][i]),
                    DECISION_THRESHOLD: proxy.decision_threshold,
                },
            )
            for i, gen in enumerate(generations)
        ]


@hookimpl
def xbench_register_methods(registry):
    registry.register(FastRM)
