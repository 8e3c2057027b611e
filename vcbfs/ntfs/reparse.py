"""Reparse points: NTFS symbolic links and junctions decoded, other tags named.

The $REPARSE_POINT value is a tag, a length and the tag's own data.  Symbolic links
(IO_REPARSE_TAG_SYMLINK) and junctions (IO_REPARSE_TAG_MOUNT_POINT) carry a substitute name
(``\\??\\C:\\Windows``) and a print name (``C:\\Windows``); a symlink also has a flag saying its
target is relative.  Deduplication, OneDrive placeholders and the like are reported by tag.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vcbfs.errors import CorruptError

__all__ = ["TAG_MOUNT_POINT", "TAG_SYMLINK", "Reparse", "parse_reparse"]

TAG_MOUNT_POINT = 0xA0000003
TAG_SYMLINK = 0xA000000C
SYMLINK_FLAG_RELATIVE = 1
TAG_NAMES = {
    TAG_MOUNT_POINT: "junction",
    TAG_SYMLINK: "symlink",
    0x80000013: "dedup",
    0x80000017: "wof",
    0x9000001A: "cloud",
    0x80000014: "nfs",
    0x8000001B: "appexeclink",
    0x80000023: "af_unix",
}


@dataclass(frozen=True, slots=True)
class Reparse:
    tag: int
    target: str | None = None  # the print name (or substitute name without its \??\ prefix)
    substitute: str | None = None
    relative: bool = False

    @property
    def kind(self) -> str:
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
        return Reparse(tag)
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
