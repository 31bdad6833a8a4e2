"""One shape for every registry of declared parts: policy families, dataset sources, import formats, packaged
models and CLI commands (in the manner of lm-evaluation-harness's and inspect_ai's registries).

A registry maps a name to an entry (a small declaration: a class or a frozen dataclass with ``name`` and
``about``), keeps the order entries were added in (``--help``, pickers), refuses a name twice, and answers an
unknown name with an error that lists the known ones. It reads like a dict (``name in R``, ``R[name]``,
``list(R)``), so callers do not care which registry they hold."""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from analysis.core.errors import StoplineError

T = TypeVar("T")


class UnknownName(StoplineError, KeyError):
    """A name no entry was registered under (a KeyError too, for code that catches that)."""

    def __str__(self) -> str:                 # KeyError's str() would quote the message
        return StoplineError.__str__(self)


class Registry(Generic[T]):
    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind                      # "policy family": the words of the error
        self.plural = plural or kind + "s"
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownName(f"unknown {self.kind} {str(name)[:80]!r}",
                              hint=f"{self.plural}: " + ", ".join(self._entries)) from None

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def order(self, first: list[str]) -> None:
        """Put the names in ``first`` first, in that order; the others follow in the order they were added."""
        items = sorted(self._entries.items(), key=lambda kv: first.index(kv[0]) if kv[0] in first else len(first))
        self._entries = dict(items)
