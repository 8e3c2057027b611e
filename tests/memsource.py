"""An in-memory byte source for unit and fuzz tests."""

from __future__ import annotations

import posixpath

from vcbfs.blocks.source import ByteSource, Location
from vcbfs.errors import NotFoundError


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
