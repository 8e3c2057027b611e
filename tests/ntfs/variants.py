"""Hand-made variants of the reference NTFS volume: a test-only MFT record patcher.

ntfs-3g cannot be asked to write some structures an NTFS reader must handle, so they are made
here by rewriting MFT records of a copy of the reference ``volume.img`` (see ``ntfsimages``):

- ``fragmented-mft.img``: $MFT's unnamed $DATA split into three attribute records, the second in
  extension record 17 and the third in record 16 (records 16..23 are the reserved ones ntfs-3g
  itself takes for $MFT extents; the order is reversed so that record order is not VCN order),
  named by a new resident $ATTRIBUTE_LIST in record 0 (and its copy in $MFTMirr).  The
  middle piece's clusters are moved to two free stretches of the volume, the later VCNs to the
  lower LCN (a negative run delta), and its old clusters are zeroed, so the table is really
  fragmented on disk: a reader that maps $MFT from record 0 alone reads zeros for the records
  in the middle piece.  $Bitmap and $MFT:$BITMAP are updated to match.
- ``efs.img``: two small non-resident files marked EFS-encrypted: FILE_ATTRIBUTE_ENCRYPTED in
  $STANDARD_INFORMATION and in the $FILE_NAME flags (in the record and in the parent's index
  entry, one parent's in $INDEX_ROOT, the other's in an INDX block), ATTR_IS_ENCRYPTED in the
  $DATA attribute header.  There is no $EFS stream: the data is not really encrypted.
- ``uninitialized.img``: three non-resident files whose $DATA initialized size is cut below the
  data size at a point that is not cluster-aligned (one of them with its runlist continued in
  extension records): the bytes past it read as zeros although the clusters hold data.

Records are decoded and encoded here, independently of vcbfs's reader: update sequence arrays
are undone on reading and applied again on writing (the last two bytes of each 512-byte stride
are saved in the array and replaced by the update sequence number).  Which record is which
file comes from the reference manifest (ntfs-3g's inode numbers are MFT record numbers).

``build_variants(image)`` makes the three images once, in a cache folder next to the reference
volume keyed by the hashes of this file and of the reference build, and writes ``variants.json``
(the ``Variants`` facts: record numbers, VCN splits, runs, sizes) beside them.  The tests check
every variant with an independent reader: an ntfs-3g read-only mount (and sleuthkit for the MFT).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tests.ntfs.ntfsimages import NtfsImage

__all__ = [
    "ATTR_IS_ENCRYPTED",
    "AT_ATTRIBUTE_LIST",
    "AT_BITMAP",
    "AT_DATA",
    "AT_FILE_NAME",
    "AT_INDEX_ALLOCATION",
    "AT_INDEX_ROOT",
    "AT_STANDARD_INFORMATION",
    "FILE_ATTRIBUTE_ENCRYPTED",
    "Attr",
    "Image",
    "Record",
    "Variants",
    "attribute_list_entry",
    "build_variants",
    "decode_runlist",
    "encode_runlist",
    "fixup",
    "index_entries",
    "parse_attribute_list",
    "unfixup",
]

STRIDE = 512
END = 0xFFFFFFFF
REF_MASK = (1 << 48) - 1

AT_STANDARD_INFORMATION = 0x10
AT_ATTRIBUTE_LIST = 0x20
AT_FILE_NAME = 0x30
AT_DATA = 0x80
AT_INDEX_ROOT = 0x90
AT_INDEX_ALLOCATION = 0xA0
AT_BITMAP = 0xB0

ATTR_IS_ENCRYPTED = 0x4000  # attribute header flag
FILE_ATTRIBUTE_ENCRYPTED = 0x4000  # $STANDARD_INFORMATION and $FILE_NAME file attribute bit
RECORD_IN_USE = 0x0001

MFT_RECORD = 0
MFTMIRR_RECORDS = 4  # records 0..3 are copied in $MFTMirr
BITMAP_RECORD = 6  # $Bitmap: one bit per cluster

# The fragmented $MFT: record 0 maps VCNs [0, MFT_SPLIT[0]), record MFT_EXTENSIONS[0] maps
# [MFT_SPLIT[0], MFT_SPLIT[1]) (moved on disk), record MFT_EXTENSIONS[1] maps the rest.
MFT_SPLIT = (512, 3000)
MFT_EXTENSIONS = (17, 16)

# Which files the other variants change (the second EFS file is picked from tree/).
EFS_FILES = ("links/a/pair.bin",)  # two names, both parents' indexes small: in $INDEX_ROOT
UNINITIALIZED: tuple[tuple[str, Callable[[int], int]], ...] = (
    ("sizes/cluster-4097.bin", lambda size: 1000),
    ("fragmented/frag-c.bin", lambda size: size // 2 + 777),  # 100 runs, one record
    ("fragmented/frag-a.bin", lambda size: size // 3 + 5),  # runlist in extension records
)

_KEY_SOURCE = Path(__file__).read_bytes()


def _align8(n: int) -> int:
    return (n + 7) & ~7


# --- update sequence arrays ---------------------------------------------------------------


def unfixup(raw: bytes, magic: bytes) -> bytearray:
    """A copy of a multi-sector record (FILE or INDX) with its update sequence undone."""
    if raw[:4] != magic:
        raise ValueError(f"expected a {magic!r} record, found {raw[:4]!r}")
    buf = bytearray(raw)
    usa_ofs, usa_count = struct.unpack_from("<HH", buf, 4)
    if usa_count != len(buf) // STRIDE + 1:
        raise ValueError(f"{usa_count} update sequence entries for a {len(buf)}-byte record")
    usn = buf[usa_ofs : usa_ofs + 2]
    for i in range(usa_count - 1):
        end = (i + 1) * STRIDE
        if buf[end - 2 : end] != usn:
            raise ValueError(f"torn record: stride {i} does not end with the update sequence")
        buf[end - 2 : end] = buf[usa_ofs + 2 + 2 * i : usa_ofs + 4 + 2 * i]
    return buf


def fixup(buf: bytearray) -> bytearray:
    """Apply the update sequence in place: save each stride's last 2 bytes, store the USN."""
    usa_ofs, usa_count = struct.unpack_from("<HH", buf, 4)
    if usa_count != len(buf) // STRIDE + 1:
        raise ValueError(f"{usa_count} update sequence entries for a {len(buf)}-byte record")
    if buf[usa_ofs : usa_ofs + 2] == b"\0\0":
        buf[usa_ofs : usa_ofs + 2] = b"\1\0"  # 0 is not a valid update sequence number
    usn = bytes(buf[usa_ofs : usa_ofs + 2])
    for i in range(usa_count - 1):
        end = (i + 1) * STRIDE
        buf[usa_ofs + 2 + 2 * i : usa_ofs + 4 + 2 * i] = buf[end - 2 : end]
        buf[end - 2 : end] = usn
    return buf


# --- runlists ------------------------------------------------------------------------------


def _int_bytes(value: int) -> bytes:
    """``value`` as the shortest little-endian two's complement number."""
    n = 1
    while not -(1 << (8 * n - 1)) <= value < 1 << (8 * n - 1):
        n += 1
    return value.to_bytes(n, "little", signed=True)


def encode_runlist(runs: Sequence[tuple[int | None, int]]) -> bytes:
    """Mapping pairs for ``(lcn or None for a hole, length)`` runs, with the 0 terminator."""
    out = bytearray()
    prev = 0
    for lcn, length in runs:
        if length <= 0:
            raise ValueError(f"run length {length}")
        size = _int_bytes(length)
        delta = b"" if lcn is None else _int_bytes(lcn - prev)
        out.append(len(delta) << 4 | len(size))
        out += size + delta
        if lcn is not None:
            prev = lcn
    return bytes(out + b"\0")


def decode_runlist(data: bytes) -> list[tuple[int | None, int]]:
    """``(lcn or None, length)`` runs of mapping pairs (no checks beyond the format's own)."""
    runs: list[tuple[int | None, int]] = []
    pos = lcn = 0
    while pos < len(data) and data[pos]:
        len_size, off_size = data[pos] & 0x0F, data[pos] >> 4
        pos += 1
        length = int.from_bytes(data[pos : pos + len_size], "little")
        pos += len_size
        if off_size:
            lcn += int.from_bytes(data[pos : pos + off_size], "little", signed=True)
            runs.append((lcn, length))
        else:
            runs.append((None, length))
        pos += off_size
    return runs


# --- attributes and records ----------------------------------------------------------------


@dataclass
class Attr:
    """One attribute record, as raw bytes with accessors for the fields changed here."""

    raw: bytearray

    @property
    def type(self) -> int:
        return int.from_bytes(self.raw[0:4], "little")

    @property
    def non_resident(self) -> bool:
        return bool(self.raw[8])

    @property
    def name(self) -> str:
        n, off = self.raw[9], int.from_bytes(self.raw[10:12], "little")
        return self.raw[off : off + 2 * n].decode("utf-16-le")

    @property
    def flags(self) -> int:
        return int.from_bytes(self.raw[12:14], "little")

    @flags.setter
    def flags(self, value: int) -> None:
        self.raw[12:14] = value.to_bytes(2, "little")

    @property
    def instance(self) -> int:
        return int.from_bytes(self.raw[14:16], "little")

    @property
    def value(self) -> memoryview:
        """A resident attribute's value (a view: changes go into the record)."""
        if self.non_resident:
            raise ValueError("non-resident attribute has no inline value")
        length, off = struct.unpack_from("<IH", self.raw, 16)
        return memoryview(self.raw)[off : off + length]

    def _q(self, at: int) -> int:
        return struct.unpack_from("<q", self.raw, at)[0]

    @property
    def lowest_vcn(self) -> int:
        return self._q(16)

    @property
    def highest_vcn(self) -> int:
        return self._q(24)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(allocated, data, initialized) size: valid in the extent with lowest VCN 0 only."""
        return struct.unpack_from("<qqq", self.raw, 40)

    @property
    def initialized_size(self) -> int:
        return self._q(56)

    @initialized_size.setter
    def initialized_size(self, value: int) -> None:
        struct.pack_into("<q", self.raw, 56, value)

    @property
    def runs(self) -> list[tuple[int | None, int]]:
        off = int.from_bytes(self.raw[32:34], "little")
        return decode_runlist(bytes(self.raw[off:]))

    @classmethod
    def resident(cls, atype: int, value: bytes, instance: int, name: str = "") -> Attr:
        """A resident attribute record (name, if any, before the 8-aligned value)."""
        uname = name.encode("utf-16-le")
        voff = _align8(24 + len(uname))
        raw = bytearray(_align8(voff + len(value)))
        struct.pack_into("<IIBBHHH", raw, 0, atype, len(raw), 0, len(name), 24, 0, instance)
        struct.pack_into("<IHBx", raw, 16, len(value), voff, 0)
        raw[24 : 24 + len(uname)] = uname
        raw[voff : voff + len(value)] = value
        return cls(raw)

    @classmethod
    def non_resident_extent(
        cls,
        atype: int,
        instance: int,
        lowest_vcn: int,
        runs: Sequence[tuple[int | None, int]],
        sizes: tuple[int, int, int] = (0, 0, 0),
        name: str = "",
        flags: int = 0,
    ) -> Attr:
        """An uncompressed non-resident attribute record mapping ``runs`` from ``lowest_vcn``.

        ``sizes`` (allocated, data, initialized) belong in the extent at VCN 0 only; Windows
        and ntfs-3g leave them 0 in the others.
        """
        uname = name.encode("utf-16-le")
        pairs = encode_runlist(runs)
        mp = _align8(64 + len(uname))
        raw = bytearray(_align8(mp + len(pairs)))
        highest = lowest_vcn + sum(n for _lcn, n in runs) - 1
        struct.pack_into("<IIBBHHH", raw, 0, atype, len(raw), 1, len(name), 64, flags, instance)
        struct.pack_into("<qqHB5xqqq", raw, 16, lowest_vcn, highest, mp, 0, *sizes)
        raw[64 : 64 + len(uname)] = uname
        raw[mp : mp + len(pairs)] = pairs
        return cls(raw)


_HEADER = struct.Struct("<4sHHQHHHHIIQHHI")  # the FILE record header of NTFS 3.1, 48 bytes


@dataclass
class Record:
    """An MFT record: header fields and attribute records, re-encoded by ``encode``."""

    number: int
    size: int
    usa_ofs: int
    usn: bytes
    lsn: int
    sequence: int
    link_count: int
    attrs_offset: int
    flags: int
    base: int  # base record reference (record | sequence << 48); 0 in a base record
    next_instance: int
    attrs: list[Attr] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes, number: int) -> Record:
        buf = unfixup(raw, b"FILE")
        (_m, usa_ofs, _uc, lsn, seq, links, first, flags, used, alloc, base, nxt, _r, num) = (
            _HEADER.unpack_from(buf)
        )
        if alloc != len(buf) or num not in (number, 0):  # mkntfs leaves 0 in unused records
            raise ValueError(f"record {number}: allocated {alloc}, numbered {num}")
        rec = cls(number, len(buf), usa_ofs, bytes(buf[usa_ofs : usa_ofs + 2]), lsn, seq,
                  links, first, flags, base, nxt)  # fmt: skip
        pos = first
        while int.from_bytes(buf[pos : pos + 4], "little") != END:
            length = int.from_bytes(buf[pos + 4 : pos + 8], "little")
            if length < 24 or pos + length > used:
                raise ValueError(f"record {number}: attribute at {pos} of length {length}")
            rec.attrs.append(Attr(bytearray(buf[pos : pos + length])))
            pos += length
        return rec

    @classmethod
    def extension(cls, number: int, size: int, sequence: int, usn: bytes, base_ref: int) -> Record:
        """An empty in-use extension record of the base record ``base_ref`` (a reference)."""
        return cls(number, size, 48, usn, 0, sequence, 0, 56, RECORD_IN_USE, base_ref, 0)

    @property
    def ref(self) -> int:
        """This record's file reference: number and sequence."""
        return self.number | self.sequence << 48

    def find(self, atype: int, name: str = "") -> list[Attr]:
        return [a for a in self.attrs if a.type == atype and a.name == name]

    def add(self, attr: Attr) -> None:
        """Insert ``attr`` in (type, name) order, after any of the same type and name."""
        key = (attr.type, attr.name)
        at = next((i for i, a in enumerate(self.attrs) if (a.type, a.name) > key), None)
        self.attrs.insert(len(self.attrs) if at is None else at, attr)

    def new_instance(self) -> int:
        """An attribute instance (id) not used in this record."""
        instance = self.next_instance
        self.next_instance += 1
        return instance

    def encode(self) -> bytes:
        """The record's on-disk bytes: attributes laid out, end marker, update sequence."""
        usa_count = self.size // STRIDE + 1
        if self.attrs_offset < _align8(self.usa_ofs + 2 * usa_count):
            raise ValueError(f"record {self.number}: attributes would overlap the USA")
        buf = bytearray(self.size)
        pos = self.attrs_offset
        for a in self.attrs:
            buf[pos : pos + len(a.raw)] = a.raw
            pos += len(a.raw)
        used = pos + 8
        if used > self.size:
            raise ValueError(f"record {self.number}: {used} bytes do not fit {self.size}")
        buf[pos : pos + 4] = END.to_bytes(4, "little")
        _HEADER.pack_into(buf, 0, b"FILE", self.usa_ofs, usa_count, self.lsn, self.sequence,
                          self.link_count, self.attrs_offset, self.flags, used, self.size,
                          self.base, self.next_instance, 0, self.number)  # fmt: skip
        buf[self.usa_ofs : self.usa_ofs + 2] = self.usn
        return bytes(fixup(buf))


def attribute_list_entry(atype: int, name: str, lowest_vcn: int, ref: int, instance: int) -> bytes:
    """One $ATTRIBUTE_LIST entry (26 bytes, the name, padded to 8)."""
    uname = name.encode("utf-16-le")
    raw = bytearray(_align8(26 + len(uname)))
    struct.pack_into("<IHBBqQH", raw, 0, atype, len(raw), len(name), 26, lowest_vcn, ref,
                     instance)  # fmt: skip
    raw[26 : 26 + len(uname)] = uname
    return bytes(raw)


def parse_attribute_list(value: bytes) -> list[tuple[int, str, int, int, int]]:
    """(type, name, lowest VCN, reference, instance) of each $ATTRIBUTE_LIST entry."""
    out = []
    pos = 0
    while pos + 26 <= len(value):
        atype, length, nlen, noff, vcn, ref, inst = struct.unpack_from("<IHBBqQH", value, pos)
        if length < 26:
            break
        name = value[pos + noff : pos + noff + 2 * nlen].decode("utf-16-le")
        out.append((atype, name, vcn, ref, inst))
        pos += length
    return out


# --- the volume ----------------------------------------------------------------------------


class Image:
    """A bare NTFS volume image open for patching: clusters, MFT records, bitmaps.

    $MFT is located from record 0's first $DATA extent, so records are reachable only while it
    is the whole table (true of the reference volume, which is where the patching starts).
    """

    def __init__(self, f: BinaryIO):
        self.f = f
        boot = self.read(0, 512)
        bps, spc = struct.unpack_from("<HB", boot, 11)
        self.cluster_size = bps * (1 << (256 - spc) if spc > 0x80 else spc)
        self.total_clusters = struct.unpack_from("<Q", boot, 40)[0] * bps // self.cluster_size
        self.mft_lcn, self.mftmirr_lcn = struct.unpack_from("<QQ", boot, 48)
        code = struct.unpack_from("<b", boot, 64)[0]
        self.record_size = 1 << -code if code < 0 else code * self.cluster_size
        raw0 = self.read(self.mft_lcn * self.cluster_size, self.record_size)
        (data,) = Record.parse(raw0, MFT_RECORD).find(AT_DATA)
        self.mft_runs: list[tuple[int | None, int]] = data.runs

    def read(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError(f"short read at {offset:#x}")
        return data

    def write(self, offset: int, data: bytes) -> None:
        self.f.seek(offset)
        self.f.write(data)

    def cluster_offset(self, runs: Sequence[tuple[int | None, int]], vcn: int) -> int:
        """The byte offset on the volume of ``vcn`` of an attribute with ``runs`` from VCN 0."""
        start = 0
        for lcn, length in runs:
            if start <= vcn < start + length:
                if lcn is None:
                    raise ValueError(f"VCN {vcn} is in a hole")
                return (lcn + vcn - start) * self.cluster_size
            start += length
        raise ValueError(f"VCN {vcn} is not mapped")

    def record_offset(self, number: int) -> int:
        pos = number * self.record_size
        return self.cluster_offset(self.mft_runs, pos // self.cluster_size) + (
            pos % self.cluster_size
        )

    def record(self, number: int) -> Record:
        return Record.parse(self.read(self.record_offset(number), self.record_size), number)

    def write_record(self, rec: Record) -> None:
        """Write a record to $MFT, and to $MFTMirr if it is one of the mirrored records."""
        raw = rec.encode()
        self.write(self.record_offset(rec.number), raw)
        if rec.number < MFTMIRR_RECORDS:
            self.write(self.mftmirr_lcn * self.cluster_size + rec.number * self.record_size, raw)

    def extents(self, base: Record, atype: int, name: str = "") -> list[tuple[Record, Attr]]:
        """Every attribute record of (type, name) of a file, following its $ATTRIBUTE_LIST."""
        lists = base.find(AT_ATTRIBUTE_LIST)
        if not lists:
            return [(base, a) for a in base.find(atype, name)]
        out: list[tuple[Record, Attr]] = []
        records = {base.number: base}
        for etype, ename, _vcn, ref, inst in parse_attribute_list(self.value(lists[0])):
            if (etype, ename) != (atype, name):
                continue
            rec = records.get(ref & REF_MASK) or self.record(ref & REF_MASK)
            records[rec.number] = rec
            out.extend((rec, a) for a in rec.find(atype, name) if a.instance == inst)
        return out

    def runs_of(self, extents: Sequence[Attr]) -> list[tuple[int | None, int]]:
        return [r for a in sorted(extents, key=lambda a: a.lowest_vcn) for r in a.runs]

    def value(self, attr: Attr, extents: Sequence[Attr] = ()) -> bytes:
        """A whole attribute value (non-resident: read through the runs, up to the data size)."""
        if not attr.non_resident:
            return bytes(attr.value)
        return self.value_from_runs(self.runs_of(extents or [attr]), attr.sizes[1])

    def raw_data(self, number: int) -> bytes:
        """A file's unnamed $DATA as the clusters hold it, ignoring the initialized size."""
        extents = [a for _r, a in self.extents(self.record(number), AT_DATA)]
        first = min(extents, key=lambda a: a.lowest_vcn)
        return self.value(first, extents)

    # -- cluster allocation ----------------------------------------------------------------

    def _bitmap_runs(self) -> tuple[list[tuple[int | None, int]], int]:
        (data,) = self.record(BITMAP_RECORD).find(AT_DATA)
        return data.runs, data.sizes[1]

    def free_stretches(self) -> Iterator[tuple[int, int]]:
        """(first cluster, count) of each stretch of free clusters, in LCN order."""
        runs, size = self._bitmap_runs()
        bits = self.value_from_runs(runs, size)
        start = None
        for lcn in range(self.total_clusters):
            used = bits[lcn >> 3] >> (lcn & 7) & 1
            if not used and start is None:
                start = lcn
            elif used and start is not None:
                yield start, lcn - start
                start = None
        if start is not None:
            yield start, self.total_clusters - start

    def value_from_runs(self, runs: Sequence[tuple[int | None, int]], size: int) -> bytes:
        """The first ``size`` bytes the runs map (holes as zeros)."""
        cs = self.cluster_size
        out = bytearray()
        for lcn, length in runs:
            out += bytes(length * cs) if lcn is None else self.read(lcn * cs, length * cs)
        return bytes(out[:size])

    def set_bits(self, runs: Sequence[tuple[int | None, int]], first: int, count: int,
                 used: bool) -> None:  # fmt: skip
        """Set (or clear) bits ``first .. first+count-1`` of a bitmap attribute with ``runs``."""
        cs = self.cluster_size
        for bit in range(first, first + count):
            offset = self.cluster_offset(runs, (bit >> 3) // cs) + (bit >> 3) % cs
            byte = self.read(offset, 1)[0]
            byte = byte | 1 << (bit & 7) if used else byte & ~(1 << (bit & 7))
            self.write(offset, bytes([byte]))

    def allocate_clusters(self, first: int, count: int, used: bool = True) -> None:
        """Mark clusters used (or free) in $Bitmap."""
        self.set_bits(self._bitmap_runs()[0], first, count, used)


# --- the variants ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variants:
    """The variant images and what was done to them (see the module docstring)."""

    root: Path
    fragmented_mft: Path
    efs: Path
    uninitialized: Path
    facts: dict[str, Any]

    @property
    def mft(self) -> dict[str, Any]:
        """split (VCNs where the extents start), extensions, runs, records_per_cluster, ..."""
        return self.facts["fragmented_mft"]

    @property
    def efs_facts(self) -> dict[str, Any]:
        return self.facts["efs"]

    @property
    def uninitialized_facts(self) -> dict[str, Any]:
        return self.facts["uninitialized"]


def _copy(src: Path, dst: Path) -> None:
    subprocess.run(
        ["cp", "--sparse=always", "--reflink=auto", os.fspath(src), os.fspath(dst)], check=True
    )


def _place(free: list[tuple[int, int]], count: int, after: int) -> int:
    """The first cluster of a free stretch of ``count`` clusters at or past ``after``."""
    for start, n in free:
        lo = max(start, after)
        if start + n - lo >= count:
            return lo
    raise RuntimeError(f"no {count} free clusters past {after}")


def make_fragmented_mft(img: Image) -> dict[str, Any]:
    """Split $MFT's $DATA into three extents (see the module docstring); returns the facts."""
    cs = img.cluster_size
    per_cluster = cs // img.record_size
    rec0 = img.record(MFT_RECORD)
    (data,) = rec0.find(AT_DATA)
    old_runs = data.runs
    total = sum(n for _lcn, n in old_runs)
    if len(old_runs) != 1 or old_runs[0][0] is None:
        raise RuntimeError(f"expected a contiguous $MFT, found {old_runs}")
    mft_lcn = old_runs[0][0]
    k1, k2 = MFT_SPLIT
    if not max(MFT_EXTENSIONS) < k1 * per_cluster or not k2 < total:
        raise RuntimeError(f"split {MFT_SPLIT} does not fit an MFT of {total} clusters")

    # The middle piece moves to two free stretches: its first half to the higher one.
    middle = k2 - k1
    half_a, half_b = middle // 2, middle - middle // 2
    free = list(img.free_stretches())
    low = _place(free, half_b, mft_lcn + total)
    high = _place(free, half_a, low + half_b + 64)
    for src_vcn, dst, n in ((k1, high, half_a), (k1 + half_a, low, half_b)):
        img.write(dst * cs, img.read((mft_lcn + src_vcn) * cs, n * cs))
        img.allocate_clusters(dst, n)
    img.write((mft_lcn + k1) * cs, bytes(middle * cs))
    img.allocate_clusters(mft_lcn + k1, middle, used=False)

    pieces: list[tuple[int, list[tuple[int | None, int]]]] = [
        (0, [(mft_lcn, k1)]),
        (k1, [(high, half_a), (low, half_b)]),
        (k2, [(mft_lcn + k2, total - k2)]),
    ]
    ext_records = []
    for number, (vcn, runs) in zip(MFT_EXTENSIONS, pieces[1:], strict=True):
        old = img.record(number)
        if old.flags & RECORD_IN_USE:
            raise RuntimeError(f"MFT record {number} is in use")
        ext = Record.extension(number, img.record_size, old.sequence or 1, old.usn, rec0.ref)
        ext.attrs.append(Attr.non_resident_extent(AT_DATA, ext.new_instance(), vcn, runs))
        ext_records.append(ext)

    first = Attr.non_resident_extent(AT_DATA, data.instance, 0, pieces[0][1], data.sizes)
    rec0.attrs[rec0.attrs.index(data)] = first
    entries = []
    for a in rec0.attrs:
        entries.append((a.type, a.name, a.lowest_vcn if a.non_resident else 0, rec0.ref,
                        a.instance))  # fmt: skip
    for ext in ext_records:
        (a,) = ext.attrs
        entries.append((a.type, a.name, a.lowest_vcn, ext.ref, a.instance))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    value = b"".join(attribute_list_entry(*e) for e in entries)
    rec0.add(Attr.resident(AT_ATTRIBUTE_LIST, value, rec0.new_instance()))

    for ext in ext_records:
        img.write_record(ext)
    img.write_record(rec0)
    (mft_bitmap,) = rec0.find(AT_BITMAP)
    for number in MFT_EXTENSIONS:
        img.set_bits(mft_bitmap.runs, number, 1, used=True)
    return {
        "split_vcns": [0, k1, k2],
        "extension_records": list(MFT_EXTENSIONS),
        "extension_sequences": [e.sequence for e in ext_records],
        "records_per_cluster": per_cluster,
        "clusters": total,
        "record_count": data.sizes[1] // img.record_size,
        "old_lcn": mft_lcn,
        "moved": {"vcns": [k1, k2], "old_lcn": mft_lcn + k1, "new_lcns": [high, low]},
        "pieces": [[vcn, [list(r) for r in runs]] for vcn, runs in pieces],
        "attribute_list": [[t, n, v, r & REF_MASK, r >> 48, i] for t, n, v, r, i in entries],
    }


def _index_entries(buf: bytearray, header: int) -> Iterator[int]:
    """Offsets in ``buf`` of the index entries (the last, keyless one left out)."""
    first, length = struct.unpack_from("<II", buf, header)
    pos, end = header + first, header + length
    while pos + 16 <= end:
        elen, klen, flags = struct.unpack_from("<HHH", buf, pos + 8)
        if flags & 2 or elen < 16:
            return
        if klen:
            yield pos
        pos += elen


def index_entries(
    img: Image, directory: int, target: int, patch: Callable[[memoryview], None] | None = None
) -> list[tuple[str, int]]:
    """The entries for record ``target`` in a directory's $I30 index, optionally patched.

    ``patch`` is applied to the $FILE_NAME key of each (the record or INDX block is written
    back, update sequence applied).  Returns (where: "root" or "INDX vcn N", the key's flags).
    """
    rec = img.record(directory)
    found: list[tuple[str, int]] = []

    def visit(buf: bytearray, header: int, where: str) -> bool:
        hits = [
            pos for pos in _index_entries(buf, header)
            if int.from_bytes(buf[pos : pos + 8], "little") & REF_MASK == target
        ]  # fmt: skip
        for pos in hits:
            key = memoryview(buf)[pos + 16 :]
            if patch is not None:
                patch(key)
            found.append((where, int.from_bytes(key[0x38:0x3C], "little")))
            key.release()
        return bool(hits) and patch is not None

    (root,) = rec.find(AT_INDEX_ROOT, "$I30")
    buf = bytearray(root.value)
    if visit(buf, 16, "root"):
        root.value[:] = buf
        img.write_record(rec)
    block = int.from_bytes(buf[8:12], "little")
    alloc = [a for _r, a in img.extents(rec, AT_INDEX_ALLOCATION, "$I30")]
    if not alloc:
        return found
    (bitmap,) = [a for _r, a in img.extents(rec, AT_BITMAP, "$I30")]
    in_use = img.value(bitmap)
    runs = img.runs_of(alloc)
    size = min(alloc, key=lambda a: a.lowest_vcn).sizes[1]
    vcn_size = img.cluster_size if block >= img.cluster_size else 512
    for n in range(size // block):
        if not in_use[n >> 3] >> (n & 7) & 1:
            continue
        vcn = n * block // vcn_size
        offset = img.cluster_offset(runs, vcn * vcn_size // img.cluster_size) + (
            vcn * vcn_size % img.cluster_size
        )
        indx = unfixup(img.read(offset, block), b"INDX")
        if visit(indx, 0x18, f"INDX vcn {vcn}"):
            img.write(offset, bytes(fixup(indx)))
    return found


def _set_encrypted_flag(key: memoryview) -> None:
    flags = int.from_bytes(key[0x38:0x3C], "little")
    key[0x38:0x3C] = (flags | FILE_ATTRIBUTE_ENCRYPTED).to_bytes(4, "little")


def make_efs(img: Image, ref: NtfsImage, paths: Sequence[str]) -> dict[str, Any]:
    """Mark ``paths`` EFS-encrypted (see the module docstring); returns the facts."""
    entries = ref.entries
    out: dict[str, Any] = {}
    for path in paths:
        number = entries[path]["ino"]
        rec = img.record(number)
        if rec.find(AT_ATTRIBUTE_LIST):
            raise RuntimeError(f"{path}: expected a file in one record")
        (si,) = rec.find(AT_STANDARD_INFORMATION)
        attrs = int.from_bytes(si.value[32:36], "little") | FILE_ATTRIBUTE_ENCRYPTED
        si.value[32:36] = attrs.to_bytes(4, "little")
        for fn in rec.find(AT_FILE_NAME):
            _set_encrypted_flag(fn.value)
        datas = rec.find(AT_DATA)
        if len(datas) != 1 or not datas[0].non_resident:
            raise RuntimeError(f"{path}: expected one non-resident $DATA")
        datas[0].flags |= ATTR_IS_ENCRYPTED
        img.write_record(rec)
        parents = sorted({int.from_bytes(fn.value[0:6], "little") for fn in rec.find(AT_FILE_NAME)})
        where = {p: index_entries(img, p, number, _set_encrypted_flag) for p in parents}
        out[path] = {"record": number, "index_entries": where, "attributes": attrs}
    return out


def make_uninitialized(img: Image, ref: NtfsImage) -> dict[str, Any]:
    """Cut the initialized size of the UNINITIALIZED files; returns the facts."""
    out: dict[str, Any] = {}
    for path, cut in UNINITIALIZED:
        number = ref.entries[path]["ino"]
        base = img.record(number)
        extents = img.extents(base, AT_DATA)
        rec, first = min(extents, key=lambda e: e[1].lowest_vcn)
        alloc, size, init = first.sizes
        new = cut(size)
        if not 0 < new < init or new % img.cluster_size == 0:
            raise RuntimeError(f"{path}: cannot cut initialized size {init} to {new}")
        first.initialized_size = new
        img.write_record(rec)
        out[path] = {
            "record": number,
            "extent_record": rec.number,
            "extents": len(extents),
            "runs": len(img.runs_of([a for _r, a in extents])),
            "size": size,
            "allocated": alloc,
            "old_initialized": init,
            "initialized": new,
        }
    return out


def _efs_paths(ref: NtfsImage) -> list[str]:
    """EFS_FILES, and a small non-resident tree file whose parent index has INDX blocks."""
    entries = ref.entries
    with open(ref.path, "rb") as f:
        img = Image(f)
        for path, e in entries.items():
            if not path.startswith(ref.tree_dir + "/") or e["type"] != "file":
                continue
            if not 5000 <= e["size"] <= 50000:
                continue
            parent = img.record(entries[path.rsplit("/", 1)[0]]["ino"])
            if parent.find(AT_INDEX_ALLOCATION, "$I30"):
                return [*EFS_FILES, path]
    raise RuntimeError("no tree file in a directory with INDX blocks")


def _key(ref: NtfsImage) -> str:
    h = hashlib.sha256(_KEY_SOURCE)
    h.update(ref.root.name.encode())
    return h.hexdigest()[:16]


def _remove_stale(keep: Path, prefix: str, age: float = 3600.0) -> None:
    """Remove variant folders of other versions, built over ``age`` seconds ago and unlocked."""
    for lock_path in keep.parent.glob(prefix + "*.lock"):
        folder = lock_path.with_name(lock_path.name.removesuffix(".lock"))
        if folder == keep:
            continue
        done = folder / ".complete"
        with contextlib.suppress(OSError):
            if done.exists() and time.time() - done.stat().st_mtime < age:
                continue
            with open(lock_path, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being built right now
                for old in (folder, folder.with_name(folder.name + ".building")):
                    if old.exists():
                        shutil.rmtree(old)
                lock_path.unlink()


def build_variants(ref: NtfsImage) -> Variants:
    """Build (once, cached beside the reference volume) the variant images; see the docstring.

    Concurrent callers wait on a lock; the images are made in a sibling folder and renamed.
    Folders of other versions of this file (or of the reference volume) are removed once they
    are an hour old.
    """
    prefix = "ntfs-variants-"
    root = ref.root.with_name(prefix + _key(ref))
    names = {"fragmented_mft": "fragmented-mft.img", "efs": "efs.img",
             "uninitialized": "uninitialized.img"}  # fmt: skip

    def done() -> Variants:
        facts = json.loads((root / "variants.json").read_text())
        return Variants(root, *(root / n for n in names.values()), facts=facts)

    if (root / ".complete").exists():
        return done()
    with open(root.with_name(root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return done()
        _remove_stale(root, prefix)
        work = root.with_name(root.name + ".building")
        for old in (root, work):
            if old.exists():
                shutil.rmtree(old)
        work.mkdir()
        makers: dict[str, Callable[[Image], dict[str, Any]]] = {
            "fragmented_mft": make_fragmented_mft,
            "efs": lambda img: make_efs(img, ref, _efs_paths(ref)),
            "uninitialized": lambda img: make_uninitialized(img, ref),
        }
        facts: dict[str, Any] = {"reference": os.fspath(ref.path)}
        for what, name in names.items():
            _copy(ref.path, work / name)
            with open(work / name, "r+b") as f:
                facts[what] = makers[what](Image(f))
        (work / "variants.json").write_text(json.dumps(facts, indent=1))
        work.rename(root)
        (root / ".complete").touch()
    return done()
