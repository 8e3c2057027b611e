"""The shared block cache: same bytes as its base, bounded memory, readahead, single flight."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from tests.memsource import MemorySource
from tests.together import together
from vcbfs.blocks.cache import PIECE_OVERHEAD, CachedLocation, CachedSource
from vcbfs.errors import ReadError

KIB = 1024
DATA = os.urandom(3 * 1024 * KIB + 123)


class SlowSource(MemorySource):
    """A source with a delay per request and an optional failure, like a datastore."""

    def __init__(self, data: bytes, delay: float = 0.0, fail: int = 0):
        super().__init__(data, "slow")
        self.delay = delay
        self.fail = fail
        self.fail_from = 0  # only reads starting at or after this offset fail
        self.threads: list[str] = []
        self.lock = threading.Lock()

    def _read(self, offset: int, n: int) -> bytes:
        time.sleep(self.delay)
        with self.lock:
            self.threads.append(threading.current_thread().name)
            if self.fail and offset >= self.fail_from:
                self.fail -= 1
                raise ReadError("injected", source=self.name, offset=offset)
        return super()._read(offset, n)


def test_random_reads_equal_the_base() -> None:
    cache = CachedSource(MemorySource(DATA), block_size=64 * KIB, capacity=512 * KIB)
    rng = random.Random(1)
    for _ in range(2000):
        off = rng.randrange(len(DATA) + 10)
        n = rng.choice((1, 100, 64 * KIB, 64 * KIB + 1, 200 * KIB))
        if rng.random() < 0.5:
            assert cache.read_at(off, n) == DATA[off : off + n]
        else:
            got = cache.try_read_at(off, n)
            assert got is None or bytes(got) == DATA[off : off + n]
        # within the capacity and room for each block's bookkeeping, which it counts too
        assert cache._pieces.weight <= 512 * KIB + PIECE_OVERHEAD * 8
        # an evicted piece takes its blocks out of the index with it
        assert len(cache._where) <= 512 // 64 + 1  # + the file's short last block, in that room


def test_a_read_inside_one_fetched_piece_is_a_view_of_it() -> None:
    base = MemorySource(DATA)
    cache = CachedSource(base, block_size=64 * KIB, capacity=4096 * KIB, max_readahead=1024 * KIB)
    for off in range(0, 2048 * KIB, 64 * KIB):  # a stream: its requests grow
        cache.read_at(off, 64 * KIB)
    start, n = max(base.reads, key=lambda r: r[1])
    assert n >= 8 * 64 * KIB
    inside = start + 10 * KIB, n - 20 * KIB  # across the blocks of that one request
    got = cache.try_read_at(*inside)
    assert isinstance(got, memoryview) and bytes(got) == DATA[inside[0] : sum(inside)]
    across = cache.try_read_at(start - 4 * KIB, 8 * KIB)  # the end of a piece, the next's start
    assert across is not None and bytes(across) == DATA[start - 4 * KIB : start + 4 * KIB]


def test_sequential_reads_grow_into_few_large_requests() -> None:
    base = MemorySource(DATA)
    cache = CachedSource(base, block_size=64 * KIB, capacity=4096 * KIB, max_readahead=1024 * KIB)
    pos = 0
    while pos < len(DATA):
        assert cache.read_at(pos, 4 * KIB) == DATA[pos : pos + 4 * KIB]
        pos += 4 * KIB
    assert cache.requests == len(base.reads)
    # 790 reads of 4 KiB; without readahead one request per 64 KiB block would be 49
    assert len(base.reads) < 12
    assert max(n for _, n in base.reads) == (1 + 16) * 64 * KIB


def test_random_reads_do_not_read_ahead() -> None:
    base = MemorySource(DATA)
    cache = CachedSource(base, block_size=64 * KIB, capacity=4096 * KIB)
    for off in (2000 * KIB, 100 * KIB, 2900 * KIB, 700 * KIB):
        cache.read_at(off, 10)
    assert [n for _, n in base.reads] == [64 * KIB] * 4


def test_concurrent_misses_share_one_fetch() -> None:
    base = SlowSource(DATA, delay=0.2)
    cache = CachedSource(base, block_size=64 * KIB, capacity=1024 * KIB)
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.read_at(70 * KIB, 1000)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [DATA[70 * KIB : 70 * KIB + 1000]] * 8
    assert len(base.reads) == 1


def test_a_failed_fetch_wakes_waiters_and_is_not_cached() -> None:
    base = SlowSource(DATA, delay=0.1, fail=1)
    cache = CachedSource(base, block_size=64 * KIB, capacity=1024 * KIB)
    outcomes = together(lambda: cache.read_at(0, 10), 4, timeout=10)
    assert all(isinstance(o, bytes | ReadError) for o in outcomes)
    assert sum(isinstance(o, ReadError) for o in outcomes) >= 1
    assert cache.read_at(0, 10) == DATA[:10]


def test_huge_reads_bypass_the_cache() -> None:
    base = MemorySource(DATA)
    cache = CachedSource(base, block_size=64 * KIB, capacity=512 * KIB)
    assert cache.read_at(0, 2048 * KIB) == DATA[: 2048 * KIB]
    assert len(cache._pieces) == 0


def test_cached_location_wraps_siblings() -> None:
    from tests.memsource import MemoryLocation

    loc = CachedLocation(MemoryLocation({"a": b"1", "b": b"22"}, "a"), block_size=4096)
    assert isinstance(loc.open(), CachedSource)
    assert loc.sibling("b").open().read_at(0, 5) == b"22"


def test_capacity_must_hold_a_block() -> None:
    with pytest.raises(ValueError):
        CachedSource(MemorySource(b"x"), block_size=4096, capacity=100)


def _read_slowly(background: bool) -> SlowSource:
    """Read DATA start to end in 128 KiB steps with work between reads; the base read from."""
    base = SlowSource(DATA, delay=0.02)
    cache = CachedSource(
        base,
        block_size=64 * KIB,
        capacity=2048 * KIB,
        max_readahead=512 * KIB,
        background=background,
    )
    step = 128 * KIB
    out = []
    for off in range(0, len(DATA), step):
        got = cache.try_read_at(off, step)
        out.append(bytes(got if got is not None else cache.read_at(off, step)))
        time.sleep(0.03)  # the reader's own work: the next window arrives meanwhile
    assert b"".join(out) == DATA
    return base


def test_background_readahead_runs_ahead_of_the_reader() -> None:
    """With ``background``, part of the horizon is fetched by the readahead workers while the
    reader works; without it the reader fetches everything itself (no timing is asserted)."""
    assert "vcbfs-readahead" in _read_slowly(background=True).threads
    assert "vcbfs-readahead" not in _read_slowly(background=False).threads


def test_background_readahead_failure_is_retried_by_the_reader() -> None:
    base = SlowSource(DATA)
    cache = CachedSource(
        base, block_size=64 * KIB, capacity=2048 * KIB, max_readahead=512 * KIB, background=True
    )
    base.fail, base.fail_from = 1, 1024 * KIB  # the first fetch there fails: a background one
    data = b"".join(cache.read_at(off, 64 * KIB) for off in range(0, len(DATA), 64 * KIB))
    assert data == DATA
    assert base.fail == 0 and "vcbfs-readahead" in base.threads
