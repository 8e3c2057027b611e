"""An in-memory byte source for unit and fuzz tests."""

from __future__ import annotations

import posixpath

from vcbfs.blocks.source import ByteSource, Location
from vcbfs.errors import NotFoundError


def overlay(data: bytes, offset: int, patches) -> bytes:
    """``data`` (read at ``offset``) with the parts of ``patches`` ((offset, bytes) pairs,
    later ones winning) that fall inside it laid over it."""
    end = offset + len(data)
    hits = [(at, p) for at, p in patches if at < end and at + len(p) > offset]
    if not hits:
        return data
    buf = bytearray(data)
    for at, p in hits:
        lo, hi = max(at, offset), min(at + len(p), end)
        buf[lo - offset : hi - offset] = p[lo - at : hi - at]
    return bytes(buf)


class MemorySource(ByteSource):
    """Bytes held in memory; counts reads so tests can see what reached the source."""

    def __init__(self, data: bytes, name: str = "<memory>"):
        self.data = bytes(data)
        self.size = len(self.data)
        self.name = name
        self.reads: list[tuple[int, int]] = []

    def _read(self, offset: int, n: int) -> bytes:
        self.reads.append((offset, n))
        return self.data[offset : offset + n]


class MemoryLocation(Location):
    """A file in an in-memory folder (``files`` maps names to bytes)."""

    def __init__(self, files: dict[str, bytes], name: str):
        self.files = files
        self.name = name

    def open(self) -> ByteSource:
        key = posixpath.normpath(self.name)
        if key not in self.files:
            raise NotFoundError("no such file", source=self.name)
        return MemorySource(self.files[key], self.name)

    def sibling(self, name: str) -> Location:
        return MemoryLocation(self.files, posixpath.join(posixpath.dirname(self.name), name))
