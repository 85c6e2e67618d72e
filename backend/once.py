"""Objects made once per key and shared by every thread (models, captioners, open indexes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Once(Generic[T]):
    """Objects made once per key and shared by every thread.

    Each key has its own lock, so making one (loading a model: seconds) does not block threads
    that want another that is ready; two threads asking for the same missing key make it once.
    """

    def __init__(self) -> None:
        self._items: dict[str, T] = {}
        self._making: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: str, make: Callable[[], T], *, missing: Callable[[], None] | None = None) -> T:
        """The object of ``key``, made by ``make()`` if absent (``missing()`` is called first)."""
        with self._lock:
            if key in self._items:
                return self._items[key]
            making = self._making.setdefault(key, threading.Lock())
        if missing is not None:
            missing()
        with making:
            with self._lock:
                if key in self._items:  # another thread made it while we waited
                    return self._items[key]
            item = make()
            with self._lock:
                self._items[key] = item
                self._making.pop(key, None)
            return item

    def discard(self, key: str) -> None:
        """Forget the object of ``key`` (the next :meth:`get` makes it again)."""
        with self._lock:
            self._items.pop(key, None)

    def take_all(self) -> list[T]:
        """Remove and return every object made so far."""
        with self._lock:
            items, self._items = list(self._items.values()), {}
        return items
