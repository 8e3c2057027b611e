"""One memory budget for the whole process, shared by every cache.

Every ``LRU`` (block caches, grain tables, decompressed grains and units, MFT records, parsed
records and stats, directory indexes and their nodes, the mount's listings) charges its entries
to one ``Budget`` in bytes.  When the sum passes the budget, the least recently used entry of
*any* cache goes, so a VM with many disks, or many VMs in one automount, share one bound rather
than each cache keeping its own share; a cache's own ``capacity`` still caps what it alone may
hold.  Large objects held outside the caches for a while (a SYSTEM hive being parsed) are
``reserve``\\d against the same budget: the caches shrink to make room, and an object larger
than the whole budget is refused with ``OverBudgetError``.

Weights are bytes as Python holds them, not just the bytes read: parsed objects are weighed by
formulas measured against a deep ``sys.getsizeof`` of real parses (tests/blocks/test_budget.py).

The size is the ``memory_budget`` setting (``--memory-budget``, ``VCBFS_MEMORY_BUDGET``, the
TOML key), default ``DEFAULT_BUDGET``.  A source of higher rank wins whatever the order it is
applied in (command line > environment > file > default), since the command-line option takes
effect while the arguments are parsed, before the settings files are read.

One lock guards all caches' bookkeeping: each operation is a few dictionary steps, and the
readers share the GIL anyway.  A cache's ``dropped`` callback runs with that lock held, so it
must not call back into any LRU.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import re
import sys
import threading
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vcbfs.errors import VcbfsError

if TYPE_CHECKING:
    from vcbfs.blocks.lru import LRU

__all__ = [
    "BUDGET",
    "DEFAULT_BUDGET",
    "Budget",
    "OverBudgetError",
    "configure",
    "format_size",
    "parse_size",
    "weigh_array",
    "weigh_bytes",
]

MIB = 1 << 20
DEFAULT_BUDGET = 512 * MIB
MIN_BUDGET = 16 * MIB
ENV = "VCBFS_MEMORY_BUDGET"

# Where a size came from, by rank: a higher rank is never overridden by a lower one.
RANKS = {"default": 0, "file": 1, "environment": 2, "command line": 3, "explicit": 4}

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


BYTES_OVERHEAD = sys.getsizeof(b"")


def weigh_bytes(data: bytes | bytearray) -> int:
    """What a bytes object holding ``data`` costs."""
    return len(data) + BYTES_OVERHEAD


def weigh_array(table: array[int]) -> int:
    """What an array costs, its spare room included."""
    return sys.getsizeof(table)


class OverBudgetError(VcbfsError, MemoryError):
    """Something would need more memory than the whole process-wide budget allows."""

    errno = _errno.ENOMEM


def parse_size(value: object) -> int:
    """Bytes from ``512M``, ``1G``, ``1.5GiB``, ``65536`` or an int (binary units: M = MiB)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size such as 512M or 1G, not {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.fullmatch(str(value))
        if not m:
            raise ValueError(f"must be a size such as 512M or 1G, not {value!r}")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < MIN_BUDGET:
        raise ValueError(f"must be at least {format_size(MIN_BUDGET)}, not {format_size(n)}")
    if n > 1 << 50:
        raise ValueError(f"is too large: {format_size(n)}")
    return n


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % (size // 16) == 0:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


class _Entry:
    """One cached value: in its LRU's map and in the budget's global order.

    It names its LRU weakly, so that the budget's order never keeps a cache alive: a cache its
    owner dropped (a closed file's decoded units, a released VM's grain tables) is finalized,
    and its entries leave the budget with it rather than wait for the eviction to reach them."""

    __slots__ = ("key", "lru", "value", "weight")

    def __init__(self, lru: weakref.ref[LRU[Any, Any]], key: Any, value: Any, weight: int) -> None:
        self.lru = lru
        self.key = key
        self.value = value
        self.weight = weight


class Reservation:
    """Bytes held against a budget outside its caches (see ``Budget.reserve``)."""

    def __init__(self, budget: Budget, nbytes: int) -> None:
        self.budget = budget
        self.nbytes = nbytes

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` of it (at most what is still held)."""
        nbytes = min(nbytes, self.nbytes)
        if nbytes > 0:
            self.nbytes -= nbytes
            self.budget._release(nbytes)


class Budget:
    """A byte budget shared by LRUs; evicts the least recently used entry of any of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rank = 0
        self.lock = threading.Lock()
        self._room = threading.Condition(self.lock)  # reservations waiting for others to end
        self._order: OrderedDict[_Entry, None] = OrderedDict()
        self.used = 0  # bytes in cached entries
        self.reserved = 0  # bytes held outside the caches (reserve, hold)
        self.held = 0  # of which held by long-lived structures (hold)
        self._returned: list[int] = []  # holds whose owner is gone, not yet subtracted
        self._orphans: list[dict[Any, _Entry]] = []  # entries of caches gone, not yet taken off
        self.evictions = 0

    def configure(self, capacity: int, origin: str = "explicit") -> bool:
        """Set the size, unless it was set by a source of higher rank; True if applied."""
        rank = RANKS[origin]
        with self.lock:
            if rank < self.rank:
                return False
            self.rank = rank
            self.capacity = capacity
            self._evict()
        return True

    # -- for LRU (the lock is held by the caller) -------------------------------------------

    def _add(self, entry: _Entry) -> None:
        self._order[entry] = None
        self.used += entry.weight
        self._evict()

    def _touch(self, entry: _Entry) -> None:
        self._order.move_to_end(entry)

    def _remove(self, entry: _Entry) -> None:
        del self._order[entry]
        self.used -= entry.weight

    def _evict(self) -> None:
        while self._returned:  # lock-free from finalizers (a GC may run under the lock)
            n = self._returned.pop()
            self.held -= n
            self.reserved -= n
        order = self._order
        while self._orphans:
            for entry in self._orphans.pop().values():
                if entry in order:  # the loop below may have taken it already
                    self._remove(entry)
        while self.used + self.reserved > self.capacity and order:
            entry = next(iter(order))
            lru = entry.lru()
            if lru is None:  # its cache is gone, its entries not yet taken off
                self._remove(entry)
            else:
                lru._evicted(entry)
            self.evictions += 1

    def orphan(self, items: dict[Any, _Entry]) -> None:
        """A cache is gone: take its ``items`` off at the next step.  Lock-free (a list append),
        since it runs from a finalizer, which a GC may run while this thread holds the lock."""
        self._orphans.append(items)

    # -- outside the caches ------------------------------------------------------------------

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[Reservation]:
        """Hold ``nbytes`` of the budget while the block runs (the caches shrink for it);
        ``release`` on the reservation gives part of it back early.

        Raises ``OverBudgetError`` if ``nbytes`` alone is more than the whole budget; waits
        while other reservations leave too little room."""
        with self._room:
            while True:
                if nbytes > self.capacity:
                    raise OverBudgetError(
                        f"{what} needs {format_size(nbytes)}, more than the whole memory budget "
                        f"of {format_size(self.capacity)} (raise memory_budget, "
                        f"--memory-budget or {ENV})"
                    )
                if self.reserved == 0 or self.reserved + nbytes <= self.capacity:
                    break
                self._room.wait(1.0)
            self.reserved += nbytes
            self._evict()
        held = Reservation(self, nbytes)
        try:
            yield held
        finally:
            held.release(held.nbytes)

    def hold(self, owner: object, nbytes: int, what: str, *, share: float = 0.5) -> None:
        """Charge ``nbytes`` for as long as ``owner`` lives: a structure kept whole outside the
        caches (a grain directory, a security-id index, an open directory's listing).  Such
        structures may take at most ``share`` of the budget together (half by default, so that
        the caches keep room); past that, ``OverBudgetError``.  A listing a reader holds open
        may take up to the whole budget (``share=1``): it is in use, unlike a cache entry."""
        with self.lock:
            self._evict()
            limit = int(self.capacity * share)
            if self.held + nbytes > limit:
                raise OverBudgetError(
                    f"{what} needs {format_size(nbytes)}; with the {format_size(self.held)} "
                    f"of such structures already held, that is more than "
                    f"{format_size(limit)} of the memory budget of "
                    f"{format_size(self.capacity)} (raise memory_budget, "
                    f"--memory-budget or {ENV})"
                )
            self.held += nbytes
            self.reserved += nbytes
            self._evict()
        weakref.finalize(owner, self._returned.append, nbytes)

    def _release(self, nbytes: int) -> None:
        with self._room:
            self.reserved -= nbytes
            self._room.notify_all()

    def stats(self) -> dict[str, int]:
        with self.lock:
            self._evict()  # count holds whose owner has gone since
            return {
                "capacity": self.capacity,
                "used": self.used,
                "reserved": self.reserved,
                "held": self.held,
                "entries": len(self._order),
                "evictions": self.evictions,
            }


def _from_env() -> tuple[int, str]:
    value = os.environ.get(ENV)
    if value:
        with contextlib.suppress(ValueError):  # a bad value is reported by load_settings
            return parse_size(value), "environment"
    return DEFAULT_BUDGET, "default"


BUDGET = Budget(DEFAULT_BUDGET)
BUDGET.configure(*_from_env())


def configure(capacity: int, origin: str = "explicit") -> bool:
    """Size the process-wide budget (see ``Budget.configure``)."""
    return BUDGET.configure(capacity, origin)
