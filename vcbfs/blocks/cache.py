"""A block cache with sequential readahead and a hard memory bound, over any byte source.

Put it over a source where a round trip costs (a datastore over HTTPS) or where parsers reread
the same metadata (MFT records, grain tables).  All readers of the source share it:

- fixed-size blocks, kept as the pieces they were fetched in: one request's bytes stay one
  buffer, evicted as a whole from an LRU bounded in bytes, so a read inside one piece is a view
  of it (no copy), and the bound counts exactly what is held;
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

from vcbfs.blocks.budget import BYTES_OVERHEAD
from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import Buffer, ByteSource, Location, Span

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


class _Piece:
    """What one request to the source returned: blocks ``first`` .. ``first + count - 1``."""

    __slots__ = ("count", "data", "first")

    def __init__(self, first: int, data: bytes, block_size: int) -> None:
        self.first = first
        self.data = data
        self.count = -(-len(data) // block_size)


PIECE_OVERHEAD = BYTES_OVERHEAD + 72  # the _Piece object (measured with sys.getsizeof)


def _weigh_piece(piece: _Piece) -> int:
    return len(piece.data) + PIECE_OVERHEAD


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
        self.capacity = capacity
        # pieces by their first block, and the piece holding each cached block
        # ``capacity`` counts the blocks' bytes; each piece also costs its bookkeeping
        room = capacity + PIECE_OVERHEAD * (capacity // block_size)
        self._pieces: LRU[int, _Piece] = LRU(room, _weigh_piece, self._forget)
        self._where: dict[int, _Piece] = {}
        self._lock = threading.Lock()
        self._inflight: dict[int, _Fetch] = {}
        # next expected block of each sequential stream -> its current window, in blocks
        self._streams: OrderedDict[int, int] = OrderedDict()
        self.requests = 0  # reads sent to the base, for tests and benchmarks

    def _read(self, offset: int, n: int) -> bytes:
        bs = self.block_size
        if n >= self.capacity // 2:
            self._count()
            return self.base.read_at(offset, n)
        first, last = offset // bs, (offset + n - 1) // bs
        return bytes(self._slice(self._get_pieces(first, last), offset, n))

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        """The bytes if every block is cached; the stream table advances as ``_read``'s does."""
        bs = self.block_size
        if n >= self.capacity // 2:
            return None
        first, last = offset // bs, (offset + n - 1) // bs
        pieces = []
        i = first
        while i <= last:
            piece = self._piece(i)
            if piece is None:
                return None
            pieces.append(piece)
            i = piece.first + piece.count
        window = self._window(first, last)
        if self.background:
            self._run_ahead(last, window)
        return self._slice(pieces, offset, n)

    def _slice(self, pieces: list[_Piece], offset: int, n: int) -> Buffer:
        """Bytes ``[offset, offset+n)`` from consecutive pieces: a view when one holds all."""
        bs = self.block_size
        end = offset + n
        views = []
        for p in pieces:
            start = p.first * bs
            views.append(memoryview(p.data)[max(offset, start) - start : end - start])
        return views[0] if len(views) == 1 else b"".join(views)

    def _piece(self, i: int) -> _Piece | None:
        """The cached piece holding block ``i`` (now the most recently used), or None."""
        piece = self._where.get(i)
        if piece is None or self._pieces.get(piece.first) is not piece:
            return None
        return piece

    def _forget(self, _first: int, piece: _Piece) -> None:
        """The LRU dropped ``piece``: its blocks are no longer cached (LRU lock held)."""
        where = self._where
        for i in range(piece.first, piece.first + piece.count):
            if where.get(i) is piece:
                where.pop(i, None)

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
            while a <= horizon and (a in self._where or a in self._inflight):
                a += 1
            if horizon - a + 1 < window // 2:
                return  # most of the horizon is there or coming: wait for more to be read
            fetch = _Fetch()
            b = a
            while b <= horizon and b not in self._where and b not in self._inflight:
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

    def _get_pieces(self, first: int, last: int) -> list[_Piece]:
        window = self._window(first, last)
        if self.background:
            try:
                return self._pieces_now(first, last, window)
            finally:
                self._run_ahead(last, window)
        return self._pieces_now(first, last, window)

    def _pieces_now(self, first: int, last: int, window: int) -> list[_Piece]:
        """The pieces holding blocks ``first..last``, in order, fetching what is missing."""
        bs = self.block_size
        nblocks = -(-self.size // bs)
        ahead_end = min(nblocks - 1, last + window)
        got: dict[int, _Piece] = {}
        waits: list[tuple[int, _Fetch]] = []
        missing: list[int] = []
        with self._lock:
            for i in range(first, last + 1):
                piece = self._piece(i)
                if piece is not None:
                    got[i] = piece
                elif i in self._inflight:
                    waits.append((i, self._inflight[i]))
                else:
                    missing.append(i)
            # Read ahead only from a miss at the stream's edge: inside an earlier window the
            # blocks are there already, and past it the next miss fetches the next window.
            if missing and missing[-1] == last:
                i = last + 1
                while i <= ahead_end and i not in self._inflight and i not in self._where:
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
            piece = self._piece(i)
            if piece is None:  # the fetch failed or was already evicted: read it, uncached
                self._count()
                piece = _Piece(i, self.base.read_at(i * bs, bs), bs)
            got[i] = piece
        pieces: list[_Piece] = []
        for i in range(first, last + 1):
            if not pieces or pieces[-1] is not got[i]:
                pieces.append(got[i])
        return pieces

    def _fetch(self, a: int, b: int, got: dict[int, _Piece], last: int) -> None:
        """Read blocks ``a..b`` in one request and cache them as one piece."""
        self._count()
        piece = _Piece(
            a,
            self.base.read_at(a * self.block_size, (b - a + 1) * self.block_size),
            self.block_size,
        )
        # Its blocks are found before the piece is in the LRU: once it is, another reader's
        # put may evict it at any time, and the eviction must find them to forget them.
        where = self._where
        for i in range(a, a + piece.count):
            where[i] = piece
        if not self._pieces.put(a, piece):
            for i in range(a, a + piece.count):
                if where.get(i) is piece:
                    where.pop(i, None)
        for i in range(a, min(b, last) + 1):
            got[i] = piece

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def spans(self, offset: int = 0, length: int | None = None) -> Iterator[Span]:
        return self.base.spans(offset, length)

    def direct(self, offset: int, n: int) -> tuple[int, int] | None:
        return self.base.direct(offset, n)

    def close(self) -> None:
        self._pieces.clear()
        self._where.clear()
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
