"""The public face of the NTFS reader: open a volume, look up paths, list, stat and read.

Everything is lazy: opening reads the boot sector, $MFT's record 0, $UpCase and $Volume; a
directory is read when it is listed or looked into; a file's data when it is read.  Caches of
records and directory indexes are bounded, so a volume with millions of files costs the same to
open as an empty one.  Errors in one record or index are typed and stay with that entry.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from vcbfs.blocks.budget import BUDGET, OverBudgetError
from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import ByteSource
from vcbfs.errors import CorruptError, NotADirectory, NotFoundError, UnavailableError
from vcbfs.ntfs import wof
from vcbfs.ntfs.attributes import (
    AT,
    FN_NAMESPACE,
    NS_DOS,
    Attribute,
    FileName,
    StandardInformation,
    filetime_ns,
    parse_file_name,
    parse_standard_information,
)
from vcbfs.ntfs.boot import BootSector, read_backup_boot_sector, read_boot_sector
from vcbfs.ntfs.index import DirectoryIndex, IndexEntry, weigh_node
from vcbfs.ntfs.mft import FileRecord, Mft, weigh_attributes, weigh_record
from vcbfs.ntfs.names import UpCase, default_upcase
from vcbfs.ntfs.reparse import TAG_WOF, Reparse, missing_data, parse_reparse
from vcbfs.ntfs.stream import open_stream

__all__ = ["DirEntry", "NtfsStat", "NtfsVolume"]

ROOT = 5
FIRST_USER_RECORD = 16  # records below are metafiles ($MFT, $Bitmap, ..., $Extend): not listed
UPCASE_RECORD = 10
VOLUME_RECORD = 3
SECURE_RECORD = 9
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
FILE_ATTRIBUTE_ENCRYPTED = 0x4000
DUP_DIRECTORY = 0x10000000  # $FILE_NAME flag: the file is a directory
# Cache bounds in bytes (all of them also within the process-wide memory budget).
NODE_CACHE = 16 << 20  # parsed records with their attributes (about 2 KiB each)
STAT_CACHE = 8 << 20  # stats of records read lean (about 450 bytes each)
INDEX_CACHE = 4 << 20  # directory indexes: their root nodes
INDEX_NODE_CACHE = 64 << 20  # parsed INDX nodes of every directory (about 3x their 4 KiB)
STAT_OVERHEAD = 450  # an NtfsStat with its ints (measured, tests/blocks/test_budget.py)
SDS_ENTRY = 200  # a security id in the $Secure index: dict slot, key, tuple and two ints
RUN_OVERHEAD = 120  # one run of a run map: a Run tuple, its ints and a list slot


class DirEntry(NamedTuple):
    name: str
    record: int
    sequence: int
    is_dir: bool
    indexed: FileName  # the $FILE_NAME copy in the directory's index (sizes may be stale)


class NtfsStat(NamedTuple):
    record: int
    sequence: int
    is_dir: bool
    size: int
    allocated: int
    links: int
    created: int  # nanoseconds since the Unix epoch
    modified: int
    changed: int  # the MFT record's change time
    accessed: int
    attributes: int  # Windows FILE_ATTRIBUTE_* bits
    security_id: int | None
    reparse: Reparse | None
    encrypted: bool
    has_streams: bool  # any named $DATA (alternate data streams)


@dataclass(slots=True)
class _Node:
    record: FileRecord
    attrs: list[Attribute]
    stat: NtfsStat | None = None

    def find(self, atype: int, name: str = "") -> list[Attribute]:
        return [a for a in self.attrs if a.type == atype and a.name == name]


def _weigh_stat(st: NtfsStat) -> int:
    return STAT_OVERHEAD + (0 if st.reparse is None else 200 + len(st.reparse.data))


def _weigh_node(node: _Node) -> int:
    """The record, its attributes (if gathered from extension records too) and a stat."""
    weight = weigh_record(node.record) + STAT_OVERHEAD
    if node.attrs is not node.record.attributes:
        weight += weigh_attributes(node.attrs)
    return weight


def _weigh_index(index: DirectoryIndex) -> int:
    runs = getattr(getattr(index.allocation, "map", None), "_runs", ())
    return index.weight + RUN_OVERHEAD * len(runs)


class NtfsVolume:
    """A read-only NTFS volume over a byte source (a partition of a virtual disk)."""

    def __init__(self, source: ByteSource):
        self.source = source
        self.name = source.name
        boot = read_boot_sector(source)
        try:
            mft = Mft(source, boot)
        except CorruptError as exc:
            # A damaged primary can still parse (a wrong MFT cluster or record size): then the
            # backup's geometry may find the MFT where the primary's did not.
            if boot.from_backup:
                raise
            try:
                boot = read_backup_boot_sector(source)
                mft = Mft(source, boot)
            except CorruptError:
                raise exc from None
        self.boot: BootSector = boot
        self.mft = mft
        self.notes: list[str] = []
        if self.boot.from_backup:
            self.notes.append("primary boot sector is damaged; using the backup")
        self._nodes: LRU[int, _Node] = LRU(NODE_CACHE, _weigh_node)
        self._stats: LRU[int, NtfsStat] = LRU(STAT_CACHE, _weigh_stat)
        self._indexes: LRU[int, DirectoryIndex] = LRU(INDEX_CACHE, _weigh_index)
        self._index_nodes: LRU[tuple[int, int], list[IndexEntry]] = LRU(
            INDEX_NODE_CACHE, weigh_node
        )
        self._sds: ByteSource | None = None
        self._sds_index: dict[int, tuple[int, int]] | None = None
        self._sds_lock = threading.Lock()
        self._sds_error: OverBudgetError | None = None
        self.upcase = self._load_upcase()
        self.label, self.version = self._load_volume_info()

    # -- records -------------------------------------------------------------------------

    def _node(self, number: int) -> _Node:
        node = self._nodes.get(number)
        if node is None:
            node = self._make_node(number, *self.mft.attributes(number))
        return node

    def _make_node(self, number: int, rec: FileRecord, attrs: list[Attribute]) -> _Node:
        if not rec.in_use:
            raise NotFoundError(f"MFT record {number} is not in use", source=self.name)
        if rec.is_extension:
            raise NotFoundError(f"MFT record {number} is an extension record", source=self.name)
        node = _Node(rec, attrs)
        self._nodes.put(number, node)
        return node

    def _stream(self, node: _Node, atype: int, name: str = "") -> ByteSource | None:
        extents = node.find(atype, name)
        if not extents:
            return None
        label = f"{self.name}: record {node.record.number}"
        if name:
            label += f":{name}"
        return open_stream(
            self.source, self.boot.cluster_size, extents, label, self.boot.cluster_count
        )

    def _small_value(
        self, node: _Node, atype: int, name: str = "", limit: int = 1 << 20
    ) -> bytes | None:
        stream = self._stream(node, atype, name)
        if stream is None:
            return None
        if stream.size > limit:
            raise CorruptError(
                f"attribute {atype:#x} is larger than {limit} bytes", source=self.name
            )
        return stream.read_at(0, stream.size)

    def _load_upcase(self) -> UpCase:
        try:
            table = self._small_value(self._node(UPCASE_RECORD), AT.DATA, limit=1 << 17)
            if table is None:
                raise CorruptError("$UpCase has no data", source=self.name)
            return UpCase(table, f"{self.name}: $UpCase")
        except (CorruptError, NotFoundError) as exc:
            self.notes.append(f"$UpCase unreadable ({exc}); using Unicode upper case")
            return default_upcase()

    def _load_volume_info(self) -> tuple[str, str]:
        try:
            node = self._node(VOLUME_RECORD)
            label = (self._small_value(node, AT.VOLUME_NAME) or b"").decode("utf-16-le", "replace")
            info = self._small_value(node, AT.VOLUME_INFORMATION) or b""
            version = f"{info[8]}.{info[9]}" if len(info) >= 10 else "?"
            return label, version
        except (CorruptError, NotFoundError) as exc:
            self.notes.append(f"$Volume unreadable ({exc})")
            return "", "?"

    # -- the face --------------------------------------------------------------------------

    def stat(self, number: int) -> NtfsStat:
        """A record's stat, computed once per record while cached (listings ask for each entry).

        Most records are read lean (``Mft.stat_fields``); the rest, and any record already
        parsed whole, take the full path.
        """
        node = self._nodes.get(number)
        if node is None:
            st = self._stats.get(number)
            if st is not None:
                return st
            st = self._lean_stat(number)
            if st is not None:
                self._stats.put(number, st)
                return st
            node = self._node(number)
        if node.stat is None:
            node.stat = self._stat(number, node)
        return node.stat

    def _lean_stat(self, number: int) -> NtfsStat | None:
        fields = self.mft.stat_fields(number)
        if fields is None:
            return None
        seq, is_dir, si_value, links, size, allocated, named = fields
        si = parse_standard_information(si_value, self.name)
        if si.attributes & FILE_ATTRIBUTE_REPARSE_POINT:
            return None  # the full path reads the reparse data
        return _make_stat(number, seq, is_dir, size, allocated, links, si, None, named)

    def _stat(self, number: int, node: _Node) -> NtfsStat:
        # One pass over the attributes: stat runs for every entry a listing shows.
        si_value: bytes | None = None
        first: Attribute | None = None
        packed: Attribute | None = None  # WofCompressedData: what a WOF file really holds
        links = 0
        has_reparse = named = False
        for a in node.attrs:
            t = a.type
            if t == AT.FILE_NAME:
                # Names other than DOS-only ones: what a POSIX reader counts as hard links.
                v = a.value
                if a.resident and len(v) > FN_NAMESPACE and v[FN_NAMESPACE] != NS_DOS:
                    links += 1
            elif t == AT.DATA:
                named = named or bool(a.name)
                if not a.name and (first is None or a.start_vcn < first.start_vcn):
                    first = a
                elif a.name == wof.STREAM and (packed is None or a.start_vcn < packed.start_vcn):
                    packed = a
            elif t == AT.STANDARD_INFORMATION:
                if si_value is None:
                    if not a.resident:
                        break
                    si_value = a.value
            elif t == AT.REPARSE_POINT and not a.name:
                has_reparse = True
        if si_value is None:
            raise CorruptError(f"record {number} has no $STANDARD_INFORMATION", source=self.name)
        si = parse_standard_information(si_value, self.name)
        size = allocated = 0
        if first is not None:
            size = first.size
            allocated = first.on_disk
        reparse = None
        if has_reparse or si.attributes & FILE_ATTRIBUTE_REPARSE_POINT:
            value = self._small_value(node, AT.REPARSE_POINT, limit=16 << 10)
            if value is not None:
                reparse = parse_reparse(value, f"{self.name}: record {number}")
                if reparse.tag == TAG_WOF and packed is not None:
                    allocated = packed.on_disk
        rec = node.record
        return _make_stat(
            number, rec.sequence, rec.is_dir, size, allocated, links, si, reparse, named
        )

    def names(self, number: int) -> list[FileName]:
        """The $FILE_NAME attributes of a record (every hard link, every namespace)."""
        return [parse_file_name(a.value, self.name) for a in self._node(number).find(AT.FILE_NAME)]

    def _index(self, number: int) -> DirectoryIndex:
        index = self._indexes.get(number)
        if index is not None:
            return index
        node = self._node(number)
        if not node.record.is_dir:
            raise NotADirectory(f"record {number} is not a directory", source=self.name)
        root = node.find(AT.INDEX_ROOT, "$I30")
        if not root or not root[0].resident:
            raise CorruptError(f"directory record {number} has no $INDEX_ROOT", source=self.name)
        block = int.from_bytes(root[0].value[8:12], "little")
        if block < 512 or block > 1 << 16 or block & (block - 1):
            raise CorruptError(f"index block size {block} is not valid", source=self.name)
        vcn_size = self.boot.cluster_size if block >= self.boot.cluster_size else 512
        allocation = self._stream(node, AT.INDEX_ALLOCATION, "$I30")
        index = DirectoryIndex(
            root[0].value,
            allocation,
            block,
            vcn_size,
            self.upcase,
            f"{self.name}: directory record {number}",
            self._index_nodes,
            number,
        )
        self._indexes.put(number, index)
        return index

    def iterdir(self, number: int = ROOT) -> Iterator[DirEntry]:
        """The directory's entries in index order, without DOS-only names and metafiles."""
        for e in self._index(number).entries():
            key = e.key
            assert key is not None
            if key.namespace == NS_DOS or e.record < FIRST_USER_RECORD:
                continue
            yield DirEntry(key.name, e.record, e.seq, bool(key.flags & DUP_DIRECTORY), key)

    def child(self, number: int, name: str) -> DirEntry:
        """The entry ``name`` in a directory: an exact match first, else one ignoring case."""
        found = [
            e
            for e in self._index(number).find(name)
            if e.key is not None and e.key.namespace != NS_DOS and e.record >= FIRST_USER_RECORD
        ]
        if not found:
            raise NotFoundError(f"no {name!r} in directory record {number}", source=self.name)
        exact = [e for e in found if e.key is not None and e.key.name == name]
        e = (exact or found)[0]
        assert e.key is not None
        return DirEntry(e.key.name, e.record, e.seq, bool(e.key.flags & DUP_DIRECTORY), e.key)

    def lookup(self, path: str) -> int:
        """The record number of ``path`` ('/'- or '\\'-separated, from the root)."""
        number = ROOT
        for part in path.replace("\\", "/").split("/"):
            if part in ("", "."):
                continue
            number = self.child(number, part).record
        return number

    def open(self, number: int, stream: str = "") -> ByteSource:
        """The unnamed data of a file, or its named stream ``stream``."""
        source = self._open(self._node(number), number, stream)
        assert source is not None
        return source

    def try_open(self, number: int, stream: str = "") -> ByteSource | None:
        """``open`` if the file's record is parsed already (no disk read); else None (and
        for a WOF file, whose chunk table is read when it opens, or a reparse point whose data
        is not in the record)."""
        node = self._nodes.get(number)
        if node is None:
            found = self.mft.try_attributes(number)
            if found is None:
                return None
            node = self._make_node(number, *found)
        return self._open(node, number, stream, wait=False)

    def _open(self, node: _Node, number: int, stream: str, wait: bool = True) -> ByteSource | None:
        extents = node.find(AT.DATA, stream)
        if not extents:
            what = f"stream {stream!r}" if stream else "data"
            raise NotFoundError(f"record {number} has no {what}", source=self.name)
        label = f"{self.name}: record {number}"
        if min(extents, key=lambda a: a.start_vcn).encrypted:
            raise UnavailableError(
                "it is EFS-encrypted: only the guest, with the owner's key, can read it",
                source=label,
            )
        reparse_point = node.find(AT.REPARSE_POINT) if not stream else []
        if reparse_point:  # most files have none: their open needs no stat
            if not wait and not all(a.resident for a in reparse_point):
                return None  # its reparse data is on disk: the thread path reads it
            if node.stat is None:
                node.stat = self._stat(number, node)
            st = node.stat
            if st.reparse is not None:
                if st.reparse.tag == TAG_WOF:
                    return self._open_wof(node, st, label) if wait else None
                why = missing_data(st.reparse, st.attributes, st.size, st.allocated)
                if why is not None:
                    raise UnavailableError(why, source=label)
        src = self._stream(node, AT.DATA, stream)
        assert src is not None
        return src

    def _open_wof(self, node: _Node, st: NtfsStat, label: str) -> ByteSource:
        """A WOF file's content, decoded from its WofCompressedData stream."""
        assert st.reparse is not None
        info = wof.parse_wof(st.reparse.data, label)
        packed = self._stream(node, AT.DATA, wof.STREAM)
        if packed is None:
            raise CorruptError(f"WOF file has no {wof.STREAM} stream", source=label)
        stream = wof.WofStream(packed, st.size, info.algorithm, label)
        stream.check_table()
        return stream

    def is_wof(self, number: int) -> bool:
        """Whether the file's content is decoded from WofCompressedData (which is then no
        stream of its own to back up)."""
        reparse = self.stat(number).reparse
        return reparse is not None and reparse.tag == TAG_WOF

    def streams(self, number: int) -> list[tuple[str, int]]:
        """Named data streams (alternate data streams) and their sizes."""
        node = self._node(number)
        out = {}
        for a in node.attrs:
            if a.type == AT.DATA and a.name and (a.name not in out or a.start_vcn == 0):
                out[a.name] = a.size
        return sorted(out.items())

    def streamed_records(self, first: int = FIRST_USER_RECORD) -> Iterator[int]:
        """Every base record in use, from ``first``, that has named data streams: one lean
        pass over the MFT (records that need it, or fail the lean read, are parsed whole;
        one that cannot be read is yielded, so that the caller meets its error)."""
        for number in range(first, self.mft.record_count):
            try:
                fields = self.mft.stat_fields(number)
                if fields is not None:
                    if fields[6]:
                        yield number
                    continue
                rec = self.mft.record(number)
                if not rec.in_use or rec.is_extension:
                    continue
                attrs = self.mft.attributes(number)[1]
            except (CorruptError, NotFoundError):
                yield number
                continue
            if any(a.type == AT.DATA and a.name for a in attrs):
                yield number

    def reparse(self, number: int) -> Reparse | None:
        return self.stat(number).reparse

    def reparse_data(self, number: int) -> bytes | None:
        """The raw $REPARSE_POINT value (tag, length, data), as Windows backup APIs give it."""
        return self._small_value(self._node(number), AT.REPARSE_POINT, limit=16 << 10)

    def security_descriptor(self, number: int) -> bytes | None:
        """The file's self-relative security descriptor: its own, or the shared one in $Secure."""
        node = self._node(number)
        own = self._small_value(node, AT.SECURITY_DESCRIPTOR, limit=64 << 10)
        if own is not None:
            return own
        sid = self.stat(number).security_id
        if sid is None:
            return None
        where = self._security_ids().get(sid)
        if where is None:
            return None
        stream = self._sds
        assert stream is not None
        offset, length = where
        return stream.read_at(offset, length)

    def _security_ids(self) -> dict[int, tuple[int, int]]:
        """Security id -> (offset, length) of its descriptor in $Secure:$SDS, read once.

        $SDS holds 256 KiB blocks of 16-byte aligned entries, each block followed by a mirror
        copy; an entry is (hash, id, offset, length) and the descriptor.  Bounded by the
        stream's size (at most 64 MiB is read).
        """
        if self._sds_index is not None:
            return self._sds_index
        with self._sds_lock:  # one scan; the others wait for it, never see half of it
            if self._sds_error is not None:
                raise self._sds_error  # scanned once: too large for the memory budget
            if self._sds_index is None:
                index = self._scan_sds()
                try:  # kept for the volume's life: counted against the memory budget
                    BUDGET.hold(self, SDS_ENTRY * len(index), f"{self.name}: the $Secure index")
                except OverBudgetError as exc:
                    self._sds_error = exc
                    raise
                self._sds_index = index
            return self._sds_index

    def _scan_sds(self) -> dict[int, tuple[int, int]]:
        index: dict[int, tuple[int, int]] = {}
        try:
            stream = self._stream(self._node(SECURE_RECORD), AT.DATA, "$SDS")
        except (CorruptError, NotFoundError) as exc:
            self.notes.append(f"$Secure unreadable ({exc})")
            return index
        if stream is None:
            return index
        self._sds = stream
        block = 256 << 10
        for base in range(0, min(stream.size, 64 << 20), 2 * block):
            data = stream.read_at(base, block)
            pos = 0
            while pos + 20 <= len(data):
                _hash, sid, offset, length = struct.unpack_from("<IIQI", data, pos)
                if length < 20 or pos + length > len(data) or offset != base + pos:
                    break
                index.setdefault(sid, (offset + 20, length - 20))
                pos += (length + 15) & ~15
        return index


def _make_stat(
    number: int,
    sequence: int,
    is_dir: bool,
    size: int,
    allocated: int,
    links: int,
    si: StandardInformation,
    reparse: Reparse | None,
    has_streams: bool,
) -> NtfsStat:
    """One NtfsStat, from the lean reading of a record or from its full parse."""
    return NtfsStat(
        number,
        sequence,
        is_dir,
        size,
        allocated,
        max(1, links),
        filetime_ns(si.created),
        filetime_ns(si.modified),
        filetime_ns(si.changed),
        filetime_ns(si.accessed),
        si.attributes,
        si.security_id,
        reparse,
        bool(si.attributes & FILE_ATTRIBUTE_ENCRYPTED),
        has_streams,
    )
