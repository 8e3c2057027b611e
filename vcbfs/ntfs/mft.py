"""The Master File Table: records by number, each with all its attributes.

Opening bootstraps $MFT from its own record 0: the runs of record 0's $DATA locate the first
part of the table; if $MFT is so fragmented that its $DATA continues in extension records (named
by record 0's $ATTRIBUTE_LIST), those are read through the first part and the map is completed.
Nothing else is read at open, so opening is instant however many files the volume holds.

A file whose attributes do not fit one record has an $ATTRIBUTE_LIST naming extension records;
``attributes(n)`` gathers them, in the list's order, checking each extension belongs to ``n``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vcbfs.blocks.cache import CachedSource
from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import ByteSource, read_exact
from vcbfs.errors import CorruptError, NotFoundError
from vcbfs.ntfs.attributes import (
    AT,
    MFT_REF_MASK,
    Attribute,
    parse_attribute_list,
    parse_attributes,
    scan_for_stat,
)
from vcbfs.ntfs.boot import BootSector
from vcbfs.ntfs.fixup import apply_fixups
from vcbfs.ntfs.stream import AttributeStream, open_stream

__all__ = ["FileRecord", "Mft"]

_RECORD = struct.Struct("<4sHHQHHHHIIQHxxI")
FLAG_IN_USE = 0x01
FLAG_DIRECTORY = 0x02
RECORD_CACHE = 32 << 20  # parsed records, in bytes (about 1.5 KiB each for 1 KiB on disk)
MAX_EXTENSIONS = 4096
RECORD_BLOCK = 64 << 10
RECORD_BLOCK_CACHE = 16 << 20


@dataclass(slots=True)
class FileRecord:
    number: int
    sequence: int
    flags: int
    link_count: int
    base: int  # record number of the base record (0 for a base record, or for $MFT's extensions)
    base_ref: int  # the raw base reference: non-zero marks an extension record
    attributes: list[Attribute]
    weight: int = 0  # bytes it holds, parsed (see weigh_record); 0 if not known

    @property
    def in_use(self) -> bool:
        return bool(self.flags & FLAG_IN_USE)

    @property
    def is_extension(self) -> bool:
        return self.base_ref != 0

    @property
    def is_dir(self) -> bool:
        return bool(self.flags & FLAG_DIRECTORY)


# Measured against a deep sys.getsizeof of parsed records (tests/blocks/test_budget.py): an
# Attribute object with its ints, and a FileRecord with its list.
ATTRIBUTE_OVERHEAD = 250
RECORD_OVERHEAD = 160


def weigh_attributes(attrs: list[Attribute]) -> int:
    """Bytes a list of parsed attributes holds (values, runlists and names included)."""
    return 64 + sum(
        ATTRIBUTE_OVERHEAD + len(a.value) + len(a.runlist) + 2 * len(a.name) for a in attrs
    )


def weigh_record(rec: FileRecord) -> int:
    return rec.weight or RECORD_OVERHEAD + weigh_attributes(rec.attributes)


class Mft:
    """Read MFT records of a volume; records are cached (bounded)."""

    def __init__(self, volume: ByteSource, boot: BootSector):
        self.volume = volume
        self.boot = boot
        self.record_size = boot.record_size
        self.name = volume.name
        self._cache: LRU[int, FileRecord] = LRU(RECORD_CACHE, weigh_record)
        self._last: tuple[int, bytes] | None = None  # the last record block read
        rec0 = self._parse(
            read_exact(volume, boot.mft_lcn * boot.cluster_size, boot.record_size, "$MFT record 0"),
            0,
            boot.mft_lcn * boot.cluster_size,
        )
        data = [a for a in rec0.attributes if a.type == AT.DATA and not a.name]
        if not data or data[0].resident:
            raise CorruptError("$MFT has no non-resident $DATA", source=self.name)
        self.stream: ByteSource = AttributeStream(
            volume, boot.cluster_size, data, "$MFT", boot.cluster_count, partial=True
        )
        lists = [a for a in rec0.attributes if a.type == AT.ATTRIBUTE_LIST]
        if lists:
            entries = parse_attribute_list(self._value(lists), self.name)
            extra = {e.record for e in entries if e.type == AT.DATA and not e.name and e.record}
            for n in sorted(extra):
                rec = self.record(n)
                data.extend(a for a in rec.attributes if a.type == AT.DATA and not a.name)
            self.stream = AttributeStream(
                volume, boot.cluster_size, data, "$MFT", boot.cluster_count
            )
            self._cache.clear()
        self.record_count = self.stream.size // self.record_size
        # Records are read through a block cache: a directory's files mostly lie close together
        # in the MFT, so one 64 KiB read serves the next 64 records (measured: a cold walk of
        # 23,600 files went from 1.3 s to the figure in docs/design.md).
        self._blocks = CachedSource(
            self.stream, block_size=RECORD_BLOCK, capacity=RECORD_BLOCK_CACHE, max_readahead=1 << 20
        )

    def _value(self, extents: list[Attribute]) -> bytes:
        stream = open_stream(
            self.volume, self.boot.cluster_size, extents, self.name, self.boot.cluster_count
        )
        if stream.size > 16 << 20:
            raise CorruptError("$ATTRIBUTE_LIST is larger than 16 MiB", source=self.name)
        return stream.read_at(0, stream.size)

    def value(self, extents: list[Attribute]) -> bytes:
        """The whole value of a (small) attribute: lists, security descriptors, reparse data."""
        return self._value(extents)

    def _header(self, raw: bytes, number: int, offset: int) -> tuple[bytes, tuple[int, ...]]:
        """The fixed-up record and its checked header fields."""
        buf = apply_fixups(raw, b"FILE", self.name, offset)
        header = _RECORD.unpack_from(buf)
        (_m, usa, _uc, _lsn, _seq, _links, first, flags, used, alloc, _base, _next, num) = header
        if used > len(buf) or alloc != len(buf) or first < 42 or first >= used:
            raise CorruptError(
                f"MFT record {number}: header sizes are not valid (used {used}, first {first})",
                source=self.name,
                offset=offset,
            )
        if usa >= 0x30 and flags & FLAG_IN_USE and num != number:  # 3.1 records hold their number
            raise CorruptError(
                f"MFT record {number} says it is record {num}", source=self.name, offset=offset
            )
        return buf, header

    def _parse(self, raw: bytes, number: int, offset: int) -> FileRecord:
        buf, header = self._header(raw, number, offset)
        (_m, _usa, _uc, _lsn, seq, links, first, flags, used, _alloc, base, _next, _num) = header
        attrs = parse_attributes(buf, first, used, number, self.name, offset)
        # Its values, runlists and names all come from the record's used bytes: weighed by
        # those (their headers too), not by a walk over what was parsed.
        weight = RECORD_OVERHEAD + ATTRIBUTE_OVERHEAD * len(attrs) + used - first
        return FileRecord(number, seq, flags, links, base & MFT_REF_MASK, base, attrs, weight)

    def stat_fields(self, number: int) -> tuple[int, bool, bytes, int, int, int, bool] | None:
        """For a base record in use: (sequence, is a directory, ``scan_for_stat``'s five
        fields), read lean.

        None when the record needs the full parse (see ``scan_for_stat``), or is free or an
        extension record (``attributes`` then says so).  Errors of the record's bytes or
        header are raised as ``record`` raises them.
        """
        self._check_number(number)
        offset = number * self.record_size
        raw = self._raw(number, offset)
        assert raw is not None
        buf, header = self._header(raw, number, offset)
        if not header[7] & FLAG_IN_USE or header[10]:
            return None
        fields = scan_for_stat(buf, header[6], header[8])
        if fields is None:
            return None
        return (header[4], bool(header[7] & FLAG_DIRECTORY), *fields)

    def _raw(self, number: int, offset: int, *, wait: bool = True) -> bytes | None:
        """The record's bytes; a listing's records mostly share one 64 KiB block, kept at hand.

        With ``wait=False``, None unless the block is in memory (for callers that must not
        block); a record the table cuts short is then left to the waiting path to report.
        """
        blocks = getattr(self, "_blocks", None)
        if blocks is None:  # the bootstrap reads before the cache exists
            if not wait:
                return None
            return read_exact(self.stream, offset, self.record_size, f"MFT record {number}")
        index, start = divmod(offset, RECORD_BLOCK)
        last = self._last
        if last is None or last[0] != index:
            if wait:
                block = blocks.read_at(index * RECORD_BLOCK, RECORD_BLOCK)
            else:
                found = blocks.try_read_at(index * RECORD_BLOCK, RECORD_BLOCK)
                if found is None:
                    return None
                block = bytes(found)
            last = self._last = (index, block)
        raw = last[1][start : start + self.record_size]
        if len(raw) != self.record_size:
            if not wait:
                return None
            raise CorruptError(
                f"MFT record {number} is truncated: the table ends inside it",
                source=self.name,
                offset=offset,
            )
        return raw

    def try_attributes(self, number: int) -> tuple[FileRecord, list[Attribute]] | None:
        """``attributes`` if it needs no read (the record's block is in memory and it has no
        extension records); else None.  For callers that must not wait."""
        self._check_number(number)
        offset = number * self.record_size
        raw = self._raw(number, offset, wait=False)
        if raw is None:
            return None
        rec = self._parse(raw, number, offset)
        if any(a.type == AT.ATTRIBUTE_LIST for a in rec.attributes):
            return None
        return rec, rec.attributes

    def record(self, number: int) -> FileRecord:
        """MFT record ``number`` (fixups applied, attributes parsed), cached."""
        cached = self._cache.get(number)
        if cached is not None:
            return cached
        rec = self._load(number)
        self._cache.put(number, rec)
        return rec

    def _check_number(self, number: int) -> None:
        if not 0 <= number < getattr(self, "record_count", self.stream.size // self.record_size):
            raise NotFoundError(f"MFT record {number} does not exist", source=self.name)

    def _load(self, number: int) -> FileRecord:
        self._check_number(number)
        offset = number * self.record_size
        raw = self._raw(number, offset)
        assert raw is not None
        return self._parse(raw, number, offset)

    def attributes(self, number: int) -> tuple[FileRecord, list[Attribute]]:
        """A base record and all its attributes, from extension records too.

        The base record is not cached here: the caller keeps what it gathers (the volume's
        node cache), and caching it twice only costs a listing time and memory.
        """
        rec = self._load(number)
        lists = [a for a in rec.attributes if a.type == AT.ATTRIBUTE_LIST]
        if not lists:
            return rec, rec.attributes
        entries = parse_attribute_list(self._value(lists), f"{self.name} record {number}")
        records = {number: rec}
        named: set[tuple[int, int]] = set()
        out: list[Attribute] = []
        for e in entries:
            if (e.record, e.id) in named:
                raise CorruptError(
                    f"record {number}'s attribute list names attribute {e.id} in record "
                    f"{e.record} more than once",
                    source=self.name,
                )
            named.add((e.record, e.id))
            ext = records.get(e.record)
            if ext is None:
                if len(records) > MAX_EXTENSIONS:
                    raise CorruptError(
                        f"record {number} has too many extension records", source=self.name
                    )
                if not 0 <= e.record < self.record_count:
                    raise CorruptError(
                        f"record {number}'s attribute list names record {e.record}, past the "
                        f"{self.record_count} records of the MFT",
                        source=self.name,
                    )
                ext = self.record(e.record)
                if not ext.is_extension or ext.base != number:
                    owner = f"record {ext.base}" if ext.is_extension else "no other record"
                    raise CorruptError(
                        f"record {number}'s attribute list names record {e.record}, "
                        f"which belongs to {owner}",
                        source=self.name,
                    )
                if e.seq and e.seq != ext.sequence:
                    raise CorruptError(
                        f"record {number}'s attribute list names record {e.record} with "
                        f"sequence {e.seq}, but the record has {ext.sequence}",
                        source=self.name,
                    )
                records[e.record] = ext
            match = [a for a in ext.attributes if a.id == e.id and a.type == e.type]
            if not match:
                raise CorruptError(
                    f"record {number}'s attribute list names attribute {e.id} in record "
                    f"{e.record}, which has none",
                    source=self.name,
                )
            out.append(match[0])
        return rec, out
