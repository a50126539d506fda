"""A small generic registry, shared by strategies, apps and CLI plugins.

Names are short kebab-case words a user types (``few-shot``, ``news-riddle``). Entries come from
two places that behave the same: the ``@registry.register("name")`` decorator, and Python entry
points in the registry's group (``[project.entry-points."llmapps.strategies"]``), which are
imported lazily on first lookup. Registering two different objects under one name is an error; an
unknown name gets "did you mean" and the full list.

To add a strategy or an app from your own package, declare an entry point in its group; see
CONTRIBUTING.md for the checklists.
"""

from __future__ import annotations

import difflib
import importlib
import re
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from llmapps.errors import ConfigError, UnknownComponentError

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def _import(target: str) -> object:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj: object = module
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Maps kebab-case names to objects of one kind, loaded lazily."""

    def __init__(
        self, kind: str, group: str | None = None, *, pattern: re.Pattern[str] = _NAME
    ) -> None:
        self.kind = kind
        self.group = group
        self.pattern = pattern  # names a user types; metrics keep their column names (rougeL)
        self._loaded: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._scanned = False
        self._lock = threading.RLock()

    def _scan(self) -> None:
        if self._scanned or self.group is None:
            self._scanned = True
            return
        with self._lock:
            if self._scanned:
                return
            for ep in entry_points(group=self.group):
                existing = self._lazy.get(ep.name)
                if existing is not None and existing != ep.value:
                    raise ConfigError(
                        f"two packages register the {self.kind} {ep.name!r}: "
                        f"{existing} and {ep.value}; uninstall one of them"
                    )
                self._lazy[ep.name] = ep.value
            self._scanned = True

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``."""
        if not self.pattern.match(name):
            rule = (
                "be kebab-case, like 'few-shot'"
                if self.pattern is _NAME
                else f"match {self.pattern.pattern}"
            )
            raise ConfigError(f"{self.kind} name {name!r} must {rule}")

        def add(o: T) -> T:
            with self._lock:
                current = self._loaded.get(name)
                if current is not None and current is not o:
                    raise ConfigError(f"the {self.kind} {name!r} is already registered")
                self._loaded[name] = o
            return o

        return add(obj) if obj is not None else add

    def add_lazy(self, name: str, target: str) -> None:
        """Register a ``"module:attr"`` target, imported on first lookup."""
        with self._lock:
            if name in self._loaded or (name in self._lazy and self._lazy[name] != target):
                raise ConfigError(f"the {self.kind} {name!r} is already registered")
            self._lazy[name] = target

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._scan()
        return sorted(set(self._loaded) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """Return the object registered under ``name``, importing it if needed."""
        self._scan()
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            target = self._lazy.get(name)
        if target is None:
            known = self.names()
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(known) or '(none)'}"
            )
        try:
            obj = _import(target)
        except ImportError as err:
            raise ConfigError(
                f"the {self.kind} {name!r} points to {target!r}, which cannot be imported: {err}"
            ) from err
        with self._lock:
            self._loaded.setdefault(name, obj)  # type: ignore[arg-type]
            return self._loaded[name]
