"""The decoders behind NTFS compression (LZNT1) and WOF "compact OS" files (XPRESS, LZX).

The codecs are C libraries, called so that they release the GIL (worker threads decode in
parallel): LZNT1 by libyal's libfwnt (``pyfwnt``), about 30x faster than Python; XPRESS
Huffman and LZX by wimlib's decompressors (``libwim.so.15``, through ctypes), the reference
implementation of the WIM/WOF formats.  libfwnt also has XPRESS and LZX decoders, but its LZX
decoder returns wrong bytes without an error for valid chunks (it translates x86 CALL
operands in the last 10 bytes of a chunk, which LZX leaves alone, and misses one boundary
case of the translation) and refuses others (an empty length code), and its XPRESS decoder is
7-10x slower than wimlib's (see docs/design.md).  What this module adds is what a backup needs
around them: every output length is checked, and every failure is a ``CorruptError`` naming
the source; LZNT1 follows Windows where libfwnt does not.

LZNT1 ([MS-XCA] 2.5) stores a compression unit as chunks, each a 2-byte header (bits 0-11:
stored size - 3; bit 15: compressed) standing for 4096 bytes of output.  Windows pads a chunk
that produces less than 4096 bytes with zeros before the next one and stops once the unit is
full; libfwnt joins short chunks end to end instead.  So a unit goes to libfwnt in one call
when every chunk fills its 4096 bytes (what Windows writes, except for the last chunk of a
file), and chunk by chunk otherwise.  The pure-Python decoder in ``tests/ntfs/lznt1_oracle.py``
is the test oracle for both paths.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading

import pyfwnt

from vcbfs.blocks.source import Buffer
from vcbfs.errors import CorruptError, UnavailableError

__all__ = ["LZNT1_CHUNK", "lznt1_unit", "lzx_chunk", "xpress_huffman_chunk"]

LZNT1_CHUNK = 4096
"""Bytes of output one LZNT1 chunk stands for."""
_COMPRESSED = 0x8000


def lznt1_unit(data: Buffer, unit_size: int, source: str | None = None) -> bytes:
    """One compression unit's LZNT1 chunks, decoded to exactly ``unit_size`` bytes.

    ``data`` is what the unit's allocated clusters hold: the chunks, then anything (the end is
    a zero header, or the data's end).  Output past ``unit_size`` is corruption.
    """
    raw = bytes(data)
    chunks = _chunks(raw, unit_size, source)
    if not chunks:
        return bytes(unit_size)
    end = chunks[-1][1]
    whole = min(len(chunks) * LZNT1_CHUNK, unit_size)
    try:
        out = pyfwnt.lznt1_decompress(raw if end == len(raw) else raw[:end], unit_size)
    except (OSError, ValueError):
        out = None
    if out is None or len(out) != whole:
        out = _chunk_by_chunk(raw, chunks, unit_size, source)
    return out + bytes(unit_size - len(out)) if len(out) < unit_size else out


def _chunks(raw: bytes, unit_size: int, source: str | None) -> list[tuple[int, int]]:
    """(start, end) of each chunk, header included, until a zero header, the data's end or a
    full unit."""
    out: list[tuple[int, int]] = []
    pos, size = 0, len(raw)
    while pos + 2 <= size and len(out) * LZNT1_CHUNK < unit_size:
        header = raw[pos] | raw[pos + 1] << 8
        if header == 0:
            break
        end = pos + (header & 0xFFF) + 3
        if end > size:
            raise CorruptError(
                f"LZNT1: chunk at byte {pos} needs {end - pos} bytes, only {size - pos} stored",
                source=source,
            )
        out.append((pos, end))
        pos = end
    return out


def _chunk_by_chunk(
    raw: bytes, chunks: list[tuple[int, int]], unit_size: int, source: str | None
) -> bytes:
    parts = []
    for i, (start, end) in enumerate(chunks):
        header = raw[start] | raw[start + 1] << 8
        if not header & _COMPRESSED:
            part = raw[start + 2 : end]
        elif end - start <= 3:
            part = b""  # a flag byte and no tokens: Windows reads an empty chunk
        else:
            try:
                part = pyfwnt.lznt1_decompress(raw[start:end], LZNT1_CHUNK)
            except (OSError, ValueError) as exc:
                raise CorruptError(
                    f"LZNT1: chunk {i} at byte {start} does not decode ({_reason(exc)})",
                    source=source,
                ) from None
        if len(part) > LZNT1_CHUNK:
            raise CorruptError(
                f"LZNT1: chunk {i} at byte {start} gives more than {LZNT1_CHUNK} bytes",
                source=source,
            )
        if i < len(chunks) - 1:
            part += bytes(LZNT1_CHUNK - len(part))
        parts.append(part)
    out = b"".join(parts)
    if len(out) > unit_size:
        raise CorruptError(
            f"LZNT1: {len(out)} bytes of output run past the unit's {unit_size} bytes",
            source=source,
        )
    return out


def xpress_huffman_chunk(data: Buffer, size: int, chunk: int, source: str | None = None) -> bytes:
    """One XPRESS Huffman chunk ([MS-XCA] 2.2) of exactly ``size`` bytes, from a stream of
    ``chunk``-byte chunks."""
    return _wimlib_decode(_XPRESS, chunk, "XPRESS", data, size, source)


def lzx_chunk(data: Buffer, size: int, chunk: int = 32768, source: str | None = None) -> bytes:
    """One LZX chunk as WIM and WOF store it (a window of ``chunk`` bytes, E8 translation)."""
    return _wimlib_decode(_LZX, chunk, "LZX", data, size, source)


_XPRESS, _LZX = 1, 2  # enum wimlib_compression_type
_local = threading.local()  # a decompressor holds its tables: one per thread and kind


@functools.cache
def _wimlib() -> ctypes.CDLL:
    name = ctypes.util.find_library("wim") or "libwim.so.15"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise UnavailableError(
            f"WOF files need wimlib's library to decode ({exc}); install it (Debian: libwim15)"
        ) from None
    lib.wimlib_create_decompressor.argtypes = [
        ctypes.c_int,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.wimlib_decompress.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
    ]
    return lib


def _decompressor(ctype: int, chunk: int) -> tuple[ctypes.c_void_p, ctypes.Array[ctypes.c_char]]:
    """This thread's decompressor for ``ctype`` and ``chunk``, and an output buffer.

    Never freed: a thread keeps at most one per WOF algorithm (a few hundred KiB each).
    """
    cache = getattr(_local, "decompressors", None)
    if cache is None:
        cache = _local.decompressors = {}
    found = cache.get((ctype, chunk))
    if found is None:
        handle = ctypes.c_void_p()
        if _wimlib().wimlib_create_decompressor(ctype, chunk, ctypes.byref(handle)):
            raise UnavailableError(f"wimlib has no decompressor for {ctype} with {chunk}")
        found = cache[ctype, chunk] = (handle, ctypes.create_string_buffer(chunk))
    return found


def _wimlib_decode(
    ctype: int, chunk: int, codec: str, data: Buffer, size: int, source: str | None
) -> bytes:
    if not 0 < size <= chunk:
        raise CorruptError(f"{codec} chunk of {size} bytes in {chunk}-byte chunks", source=source)
    handle, out = _decompressor(ctype, chunk)
    raw = bytes(data)
    if _wimlib().wimlib_decompress(raw, len(raw), out, size, handle):
        raise CorruptError(f"{codec} data does not decode to {size} bytes", source=source)
    return ctypes.string_at(out, size)  # one copy (out.raw[:size] made two)


def _reason(exc: Exception) -> str:
    """libfwnt's message, without the chain of its own function names."""
    parts = [p.split(": ", 1)[-1].strip() for p in str(exc).split(". ") if p.strip()]
    return parts[1] if len(parts) > 1 else (parts[0] if parts else type(exc).__name__)
