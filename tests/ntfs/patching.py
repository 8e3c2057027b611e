"""Copy-on-write views of a volume for corruption tests, and where NTFS structures sit in it.

``PatchedSource`` lays patches (byte strings at volume offsets) over a read-only base source, so
each test case damages its own view of the cached reference image without copying 512 MiB; it
also counts what the reader asks of it, so a test can check that reads stay bounded.

The other helpers find a structure's bytes on the volume through a clean ``NtfsVolume`` and
hand back what to patch: an MFT record or INDX block with its fixups applied (edit it, then
``protect`` it again so the damage reaches the parsers instead of the fixup check), the volume
offset of a byte of any non-resident attribute, and the offset of an attribute in a record.
The ``*_fields`` helpers list the (offset, width) of every length, offset, count, flag and
reference in a sound structure: where a fuzzer's damage finds the parsers' checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.memsource import overlay
from vcbfs.blocks.source import ByteSource
from vcbfs.errors import OutOfRangeError
from vcbfs.ntfs.attributes import AT, Attribute
from vcbfs.ntfs.fixup import STRIDE, apply_fixups
from vcbfs.ntfs.stream import AttributeStream, open_stream
from vcbfs.ntfs.volume import NtfsVolume

__all__ = [
    "AttributeAt",
    "Field",
    "PatchedSource",
    "attribute_list_fields",
    "attribute_offsets",
    "find_attribute",
    "index_allocation",
    "index_block_fields",
    "index_block_offset",
    "node_fields",
    "protect",
    "read_index_block",
    "read_record",
    "record_fields",
    "record_offset",
    "stream_offset",
    "value_fields",
]


class PatchedSource(ByteSource):
    """``base`` with patches laid over it (later patches win); counts reads."""

    def __init__(self, base: ByteSource, patches: dict[int, bytes] | None = None):
        self.base = base
        self.size = base.size
        self.name = f"{base.name} (patched)"
        self.patches: dict[int, bytes] = {}
        self.largest_read = 0
        self.bytes_read = 0
        for offset, data in (patches or {}).items():
            self.patch(offset, data)

    def patch(self, offset: int, data: bytes | bytearray) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise OutOfRangeError(f"patch ({offset}, {len(data)}) outside the volume")
        self.patches[offset] = bytes(data)

    def _read(self, offset: int, n: int) -> bytes:
        self.largest_read = max(self.largest_read, n)
        self.bytes_read += n
        return overlay(self.base.read_at(offset, n), offset, self.patches.items())


def stream_offset(stream: ByteSource, pos: int) -> int:
    """The volume offset of byte ``pos`` of a non-resident attribute's stream."""
    assert isinstance(stream, AttributeStream), "a resident value lives in its MFT record"
    cs = stream.cluster_size
    lcn, _left = stream.map.lookup(pos // cs)
    assert lcn is not None, f"byte {pos} of {stream.name} lies in a hole"
    return lcn * cs + pos % cs


def record_offset(volume: NtfsVolume, number: int) -> int:
    """The volume offset of MFT record ``number`` (through $MFT's own runs)."""
    size = volume.mft.record_size
    start = stream_offset(volume.mft.stream, number * size)
    assert stream_offset(volume.mft.stream, number * size + size - 1) == start + size - 1
    return start


def read_record(volume: NtfsVolume, number: int) -> tuple[int, bytearray]:
    """(volume offset, the record's bytes with fixups applied) of MFT record ``number``."""
    offset = record_offset(volume, number)
    raw = volume.source.read_at(offset, volume.mft.record_size)
    return offset, bytearray(apply_fixups(raw, b"FILE", volume.name, offset))


def protect(buf: bytes | bytearray) -> bytes:
    """Undo ``apply_fixups``: move each stride's last two bytes to the update sequence array.

    ``buf`` is a record or index block with fixups applied (possibly edited); the result is
    what a sound write of it puts on disk, keeping the update sequence number it has.
    """
    out = bytearray(buf)
    usa = int.from_bytes(out[4:6], "little")
    usn = out[usa : usa + 2]
    for i in range(len(out) // STRIDE):
        end = (i + 1) * STRIDE
        at = usa + 2 + 2 * i
        out[at : at + 2] = out[end - 2 : end]
        out[end - 2 : end] = usn
    return bytes(out)


@dataclass(frozen=True, slots=True)
class AttributeAt:
    """An attribute record inside a (fixed-up) MFT record: where it starts and its fields."""

    offset: int  # from the start of the MFT record
    type: int
    name: str
    length: int
    resident: bool
    value_offset: int  # resident value, from the start of the MFT record; 0 if non-resident
    value_length: int
    runlist_offset: int  # from the start of the MFT record; 0 if resident


def attribute_offsets(buf: bytes | bytearray) -> list[AttributeAt]:
    """The attribute records of a sound (fixed-up) MFT record, in order."""
    out = []
    pos = int.from_bytes(buf[0x14:0x16], "little")
    while int.from_bytes(buf[pos : pos + 4], "little") != 0xFFFFFFFF:
        atype = int.from_bytes(buf[pos : pos + 4], "little")
        length = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        resident = buf[pos + 8] == 0
        name_len, name_off = buf[pos + 9], int.from_bytes(buf[pos + 10 : pos + 12], "little")
        name = bytes(buf[pos + name_off : pos + name_off + 2 * name_len]).decode("utf-16-le")
        voff = vlen = roff = 0
        if resident:
            vlen = int.from_bytes(buf[pos + 16 : pos + 20], "little")
            voff = pos + int.from_bytes(buf[pos + 20 : pos + 22], "little")
        else:
            roff = pos + int.from_bytes(buf[pos + 32 : pos + 34], "little")
        out.append(AttributeAt(pos, atype, name, length, resident, voff, vlen, roff))
        pos += length
    return out


def find_attribute(buf: bytes | bytearray, atype: int, name: str = "") -> AttributeAt:
    """The first attribute of a type (and name) in a sound MFT record."""
    found = [a for a in attribute_offsets(buf) if a.type == atype and a.name == name]
    assert found, f"no attribute {atype:#x} {name!r} in the record"
    return found[0]


def index_allocation(volume: NtfsVolume, number: int) -> ByteSource:
    """A directory's $I30 $INDEX_ALLOCATION stream."""
    _rec, attrs = volume.mft.attributes(number)
    extents: list[Attribute] = [
        a for a in attrs if a.type == AT.INDEX_ALLOCATION and a.name == "$I30"
    ]
    return open_stream(volume.source, volume.boot.cluster_size, extents, "$I30")


def index_block_offset(volume: NtfsVolume, number: int, vcn: int) -> int:
    """The volume offset of the INDX block at ``vcn`` of directory ``number``."""
    block, cs = volume.boot.index_record_size, volume.boot.cluster_size
    vcn_size = cs if block >= cs else 512  # as the reader counts index VCNs
    return stream_offset(index_allocation(volume, number), vcn * vcn_size)


def read_index_block(volume: NtfsVolume, number: int, vcn: int) -> tuple[int, bytearray]:
    """(volume offset, the INDX block with fixups applied) of a directory's block at ``vcn``."""
    offset = index_block_offset(volume, number, vcn)
    raw = volume.source.read_at(offset, volume.boot.index_record_size)
    return offset, bytearray(apply_fixups(raw, b"INDX", volume.name, offset))


# --- the fields a fuzzer aims at: (offset, width) of every length, offset, count and flag ---------

Field = tuple[int, int]

_SI_FIELDS: tuple[Field, ...] = ((0, 8), (8, 8), (16, 8), (24, 8), (32, 4), (52, 4))
_FN_FIELDS: tuple[Field, ...] = (
    *((0, 6), (6, 2), (8, 8), (16, 8), (24, 8), (32, 8)),  # parent, times
    *((40, 8), (48, 8), (56, 4), (60, 4), (64, 1), (65, 1)),  # sizes, flags, name length, space
)


def value_fields(atype: int, at: int) -> list[Field]:
    """Fields of a $STANDARD_INFORMATION or $FILE_NAME value starting at ``at``."""
    fields = {AT.STANDARD_INFORMATION: _SI_FIELDS, AT.FILE_NAME: _FN_FIELDS}.get(atype, ())
    return [(at + off, width) for off, width in fields]


def node_fields(buf: bytes | bytearray, at: int) -> list[Field]:
    """Fields of a sound index node whose header starts at ``at``: header, entries, keys."""
    out: list[Field] = [(at, 4), (at + 4, 4), (at + 8, 4), (at + 12, 1)]
    pos = at + int.from_bytes(buf[at : at + 4], "little")
    end = at + int.from_bytes(buf[at + 4 : at + 8], "little")
    while pos + 16 <= end:
        length = int.from_bytes(buf[pos + 8 : pos + 10], "little")
        flags = int.from_bytes(buf[pos + 12 : pos + 14], "little")
        out += [(pos, 6), (pos + 6, 2), (pos + 8, 2), (pos + 10, 2), (pos + 12, 2)]
        if flags & 1:
            out.append((pos + length - 8, 8))
        if flags & 2 or length < 16:
            break
        out += value_fields(AT.FILE_NAME, pos + 16)
        pos += length
    return out


def record_fields(buf: bytes | bytearray) -> list[Field]:
    """Fields of a sound (fixed-up) MFT record: header, attribute headers, runlists, values."""
    out: list[Field] = [(0x10, 2), (0x12, 2), (0x14, 2), (0x16, 2), (0x18, 4), (0x1C, 4)]
    out += [(0x20, 6), (0x2C, 4)]
    for a in attribute_offsets(buf):
        p = a.offset
        out += [(p, 4), (p + 4, 4), (p + 8, 1), (p + 9, 1), (p + 10, 2), (p + 12, 2), (p + 14, 2)]
        if a.resident:
            out += [(p + 16, 4), (p + 20, 2)]
            out += value_fields(a.type, a.value_offset)
            if a.type == AT.INDEX_ROOT:
                out += [(a.value_offset + 8, 4), *node_fields(buf, a.value_offset + 16)]
        else:
            out += [(p + 16, 8), (p + 24, 8), (p + 32, 2), (p + 34, 2)]
            out += [(p + 40, 8), (p + 48, 8), (p + 56, 8)]
            out += [(r, 1) for r in range(a.runlist_offset, p + a.length)]
    return out


def index_block_fields(buf: bytes | bytearray) -> list[Field]:
    """Fields of a sound (fixed-up) INDX block: its VCN, node header, entries and keys."""
    return [(16, 8), *node_fields(buf, 24)]


def attribute_list_fields(value: bytes | bytearray) -> list[Field]:
    """Fields of each entry of an $ATTRIBUTE_LIST value: type, length, name, VCN, record, id."""
    out: list[Field] = []
    pos = 0
    while pos + 26 <= len(value):
        length = int.from_bytes(value[pos + 4 : pos + 6], "little")
        out += [(pos, 4), (pos + 4, 2), (pos + 6, 1), (pos + 7, 1), (pos + 8, 8)]
        out += [(pos + 16, 6), (pos + 22, 2), (pos + 24, 2)]
        if length < 26:
            break
        pos += length
    return out
