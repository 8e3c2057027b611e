"""Reparse points: links decoded, and for every other tag, whether the file's data is here.

The $REPARSE_POINT value is a tag, a length and the tag's own data.  Symbolic links
(IO_REPARSE_TAG_SYMLINK) and junctions (IO_REPARSE_TAG_MOUNT_POINT) carry a substitute name
(``\\??\\C:\\Windows``) and a print name (``C:\\Windows``); a symlink also has a flag saying its
target is relative.

Many tags mean that the unnamed $DATA is not the file's content: Data Deduplication keeps it
in the volume's chunk store, cloud files and HSM keep it on a server, WOF keeps it compressed
in a named stream.  A backup that read such a $DATA would store zeros and report success, so
``missing_data`` names, for every tag, when the data is elsewhere (the caller then fails the
read with that reason).  A tag vcbfs does not know counts as "elsewhere" when its $DATA is
empty or holds no allocated cluster: an unknown stub is refused, never read as zeros.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vcbfs.errors import CorruptError

__all__ = ["TAG_MOUNT_POINT", "TAG_SYMLINK", "TAG_WOF", "Reparse", "missing_data", "parse_reparse"]

TAG_MOUNT_POINT = 0xA0000003
TAG_SYMLINK = 0xA000000C
TAG_WOF = 0x80000017
TAG_DEDUP = 0x80000013
SYMLINK_FLAG_RELATIVE = 1
CLOUD_MASK, CLOUD = 0xFFFF0FFF, 0x9000001A  # cloud files: 0x9000001A, 0x9000101A, ... 0x9000F01A
FILE_ATTRIBUTE_OFFLINE = 0x1000
FILE_ATTRIBUTE_RECALL_ON_OPEN = 0x40000
FILE_ATTRIBUTE_RECALL_ON_DATA_ACCESS = 0x400000
RECALL = (
    FILE_ATTRIBUTE_OFFLINE | FILE_ATTRIBUTE_RECALL_ON_OPEN | FILE_ATTRIBUTE_RECALL_ON_DATA_ACCESS
)

TAG_NAMES = {
    TAG_MOUNT_POINT: "junction",
    TAG_SYMLINK: "symlink",
    TAG_DEDUP: "dedup",
    TAG_WOF: "wof",
    CLOUD: "cloud",
    0x80000014: "nfs",
    0x8000001B: "appexeclink",
    0x80000023: "af_unix",
    0xC0000004: "hsm",
    0x80000006: "hsm2",
    0x80000007: "sis",
    0x80000005: "drive-extender",
    0x80000008: "wim",
    0x80000015: "placeholder",
    0x80000018: "wci",
    0x90001018: "wci",
    0x9000001C: "projfs",
    0x8000001E: "storage-sync",
    0x80000021: "onedrive",
    0xA000001D: "lx-symlink",
    0x80000024: "lx-fifo",
    0x80000025: "lx-chr",
    0x80000026: "lx-blk",
    0x80000019: "global-reparse",
    0xA0000027: "wci-link",
    0xA000001F: "wci-tombstone",
    0xA0000022: "projfs-tombstone",
}
#: The data always lives outside the volume: a dedup chunk store, an HSM or SIS store, a WIM.
REMOTE = {
    TAG_DEDUP: "its data is in the volume's Data Deduplication chunk store",
    0xC0000004: "its data was moved to hierarchical storage (HSM)",
    0x80000006: "its data was moved to hierarchical storage (HSM)",
    0x80000007: "its data is in the Single Instance Store",
    0x80000005: "its data is in a Drive Extender pool",
    0x80000008: "its data is in a mounted WIM image",
}
#: Placeholders: the data is elsewhere until the file is hydrated (recalled) on the guest.
PLACEHOLDERS = {0x80000015, 0x80000018, 0x90001018, 0x9000001C, 0x8000001E, 0x80000021}
#: Tags whose meaning is in the reparse data itself: their $DATA (often empty) is all there is.
SELF_CONTAINED = {
    TAG_MOUNT_POINT,
    TAG_SYMLINK,
    0x80000014,
    0x8000001B,
    0x80000023,
    0xA000001D,
    0x80000024,
    0x80000025,
    0x80000026,
    0x80000019,
    0xA0000027,
    0xA000001F,
    0xA0000022,
}


@dataclass(frozen=True, slots=True)
class Reparse:
    tag: int
    target: str | None = None  # the print name (or substitute name without its \??\ prefix)
    substitute: str | None = None
    relative: bool = False
    data: bytes = b""  # the tag's own data (what follows the 8-byte header)

    @property
    def kind(self) -> str:
        if self.tag & CLOUD_MASK == CLOUD:
            return "cloud"
        return TAG_NAMES.get(self.tag, f"tag {self.tag:#010x}")

    @property
    def is_link(self) -> bool:
        return self.tag in (TAG_SYMLINK, TAG_MOUNT_POINT) and bool(self.target)


def parse_reparse(value: bytes, source: str) -> Reparse:
    if len(value) < 8:
        raise CorruptError("$REPARSE_POINT is truncated", source=source)
    tag, length = struct.unpack_from("<IH", value)
    data = value[8 : 8 + length]
    if len(data) < length:
        raise CorruptError("$REPARSE_POINT data is truncated", source=source)
    if tag not in (TAG_SYMLINK, TAG_MOUNT_POINT):
        return Reparse(tag, data=data)
    head = 12 if tag == TAG_SYMLINK else 8
    if len(data) < head:
        raise CorruptError("reparse link header is truncated", source=source)
    so, sl, po, pl = struct.unpack_from("<HHHH", data)
    flags = int.from_bytes(data[8:12], "little") if tag == TAG_SYMLINK else 0
    names = data[head:]

    def name(off: int, n: int) -> str:
        if off + n > len(names) or n % 2:
            raise CorruptError("reparse link name lies outside its data", source=source)
        return names[off : off + n].decode("utf-16-le", "surrogatepass").rstrip("\0")

    substitute, printed = name(so, sl), name(po, pl)
    target = printed or (substitute[4:] if substitute.startswith("\\??\\") else substitute)
    return Reparse(tag, target, substitute, bool(flags & SYMLINK_FLAG_RELATIVE))


def missing_data(reparse: Reparse, attributes: int, size: int, allocated: int) -> str | None:
    """Why the unnamed $DATA of a file with this reparse point is not its content, or None.

    ``attributes`` are the file's FILE_ATTRIBUTE_* bits, ``size`` and ``allocated`` its
    unnamed $DATA's size and the bytes it really holds.  WOF is the caller's to decode.
    """
    tag = reparse.tag
    if tag in SELF_CONTAINED or tag == TAG_WOF:
        return None
    if tag in REMOTE:
        return f"{REMOTE[tag]} (reparse tag {tag:#010x}); read it on the guest"
    stub = size > 0 and allocated == 0  # all of its data is a hole
    if tag & CLOUD_MASK == CLOUD or tag in PLACEHOLDERS:
        if attributes & RECALL or stub:
            return (
                f"it is a {reparse.kind} placeholder whose data is not on the volume "
                f"(reparse tag {tag:#010x}); hydrate it on the guest"
            )
        return None
    if stub or size == 0 or attributes & FILE_ATTRIBUTE_OFFLINE:
        return (
            f"it has reparse tag {tag:#010x}, which vcbfs does not know, and its data is not on "
            "the volume"
        )
    return None
