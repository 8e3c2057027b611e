"""Hosted sparse extents (magic ``KDMV``, versions 1-3), streamOptimized included.

Layout: a 512-byte header; an optional embedded descriptor; a grain directory (GD) of 32-bit
sector offsets of grain tables (GT); GTs of ``num_gtes`` 32-bit sector offsets of grains.  A GTE
of 0 is a grain this layer does not hold (a delta falls through to its parent); 1 is a zero grain
when the header says zero GTEs are in use.  A redundant GD (and its GTs) may back the primary one.

streamOptimized files (flags: compressed, markers) put the real header in a footer near the end
(``gd_offset`` is GD_AT_END in the first header); each grain is a marker (LBA, compressed size)
followed by a deflate stream.  Decompressed grains are kept in a small LRU, so small sequential
reads do not inflate one grain many times.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from dataclasses import dataclass

from vcbfs.blocks.budget import BUDGET, weigh_array, weigh_bytes
from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import Buffer, ByteSource, read_exact
from vcbfs.blocks.vmdk.extent import SECTOR, GrainExtent, Kind, Run, WouldWait, le_table
from vcbfs.errors import CorruptError, UnsupportedError

__all__ = ["SPARSE_MAGIC", "SparseExtent", "SparseHeader", "read_sparse_header"]

SPARSE_MAGIC = b"KDMV"
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAG_NEWLINE_TEST = 1 << 0
FLAG_REDUNDANT_GD = 1 << 1
FLAG_ZERO_GTE = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
COMPRESS_DEFLATE = 1
MARKER_FOOTER = 3
MARKER_EOS = 0
MAX_GRAIN_SECTORS = 1 << 16  # 32 MiB grains: far beyond any tool's, still a bounded buffer
MAX_GTES = 1 << 16
MAX_CAPACITY_SECTORS = 1 << 45  # 16 PiB
MAX_DESCRIPTOR_SECTORS = 2048  # 1 MiB
TABLE_CACHE_BYTES = 32 << 20  # grain tables for 512 GiB of 64 KiB grains
GRAIN_CACHE_BYTES = 8 << 20

_HEADER = struct.Struct("<4sIIQQQQIQQQB4cH")
_MARKER = struct.Struct("<QII")


@dataclass(frozen=True, slots=True)
class SparseHeader:
    version: int
    flags: int
    capacity: int  # sectors
    grain_sectors: int
    descriptor_offset: int  # sectors
    descriptor_sectors: int
    num_gtes: int
    rgd_offset: int  # sectors
    gd_offset: int  # sectors
    overhead: int
    compress_algorithm: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def markers(self) -> bool:
        return bool(self.flags & FLAG_MARKERS)


def _parse_header(raw: bytes, source: str, offset: int) -> SparseHeader:
    (
        magic,
        version,
        flags,
        capacity,
        grain,
        desc_off,
        desc_sz,
        gtes,
        rgd,
        gd,
        overhead,
        _unclean,
        _c1,
        _c2,
        _c3,
        _c4,
        algo,
    ) = _HEADER.unpack_from(raw)
    if magic != SPARSE_MAGIC:
        raise CorruptError(
            "not a hosted sparse extent (no KDMV magic)", source=source, offset=offset
        )
    if version not in (1, 2, 3):
        raise UnsupportedError(f"hosted sparse version {version} is not known", source=source)
    return SparseHeader(
        version, flags, capacity, grain, desc_off, desc_sz, gtes, rgd, gd, overhead, algo
    )


def read_sparse_header(file: ByteSource) -> SparseHeader:
    """The effective header: the first one, or the footer's when the GD is at the end."""
    header = _parse_header(read_exact(file, 0, SECTOR, "sparse header"), file.name, 0)
    if header.gd_offset == GD_AT_END:
        if file.size < 3 * SECTOR:
            raise CorruptError("streamOptimized file too short for a footer", source=file.name)
        at = file.size - 3 * SECTOR
        tail = read_exact(file, at, 3 * SECTOR, "streamOptimized footer")
        _lba, _size, mtype = _MARKER.unpack_from(tail, 0)
        if mtype != MARKER_FOOTER:
            raise CorruptError("streamOptimized footer marker missing", source=file.name, offset=at)
        header = _parse_header(tail[SECTOR : 2 * SECTOR], file.name, at + SECTOR)
        if header.gd_offset == GD_AT_END:
            raise CorruptError("streamOptimized footer has no grain directory", source=file.name)
    _validate(header, file)
    return header


def _validate(h: SparseHeader, file: ByteSource) -> None:
    def bad(why: str) -> CorruptError:
        return CorruptError(why, source=file.name)

    g = h.grain_sectors
    if g < 1 or g > MAX_GRAIN_SECTORS or g & (g - 1):
        raise bad(f"grain size {g} sectors is not a power of two in 1..{MAX_GRAIN_SECTORS}")
    if h.capacity > MAX_CAPACITY_SECTORS:
        raise bad(f"capacity {h.capacity} sectors is absurd")
    if not 1 <= h.num_gtes <= MAX_GTES:
        raise bad(f"{h.num_gtes} entries per grain table is out of range")
    if h.compressed and h.compress_algorithm != COMPRESS_DEFLATE:
        raise UnsupportedError(f"compression algorithm {h.compress_algorithm}", source=file.name)
    if h.descriptor_sectors > MAX_DESCRIPTOR_SECTORS:
        raise bad(f"embedded descriptor of {h.descriptor_sectors} sectors is too large")
    limit = file.size // SECTOR
    if h.descriptor_sectors and h.descriptor_offset + h.descriptor_sectors > limit:
        raise bad("embedded descriptor lies outside the file")
    if h.capacity and not 0 < h.gd_offset < limit:
        raise bad(f"grain directory at sector {h.gd_offset} lies outside the file")


def read_embedded_descriptor(file: ByteSource, header: SparseHeader) -> bytes | None:
    """The descriptor text a monolithicSparse/streamOptimized file carries, if any.

    Extents of split disks reserve room for one but leave it empty: that is no descriptor.
    """
    if not header.descriptor_offset or not header.descriptor_sectors:
        return None
    text = read_exact(
        file,
        header.descriptor_offset * SECTOR,
        header.descriptor_sectors * SECTOR,
        "embedded descriptor",
    )
    return text if text.strip(b"\0 \t\r\n") else None


class SparseExtent(GrainExtent):
    """A SPARSE extent: one hosted sparse (or streamOptimized) file."""

    type_name = "SPARSE"

    def __init__(self, file: ByteSource, size: int, header: SparseHeader | None = None):
        self._attach(file, size)
        self.header = h = header or read_sparse_header(file)
        if h.capacity * SECTOR < size:
            raise CorruptError(
                f"sparse header capacity {h.capacity} sectors is smaller than the descriptor's "
                f"{size // SECTOR}",
                source=file.name,
            )
        self.grain_size = h.grain_sectors * SECTOR
        self.merge_data = not h.compressed
        self._zero_gte = bool(h.flags & FLAG_ZERO_GTE)
        self._gt_span = h.num_gtes * self.grain_size
        self._gd_entries = -(-h.capacity * SECTOR // self._gt_span) if h.capacity else 0
        self._gd = self._read_directory(h.gd_offset, "grain directory")
        self._rgd: array[int] | None = None
        if h.flags & FLAG_REDUNDANT_GD and h.rgd_offset and not h.compressed:
            try:
                self._rgd = self._read_directory(h.rgd_offset, "redundant grain directory")
            except CorruptError:
                self._rgd = None
        self._tables: LRU[int, array[int]] = LRU(TABLE_CACHE_BYTES, weigh_array)
        self._grains: LRU[int, bytes] = LRU(GRAIN_CACHE_BYTES, weigh_bytes)

    def _read_directory(self, sector: int, what: str) -> array[int]:
        nbytes = self._gd_entries * 4
        if nbytes > 64 << 20:
            raise CorruptError(
                f"{what} of {self._gd_entries} entries is too large", source=self.name
            )
        BUDGET.hold(self, nbytes, f"the {what} of {self.name}")
        raw = read_exact(self.file, sector * SECTOR, nbytes, what) if nbytes else b""
        return le_table(raw, 4)

    def _table(self, gd_index: int, wait: bool = True) -> array[int] | None:
        """The grain table for ``gd_index`` (None if absent), from the primary GD or the RGD."""
        table = self._tables.get(gd_index)
        if table is not None:
            return table
        if not wait and self._gd[gd_index] != 0:
            raise WouldWait
        errors: list[CorruptError] = []
        for directory in (self._gd, self._rgd):
            if directory is None:
                continue
            sector = directory[gd_index]
            if sector == 0:
                return None
            nbytes = self.header.num_gtes * 4
            loc = sector * SECTOR
            if loc + nbytes > self.file.size:
                errors.append(
                    CorruptError(
                        f"grain table {gd_index} lies outside the file",
                        source=self.name,
                        offset=loc,
                    )
                )
                continue
            table = le_table(self.file.read_at(loc, nbytes), 4)
            self._tables.put(gd_index, table)
            return table
        raise errors[0]

    def _grain(self, index: int, wait: bool = True) -> tuple[Kind, int]:
        gd_index, gt_index = divmod(index, self.header.num_gtes)
        if gd_index >= self._gd_entries:
            raise CorruptError(f"grain {index} is beyond the grain directory", source=self.name)
        table = self._table(gd_index, wait)
        if table is None:
            return Kind.ABSENT, -1
        sector = table[gt_index]
        if sector == 0:
            return Kind.ABSENT, -1
        if sector == 1 and self._zero_gte:
            return Kind.ZERO, -1
        return Kind.DATA, self._check_grain_loc(sector * SECTOR, index)

    def read_run(self, run: Run) -> bytes:
        if self.merge_data:
            return super().read_run(run)
        gs = self.grain_size
        index = run.offset // gs
        within = run.offset - index * gs
        grain = self._grains.get(index)
        if grain is None:
            grain = self._inflate(run.loc - within, index)
            self._grains.put(index, grain)
        return grain[within : within + run.length]

    def try_read_run(self, run: Run) -> Buffer | None:
        if self.merge_data:
            return super().try_read_run(run)
        gs = self.grain_size
        index = run.offset // gs
        within = run.offset - index * gs
        grain = self._grains.get(index)
        return None if grain is None else grain[within : within + run.length]

    def _inflate(self, loc: int, index: int) -> bytes:
        """Decompress grain ``index`` whose marker (or stream) starts at byte ``loc``."""
        gs = self.grain_size
        if self.header.markers:
            # One read for marker and payload: deflate never grows a grain by more than a few
            # bytes per 16 KiB, so this almost always holds the whole compressed grain.
            head = self.file.read_at(loc, 12 + gs + 512)
            if len(head) < 12:
                raise CorruptError("grain marker is truncated", source=self.name, offset=loc)
            lba, csize = struct.unpack_from("<QI", head)
            if lba != index * self.header.grain_sectors:
                raise CorruptError(
                    f"grain marker says LBA {lba}, grain {index} expected",
                    source=self.name,
                    offset=loc,
                )
            if csize == 0 or csize > 2 * gs + 4096:
                raise CorruptError(
                    f"compressed grain size {csize} is out of range", source=self.name, offset=loc
                )
            payload = head[12 : 12 + csize]
            if len(payload) < csize:
                payload = read_exact(self.file, loc + 12, csize, "compressed grain")
        else:
            payload = self.file.read_at(loc, 2 * gs + 4096)
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(payload, gs)
        except zlib.error as exc:
            raise CorruptError(
                f"grain {index} does not inflate: {exc}", source=self.name, offset=loc
            ) from None
        if inflater.unconsumed_tail:
            raise CorruptError(
                f"grain {index} inflates to more than {gs} bytes", source=self.name, offset=loc
            )
        if len(data) < gs:
            data += bytes(gs - len(data))
        return data

    def describe(self) -> dict[str, object]:
        h = self.header
        info: dict[str, object] = {
            **super().describe(),
            "version": h.version,
            "grain_size": self.grain_size,
        }
        if h.compressed:
            info["compressed"] = "deflate"
        return info
