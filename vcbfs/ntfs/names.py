"""File names as NTFS compares them: upcased through the volume's own $UpCase table.

Windows looks names up case-insensitively with the table the volume was formatted with, and a
directory index is sorted by that comparison (ties broken by the exact code units, which lets
POSIX-namespace names differing only in case live side by side).  Comparing UTF-16 code units is
done by comparing UTF-16-BE bytes.
"""

from __future__ import annotations

import functools

from vcbfs.errors import CorruptError

__all__ = ["UpCase", "default_upcase"]


class UpCase:
    """The $UpCase table as a ``str.translate`` map."""

    def __init__(self, table: bytes, source: str = "$UpCase"):
        if len(table) < 2 * 128 or len(table) % 2:
            raise CorruptError(f"$UpCase is {len(table)} bytes, not a table", source=source)
        self._map = _translation(bytes(table[: 2 * 65536]))

    def upper(self, name: str) -> str:
        return name.translate(self._map)

    def key(self, name: str) -> tuple[bytes, bytes]:
        """The collation key: upcased code units, then the exact ones."""
        return (
            self.upper(name).encode("utf-16-be", "surrogatepass"),
            name.encode("utf-16-be", "surrogatepass"),
        )

    def fold(self, name: str) -> bytes:
        """The case-insensitive part of the key alone."""
        return self.upper(name).encode("utf-16-be", "surrogatepass")


@functools.lru_cache(maxsize=8)
def _translation(table: bytes) -> dict[int, int]:
    """The ``str.translate`` map of a table, built once per distinct table: the volumes of one
    Windows version share theirs, and building it walks 65536 entries (milliseconds)."""
    units = memoryview(table).cast("H")
    return {i: u for i, u in enumerate(units) if u != i and not 0xD800 <= u < 0xE000}


def _default_table() -> bytes:
    units = bytearray()
    for i in range(65536):
        u = i
        if not 0xD800 <= i < 0xE000:
            up = chr(i).upper()
            if len(up) == 1 and ord(up) < 65536:
                u = ord(up)
        units += u.to_bytes(2, "little")
    return bytes(units)


@functools.cache
def default_upcase() -> UpCase:
    """Unicode upper case as a table: for a volume whose own $UpCase is unreadable."""
    return UpCase(_default_table(), "<built-in upcase>")
