"""What the fuzz targets share: byte sources that catch huge reads, and input encodings.

A parser must never size a read or a buffer from a field it did not check, so every source a
target hands to a parser refuses a read larger than ``READ_CAP`` with ``HugeRead``: that is a
plain ``AssertionError``, not a vcbfs error, so the fuzzer counts it as a crash.

Inputs that stand for a large, mostly empty disk or volume are encoded as a size and patches
(``parse_image``), so a fuzzer can move a structure anywhere, make the disk 2**63 bytes long,
and still feed a few kilobytes.
"""

from __future__ import annotations

import struct

from tests.memsource import overlay
from vcbfs.blocks.source import ByteSource

__all__ = [
    "READ_CAP",
    "HugeRead",
    "ImageSource",
    "PatchedSource",
    "encode_image",
    "encode_patches",
    "parse_image",
    "parse_patches",
]

READ_CAP = 64 << 20
"""The largest single read a parser may make of guest bytes (a 16 MiB $ATTRIBUTE_LIST, a
32 MiB grain, a 4 MiB hive chunk all fit; a size field taken on trust does not)."""

_PATCH = struct.Struct("<QH")
_SMALL_PATCH = struct.Struct("<IH")
_IMAGE = struct.Struct("<QB")


class HugeRead(AssertionError):
    """A parser asked for more than READ_CAP bytes at once: a size trusted from disk."""


class _Capped(ByteSource):
    def read_at(self, offset: int, n: int) -> bytes:
        if n > READ_CAP and offset < self.size:
            raise HugeRead(f"read of {n} bytes at {offset} from {self.name}")
        return super().read_at(offset, n)


class ImageSource(_Capped):
    """``size`` bytes of zeros with ``patches`` (offset -> bytes) laid over them."""

    def __init__(self, size: int, patches: list[tuple[int, bytes]], name: str = "<fuzz>"):
        self.size = size
        self.name = name
        self.patches = [(at, p) for at, p in patches if p and at < size]

    def _read(self, offset: int, n: int) -> bytes:
        return overlay(bytes(n), offset, self.patches)


class PatchedSource(_Capped):
    """``base`` (bytes) with patches laid over it, in order, as it is read; the size is the
    base's.  Nothing is copied up front: a run costs what it reads, not the base's size."""

    def __init__(self, base: bytes, patches: list[tuple[int, bytes]], name: str = "<fuzz>"):
        self.size = len(base)
        self.name = name
        self.base = base
        self.patches = [(at, p[: self.size - at]) for at, p in patches if p and at < self.size]

    def _read(self, offset: int, n: int) -> bytes:
        return overlay(self.base[offset : offset + n], offset, self.patches)


class BytesSource(_Capped):
    """Exactly the fuzz input, as a file."""

    def __init__(self, data: bytes, name: str = "<fuzz>"):
        self.data = data
        self.size = len(data)
        self.name = name

    def _read(self, offset: int, n: int) -> bytes:
        return self.data[offset : offset + n]


def parse_patches(data: bytes, small: bool = True) -> list[tuple[int, bytes]]:
    """Patches encoded as ``offset (u32, or u64 when not small), length (u16), bytes``..."""
    head = _SMALL_PATCH if small else _PATCH
    out = []
    pos = 0
    while pos + head.size <= len(data):
        at, n = head.unpack_from(data, pos)
        pos += head.size
        out.append((at, data[pos : pos + n]))
        pos += n
    return out


def encode_patches(patches: list[tuple[int, bytes]], small: bool = True) -> bytes:
    head = _SMALL_PATCH if small else _PATCH
    return b"".join(head.pack(at, len(p)) + p for at, p in patches)


def parse_image(data: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """``(size, flags, patches)`` of an image encoded as ``size (u64), flags (u8), patches``
    (patch offsets are u64 here: anywhere on a disk of up to 2**64 bytes)."""
    if len(data) < _IMAGE.size:
        return len(data), 0, [(0, data)]
    size, flags = _IMAGE.unpack_from(data)
    return size, flags, parse_patches(data[_IMAGE.size :], small=False)


def encode_image(size: int, patches: list[tuple[int, bytes]], flags: int = 0) -> bytes:
    return _IMAGE.pack(size, flags) + encode_patches(patches, small=False)
