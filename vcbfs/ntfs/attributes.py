"""NTFS attributes: the headers in an MFT record, and the values vcbfs interprets.

Every attribute starts with a common header (type, length, name, flags); a resident one carries
its value inline, a non-resident one a runlist and three sizes (allocated, data, initialized).
Values decoded here: $STANDARD_INFORMATION, $FILE_NAME, $ATTRIBUTE_LIST entries,
$VOLUME_INFORMATION.  Every length and offset is checked against the record before use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from vcbfs.errors import CorruptError

__all__ = [
    "AT",
    "Attribute",
    "AttributeListEntry",
    "FileName",
    "StandardInformation",
    "parse_attribute_list",
    "parse_attributes",
    "scan_for_stat",
]

MAX_ATTRIBUTES = 1024
END = 0xFFFFFFFF
FLAG_COMPRESSED = 0x0001
FLAG_ENCRYPTED = 0x4000
FLAG_SPARSE = 0x8000
MFT_REF_MASK = (1 << 48) - 1
NS_POSIX, NS_WIN32, NS_DOS, NS_WIN32_DOS = 0, 1, 2, 3
FN_NAMESPACE = 65  # offset of the namespace byte in a $FILE_NAME value


class AT:
    """Attribute type codes."""

    STANDARD_INFORMATION = 0x10
    ATTRIBUTE_LIST = 0x20
    FILE_NAME = 0x30
    OBJECT_ID = 0x40
    SECURITY_DESCRIPTOR = 0x50
    VOLUME_NAME = 0x60
    VOLUME_INFORMATION = 0x70
    DATA = 0x80
    INDEX_ROOT = 0x90
    INDEX_ALLOCATION = 0xA0
    BITMAP = 0xB0
    REPARSE_POINT = 0xC0
    EA_INFORMATION = 0xD0
    EA = 0xE0
    LOGGED_UTILITY_STREAM = 0x100


_TYPE = struct.Struct("<I")
_HEADER = struct.Struct("<IIBBHHH")
_RESIDENT = struct.Struct("<IH")
_NONRESIDENT = struct.Struct("<QQHH4xQQQ")
_U64 = struct.Struct("<Q")


@dataclass(slots=True)
class Attribute:
    """One attribute record (for a non-resident attribute: one extent of it)."""

    type: int
    name: str
    flags: int
    id: int
    record: int  # the MFT record holding this attribute record
    resident: bool
    value: bytes = b""  # resident value
    start_vcn: int = 0
    last_vcn: int = -1
    runlist: bytes = b""
    compression_unit: int = 0  # log2 of clusters per compression unit; 0 = not compressed
    allocated_size: int = 0
    data_size: int = 0
    initialized_size: int = 0
    total_allocated: int = 0  # clusters really held: less than allocated_size if sparse/compressed

    @property
    def size(self) -> int:
        return len(self.value) if self.resident else self.data_size

    @property
    def on_disk(self) -> int:
        """Bytes the data takes on the volume, as ``st_blocks`` counts them (and ntfs-3g does):
        a resident value its 8-aligned length in the record, else the clusters held."""
        return (len(self.value) + 7) & ~7 if self.resident else self.total_allocated

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def sparse(self) -> bool:
        return bool(self.flags & FLAG_SPARSE)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)


def parse_attributes(
    buf: bytes | bytearray, first: int, used: int, record: int, source: str, offset: int
) -> list[Attribute]:
    """The attributes of one record's (fixed-up) bytes, in order, up to the end marker."""

    def bad(why: str, at: int) -> CorruptError:
        return CorruptError(f"MFT record {record}: {why}", source=source, offset=offset + at)

    out: list[Attribute] = []
    pos = first
    limit = min(used, len(buf))
    while True:
        if pos + 4 > limit:
            raise bad("attributes run past the record's used size", pos)
        (atype,) = _TYPE.unpack_from(buf, pos)
        if atype == END:
            return out
        if len(out) >= MAX_ATTRIBUTES:
            raise bad("too many attributes", pos)
        if pos + 16 > limit:
            raise bad("attribute header truncated", pos)
        _t, length, nonres, name_len, name_off, flags, aid = _HEADER.unpack_from(buf, pos)
        if length < 24 or length % 8 or pos + length > limit:
            raise bad(f"attribute length {length} is not valid", pos)
        name = ""
        if name_len:
            if name_off + 2 * name_len > length:
                raise bad("attribute name lies outside the attribute", pos)
            name = _utf16(buf[pos + name_off : pos + name_off + 2 * name_len])
        if nonres == 0:
            vlen, voff = _RESIDENT.unpack_from(buf, pos + 16)
            if voff + vlen > length:
                raise bad("resident value lies outside the attribute", pos)
            value = bytes(buf[pos + voff : pos + voff + vlen])
            out.append(Attribute(atype, name, flags, aid, record, True, value))
        elif nonres == 1:
            if length < 64:
                raise bad("non-resident attribute header truncated", pos)
            start, last, roff, cu, alloc, size, init = _NONRESIDENT.unpack_from(buf, pos + 16)
            if roff >= length or roff < 64:
                raise bad("runlist lies outside the attribute", pos)
            if last + 1 < start or last >= 1 << 62:
                raise bad(f"VCN range {start}..{last} is not valid", pos)
            if init > size or size > 1 << 62 or alloc > 1 << 62 or cu > 16:
                raise bad(f"sizes are not valid (alloc {alloc}, data {size}, init {init})", pos)
            total = _total_allocated(buf, pos, flags, roff, alloc)
            if total is None:
                raise bad("total allocated size is not valid", pos)
            runlist = bytes(buf[pos + roff : pos + length])
            out.append(
                Attribute(
                    atype,
                    name,
                    flags,
                    aid,
                    record,
                    False,
                    b"",
                    start,
                    last,
                    runlist,
                    cu,
                    alloc,
                    size,
                    init,
                    total,
                )
            )
        else:
            raise bad(f"non-resident flag {nonres} is not valid", pos)
        pos += length


def _total_allocated(
    buf: bytes | bytearray, pos: int, flags: int, roff: int, alloc: int
) -> int | None:
    """A compressed or sparse attribute's count of bytes in clusters it really holds (its
    header's 8 bytes after the initialized size); any other holds all it allocates.  None if
    the field is out of bounds."""
    if not flags & (FLAG_COMPRESSED | FLAG_SPARSE) or roff < 72:
        return alloc
    (total,) = _U64.unpack_from(buf, pos + 64)
    return total if total <= alloc else None


def scan_for_stat(buf: bytes, first: int, used: int) -> tuple[bytes, int, int, int, bool] | None:
    """What a listing needs from a base record, read without building ``Attribute`` objects.

    Returns ($STANDARD_INFORMATION value, the count of $FILE_NAMEs that are not DOS-only, the
    unnamed data's size and ``Attribute.on_disk``, whether there is a named $DATA), as
    ``parse_attributes`` would give them.  None
    means "use ``parse_attributes``": an attribute list or a reparse point (which need more
    than this), a non-resident $STANDARD_INFORMATION, or anything malformed, so that the full
    parser names the fault.  Every directory listing stats each entry, so this is the hot path
    of a tree walk (about a third of the full parse's cost).
    """
    pos = first
    limit = min(used, len(buf))
    si: bytes | None = None
    links = 0
    data_vcn = -1
    size = allocated = 0
    named = False
    for _ in range(MAX_ATTRIBUTES):
        if pos + 16 > limit:
            if pos + 4 <= limit and _TYPE.unpack_from(buf, pos)[0] == END:
                break
            return None
        atype, length, nonres, name_len, name_off, flags, _id = _HEADER.unpack_from(buf, pos)
        if atype == END:
            break
        if length < 24 or length % 8 or pos + length > limit:
            return None
        if name_len and name_off + 2 * name_len > length:
            return None
        if atype == AT.ATTRIBUTE_LIST or atype == AT.REPARSE_POINT:
            return None
        if atype == AT.DATA and name_len:
            named = True
        if nonres == 0:
            vlen, voff = _RESIDENT.unpack_from(buf, pos + 16)
            if voff + vlen > length:
                return None
            at = pos + voff
            if atype == AT.FILE_NAME:
                if vlen > FN_NAMESPACE and buf[at + FN_NAMESPACE] != NS_DOS:
                    links += 1
            elif atype == AT.STANDARD_INFORMATION:
                if si is None:
                    si = buf[at : at + vlen]
            elif atype == AT.DATA and not name_len and data_vcn != 0:
                data_vcn, size, allocated = 0, vlen, (vlen + 7) & ~7
        elif nonres == 1:
            if length < 64:
                return None
            start, last, roff, cu, alloc, dsize, init = _NONRESIDENT.unpack_from(buf, pos + 16)
            if roff >= length or roff < 64 or last + 1 < start or last >= 1 << 62:
                return None
            if init > dsize or dsize > 1 << 62 or alloc > 1 << 62 or cu > 16:
                return None
            if atype == AT.STANDARD_INFORMATION:
                return None
            total = _total_allocated(buf, pos, flags, roff, alloc)
            if total is None:
                return None
            if atype == AT.DATA and not name_len and (data_vcn < 0 or start < data_vcn):
                data_vcn, size, allocated = start, dsize, total
        else:
            return None
        pos += length
    else:
        return None  # more attributes than a record holds: the full parser says so
    if si is None:
        return None
    return si, links, size, allocated, named


def _utf16(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-16-le", errors="surrogatepass")


FILETIME_EPOCH = 116444736000000000  # 100 ns intervals from 1601 to 1970


def filetime_ns(ft: int) -> int:
    """NTFS time (100 ns since 1601) as nanoseconds since the Unix epoch."""
    return (ft - FILETIME_EPOCH) * 100


class StandardInformation(NamedTuple):
    created: int  # raw FILETIME values
    modified: int
    changed: int  # MFT record change time
    accessed: int
    attributes: int
    security_id: int | None


def parse_standard_information(value: bytes, source: str) -> StandardInformation:
    if len(value) < 48:
        raise CorruptError("$STANDARD_INFORMATION is truncated", source=source)
    c, m, ch, a, attrs = struct.unpack_from("<QQQQI", value)
    sid = int.from_bytes(value[52:56], "little") if len(value) >= 72 else None
    return StandardInformation(c, m, ch, a, attrs, sid)


class FileName(NamedTuple):
    parent: int  # MFT record number of the parent directory
    parent_seq: int
    created: int
    modified: int
    changed: int
    accessed: int
    allocated_size: int
    data_size: int
    flags: int
    reparse_tag: int
    namespace: int
    name: str


def parse_file_name(value: bytes | memoryview, source: str) -> FileName:
    if len(value) < 66:
        raise CorruptError("$FILE_NAME is truncated", source=source)
    ref, c, m, ch, a, alloc, size, flags, reparse, nlen, ns = struct.unpack_from(
        "<QQQQQQQIIBB", value
    )
    if 66 + 2 * nlen > len(value):
        raise CorruptError("$FILE_NAME name runs past its value", source=source)
    if ns > 3:
        raise CorruptError(f"$FILE_NAME namespace {ns} is not valid", source=source)
    name = _utf16(value[66 : 66 + 2 * nlen])
    return FileName(
        ref & MFT_REF_MASK, ref >> 48, c, m, ch, a, alloc, size, flags, reparse, ns, name
    )


@dataclass(frozen=True, slots=True)
class AttributeListEntry:
    type: int
    name: str
    start_vcn: int
    record: int
    seq: int
    id: int


def parse_attribute_list(
    value: bytes, source: str, max_entries: int = 1 << 16
) -> list[AttributeListEntry]:
    out: list[AttributeListEntry] = []
    pos = 0
    while pos + 26 <= len(value):
        atype, length, nlen, noff, vcn, ref, aid = struct.unpack_from("<IHBBQQH", value, pos)
        if atype == END or atype == 0:
            break
        if length < 26 or pos + length > len(value) or noff + 2 * nlen > length:
            raise CorruptError(f"$ATTRIBUTE_LIST entry at {pos} is not valid", source=source)
        if len(out) >= max_entries:
            raise CorruptError("$ATTRIBUTE_LIST has too many entries", source=source)
        name = _utf16(value[pos + noff : pos + noff + 2 * nlen])
        out.append(AttributeListEntry(atype, name, vcn, ref & MFT_REF_MASK, ref >> 48, aid))
        pos += length
    return out
