"""Name -> plugin object tables, one per kind (methods, tasks, metrics, models, model families)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Generic, Iterator, TypeVar

from xbench.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    origin: str  # the plugin that registered it


class Registry(Generic[T]):
    """A table of named plugin objects of one ``kind``.

    ``register`` refuses a second object under a taken name, naming both origins;
    ``get`` of an unknown name lists the choices with a did-you-mean.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self.origin = "<unknown>"  # set by the plugin manager while a plugin registers
        self.notes: list[str] = []  # shown with unknown-name errors (e.g. broken plugins)

    def register(self, obj: T, name: str | None = None) -> T:
        """Add ``obj`` under ``name`` (default: ``obj.name``); returns ``obj``."""
        name = name or getattr(obj, "name", None)
        if not name:
            raise ValueError(f"cannot register {obj!r} as a {self.kind}: it has no name")
        if name in self._entries:
            first = self._entries[name]
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice: by {first.origin} and by {self.origin}"
            )
        self._entries[name] = Entry(name, obj, self.origin)
        return obj

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        choices = sorted(self._entries)
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        notes = "".join(f" ({n})" for n in self.notes)
        return f"unknown {self.kind} {name!r}.{hint} Choices: {', '.join(choices) or 'none'}.{notes}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class Registries:
    """Every table a run looks names up in."""

    methods: Registry[Any]
    tasks: Registry[Any]
    metrics: Registry[Any]
    models: Registry[Any]
    model_families: Registry[Any]

    @classmethod
    def empty(cls) -> "Registries":
        return cls(
            methods=Registry("method"),
            tasks=Registry("task"),
            metrics=Registry("metric"),
            models=Registry("model"),
            model_families=Registry("model family"),
        )
