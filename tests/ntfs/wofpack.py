"""WofCompressedData streams made by wimlib's own compressors, for tests and benchmarks.

``pack(data, algorithm)`` compresses each chunk with ``wimlib_compress`` (libwim15, from
Debian's wimtools, called through ctypes) and lays the stream out as Windows' WOF does: a
chunk-offset table of N-1 entries (4 bytes, 8 for files of 4 GiB or more), each the end of a
chunk relative to the table's end, then the chunks; a chunk that does not shrink is stored
raw.  ``wof_reparse`` gives the matching reparse point value.  The decoders under test are
libfwnt's, so the encoder is deliberately another implementation.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Iterable

__all__ = ["ALGORITHMS", "Compressor", "assemble", "pack", "wof_reparse"]

#: WOF algorithm number -> (wimlib compression type, chunk size)
ALGORITHMS = {"XPRESS4K": (0, 1, 4096), "LZX": (1, 2, 32768), "XPRESS8K": (2, 1, 8192),
              "XPRESS16K": (3, 1, 16384)}  # fmt: skip
TAG_WOF = 0x80000017


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libwim.so.15")
    size, ptr = ctypes.c_size_t, ctypes.c_void_p
    lib.wimlib_create_compressor.argtypes = [ctypes.c_int, size, ctypes.c_uint, ctypes.POINTER(ptr)]
    lib.wimlib_compress.restype = size
    lib.wimlib_compress.argtypes = [ctypes.c_char_p, size, ctypes.c_char_p, size, ptr]
    lib.wimlib_free_compressor.argtypes = [ctypes.c_void_p]
    return lib


class Compressor:
    """One wimlib compressor for chunks of one WOF algorithm."""

    def __init__(self, algorithm: str):
        self.number, ctype, self.chunk = ALGORITHMS[algorithm]
        handle = ctypes.c_void_p()
        if _lib().wimlib_create_compressor(ctype, self.chunk, 0, ctypes.byref(handle)):
            raise RuntimeError(f"wimlib_create_compressor({algorithm}) failed")
        self._handle = handle
        self._out = ctypes.create_string_buffer(self.chunk)

    def chunk_bytes(self, data: bytes) -> bytes:
        """The stored form of one chunk: compressed, or ``data`` itself if that is no smaller."""
        n = _lib().wimlib_compress(data, len(data), self._out, len(data) - 1, self._handle)
        return self._out.raw[:n] if n else data

    def close(self) -> None:
        if self._handle:
            _lib().wimlib_free_compressor(self._handle)
            self._handle = ctypes.c_void_p()

    def __del__(self) -> None:
        self.close()


def assemble(chunks: Iterable[bytes], size: int) -> bytes:
    """A WofCompressedData stream from stored chunks, for a file of ``size`` bytes."""
    entry = "Q" if size >= 1 << 32 else "I"
    ends, body, pos = [], [], 0
    for c in chunks:
        body.append(c)
        pos += len(c)
        ends.append(pos)
    return struct.pack(f"<{len(ends) - 1}{entry}", *ends[:-1]) + b"".join(body) if ends else b""


def pack(data: bytes, algorithm: str) -> bytes:
    """``data`` as a WofCompressedData stream."""
    comp = Compressor(algorithm)
    try:
        step = comp.chunk
        return assemble(
            (comp.chunk_bytes(data[i : i + step]) for i in range(0, len(data), step)), len(data)
        )
    finally:
        comp.close()


def wof_reparse(algorithm: str, provider: int = 2) -> bytes:
    """The $REPARSE_POINT value of a WOF file (tag, length, reserved, then the tag's data)."""
    number = ALGORITHMS[algorithm][0]
    data = struct.pack("<II", 1, provider)
    data += struct.pack("<II", 1, number) if provider == 2 else struct.pack("<IIQ", 1, 0, 0)
    if provider != 2:
        data += bytes(20)  # the WIM provider's resource hash
    return struct.pack("<IHH", TAG_WOF, len(data), 0) + data
