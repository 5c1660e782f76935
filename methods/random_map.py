"""Baseline ``random``: i.i.d. uniform [0, 1) patch values, seeded by the run seed and sample id."""

from xbench.api import Method, RelevanceMap
from xbench.hookspecs import hookimpl


class RandomMap(Method):
    name = "random"
    description = "baseline: uniform random patch relevance (seeded per sample)"

    def explain(self, vlm, generations):
        return [RelevanceMap(self.rng(g.sample_id).random(g.grid).astype("float32")) for g in generations]


@hookimpl
def xbench_register_methods(registry):
    registry.register(RandomMap)
