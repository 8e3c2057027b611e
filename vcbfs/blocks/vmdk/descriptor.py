"""The VMDK text descriptor: header fields, extent lines and the disk database.

A descriptor is a small text file (or text embedded in a hosted sparse file) such as::

    # Disk DescriptorFile
    version=1
    CID=fffffffe
    parentCID=ffffffff
    createType="twoGbMaxExtentSparse"
    RW 4192256 SPARSE "my disk-s001.vmdk"
    RW 2097152 FLAT "my disk-flat.vmdk" 0
    ddb.adapterType = "lsilogic"

Files written by qemu are padded with NULs; names may hold spaces; VMware tools write CRLF
line ends sometimes.  Parsing is bounded: the text, the line count and the extent count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vcbfs.errors import CorruptError

__all__ = [
    "ACCESS_MODES",
    "EXTENT_TYPES",
    "NO_PARENT",
    "Descriptor",
    "ExtentLine",
    "looks_like_descriptor",
    "parse_descriptor",
]

MAX_DESCRIPTOR_BYTES = 1 << 20
MAX_EXTENTS = 65536
NO_PARENT = 0xFFFFFFFF
ACCESS_MODES = ("RW", "RDONLY", "NOACCESS")
EXTENT_TYPES = (
    "FLAT",
    "SPARSE",
    "ZERO",
    "VMFS",
    "VMFSSPARSE",
    "SESPARSE",
    "VMFSRDM",
    "VMFSRAW",
    "VMFSPASSTHROUGH",
    "VMFSTHIN",
    "VMFSEAGERZEROEDTHICK",
)


@dataclass(frozen=True, slots=True)
class ExtentLine:
    """``ACCESS SECTORS TYPE ["FILE" [OFFSET]]``; sizes in 512-byte sectors."""

    access: str
    sectors: int
    type: str
    filename: str | None = None
    offset: int = 0


@dataclass(slots=True)
class Descriptor:
    """A parsed descriptor; ``fields`` keeps every header key as written, lower-cased."""

    fields: dict[str, str] = field(default_factory=dict)
    extents: list[ExtentLine] = field(default_factory=list)
    ddb: dict[str, str] = field(default_factory=dict)

    @property
    def create_type(self) -> str:
        return self.fields.get("createtype", "")

    @property
    def cid(self) -> int | None:
        return _hex_field(self.fields, "cid")

    @property
    def parent_cid(self) -> int:
        value = _hex_field(self.fields, "parentcid")
        return NO_PARENT if value is None else value

    @property
    def parent_hint(self) -> str | None:
        return self.fields.get("parentfilenamehint") or None

    @property
    def has_parent(self) -> bool:
        return self.parent_cid != NO_PARENT or self.parent_hint is not None

    @property
    def sectors(self) -> int:
        return sum(e.sectors for e in self.extents)


def _hex_field(fields: dict[str, str], key: str) -> int | None:
    raw = fields.get(key)
    if raw is None:
        return None
    try:
        return int(raw, 16) & 0xFFFFFFFF
    except ValueError:
        raise CorruptError(f"descriptor field {key} is not hexadecimal: {raw!r}") from None


def looks_like_descriptor(head: bytes) -> bool:
    """True when the first bytes of a file are descriptor text rather than binary data."""
    text = head[:1024].lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"# Disk DescriptorFile"):
        return True
    lowered = text.lower()
    return b"createtype" in lowered and b"\x00" not in text.rstrip(b"\x00")[:512]


def _number(text: str) -> int | None:
    """A decimal count as tools write it (ASCII digits, at most 20 of them), else None.

    ``str.isdigit`` also takes superscripts and other scripts' digits, which ``int`` refuses,
    and ``int`` refuses more than 4300 digits: neither may escape as a bare ValueError.
    """
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return None
    return int(text)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _parse_extent(line: str, lineno: int, source: str | None) -> ExtentLine:
    def bad(why: str) -> CorruptError:
        return CorruptError(f"descriptor line {lineno}: {why}: {line!r}", source=source)

    head, quote, rest = line.partition('"')
    words = head.split()
    if len(words) != 3:
        raise bad("an extent line needs ACCESS SECTORS TYPE")
    access, sectors_text, ext_type = words[0].upper(), words[1], words[2].upper()
    if access not in ACCESS_MODES:
        raise bad(f"unknown access mode {words[0]!r}")
    sectors = _number(sectors_text)
    if sectors is None:
        raise bad("extent size is not a number (or longer than 20 digits)")
    if sectors <= 0 or sectors > 1 << 48:
        raise bad("extent size out of range")
    filename = None
    offset = 0
    if quote:
        filename, closing, tail = rest.partition('"')
        if not closing:
            raise bad("unterminated file name")
        if not filename:
            raise bad("empty file name")
        tail = tail.strip()
        if tail:
            number = _number(tail.split()[0])
            if number is None:
                raise bad("extent offset is not a number (or longer than 20 digits)")
            offset = number
            if offset > 1 << 48:
                raise bad("extent offset out of range")
    elif ext_type != "ZERO":
        raise bad(f"a {ext_type} extent needs a file name")
    return ExtentLine(access, sectors, ext_type, filename, offset)


def parse_descriptor(data: bytes, source: str | None = None) -> Descriptor:
    """Parse descriptor text (NUL padding and CRLF allowed); raise CorruptError if malformed."""
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise CorruptError(f"descriptor is larger than {MAX_DESCRIPTOR_BYTES} bytes", source=source)
    nul = data.find(b"\x00")
    if nul >= 0:
        if data[nul:].strip(b"\x00"):
            raise CorruptError("descriptor text contains NUL bytes", source=source, offset=nul)
        data = data[:nul]
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    desc = Descriptor()
    for lineno, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.split(None, 1)[0].upper()
        if first in ACCESS_MODES:
            if len(desc.extents) >= MAX_EXTENTS:
                raise CorruptError(f"more than {MAX_EXTENTS} extents", source=source)
            desc.extents.append(_parse_extent(line, lineno, source))
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise CorruptError(
                f"descriptor line {lineno} is not understood: {line!r}", source=source
            )
        key = key.strip()
        if key.lower().startswith("ddb."):
            desc.ddb[key[4:]] = _unquote(value)
        else:
            desc.fields[key.lower()] = _unquote(value)
    if not desc.extents:
        raise CorruptError("descriptor lists no extents", source=source)
    desc.cid  # noqa: B018 - validate hex fields now, not on first use
    desc.parent_cid  # noqa: B018
    return desc
