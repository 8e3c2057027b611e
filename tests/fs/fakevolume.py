"""A VM image for the adapter fuzzer: NTFS volumes described by plain data, not by disk bytes.

``FakeNtfs`` answers what the tree asks of ``NtfsVolume`` (stat, names, streams, open, the
security descriptor and reparse data) from a ``VolumeSpec``, through the NTFS reader's own
conversions where they are cheap to reach: directory listings and name lookups are the real
``NtfsVolume.iterdir``/``child`` over a real ``DirectoryIndex`` built from the spec's entries
(collation, DOS-name and metafile filtering, case-insensitive lookup), reparse data goes
through ``parse_reparse``, times through ``filetime_ns``, stats through the volume's own
``_make_stat``.  So any value a damaged or crafted volume can put in those places (a name with
an unpaired surrogate, '/' or NUL, a size of 2**64-1, a FILETIME of 0 or 2**64-1, a link to
``\\\\server\\share`` or ``..\\..\\..``, a record number past the MFT) reaches the tree and the
adapter the way it would from disk, a thousand times faster than building images.

A spec is JSON-able (``spec_to_json``/``spec_from_json``), so that an input the fuzzer found
failing is kept under ``tests/fs/fuzz_regressions/`` and replayed in CI.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from vcbfs.blocks.source import ByteSource, ZeroSource
from vcbfs.errors import CorruptError, NotADirectory, NotFoundError, UnavailableError
from vcbfs.ntfs.attributes import (
    AT,
    FILETIME_EPOCH,
    MFT_REF_MASK,
    NS_DOS,
    FileName,
    StandardInformation,
)
from vcbfs.ntfs.index import ENTRY_LAST, DirectoryIndex
from vcbfs.ntfs.names import default_upcase
from vcbfs.ntfs.reparse import TAG_WOF, missing_data, parse_reparse
from vcbfs.ntfs.stream import ResidentStream
from vcbfs.ntfs.volume import (
    DUP_DIRECTORY,
    FILE_ATTRIBUTE_ENCRYPTED,
    ROOT,
    NtfsStat,
    NtfsVolume,
    _make_stat,
)

__all__ = [
    "DAMAGE",
    "Entry",
    "FakeImage",
    "FakeNtfs",
    "Name",
    "Record",
    "VolumeSpec",
    "fake_volume_letters",
    "index_root",
    "root_record",
    "spec_from_json",
    "spec_to_json",
]

NOW = FILETIME_EPOCH + 17_000_000_000_000_000  # some time in 2023, as a raw FILETIME
#: What a record's ``damaged`` may name: that call raises CorruptError for the record, as a
#: record whose attribute cannot be parsed does on a real volume.
DAMAGE = ("stat", "names", "streams", "open", "acl", "index", "reparse_data")


@dataclass
class Name:
    """One $FILE_NAME of a record: a hard link (or its DOS alias)."""

    parent: int
    name: str
    namespace: int = 1  # POSIX 0, Win32 1, DOS 2, Win32+DOS 3


@dataclass
class Entry:
    """One entry of a directory's $I30 index (its key is a $FILE_NAME copy, maybe stale)."""

    name: str
    record: int
    namespace: int = 1
    is_dir: bool = False
    size: int = 0
    allocated: int = 0
    times: list[int] = field(
        default_factory=lambda: [NOW] * 4
    )  # created, modified, changed, accessed


@dataclass
class Record:
    """An MFT record in use."""

    is_dir: bool = False
    names: list[Name] = field(default_factory=list)
    size: int = 0
    allocated: int = 0
    times: list[int] = field(
        default_factory=lambda: [NOW] * 4
    )  # created, modified, changed, accessed
    attributes: int = 0  # FILE_ATTRIBUTE_* bits of $STANDARD_INFORMATION
    security_id: int | None = None
    reparse: bytes | None = None  # the raw $REPARSE_POINT value
    streams: list[tuple[str, int]] = field(default_factory=list)  # named $DATA: (name, size)
    acl: bytes | None = None  # its own $SECURITY_DESCRIPTOR
    index: list[Entry] = field(default_factory=list)  # a directory's entries
    damaged: list[str] = field(default_factory=list)  # see DAMAGE


@dataclass
class VolumeSpec:
    records: dict[int, Record] = field(default_factory=dict)
    letters: list[str] = field(default_factory=list)  # the guest's letters for it ("C")


_PATTERN = bytes(range(256)) * 257


def _utf16(name: str) -> str:
    return name.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _damage(rec: Record, what: str, number: int, source: str) -> None:
    if what in rec.damaged:
        raise CorruptError(f"record {number}: {what} is damaged (fuzzed)", source=source)


def _file_name(parent: int, e: Entry) -> bytes:
    """The index key of an entry: a $FILE_NAME value."""
    units = e.name.encode("utf-16-le", "surrogatepass")[: 2 * 255]
    c, m, ch, a = (t & ((1 << 64) - 1) for t in e.times)
    flags = DUP_DIRECTORY if e.is_dir else 0
    return (
        struct.pack(
            "<QQQQQQQIIBB",
            (parent & MFT_REF_MASK) | (1 << 48),
            c,
            m,
            ch,
            a,
            e.allocated & ((1 << 64) - 1),
            e.size & ((1 << 64) - 1),
            flags,
            0,
            len(units) // 2,
            e.namespace & 3,
        )
        + units
    )


def index_root(parent: int, entries: list[Entry]) -> bytes:
    """An $INDEX_ROOT value holding ``entries`` in one node, in the order given."""
    body = bytearray()
    for e in entries:
        key = _file_name(parent, e)
        length = (16 + len(key) + 7) & ~7
        ref = (e.record & MFT_REF_MASK) | (1 << 48)
        body += struct.pack("<QHHI", ref, length, len(key), 0) + key
        body += bytes(length - 16 - len(key))
    body += struct.pack("<QHHI", 0, 16, 0, ENTRY_LAST)
    node = struct.pack("<IIII", 16, 16 + len(body), 16 + len(body), 0) + bytes(body)
    return struct.pack("<IIIB3x", AT.FILE_NAME, 1, 4096, 1) + node


class FakeNtfs(NtfsVolume):
    """An NtfsVolume whose records come from a spec (the listing and lookup code is real)."""

    def __init__(self, spec: VolumeSpec, name: str = "fake"):  # no super(): no boot sector
        self.spec = spec
        self.name = name
        self.notes: list[str] = []
        self.upcase = default_upcase()
        self.label, self.version = "", "3.1"
        self._built: dict[int, DirectoryIndex] = {}
        self._stats: dict[int, NtfsStat | Exception] = {}

    def _rec(self, number: int) -> Record:
        rec = self.spec.records.get(number)
        if rec is None:
            raise NotFoundError(f"MFT record {number} is not in use", source=self.name)
        return rec

    def _index(self, number: int) -> DirectoryIndex:
        index = self._built.get(number)
        if index is None:
            rec = self._rec(number)
            if not rec.is_dir:
                raise NotADirectory(f"record {number} is not a directory", source=self.name)
            _damage(rec, "index", number, self.name)
            # Sorted as NTFS keeps an index (by the upcased name, then the exact one).
            entries = sorted(rec.index, key=lambda e: self.upcase.key(e.name))
            root = index_root(number, entries)
            index = DirectoryIndex(root, None, 4096, 4096, self.upcase, f"{self.name} {number}")
            self._built[number] = index
        return index

    def stat(self, number: int) -> NtfsStat:
        """Computed once, as the volume keeps it (a failure too)."""
        got = self._stats.get(number)
        if got is None:
            try:
                got = self._stat(number)
            except (CorruptError, NotFoundError) as exc:
                got = exc
            self._stats[number] = got
        if isinstance(got, Exception):
            raise got.with_traceback(None)
        return got

    def _stat(self, number: int) -> NtfsStat:
        rec = self._rec(number)
        _damage(rec, "stat", number, self.name)
        si = StandardInformation(*rec.times, rec.attributes, rec.security_id)
        reparse = None
        if rec.reparse is not None:
            reparse = parse_reparse(rec.reparse, f"{self.name}: record {number}")
        links = sum(1 for n in rec.names if n.namespace != NS_DOS)
        return _make_stat(
            number,
            1,
            rec.is_dir,
            rec.size,
            rec.allocated,
            links,
            si,
            reparse,
            bool(rec.streams),
        )

    def names(self, number: int) -> list[FileName]:
        rec = self._rec(number)
        _damage(rec, "names", number, self.name)
        out = []
        for n in rec.names:
            c, m, ch, a = rec.times
            units = n.name.encode("utf-16-le", "surrogatepass")[: 2 * 255]
            name = units.decode("utf-16-le", "surrogatepass")
            flags = DUP_DIRECTORY if rec.is_dir else 0
            out.append(
                FileName(
                    n.parent, 1, c, m, ch, a, rec.allocated, rec.size, flags, 0, n.namespace, name
                )
            )
        return out

    def streams(self, number: int) -> list[tuple[str, int]]:
        rec = self._rec(number)
        _damage(rec, "streams", number, self.name)
        # Through UTF-16 and back, as the reader decodes names (a pair joins).
        return sorted({_utf16(n): size for n, size in rec.streams}.items())

    def open(self, number: int, stream: str = "") -> ByteSource:
        rec = self._rec(number)
        _damage(rec, "open", number, self.name)
        label = f"{self.name}: record {number}"
        if stream:
            sizes = dict(self.streams(number))
            if stream not in sizes:
                raise NotFoundError(f"record {number} has no stream {stream!r}", source=label)
            size = sizes[stream]
            if size <= 1 << 16:  # small streams hold something to compare
                return ResidentStream(_PATTERN[:size], f"{label}:{stream}")
            return ZeroSource(size, f"{label}:{stream}")
        if rec.is_dir:
            raise NotFoundError(f"record {number} has no data", source=label)
        if rec.attributes & FILE_ATTRIBUTE_ENCRYPTED:
            raise UnavailableError("it is EFS-encrypted", source=label)
        st = self.stat(number)
        if st.reparse is not None and st.reparse.tag != TAG_WOF:
            why = missing_data(st.reparse, st.attributes, st.size, st.allocated)
            if why is not None:
                raise UnavailableError(why, source=label)
        return ZeroSource(rec.size, label)

    def try_open(self, number: int, stream: str = "") -> ByteSource | None:
        rec = self.spec.records.get(number)
        if rec is None or rec.reparse is not None or number % 2:
            return None  # as if its record were not parsed yet
        return self.open(number, stream)

    def security_descriptor(self, number: int) -> bytes | None:
        rec = self._rec(number)
        _damage(rec, "acl", number, self.name)
        return rec.acl

    def reparse_data(self, number: int) -> bytes | None:
        rec = self._rec(number)
        _damage(rec, "reparse_data", number, self.name)
        return rec.reparse

    def streamed_records(self, first: int = 16):  # type: ignore[override]
        return iter(sorted(n for n, r in self.spec.records.items() if r.streams and n >= first))


class FakeVolume:
    """What the tree uses of ``vm.image.Volume``."""

    def __init__(self, number: int, spec: VolumeSpec):
        self.number = number
        self.spec = spec
        self._ntfs = FakeNtfs(spec, f"volume {number}")

    def ntfs(self) -> NtfsVolume:
        return self._ntfs

    def ntfs_if_open(self) -> NtfsVolume | None:
        return self._ntfs


class FakeImage:
    """What the tree uses of ``vm.image.VmImage``: its volumes and their letters."""

    def __init__(self, specs: list[VolumeSpec]):
        self.name = "fuzzvm"
        self.files: dict[str, bytes] = {}
        self.disks: list[Any] = []
        self.notes: list[str] = []
        self._volumes = [FakeVolume(i + 1, s) for i, s in enumerate(specs)]

    def volumes(self) -> list[FakeVolume]:
        return self._volumes

    def letters(self) -> dict[str, FakeVolume]:
        out: dict[str, FakeVolume] = {}
        for vol in self._volumes:
            for letter in vol.spec.letters:
                out.setdefault(letter, vol)
        return out

    def note(self, text: str) -> None:
        self.notes.append(text)

    def close(self) -> None:
        pass


def fake_volume_letters(image: FakeImage) -> dict[str, FakeVolume]:
    """Stands in for ``vcbfs.vm.letters.volume_letters`` (which reads the SYSTEM hive)."""
    return image.letters()


def root_record() -> Record:
    return Record(is_dir=True, names=[Name(ROOT, ".", 3)])


# -- JSON, for kept regression inputs ------------------------------------------------------


def spec_to_json(specs: list[VolumeSpec]) -> str:
    def enc(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return {"hex": obj.hex()}
        if isinstance(obj, dict):
            return {str(k): enc(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [enc(v) for v in obj]
        return obj

    return json.dumps([enc(asdict(s)) for s in specs], indent=1, ensure_ascii=True)


def spec_from_json(text: str) -> list[VolumeSpec]:
    def bytes_or(v: Any) -> Any:
        return bytes.fromhex(v["hex"]) if isinstance(v, dict) else v

    out = []
    for s in json.loads(text):
        records = {}
        for number, r in s["records"].items():
            records[int(number)] = Record(
                is_dir=r["is_dir"],
                names=[Name(**n) for n in r["names"]],
                size=r["size"],
                allocated=r["allocated"],
                times=list(r["times"]),
                attributes=r["attributes"],
                security_id=r["security_id"],
                reparse=bytes_or(r["reparse"]),
                streams=[(name, size) for name, size in r["streams"]],
                acl=bytes_or(r["acl"]),
                index=[Entry(**e) for e in r["index"]],
                damaged=list(r["damaged"]),
            )
        out.append(VolumeSpec(records, list(s["letters"])))
    return out
