"""Update-sequence fixups: how NTFS detects torn multi-sector writes of records and index blocks.

The last two bytes of every 512-byte stride of a record hold the update sequence number; the real
bytes are kept in the update sequence array near the record's start.  A stride whose last bytes
do not match was torn: the record is corrupt, and only that record.
"""

from __future__ import annotations

import struct

from vcbfs.errors import CorruptError

__all__ = ["apply_fixups"]

STRIDE = 512
_USA = struct.Struct("<HH")


def apply_fixups(raw: bytes, magic: bytes, source: str, offset: int) -> bytes:
    """A copy of ``raw`` with its fixups applied, checked; raises CorruptError.

    The copy is built in one join of slices (the stat of every listed file goes through here).
    """
    if len(raw) < 8 or raw[:4] != magic:
        what = "empty" if not raw[:4].strip(b"\0") else f"bad magic {raw[:4]!r}"
        raise CorruptError(f"{magic.decode()} record is {what}", source=source, offset=offset)
    usa_offset, usa_count = _USA.unpack_from(raw, 4)
    strides = len(raw) // STRIDE
    if usa_count != strides + 1 or usa_offset < 8 or usa_offset + 2 * usa_count > STRIDE - 2:
        raise CorruptError(
            f"update sequence array ({usa_count} entries at {usa_offset}) does not fit a "
            f"{len(raw)}-byte record",
            source=source,
            offset=offset,
        )
    usn = raw[usa_offset : usa_offset + 2]
    parts: list[bytes] = []
    start = 0
    for i in range(strides):
        end = (i + 1) * STRIDE
        if raw[end - 2 : end] != usn:
            raise CorruptError(
                f"torn write: sector {i} of the record does not end with its update sequence",
                source=source,
                offset=offset + end - 2,
            )
        at = usa_offset + 2 + 2 * i
        parts += (raw[start : end - 2], raw[at : at + 2])
        start = end
    parts.append(raw[start:])
    return b"".join(parts)
