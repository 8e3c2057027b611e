"""LZNT1 decompression: the algorithm behind NTFS compressed files.

A compressed $DATA attribute is cut into compression units of 16 clusters.  A unit that
compresses is stored as a sequence of chunks, each standing for (up to) 4096 bytes of
output ([MS-XCA] 2.5):

* a 2-byte little-endian header: bits 0-11 hold the stored chunk size minus 3 (so the data
  after the header is ``(h & 0xFFF) + 1`` bytes), bit 15 is set if the chunk is compressed,
  bits 12-14 are a signature (3).  A header of 0, or the end of the data, ends the unit.
* an uncompressed chunk: its data is the output, normally 4096 bytes.
* a compressed chunk: groups of a flag byte and up to 8 tokens, flag bit i (from bit 0)
  telling token i's kind: 0 a literal byte, 1 a 16-bit little-endian back-reference.  How
  the 16 bits split into displacement and length depends on U, the number of bytes the
  chunk has produced so far: the displacement takes the largest M in 4..12 with
  2**(M-1) < U, else 4 (so 4 bits up to U=16, 5 up to 32, ..., 12 from U=2049 on), and
  the length takes the other 16-M bits.  Displacement = (token >> (16-M)) + 1, length =
  (token & (2**(16-M) - 1)) + 3.  A reference may overlap what it produces.

Chunks are independent: references never reach before their chunk's first byte.  Tolerance
follows ntfs-3g and Windows (as Wine and ReactOS model it): the signature bits are ignored,
a chunk that produces less than 4096 bytes is zero-padded before the next chunk, and once
the unit is full the rest of the data is ignored.  Anything that would read or write out of
bounds is a CorruptError: a truncated chunk or token, a reference before the chunk start,
more than 4096 bytes from one chunk, or output past ``unit_size`` (possible only for a unit
size that is not a multiple of 4096).

Pure Python, so the inner loop avoids per-byte work: each flag value has a precomputed plan
of literal runs (copied with one slice) and references (copied with one slice, or with a
repeated pattern when they overlap their own output).
"""

from __future__ import annotations

from vcbfs.errors import CorruptError

__all__ = ["CHUNK_SIZE", "decompress_chunk", "decompress_unit"]

CHUNK_SIZE = 4096
"""Bytes of output one chunk stands for."""


def _plans() -> tuple[tuple[int, ...], ...]:
    """Each flag byte's 8 tokens in order: n > 0 for n literals in a row, 0 for a reference."""
    plans = []
    for flags in range(256):
        plan: list[int] = []
        bit = 0
        while bit < 8:
            if (flags >> bit) & 1:
                plan.append(0)
                bit += 1
                continue
            n = 0
            while bit < 8 and not (flags >> bit) & 1:
                n += 1
                bit += 1
            plan.append(n)
        plans.append(tuple(plan))
    return tuple(plans)


_PLANS = _plans()
# Length bits of a reference met after U bytes of a chunk: 16 - max(4, ceil(log2(U))).  U = 0
# cannot hold a valid reference (the displacement check rejects it).  The tables run 16 past
# the chunk size because a flag group's literals are only checked against it at the group's end.
_LEN_BITS = tuple(16 - max(4, min(12, (u - 1).bit_length())) for u in range(CHUNK_SIZE + 17))
_LEN_MASK = tuple((1 << b) - 1 for b in _LEN_BITS)


def _bad_reference(pos: int, disp: int, length: int, n: int, source: str | None) -> CorruptError:
    if disp > n:
        why = f"reaches {disp} bytes back, only {n} produced"
    else:
        why = f"of {length} bytes at output byte {n} runs past the chunk's {CHUNK_SIZE} bytes"
    return CorruptError(f"LZNT1: back-reference at byte {pos} {why}", source=source)


def _too_long(pos: int, source: str | None) -> CorruptError:
    return CorruptError(
        f"LZNT1: literals at byte {pos} run past the chunk's {CHUNK_SIZE} bytes", source=source
    )


def _inflate(src: bytes, pos: int, end: int, out: bytearray, source: str | None) -> None:
    """Append the output of the compressed chunk data ``src[pos:end]`` to ``out``.

    Flag groups that lie wholly before ``end`` take a path without bounds checks on the
    input; the last one or two groups take the checked path.  Error messages give offsets
    in ``src``.
    """
    base = o = len(out)  # o: where the next output byte goes
    limit = base + CHUNK_SIZE
    plans, len_bits, len_mask = _PLANS, _LEN_BITS, _LEN_MASK
    append = out.append
    while pos < end:
        group = pos
        plan = plans[src[pos]]
        pos += 1
        if pos + 16 <= end:  # 8 tokens of at most 2 bytes: all in bounds
            for step in plan:
                if step == 1:
                    append(src[pos])
                    pos += 1
                    o += 1
                elif step:
                    out += src[pos : pos + step]
                    pos += step
                    o += step
                else:
                    n = o - base
                    token = src[pos] | (src[pos + 1] << 8)
                    length = (token & len_mask[n]) + 3
                    disp = (token >> len_bits[n]) + 1
                    if disp > n or o + length > limit:
                        raise _bad_reference(pos, disp, length, n, source)
                    start = o - disp
                    if disp >= length:
                        out += out[start : start + length]
                    else:  # overlaps its own output: the last disp bytes repeat
                        out += (out[start:] * (length // disp + 1))[:length]
                    o += length
                    pos += 2
            if o > limit:
                raise _too_long(group, source)
            continue
        for step in plan:  # the chunk ends inside this group
            if pos >= end:
                break
            if step:
                stop = min(pos + step, end)
                out += src[pos:stop]
                o += stop - pos
                if o > limit:
                    raise _too_long(pos, source)
                pos = stop
                continue
            if pos + 1 >= end:
                raise CorruptError(
                    f"LZNT1: back-reference at byte {pos} is cut off by the chunk end",
                    source=source,
                )
            n = o - base
            token = src[pos] | (src[pos + 1] << 8)
            length = (token & len_mask[n]) + 3
            disp = (token >> len_bits[n]) + 1
            if disp > n or o + length > limit:
                raise _bad_reference(pos, disp, length, n, source)
            start = o - disp
            if disp >= length:
                out += out[start : start + length]
            else:
                out += (out[start:] * (length // disp + 1))[:length]
            o += length
            pos += 2


def decompress_chunk(data: bytes | memoryview, *, source: str | None = None) -> bytes:
    """The output of the one chunk (header and data) at the start of ``data``.

    Bytes after the chunk are ignored; a 0 header (end of unit) gives ``b""``.
    """
    src = bytes(data)
    if len(src) < 2:
        raise CorruptError("LZNT1 chunk header is truncated", source=source)
    header = src[0] | (src[1] << 8)
    if header == 0:
        return b""
    end = 2 + (header & 0xFFF) + 1
    if end > len(src):
        raise CorruptError(f"LZNT1 chunk needs {end} bytes, only {len(src)} given", source=source)
    if not header & 0x8000:
        return src[2:end]
    out = bytearray()
    _inflate(src, 2, end, out, source)
    return bytes(out)


def decompress_unit(
    data: bytes | memoryview, unit_size: int, *, source: str | None = None
) -> bytes:
    """Decompress the chunks of one compression unit: at most ``unit_size`` bytes.

    Chunk k stands for unit bytes ``4096*k`` up to ``4096*(k+1)``: a chunk that produces less
    is zero-padded when another chunk follows (as ntfs-3g does).  Chunks past ``unit_size``
    are ignored.  Returns what the chunks produce, which is shorter than ``unit_size`` when
    the data ends early (the end of a file): the caller zero-fills the rest of the unit.
    """
    if unit_size <= 0:
        raise ValueError(f"unit size must be positive, not {unit_size}")
    src = bytes(data)
    size = len(src)
    out = bytearray()
    pos = 0
    slot = 0  # where this chunk's output starts in the unit
    while pos + 2 <= size and slot < unit_size:
        header = src[pos] | (src[pos + 1] << 8)
        if header == 0:
            break
        body = pos + 2
        end = body + (header & 0xFFF) + 1
        if end > size:
            raise CorruptError(
                f"LZNT1 chunk at byte {pos} of the unit needs {end - pos} bytes, "
                f"the data ends after {size - pos}",
                source=source,
            )
        if len(out) < slot:
            out += bytes(slot - len(out))
        if header & 0x8000:
            _inflate(src, body, end, out, source)
        else:
            out += src[body:end]
        if len(out) > unit_size:
            raise CorruptError(
                f"LZNT1 chunk at byte {pos} of the unit runs past the unit's {unit_size} bytes",
                source=source,
            )
        pos = end
        slot += CHUNK_SIZE
    return bytes(out)
