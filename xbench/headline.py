"""The headline leaderboard: about ten columns per task x model that answer "how good, how
costly" at a glance (``xbench leaderboard``'s default; ``--columns all`` gives every column).

Each headline column is one table column chosen from what the table's runs recorded:

* the answer metric: ``f1`` where the task reports one (POPE), else ``accuracy``, else the
  task's first answer metric;
* agreement with the reference method: ``agreement_f1`` (both maps cut at the common tau) and
  ``agreement_auroc``; where the table has it, ``agreement_f1_operating`` beside them (F1 at the
  method's own calibrated decision threshold, e.g. FastRM's, as ``xbench fastrm evaluate`` gives it);
* faithfulness as the gain over a random patch order: ``deletion_gain`` (random minus method:
  the answer falls faster when the method's top patches go first) and ``insertion_gain``
  (method minus random);
* localisation beside its control: the first of :data:`LOCALISATION` the table has, and
  ``name@control`` (the same metric on the map for the re-randomised model);
* the sanity score ``sanity_spearman`` (map against the control map; values above the
  metric's ``flag_above`` are flagged);
* cost: ``explain_ms_p50`` (header ``ms p50``) and explain-phase memory, ``explain_peak_gpu_mib`` where a GPU
  measured it, else the explain phase's resident-memory rise (:data:`RSS_MEMORY`).

A headline column the table's runs do not have is still shown, as em-dashes (except the
optional ``agreement_f1_operating``, shown only where some run has it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from xbench.columns import control_column, parse_column

ANSWER_PREFERENCE = ("f1", "accuracy")
LOCALISATION = ("energy_in_mask", "pointing_game", "top_region_iou")
GPU_MEMORY = "explain_peak_gpu_mib"
RSS_MEMORY = ("explain_rss_peak_mib_max", "explain_rss_peak_mib")
#: derived faithfulness columns: name -> (method column, random-order column, sign of method - random)
GAINS = {"deletion_gain": ("deletion_auc", "deletion_auc_random", -1.0),
         "insertion_gain": ("insertion_auc", "insertion_auc_random", 1.0)}


@dataclass(frozen=True)
class Headline:
    """One headline column: its short ``header`` and how it picks the table column it shows
    (``pick(columns, present)``: ``columns`` the metadata of every column, ``present`` the columns
    with a value in this table; it returns a column name, possibly one the table lacks)."""

    header: str
    pick: Callable[[dict[str, dict], set[str]], str]
    optional: bool = False  # shown only when the table has the column


def _answer(columns: dict[str, dict], present: set[str]) -> str:
    answers = [c for c, info in columns.items() if info.get("category") == "answer" and parse_column(c).group is None]
    for name in ANSWER_PREFERENCE:
        if name in answers and name in present:
            return name
    return next((c for c in answers if c in present), "accuracy")


def _localisation(columns: dict[str, dict], present: set[str]) -> str:
    return next((c for c in LOCALISATION if c in present), LOCALISATION[0])


def _memory(columns: dict[str, dict], present: set[str]) -> str:
    if GPU_MEMORY in present:
        return GPU_MEMORY
    return next((c for c in RSS_MEMORY if c in present), GPU_MEMORY)


def _fixed(name: str) -> Callable[[dict[str, dict], set[str]], str]:
    return lambda columns, present: name


HEADLINE = (
    Headline("answer", _answer),
    Headline("agr F1", _fixed("agreement_f1")),
    Headline("F1 op", _fixed("agreement_f1_operating"), optional=True),
    Headline("agr AUROC", _fixed("agreement_auroc")),
    Headline("del gain", _fixed("deletion_gain")),
    Headline("ins gain", _fixed("insertion_gain")),
    Headline("loc", _localisation),
    Headline("loc@ctrl", lambda columns, present: control_column(_localisation(columns, present))),
    Headline("sanity", _fixed("sanity_spearman")),
    Headline("ms p50", _fixed("explain_ms_p50")),
    Headline("MiB", _memory),
)


def headline_columns(columns: dict[str, dict], present: set[str]) -> list[tuple[str, str]]:
    """``[(header, column)]`` of the headline for a table whose valued columns are ``present``;
    the answer column is headed by its own name."""
    picked = [(h.header, h.pick(columns, present)) for h in HEADLINE]
    picked = [(header, column) for h, (header, column) in zip(HEADLINE, picked) if not h.optional or column in present]
    return [(column if header == "answer" else header, column) for header, column in picked]


def gain(values: dict[str, float | None], name: str) -> float | None:
    """A derived faithfulness gain from a run's values (None when either part is missing)."""
    method, random, sign = GAINS[name]
    a, b = values.get(method), values.get(random)
    return None if a is None or b is None else sign * (a - b)
