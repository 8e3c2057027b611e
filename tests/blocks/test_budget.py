"""The process-wide memory budget: one byte bound over every cache, and honest weights.

The weights of parsed objects are formulas (a parse must not walk its result to weigh it);
here they are checked against a deep ``sys.getsizeof`` of real parses of the reference volume,
and of a hostile index node (many minimal entries in one 64 KiB block).
"""

from __future__ import annotations

import struct
import sys
import threading
from array import array

import pytest

from tests.memsource import MemorySource
from tests.ntfs.ntfsimages import NtfsImage
from vcbfs.blocks.budget import (
    BUDGET,
    Budget,
    OverBudgetError,
    format_size,
    parse_size,
    weigh_array,
    weigh_bytes,
)
from vcbfs.blocks.cache import CachedSource
from vcbfs.blocks.local import LocalSource
from vcbfs.blocks.lru import LRU
from vcbfs.ntfs.index import parse_node, weigh_node
from vcbfs.ntfs.mft import weigh_record
from vcbfs.ntfs.volume import NtfsVolume, _weigh_index, _weigh_node, _weigh_stat

MIB = 1 << 20


def test_the_oldest_entry_of_any_cache_goes_first() -> None:
    budget = Budget(1000)
    a: LRU[str, bytes] = LRU(10_000, len, budget=budget)
    dropped: list[str] = []
    b: LRU[str, bytes] = LRU(10_000, len, lambda k, _v: dropped.append(k), budget=budget)
    a.put("a1", b"x" * 300)
    b.put("b1", b"x" * 300)
    a.put("a2", b"x" * 300)
    assert a.get("a1") is not None  # a1 is now the most recently used
    b.put("b2", b"x" * 300)  # over 1000: the oldest of all, b1, goes
    assert "b1" not in b and dropped == ["b1"]
    assert "a1" in a and "a2" in a and "b2" in b
    assert budget.used == 900 == a.weight + b.weight
    a.put("a3", b"x" * 300)  # a2 is the oldest now
    assert "a2" not in a and budget.used == 900


def test_a_cache_keeps_its_own_bound_and_refuses_what_outweighs_either() -> None:
    budget = Budget(10_000)
    small: LRU[int, bytes] = LRU(500, len, budget=budget)
    for i in range(5):
        assert small.put(i, b"x" * 200)
    assert len(small) == 2 and small.weight == 400 and budget.used == 400
    assert not small.put(9, b"x" * 501)
    assert not LRU(1 << 30, len, budget=budget).put(1, b"x" * 10_001)
    small.clear()
    assert budget.used == 0 and len(small) == 0


def test_a_reservation_shrinks_the_caches_and_refuses_more_than_the_budget() -> None:
    budget = Budget(1000)
    cache: LRU[int, bytes] = LRU(1000, len, budget=budget)
    for i in range(10):
        cache.put(i, b"x" * 100)
    assert budget.used == 1000
    with budget.reserve(600, "a hive"):
        assert budget.used <= 400 and budget.reserved == 600
        cache.put(99, b"x" * 100)
        assert budget.used + budget.reserved <= 1000
    assert budget.reserved == 0
    with (
        pytest.raises(OverBudgetError, match="more than the whole memory budget of 1000 bytes"),
        budget.reserve(1001, "a hive"),
    ):
        pass
    assert budget.reserved == 0


def test_a_smaller_budget_evicts_at_once_and_ranks_decide() -> None:
    budget = Budget(1000)
    cache: LRU[int, bytes] = LRU(1000, len, budget=budget)
    for i in range(10):
        cache.put(i, b"x" * 100)
    assert budget.configure(500, "command line")
    assert budget.used == 500 and list(cache._items) == [5, 6, 7, 8, 9]
    assert not budget.configure(2000, "file")  # read after the command line, which wins
    assert not budget.configure(2000, "environment")
    assert budget.capacity == 500


def test_concurrent_caches_stay_within_the_budget() -> None:
    budget = Budget(64 * 1024)
    caches = [LRU(1 << 20, len, budget=budget) for _ in range(4)]

    def work(n: int) -> None:
        for i in range(3000):
            c = caches[(n + i) % 4]
            c.put(i % 97, b"x" * (i % 1000 + 1))
            c.get((i * 7) % 97)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.used == sum(c.weight for c in caches) <= budget.capacity
    assert budget.stats()["entries"] == sum(len(c) for c in caches)


def test_block_cache_pieces_evicted_by_another_cache_are_forgotten() -> None:
    budget = Budget(300 * 1024)
    data = bytes(range(256)) * 4096  # 1 MiB
    cache = CachedSource(MemorySource(data), block_size=64 * 1024, capacity=1 << 20)
    cache._pieces.budget = budget  # as if the process's budget were this small
    cache._pieces._lock = budget.lock
    other: LRU[int, bytes] = LRU(1 << 20, len, budget=budget)
    for off in range(0, len(data), 64 * 1024):
        assert cache.read_at(off, 100) == data[off : off + 100]
        other.put(off, b"y" * 50_000)
        held = {id(p) for p in cache._where.values()}
        assert len(held) == len(cache._pieces)  # no block names a piece the cache let go
    assert budget.used <= budget.capacity


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 * MIB), ("1G", 1 << 30), ("1.5GiB", 3 << 29), ("64mb", 64 * MIB)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert parse_size(size) == size


@pytest.mark.parametrize("bad", ["", "lots", "1X", "-1G", "1M", True, 1024])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match=r"size such as|at least"):
        parse_size(bad)


def test_format_size() -> None:
    assert format_size(512 * MIB) == "512 MiB" and format_size(3 << 29) == "1.5 GiB"


# --- weights against deep sizes ------------------------------------------------------------


def deep_size(obj: object, shared: tuple[object, ...] = ()) -> int:
    """Bytes ``obj`` holds: sys.getsizeof over everything it reaches (not the shared objects,
    types, small cached ints)."""
    seen = {id(s) for s in shared}
    total, stack = 0, [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type) or callable(o):
            continue
        seen.add(id(o))
        if isinstance(o, bool) or o is None or (isinstance(o, int) and -5 <= o <= 256):
            continue
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack += [*o.keys(), *o.values()]
        elif isinstance(o, list | tuple | set | frozenset):
            stack += list(o)
        elif not isinstance(o, str | bytes | bytearray | int | float | array):
            if hasattr(o, "__dict__"):
                stack.append(o.__dict__)
            for cls in type(o).__mro__:
                stack += [getattr(o, s) for s in getattr(cls, "__slots__", ()) if hasattr(o, s)]
    return total


def _ratios(objs: list[object], weigh, shared: tuple[object, ...]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    rs = [weigh(o) / deep_size(o, shared) for o in objs]
    return min(rs), sum(rs) / len(rs)


def test_weights_of_parsed_objects_match_their_deep_size(ntfs_image: NtfsImage) -> None:
    vol = NtfsVolume(LocalSource(ntfs_image.path))
    shared = (vol, vol.upcase, BUDGET, vol._index_nodes, vol.source)
    numbers = range(16, min(vol.mft.record_count, 6000), 3)
    records = [vol.mft.record(n) for n in numbers]
    nodes, stats, indexes = [], [], []
    for n in numbers:
        if records[(n - 16) // 3].in_use and not records[(n - 16) // 3].is_extension:
            nodes.append(vol._node(n))
            stats.append(vol.stat(n))
            if records[(n - 16) // 3].is_dir:
                indexes.append(vol._index(n))
    list(vol.iterdir(vol.lookup(ntfs_image.huge_dir)))
    index_nodes = [e.value for e in vol._index_nodes._items.values()]
    assert len(index_nodes) > 100
    # Never much below what is held (the bound is honest), and not far above (the budget is
    # used): the mean within [1, 1.6], no object under 0.9.
    for what, objs, weigh in (
        ("records", records, weigh_record),
        ("parsed records", nodes, _weigh_node),
        ("stats", stats, _weigh_stat),
        ("index nodes", index_nodes, weigh_node),
        ("directory indexes", indexes, _weigh_index),
    ):
        low, mean = _ratios(objs, weigh, shared)  # type: ignore[arg-type]
        print(f"{what}: {len(objs)}, weight / deep size: min {low:.2f}, mean {mean:.2f}")
        assert low >= 0.9 and 1.0 <= mean <= 1.6, what


def test_a_hostile_index_node_weighs_what_it_parses_to() -> None:
    """A 64 KiB INDX node of minimal entries (one-character names) parses to about three
    times its size: the weight counts entries, not the bytes read."""
    times = (1 << 58) + 1, (1 << 58) + 2, (1 << 58) + 3, (1 << 58) + 4, 1 << 40, 1 << 41
    key = struct.pack("<QQQQQQQII", 5 | 1 << 48, *times, 0, 0) + bytes([1, 1]) + b"a\0"
    length = (16 + len(key) + 7) & ~7
    count = (64 * 1024 - 64) // length
    body = b"".join(
        struct.pack("<QHHH", 40 + i, length, len(key), 0)
        + b"\0\0"
        + key
        + bytes(length - 16 - len(key))
        for i in range(count)
    )
    body += struct.pack("<QHHH", 0, 16, 0, 2) + b"\0\0"
    buf = struct.pack("<IIIB", 16, 16 + len(body), 16 + len(body), 0) + b"\0\0\0" + body
    node = parse_node(buf, 0, "<hostile>", "node")
    assert len(node) == count + 1
    held = deep_size(node)
    assert held > 2.5 * len(buf)  # the audit's 64 KiB node parsed to 189 KiB
    assert 1.0 <= weigh_node(node) / held <= 1.6


def test_bytes_and_tables_weigh_what_python_holds() -> None:
    data = b"x" * 1000
    assert weigh_bytes(data) == sys.getsizeof(data)
    table = array("I", bytes(2048))
    assert weigh_array(table) == sys.getsizeof(table)


def test_a_reservation_waits_for_others_to_end_and_gives_back_early() -> None:
    budget = Budget(1000)
    order: list[str] = []
    with budget.reserve(600, "first") as first:
        first.release(100)
        assert budget.reserved == 500

        def second() -> None:
            with budget.reserve(600, "second"):
                order.append("second in")

        t = threading.Thread(target=second)
        t.start()
        t.join(0.3)
        assert order == []  # 500 + 600 would pass the budget: it waits
        order.append("first out")
    t.join(5)
    assert order == ["first out", "second in"] and budget.reserved == 0


def test_long_lived_structures_are_held_while_their_owner_lives() -> None:
    import gc

    class Owner:
        pass

    budget = Budget(1000)
    cache: LRU[int, bytes] = LRU(1000, len, budget=budget)
    for i in range(10):
        cache.put(i, b"x" * 100)
    a, b = Owner(), Owner()
    budget.hold(a, 300, "a grain directory")
    assert budget.held == 300 and budget.used <= 700
    with pytest.raises(OverBudgetError, match="more than 500 bytes of the memory budget of 1000"):
        budget.hold(b, 201, "another")
    budget.hold(b, 200, "another")
    del a
    gc.collect()
    cache.put(99, b"x" * 100)  # the next operation takes the finalized hold off
    assert budget.held == 200 == budget.reserved


def test_a_dropped_cache_gives_its_entries_back() -> None:
    """The budget's order names caches weakly: a cache nothing else holds is finalized, and
    its entries leave the budget at its next step, not when the eviction reaches them."""
    budget = Budget(10_000)
    cache: LRU[int, bytes] = LRU(5000, len, budget=budget)
    other: LRU[int, bytes] = LRU(5000, len, budget=budget)
    for i in range(10):
        cache.put(i, b"x" * 100)
    other.put(0, b"y" * 100)
    assert budget.used == 1100
    del cache  # no cycle: finalized at once, taken off at the budget's next step
    other.put(1, b"y" * 100)
    assert budget.used == 200 == other.weight and len(budget._order) == 2


def test_an_entry_of_a_dropped_cache_met_by_the_eviction_is_taken_off() -> None:
    budget = Budget(1000)
    cache: LRU[int, bytes] = LRU(5000, len, budget=budget)
    cache.put(0, b"x" * 600)
    entries = cache._items  # as a finalizer not yet run would leave them
    budget._orphans.clear()
    cache._ref = lambda: None  # type: ignore[assignment]
    for e in entries.values():
        e.lru = cache._ref  # type: ignore[assignment]
    other: LRU[int, bytes] = LRU(5000, len, budget=budget)
    other.put(0, b"y" * 600)  # over budget: the oldest entry's cache is "gone"
    assert budget.used == 600 == other.weight


def test_a_closed_compressed_file_gives_its_decoded_units_back(ntfs_image: NtfsImage) -> None:
    """An open file's decoded units serve its own reads; once the file is dropped, nothing can
    ask for them again, so they leave the budget rather than wait for its eviction."""
    vol = NtfsVolume(LocalSource(ntfs_image.path))
    number = vol.lookup(ntfs_image.compressed_text)
    before = BUDGET.stats()["used"]
    stream = vol.open(number)
    stream.read_at(0, stream.size)
    assert BUDGET.stats()["used"] - before >= 1 << 20  # its units, 1 MiB decoded
    del stream
    assert BUDGET.stats()["used"] - before < 64 << 10
