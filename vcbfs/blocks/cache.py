"""A block cache with sequential readahead and a hard memory bound, over any byte source.

Put it over a source where a round trip costs (a datastore over HTTPS) or where parsers reread
the same metadata (MFT records, grain tables).  All readers of the source share it:

- fixed-size blocks in an LRU bounded in bytes;
- readahead per sequential stream: a read that continues where an earlier one ended grows that
  stream's window (doubling up to ``max_readahead``) and the blocks ahead are fetched in the same
  request to the source, so a backup reading a file start to end makes few, large requests;
- single flight: readers that miss the same block at once wait for one fetch, not one each;
- a read much larger than the cache goes straight to the source instead of flushing it;
- with ``background=True`` (for remote sources), readahead also runs ahead of the reader: once
  half a window of the stream's horizon is missing, the rest is fetched by a background worker
  while the reader goes on, so network round trips overlap with the reader's own work.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import Buffer, ByteSource, Location, Span, assemble

__all__ = ["CachedLocation", "CachedSource"]

log = logging.getLogger(__name__)

MAX_STREAMS = 32
WORKERS = 4


class _Workers:
    """A few daemon threads for background readahead (a hung fetch never blocks exit)."""

    def __init__(self, count: int) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._count = count
        self._started = 0
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._started < self._count:
                self._started += 1
                threading.Thread(target=self._run, name="vcbfs-readahead", daemon=True).start()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception as exc:  # the reader fetches for itself when it gets there
                log.debug("background readahead failed: %s", exc)


_workers = _Workers(WORKERS)


class _Fetch:
    """One request to the source in progress; waiters block on ``done``."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class CachedSource(ByteSource):
    """``base`` seen through a shared, bounded block cache with readahead."""

    def __init__(
        self,
        base: ByteSource,
        block_size: int = 128 * 1024,
        capacity: int = 64 << 20,
        max_readahead: int = 4 << 20,
        background: bool = False,
    ):
        if block_size <= 0 or capacity < block_size:
            raise ValueError("cache capacity must hold at least one block")
        self.base = base
        self.name = base.name
        self.size = base.size
        self.block_size = block_size
        self.max_window = max(1, max_readahead // block_size)
        self.background = background
        self._blocks: LRU[int, Buffer] = LRU(capacity, len)
        self._lock = threading.Lock()
        self._inflight: dict[int, _Fetch] = {}
        # next expected block of each sequential stream -> its current window, in blocks
        self._streams: OrderedDict[int, int] = OrderedDict()
        self.requests = 0  # reads sent to the base, for tests and benchmarks

    def _read(self, offset: int, n: int) -> bytes:
        bs = self.block_size
        if n >= self._blocks.capacity // 2:
            self._count()
            return self.base.read_at(offset, n)
        first, last = offset // bs, (offset + n - 1) // bs
        return bytes(assemble(self._get_blocks(first, last), offset - first * bs, n))

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        """The bytes if every block is cached; the stream table advances as ``_read``'s does."""
        bs = self.block_size
        if n >= self._blocks.capacity // 2:
            return None
        first, last = offset // bs, (offset + n - 1) // bs
        blocks = []
        for i in range(first, last + 1):
            block = self._blocks.get(i)
            if block is None:
                return None
            blocks.append(block)
        window = self._window(first, last)
        if self.background:
            self._run_ahead(last, window)
        return assemble(blocks, offset - first * bs, n)

    def _window(self, first: int, last: int) -> int:
        """Readahead in blocks for a read of ``first..last``; updates the stream table."""
        with self._lock:
            window = self._streams.pop(first, None)
            if window is None:
                window = self._streams.pop(first + 1, None)  # a read that ended mid-block
            window = 0 if window is None else min(max(1, window * 2), self.max_window)
            self._streams[last + 1] = window
            while len(self._streams) > MAX_STREAMS:
                self._streams.popitem(last=False)
        return window

    def _run_ahead(self, last: int, window: int) -> None:
        """Fetch, in the background, the missing end of the stream's readahead horizon."""
        if window < 2:
            return
        horizon = min(-(-self.size // self.block_size) - 1, last + window)
        with self._lock:
            a = last + 1
            while a <= horizon and (a in self._blocks or a in self._inflight):
                a += 1
            if horizon - a + 1 < window // 2:
                return  # most of the horizon is there or coming: wait for more to be read
            fetch = _Fetch()
            b = a
            while b <= horizon and b not in self._blocks and b not in self._inflight:
                self._inflight[b] = fetch
                b += 1
        _workers.submit(lambda: self._fetch_in_background(a, b - 1, fetch))

    def _fetch_in_background(self, a: int, b: int, fetch: _Fetch) -> None:
        try:
            self._fetch(a, b, {}, -1)
        finally:
            with self._lock:
                for j in range(a, b + 1):
                    self._inflight.pop(j, None)
            fetch.done.set()

    def _get_blocks(self, first: int, last: int) -> list[bytes]:
        window = self._window(first, last)
        if self.background:
            try:
                return self._blocks_now(first, last, window)
            finally:
                self._run_ahead(last, window)
        return self._blocks_now(first, last, window)

    def _blocks_now(self, first: int, last: int, window: int) -> list[bytes]:
        nblocks = -(-self.size // self.block_size)
        ahead_end = min(nblocks - 1, last + window)
        got: dict[int, bytes] = {}
        waits: list[tuple[int, _Fetch]] = []
        missing: list[int] = []
        with self._lock:
            for i in range(first, last + 1):
                block = self._blocks.get(i)
                if block is not None:
                    got[i] = block
                elif i in self._inflight:
                    waits.append((i, self._inflight[i]))
                else:
                    missing.append(i)
            # Read ahead only from a miss at the stream's edge: inside an earlier window the
            # blocks are there already, and past it the next miss fetches the next window.
            if missing and missing[-1] == last:
                i = last + 1
                while i <= ahead_end and i not in self._inflight and i not in self._blocks:
                    missing.append(i)
                    i += 1
            mine: list[tuple[int, int, _Fetch]] = []
            for i in missing:
                if mine and mine[-1][1] == i - 1:
                    a, _, fetch = mine[-1]
                    mine[-1] = (a, i, fetch)
                else:
                    mine.append((i, i, _Fetch()))
                self._inflight[i] = mine[-1][2]
        try:
            for a, b, _fetch in mine:
                self._fetch(a, b, got, last)
        finally:  # wake every waiter, also when a fetch failed: they then read for themselves
            with self._lock:
                for a, b, _fetch in mine:
                    for j in range(a, b + 1):
                        self._inflight.pop(j, None)
            for _a, _b, fetch in mine:
                fetch.done.set()
        for i, fetch in waits:
            fetch.done.wait()
            block = self._blocks.get(i)
            if block is None:  # the fetch failed or the block was already evicted: read it
                self._count()
                block = self.base.read_at(i * self.block_size, self.block_size)
            got[i] = block
        return [got[i] for i in range(first, last + 1)]

    def _fetch(self, a: int, b: int, got: dict[int, bytes], last: int) -> None:
        """Read blocks ``a..b`` in one request; cache them all, keep the wanted ones."""
        bs = self.block_size
        self._count()
        # Blocks are copies, not views of ``data``: a view would keep all of a window's
        # buffer alive for as long as any one of its blocks stays cached.
        data = self.base.read_at(a * bs, (b - a + 1) * bs)
        for i in range(a, b + 1):
            block = data[(i - a) * bs : (i - a + 1) * bs]
            self._blocks.put(i, block)
            if i <= last:
                got[i] = block

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def spans(self, offset: int = 0, length: int | None = None) -> Iterator[Span]:
        return self.base.spans(offset, length)

    def direct(self, offset: int, n: int) -> tuple[int, int] | None:
        return self.base.direct(offset, n)

    def close(self) -> None:
        self._blocks.clear()
        self.base.close()


class CachedLocation(Location):
    """A location whose files (and their siblings') open behind a CachedSource."""

    def __init__(self, inner: Location, **cache_options: int):
        self.inner = inner
        self.name = inner.name
        self._options = cache_options

    def open(self) -> ByteSource:
        return CachedSource(self.inner.open(), **self._options)

    def sibling(self, name: str) -> Location:
        return CachedLocation(self.inner.sibling(name), **self._options)
