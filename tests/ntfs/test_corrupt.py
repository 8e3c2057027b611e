"""Corrupt and hostile NTFS structures: a typed error for the damaged entry, the rest readable.

Each case damages its own copy-on-write view of the reference volume (``PatchedSource`` over the
cached image: patches laid over the file, nothing copied) and opens a fresh ``NtfsVolume`` on it.
The damage is aimed through a clean reading of the same image: an MFT record or INDX block is
read with its fixups applied, edited, and written back with sound fixups (``protect``), so it
reaches the parser under test instead of stopping at the torn-write check (unless that check is
the point).  Every case asserts the exact error type for the damaged file or directory and then
that its neighbours still list, stat and read as ntfs-3g saw them.

Behaviour chosen for a torn INDX block of a big directory: ``iterdir`` is a generator walking
the B+ tree in order, so it yields the entries that sort before the bad block (correctly) and
then raises CorruptError; lookups that do not pass through the block still work.  A damaged
runlist fails ``open`` only: ``stat`` reads the attribute headers, not the runs.  Anything that
could loop runs under ``bounded`` (a daemon thread joined with a timeout), so a missed loop
fails the test instead of hanging the run.

The Hypothesis fuzzers (records, attribute lists, INDX blocks, $STANDARD_INFORMATION and
$FILE_NAME values) set chosen fields to boundary values or nudge them, and overwrite a few
bytes.  They are derandomized and keep no example database, so every run tries the same inputs;
they check that only VcbfsError subclasses come out, that reads are never short inside a file,
that no single read of the volume exceeds READ_CAP and that no operation makes Python allocate
more than ALLOC_CAP at once (traced with tracemalloc, only around those calls).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ntfs.ntfsimages import NtfsImage
from tests.ntfs.patching import (
    AttributeAt,
    Field,
    PatchedSource,
    attribute_list_fields,
    find_attribute,
    index_block_fields,
    protect,
    read_index_block,
    read_record,
    record_fields,
    record_offset,
    stream_offset,
    value_fields,
)
from vcbfs.blocks.local import LocalSource
from vcbfs.blocks.source import ByteSource
from vcbfs.errors import CorruptError, UnsupportedError, VcbfsError
from vcbfs.ntfs.attributes import AT, parse_attribute_list
from vcbfs.ntfs.index import IndexEntry, parse_node
from vcbfs.ntfs.stream import AttributeStream
from vcbfs.ntfs.volume import NtfsVolume

T = TypeVar("T")
Patches = dict[int, bytes]

CHUNK = 4 << 20
READ_CAP = 17 << 20  # the largest read the reader may make: a 16 MiB $ATTRIBUTE_LIST, at most
ALLOC_CAP = 64 << 20  # such a list, read and copied; anything else is far smaller
TIMEOUT = 30.0  # seconds for any one operation on a hostile volume
FUZZ = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(ntfs_image: NtfsImage) -> Iterator[LocalSource]:
    """The cached image, opened once: every damaged view reads through it."""
    src = LocalSource(ntfs_image.path)
    yield src
    src.close()


@pytest.fixture(scope="module")
def clean(base: LocalSource) -> NtfsVolume:
    """The undamaged volume: where to aim the damage, and what good reads look like."""
    return NtfsVolume(base)


@pytest.fixture(scope="module")
def entries(ntfs_image: NtfsImage) -> dict[str, dict[str, Any]]:
    return ntfs_image.entries


def damaged(base: ByteSource, patches: Patches) -> tuple[NtfsVolume, PatchedSource]:
    """A fresh volume over ``base`` with ``patches`` laid over it."""
    src = PatchedSource(base, patches)
    return NtfsVolume(src), src


def sha(volume: NtfsVolume, number: int, stream: str = "") -> tuple[int, str]:
    src = volume.open(number, stream)
    h = hashlib.sha256()
    for pos in range(0, src.size, CHUNK):
        h.update(src.read_at(pos, CHUNK))
    return src.size, h.hexdigest()


def children(entries: dict[str, dict[str, Any]], directory: str) -> dict[str, str]:
    """name -> path of the manifest's entries directly in ``directory``."""
    prefix = directory + "/"
    return {
        p[len(prefix) :]: p for p in entries if p.startswith(prefix) and "/" not in p[len(prefix) :]
    }


def assert_dir_healthy(
    volume: NtfsVolume,
    entries: dict[str, dict[str, Any]],
    directory: str,
    skip: tuple[str, ...] = (),
) -> None:
    """The directory lists as ntfs-3g saw it; each file in it (but ``skip``) stats and reads."""
    number = volume.lookup(directory)
    want = children(entries, directory)
    assert sorted(e.name for e in volume.iterdir(number)) == sorted(want)
    for name, path in want.items():
        if path in skip:
            continue
        ref = entries[path]
        n = volume.lookup(path)
        assert n == ref["ino"], path
        st = volume.stat(n)
        if ref["type"] == "file":
            assert st.size == ref["size"], path
            assert sha(volume, n) == (ref["size"], ref["sha256"]), path
        elif ref["type"] == "dir":
            assert st.is_dir, path
            assert sorted(e.name for e in volume.iterdir(n)) == sorted(children(entries, path))
        assert name in {fn.name for fn in volume.names(n)}, path


def assert_file_intact(volume: NtfsVolume, entries: dict[str, dict[str, Any]], path: str) -> None:
    ref = entries[path]
    n = volume.lookup(path)
    assert volume.stat(n).size == ref["size"], path
    assert sha(volume, n) == (ref["size"], ref["sha256"]), path


def bounded(fn: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """``fn()`` in a daemon thread; fails (instead of hanging the run) if it takes too long."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="bounded")
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s: a loop was not detected"
    if error:
        raise error[0]
    return result[0]


@contextlib.contextmanager
def memory_bounded(cap: int = ALLOC_CAP) -> Iterator[None]:
    """Fail if the block's peak of Python allocations rises more than ``cap`` over its start."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _peak = tracemalloc.get_traced_memory()
        yield
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        if not tracing:
            tracemalloc.stop()
    assert peak - start <= cap, f"allocated {(peak - start) >> 20} MiB at once"


def edit_record(clean: NtfsVolume, number: int, edit: Callable[[bytearray], None]) -> Patches:
    """Patches that replace MFT record ``number`` by ``edit`` of it, with sound fixups."""
    offset, buf = read_record(clean, number)
    edit(buf)
    return {offset: protect(buf)}


def put(buf: bytearray, at: int, value: int, size: int) -> None:
    buf[at : at + size] = value.to_bytes(size, "little", signed=value < 0)


def patch_stream(patches: Patches, stream: ByteSource, pos: int, data: bytes) -> None:
    """Patch ``data`` at byte ``pos`` of a non-resident stream, cluster by cluster."""
    assert isinstance(stream, AttributeStream)
    cs = stream.cluster_size
    while data:
        n = min(len(data), cs - pos % cs)
        patches[stream_offset(stream, pos)] = data[:n]
        pos, data = pos + n, data[n:]


def attribute_list(clean: NtfsVolume, number: int) -> tuple[ByteSource, bytes]:
    """A file's (non-resident) $ATTRIBUTE_LIST stream and its value."""
    rec = clean.mft.record(number)
    lists = [a for a in rec.attributes if a.type == AT.ATTRIBUTE_LIST]
    assert lists and not lists[0].resident
    stream = AttributeStream(clean.source, clean.boot.cluster_size, lists, "$ATTRIBUTE_LIST")
    return stream, stream.read_at(0, stream.size)


def index_node(clean: NtfsVolume, number: int, vcn: int | None) -> list[IndexEntry]:
    """The entries of a directory's root (``vcn`` None) or of its INDX block at ``vcn``."""
    if vcn is None:
        _rec, attrs = clean.mft.attributes(number)
        root = next(a for a in attrs if a.type == AT.INDEX_ROOT and a.name == "$I30")
        return parse_node(root.value, 16, "test", "$INDEX_ROOT")
    _offset, buf = read_index_block(clean, number, vcn)
    return parse_node(buf, 24, "test", f"VCN {vcn}")


def index_path(clean: NtfsVolume, number: int) -> list[int]:
    """VCNs from the root's child down to a leaf, taking a middle entry at each level."""
    chain: list[int] = []
    node = index_node(clean, number, None)
    while True:
        subs = [e.subnode for e in node if e.subnode is not None]
        if not subs:
            return chain
        vcn = subs[len(subs) // 2]
        chain.append(vcn)
        node = index_node(clean, number, vcn)


# --- 1. boot sectors --------------------------------------------------------------------------


def _zeroed(sector: bytearray) -> None:
    sector[:] = bytes(len(sector))


def _oem(sector: bytearray) -> None:
    sector[3:11] = b"MSDOS5.0"


def _signature(sector: bytearray) -> None:
    sector[510:512] = b"\0\0"


def _cluster(sector: bytearray) -> None:
    sector[13] = 3  # 3 sectors per cluster: not a power of two


def _mft_outside(sector: bytearray) -> None:
    put(sector, 0x30, 1 << 40, 8)  # $MFT's first cluster far past the volume


def _mft_moved(sector: bytearray) -> None:
    put(sector, 0x30, int.from_bytes(sector[0x30:0x38], "little") + 1, 8)  # inside, but wrong


def _record_size(sector: bytearray) -> None:
    sector[0x40] = 1  # one cluster (4 KiB) per MFT record: a valid code, the wrong size


@pytest.mark.parametrize(
    "damage", [_zeroed, _oem, _signature, _cluster, _mft_outside, _mft_moved, _record_size]
)
def test_damaged_primary_boot_sector_uses_the_backup(
    base: LocalSource,
    entries: dict[str, dict[str, Any]],
    ntfs_image: NtfsImage,
    damage: Callable[[bytearray], None],
) -> None:
    sector = bytearray(base.read_at(0, 512))
    damage(sector)
    volume, _src = damaged(base, {0: bytes(sector)})
    assert volume.boot.from_backup
    assert any("backup" in note for note in volume.notes), volume.notes
    assert volume.label == ntfs_image.label
    for path in (ntfs_image.big_file, ntfs_image.fragmented[0], ntfs_image.compressed_text):
        assert_file_intact(volume, entries, path)
    assert_dir_healthy(volume, entries, "sizes")


def test_both_boot_sectors_damaged_is_corrupt(base: LocalSource) -> None:
    volume_end = base.size - 512
    with pytest.raises(CorruptError, match="boot sector"):
        damaged(base, {0: bytes(512), volume_end: bytes(512)})
    with pytest.raises(CorruptError, match="boot sector"):
        damaged(base, {3: b"NOTNTFS!", volume_end + 3: b"NOTNTFS!"})


# --- 2. one damaged MFT record ----------------------------------------------------------------

TARGET_DIR = "sizes"
TARGET = "sizes/cluster-4097.bin"  # non-resident: two clusters, one run


def _data(buf: bytearray) -> AttributeAt:
    return find_attribute(buf, AT.DATA)


def _length_zero(buf: bytearray) -> None:
    put(buf, _data(buf).offset + 4, 0, 4)


def _length_past_record(buf: bytearray) -> None:
    put(buf, _data(buf).offset + 4, 4096, 4)


def _name_outside(buf: bytearray) -> None:
    a = _data(buf)
    buf[a.offset + 9] = 4  # a 4-character name...
    put(buf, a.offset + 10, a.length - 4, 2)  # ...starting 4 bytes before the attribute's end


def _resident_value_outside(buf: bytearray) -> None:
    a = find_attribute(buf, AT.STANDARD_INFORMATION)
    put(buf, a.offset + 16, 0x300, 4)  # value length


def _first_attribute_outside(buf: bytearray) -> None:
    put(buf, 0x14, 2000, 2)


def _runlist(runs: bytes) -> Callable[[bytearray], None]:
    def edit(buf: bytearray) -> None:
        a = _data(buf)
        room = a.offset + a.length - a.runlist_offset
        assert len(runs) < room
        buf[a.runlist_offset : a.offset + a.length] = runs.ljust(room, b"\0")

    return edit


HEADER_DAMAGE = {
    "attribute-length-0": _length_zero,
    "attribute-length-past-record": _length_past_record,
    "attribute-name-outside": _name_outside,
    "resident-value-outside": _resident_value_outside,
    "first-attribute-outside": _first_attribute_outside,
}
RUNLIST_DAMAGE = {
    "run-outside-volume": _runlist(bytes.fromhex("3102000020")),  # 2 clusters at LCN 0x200000
    "run-across-volume-end": _runlist(bytes.fromhex("3102feff01")),  # at LCN 131070 of 131071
    "zero-length-run": _runlist(bytes.fromhex("11000a")),
    "negative-lcn": _runlist(bytes.fromhex("11010a1101ec")),  # LCN 10, then 10 - 20
    "runs-short-of-the-size": _runlist(bytes.fromhex("11010a")),  # one cluster of two
    "oversized-length-field": _runlist(bytes.fromhex("19")),  # a 9-byte length field
}


def test_torn_mft_record_fails_only_that_file(
    base: LocalSource, clean: NtfsVolume, entries: dict[str, dict[str, Any]]
) -> None:
    number = clean.lookup(TARGET)
    offset = record_offset(clean, number)
    raw = bytearray(base.read_at(offset, 1024))
    raw[1022] ^= 0xFF  # the second sector's update sequence: a torn write
    volume, _src = damaged(base, {offset: bytes(raw)})
    assert volume.lookup(TARGET) == number  # the parent's index does not read the record
    for op in (volume.stat, volume.open, volume.names, volume.security_descriptor):
        with pytest.raises(CorruptError, match="torn write"):
            op(number)
    assert_dir_healthy(volume, entries, TARGET_DIR, skip=(TARGET,))
    with pytest.raises(CorruptError):
        volume.stat(number)  # failures are not cached as anything else


def test_misdirected_mft_record_fails_only_that_file(
    base: LocalSource, clean: NtfsVolume, entries: dict[str, dict[str, Any]]
) -> None:
    """A record holding a sound copy of another record: not silently the other file's data."""
    number, other = clean.lookup(TARGET), clean.lookup("sizes/tiny-600.bin")
    copy = base.read_at(record_offset(clean, other), 1024)
    volume, _src = damaged(base, {record_offset(clean, number): copy})
    for op in (volume.stat, volume.open, volume.names):
        with pytest.raises(CorruptError, match=f"says it is record {other}"):
            op(number)
    assert_dir_healthy(volume, entries, TARGET_DIR, skip=(TARGET,))


@pytest.mark.parametrize("damage", HEADER_DAMAGE.values(), ids=HEADER_DAMAGE.keys())
def test_bad_attribute_header_fails_only_that_file(
    base: LocalSource,
    clean: NtfsVolume,
    entries: dict[str, dict[str, Any]],
    damage: Callable[[bytearray], None],
) -> None:
    number = clean.lookup(TARGET)
    volume, _src = damaged(base, edit_record(clean, number, damage))
    for op in (volume.stat, volume.open, volume.names, volume.streams):
        with pytest.raises(CorruptError, match=f"MFT record {number}"):
            op(number)
    assert_dir_healthy(volume, entries, TARGET_DIR, skip=(TARGET,))


@pytest.mark.parametrize("damage", RUNLIST_DAMAGE.values(), ids=RUNLIST_DAMAGE.keys())
def test_bad_runlist_fails_only_that_files_data(
    base: LocalSource,
    clean: NtfsVolume,
    entries: dict[str, dict[str, Any]],
    damage: Callable[[bytearray], None],
) -> None:
    """The runs are decoded when the data is opened: stat (sizes, times, names) still works."""
    number = clean.lookup(TARGET)
    volume, src = damaged(base, edit_record(clean, number, damage))
    assert volume.stat(number).size == entries[TARGET]["size"]
    with memory_bounded(), pytest.raises(CorruptError, match=r"runlist|runs"):
        volume.open(number)
    assert src.largest_read <= READ_CAP
    assert_dir_healthy(volume, entries, TARGET_DIR, skip=(TARGET,))


def test_torn_directory_record_fails_only_that_directory(
    base: LocalSource, clean: NtfsVolume, entries: dict[str, dict[str, Any]]
) -> None:
    path = "tree/dir-03"
    number = clean.lookup(path)
    offset = record_offset(clean, number)
    raw = bytearray(base.read_at(offset, 1024))
    raw[510] ^= 0x5A
    volume, _src = damaged(base, {offset: bytes(raw)})
    with pytest.raises(CorruptError, match="torn write"):
        list(volume.iterdir(number))
    with pytest.raises(CorruptError, match="torn write"):
        volume.lookup(path + "/sub-0")
    with pytest.raises(CorruptError):
        volume.stat(number)
    tree = volume.lookup("tree")
    assert sorted(e.name for e in volume.iterdir(tree)) == sorted(children(entries, "tree"))
    assert_dir_healthy(volume, entries, "tree/dir-04")


# --- 3. directory indexes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def huge(clean: NtfsVolume, ntfs_image: NtfsImage) -> tuple[int, list[str], list[int]]:
    """The 20,000-entry directory: (record, names in index order, VCNs from root to a leaf)."""
    number = clean.lookup(ntfs_image.huge_dir)
    names = [e.name for e in clean.iterdir(number)]
    assert len(names) == ntfs_image.huge_dir_entries
    chain = index_path(clean, number)
    assert len(chain) >= 3, "the test wants a leaf below two levels of INDX blocks"
    return number, names, chain


def test_torn_index_block_yields_then_raises(
    base: LocalSource,
    clean: NtfsVolume,
    entries: dict[str, dict[str, Any]],
    ntfs_image: NtfsImage,
    huge: tuple[int, list[str], list[int]],
) -> None:
    number, names, chain = huge
    leaf = chain[-1]
    offset, _buf = read_index_block(clean, number, leaf)
    raw = bytearray(base.read_at(offset, clean.boot.index_record_size))
    raw[3 * 512 - 1] ^= 0xFF
    volume, _src = damaged(base, {offset: bytes(raw)})

    got: list[str] = []
    with pytest.raises(CorruptError, match="torn write"):
        for e in volume.iterdir(number):
            got.append(e.name)
    assert 0 < len(got) < len(names)
    assert got == names[: len(got)]  # what came before the bad block is right and in order

    in_leaf = [e.key.name for e in index_node(clean, number, leaf) if e.key is not None]
    assert in_leaf
    huge_dir = ntfs_image.huge_dir
    with pytest.raises(CorruptError, match="torn write"):
        volume.lookup(f"{huge_dir}/{in_leaf[len(in_leaf) // 2]}")
    for name in (names[0], names[-1]):
        assert volume.lookup(f"{huge_dir}/{name}") == clean.lookup(f"{huge_dir}/{name}")
    assert_dir_healthy(volume, entries, "sizes")
    tree = volume.lookup("tree")
    assert sorted(e.name for e in volume.iterdir(tree)) == sorted(children(entries, "tree"))


@pytest.mark.parametrize("target", ["parent", "self"])
def test_index_loop_is_detected(
    base: LocalSource,
    clean: NtfsVolume,
    entries: dict[str, dict[str, Any]],
    ntfs_image: NtfsImage,
    huge: tuple[int, list[str], list[int]],
    target: str,
) -> None:
    """An entry of an inner INDX block whose sub-node is an ancestor (or the block itself)."""
    number, names, chain = huge
    parent, inner = chain[0], chain[1]
    offset, buf = read_index_block(clean, number, inner)
    # The first entry of the node: its sub-node VCN is the last 8 bytes of the entry.
    first = 24 + int.from_bytes(buf[24:28], "little")
    length = int.from_bytes(buf[first + 8 : first + 10], "little")
    assert buf[first + 12] & 1, "the entry has a sub-node"
    put(buf, first + length - 8, parent if target == "parent" else inner, 8)
    volume, _src = damaged(base, {offset: protect(buf)})

    with pytest.raises(CorruptError, match="loops"):
        bounded(lambda: sum(1 for _ in volume.iterdir(number)))
    huge_dir = ntfs_image.huge_dir
    below = [e.key.name for e in index_node(clean, number, inner) if e.key is not None]
    for name in below:  # under the looping node: found or not, but never a hang
        with contextlib.suppress(VcbfsError):
            found = bounded(lambda name=name: volume.lookup(f"{huge_dir}/{name}"))
            assert found == clean.lookup(f"{huge_dir}/{name}")
    for name in (names[0], names[-1]):  # in other subtrees: found
        assert volume.lookup(f"{huge_dir}/{name}") == clean.lookup(f"{huge_dir}/{name}")
    assert_dir_healthy(volume, entries, "sizes")


def test_index_block_at_a_foreign_vcn_is_corrupt(
    base: LocalSource, clean: NtfsVolume, huge: tuple[int, list[str], list[int]]
) -> None:
    """A sub-node VCN naming a sound block elsewhere: the block says it is another VCN."""
    number, _names, chain = huge
    offset, buf = read_index_block(clean, number, chain[-1])
    put(buf, 16, chain[-1] + 1, 8)
    volume, _src = damaged(base, {offset: protect(buf)})
    with pytest.raises(CorruptError, match="says it is another"):
        list(volume.iterdir(number))


# --- 4. attribute lists -----------------------------------------------------------------------


def _list_entries(value: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each $ATTRIBUTE_LIST entry."""
    out, pos = [], 0
    while pos + 26 <= len(value):
        if int.from_bytes(value[pos : pos + 4], "little") in (0, 0xFFFFFFFF):
            break
        length = int.from_bytes(value[pos + 4 : pos + 6], "little")
        out.append((pos, length))
        pos += length
    return out


def test_attribute_list_naming_another_files_record(
    base: LocalSource, clean: NtfsVolume, entries: dict[str, dict[str, Any]], ntfs_image: NtfsImage
) -> None:
    path_a, path_b, path_c = ntfs_image.fragmented
    a, b = clean.lookup(path_a), clean.lookup(path_b)
    b_ext = {e.record for e in parse_attribute_list(attribute_list(clean, b)[1], "b")} - {b}
    stream, value = attribute_list(clean, a)
    parsed = parse_attribute_list(value, "a")
    victim = next(i for i, e in enumerate(parsed) if e.type == AT.DATA and e.record != a)
    pos, _length = _list_entries(value)[victim]
    patches: Patches = {}
    other = min(b_ext)
    patch_stream(patches, stream, pos + 16, (other | 1 << 48).to_bytes(8, "little"))
    volume, _src = damaged(base, patches)

    for op in (volume.stat, volume.open, volume.names):
        with pytest.raises(CorruptError, match=f"belongs to record {b}"):
            op(a)
    for path in (path_b, path_c):
        assert_file_intact(volume, entries, path)
    assert_dir_healthy(volume, entries, "fragmented", skip=(path_a,))


def _rewrite_list(
    clean: NtfsVolume, number: int, rewrite: Callable[[int, bytearray], None]
) -> Patches:
    """Patches applying ``rewrite(index, entry bytes)`` to each entry of a file's list."""
    stream, value = attribute_list(clean, number)
    patches: Patches = {}
    for i, (pos, length) in enumerate(_list_entries(value)):
        entry = bytearray(value[pos : pos + length])
        rewrite(i, entry)
        patch_stream(patches, stream, pos, bytes(entry))
    return patches


def test_attribute_list_naming_one_attribute_repeatedly(
    base: LocalSource, clean: NtfsVolume, entries: dict[str, dict[str, Any]], ntfs_image: NtfsImage
) -> None:
    """Every entry of a 204-entry list names the base record's own $STANDARD_INFORMATION."""
    path = ntfs_image.attr_list_links
    number = clean.lookup(path)

    def same(_i: int, entry: bytearray) -> None:
        put(entry, 0, AT.STANDARD_INFORMATION, 4)
        entry[6] = 0  # no name
        put(entry, 8, 0, 8)  # VCN 0
        put(entry, 16, number | 1 << 48, 8)
        put(entry, 24, 0, 2)  # attribute id 0: the $STANDARD_INFORMATION

    volume, src = damaged(base, _rewrite_list(clean, number, same))
    for op in (volume.stat, volume.open, volume.names):
        with memory_bounded(), pytest.raises(CorruptError, match="more than once"):
            bounded(lambda op=op: op(number))
    assert src.largest_read <= READ_CAP
    assert_file_intact(volume, entries, ntfs_image.attr_list_streams)
    for name, size in clean.streams(clean.lookup(ntfs_image.attr_list_streams))[:5]:
        n = volume.lookup(ntfs_image.attr_list_streams)
        assert sha(volume, n, name) == sha(clean, n, name)
        assert size == volume.open(n, name).size


@pytest.mark.parametrize("record", [10**9, 0, 3])
def test_attribute_list_naming_a_missing_or_system_record(
    base: LocalSource,
    clean: NtfsVolume,
    entries: dict[str, dict[str, Any]],
    ntfs_image: NtfsImage,
    record: int,
) -> None:
    path = ntfs_image.attr_list_links
    number = clean.lookup(path)

    def elsewhere(i: int, entry: bytearray) -> None:
        if i == 7:
            put(entry, 16, record | 1 << 48, 8)

    volume, _src = damaged(base, _rewrite_list(clean, number, elsewhere))
    with pytest.raises(CorruptError, match=f"record {record}"):
        volume.stat(number)
    assert_file_intact(volume, entries, ntfs_image.attr_list_streams)


def test_attribute_list_naming_an_attribute_that_is_not_there(
    base: LocalSource, clean: NtfsVolume, entries: dict[str, dict[str, Any]], ntfs_image: NtfsImage
) -> None:
    number = clean.lookup(ntfs_image.attr_list_links)

    def wrong_id(i: int, entry: bytearray) -> None:
        if i == 9:
            put(entry, 24, 0x7777, 2)

    volume, _src = damaged(base, _rewrite_list(clean, number, wrong_id))
    with pytest.raises(CorruptError, match="which has none"):
        volume.stat(number)
    assert_file_intact(volume, entries, ntfs_image.attr_list_streams)


def test_attribute_list_claiming_a_gigabyte(
    base: LocalSource, clean: NtfsVolume, entries: dict[str, dict[str, Any]], ntfs_image: NtfsImage
) -> None:
    """A list whose runs and sizes say 1 GiB (all sparse): refused before anything is read."""
    path = ntfs_image.fragmented[0]
    number = clean.lookup(path)

    def huge_list(buf: bytearray) -> None:
        a = find_attribute(buf, AT.ATTRIBUTE_LIST)
        size = 1 << 30
        put(buf, a.offset + 24, size // clean.boot.cluster_size - 1, 8)  # last VCN
        for field in (40, 48, 56):  # allocated, data and initialized sizes
            put(buf, a.offset + field, size, 8)
        runs = bytes.fromhex("0300000400")  # one sparse run of 0x40000 clusters
        room = a.offset + a.length - a.runlist_offset
        buf[a.runlist_offset : a.offset + a.length] = runs.ljust(room, b"\0")

    volume, src = damaged(base, edit_record(clean, number, huge_list))
    with memory_bounded(1 << 20), pytest.raises(CorruptError, match="larger than 16 MiB"):
        volume.stat(number)
    assert src.largest_read <= READ_CAP
    assert_dir_healthy(volume, entries, "fragmented", skip=(path,))


# --- 5. compressed files ----------------------------------------------------------------------

UNIT = 64 << 10


def _reference_before_start() -> bytes:
    return bytes.fromhex("02b0" + "01" + "ffff")  # a compressed chunk: one reference, 0 bytes in


def _chunk_past_4096() -> bytes:
    # 8 literals, then one reference of 4098 bytes: more than a chunk stands for.
    return bytes.fromhex("0bb0" + "00" + "61" * 8 + "01" + "ff0f")


def _chunk_past_stored_data() -> bytes:
    plain = bytes.fromhex("ff3f") + b"x" * 4096  # two uncompressed chunks, then one too long
    return plain + plain + bytes.fromhex("ffbf") + b"\0" * 90


def _random_garbage() -> bytes:
    return random.Random(20261125).randbytes(3 * 4096)


GARBAGE = {
    "reference-before-chunk-start": _reference_before_start,
    "chunk-past-4096-bytes": _chunk_past_4096,
    "chunk-past-stored-data": _chunk_past_stored_data,
    "random-bytes": _random_garbage,
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_in_a_compression_unit(
    base: LocalSource,
    clean: NtfsVolume,
    entries: dict[str, dict[str, Any]],
    ntfs_image: NtfsImage,
    garbage: Callable[[], bytes],
) -> None:
    number = clean.lookup(ntfs_image.compressed_text)
    good = clean.open(number)
    assert isinstance(good, AttributeStream) and good.unit == UNIT
    cs = clean.boot.cluster_size
    per = UNIT // cs
    lcn, run = good.map.lookup(per)  # unit 1: a few clusters of LZNT1 chunks, then a hole
    assert lcn is not None and run < per
    data = garbage()
    assert len(data) <= run * cs
    volume, src = damaged(base, {lcn * cs: data.ljust(run * cs, b"\0")})

    stream = volume.open(number)
    for pos, n in ((UNIT, 1), (UNIT + 5000, 100), (0, 2 * UNIT), (0, stream.size)):
        with memory_bounded(), pytest.raises(CorruptError, match="LZNT1"):
            stream.read_at(pos, n)
    for pos, n in ((0, UNIT), (2 * UNIT, 3 * UNIT), (stream.size - 10, 10)):
        assert stream.read_at(pos, n) == good.read_at(pos, n)
    assert src.largest_read <= READ_CAP
    for path in (ntfs_image.compressed_mixed, ntfs_image.compressed_inherited):
        assert_file_intact(volume, entries, path)


ABSURD_UNITS: dict[int, type[VcbfsError]] = {
    16: UnsupportedError,  # 2**16 clusters: 256 MiB to inflate for one byte
    8: UnsupportedError,
    1: UnsupportedError,
    0: UnsupportedError,  # compressed, but no unit at all
    17: CorruptError,  # past what the attribute parser takes
    255: CorruptError,
}


@pytest.mark.parametrize(("unit", "error"), ABSURD_UNITS.items())
def test_absurd_compression_unit(
    base: LocalSource,
    clean: NtfsVolume,
    entries: dict[str, dict[str, Any]],
    ntfs_image: NtfsImage,
    unit: int,
    error: type[VcbfsError],
) -> None:
    number = clean.lookup(ntfs_image.compressed_text)

    def set_unit(buf: bytearray) -> None:
        buf[_data(buf).offset + 0x22] = unit

    volume, src = damaged(base, edit_record(clean, number, set_unit))
    with memory_bounded(), pytest.raises(error, match=r"compression unit|sizes are not valid"):
        volume.open(number).read_at(0, 1)
    assert src.largest_read <= READ_CAP
    assert_dir_healthy(
        volume, entries, ntfs_image.compressed_dir, skip=(ntfs_image.compressed_text,)
    )


# --- 6. fuzzing ------------------------------------------------------------------------------

READ = 64 << 10


def attempt(fn: Callable[[], object]) -> None:
    """Run one operation on a hostile volume: success or a VcbfsError, nothing else."""
    with contextlib.suppress(VcbfsError):
        fn()


def exercise_read(volume: NtfsVolume, number: int, stream: str = "") -> None:
    src = volume.open(number, stream)
    size = src.size
    for pos in sorted({0, size // 2, max(size - READ // 2, 0)}):
        data = src.read_at(pos, READ)
        assert len(data) == min(READ, size - pos), "a short read inside the file"
    for i, _span in enumerate(src.spans(0, 16 << 20)):
        if i > 64:
            break


def exercise(volume: NtfsVolume, src: PatchedSource, number: int, path: str) -> None:
    """Every face of the reader on one file: only success or VcbfsError may come out."""
    bounded(lambda: _exercise(volume, src, number, path))


def _exercise(volume: NtfsVolume, src: PatchedSource, number: int, path: str) -> None:
    started = time.monotonic()
    with memory_bounded():
        attempt(lambda: volume.stat(number))
        attempt(lambda: volume.names(number))
        attempt(lambda: volume.reparse_data(number))
        attempt(lambda: volume.security_descriptor(number))
        attempt(lambda: exercise_read(volume, number))
        try:
            named = volume.streams(number)
        except VcbfsError:
            named = []
        for name, _size in named[:3]:
            attempt(lambda name=name: exercise_read(volume, number, name))
        attempt(lambda: [e for _, e in zip(range(200), volume.iterdir(number), strict=False)])
        parent = path.rpartition("/")[0]
        attempt(lambda: [e for e in volume.iterdir(volume.lookup(parent))])
        attempt(lambda: volume.lookup(path))
    assert src.largest_read <= READ_CAP, f"a read of {src.largest_read} bytes"
    assert time.monotonic() - started < TIMEOUT


FUZZ_FILES = (
    "sizes/tiny-100.bin",  # resident data
    "fragmented/frag-a.bin",  # hundreds of runs, continued in an extension record
    "attrlist/many-links.bin",  # $ATTRIBUTE_LIST: 201 names in extension records
    "compressed/text.txt",  # LZNT1
    "sizes",  # a directory with an INDX block
    "data",  # a directory whose index fits its record
)


@pytest.fixture(scope="module")
def fuzz_records(clean: NtfsVolume) -> list[tuple[str, int, int]]:
    """(path, its base record, a record of it to damage): base and extension records."""
    out = []
    for path in FUZZ_FILES:
        number = clean.lookup(path)
        out.append((path, number, number))
        _rec, attrs = clean.mft.attributes(number)
        ext = sorted({a.record for a in attrs} - {number})
        out.extend((path, number, n) for n in sorted({*ext[:1], *ext[-1:]}))
    return out


#: Values that sit on the parsers' boundaries: zero, small sizes, alignments, sign bits, maxima.
INTERESTING = (
    *(0, 1, 2, 3, 7, 8, 15, 16, 24, 0x20, 0x30, 0x40, 0x48, 0x7F, 0x80, 0xFF, 0x100, 0x1FF),
    *(0x200, 0x3F8, 0x400, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF),
    *(1 << 40, 1 << 48, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1),
)
#: (which field, add instead of set, value or delta) for fields; (where, value) for bytes.
field_changes = st.lists(
    st.tuples(
        st.integers(0, 1 << 16),
        st.booleans(),
        st.one_of(st.sampled_from(INTERESTING), st.integers(-64, 64)),
    ),
    max_size=4,
)
byte_changes = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)


def mutate(
    buf: bytearray,
    fields: list[Field],
    fields_changed: list[tuple[int, bool, int]],
    bytes_changed: list[tuple[int, int]],
    span: tuple[int, int],
) -> None:
    """Set (or add to) chosen fields, then overwrite chosen bytes within ``span``."""
    for which, add, amount in fields_changed:
        at, width = fields[which % len(fields)]
        old = int.from_bytes(buf[at : at + width], "little")
        new = (old + amount if add else amount) % (1 << 8 * width)
        buf[at : at + width] = new.to_bytes(width, "little")
    lo, hi = span
    for at, value in bytes_changed:
        buf[lo + at % (hi - lo)] = value


def protect_with(buf: bytearray, usa: int) -> bytes:
    """``protect`` with the update sequence array where the sound record had it."""
    probe = bytearray(buf)
    probe[4:6] = usa.to_bytes(2, "little")
    out = bytearray(protect(probe))
    out[4:6] = buf[4:6]  # a damaged USA offset stays damaged
    return bytes(out)


@FUZZ
@given(which=st.integers(0, 1 << 16), fields_changed=field_changes, bytes_changed=byte_changes)
def test_fuzz_mft_records(
    base: LocalSource,
    clean: NtfsVolume,
    fuzz_records: list[tuple[str, int, int]],
    which: int,
    fields_changed: list[tuple[int, bool, int]],
    bytes_changed: list[tuple[int, int]],
) -> None:
    """(a) Records of a resident, a fragmented, a listed, a compressed file and directories."""
    path, number, record = fuzz_records[which % len(fuzz_records)]
    offset, buf = read_record(clean, record)
    usa, used = int.from_bytes(buf[4:6], "little"), int.from_bytes(buf[0x18:0x1C], "little")
    mutate(buf, record_fields(buf), fields_changed, bytes_changed, (0, used))
    volume, src = damaged(base, {offset: protect_with(buf, usa)})
    exercise(volume, src, number, path)


@pytest.fixture(scope="module")
def list_targets(clean: NtfsVolume, ntfs_image: NtfsImage) -> list[tuple[str, int]]:
    """(path, record) of files with a non-resident $ATTRIBUTE_LIST."""
    return [(p, clean.lookup(p)) for p in (ntfs_image.fragmented[0], ntfs_image.attr_list_links)]


@FUZZ
@given(which=st.integers(0, 1), fields_changed=field_changes, bytes_changed=byte_changes)
def test_fuzz_attribute_lists(
    base: LocalSource,
    clean: NtfsVolume,
    list_targets: list[tuple[str, int]],
    which: int,
    fields_changed: list[tuple[int, bool, int]],
    bytes_changed: list[tuple[int, int]],
) -> None:
    """(a) The $ATTRIBUTE_LIST values themselves: entries naming wrong, missing, own records."""
    path, number = list_targets[which]
    stream, value = attribute_list(clean, number)
    buf = bytearray(value)
    mutate(buf, attribute_list_fields(buf), fields_changed, bytes_changed, (0, len(buf)))
    patches: Patches = {}
    patch_stream(patches, stream, 0, bytes(buf))
    volume, src = damaged(base, patches)
    exercise(volume, src, number, path)


@pytest.fixture(scope="module")
def fuzz_blocks(clean: NtfsVolume) -> list[tuple[str, int, int]]:
    """(directory, record, VCN) of INDX blocks: a one-block directory, a leaf and an inner node."""
    out = [("tree", clean.lookup("tree"), 0)]
    links = clean.lookup("attrlist/links")
    chain = index_path(clean, links)
    out.append(("attrlist/links", links, chain[-1]))
    out.extend(("attrlist/links", links, vcn) for vcn in chain[:-1][:1])
    return out


@FUZZ
@given(which=st.integers(0, 1 << 16), fields_changed=field_changes, bytes_changed=byte_changes)
def test_fuzz_index_blocks(
    base: LocalSource,
    clean: NtfsVolume,
    entries: dict[str, dict[str, Any]],
    fuzz_blocks: list[tuple[str, int, int]],
    which: int,
    fields_changed: list[tuple[int, bool, int]],
    bytes_changed: list[tuple[int, int]],
) -> None:
    """(b) An INDX block of a directory: list it and look names up in it."""
    directory, number, vcn = fuzz_blocks[which % len(fuzz_blocks)]
    offset, buf = read_index_block(clean, number, vcn)
    usa, used = int.from_bytes(buf[4:6], "little"), 24 + int.from_bytes(buf[28:32], "little")
    mutate(buf, index_block_fields(buf), fields_changed, bytes_changed, (0, used))
    volume, src = damaged(base, {offset: protect_with(buf, usa)})
    with memory_bounded():
        attempt(lambda: bounded(lambda: list(volume.iterdir(number))))
        some = sorted(children(entries, directory))
        for name in (some[0], some[len(some) // 2], some[-1]):
            attempt(lambda name=name: bounded(lambda: volume.lookup(f"{directory}/{name}")))
    assert src.largest_read <= READ_CAP
    assert_file_intact(volume, entries, "sizes/tiny-600.bin")


@pytest.fixture(scope="module")
def value_targets(clean: NtfsVolume, ntfs_image: NtfsImage) -> list[tuple[str, int, str, int, int]]:
    """(path, record, where, value offset, type) of $STANDARD_INFORMATION and $FILE_NAME values:
    ``where`` is "record" (the file's MFT record) or "index" (its parent's INDX block, VCN 0)."""
    out = []
    for path in ("sizes/tiny-100.bin", ntfs_image.compressed_text, "sizes/empty-dir"):
        number = clean.lookup(path)
        _offset, buf = read_record(clean, number)
        for atype in (AT.STANDARD_INFORMATION, AT.FILE_NAME):
            out.append((path, number, "record", find_attribute(buf, atype).value_offset, atype))
    _offset, block = read_index_block(clean, clean.lookup("sizes"), 0)
    for path in ("sizes/tiny-100.bin", "sizes/empty-dir"):
        name = path.rsplit("/", 1)[1].encode("utf-16-le")
        at = bytes(block).find(name) - 66  # the name ends the entry's $FILE_NAME key
        assert at > 0
        out.append((path, clean.lookup(path), "index", at, AT.FILE_NAME))
    return out


@FUZZ
@given(which=st.integers(0, 1 << 16), fields_changed=field_changes, bytes_changed=byte_changes)
def test_fuzz_standard_information_and_file_names(
    base: LocalSource,
    clean: NtfsVolume,
    value_targets: list[tuple[str, int, str, int, int]],
    which: int,
    fields_changed: list[tuple[int, bool, int]],
    bytes_changed: list[tuple[int, int]],
) -> None:
    """(c) The values: times, sizes, flags, parent references, name lengths and namespaces."""
    path, number, where, at, atype = value_targets[which % len(value_targets)]
    if where == "record":
        offset, buf = read_record(clean, number)
    else:
        offset, buf = read_index_block(clean, clean.lookup(path.rpartition("/")[0]), 0)
    fields = value_fields(atype, at)
    length = 72 if atype == AT.STANDARD_INFORMATION else 66 + 2 * buf[at + 64]
    usa = int.from_bytes(buf[4:6], "little")
    mutate(buf, fields, fields_changed, bytes_changed, (at, at + length))
    volume, src = damaged(base, {offset: protect_with(buf, usa)})
    exercise(volume, src, number, path)
