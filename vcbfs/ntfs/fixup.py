"""Update-sequence fixups: how NTFS detects torn multi-sector writes of records and index blocks.

The last two bytes of every 512-byte stride of a record hold the update sequence number; the real
bytes are kept in the update sequence array near the record's start.  A stride whose last bytes
do not match was torn: the record is corrupt, and only that record.
"""

from __future__ import annotations

from vcbfs.errors import CorruptError

__all__ = ["apply_fixups"]

STRIDE = 512


def apply_fixups(raw: bytes, magic: bytes, source: str, offset: int) -> bytearray:
    """A copy of ``raw`` with its fixups applied, checked; raises CorruptError."""
    if raw[:4] != magic:
        what = "empty" if not raw[:4].strip(b"\0") else f"bad magic {raw[:4]!r}"
        raise CorruptError(f"{magic.decode()} record is {what}", source=source, offset=offset)
    buf = bytearray(raw)
    usa_offset = int.from_bytes(buf[4:6], "little")
    usa_count = int.from_bytes(buf[6:8], "little")
    strides = len(buf) // STRIDE
    if usa_count != strides + 1 or usa_offset < 8 or usa_offset + 2 * usa_count > STRIDE - 2:
        raise CorruptError(
            f"update sequence array ({usa_count} entries at {usa_offset}) does not fit a "
            f"{len(buf)}-byte record",
            source=source,
            offset=offset,
        )
    usn = buf[usa_offset : usa_offset + 2]
    for i in range(strides):
        end = (i + 1) * STRIDE
        if buf[end - 2 : end] != usn:
            raise CorruptError(
                f"torn write: sector {i} of the record does not end with its update sequence",
                source=source,
                offset=offset + end - 2,
            )
        at = usa_offset + 2 + 2 * i
        buf[end - 2 : end] = buf[at : at + 2]
    return buf
