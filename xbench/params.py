"""Declared plugin parameters: the one place parameter values are converted and checked.

A plugin (method, metric, task, FastRM head, sweep executor) declares its parameters on the
class::

    parameters = {
        "token": Param("mean", choices=TOKEN_CHOICES, doc="which answer tokens make the map"),
        "residual": Param(0.5, min=0.0, max=1.0, doc="weight of the identity per layer"),
    }

and :func:`resolve` turns the keyword arguments it is built with into its ``params``, once, at
construction: unknown keys are refused with a did-you-mean listing the accepted ones; each
value is converted to the declared type (an integral float to ``int``, an ``int`` to
``float``) and checked against its choices, range and finiteness (NaN and infinities are
refused for every float, declared or not). Every refusal is a :class:`ParameterError` naming
the kind, the plugin, the key, the value and what is accepted, so code after construction
never checks a value again.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from xbench.errors import ParameterError

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", list: "a list"}


@dataclass(frozen=True)
class Param:
    """One declared parameter.

    * ``default``: the value when the key is not given;
    * ``type``: ``bool``, ``int``, ``float``, ``str`` or ``list`` (default: the default's type;
      ``None`` with a ``None`` default: any value);
    * ``choices``: the accepted values, or a function returning them (a table filled later);
    * ``min`` / ``max``: an inclusive range, exclusive with ``min_exclusive`` / ``max_exclusive``;
    * ``nullable``: ``None`` is accepted (always, when the default is ``None``);
    * ``check``: ``value -> None`` when fine, else a phrase saying what is accepted;
    * ``doc``: one line for the documentation.
    """

    default: Any
    type: type | None = None
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None
    doc: str = ""

    @property
    def value_type(self) -> type | None:
        """The declared type, or the default's when none is declared."""
        if self.type is not None or self.default is None:
            return self.type
        return type(self.default) if type(self.default) in _TYPE_NAMES else None

    def accepted(self) -> str:
        """What this parameter accepts, as a phrase (``one of [...]``, ``an integer >= 1``...)."""
        if self.choices is not None:
            text = f"one of {list(self.options())}"
        else:
            text = _TYPE_NAMES.get(self.value_type, "a value without NaN or infinities")
            text += self._range_text()
        return text + (" or null" if self.nullable or self.default is None else "")

    def options(self) -> Sequence[Any]:
        return self.choices() if callable(self.choices) else self.choices

    def _range_text(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.max_exclusive else '<='} {self.max:g}")
        return (" " + " and ".join(parts)) if parts else ""

    def convert(self, value: Any) -> tuple[Any, str | None]:
        """``(converted value, None)``, or ``(value, what is accepted)`` when it is refused."""
        if value is None:
            return (None, None) if self.nullable or self.default is None else (value, self.accepted())
        converted = _as_type(value, self.value_type)
        if converted is _REFUSED or not finite(converted):
            return value, self.accepted()
        if self.choices is not None and converted not in self.options():
            return value, self.accepted()
        if not self._in_range(converted):
            return value, self.accepted()
        problem = self.check(converted) if self.check is not None else None
        return (value, problem) if problem else (converted, None)

    def _in_range(self, value: Any) -> bool:
        if self.min is None and self.max is None:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        low_ok = self.min is None or (value > self.min if self.min_exclusive else value >= self.min)
        high_ok = self.max is None or (value < self.max if self.max_exclusive else value <= self.max)
        return low_ok and high_ok


_REFUSED = object()


def _as_type(value: Any, kind: type | None) -> Any:
    """``value`` as ``kind`` (ints as floats, integral floats as ints), or :data:`_REFUSED`."""
    if kind is None:
        return value
    if kind is bool:
        return value if isinstance(value, bool) else _REFUSED
    if isinstance(value, bool):
        return _REFUSED
    if kind is int:
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, float) and value.is_integer() else _REFUSED
    if kind is float:
        if not isinstance(value, (int, float)):
            return _REFUSED
        try:
            return float(value)
        except OverflowError:
            return _REFUSED
    if kind is list:
        return list(value) if isinstance(value, (list, tuple)) else _REFUSED
    return value if isinstance(value, kind) else _REFUSED


def finite(value: Any) -> bool:
    """False for a NaN or infinite float, also inside lists and tables."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(finite(v) for v in value)
    if isinstance(value, Mapping):
        return all(finite(v) for v in value.values())
    return True


def _did_you_mean(unknown: Sequence[str], accepted: Sequence[str]) -> str:
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
        if close:
            hints.append(f"did you mean {close[0]!r}" + (f" for {key!r}" if len(unknown) > 1 else "") + "?")
    return f" ({'; '.join(hints)})" if hints else ""


def unknown_message(what: str, unknown: Iterable[str], accepted: Iterable[str]) -> str:
    """``<what> has no parameter(s) [...]`` with a did-you-mean per key and the accepted keys."""
    unknown, accepted = sorted(unknown), sorted(accepted)
    return f"{what} has no parameter(s) {unknown}{_did_you_mean(unknown, accepted)}; it takes {', '.join(accepted) or 'none'}"


def resolve(kind: str, name: str, declared: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared parameter, ``given`` over the defaults, each value converted and checked.

    Raises :class:`ParameterError` naming ``kind`` and ``name`` for an unknown key or a value
    that is not accepted.
    """
    unknown = set(given) - set(declared)
    if unknown:
        raise ParameterError(unknown_message(f"{kind} {name!r}", unknown, declared))
    out = {}
    for key, param in declared.items():
        value = given.get(key, param.default)
        converted, problem = param.convert(value)
        if problem is not None:
            raise ParameterError(f"{kind} {name!r}: {key}={value!r} is not {problem}")
        out[key] = converted
    return out


def shared(kind: str, declared: Sequence[Mapping[str, Param]], given: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``given`` split among plugins (one ``declared`` table each): each gets the keys it declares.

    A key no plugin declares is a :class:`ParameterError` with a did-you-mean (this is how
    ``--metric-param`` reaches every metric declaring the key)."""
    keys = sorted({key for params in declared for key in params})
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise ParameterError(
            f"no selected {kind} takes parameter(s) {unknown}{_did_you_mean(unknown, keys)}; "
            f"{kind} parameters: {', '.join(keys) or 'none'}"
        )
    return [{k: v for k, v in given.items() if k in params} for params in declared]
