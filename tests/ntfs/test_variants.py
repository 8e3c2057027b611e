"""vcbfs's NTFS reader on hand-made variants of the reference volume, checked against ntfs-3g.

The variants (see ``variants``) hold what ntfs-3g cannot be asked to write: a fragmented $MFT
continued through an $ATTRIBUTE_LIST in extension records, EFS-encrypted files, and files whose
initialized size is below their data size.  Each variant is first shown to be sound by an
independent reader (an ntfs-3g read-only mount, and sleuthkit's ``istat`` for $MFT), then our
reader must agree with it.

What ntfs-3g (2022.10.3) does with the EFS files, measured: ``stat`` reports the data size and
``system.ntfs_attrib_be`` has FILE_ATTRIBUTE_ENCRYPTED; ``open`` succeeds but ``read`` fails with
EACCES.  With ``-o efs_raw`` the size is rounded up to 512 plus 2 bytes (the raw EFS export
format) and reads return the clusters as stored, which here are the plain original bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.ntfs.ntfsimages import (
    MANIFEST_EXCLUDED,
    NtfsImage,
    istat,
    istat_runs,
    lgetxattr,
    ntfs3g_mounted,
)
from tests.ntfs.variants import (
    AT_DATA,
    FILE_ATTRIBUTE_ENCRYPTED,
    Attr,
    Image,
    Record,
    Variants,
    build_variants,
    decode_runlist,
    encode_runlist,
    fixup,
    index_entries,
    unfixup,
)
from vcbfs.blocks.local import LocalSource
from vcbfs.errors import UnavailableError
from vcbfs.ntfs.volume import ROOT, NtfsVolume

CHUNK = 4 << 20
NTFS3G_HASH_LIMIT = 16 << 20  # files read through ntfs-3g (bigger ones: by our reader only)


@pytest.fixture(scope="session")
def variants(ntfs_image: NtfsImage) -> Variants:
    """The variant images, built once (cached beside the reference volume)."""
    return build_variants(ntfs_image)


@contextmanager
def opened(path: Path) -> Iterator[NtfsVolume]:
    src = LocalSource(path)
    try:
        yield NtfsVolume(src)
    finally:
        src.close()


def _sha256(volume: NtfsVolume, number: int) -> tuple[int, str]:
    src = volume.open(number)
    h = hashlib.sha256()
    for pos in range(0, src.size, CHUNK):
        h.update(src.read_at(pos, CHUNK))
    return src.size, h.hexdigest()


def _read_all(volume: NtfsVolume, number: int) -> bytes:
    src = volume.open(number)
    return src.read_at(0, src.size)


def _excluded(name: str) -> bool:
    return name.startswith("$") or name in MANIFEST_EXCLUDED


def _our_tree(volume: NtfsVolume) -> dict[str, int]:
    """path -> record number from our reader, not descending into reparse points."""
    out: dict[str, int] = {}

    def walk(number: int, prefix: str) -> None:
        for e in volume.iterdir(number):
            if not prefix and _excluded(e.name):
                continue
            out[prefix + e.name] = e.record
            if e.is_dir and volume.stat(e.record).reparse is None:
                walk(e.record, prefix + e.name + "/")

    walk(ROOT, "")
    return out


def _ntfs3g_tree(mnt: Path) -> dict[str, tuple[str, int, int]]:
    """path -> (type, inode, size) as an ntfs-3g mount shows it (the manifest's walk)."""
    out: dict[str, tuple[str, int, int]] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        for name in os.listdir(mnt / rel if rel else mnt):
            if not rel and _excluded(name):
                continue
            path = f"{rel}/{name}" if rel else name
            st = os.lstat(mnt / path)
            kind = (
                "symlink" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                else "file"
            )  # fmt: skip
            out[path] = (kind, st.st_ino, st.st_size)
            if kind == "dir":
                stack.append(path)
    return out


def _manifest_tree(ntfs_image: NtfsImage) -> dict[str, tuple[str, int, int]]:
    return {p: (e["type"], e["ino"], e["size"]) for p, e in ntfs_image.entries.items() if p != "."}


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- the patcher itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "runs",
    [
        [(4, 512)],
        [(7235, 1244), (5927, 1244)],  # a negative delta
        [(None, 10), (100, 1), (None, 1 << 40), (0x7FFF, 0x80), (3, 0x8000)],
        [(1 << 40, 1), (0, 1)],
    ],
)
def test_runlist_encoding_round_trips(runs: list[tuple[int | None, int]]) -> None:
    assert decode_runlist(encode_runlist(runs)) == runs


def test_records_re_encode_to_their_own_bytes(ntfs_image: NtfsImage) -> None:
    """Parse + encode gives back every in-use record (up to its used size), fixups included."""
    with open(ntfs_image.path, "rb") as f:
        img = Image(f)
        numbers = [*range(0, 16), *range(64, 23689, 97)]
        for n in numbers:
            raw = img.read(img.record_offset(n), img.record_size)
            rec = Record.parse(raw, n)
            if not rec.flags & 1:
                continue
            again = rec.encode()
            used = int.from_bytes(unfixup(raw, b"FILE")[24:28], "little")
            assert unfixup(again, b"FILE")[:used] == unfixup(raw, b"FILE")[:used], n
            # The update sequence sits in the same places as on disk.
            for end in range(510, img.record_size, 512):
                assert again[end : end + 2] == raw[end : end + 2], n
    buf = bytearray(b"FILE" + bytes(1020))
    buf[4:8] = (48).to_bytes(2, "little") + (3).to_bytes(2, "little")
    buf[48:50] = b"\x05\x00"  # the update sequence number
    buf[510:512] = b"ab"
    buf[1022:1024] = b"cd"
    fixed = bytes(fixup(bytearray(buf)))
    assert fixed[510:512] == fixed[1022:1024] == b"\x05\x00" and fixed[50:54] == b"abcd"
    back = unfixup(fixed, b"FILE")
    assert back[:50] == buf[:50] and back[54:] == buf[54:]


def test_built_attributes_parse_back() -> None:
    a = Attr.non_resident_extent(AT_DATA, 7, 512, [(7235, 1244), (5927, 1244)], name="s")
    assert (a.type, a.name, a.instance, a.lowest_vcn, a.highest_vcn) == (AT_DATA, "s", 7, 512, 2999)
    assert a.runs == [(7235, 1244), (5927, 1244)] and len(a.raw) % 8 == 0
    r = Attr.resident(0x20, b"x" * 13, 4)
    assert bytes(r.value) == b"x" * 13 and len(r.raw) == 40 and not r.non_resident


# --- 1. $MFT fragmented, continued in extension records ------------------------------------


def test_fragmented_mft_as_sleuthkit_sees_it(variants: Variants) -> None:
    """istat decodes our $ATTRIBUTE_LIST and the $DATA runs of all three extents."""
    facts = variants.mft
    text = istat(variants.fragmented_mft, 0, runs=True)
    assert "$ATTRIBUTE_LIST (32-" in text
    for record, vcn in zip(facts["extension_records"], facts["split_vcns"][1:], strict=True):
        assert f"MFT Entry: {record} \tVCN: {vcn}" in text
    want = [(lcn, n, False) for _vcn, runs in facts["pieces"] for lcn, n in runs]
    assert istat_runs(text) == want
    with open(variants.fragmented_mft, "rb") as f:
        img = Image(f)
        moved = facts["moved"]
        first, end = moved["vcns"]
        cs = img.cluster_size
        assert img.read(moved["old_lcn"] * cs, (end - first) * cs).count(0) == (end - first) * cs
        mirror = img.read(img.mftmirr_lcn * cs, img.record_size)
        assert mirror == img.read(img.mft_lcn * cs, img.record_size)


def test_fragmented_mft_as_ntfs3g_reads_it(variants: Variants, ntfs_image: NtfsImage) -> None:
    """ntfs-3g mounts it, reads $MFT whole, lists the tree and reads files past the split."""
    facts = variants.mft
    split_record = facts["split_vcns"][1] * facts["records_per_cluster"]
    changed = {0, *facts["extension_records"]}
    with ntfs3g_mounted(variants.fragmented_mft, "ro") as mnt:
        mft = (mnt / "$MFT").read_bytes()
        tree = _ntfs3g_tree(mnt)
        beyond = {
            p: e["sha256"]
            for p, e in ntfs_image.entries.items()
            if e["type"] == "file" and e["ino"] >= split_record and e["size"] <= NTFS3G_HASH_LIMIT
        }
        got = {p: _file_sha256(mnt / p) for p in beyond}
    assert tree == _manifest_tree(ntfs_image)
    assert len(beyond) > 15000 and got == beyond
    with ntfs3g_mounted(ntfs_image.path, "ro") as mnt:
        ref_mft = (mnt / "$MFT").read_bytes()
    rs = len(mft) // facts["record_count"]
    assert len(mft) == len(ref_mft) == facts["record_count"] * rs
    differ = {n for n in range(facts["record_count"]) if mft[n * rs : (n + 1) * rs]
              != ref_mft[n * rs : (n + 1) * rs]}  # fmt: skip
    assert differ == changed


def test_fragmented_mft_our_reader(variants: Variants, ntfs_image: NtfsImage) -> None:
    """Our reader maps $MFT from all three extents: same records, tree and contents."""
    facts = variants.mft
    with opened(ntfs_image.path) as ref, opened(variants.fragmented_mft) as vol:
        assert vol.mft.record_count == ref.mft.record_count == facts["record_count"]
        runs = [(r.vcn, r.length, r.lcn) for r in vol.mft.stream.map.runs]
        want, vcn = [], 0
        for _start, pieces in facts["pieces"]:
            for lcn, n in pieces:
                want.append((vcn, n, lcn))
                vcn += n
        assert runs == want
        with ntfs3g_mounted(variants.fragmented_mft, "ro") as mnt:
            theirs = (mnt / "$MFT").read_bytes()
        ours = vol.mft.stream.read_at(0, vol.mft.stream.size)
        assert ours == theirs
        assert not vol.notes
        tree = _our_tree(vol)
        assert sorted(tree) == sorted(_manifest_tree(ntfs_image))
        assert all(tree[p] == e["ino"] for p, e in ntfs_image.entries.items() if p != ".")
        bad = [
            p
            for p, e in ntfs_image.entries.items()
            if e["type"] == "file" and _sha256(vol, tree[p]) != (e["size"], e["sha256"])
        ]
        assert bad == []
        # The 20,000-entry directory's record lies in the moved extent, its entries past it.
        split_record = facts["split_vcns"][1] * facts["records_per_cluster"]
        huge = vol.lookup(ntfs_image.huge_dir)
        assert split_record <= huge < facts["split_vcns"][2] * facts["records_per_cluster"]
        records = [e.record for e in vol.iterdir(huge)]
        assert len(records) == ntfs_image.huge_dir_entries and min(records) > split_record
        for number in facts["extension_records"]:
            record = vol.mft.record(number)
            assert record.in_use and record.base == 0 and record.sequence == number


def test_mft_extension_records_are_not_files(variants: Variants) -> None:
    """An extension record of $MFT is no file: stat says not found, as for any extension."""
    with opened(variants.fragmented_mft) as vol:
        for number in variants.mft["extension_records"]:
            with pytest.raises(FileNotFoundError, match="extension record"):
                vol.stat(number)


# --- 2. EFS-encrypted files --------------------------------------------------------------


def _efs_names(variants: Variants, ntfs_image: NtfsImage) -> list[str]:
    """Every path of the encrypted files (one of them has a second name elsewhere)."""
    encrypted = {ntfs_image.entries[p]["ino"] for p in variants.efs_facts}
    return sorted(p for p, e in ntfs_image.entries.items() if e["ino"] in encrypted)


def _efs_siblings(variants: Variants, ntfs_image: NtfsImage) -> list[str]:
    """Files in the encrypted files' directories that are not encrypted themselves."""
    encrypted = {ntfs_image.entries[p]["ino"] for p in variants.efs_facts}
    dirs = {p.rsplit("/", 1)[0] for p in variants.efs_facts}
    return sorted(
        p
        for p, e in ntfs_image.entries.items()
        if e["type"] == "file" and p.rsplit("/", 1)[0] in dirs and e["ino"] not in encrypted
    )


def test_efs_as_ntfs3g_reads_it(variants: Variants, ntfs_image: NtfsImage) -> None:
    """ntfs-3g: stat works and shows the EFS bit, read fails with EACCES; siblings read."""
    siblings = _efs_siblings(variants, ntfs_image)
    assert len(siblings) >= 3
    names = _efs_names(variants, ntfs_image)
    assert len(names) == len(variants.efs_facts) + 1
    with ntfs3g_mounted(variants.efs, "ro") as mnt:
        for path in names:
            ref = ntfs_image.entries[path]
            st = os.lstat(mnt / path)
            assert (st.st_ino, st.st_size) == (ref["ino"], ref["size"])
            attrib = int.from_bytes(lgetxattr(mnt / path, "system.ntfs_attrib_be"), "big")
            assert attrib == ref["attributes"] | FILE_ATTRIBUTE_ENCRYPTED
            with open(mnt / path, "rb") as f, pytest.raises(PermissionError) as exc:
                f.read()
            assert exc.value.errno == errno.EACCES
        for path in siblings:
            assert _file_sha256(mnt / path) == ntfs_image.entries[path]["sha256"], path
        for d in {p.rsplit("/", 1)[0] for p in variants.efs_facts}:
            want = {p.rsplit("/", 1)[1] for p in ntfs_image.entries if p.rsplit("/", 1)[0] == d}
            assert set(os.listdir(mnt / d)) == want
    with ntfs3g_mounted(variants.efs, "ro", "efs_raw") as mnt:
        for path in names:
            ref = ntfs_image.entries[path]
            raw = (mnt / path).read_bytes()
            assert len(raw) == (ref["size"] + 511) // 512 * 512 + 2
            assert hashlib.sha256(raw[: ref["size"]]).hexdigest() == ref["sha256"]


def test_efs_flags_are_in_every_copy(variants: Variants) -> None:
    """The record's $FILE_NAMEs and each parent's index entry carry the encrypted bit."""
    with open(variants.efs, "rb") as f:
        img = Image(f)
        for path, facts in variants.efs_facts.items():
            assert facts["index_entries"], path
            for parent, where in facts["index_entries"].items():
                entries = index_entries(img, int(parent), facts["record"])
                assert [w for w, _flags in entries] == [w for w, _flags in where]
                assert all(flags & FILE_ATTRIBUTE_ENCRYPTED for _w, flags in entries)
    found = {w.split()[0] for f in variants.efs_facts.values() for v in f["index_entries"].values()
             for w, _ in v}  # fmt: skip
    assert found == {"root", "INDX"}


def test_efs_our_reader(variants: Variants, ntfs_image: NtfsImage) -> None:
    """stat works and says encrypted; open raises UnavailableError (EIO) naming EFS, never the
    ciphertext as content; siblings read."""
    with opened(variants.efs) as vol:
        for path in _efs_names(variants, ntfs_image):
            ref = ntfs_image.entries[path]
            number = vol.lookup(path)
            st = vol.stat(number)
            assert number == ref["ino"] and st.encrypted and st.size == ref["size"]
            assert st.attributes == ref["attributes"] | FILE_ATTRIBUTE_ENCRYPTED
            assert st.links == ref["nlink"]
            assert all(fn.flags & FILE_ATTRIBUTE_ENCRYPTED for fn in vol.names(number))
            with pytest.raises(UnavailableError, match="EFS") as exc:
                vol.open(number)
            assert exc.value.errno == errno.EIO
        for path in _efs_siblings(variants, ntfs_image):
            number = vol.lookup(path)
            assert not vol.stat(number).encrypted
            ref = ntfs_image.entries[path]
            assert _sha256(vol, number) == (ref["size"], ref["sha256"]), path
        tree = _our_tree(vol)
        assert sorted(tree) == sorted(_manifest_tree(ntfs_image))


# --- 3. initialized size below the data size ---------------------------------------------


def test_uninitialized_tail_reads_as_zeros(variants: Variants, ntfs_image: NtfsImage) -> None:
    """Our reader returns what ntfs-3g returns: the data up to the cut, then zeros."""
    with (
        open(variants.uninitialized, "rb") as f,
        opened(variants.uninitialized) as vol,
        ntfs3g_mounted(variants.uninitialized, "ro") as mnt,
    ):
        img = Image(f)
        for path, facts in variants.uninitialized_facts.items():
            ref = ntfs_image.entries[path]
            init, size = facts["initialized"], facts["size"]
            assert init % img.cluster_size and 0 < init < size == ref["size"]
            disk = img.raw_data(facts["record"])
            # The clusters are untouched (they still hold the whole original file) ...
            assert hashlib.sha256(disk).hexdigest() == ref["sha256"]
            assert disk[init:].count(0) < (size - init) // 2
            # ... and ntfs-3g reads zeros past the initialized size.
            theirs = (mnt / path).read_bytes()
            assert theirs[:init] == disk[:init] and theirs[init:] == bytes(size - init)
            number = vol.lookup(path)
            assert vol.stat(number).size == size
            assert _read_all(vol, number) == theirs, path
            src = vol.open(number)
            with open(mnt / path, "rb", buffering=0) as g:
                probes = ((init - 1, 2), (init - 100, 5000), (0, init + 1), (init, 1),
                          (init // 4096 * 4096, 4096), (size - 3, 3), (init - 1, 1))  # fmt: skip
                for pos, n in probes:
                    assert src.read_at(pos, n) == os.pread(g.fileno(), n, pos), (path, pos, n)


def test_uninitialized_spans_end_at_the_cut(variants: Variants) -> None:
    """Nothing past the initialized size is reported as data; the spans cover the file."""
    with opened(variants.uninitialized) as vol:
        for path, facts in variants.uninitialized_facts.items():
            src = vol.open(vol.lookup(path))
            spans = list(src.spans())
            assert spans[0].offset == 0 and spans[-1].end == facts["size"]
            data = [s for s in spans if s.allocated]
            assert data and max(s.end for s in data) == facts["initialized"], path
            for s in spans:
                if not s.allocated:
                    assert src.read_at(s.offset, s.length).count(0) == s.length
