"""One registry per kind of thing (worlds, bugs, architectures, methods, checks).

timm-style: ``@REG.register("name", **meta)`` adds an entry; ``REG.get(name)`` returns it
or raises :class:`UnknownName` listing the valid names.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from xaudit.core.errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str | None = None, *, replace: bool = False, **meta: Any) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            if key in self._items and not replace:
                raise ValueError(f"{self.kind} {key!r} is already registered; pass replace=True to override it")
            self._items[key] = obj
            self._meta[key] = dict(meta)
            return obj

        return deco

    def add(self, name: str, obj: T, *, replace: bool = False, **meta: Any) -> T:
        return self.register(name, replace=replace, **meta)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(self.kind, name, list(self._items)) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
