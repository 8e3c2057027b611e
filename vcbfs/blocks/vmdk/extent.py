"""What every VMDK extent is: a map from its part of the virtual disk to bytes in its file.

An extent answers ``map(offset, length)`` with runs of three kinds: DATA (bytes stored in this
extent's file), ZERO (known zeros: a ZERO extent, a zero grain) and ABSENT (not stored in this
layer: a delta disk falls through to its parent there).  The disk layer composes runs of the
layers of a chain; the extents know nothing of parents.

``GrainExtent`` is the shared shape of all grain-mapped formats (hosted sparse, COWD, SEsparse):
subclasses say where one grain lives, the base turns that into coalesced runs.
"""

from __future__ import annotations

import enum
import sys
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from vcbfs.blocks.source import Buffer, ByteSource, read_exact
from vcbfs.errors import CorruptError, OutOfRangeError

__all__ = [
    "Extent",
    "FlatExtent",
    "GrainExtent",
    "Kind",
    "Run",
    "WouldWait",
    "ZeroExtent",
    "le_table",
]


_CODES = {4: "I" if array("I").itemsize == 4 else "L", 8: "Q"}


def le_table(raw: bytes, width: int) -> array[int]:
    """Little-endian unsigned integers of ``width`` bytes (4 or 8): a grain directory or table.
    A trailing partial entry is ignored."""
    table = array(_CODES[width])
    table.frombytes(raw[: len(raw) - len(raw) % width])
    if sys.byteorder == "big":  # pragma: no cover - every platform we run on is little-endian
        table.byteswap()
    return table


SECTOR = 512


class Kind(enum.Enum):
    DATA = "data"
    ZERO = "zero"
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class Run:
    """``length`` bytes at extent-relative ``offset``; for DATA, ``loc`` is where in the file."""

    offset: int
    length: int
    kind: Kind
    loc: int = -1


class Extent(ABC):
    """One extent line of a descriptor, opened."""

    #: the descriptor's name for this extent type (FLAT, SPARSE, VMFSSPARSE, ...)
    type_name: str = "?"
    name: str
    size: int  # bytes of the virtual disk this extent covers
    file: ByteSource | None = None

    @abstractmethod
    def map(self, offset: int, length: int) -> Iterator[Run]:
        """Runs covering ``[offset, offset+length)`` (inside the extent), in order."""

    def allocation(self, offset: int, length: int) -> Iterator[Run]:
        """Like ``map``, but DATA that the file itself knows to be a hole is reported ZERO.

        For the allocation map only (a thin flat file on NFS is sparse); reads use ``map``.
        """
        return self.map(offset, length)

    def map_nowait(self, offset: int, length: int) -> Iterator[Run] | None:
        """``map`` if it needs no I/O (no table to read), else None.  The default: None."""
        return None

    def read_run(self, run: Run) -> bytes:
        """The bytes of a DATA run that ``map`` returned."""
        assert self.file is not None
        return read_exact(self.file, run.loc, run.length, f"{self.type_name} extent data")

    def try_read_run(self, run: Run) -> Buffer | None:
        """``read_run`` if the bytes are at hand without waiting, else None."""
        if self.file is None:
            return None
        data = self.file.try_read_at(run.loc, run.length)
        return data if data is not None and len(data) == run.length else None

    def describe(self) -> dict[str, object]:
        """Facts for ``vcbfs disk info``."""
        return {"type": self.type_name, "file": self.name, "size": self.size}

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class FlatExtent(Extent):
    """FLAT / VMFS: the extent's bytes lie in order in its file, from ``start``."""

    def __init__(self, file: ByteSource, size: int, start: int = 0, type_name: str = "FLAT"):
        self.file = file
        self.name = file.name
        self.size = size
        self.start = start
        self.type_name = type_name
        if start + size > file.size:
            raise CorruptError(
                f"{type_name} extent needs {start + size} bytes but the file has {file.size}",
                source=file.name,
            )

    def map(self, offset: int, length: int) -> Iterator[Run]:
        if length > 0:
            yield Run(offset, length, Kind.DATA, self.start + offset)

    def map_nowait(self, offset: int, length: int) -> Iterator[Run] | None:
        return self.map(offset, length)

    def allocation(self, offset: int, length: int) -> Iterator[Run]:
        assert self.file is not None
        for span in self.file.spans(self.start + offset, length):
            kind = Kind.DATA if span.allocated else Kind.ZERO
            yield Run(span.offset - self.start, span.length, kind, span.offset)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "offset": self.start}


class ZeroExtent(Extent):
    """ZERO: reads as zeros, stores nothing."""

    type_name = "ZERO"

    def __init__(self, size: int):
        self.size = size
        self.name = "<zero>"

    def map(self, offset: int, length: int) -> Iterator[Run]:
        if length > 0:
            yield Run(offset, length, Kind.ZERO)

    def map_nowait(self, offset: int, length: int) -> Iterator[Run] | None:
        return self.map(offset, length)


class WouldWait(Exception):
    """A grain table is not in memory and ``wait`` was False: map it from a worker thread."""


class GrainExtent(Extent):
    """A grain-mapped extent: fixed-size grains, each DATA at some file offset, ZERO or ABSENT.

    Subclasses set ``grain_size`` (bytes) and implement ``_grain``.  Contiguous DATA grains are
    merged into one run (one read) unless ``merge_data`` is False (compressed grains).

    ``map_nowait`` answers from the grain tables already in memory, so a snapshot chain whose
    tables are cached is served on the event loop like a flat disk; a missing table makes it
    return None (the read then goes to a worker thread, which loads the table).
    """

    grain_size: int
    merge_data: bool = True

    def _attach(self, file: ByteSource, size: int) -> ByteSource:
        """Take the extent's file and size (checked); return the file, typed as present."""
        if size < 0:
            raise OutOfRangeError(f"negative extent size {size}", source=file.name)
        self.file = file
        self.name = file.name
        self.size = size
        return file

    @abstractmethod
    def _grain(self, index: int, wait: bool = True) -> tuple[Kind, int]:
        """Kind and file byte offset (DATA only, else -1) of grain ``index``.  With ``wait``
        False, raise WouldWait rather than read a grain table."""

    def _check_grain(self, index: int) -> None:
        if index < 0 or index * self.grain_size >= self.size:
            raise OutOfRangeError(f"grain {index} is outside the extent", source=self.name)

    def map(self, offset: int, length: int) -> Iterator[Run]:
        return self._map(offset, length, True)

    def map_nowait(self, offset: int, length: int) -> Iterator[Run] | None:
        try:
            return iter(list(self._map(offset, length, False)))
        except WouldWait:
            return None

    def _map(self, offset: int, length: int, wait: bool) -> Iterator[Run]:
        gs = self.grain_size
        end = offset + length
        pos = offset
        pending: Run | None = None
        while pos < end:
            index = pos // gs
            within = pos - index * gs
            n = min(gs - within, end - pos)
            kind, loc = self._grain(index, wait)
            if kind is Kind.DATA:
                loc += within
            if pending is not None:
                if pending.kind is kind and (
                    kind is not Kind.DATA
                    or (self.merge_data and pending.loc + pending.length == loc)
                ):
                    pending = Run(pending.offset, pending.length + n, kind, pending.loc)
                    pos += n
                    continue
                yield pending
            pending = Run(pos, n, kind, loc)
            pos += n
        if pending is not None:
            yield pending

    def _check_grain_loc(self, loc: int, index: int) -> int:
        """A grain's byte offset, checked to lie inside the file."""
        assert self.file is not None
        if loc < 0 or loc + (self.grain_size if self.merge_data else 1) > self.file.size:
            raise CorruptError(
                f"grain {index} points outside the file (to byte {loc}, file has {self.file.size})",
                source=self.name,
            )
        return loc
