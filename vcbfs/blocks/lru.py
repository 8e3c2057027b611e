"""A small thread-safe LRU map with a bound on total weight (bytes, entries).

Grain tables, decompressed grains and cache blocks all need the same thing: keep the recently
used ones, never exceed a hard bound, and be safe to share between reader threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

__all__ = ["LRU"]


class LRU(Generic[K, V]):
    """Keep values while their summed ``weigh(value)`` stays within ``capacity``."""

    def __init__(
        self,
        capacity: int,
        weigh: Callable[[V], int] = lambda _v: 1,
        dropped: Callable[[K, V], object] | None = None,
    ):
        """``dropped(key, value)`` is told of every value evicted or replaced, with the LRU's
        lock held: it must not call back into this LRU."""
        if capacity <= 0:
            raise ValueError("LRU capacity must be positive")
        self.capacity = capacity
        self._weigh = weigh
        self._dropped = dropped
        self._items: OrderedDict[K, V] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> bool:
        """Keep ``value``; False if it alone outweighs the whole LRU (then it is not kept)."""
        w = self._weigh(value)
        if w > self.capacity:
            return False  # not worth evicting everything for
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= self._weigh(old)
                if self._dropped is not None and old is not value:
                    self._dropped(key, old)
            self._items[key] = value
            self._weight += w
            while self._weight > self.capacity:
                gone_key, gone = self._items.popitem(last=False)
                self._weight -= self._weigh(gone)
                if self._dropped is not None:
                    self._dropped(gone_key, gone)
        return True

    def discard(self, key: K) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= self._weigh(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weight = 0

    @property
    def weight(self) -> int:
        return self._weight

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
