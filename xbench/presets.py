"""Metric presets: names ``--metrics`` accepts beside metric names.

* ``default``: what a run needs to answer "how good and how costly" quickly: every metric
  whose class keeps ``"default"`` in :attr:`xbench.api.Metric.presets` (the base class does;
  the faithfulness curves, which re-run the model 17 times per curve and sample, opt out);
* ``all``: every registered metric;
* each metric ``category`` (``agreement``, ``faithfulness``, ``localisation``...), and any
  other name a metric class lists in its ``presets``.

Membership is declared on the metric classes, never in a table here. A metric name wins over
a preset of the same name. A run without ``--metrics`` uses ``default``.
"""

from __future__ import annotations

import difflib
from typing import Sequence

from xbench.errors import UnknownNameError

ALL = "all"
DEFAULT = "default"


def presets(registry) -> dict[str, list[str]]:
    """Every preset name of the metrics in ``registry`` with its member metric names (sorted)."""
    out: dict[str, list[str]] = {ALL: registry.names()}
    for entry in registry:
        cls = entry.obj
        for name in {cls.category, *cls.presets} - {""}:
            out.setdefault(name, []).append(entry.name)
    out.setdefault(DEFAULT, [])
    return out


def resolve(names: Sequence[str] | None, registry) -> list[str]:
    """Metric names for ``names`` (metric or preset names; None: ``default``), in the order
    given, each once. An unknown name is an :class:`UnknownNameError` with a did-you-mean."""
    table = presets(registry)
    selected: dict[str, None] = {}
    for name in [DEFAULT] if names is None else names:
        if name in registry:
            selected[name] = None
        elif name in table:
            selected.update(dict.fromkeys(table[name]))
        else:
            raise UnknownNameError(_unknown(name, registry.names(), sorted(table)))
    return list(selected)


def _unknown(name: str, metrics: list[str], preset_names: list[str]) -> str:
    close = difflib.get_close_matches(name, metrics + preset_names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown metric {name!r}.{hint} Choices: {', '.join(metrics) or 'none'}; "
            f"or a preset: {', '.join(preset_names)}.")  # fmt: skip
