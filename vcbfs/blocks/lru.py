"""A thread-safe LRU map bounded in bytes, its own and the process-wide memory budget's.

Grain tables, decompressed grains, cache blocks, MFT records, index nodes and listings all need
the same thing: keep the recently used ones, never exceed a hard bound, and be safe to share
between reader threads.  Each LRU weighs its values in bytes (``weigh``) and charges them to
the shared ``Budget`` (``vcbfs.blocks.budget``): past its own ``capacity`` it drops its own
oldest values, past the budget the oldest value of any cache goes.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from vcbfs.blocks.budget import BUDGET, Budget, _Entry

K = TypeVar("K")
V = TypeVar("V")

__all__ = ["LRU"]


class LRU(Generic[K, V]):
    """Keep values while their summed ``weigh(value)`` (bytes) stays within ``capacity`` and
    the whole process's caches within ``budget``."""

    def __init__(
        self,
        capacity: int,
        weigh: Callable[[V], int],
        dropped: Callable[[K, V], object] | None = None,
        budget: Budget | None = None,
    ):
        """``dropped(key, value)`` is told of every value evicted or replaced, with the
        budget's lock held: it must not call back into any LRU."""
        if capacity <= 0:
            raise ValueError("LRU capacity must be positive")
        self.capacity = capacity
        self._weigh = weigh
        self._dropped = dropped
        self.budget = BUDGET if budget is None else budget
        self._lock = self.budget.lock
        self._items: OrderedDict[K, _Entry] = OrderedDict()
        self._weight = 0
        self._ref = weakref.ref(self)  # what its entries name (see _Entry)
        weakref.finalize(self, self.budget.orphan, self._items)

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            self.budget._touch(entry)
            return entry.value

    def put(self, key: K, value: V) -> bool:
        """Keep ``value``; False if it alone outweighs this LRU or the whole budget (then it
        is not kept)."""
        w = self._weigh(value)
        if w > self.capacity or w > self.budget.capacity:
            return False  # not worth evicting everything for
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._unlink(old)
                if self._dropped is not None and old.value is not value:
                    self._dropped(key, old.value)
            entry = _Entry(self._ref, key, value, w)
            self._items[key] = entry
            self._weight += w
            while self._weight > self.capacity:
                self._evicted(next(iter(self._items.values())))
            self.budget._add(entry)
            return self._items.get(key) is entry

    def _unlink(self, entry: _Entry) -> None:
        self.budget._remove(entry)
        self._weight -= entry.weight

    def _evicted(self, entry: _Entry) -> None:
        """Drop ``entry`` (lock held): its own LRU's oldest, or the budget's."""
        del self._items[entry.key]
        self._unlink(entry)
        if self._dropped is not None:
            self._dropped(entry.key, entry.value)

    def discard(self, key: K) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._unlink(old)

    def clear(self) -> None:
        with self._lock:
            for entry in self._items.values():
                self.budget._remove(entry)
            self._items.clear()
            self._weight = 0

    @property
    def weight(self) -> int:
        return self._weight

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
