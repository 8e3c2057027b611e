"""A test-only LZNT1 compressor, so tests can round-trip data through the decompressor.

Greedy, hash-chained and slow; it exists to produce valid streams, not good ones.  It is
written from the [MS-XCA] 2.5 wording on purpose, not from the decoder's tables: the split
of a reference into displacement and length bits is "the largest M >= 4 with 2**(M-1) < U,
else 4", U being the bytes the chunk has produced so far.  The low-level pieces
(``encode_chunk_body``, ``chunk``) also let tests build streams token by token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

CHUNK = 4096

Token = int | tuple[int, int]
"""A literal byte value, or a back-reference ``(displacement, length)``."""


def split_bits(u: int) -> tuple[int, int]:
    """``(displacement bits, length bits)`` for a reference after ``u`` bytes of a chunk."""
    m = 4
    for cand in range(12, 4, -1):
        if (1 << (cand - 1)) < u:
            m = cand
            break
    return m, 16 - m


def encode_token(u: int, disp: int, length: int) -> int:
    """The 16-bit word of a reference at position ``u``; asserts it is representable."""
    dbits, lbits = split_bits(u)
    assert 1 <= disp <= min(u, 1 << dbits), (u, disp)
    assert 3 <= length <= (1 << lbits) + 2, (u, length)
    return ((disp - 1) << lbits) | (length - 3)


def encode_chunk_body(tokens: Iterable[Token]) -> bytes:
    """The data of a compressed chunk (no header) holding ``tokens`` in order."""
    body = bytearray()
    flag_at = -1
    bit = 8
    u = 0
    for tok in tokens:
        if bit == 8:
            flag_at = len(body)
            body.append(0)
            bit = 0
        if isinstance(tok, int):
            body.append(tok)
            u += 1
        else:
            disp, length = tok
            body += encode_token(u, disp, length).to_bytes(2, "little")
            body[flag_at] |= 1 << bit
            u += length
        bit += 1
    return bytes(body)


def header(size: int, compressed: bool, signature: int = 3) -> bytes:
    """A chunk header for ``size`` bytes of chunk data (1..4096)."""
    assert 1 <= size <= CHUNK, size
    value = (size - 1) | (signature << 12) | (0x8000 if compressed else 0)
    return value.to_bytes(2, "little")


def chunk(body: bytes, compressed: bool, signature: int = 3) -> bytes:
    """Header and data of one chunk."""
    return header(len(body), compressed, signature) + body


def greedy_tokens(data: bytes, max_candidates: int = 48) -> list[Token]:
    """Greedy longest-match tokens for one chunk's worth (<= 4096 bytes) of ``data``."""
    assert len(data) <= CHUNK
    heads: dict[bytes, list[int]] = {}
    tokens: list[Token] = []
    p = 0
    n = len(data)
    while p < n:
        best_len, best_disp = 0, 0
        if p + 3 <= n:
            dbits, lbits = split_bits(p)
            max_disp = min(p, 1 << dbits)
            max_len = min((1 << lbits) + 2, n - p)
            for q in reversed(heads.get(data[p : p + 3], [])[-max_candidates:]):
                if p - q > max_disp:
                    break
                k = 0
                while k < max_len and data[p + k] == data[q + k]:
                    k += 1
                if k > best_len:
                    best_len, best_disp = k, p - q
                    if k == max_len:
                        break
        step = best_len if best_len >= 3 else 1
        tokens.append((best_disp, best_len) if best_len >= 3 else data[p])
        for i in range(p, min(p + step, n - 2)):
            heads.setdefault(data[i : i + 3], []).append(i)
        p += step
    return tokens


def compress_chunk(data: bytes, mode: str = "auto") -> bytes:
    """One chunk for ``data`` (<= 4096 bytes): ``"auto"`` stores it raw if that is smaller.

    ``"compressed"`` forces a compressed chunk (an AssertionError if it would not fit),
    ``"uncompressed"`` a raw one.
    """
    assert 0 < len(data) <= CHUNK
    if mode != "uncompressed":
        body = encode_chunk_body(greedy_tokens(data))
        if mode == "compressed" or len(body) < len(data):
            return chunk(body, True)
    return chunk(data, False)


def compress_unit(data: bytes, modes: Sequence[str] | str = "auto", end: bool = True) -> bytes:
    """Chunks for ``data`` cut at 4096 bytes, then a 0 header if ``end``."""
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    if isinstance(modes, str):
        modes = [modes] * len(pieces)
    out = b"".join(compress_chunk(p, m) for p, m in zip(pieces, modes, strict=True))
    return out + (b"\0\0" if end else b"")
