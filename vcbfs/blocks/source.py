"""The byte-source protocol every layer reads through, and small sources built on it.

A ByteSource is a fixed-size, read-only run of bytes with a stateless ``read_at(offset, n)``:
no shared seek position, so any number of threads may read one source at once.  Reads are
short only at the end of the source.  ``spans()`` tells data from holes where the source knows
(a sparse VMDK, a local file with holes); a source that does not know reports all data.

A Location names a file without opening it and can name its siblings, which is all a VMDK
descriptor needs to find its extents and parents, whether they are local or on a datastore.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeAlias

from vcbfs.errors import CorruptError, OutOfRangeError

__all__ = [
    "Buffer",
    "ByteSource",
    "Location",
    "SliceSource",
    "Span",
    "ZeroSource",
    "assemble",
    "coalesce",
    "read_exact",
    "zeros",
]

#: What ``try_read_at`` answers with: any contiguous bytes-like object, so that zeros and
#: slices can be views instead of copies.  ``read_at`` always returns ``bytes``.
Buffer: TypeAlias = bytes | bytearray | memoryview

ZERO_CHUNK = 1 << 20  # FUSE asks for at most 1 MiB (256 pages) at a time
_ZEROS = bytes(ZERO_CHUNK)
_ZERO_VIEW = memoryview(_ZEROS)


def zeros(n: int) -> Buffer:
    """``n`` zero bytes, without allocating when ``n`` is at most 1 MiB (a shared view)."""
    return _ZERO_VIEW[:n] if n <= ZERO_CHUNK else bytes(n)


@dataclass(frozen=True, slots=True)
class Span:
    """A run of a source: ``allocated`` is False for a hole, which reads as zeros."""

    offset: int
    length: int
    allocated: bool

    @property
    def end(self) -> int:
        return self.offset + self.length


class ByteSource(ABC):
    """A read-only, fixed-size, thread-safe run of bytes.

    Subclasses implement ``_read`` for an in-bounds, non-empty request; ``read_at`` does the
    argument checks and clipping once, here, for all of them.
    """

    name: str
    size: int

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset``; short only where the source ends."""
        if offset < 0 or n < 0:
            raise OutOfRangeError(f"negative read ({offset}, {n})", source=self.name)
        n = min(n, self.size - offset)
        if n <= 0:
            return b""
        return self._read(offset, n)

    @abstractmethod
    def _read(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset``; the range is inside the source and not empty."""

    def try_read_at(self, offset: int, n: int) -> Buffer | None:
        """What ``read_at`` would return, if it can be had now without waiting; else None.

        For callers that must not block (the FUSE event loop): a source answers here only
        from memory (holes, caches, the kernel's page cache), never by waiting on a disk or a
        network.  None means "ask ``read_at`` in a thread"; errors are left to ``read_at`` too.
        The answer may be a view (zeros, a slice) rather than ``bytes``.
        """
        if offset < 0 or n < 0:
            return None
        n = min(n, self.size - offset)
        if n <= 0:
            return b""
        return self._try_read(offset, n)

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        """``_read`` if it needs no waiting; the default never knows, so always None."""
        return None

    def spans(self, offset: int = 0, length: int | None = None) -> Iterator[Span]:
        """Data and holes covering ``[offset, offset+length)`` clipped to the source, in order.

        Adjacent spans of the same kind are merged.  The default knows no holes.
        """
        start, end = self._clip(offset, length)
        if end > start:
            yield Span(start, end - start, True)

    def _clip(self, offset: int, length: int | None) -> tuple[int, int]:
        if offset < 0 or (length is not None and length < 0):
            raise OutOfRangeError(f"negative range ({offset}, {length})", source=self.name)
        end = self.size if length is None else min(self.size, offset + length)
        return min(offset, self.size), end

    def direct(self, offset: int, n: int) -> tuple[int, int] | None:
        """``(fd, file offset)`` of a local file holding exactly these bytes, or None.

        Lets a whole-disk copy move flat data in the kernel (``copy_file_range``).
        """
        return None

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release what the source holds (file descriptors, connections)."""

    def __enter__(self) -> ByteSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} size={self.size}>"


class Location(ABC):
    """Where a file lives (a path, a datastore URL): it opens itself and names its siblings."""

    name: str

    @abstractmethod
    def open(self) -> ByteSource:
        """Open the file; raise NotFoundError / AccessDeniedError / ReadError as fits."""

    @abstractmethod
    def sibling(self, name: str) -> Location:
        """The file ``name`` relative to this file's directory (an absolute name is kept)."""

    def __str__(self) -> str:
        return self.name


def assemble(parts: list[Buffer], start: int, n: int) -> Buffer:
    """``n`` bytes from ``start`` in ``parts`` laid end to end, copied once at most (a single
    part gives a view of it)."""
    if len(parts) == 1:
        part = parts[0]
        if start == 0 and len(part) == n:
            return part
        return memoryview(part)[start : start + n]
    views = [memoryview(p) for p in parts]
    views[0] = views[0][start:]
    excess = sum(len(v) for v in views) - n
    if excess > 0:
        views[-1] = views[-1][: len(views[-1]) - excess]
    return b"".join(views)


def read_exact(source: ByteSource, offset: int, n: int, what: str) -> bytes:
    """``n`` bytes at ``offset`` or a CorruptError naming ``what`` was cut short."""
    data = source.read_at(offset, n)
    if len(data) != n:
        raise CorruptError(
            f"{what} is truncated: needs {n} bytes, file ends after {len(data)}",
            source=source.name,
            offset=offset,
        )
    return data


def coalesce(spans: Iterable[Span]) -> Iterator[Span]:
    """Merge adjacent spans of the same kind and drop empty ones."""
    cur: Span | None = None
    for s in spans:
        if s.length <= 0:
            continue
        if cur is not None and cur.allocated == s.allocated and cur.end == s.offset:
            cur = Span(cur.offset, cur.length + s.length, cur.allocated)
            continue
        if cur is not None:
            yield cur
        cur = s
    if cur is not None:
        yield cur


class ZeroSource(ByteSource):
    """``size`` bytes of zeros, all hole: the bottom of every delta chain, ZERO extents."""

    def __init__(self, size: int, name: str = "<zeros>"):
        self.size = size
        self.name = name

    def _read(self, offset: int, n: int) -> bytes:
        return bytes(n)

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        return zeros(n)

    def spans(self, offset: int = 0, length: int | None = None) -> Iterator[Span]:
        start, end = self._clip(offset, length)
        if end > start:
            yield Span(start, end - start, False)


class SliceSource(ByteSource):
    """A window ``[start, start+size)`` of another source: a partition, a FLAT extent."""

    def __init__(self, base: ByteSource, start: int, size: int, name: str | None = None):
        if start < 0 or size < 0:
            raise OutOfRangeError(f"negative slice ({start}, {size})", source=base.name)
        self.base = base
        self.start = start
        self.size = size
        self.name = name or f"{base.name}[{start}:{start + size}]"

    def _read(self, offset: int, n: int) -> bytes:
        return self.base.read_at(self.start + offset, n)

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        return self.base.try_read_at(self.start + offset, n)

    def spans(self, offset: int = 0, length: int | None = None) -> Iterator[Span]:
        start, end = self._clip(offset, length)
        for s in self.base.spans(self.start + start, end - start):
            yield Span(s.offset - self.start, s.length, s.allocated)

    def direct(self, offset: int, n: int) -> tuple[int, int] | None:
        if offset < 0 or offset + n > self.size:
            return None
        return self.base.direct(self.start + offset, n)

    def close(self) -> None:
        """A slice does not own its base; closing the base is its opener's job."""


class OwnedSources:
    """A thread-safe set of sources closed together: what a disk opened, it closes once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[ByteSource] = []

    def add(self, source: ByteSource) -> ByteSource:
        with self._lock:
            self._sources.append(source)
        return source

    def close(self) -> None:
        with self._lock:
            sources, self._sources = self._sources, []
        for s in reversed(sources):
            s.close()
