"""Mutations of seed inputs, as data: the same edits for Hypothesis (which can shrink them)
and for the plain mutation loop of ``scripts/fuzz``.

An edit is ``(op, position, value)``; ``apply`` clamps the position into the input, so any
triple is valid on any input.  The values aim where parsers break: sizes and counts near 2**63
and 2**64, sign boundaries, 0 and 1, and plain random bytes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["INTERESTING", "OPS", "Edit", "apply", "random_edits", "random_input"]

Edit = tuple[str, int, int]

INTERESTING = (
    0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 511, 512, 1023, 1024, 4095,
    4096, 4097, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF,
    1 << 32, (1 << 48) - 1, 1 << 48, (1 << 62) - 1, 1 << 62, (1 << 63) - 1, 1 << 63,
    (1 << 63) + 1, (1 << 64) - 512, (1 << 64) - 2, (1 << 64) - 1,
)  # fmt: skip
"""Field values that sit on the boundaries parsers get wrong."""

OPS = ("flip", "byte", "u16", "u32", "u64", "insert", "delete", "dup", "truncate", "text")
_WIDTH = {"u16": 2, "u32": 4, "u64": 8}
_TOKENS = (b"0", b"-1", b"18446744073709551615", b"9" * 30, b"9" * 4400, b'"', b"=", b"\n",
           b"\x00", b"RW ", b" FLAT ", b"\xc2\xb2", b"\xd9\xa3", b"\xff\xfe", b"\\",
           b"/")  # fmt: skip


def apply(data: bytes, edits: Sequence[Edit]) -> bytes:
    """``data`` with each edit made in turn."""
    buf = bytearray(data)
    for op, pos, value in edits:
        n = len(buf)
        at = pos % (n + 1)
        if op == "flip" and n:
            buf[at % n] ^= 1 << (value % 8)
        elif op == "byte" and n:
            buf[at % n] = value % 256
        elif op in _WIDTH:
            w = _WIDTH[op]
            v = INTERESTING[value % len(INTERESTING)] if value < 1 << 16 else value
            if value & 1 << 20:
                v = -v  # and its negative, two's complement
            at = at // w * w if n >= w else 0  # most fields are aligned
            field = (v % (1 << 8 * w)).to_bytes(w, "little")
            buf[at : at + w] = field
        elif op == "insert":
            buf[at:at] = bytes([value % 256]) * (1 + (value >> 8) % 64)
        elif op == "delete":
            del buf[at : at + 1 + value % 256]
        elif op == "dup" and n:
            start = value % n
            buf[at:at] = buf[start : start + 1 + (value >> 8) % 512]
        elif op == "truncate":
            del buf[at:]
        elif op == "text":
            token = _TOKENS[value % len(_TOKENS)]
            buf[at : at + (len(token) if value & 1 << 8 else 0)] = token
    return bytes(buf)


def random_edits(rng: random.Random, size: int) -> list[Edit]:
    """One to eight edits, positions spread over an input of ``size`` bytes."""
    edits = []
    for _ in range(1 + int(rng.expovariate(0.6)) % 8):
        op = rng.choice(OPS)
        if op == "truncate" and rng.random() < 0.8:
            op = "flip"
        value = rng.randrange(1 << 22) if rng.random() < 0.8 else rng.getrandbits(64)
        edits.append((op, rng.randrange(size + 1), value))
    return edits


def random_input(rng: random.Random) -> bytes:
    """Pure noise, of any length up to 8 KiB: what stops at the first check."""
    n = int(rng.expovariate(1 / 600)) % 8192
    return rng.randbytes(n)
