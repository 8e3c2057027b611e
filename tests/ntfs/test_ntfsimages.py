"""The reference NTFS volume holds what ntfsimages promises, checked with sleuthkit as well.

These test the test data: ntfs-3g built the volume and wrote the manifest, and sleuthkit
(``fls``, ``istat``, ``fsstat``: an independent NTFS implementation) confirms the on-disk
structures the reader tests rely on (attribute lists, runs, compression, sparse runs, reparse
points) and that both tools see the same names, inodes and streams.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.images import run
from tests.ntfs.ntfsimages import (
    CLUSTER,
    FILE_ATTRIBUTE_COMPRESSED,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    FILE_ATTRIBUTE_SPARSE_FILE,
    FRAG_CHUNKS,
    GIB,
    HARD_LINKS,
    KIB,
    MANIFEST_EXCLUDED,
    MANY_STREAMS,
    MIB,
    REPARSE_POINTS,
    TIMES,
    NtfsImage,
    fls_listing,
    istat,
    istat_runs,
    ntfs3g_mounted,
    ntfs_time_to_ns,
    ntfsinfo_runs,
    reparse_data,
)


def _ino(img: NtfsImage, path: str) -> int:
    return img.entries[path]["ino"]


def _children(img: NtfsImage, d: str) -> list[str]:
    prefix = d + "/"
    return [p for p in img.entries if p.startswith(prefix) and "/" not in p[len(prefix) :]]


def _data_header(text: str, name: str = "N/A") -> str:
    """The istat header line of a $DATA attribute (``name``: the stream, N/A: unnamed)."""
    for line in text.splitlines():
        if line.startswith("Type: $DATA (128-") and f"Name: {name} " in line:
            return line
    raise AssertionError(f"no $DATA {name} in istat output")


def test_volume_geometry_and_label(ntfs_image: NtfsImage) -> None:
    assert ntfs_image.path.stat().st_size == ntfs_image.volume_size
    fsstat = run("fsstat", ntfs_image.path)
    assert "File System Type: NTFS" in fsstat
    assert f"Volume Name: {ntfs_image.label}" in fsstat
    assert f"Sector Size: {ntfs_image.sector_size}" in fsstat
    assert f"Cluster Size: {ntfs_image.cluster_size}" in fsstat
    volume = ntfs_image.manifest["volume"]
    assert volume["label"] == ntfs_image.label
    assert volume["cluster_size"] == ntfs_image.cluster_size


def test_counts(ntfs_image: NtfsImage) -> None:
    e = ntfs_image.entries
    kinds = Counter(v["type"] for v in e.values())
    assert kinds["file"] >= ntfs_image.tree_files + ntfs_image.huge_dir_entries
    tree = [p for p in e if p == "tree" or p.startswith("tree/")]
    assert sum(e[p]["type"] == "file" for p in tree) == ntfs_image.tree_files == 3000
    assert sum(e[p]["type"] == "dir" for p in tree) == ntfs_image.tree_dirs == 300
    assert max(p.count("/") for p in tree if e[p]["type"] == "dir") == 4  # 4 levels below tree/
    sizes = {e[p]["size"] for p in tree if e[p]["type"] == "file"}
    assert len(sizes) > 2000 and min(sizes) == 0 and max(sizes) > 128 * KIB
    assert len(_children(ntfs_image, ntfs_image.huge_dir)) == ntfs_image.huge_dir_entries == 20_000


def test_big_file_is_one_run(ntfs_image: NtfsImage) -> None:
    entry = ntfs_image.entries[ntfs_image.big_file]
    assert entry["size"] == ntfs_image.big_file_size == 64 * MIB
    runs = istat_runs(istat(ntfs_image.path, entry["ino"], runs=True))
    assert [length for _, length, _ in runs] == [64 * MIB // CLUSTER]


def test_attribute_lists(ntfs_image: NtfsImage) -> None:
    links = ntfs_image.entries[ntfs_image.attr_list_links]
    assert links["nlink"] == HARD_LINKS + 1
    names = _children(ntfs_image, ntfs_image.attr_list_links_dir)
    assert len(names) == HARD_LINKS
    assert {ntfs_image.entries[p]["ino"] for p in names} == {links["ino"]}
    assert all(len(p.rsplit("/", 1)[1]) > 200 for p in names)
    text = istat(ntfs_image.path, links["ino"])
    assert "Type: $ATTRIBUTE_LIST (32-" in text
    assert text.count("Type: $FILE_NAME (48-") == HARD_LINKS + 1

    streams = ntfs_image.entries[ntfs_image.attr_list_streams]
    assert len(streams["streams"]) == MANY_STREAMS
    text = istat(ntfs_image.path, streams["ino"])
    assert "Type: $ATTRIBUTE_LIST (32-" in text
    assert text.count("Type: $DATA (128-") == MANY_STREAMS + 1


def test_fragmented_files_have_many_runs(ntfs_image: NtfsImage) -> None:
    for path in ntfs_image.fragmented:
        entry = ntfs_image.entries[path]
        text = istat(ntfs_image.path, entry["ino"], runs=True)
        runs = istat_runs(text)
        assert not any(sparse for _, _, sparse in runs)
        assert len(runs) >= FRAG_CHUNKS[path.rsplit("/", 1)[1]] * 0.5, path
        assert sum(length for _, length, _ in runs) == -(-entry["size"] // CLUSTER)
    # The longest runlists no longer fit the base record: $DATA continues in extension records.
    text = istat(ntfs_image.path, _ino(ntfs_image, ntfs_image.fragmented[0]))
    assert "Type: $ATTRIBUTE_LIST (32-" in text


def test_compressed_directory(ntfs_image: NtfsImage) -> None:
    e = ntfs_image.entries
    d = ntfs_image.compressed_dir
    assert e[d]["attributes"] & (FILE_ATTRIBUTE_COMPRESSED | FILE_ATTRIBUTE_DIRECTORY) == 0x810
    inside = [p for p in e if p.startswith(d + "/") and e[p]["type"] == "file"]
    assert len(inside) >= 6
    assert all(e[p]["attributes"] & FILE_ATTRIBUTE_COMPRESSED for p in inside)
    text, rnd = e[ntfs_image.compressed_text], e[ntfs_image.compressed_random]
    assert text["allocated"] < text["size"] // 3  # LZNT1 did compress the text
    assert rnd["allocated"] >= rnd["size"]  # random units are stored raw
    for path in (
        ntfs_image.compressed_text,
        ntfs_image.compressed_random,
        ntfs_image.compressed_mixed,
        ntfs_image.compressed_sparse,
    ):
        header = _data_header(istat(ntfs_image.path, e[path]["ino"]))
        assert "Non-Resident" in header and "Compressed" in header, path
    assert "Resident" in _data_header(
        istat(ntfs_image.path, _ino(ntfs_image, "compressed/small.txt"))
    )
    sparse = istat_runs(
        istat(ntfs_image.path, _ino(ntfs_image, ntfs_image.compressed_sparse), True)
    )
    assert sum(length for _, length, is_sparse in sparse if is_sparse) >= 512  # 2 MiB of holes


def test_sparse_files(ntfs_image: NtfsImage) -> None:
    e = ntfs_image.entries
    far = e[ntfs_image.sparse_file]
    assert far["size"] == 2 * GIB + MIB
    assert far["allocated"] == 2 * MIB
    assert far["attributes"] & FILE_ATTRIBUTE_SPARSE_FILE
    # sleuthkit 4.11 rejects a run (even a hole) longer than the volume ("ntfs_make_run: Run
    # length is larger than file system"), so this runlist is read with ntfsinfo (libntfs-3g).
    runs = ntfsinfo_runs(ntfs_image.path, far["ino"])
    assert runs == [
        (0, runs[0][1], 256),
        (256, None, 2 * GIB // CLUSTER - 256),
        (2 * GIB // CLUSTER, runs[2][1], 256),
    ]

    comb = istat_runs(istat(ntfs_image.path, _ino(ntfs_image, ntfs_image.sparse_comb), True))
    assert [sparse for _, _, sparse in comb] == [False, True] * 599 + [False]
    assert e[ntfs_image.sparse_empty]["allocated"] == 0
    assert e[ntfs_image.sparse_empty]["size"] == 10 * MIB


def test_named_streams(ntfs_image: NtfsImage) -> None:
    e = ntfs_image.entries
    streams = e[ntfs_image.streams_file]["streams"]
    assert sorted(streams) == sorted(ntfs_image.streams)
    assert streams["empty"]["size"] == 0
    assert streams["medium"]["size"] == 60 * KIB
    assert streams[ntfs_image.large_stream]["size"] == 200 * KIB
    text = istat(ntfs_image.path, e[ntfs_image.streams_file]["ino"])
    assert "Non-Resident" in _data_header(text, ntfs_image.large_stream)
    assert "Resident" in _data_header(text, "empty")
    assert list(e[ntfs_image.streams_dir]["streams"]) == ["dirstream"]
    only = e[ntfs_image.streams_only]
    assert only["size"] == 0 and only["streams"]["only"]["size"] == 3000


def test_hard_links(ntfs_image: NtfsImage) -> None:
    for group in ntfs_image.hard_links:
        entries = [ntfs_image.entries[p] for p in group]
        assert len({x["ino"] for x in entries}) == 1
        assert len({x["sha256"] for x in entries}) == 1
        assert all(x["nlink"] == len(group) for x in entries)
        assert len({p.split("/")[1] for p in group}) == len(group)  # in different directories


def test_reparse_points(ntfs_image: NtfsImage) -> None:
    e = ntfs_image.entries
    targets = {
        ntfs_image.symlink_abs: "<mnt>/.NTFS-3G/C:/Users/Public/target.txt",
        ntfs_image.symlink_abs_bare: "unsupported reparse tag 0xa000000c",
        ntfs_image.symlink_rel: "../data/file.txt",
        ntfs_image.symlink_same_volume: "<mnt>/" + ntfs_image.symlink_target_file,
        ntfs_image.dir_symlink: "../data",
        ntfs_image.junction: "<mnt>/.NTFS-3G/C:/Windows",
        ntfs_image.junction_same_volume: "<mnt>/data",
    }
    assert {p for p, *_ in REPARSE_POINTS} == set(targets)
    for path, tag, sub, prn, relative, is_dir in REPARSE_POINTS:
        entry = e[path]
        assert entry["type"] == "symlink", path
        assert entry["target"] == targets[path], path
        assert entry["reparse"] == reparse_data(tag, sub, prn, relative).hex(), path
        assert entry["attributes"] & FILE_ATTRIBUTE_REPARSE_POINT
        assert bool(entry["attributes"] & FILE_ATTRIBUTE_DIRECTORY) == is_dir
        assert "Type: $REPARSE_POINT (192-" in istat(ntfs_image.path, entry["ino"])
    assert e[ntfs_image.symlink_target_file]["type"] == "file"


def test_names(ntfs_image: NtfsImage) -> None:
    e = ntfs_image.entries
    for path in (ntfs_image.unicode_cjk, ntfs_image.unicode_emoji, ntfs_image.unicode_latin):
        assert e[path]["type"] == "file"
    emoji = ntfs_image.unicode_emoji.rsplit("/", 1)[1]
    assert len(emoji.encode("utf-16-le")) // 2 == len(emoji) + 1  # one surrogate pair
    upper, lower = ntfs_image.case_pair
    assert upper.lower() == lower.lower() and upper != lower
    assert e[upper]["ino"] != e[lower]["ino"] and e[upper]["sha256"] != e[lower]["sha256"]
    long_name = ntfs_image.long_name.rsplit("/", 1)[1]
    assert len(long_name.encode("utf-16-le")) // 2 == 255 and e[ntfs_image.long_name]
    assert len(ntfs_image.long_cjk_name.rsplit("/", 1)[1].encode()) == 255
    assert e[ntfs_image.trailing_dot]["type"] == e[ntfs_image.trailing_space]["type"] == "file"
    deep = ntfs_image.deep_file
    assert deep.count("/") == 31 and len(deep) > 400 and e[deep]["type"] == "file"


def test_sizes_and_residency(ntfs_image: NtfsImage) -> None:
    e = ntfs_image.entries
    assert e[ntfs_image.empty_file]["size"] == 0
    assert e[ntfs_image.empty_dir]["type"] == "dir" and not _children(ntfs_image, "sizes/empty-dir")
    assert e[ntfs_image.cluster_file]["size"] == CLUSTER
    assert e[ntfs_image.cluster_plus_one_file]["size"] == CLUSTER + 1
    assert [e[p]["size"] for p in ntfs_image.tiny_files] == [1, 100, 600]
    for path in (ntfs_image.empty_file, *ntfs_image.tiny_files):
        header = _data_header(istat(ntfs_image.path, e[path]["ino"]))
        assert "Non-Resident" not in header and "Resident" in header, path
    for path in (ntfs_image.cluster_file, ntfs_image.cluster_plus_one_file):
        assert "Non-Resident" in _data_header(istat(ntfs_image.path, e[path]["ino"])), path


def test_times(ntfs_image: NtfsImage) -> None:
    e = ntfs_image.entries
    for path, (atime, mtime) in TIMES.items():
        _, modified, accessed, _ = e[path]["ntfs_times"]
        assert ntfs_time_to_ns(modified) == mtime and ntfs_time_to_ns(accessed) == atime
    assert e[ntfs_image.old_time_file]["mtime_ns"] == TIMES[ntfs_image.old_time_file][1]
    assert e[ntfs_image.future_time_file]["mtime_ns"] == TIMES[ntfs_image.future_time_file][1]
    # ntfs-3g drops the fraction of times before 1970 (truncates toward zero).
    assert e[ntfs_image.pre_epoch_file]["mtime_ns"] == -300_000_000 * 10**9
    assert e[ntfs_image.times_dir]["mtime_ns"] == 10**18
    # st_ctime is the MFT record change time, st_mtime/st_atime the data change/access times.
    for entry in e.values():
        _, modified, _, changed = entry["ntfs_times"]
        assert entry["ctime_ns"] == ntfs_time_to_ns(changed)
        if modified >= 116444736000000000:
            assert entry["mtime_ns"] == ntfs_time_to_ns(modified)
    assert len({entry["mtime_ns"] for entry in e.values()}) > 1000


def test_manifest_matches_fls(ntfs_image: NtfsImage) -> None:
    """Names, MFT record numbers, types and named streams: ntfs-3g against sleuthkit.

    Normalisation of ``fls -r -p``: deleted entries and the root's ``$`` metafiles (and
    sleuthkit's virtual ``$OrphanFiles``) are left out, as the manifest leaves them out; a
    directory's named stream, listed by fls both as ``dir:name`` and ``dir/.:name``, counts
    once; names are compared exactly (both tools convert UTF-16 to UTF-8 without normalising).
    """
    fls_paths: dict[str, set[tuple[str, int]]] = {}
    fls_streams: set[tuple[str, str, int]] = set()
    metafiles = set()
    for kind, inode, atype, _, path in fls_listing(ntfs_image.path):
        if path.split("/", 1)[0].startswith("$"):
            if kind != "V/V":  # $OrphanFiles is sleuthkit's invention
                metafiles.add(path.split("/", 1)[0].split(":", 1)[0])
            continue
        last = path.rsplit("/", 1)[-1]
        if atype == 128 and ":" in last:
            if last.startswith(".:"):
                continue
            base, name = path.rsplit(":", 1)
            fls_streams.add((base, name, inode))
        else:
            fls_paths.setdefault(path, set()).add((kind, inode))

    assert metafiles <= set(ntfs_image.manifest["excluded_at_root"]) == set(MANIFEST_EXCLUDED)
    assert len(metafiles) == 11
    e = {p: v for p, v in ntfs_image.entries.items() if p != "."}
    assert set(fls_paths) == set(e)
    for path, seen in fls_paths.items():
        entry = e[path]
        is_dir = entry["type"] == "dir" or (
            entry["type"] == "symlink" and entry["attributes"] & FILE_ATTRIBUTE_DIRECTORY
        )
        assert seen == {("d/d" if is_dir else "r/r", entry["ino"])}, path
    manifest_streams = {(p, name, v["ino"]) for p, v in e.items() for name in v.get("streams", {})}
    assert fls_streams == manifest_streams


def test_mount_is_cleaned_up_on_error(ntfs_image: NtfsImage) -> None:
    with pytest.raises(ZeroDivisionError), ntfs3g_mounted(ntfs_image.path, "ro") as mnt:
        assert os.path.ismount(mnt)
        _ = 1 / 0
    assert not os.path.ismount(mnt) and not Path(mnt).exists()
    assert not any(os.fspath(mnt) in cmdline for cmdline in _command_lines())


def _command_lines() -> list[str]:
    """Every process's command line, from /proc (no ps on a minimal system)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out
