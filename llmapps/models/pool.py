"""``ModelPool``: the loaded models a process shares, in one object instead of module caches.

Loading a model is slow and its weights are large, so everything that loads one (the local and
llama.cpp backends, the ``lora`` strategy's shared bases, the embedding models) asks a pool:
``pool.get(key, load)`` returns the object loaded under ``key``, calling ``load()`` the first
time only. The pool is passed in (``load_local_model(..., pool=p)``, ``Strategy(..., pool=p)``)
and defaults to the one of the process (``default_pool()``), so a test, a server or a bench can
hold a private pool and free it whole with ``clear()``.

What a caller may change per use (the batch size of a ``LocalModel``) is not kept in the pool:
``load_local_model(batch_size=n)`` returns a view of the shared model with its own batch size,
and ``LocalModel.generate(..., batch_size=n)`` takes one per call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelPool:
    """Loaded objects by key (the first item of a key names its kind: ``"transformers"``, ``"gguf"``...)."""

    def __init__(self) -> None:
        self._items: dict[tuple[Hashable, ...], Any] = {}
        self._lock = (
            threading.RLock()
        )  # one load at a time: two loads of one model would double its memory

    def get(self, key: tuple[Hashable, ...], load: Callable[[], T]) -> T:
        """The object under ``key``, loaded with ``load()`` on first use."""
        with self._lock:
            if key in self._items:
                return self._items[key]  # type: ignore[no-any-return]
            obj = load()
            self._items[key] = obj
            return obj

    def peek(self, key: tuple[Hashable, ...]) -> Any | None:
        """The object under ``key`` if loaded, else None (loads nothing)."""
        with self._lock:
            return self._items.get(key)

    def loaded(self, kind: str | None = None) -> list[tuple[Hashable, ...]]:
        """The keys held (of one ``kind``, if given)."""
        with self._lock:
            return [k for k in self._items if kind is None or k[0] == kind]

    def clear(self, *kinds: str) -> int:
        """Forget the objects of ``kinds`` (all when none given), closing those with a ``close()``;
        the number forgotten. Memory is freed once nothing else holds them."""
        with self._lock:
            gone = [k for k in self._items if not kinds or k[0] in kinds]
            for key in gone:
                obj = self._items.pop(key)
                close = getattr(obj, "close", None)
                if callable(close):
                    try:
                        close()
                    except Exception:  # a model that fails to close is still forgotten
                        log.warning("closing %s failed", key[:2], exc_info=True)
            return len(gone)

    def __bool__(self) -> bool:  # an empty pool is still a pool (``pool or default_pool()``)
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


_DEFAULT = ModelPool()


def default_pool() -> ModelPool:
    """The process's pool (used wherever no pool is passed)."""
    return _DEFAULT
