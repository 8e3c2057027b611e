"""SESPARSE extents: the "-sesparse.vmdk" snapshot files of vSphere 6.5 and later.

An SEsparse file starts with a 512-byte constant header naming, in sectors, where its regions
lie: a volatile header, a journal, the grain directory (GD), a preallocated region holding
every grain table (GT), a free bitmap, a back map and, last, the grains.  Grains are 4 KiB and
a GT holds 4096 entries, so one GT maps 16 MiB.  All entries are 64-bit with a type in the top
nibble:

* GD entry: 0 = no table (the whole 16 MiB falls through to the parent); otherwise the top 32
  bits are ``0x10000000`` and the low 32 bits index a table in the GT region.
* GT entry, by top nibble (as qemu's ``vmdk.c`` reads them): 0 = not allocated, falls through
  (the rest must be 0); 1 = SCSI-unmapped and 2 = zeroed, both read as zeros in this layer;
  3 = allocated, with the grain's index in the grain region split in two: bits 48-59 hold its
  low 12 bits and bits 0-47 its high bits.  Other types are corrupt.

The format is not documented by VMware, so, like qemu, we accept only the one version, grain
and table size we know and refuse unknown flags, reserved fields and a journal needing replay
rather than guess.  Every offset and count is checked against the header and the file.
"""

from __future__ import annotations

import struct
from array import array

from vcbfs.blocks.budget import BUDGET, weigh_array
from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import ByteSource, read_exact
from vcbfs.blocks.vmdk.extent import SECTOR, GrainExtent, Kind, WouldWait, le_table
from vcbfs.errors import CorruptError, UnsupportedError

__all__ = [
    "HEADER_FIELDS",
    "SESPARSE_MAGIC",
    "SESPARSE_VERSION",
    "SeSparseExtent",
    "decode_grain_entry",
    "encode_grain_entry",
]

SESPARSE_MAGIC = 0x00000000CAFEBABE
SESPARSE_VOLATILE_MAGIC = 0x00000000CAFECAFE
SESPARSE_VERSION = 0x0000000200000001
GRAIN_SECTORS = 8
GT_SECTORS = 64
GTES_PER_GT = GT_SECTORS * SECTOR // 8
GT_BYTES = GT_SECTORS * SECTOR
GD_TABLE_BITS = 0x10000000  # top 32 bits of an allocated GD entry
MAX_CAPACITY_SECTORS = 1 << 37  # 64 TiB, the format's limit
MAX_SECTORS = 1 << 40  # no region of a sane file reaches past 512 TiB
DEFAULT_CACHE_BYTES = 8 << 20

GRAIN_UNALLOCATED = 0
GRAIN_UNMAPPED = 1
GRAIN_ZERO = 2
GRAIN_ALLOCATED = 3

_CONST = struct.Struct("<26Q304s")
_VOLATILE = struct.Struct("<4Q480s")
#: the constant header's 26 little-endian u64 fields, in order (then 304 bytes of padding)
HEADER_FIELDS = (
    "magic",
    "version",
    "capacity",
    "grain_size",
    "grain_table_size",
    "flags",
    "reserved1",
    "reserved2",
    "reserved3",
    "reserved4",
    "volatile_header_offset",
    "volatile_header_size",
    "journal_header_offset",
    "journal_header_size",
    "journal_offset",
    "journal_size",
    "grain_dir_offset",
    "grain_dir_size",
    "grain_tables_offset",
    "grain_tables_size",
    "free_bitmap_offset",
    "free_bitmap_size",
    "backmap_offset",
    "backmap_size",
    "grains_offset",
    "grains_size",
)
_REGIONS = (
    "volatile_header",
    "journal_header",
    "journal",
    "grain_dir",
    "grain_tables",
    "free_bitmap",
    "backmap",
)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def decode_grain_entry(entry: int) -> tuple[int, int]:
    """``(type, grain index)`` of a GT entry; the index means something only for type 3."""
    index = ((entry >> 48) & 0xFFF) | ((entry & 0xFFFF_FFFF_FFFF) << 12)
    return entry >> 60, index


def encode_grain_entry(index: int) -> int:
    """The GT entry of an allocated grain at ``index`` in the grain region (inverse of decode)."""
    if not 0 <= index < 1 << 60:
        raise ValueError(f"grain index {index} does not fit an SEsparse entry")
    return (GRAIN_ALLOCATED << 60) | ((index & 0xFFF) << 48) | (index >> 12)


class SeSparseExtent(GrainExtent):
    """A SESPARSE extent: 4 KiB grains that are DATA, ZERO or ABSENT (the parent shows)."""

    type_name = "SESPARSE"

    def __init__(self, file: ByteSource, size: int, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self._src = self._attach(file, size)
        raw = file.read_at(0, _CONST.size)
        if len(raw) < 8 or int.from_bytes(raw[:8], "little") != SESPARSE_MAGIC:
            raise CorruptError(
                f"not an SEsparse extent: magic {raw[:8].hex()}, expected "
                f"{SESPARSE_MAGIC.to_bytes(8, 'little').hex()}",
                source=self.name,
                offset=0,
            )
        if len(raw) < _CONST.size:
            raise CorruptError(
                f"SEsparse header is truncated: needs {_CONST.size} bytes, file has {len(raw)}",
                source=self.name,
                offset=0,
            )
        *values, pad = _CONST.unpack(raw)
        h = dict(zip(HEADER_FIELDS, values, strict=True))
        self.header = h
        self._check_const(h, pad)
        self.capacity = h["capacity"] * SECTOR
        self.grain_size = GRAIN_SECTORS * SECTOR
        self._check_layout(h, file.size)
        self._check_volatile(h)
        self._gt_start = h["grain_tables_offset"] * SECTOR
        self._gt_count = h["grain_tables_size"] // GT_SECTORS
        self._grains_start = h["grains_offset"] * SECTOR
        self._grain_slots = h["grains_size"] // GRAIN_SECTORS
        tables = _ceil_div(_ceil_div(size, self.grain_size), GTES_PER_GT)
        if tables * 8 > h["grain_dir_size"] * SECTOR:
            raise CorruptError(
                f"SEsparse grain directory of {h['grain_dir_size']} sectors cannot map "
                f"{tables} grain tables",
                source=self.name,
                offset=8 * HEADER_FIELDS.index("grain_dir_size"),
            )
        BUDGET.hold(self, tables * 8, f"the SEsparse grain directory of {self.name}")
        gd = read_exact(
            file, h["grain_dir_offset"] * SECTOR, tables * 8, "SEsparse grain directory"
        )
        self._gd = le_table(gd, 8)
        self._tables: LRU[int, array[int]] = LRU(max(cache_bytes, GT_BYTES) + 1024, weigh_array)

    def _check_const(self, h: dict[str, int], pad: bytes) -> None:
        def unsupported(what: str, field: str) -> UnsupportedError:
            return UnsupportedError(what, source=self.name, offset=8 * HEADER_FIELDS.index(field))

        if h["version"] != SESPARSE_VERSION:
            raise unsupported(f"SEsparse version {h['version']:#x}", "version")
        if h["grain_size"] != GRAIN_SECTORS:
            raise unsupported(f"SEsparse grain size of {h['grain_size']} sectors", "grain_size")
        if h["grain_table_size"] != GT_SECTORS:
            raise unsupported(
                f"SEsparse grain table size of {h['grain_table_size']} sectors", "grain_table_size"
            )
        if h["flags"]:
            raise unsupported(f"SEsparse flags {h['flags']:#x}", "flags")
        for f in ("reserved1", "reserved2", "reserved3", "reserved4"):
            if h[f]:
                raise unsupported(f"SEsparse {f} is {h[f]:#x}, not 0", f)
        if any(pad):
            raise UnsupportedError(
                "SEsparse header padding is not zero", source=self.name, offset=_CONST.size - 304
            )
        cap = h["capacity"]
        if not 0 < cap <= MAX_CAPACITY_SECTORS or cap * SECTOR < self.size:
            raise CorruptError(
                f"SEsparse capacity of {cap} sectors does not cover the extent's {self.size} bytes "
                f"or exceeds 64 TiB",
                source=self.name,
                offset=8 * HEADER_FIELDS.index("capacity"),
            )

    def _check_layout(self, h: dict[str, int], file_size: int) -> None:
        """Metadata regions lie inside the file, after the header and before the grains."""
        grains = h["grains_offset"]
        if not 1 <= grains < MAX_SECTORS or h["grains_size"] >= MAX_SECTORS:
            raise CorruptError(
                f"SEsparse grain region ({grains}, {h['grains_size']} sectors) is absurd",
                source=self.name,
                offset=8 * HEADER_FIELDS.index("grains_offset"),
            )
        for region in _REGIONS:
            start, length = h[region + "_offset"], h[region + "_size"]
            if start < 1 or start + length > grains or (start + length) * SECTOR > file_size:
                raise CorruptError(
                    f"SEsparse {region.replace('_', ' ')} (sectors {start}+{length}) is not "
                    f"between the header and the grains (sector {grains}) inside the file of "
                    f"{file_size} bytes",
                    source=self.name,
                    offset=8 * HEADER_FIELDS.index(region + "_offset"),
                )
        if h["volatile_header_size"] < 1:
            raise CorruptError("SEsparse volatile header is empty", source=self.name)

    def _check_volatile(self, h: dict[str, int]) -> None:
        at = h["volatile_header_offset"] * SECTOR
        raw = read_exact(self._src, at, _VOLATILE.size, "SEsparse volatile header")
        magic, free_gt, next_txn, replay, pad = _VOLATILE.unpack(raw)
        if magic != SESPARSE_VOLATILE_MAGIC:
            raise CorruptError(
                f"SEsparse volatile header magic is {magic:#x}, expected "
                f"{SESPARSE_VOLATILE_MAGIC:#x}",
                source=self.name,
                offset=at,
            )
        if replay:
            raise UnsupportedError(
                "SEsparse journal needs replaying (the snapshot was not closed cleanly)",
                source=self.name,
                offset=at + 24,
            )
        if any(pad):
            raise UnsupportedError(
                "SEsparse volatile header padding is not zero", source=self.name, offset=at + 32
            )
        self.free_gt_number = free_gt
        self.next_txn_seq_number = next_txn

    def _table(self, gd_index: int, entry: int, wait: bool = True) -> array[int]:
        table = self._tables.get(gd_index)
        if table is not None:
            return table
        if not wait:
            raise WouldWait
        number = entry & 0xFFFF_FFFF
        if entry >> 32 != GD_TABLE_BITS or number >= self._gt_count:
            raise CorruptError(
                f"SEsparse grain directory entry {gd_index} ({entry:#018x}) is not a table of "
                f"the {self._gt_count} in the grain table region",
                source=self.name,
            )
        at = self._gt_start + number * GT_BYTES
        what = f"SEsparse grain table {number}"
        table = le_table(read_exact(self._src, at, GT_BYTES, what), 8)
        self._tables.put(gd_index, table)
        return table

    def _grain(self, index: int, wait: bool = True) -> tuple[Kind, int]:
        self._check_grain(index)
        gs = self.grain_size
        gd_index, gt_index = divmod(index, GTES_PER_GT)
        gd_entry = self._gd[gd_index]
        if gd_entry == 0:
            return Kind.ABSENT, -1
        entry = self._table(gd_index, gd_entry, wait)[gt_index]
        kind, slot = decode_grain_entry(entry)
        if kind == GRAIN_ALLOCATED:
            loc = self._grains_start + slot * gs
            need = min(gs, self.size - index * gs)  # the extent may end inside its last grain
            if slot >= self._grain_slots or loc + need > self._src.size:
                raise CorruptError(
                    f"grain {index} points to slot {slot} outside the grain region or the file "
                    f"({self._grain_slots} slots, file has {self._src.size} bytes)",
                    source=self.name,
                )
            return Kind.DATA, loc
        if kind in (GRAIN_UNMAPPED, GRAIN_ZERO):
            return Kind.ZERO, -1
        if entry == 0:
            return Kind.ABSENT, -1
        raise CorruptError(
            f"grain table entry for grain {index} is {entry:#018x}: unknown type or stray bits",
            source=self.name,
        )

    def describe(self) -> dict[str, object]:
        h = self.header
        return {
            **super().describe(),
            "version": f"{h['version'] >> 32}.{h['version'] & 0xFFFF_FFFF}",
            "capacity": self.capacity,
            "grain_size": self.grain_size,
            "grain_tables": len(self._gd),
            "allocated_grain_tables": sum(1 for e in self._gd if e),
            "grain_slots": self._grain_slots,
            "next_txn_seq_number": self.next_txn_seq_number,
            "free_gt_number": self.free_gt_number,
        }
