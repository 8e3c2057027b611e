"""WOF ("compact OS") files: their content, decoded from the WofCompressedData stream.

Windows 10's ``compact /exe`` and Compact OS leave a file's unnamed $DATA sparse (its size is
the file's size, nothing is allocated) and put the data, compressed, in a named stream
``WofCompressedData``; a reparse point (tag 0x80000017) tells the WOF filter which algorithm.
Reparse data: WOF_EXTERNAL_INFO {version 1, provider}, then for provider 2 (FILE)
FILE_PROVIDER_EXTERNAL_INFO_V1 {version 1, algorithm} (16 bytes in all; the structure's Flags
field belongs to the ioctl that compresses and is not stored).  Provider 1 (WIM) keeps the data
in a WIM file outside the volume: that is refused with a reason, never read as zeros.

The stream is a chunk-offset table, then the chunks.  A file of N chunks has N-1 entries (the
first chunk starts at 0), each the end of a chunk relative to the table's end: 4 bytes, or 8
when the file's size is 4 GiB or more.  Every chunk stands for ``chunk_size`` bytes of the file
(the last for the rest); one whose stored size equals that is stored raw.  The table is read a
page at a time and every entry is checked before use; decoded chunks are kept in a small LRU
so that a reader going through a chunk in small steps decodes it once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from vcbfs.blocks.budget import weigh_bytes
from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import Buffer, ByteSource, assemble
from vcbfs.errors import CorruptError, UnavailableError
from vcbfs.ntfs.compression import lzx_chunk, xpress_huffman_chunk

__all__ = ["STREAM", "WofInfo", "WofStream", "parse_wof"]

STREAM = "WofCompressedData"
PROVIDER_WIM = 1
PROVIDER_FILE = 2
Decoder = Callable[[Buffer, int, int, "str | None"], bytes]
#: algorithm -> (name, chunk size, decoder)
ALGORITHMS: dict[int, tuple[str, int, Decoder]] = {
    0: ("XPRESS4K", 4096, xpress_huffman_chunk),
    1: ("LZX", 32768, lzx_chunk),
    2: ("XPRESS8K", 8192, xpress_huffman_chunk),
    3: ("XPRESS16K", 16384, xpress_huffman_chunk),
}
TABLE_PAGE = 4096  # bytes of the chunk table read at once
CHUNK_CACHE_BYTES = 2 << 20


def _weigh_page(page: tuple[int, ...]) -> int:
    """A tuple of ints: a pointer and a 32-byte int object each (measured: 40 bytes an entry)."""
    return 56 + 40 * len(page)


PAGE_WEIGHT = _weigh_page((0,) * (TABLE_PAGE // 4))


class WofInfo(NamedTuple):
    provider: int
    algorithm: int  # meaningful for the FILE provider only

    @property
    def algorithm_name(self) -> str:
        return ALGORITHMS[self.algorithm][0] if self.algorithm in ALGORITHMS else "?"


def parse_wof(data: bytes, source: str | None = None) -> WofInfo:
    """The provider and algorithm of a WOF reparse point; refused where vcbfs cannot read."""
    if len(data) < 8:
        raise CorruptError("WOF reparse data is truncated", source=source)
    version, provider = struct.unpack_from("<II", data)
    if version != 1:
        raise UnavailableError(f"WOF reparse data of version {version} is unknown", source=source)
    if provider == PROVIDER_WIM:
        raise UnavailableError(
            "it is a WIM-backed WOF file (its data is in a WIM image outside the volume); "
            "read it on the guest",
            source=source,
        )
    if provider != PROVIDER_FILE:
        raise UnavailableError(f"WOF provider {provider} is unknown", source=source)
    if len(data) < 16:
        raise CorruptError("WOF file-provider data is truncated", source=source)
    file_version, algorithm = struct.unpack_from("<II", data, 8)
    if file_version != 1 or algorithm not in ALGORITHMS:
        raise UnavailableError(
            f"WOF file provider version {file_version}, algorithm {algorithm} is unknown",
            source=source,
        )
    return WofInfo(provider, algorithm)


class WofStream(ByteSource):
    """A WOF file's content, ``size`` bytes, decoded from its WofCompressedData stream."""

    def __init__(self, raw: ByteSource, size: int, algorithm: int, name: str):
        self.raw = raw
        self.size = size
        self.name = name
        self.algorithm, self.chunk, self._decode = ALGORITHMS[algorithm]
        self.count = -(-size // self.chunk)
        self.entry = 8 if size >= 1 << 32 else 4
        self.table = max(self.count - 1, 0) * self.entry
        if raw.size < self.table or (size and raw.size == self.table):
            raise CorruptError(
                f"{STREAM} holds {raw.size} bytes, less than its chunk table of {self.table} "
                f"and some data",
                source=name,
            )
        self.data_size = raw.size - self.table
        self._pages: LRU[int, tuple[int, ...]] = LRU(64 * PAGE_WEIGHT, _weigh_page)
        self._chunks: LRU[int, bytes] = LRU(CHUNK_CACHE_BYTES, weigh_bytes)

    def _end(self, i: int) -> int:
        """Where chunk ``i`` ends, relative to the table's end."""
        if i >= self.count - 1:
            return self.data_size
        page_no, at = divmod(i, TABLE_PAGE // self.entry)
        return self._page(page_no)[at]

    def check_table(self) -> None:
        """Check every chunk's extent once, when the file is opened: a damaged table then
        fails the open (EIO before any byte is served) instead of a read part-way through.
        Costs one read of the table: 4 or 8 bytes per 4-32 KiB of the file."""
        pos = 0
        per = TABLE_PAGE // self.entry
        for page_no in range(-(-self.table // TABLE_PAGE)):
            first = page_no * per
            for at, end in enumerate(self._page(page_no)):
                i = first + at
                size = min(self.chunk, self.size - i * self.chunk)
                if not pos < end <= self.data_size or end - pos > size:
                    self._bounds(i)  # raises, naming the chunk
                pos = end
        if self.count:
            self._bounds(self.count - 1)

    def _page(self, page_no: int) -> tuple[int, ...]:
        page = self._pages.get(page_no)
        if page is None:
            start = page_no * TABLE_PAGE
            raw = self.raw.read_at(start, min(TABLE_PAGE, self.table - start))
            page = struct.unpack(f"<{len(raw) // self.entry}{'Q' if self.entry == 8 else 'I'}", raw)
            self._pages.put(page_no, page)
        return page

    def _bounds(self, i: int) -> tuple[int, int, int]:
        """(start, stored size, decoded size) of chunk ``i``, every value checked."""
        start = self._end(i - 1) if i else 0
        end = self._end(i)
        size = min(self.chunk, self.size - i * self.chunk)
        if not start <= end <= self.data_size or end == start or end - start > size:
            raise CorruptError(
                f"chunk {i} of {self.count}: the chunk table gives bytes {start}-{end} for "
                f"{size} bytes of data in {self.data_size} bytes of chunks",
                source=self.name,
            )
        return start, end - start, size

    def _read(self, offset: int, n: int) -> bytes:
        first, last = offset // self.chunk, (offset + n - 1) // self.chunk
        parts = [self._chunks.get(i) for i in range(first, last + 1)]
        missing = [first + k for k, p in enumerate(parts) if p is None]
        if missing:
            # The chunks are contiguous in the stream: one read for all that are not at hand.
            lo, hi = missing[0], missing[-1]
            base = self._bounds(lo)[0]
            bounds = [self._bounds(i) for i in range(lo, hi + 1)]
            stored = self.raw.read_at(self.table + base, bounds[-1][0] + bounds[-1][1] - base)
            for i, (start, length, size) in zip(range(lo, hi + 1), bounds, strict=True):
                if parts[i - first] is not None:
                    continue
                piece = memoryview(stored)[start - base : start - base + length]
                data = (
                    bytes(piece)
                    if length == size
                    else self._decode(
                        piece, size, self.chunk, f"{self.name}: {self.algorithm} chunk {i}"
                    )
                )
                self._chunks.put(i, data)
                parts[i - first] = data
        return bytes(assemble(parts, offset - first * self.chunk, n))  # type: ignore[arg-type]

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        first, last = offset // self.chunk, (offset + n - 1) // self.chunk
        parts = []
        for i in range(first, last + 1):
            data = self._chunks.get(i)
            if data is None:
                return None
            parts.append(data)
        return assemble(parts, offset - first * self.chunk, n)
