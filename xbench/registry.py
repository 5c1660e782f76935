"""Name -> plugin object tables, one per kind (methods, tasks, metrics, models, model families)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Generic, Iterator, TypeVar

from xbench.errors import DuplicateNameError, PluginDeclarationError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    origin: str  # the plugin that registered it


class Registry(Generic[T]):
    """A table of named plugin objects of one ``kind``.

    ``register`` refuses an object that is not what the table holds (a subclass of
    ``subclass_of``, or an instance of ``instance_of``) and one whose declared ``needs`` are not
    all in ``needs``, naming the plugin; and a second object under a taken name, naming both
    origins. ``get`` of an unknown name lists the choices with a did-you-mean. The name is the
    object's ``name_attr`` attribute unless given.
    """

    def __init__(
        self,
        kind: str,
        *,
        subclass_of: type | None = None,
        instance_of: type | None = None,
        needs: frozenset[str] | None = None,
        name_attr: str = "name",
    ) -> None:
        self.kind = kind
        self.subclass_of = subclass_of
        self.instance_of = instance_of
        self.needs = needs
        self.name_attr = name_attr
        self._entries: dict[str, Entry[T]] = {}
        self.origin = "<unknown>"  # set by the plugin manager while a plugin registers
        self.notes: list[str] = []  # shown with unknown-name errors (e.g. broken plugins)

    def register(self, obj: T, name: str | None = None) -> T:
        """Add ``obj`` under ``name`` (default: its ``name_attr``); returns ``obj``."""
        self._check_declaration(obj)
        name = name or getattr(obj, self.name_attr, None)
        if not name or not isinstance(name, str):
            raise PluginDeclarationError(f"{self.origin} registered {obj!r} as a {self.kind} without a name")
        if name in self._entries:
            first = self._entries[name]
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice: by {first.origin} and by {self.origin}"
            )
        self._entries[name] = Entry(name, obj, self.origin)
        return obj

    def _check_declaration(self, obj: Any) -> None:
        """Refuse an object of the wrong base class or with undeclared ``needs``, naming the plugin."""
        where = f"{self.origin} registered {getattr(obj, '__name__', None) or repr(obj)} as a {self.kind}"
        if self.subclass_of is not None and not (isinstance(obj, type) and issubclass(obj, self.subclass_of)):
            raise PluginDeclarationError(f"{where}, but it is not a subclass of {_qualname(self.subclass_of)}")
        if self.instance_of is not None and not isinstance(obj, self.instance_of):
            raise PluginDeclarationError(f"{where}, but it is not a {_qualname(self.instance_of)}")
        if self.needs is not None:
            declared = getattr(obj, "needs", frozenset())
            if isinstance(declared, str) or not all(isinstance(n, str) for n in declared):
                raise PluginDeclarationError(f"{where} with needs {declared!r}: expected a set of {sorted(self.needs)}")
            unknown = sorted(set(declared) - self.needs)
            if unknown:
                raise PluginDeclarationError(f"{where} with unknown needs {unknown}; a {self.kind} may need {sorted(self.needs)}")

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
        """Empty tables, each checking the base class (and ``needs``) of what it is given."""
        from xbench.api import METHOD_NEEDS, METRIC_NEEDS, VLM, Method, Metric, Task
        from xbench.models import ModelSpec

        return cls(
            methods=Registry("method", subclass_of=Method, needs=METHOD_NEEDS),
            tasks=Registry("task", subclass_of=Task),
            metrics=Registry("metric", subclass_of=Metric, needs=METRIC_NEEDS),
            models=Registry("model", instance_of=ModelSpec),
            model_families=Registry("model family", subclass_of=VLM, name_attr="family"),
        )


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
