"""NTFS names as POSIX names, one to one: what the mount lists, and what a lookup asks for.

NTFS keeps a name as up to 255 UTF-16 code units, and a damaged or crafted volume can hold any
of them: an unpaired surrogate (which any Windows user can create), '/' and NUL (which NTFS's
POSIX namespace allows), or even a name that is empty, '.' or '..'.  A Linux name is bytes
without '/' and NUL, and is never empty, '.' or '..' (the kernel answers those itself).  So:

- a name is UTF-8, where an unpaired surrogate is encoded as itself (ED A0 80 for U+D800),
  bytes no valid UTF-8 name holds;
- '/' and NUL are shown as the private-use characters U+F02F and U+F000 (the mapping Samba's
  catia module uses), and a name that is '.' or '..' as U+F02E once or twice;
- an empty name is C0 80 (NUL in two bytes, as Java's "modified UTF-8" writes it);
- a name that really holds U+F000, U+F02E or U+F02F has them in their 4-byte form (F0 8F 80
  80, AE, AF), which no UTF-8 encoder makes, so that it never meets a name mapped above.

No two names are shown alike, and ``decode_name`` gives back exactly the name shown: a listed
name always looks up to its own entry, never to another one that differs from it only in how
it was shown.  Bytes no name is shown as decode to None (not found).
"""

from __future__ import annotations

import re

__all__ = ["decode_name", "encode_name", "encode_path"]

_TO_POSIX = {ord("/"): "\uf02f", 0: "\uf000"}
_FROM_POSIX = {ord("\uf02f"): "/", ord("\uf000"): "\0"}
_MAPPED = ("\uf000", "\uf02e", "\uf02f")
_WHOLE = {".": "\uf02e".encode(), "..": "\uf02e\uf02e".encode(), "": b"\xc0\x80"}
_FROM_WHOLE = {v: k for k, v in _WHOLE.items()}
_LONG = {c: bytes([0xF0, 0x8F, 0x80, 0x80 | (ord(c) & 0x3F)]) for c in _MAPPED}
_FROM_LONG = {v: k for k, v in _LONG.items()}
_SPLIT = re.compile(rb"(\xf0\x8f\x80[\x80\xae\xaf])")
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")  # a pair is shown as its character
_NEEDS_WORK = re.compile("[/\0\uf000\uf02e\uf02f]")


def encode_name(name: str) -> bytes:
    """The bytes a name is listed as."""
    whole = _WHOLE.get(name)
    if whole is not None:
        return whole
    if not _NEEDS_WORK.search(name):
        return name.encode("utf-8", "surrogatepass")
    out = bytearray()
    for part in re.split("([\uf000\uf02e\uf02f])", name):
        if part in _LONG:
            out += _LONG[part]
        else:
            out += part.translate(_TO_POSIX).encode("utf-8", "surrogatepass")
    return bytes(out)


def decode_name(raw: bytes) -> str | None:
    """The name shown as ``raw``, or None where no name is shown so."""
    whole = _FROM_WHOLE.get(raw)
    if whole is not None:
        return whole
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        return None
    out = []
    try:
        for i, part in enumerate(_SPLIT.split(raw)):
            if i % 2:
                out.append(_FROM_LONG[part])
            else:
                text = part.decode("utf-8", "surrogatepass")
                if "\uf02e" in text or _PAIR.search(text):
                    return None  # shown otherwise: in the 4-byte form, or as one character
                out.append(text.translate(_FROM_POSIX))
    except UnicodeDecodeError:
        return None
    return "".join(out)


def encode_path(ups: int, names: list[str]) -> bytes:
    """A relative path: ``ups`` times '..', then ``names`` each as ``encode_name`` lists it."""
    return b"/".join([b".."] * ups + [encode_name(n) for n in names]) or b"."
