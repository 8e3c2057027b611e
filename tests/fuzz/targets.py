"""Fuzz targets: one plain ``target(data: bytes) -> None`` per parser fed by guest or datastore
bytes, the same functions for Hypothesis in CI and for ``scripts/fuzz`` (atheris) outside it.

The contract every target checks: whatever the bytes, the parser returns or raises a
``VcbfsError``.  A target swallows those and lets anything else escape, so the fuzzer sees it
as a crash: an IndexError, struct.error, OverflowError, a ValueError that is not a
CorruptError, a MemoryError, a RecursionError, or ``HugeRead`` (a read sized by an unchecked
field, see ``harness``).  Hangs are the driver's to catch (a time limit per input).

After a structure parses, each target also uses it the way vcbfs does (maps and reads a few
windows of an extent, lists and reads a volume), bounded so that one input costs milliseconds:
the reads, not the open, are where trusted counts and offsets bite.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import itertools
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.fuzz.harness import (
    BytesSource,
    ImageSource,
    PatchedSource,
    parse_image,
    parse_patches,
)
from tests.memsource import MemoryLocation
from vcbfs.blocks.partitions import read_partitions
from vcbfs.blocks.source import ByteSource
from vcbfs.blocks.vmdk.cowd import CowdExtent
from vcbfs.blocks.vmdk.descriptor import looks_like_descriptor, parse_descriptor
from vcbfs.blocks.vmdk.disk import open_disk
from vcbfs.blocks.vmdk.extent import Extent, Kind
from vcbfs.blocks.vmdk.sesparse import SeSparseExtent
from vcbfs.blocks.vmdk.sparse import SparseExtent, read_embedded_descriptor, read_sparse_header
from vcbfs.errors import VcbfsError
from vcbfs.ntfs.attributes import (
    AT,
    parse_attribute_list,
    parse_file_name,
    parse_standard_information,
    scan_for_stat,
)
from vcbfs.ntfs.boot import read_boot_sector
from vcbfs.ntfs.compression import lznt1_unit, lzx_chunk, xpress_huffman_chunk
from vcbfs.ntfs.fixup import apply_fixups
from vcbfs.ntfs.index import DirectoryIndex, parse_node
from vcbfs.ntfs.mft import Mft
from vcbfs.ntfs.names import default_upcase
from vcbfs.ntfs.reparse import TAG_WOF, missing_data, parse_reparse
from vcbfs.ntfs.runlist import RunMap, decode_runlist
from vcbfs.ntfs.stream import open_stream
from vcbfs.ntfs.volume import ROOT, NtfsVolume
from vcbfs.ntfs.wof import WofStream, parse_wof
from vcbfs.vm.vmx import parse_vmx, vmx_disks
from vcbfs.windows.letters import VolumeId, assign_letters, parse_letter, parse_target
from vcbfs.windows.registry import Hive, mounted_devices, parse_header

__all__ = ["TARGETS", "Target", "corpus_dir", "regressions_dir"]

Target = Callable[[bytes], None]
WINDOW = 64 << 10
HERE = Path(__file__).parent


def corpus_dir(name: str) -> Path:
    """The seed inputs of target ``name`` (made by ``python -m tests.fuzz.seeds``)."""
    return HERE / "corpus" / name


def regressions_dir(name: str) -> Path:
    """Inputs that once crashed target ``name``: replayed by every test run."""
    return HERE / "regressions" / name


def _windows(size: int, n: int = WINDOW) -> list[tuple[int, int]]:
    """A few bounded places to read in ``size`` bytes: the start, the middle and the end."""
    if size <= 0:
        return []
    starts = {0, size // 2 // 512 * 512, max(0, size - n)}
    return [(s, min(n, size - s)) for s in sorted(starts)]


def _read_source(src: ByteSource) -> None:
    for at, n in _windows(src.size):
        data = src.read_at(at, n)
        assert len(data) == n, f"short read inside {src.name}: {len(data)} of {n} at {at}"
        for _span in itertools.islice(src.spans(at, n), 1000):
            pass


def _read_extent(ext: Extent) -> None:
    """Map and read a few windows; the runs must tile each window exactly."""
    for at, n in _windows(ext.size):
        pos = at
        for run in itertools.islice(ext.map(at, n), 1000):
            assert run.offset == pos and run.length > 0, f"run {run} does not follow {pos}"
            pos += run.length
            if run.kind is Kind.DATA:
                data = ext.read_run(run)
                assert len(data) == run.length
    ext.describe()


# --- VMDK ---------------------------------------------------------------------------------------


def descriptor(data: bytes) -> None:
    """A VMDK text descriptor (header fields, extent lines, disk database)."""
    looks_like_descriptor(data[:1024])
    with contextlib.suppress(VcbfsError):
        d = parse_descriptor(data, "<fuzz>")
        assert d.sectors > 0 and d.has_parent in (True, False) and d.create_type is not None


def sparse(data: bytes) -> None:
    """A hosted sparse extent (KDMV), streamOptimized included, read as a bare extent."""
    src = BytesSource(data)
    try:
        header = read_sparse_header(src)
        text = read_embedded_descriptor(src, header)
        if text is not None:
            parse_descriptor(text, src.name)
        _read_extent(SparseExtent(src, header.capacity * 512, header))
    except VcbfsError:
        pass


def cowd(data: bytes) -> None:
    """A COWD (VMFSSPARSE) redo log, its extent size taken from its own header."""
    src = BytesSource(data)
    size = int.from_bytes(data[12:16], "little") * 512 if len(data) >= 16 else 0
    with contextlib.suppress(VcbfsError):
        _read_extent(CowdExtent(src, size))


def sesparse(data: bytes) -> None:
    """An SEsparse extent, its extent size taken from its own header."""
    src = BytesSource(data)
    size = int.from_bytes(data[16:24], "little") * 512 if len(data) >= 24 else 0
    with contextlib.suppress(VcbfsError):
        _read_extent(SeSparseExtent(src, size))


SEPARATOR = b"\x00--8<--\x00"
"""Splits a ``vmdk_disk`` input into its files: disk.vmdk, then a.vmdk, b.vmdk, c.vmdk."""
DISK_FILES = ("disk.vmdk", "a.vmdk", "b.vmdk", "c.vmdk")


def vmdk_disk(data: bytes) -> None:
    """A whole disk through ``open_disk``: a descriptor, its extents and parents (in memory)."""
    parts = data.split(SEPARATOR, len(DISK_FILES) - 1)
    files = {f"/vm/{name}": part for name, part in zip(DISK_FILES, parts, strict=False)}
    try:
        disk = open_disk(MemoryLocation(files, "/vm/disk.vmdk"))
    except VcbfsError:
        return
    try:
        disk.describe()
        _read_source(disk)
    except VcbfsError:
        pass
    finally:
        disk.close()


# --- partitions ---------------------------------------------------------------------------------


def partitions(data: bytes) -> None:
    """MBR (with its EBR chain) and GPT on a disk of any size up to 2**64 - 1 bytes."""
    size, flags, patches = parse_image(data)
    disk = ImageSource(size, patches)
    sector = (None, 512, 4096, 4096 << (flags & 7))[flags >> 6]
    try:
        table = read_partitions(disk, sector)
    except VcbfsError:
        return
    for p in table.partitions[:64]:
        assert p.start > 0 and p.size >= 0 and p.end <= disk.size, f"{p} is not on the disk"
        try:
            src = p.source(disk)
            src.read_at(0, 512)
            src.read_at(max(0, p.size - 512), 512)
        except VcbfsError:
            pass


# --- NTFS ---------------------------------------------------------------------------------------


def ntfs_boot(data: bytes) -> None:
    """The boot sector (and its backup at the volume's end) on a volume of any size."""
    size, _flags, patches = parse_image(data)
    try:
        boot = read_boot_sector(ImageSource(size, patches))
        assert 0 < boot.mft_lcn < boot.cluster_count and boot.record_size >= 256
    except VcbfsError:
        pass


class _RecordReader(Mft):
    """Mft's record parser without a volume behind it: the header and attribute checks."""

    def __init__(self, record_size: int):  # no super(): nothing to bootstrap
        self.name = "<fuzz>"
        self.record_size = record_size


_ZERO_VOLUME = ImageSource(1 << 40, [], "<zero volume>")
_CLUSTERS = (1 << 40) // 4096


def _use_attributes(attrs: list, volume: ByteSource, cluster: int, clusters: int) -> None:
    """Decode every attribute's value or runs as the volume would."""
    for a in attrs:
        try:
            if not a.resident:
                stream = open_stream(volume, cluster, [a], "<attr>", clusters)
                _read_source(stream)
                continue
            v = a.value
            if a.type == AT.STANDARD_INFORMATION:
                parse_standard_information(v, "<si>")
            elif a.type == AT.FILE_NAME:
                parse_file_name(v, "<fn>")
            elif a.type == AT.ATTRIBUTE_LIST:
                parse_attribute_list(v, "<list>")
            elif a.type == AT.REPARSE_POINT:
                reparse(v)
            elif a.type == AT.INDEX_ROOT and len(v) >= 32:
                index = DirectoryIndex(v, None, 4096, cluster, default_upcase(), "<i30>")
                for _e in itertools.islice(index.entries(), 500):
                    pass
                index.find("A")
        except VcbfsError:
            pass


def mft_record(data: bytes) -> None:
    """One MFT record: fixups, header, attribute headers, then each attribute's value."""
    size = len(data) if len(data) in (1024, 4096) else 1024
    raw = data[:size].ljust(size, b"\0")
    reader = _RecordReader(size)
    number = int.from_bytes(raw[44:48], "little")  # the number it says it has: else refused
    try:
        buf, header = reader._header(raw, number, 0)
        scan_for_stat(buf, header[6], header[8])
        rec = reader._parse(raw, number, 0)
    except VcbfsError:
        return
    _use_attributes(rec.attributes, _ZERO_VOLUME, 4096, _CLUSTERS)


def attribute_list(data: bytes) -> None:
    """An $ATTRIBUTE_LIST value."""
    with contextlib.suppress(VcbfsError):
        parse_attribute_list(data, "<fuzz>")


_RUN_HEAD = struct.Struct("<QQQB")


def runlist(data: bytes) -> None:
    """Mapping pairs, with the first and last VCN and the volume's cluster count in front."""
    if len(data) < _RUN_HEAD.size:
        data = data.ljust(_RUN_HEAD.size, b"\0")
    first, last, clusters, flags = _RUN_HEAD.unpack_from(data)
    pairs = data[_RUN_HEAD.size :]
    try:
        runs = decode_runlist(
            pairs,
            first_vcn=first,
            last_vcn=None if flags & 1 else last,
            cluster_count=None if flags & 2 else clusters,
            source="<fuzz>",
            base_offset=64,
        )
        m = RunMap(runs, start_vcn=first, source="<fuzz>")
        if m.total_clusters:
            for vcn in (m.start_vcn, m.start_vcn + m.total_clusters // 2, m.end_vcn - 1):
                m.lookup(vcn)
            for _piece in m.iter_range(m.start_vcn, m.total_clusters):
                pass
            for _piece in m.allocated_ranges():
                pass
    except VcbfsError:
        pass


def index_node(data: bytes) -> None:
    """A directory index: the $INDEX_ROOT value (u32 length first), then INDX blocks."""
    (root_len,) = struct.unpack_from("<I", data.ljust(4, b"\0"))
    root = data[4 : 4 + root_len]
    rest = data[4 + root_len :]
    with contextlib.suppress(VcbfsError):
        parse_node(root, 16, "<fuzz>", "$INDEX_ROOT")
    if len(rest) >= 4096:
        with contextlib.suppress(VcbfsError):
            parse_node(apply_fixups(rest[:4096], b"INDX", "<fuzz>", 0), 24, "<fuzz>", "INDX")
    block = int.from_bytes(root[8:12], "little")
    if block < 512 or block > 1 << 16 or block & (block - 1):  # as NtfsVolume._index checks
        return
    try:
        index = DirectoryIndex(
            root, BytesSource(rest) if rest else None, block, 4096, default_upcase(), "<fuzz>"
        )
        names = [e.key.name for e in itertools.islice(index.entries(), 2000) if e.key]
        for name in [*names[:3], "zzz", ""]:
            index.find(name)
    except VcbfsError:
        pass


def reparse(data: bytes) -> None:
    """A $REPARSE_POINT value: links decoded, other tags judged, WOF data parsed."""
    try:
        r = parse_reparse(data, "<fuzz>")
    except VcbfsError:
        return
    assert r.kind and r.is_link in (True, False)
    for attrs, size, allocated in ((0, 0, 0), (0x1000, 10, 0), (0x400000, 1, 1)):
        missing_data(r, attrs, size, allocated)
    if r.tag == TAG_WOF:
        with contextlib.suppress(VcbfsError):
            parse_wof(r.data, "<fuzz>")


def lznt1(data: bytes) -> None:
    """One LZNT1 compression unit; the first byte picks the unit size (512 B to 64 KiB
    clusters, 16 per unit)."""
    unit = 16 * (512 << (data[0] % 8)) if data else 65536
    try:
        out = lznt1_unit(data[1:], unit, "<fuzz>")
        assert len(out) == unit
    except VcbfsError:
        pass


def xpress(data: bytes) -> None:
    """One XPRESS Huffman chunk; the first byte picks the chunk size, the next two the output
    size."""
    chunk = (4096, 8192, 16384)[data[0] % 3] if data else 4096
    size = int.from_bytes(data[1:3], "little") % (chunk + 2) if len(data) >= 3 else 0
    try:
        out = xpress_huffman_chunk(data[3:], size, chunk, "<fuzz>")
        assert len(out) == size
    except VcbfsError:
        pass


def lzx(data: bytes) -> None:
    """One LZX chunk of a WOF file (32 KiB window); the first two bytes are the output size."""
    size = int.from_bytes(data[:2], "little") % 32770 if len(data) >= 2 else 0
    try:
        out = lzx_chunk(data[2:], size, 32768, "<fuzz>")
        assert len(out) == size
    except VcbfsError:
        pass


_WOF_HEAD = struct.Struct("<QB")


def wof(data: bytes) -> None:
    """A WofCompressedData stream: the file's size (u64, up to 2**64 - 1) and the algorithm in
    front, then the chunk table and chunks."""
    size, algorithm = _WOF_HEAD.unpack_from(data.ljust(_WOF_HEAD.size, b"\0"))
    raw = BytesSource(data[_WOF_HEAD.size :])
    try:
        stream = WofStream(raw, size, algorithm % 4, "<fuzz>")
        stream.check_table()
        _read_source(stream)
    except VcbfsError:
        pass


@functools.cache
def _ntfs_base() -> bytes:
    """The small real NTFS volume the ``ntfs_volume`` inputs patch (mkntfs + ntfs-3g)."""
    return gzip.decompress((HERE / "corpus" / "ntfs_base.img.gz").read_bytes())


def _walk(vol: NtfsVolume, budget: int = 200) -> Iterator[tuple[int, bool]]:
    """(record number, whether to use it whole) of a bounded walk of the tree, each directory
    once; the first few entries of each directory are used whole, the rest only stat'ed."""
    todo, seen = [ROOT], {ROOT}
    while todo and budget > 0:
        d = todo.pop()
        try:
            entries = list(itertools.islice(vol.iterdir(d), budget))
        except VcbfsError:
            continue
        for i, e in enumerate(entries):
            budget -= 1
            yield e.record, i < 6
            if i < 3:
                with contextlib.suppress(VcbfsError):
                    vol.child(d, e.name)
            if e.is_dir and e.record not in seen:
                seen.add(e.record)
                todo.append(e.record)


def _use_file(vol: NtfsVolume, number: int, whole: bool) -> None:
    with contextlib.suppress(VcbfsError):
        vol.stat(number)
    if not whole:
        return
    for call in (vol.names, vol.reparse_data, vol.security_descriptor, vol.is_wof):
        with contextlib.suppress(VcbfsError):
            call(number)
    try:
        streams = [name for name, _size in vol.streams(number)]
    except VcbfsError:
        streams = []
    for stream in ["", *streams[:8]]:
        with contextlib.suppress(VcbfsError):
            vol.try_open(number, stream)
        with contextlib.suppress(VcbfsError):
            _read_source(vol.open(number, stream))


def ntfs_volume(data: bytes) -> None:
    """A whole NTFS volume: a small real one with the input's patches (u32 offset, u16 length,
    bytes) laid over it; opened, walked, every file stat'ed and read."""
    src = PatchedSource(_ntfs_base(), parse_patches(data))
    try:
        vol = NtfsVolume(src)
    except VcbfsError:
        return
    for number, whole in list(_walk(vol)):
        _use_file(vol, number, whole)
    for path in ("dir/file-00.txt", "links", "nope/x"):
        with contextlib.suppress(VcbfsError):
            vol.lookup(path)
    try:
        for _n in itertools.islice(vol.streamed_records(), 100):
            pass
    except VcbfsError:
        pass


# --- Windows ------------------------------------------------------------------------------------


def hive(data: bytes) -> None:
    """A registry hive: base block, then keys walked and values read through regipy."""
    try:
        parse_header(data, "<fuzz>")
        h = Hive(data, "<fuzz>")
    except VcbfsError:
        return
    todo, budget = [""], 64
    while todo and budget > 0:
        key = todo.pop()
        budget -= 1
        try:
            h.values(key)
            todo += [f"{key}\\{sub}" for sub in h.subkeys(key)[:16] if key.count("\\") < 6]
        except VcbfsError:
            pass
    with contextlib.suppress(VcbfsError):
        mounted_devices(h)


_VOLUMES = [
    VolumeId(0, 1, 0x5EEDC0DE, 1 << 20, None),
    VolumeId(0, 2, 0x5EEDC0DE, 33 << 20, None),
    VolumeId(1, 1, None, 1 << 20, None),
]


def letters(data: bytes) -> None:
    """MountedDevices values (u8 name length, name, u16 data length, data) matched to volumes."""
    mounted: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        n = data[pos]
        name = data[pos + 1 : pos + 1 + n].decode("utf-8", "replace")
        pos += 1 + n
        m = int.from_bytes(data[pos : pos + 2], "little")
        mounted[name] = data[pos + 2 : pos + 2 + m]
        pos += 2 + m
    for name, value in mounted.items():
        parse_letter(name)
        str(parse_target(value))
    found, _notes = assign_letters(mounted, _VOLUMES)
    assert all(v in _VOLUMES for v in found.values())


def vmx(data: bytes) -> None:
    """A .vmx file and the disks it names."""
    with contextlib.suppress(VcbfsError):
        vmx_disks(parse_vmx(data, "<fuzz>"))


TARGETS: dict[str, Target] = {
    "descriptor": descriptor,
    "sparse": sparse,
    "cowd": cowd,
    "sesparse": sesparse,
    "vmdk_disk": vmdk_disk,
    "partitions": partitions,
    "ntfs_boot": ntfs_boot,
    "mft_record": mft_record,
    "attribute_list": attribute_list,
    "runlist": runlist,
    "index_node": index_node,
    "reparse": reparse,
    "lznt1": lznt1,
    "xpress": xpress,
    "lzx": lzx,
    "wof": wof,
    "ntfs_volume": ntfs_volume,
    "hive": hive,
    "letters": letters,
    "vmx": vmx,
}
"""Every target by name (the name of its corpus and regressions folders too)."""
