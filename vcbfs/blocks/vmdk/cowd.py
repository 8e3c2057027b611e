"""COWD (VMFSSPARSE) extents: the "-delta.vmdk" redo logs of ESX snapshots before vSphere 6.5.

A COWD file is a 2048-byte header, a grain directory (GD) of 32-bit sector numbers of grain
tables, grain tables (GTs) of exactly 4096 32-bit sector numbers of grains, and the grains; all
little-endian, all counted in 512-byte sectors.  A zero GD entry means that whole table is
absent and a zero GT entry means that grain is absent: both fall through to the parent disk.

The header layout is VMware's ``COWDisk_Header`` (as documented by libvmdk and read by qemu's
``vmdk_open_vmfs_sparse``).  A redo log is whatever a host left behind when it crashed, so every
count and offset is checked against the extent and the file before it is used.
"""

from __future__ import annotations

import struct
from array import array

from vcbfs.blocks.budget import BUDGET, weigh_array
from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import ByteSource, read_exact
from vcbfs.blocks.vmdk.extent import SECTOR, GrainExtent, Kind, WouldWait, le_table
from vcbfs.errors import CorruptError, UnsupportedError

__all__ = ["COWD_MAGIC", "CowdExtent"]

COWD_MAGIC = b"COWD"
HEADER_SIZE = 2048
HEADER_SECTORS = HEADER_SIZE // SECTOR
GTES_PER_GT = 4096
GT_BYTES = GTES_PER_GT * 4
KNOWN_FLAGS = 0x3  # VMware always writes 3; other bits have no documented meaning
MAX_GRAIN_SECTORS = 1 << 16  # ESX writes 1; anything past 32 MiB is garbage, not a grain
DEFAULT_CACHE_BYTES = 8 << 20

# magic, version, flags, numSectors, grainSize, gdOffset, numGDEntries, freeSector
_FIXED = struct.Struct("<4s7I")
_PARENT_NAME = slice(32, 32 + 1024)
_TAIL = struct.Struct("<I")  # parentGeneration @1056, generation @1060, savedGeneration @1636, ...


def _u32(header: bytes, offset: int) -> int:
    return _TAIL.unpack_from(header, offset)[0]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _text(raw: bytes) -> str | None:
    """A NUL-terminated name from the header, or None if empty or not text (root geometry)."""
    raw = raw.split(b"\0", 1)[0]
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    if any(ord(c) < 0x20 or c == "\ufffd" for c in text):
        return None
    return text


class CowdExtent(GrainExtent):
    """A VMFSSPARSE extent: grains of this redo log, ABSENT where the parent shows through."""

    type_name = "VMFSSPARSE"

    def __init__(self, file: ByteSource, size: int, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self._src = self._attach(file, size)
        header = self._read_header(file)
        (_, version, flags, sectors, grain, gd_offset, gd_entries, free) = _FIXED.unpack_from(
            header
        )
        self.version = version
        self.flags = flags
        self.capacity = sectors * SECTOR
        self.next_free_sector = free
        self.parent_file_name = _text(header[_PARENT_NAME])
        self.parent_generation = _u32(header, 1056)
        self.generation = _u32(header, 1060)
        self.disk_name = _text(header[1064 : 1064 + 60])
        self.saved_generation = _u32(header, 1636)
        self.unclean_shutdown = _u32(header, 1648) != 0

        if version != 1:
            raise UnsupportedError(f"COWD version {version} (only 1 is known)", source=self.name)
        if flags & ~KNOWN_FLAGS:
            raise UnsupportedError(f"COWD header has unknown flags {flags:#x}", source=self.name)
        if grain == 0 or grain > MAX_GRAIN_SECTORS or grain & (grain - 1):
            raise CorruptError(
                f"COWD grain size of {grain} sectors is not a power of two up to "
                f"{MAX_GRAIN_SECTORS}",
                source=self.name,
                offset=16,
            )
        if sectors == 0 or self.capacity < size:
            raise CorruptError(
                f"COWD capacity of {sectors} sectors does not cover the extent's {size} bytes",
                source=self.name,
                offset=12,
            )
        self.grain_size = grain * SECTOR
        coverage = GTES_PER_GT * grain  # sectors one grain table maps
        needed = _ceil_div(_ceil_div(size, SECTOR), coverage)  # tables the extent needs
        most = _ceil_div(sectors, coverage)  # tables the capacity needs
        most_padded = _ceil_div(most * 4, SECTOR) * SECTOR // 4  # ... in whole GD sectors
        if not needed <= gd_entries <= most_padded:
            raise CorruptError(
                f"COWD grain directory has {gd_entries} entries; the extent needs {needed} "
                f"and the capacity at most {most}",
                source=self.name,
                offset=24,
            )
        gd_start = gd_offset * SECTOR
        if gd_offset < HEADER_SECTORS or gd_start + gd_entries * 4 > file.size:
            raise CorruptError(
                f"COWD grain directory at sector {gd_offset} ({gd_entries} entries) is not "
                f"inside the file of {file.size} bytes after the header",
                source=self.name,
                offset=20,
            )
        BUDGET.hold(self, gd_entries * 4, f"the COWD grain directory of {self.name}")
        self._gd = le_table(read_exact(file, gd_start, gd_entries * 4, "COWD grain directory"), 4)
        self._tables: LRU[int, array[int]] = LRU(max(cache_bytes, GT_BYTES) + 1024, weigh_array)

    @staticmethod
    def _read_header(file: ByteSource) -> bytes:
        head = file.read_at(0, HEADER_SIZE)
        if head[:4] != COWD_MAGIC:
            raise CorruptError(
                f"not a COWD extent: magic {head[:4]!r}, expected {COWD_MAGIC!r}",
                source=file.name,
                offset=0,
            )
        if len(head) < HEADER_SIZE:
            raise CorruptError(
                f"COWD header is truncated: needs {HEADER_SIZE} bytes, file has {len(head)}",
                source=file.name,
                offset=0,
            )
        return head

    def _table(self, gd_index: int, wait: bool = True) -> array[int]:
        table = self._tables.get(gd_index)
        if table is not None:
            return table
        if not wait:
            raise WouldWait
        sector = self._gd[gd_index]
        if sector < HEADER_SECTORS:
            raise CorruptError(
                f"grain directory entry {gd_index} points into the header (sector {sector})",
                source=self.name,
            )
        what = f"COWD grain table {gd_index}"
        table = le_table(read_exact(self._src, sector * SECTOR, GT_BYTES, what), 4)
        self._tables.put(gd_index, table)
        return table

    def _grain(self, index: int, wait: bool = True) -> tuple[Kind, int]:
        self._check_grain(index)
        gs = self.grain_size
        gd_index, gt_index = divmod(index, GTES_PER_GT)
        if self._gd[gd_index] == 0:
            return Kind.ABSENT, -1
        sector = self._table(gd_index, wait)[gt_index]
        if sector == 0:
            return Kind.ABSENT, -1
        loc = sector * SECTOR
        need = min(gs, self.size - index * gs)  # the extent may end inside its last grain
        if sector < HEADER_SECTORS or loc + need > self._src.size:
            raise CorruptError(
                f"grain {index} points outside the file's data (sector {sector}, file has "
                f"{self._src.size} bytes)",
                source=self.name,
            )
        return Kind.DATA, loc

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "version": self.version,
            "flags": self.flags,
            "capacity": self.capacity,
            "grain_size": self.grain_size,
            "grain_tables": len(self._gd),
            "allocated_grain_tables": sum(1 for s in self._gd if s),
            "next_free_sector": self.next_free_sector,
            "generation": self.generation,
            "parent_generation": self.parent_generation,
            "saved_generation": self.saved_generation,
            "unclean_shutdown": self.unclean_shutdown,
            "parent_file_name": self.parent_file_name,
            "disk_name": self.disk_name,
        }
