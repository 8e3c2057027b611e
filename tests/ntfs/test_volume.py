"""vcbfs's NTFS reader against ntfs-3g on the same image: tree, sizes, contents, times, links."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ntfs.ntfsimages import NtfsImage
from vcbfs.blocks.local import LocalSource
from vcbfs.ntfs.attributes import AT, FILETIME_EPOCH
from vcbfs.ntfs.volume import ROOT, NtfsVolume

CHUNK = 4 << 20


@pytest.fixture(scope="module")
def manifest(ntfs_image: NtfsImage) -> dict[str, Any]:
    return json.loads(ntfs_image.manifest_path.read_text())


@pytest.fixture(scope="module")
def volume(ntfs_image: NtfsImage) -> Iterator[NtfsVolume]:
    src = LocalSource(ntfs_image.path)
    yield NtfsVolume(src)
    src.close()


@pytest.fixture(scope="module")
def ours(volume: NtfsVolume, manifest: dict[str, Any]) -> dict[str, int]:
    """path -> record number, walking our reader from the root (not into reparse points)."""
    excluded = set(manifest["excluded_at_root"])
    out: dict[str, int] = {}

    def walk(number: int, prefix: str) -> None:
        for e in volume.iterdir(number):
            if not prefix and e.name in excluded:
                continue
            path = prefix + e.name
            out[path] = e.record
            if e.is_dir and volume.stat(e.record).reparse is None:
                walk(e.record, path + "/")

    walk(ROOT, "")
    return out


def _kind(volume: NtfsVolume, number: int) -> str:
    st = volume.stat(number)
    if st.reparse is not None and st.reparse.is_link:
        return "symlink"
    return "dir" if st.is_dir else "file"


def _ns(filetime: int) -> int:
    return (filetime - FILETIME_EPOCH) * 100


def test_open_reads_geometry(volume: NtfsVolume, ntfs_image: NtfsImage) -> None:
    assert volume.label == ntfs_image.label
    assert volume.boot.cluster_size == ntfs_image.cluster_size
    assert volume.version == "3.1"
    assert not volume.notes


def test_tree_listing_equals_ntfs3g(ours: dict[str, int], manifest: dict[str, Any]) -> None:
    theirs = {p for p in manifest["entries"] if p != "."}
    assert sorted(set(ours) - theirs) == []
    assert sorted(theirs - set(ours)) == []


def test_types_sizes_links_and_inodes(
    volume: NtfsVolume, ours: dict[str, int], manifest: dict[str, Any]
) -> None:
    bad = []
    for path, number in ours.items():
        ref = manifest["entries"][path]
        st = volume.stat(number)
        got = {"type": _kind(volume, number), "ino": number}
        want = {"type": ref["type"], "ino": ref["ino"]}
        if ref["type"] == "file":
            got.update(size=st.size, nlink=st.links)
            want.update(size=ref["size"], nlink=ref["nlink"])
        if got != want:
            bad.append((path, got, want))
    assert bad == []


def test_four_times_equal_ntfs3g(
    volume: NtfsVolume, ours: dict[str, int], manifest: dict[str, Any]
) -> None:
    bad = []
    for path, number in ours.items():
        created, modified, accessed, changed = manifest["entries"][path]["ntfs_times"]
        st = volume.stat(number)
        got = (st.created, st.modified, st.accessed, st.changed)
        want = (_ns(created), _ns(modified), _ns(accessed), _ns(changed))
        if got != want:
            bad.append((path, got, want))
    assert bad == []


def _sha256(volume: NtfsVolume, number: int, stream: str = "") -> tuple[int, str]:
    src = volume.open(number, stream)
    h = hashlib.sha256()
    for pos in range(0, src.size, CHUNK):
        h.update(src.read_at(pos, CHUNK))
    return src.size, h.hexdigest()


def test_every_file_has_ntfs3g_contents(
    volume: NtfsVolume, ours: dict[str, int], manifest: dict[str, Any]
) -> None:
    bad = []
    for path, number in ours.items():
        ref = manifest["entries"][path]
        if ref["type"] != "file":
            continue
        size, digest = _sha256(volume, number)
        if (size, digest) != (ref["size"], ref["sha256"]):
            bad.append(path)
    assert bad == []


def test_every_named_stream(
    volume: NtfsVolume, ours: dict[str, int], manifest: dict[str, Any]
) -> None:
    bad = []
    for path, number in ours.items():
        ref = manifest["entries"][path].get("streams")
        if ref is None:
            continue
        got = {
            name: {"size": size, "sha256": _sha256(volume, number, name)[1]}
            for name, size in volume.streams(number)
        }
        if got != ref:
            bad.append((path, sorted(got), sorted(ref)))
    assert bad == []


def test_reparse_points(
    volume: NtfsVolume, ours: dict[str, int], manifest: dict[str, Any], ntfs_image: NtfsImage
) -> None:
    for path, number in ours.items():
        raw = manifest["entries"][path].get("reparse")
        assert (volume.reparse_data(number) or b"").hex() == (raw or "")
    link = volume.stat(volume.lookup(ntfs_image.symlink_rel)).reparse
    assert link is not None and link.kind == "symlink" and link.relative
    junction = volume.stat(volume.lookup(ntfs_image.junction)).reparse
    assert junction is not None and junction.kind == "junction"
    assert junction.target == "C:\\Windows"


def test_lookup_ignores_case_but_prefers_exact(
    volume: NtfsVolume, ours: dict[str, int], ntfs_image: NtfsImage
) -> None:
    a, b = ntfs_image.case_pair
    assert volume.lookup(a) == ours[a] and volume.lookup(b) == ours[b] and ours[a] != ours[b]
    for path in (ntfs_image.big_file, ntfs_image.unicode_latin, ntfs_image.deep_file):
        assert volume.lookup(path.upper()) == ours[path]
        assert volume.lookup(path.replace("/", "\\")) == ours[path]


def test_security_descriptors_are_read(volume: NtfsVolume, ours: dict[str, int]) -> None:
    for path in list(ours)[:200]:
        sd = volume.security_descriptor(ours[path])
        assert sd is not None and sd[0] == 1  # revision 1, self-relative


def test_allocation_maps_are_sound(volume: NtfsVolume, ntfs_image: NtfsImage) -> None:
    """Spans cover each file in order; every hole reads as zeros; sparse files have holes."""
    for path in (
        ntfs_image.sparse_file,
        ntfs_image.sparse_comb,
        ntfs_image.sparse_empty,
        ntfs_image.compressed_text,
        ntfs_image.compressed_sparse,
        ntfs_image.big_file,
    ):
        src = volume.open(volume.lookup(path))
        pos = 0
        for span in src.spans():
            assert span.offset == pos and span.length > 0
            pos = span.end
            if not span.allocated and span.length <= 64 << 20:
                assert src.read_at(span.offset, span.length).count(0) == span.length, path
        assert pos == src.size
    holes = [
        s for s in volume.open(volume.lookup(ntfs_image.sparse_comb)).spans() if not s.allocated
    ]
    assert len(holes) >= 500
    assert all(s.allocated for s in volume.open(volume.lookup(ntfs_image.compressed_text)).spans())


def test_lean_stat_equals_the_full_parse(ntfs_image: NtfsImage, ours: dict[str, int]) -> None:
    """Listings stat each entry through a lean reading of its record; it must give what the
    full parse of the same record gives, and step aside (None) only for what it cannot read."""
    src = LocalSource(ntfs_image.path)
    try:
        fresh = NtfsVolume(src)
        numbers = sorted(set(ours.values()))
        lean = {n: fresh._lean_stat(n) for n in numbers}
        for n in numbers:
            node = fresh._node(n)
            full = fresh._stat(n, node)
            if lean[n] is not None:
                assert lean[n] == full, n
            else:  # what it leaves to the full parse: lists, reparse points
                assert full.reparse is not None or any(
                    a.type == AT.ATTRIBUTE_LIST for a in node.record.attributes
                )
        assert sum(v is not None for v in lean.values()) > 0.9 * len(numbers)
    finally:
        src.close()


def test_a_first_acl_read_in_two_threads_gives_both_the_descriptor(ntfs_image: NtfsImage) -> None:
    # $Secure's index used to be published before it was filled: a second thread asking
    # while the first was still scanning got no descriptor, so user.ntfs_acl went missing.
    import threading

    from vcbfs.blocks.source import ByteSource

    class Gated(ByteSource):
        """$SDS whose first read waits until the test lets it go."""

        def __init__(self, base: ByteSource) -> None:
            self.base, self.size, self.name = base, base.size, base.name
            self.entered, self.go = threading.Event(), threading.Event()

        def _read(self, offset: int, n: int) -> bytes:
            self.entered.set()
            assert self.go.wait(10)
            return self.base.read_at(offset, n)

    source = LocalSource(str(ntfs_image.path))
    vol = NtfsVolume(source)
    real = vol._stream
    gates: list[Gated] = []

    def stream(node: Any, atype: int, name: str = "") -> ByteSource | None:
        found = real(node, atype, name)
        if name == "$SDS" and found is not None:
            gates.append(Gated(found))
            return gates[-1]
        return found

    vol._stream = stream  # type: ignore[method-assign]
    number = 1  # $MFTMirr: mkntfs gave it a security id, its descriptor is in $Secure
    assert vol.stat(number).security_id is not None
    got: dict[str, bytes | None] = {}
    first = threading.Thread(target=lambda: got.__setitem__("a", vol.security_descriptor(number)))
    first.start()
    try:
        for _ in range(1000):
            if gates:
                break
            threading.Event().wait(0.01)
        assert gates and gates[0].entered.wait(10)
        second = threading.Thread(
            target=lambda: got.__setitem__("b", vol.security_descriptor(number))
        )
        second.start()
        second.join(0.3)  # it must wait for the scan, not answer from a half-built index
        gates[0].go.set()
        second.join(10)
    finally:
        for gate in gates:
            gate.go.set()
        first.join(10)
        source.close()
    assert got["a"] is not None and got["b"] == got["a"]
