"""How summary and leaderboard columns are named: one syntax per meaning.

* ``name``: a metric (or answer metric) as its plugin names it;
* ``name[group]``: an answer metric averaged over the samples whose breakdown value
  (:attr:`xbench.api.Task.breakdown_key`) is ``group`` (e.g. ``accuracy[yes/no colour]``);
* ``name@control``: a map metric computed on the control map (``--control``) instead of the
  method's own map.

Every producer and reader of column names goes through these functions.
"""

from __future__ import annotations

from typing import NamedTuple

CONTROL_SUFFIX = "@control"


class Column(NamedTuple):
    """A parsed column name: its ``base`` metric, breakdown ``group`` (or None), and ``control``."""

    base: str
    group: str | None = None
    control: bool = False


def group_column(name: str, group: object) -> str:
    """The column of answer metric ``name`` over the samples of breakdown value ``group``."""
    return f"{name}[{group}]"


def control_column(name: str) -> str:
    """The column of map metric ``name`` computed on the control map."""
    return name + CONTROL_SUFFIX


def parse_column(column: str) -> Column:
    """Split a column name into :class:`Column` (the inverse of the two functions above)."""
    control = column.endswith(CONTROL_SUFFIX)
    if control:
        column = column[: -len(CONTROL_SUFFIX)]
    base, bracket, rest = column.partition("[")
    group = rest[:-1] if bracket and rest.endswith("]") else None
    return Column(base if group is not None else column, group, control)
