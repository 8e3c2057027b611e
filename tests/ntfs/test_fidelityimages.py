"""The fidelity volume holds what fidelityimages promises, checked with readers other than vcbfs.

- pyfsntfs (libfsntfs: a libyal NTFS reader that decodes WOF files) must read every file's
  content, size, attributes, reparse tag and named streams as the manifest says, except where
  libfsntfs or libfwnt are known to be wrong (``PYFSNTFS_KNOWN``, checked exactly: a fixed
  library shows up as a failure here, to update the list).
- ntfs-3g (a read-only mount, and ``ntfscat``/``ntfsinfo`` for what the mount will not show)
  must see the reparse data, attributes, streams, links and contents; each WofCompressedData
  stream it reads must decode with wimlib's decompressor to the manifest's content, with
  libfwnt disagreeing exactly on the chunks ``libfwnt_bad_chunks`` lists.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfsntfs
import pytest

from tests.images import run
from tests.ntfs.fidelityimages import (
    ALGORITHMS,
    BAD_CHUNK,
    E8_TAIL,
    KINDS,
    LENGTHS_TRAP,
    WOF_STREAM,
    FidelityImage,
    build_fidelity_image,
    data_residency,
    decode_wof_stream,
    fidelity_cache_dir,
    libfwnt_disagreements,
    ntfscat,
    split_wof_stream,
)
from tests.ntfs.ntfsimages import lgetxattr, ntfs3g_mounted, sha256_file

MIB = 1 << 20
DIRECTORY = 0x10
SPARSE = 0x200
REPARSE_POINT = 0x400
COMPRESSED = 0x800
OFFLINE = 0x1000
ENCRYPTED = 0x4000
RECALL_ON_DATA_ACCESS = 0x400000

#: What pyfsntfs (libfsntfs 20260827 + libfwnt) gets wrong here: path -> "raises" | "wrong".
PYFSNTFS_KNOWN: dict[str, str] = {
    # libfsntfs reads (chunks) table entries, not (chunks - 1): more than the 1-byte stream.
    **{f"wof/{a}/size-1.bin": "raises" for a in ALGORITHMS},
    # libfwnt's LZX: E8 translation 10..7 bytes before a chunk's end; empty length codes.
    f"wof/LZX/{E8_TAIL}": "wrong",
    f"wof/LZX/{LENGTHS_TRAP}": "raises",
    # libfsntfs takes 8-byte table entries only when the *stream* exceeds 4 GiB.
    "wof/big/big.bin": "raises",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_file(e: dict[str, Any]) -> bool:
    return e["kind"] not in ("dir", "symlink", "junction")


# --- the manifest ------------------------------------------------------------------------------


def test_manifest_has_every_case(fidelity_image: FidelityImage) -> None:
    entries = fidelity_image.entries
    assert {e["kind"] for e in entries.values()} == set(KINDS)
    for alg in ALGORITHMS:
        for size in (0, 1, 4095, 4096, 4097, 32769, 5 * MIB):
            e = entries[f"wof/{alg}/size-{size}.bin"]
            assert (e["kind"], e["algorithm"], e["size"]) == ("wof", alg, size)
        assert entries[f"wof/{alg}/random-100000.bin"]["raw_chunks"] > 0
        assert entries[f"wof/{alg}/size-{5 * MIB}.bin"]["raw_chunks"] > 0  # raw inside a blob
    for path in fidelity_image.bench.values():
        assert entries[path]["sha256"] == entries["bench/plain.bin"]["sha256"]
    assert entries["bench/lznt1/file.bin"]["kind"] == "compressed"
    big = entries[fidelity_image.big_wof]
    assert big["size"] > 1 << 32 and big["chunk_entry_bytes"] == 8
    corrupt = fidelity_image.paths(kind="wof", expect="eio")
    assert len(corrupt) == 4 and all(entries[p]["bad_chunk"] == BAD_CHUNK for p in corrupt)
    assert entries["wof/corrupt/good.bin"]["expect"] == "data"
    tags = {e["tag"] for e in entries.values() if e["kind"] == "stub"}
    assert {0x80000013, 0x9000001A, 0x9000101A, 0xC0000004, 0x80000006} <= tags
    assert fidelity_image.libfwnt_traps() == [f"wof/LZX/{E8_TAIL}", f"wof/LZX/{LENGTHS_TRAP}"]


def test_manifest_schema(fidelity_image: FidelityImage) -> None:
    for path, e in fidelity_image.entries.items():
        assert e["kind"] in KINDS and e["expect"] in ("data", "eio"), path
        assert e["size"] >= 0 and e["ino"] >= 16 and isinstance(e["attributes"], int), path
        if e["expect"] == "eio":
            assert e["reason"] and "sha256" not in e, path
        elif _is_file(e):
            assert len(e["sha256"]) == 64, path
        if e["kind"] == "wof":
            alg = ALGORITHMS[e["algorithm"]]
            assert e["tag"] == 0x80000017 and e["chunk_size"] == alg.chunk_size, path
            assert e["chunks"] == -(-e["size"] // alg.chunk_size), path
            assert e["chunk_entry_bytes"] == (8 if e["size"] > 0xFFFFFFFF else 4), path
            want = struct.pack("<IHH4I", 0x80000017, 16, 0, 1, 2, 1, alg.number)
            assert e["reparse_hex"] == want.hex(), path
        for name, s in e.get("streams", {}).items():
            assert s["size"] >= 0 and len(s["sha256"]) == 64, (path, name)
    for wof, plain in fidelity_image.sources.items():
        e, p = fidelity_image.entry(wof), fidelity_image.entry(plain)
        assert e["kind"] == "wof" and p["kind"] == "plain"
        assert e.get("sha256", e.get("source_sha256")) == p["sha256"], wof


def test_cached_build_and_accessors(fidelity_image: FidelityImage) -> None:
    again = build_fidelity_image(fidelity_image.root)  # cached: returns at once
    assert again == fidelity_image and again.manifest == fidelity_image.manifest
    assert fidelity_image.root == fidelity_cache_dir()
    assert fidelity_image.path.stat().st_size == fidelity_image.manifest["volume"]["size"]
    assert fidelity_image.paths(kind="wof", algorithm="LZX")
    assert set(fidelity_image.readable_files()) == {
        p for p, e in fidelity_image.entries.items() if "sha256" in e
    }


# --- ntfs-3g: the mount ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ntfs3g(fidelity_image: FidelityImage) -> Iterator[Path]:
    """The volume mounted read-only by ntfs-3g, streams as ``file:name``."""
    with ntfs3g_mounted(fidelity_image.path, "ro", "streams_interface=windows") as mnt:
        yield mnt


def test_ntfs3g_sees_inodes_attributes_and_reparse_data(
    fidelity_image: FidelityImage, ntfs3g: Path
) -> None:
    for path, e in fidelity_image.entries.items():
        p = ntfs3g / path
        st = os.lstat(p)
        assert st.st_ino == e["ino"], path
        assert int.from_bytes(lgetxattr(p, "system.ntfs_attrib_be"), "big") == e["attributes"]
        if "reparse_hex" not in e:
            assert not stat.S_ISLNK(st.st_mode), path
            assert e["attributes"] & REPARSE_POINT == 0, path
            continue
        assert e["attributes"] & REPARSE_POINT, path
        assert lgetxattr(p, "system.ntfs_reparse_data").hex() == e["reparse_hex"], path
        target = os.readlink(p)
        if e["kind"] in ("symlink", "junction"):
            assert target.replace(os.fspath(ntfs3g), "<mnt>", 1) == e["ntfs3g_target"], path
        else:
            assert target == f"unsupported reparse tag 0x{e['tag']:08x}", path


def test_ntfs3g_reads_plain_files_and_streams(fidelity_image: FidelityImage, ntfs3g: Path):
    for path, e in fidelity_image.entries.items():
        if e["kind"] in ("plain", "compressed", "stream-host", "hardlink"):
            assert sha256_file(ntfs3g / path) == (e["size"], e["sha256"]), path
            assert os.stat(ntfs3g / path).st_size == e["size"], path
        if "reparse_hex" not in e:
            for name, s in e.get("streams", {}).items():
                assert sha256_file(f"{ntfs3g / path}:{name}") == (s["size"], s["sha256"]), name


def test_ntfs3g_lists_the_streams(fidelity_image: FidelityImage) -> None:
    """Every named stream and no other (reparse points: the kernel refuses user.* on links)."""
    with ntfs3g_mounted(fidelity_image.path, "ro", "streams_interface=xattr") as mnt:
        for path, e in fidelity_image.entries.items():
            if "reparse_hex" in e:
                continue
            names = {n[5:] for n in os.listxattr(mnt / path) if n.startswith("user.")}
            assert names == set(e.get("streams", {})), path
    long_name = next(iter(fidelity_image.entry("streams/long-name.bin")["streams"]))
    assert len(long_name) == 200 and len(("user." + long_name).encode()) > 255


def test_attributes_as_meant(fidelity_image: FidelityImage) -> None:
    entries = fidelity_image.entries
    for path, e in entries.items():
        a = e["attributes"]
        if e["kind"] == "wof" and not e["data_resident"]:
            assert a & SPARSE, path  # truncated unnamed data, nothing allocated
        if e["kind"] == "compressed":
            assert a & COMPRESSED, path
        assert bool(a & ENCRYPTED) == (e["kind"] == "efs"), path
    assert entries["stubs/cloud-dehydrated.bin"]["attributes"] & (OFFLINE | RECALL_ON_DATA_ACCESS)
    assert entries["stubs/cloud-1-dehydrated.bin"]["attributes"] & OFFLINE
    assert not entries["stubs/cloud-hydrated.bin"]["attributes"] & (OFFLINE | RECALL_ON_DATA_ACCESS)
    assert entries["sparse/both-ends.bin"]["attributes"] & SPARSE
    names = entries["hardlinks/a/first.txt"]["names"]
    assert len({entries[n]["ino"] for n in names}) == 1 and len(names) == 3


def test_ntfs3g_hard_links(fidelity_image: FidelityImage, ntfs3g: Path) -> None:
    e = fidelity_image.entry("hardlinks/a/first.txt")
    stats = [os.stat(ntfs3g / n) for n in e["names"]]
    assert {(s.st_ino, s.st_nlink) for s in stats} == {(e["ino"], 3)}
    assert len({n.split("/")[1] for n in e["names"]}) == 2


def test_efs_on_disk(fidelity_image: FidelityImage) -> None:
    """ntfsinfo: $DATA flagged encrypted with the logical size, an $EFS stream, SI flag."""
    for path in fidelity_image.paths(kind="efs"):
        e = fidelity_image.entry(path)
        out = run("ntfsinfo", "-f", "-v", "-i", str(e["ino"]), fidelity_image.path)
        data = out.split("Dumping attribute $DATA (0x80)")[1].split("Dumping attribute")[0]
        assert "Attribute flags:\t 0x4000" in data, path
        assert f"Data size:\t\t {e['size']} " in data, path
        assert "$LOGGED_UTILITY_STREAM (0x100)" in out and "'$EFS'" in out, path
        assert "ENCRYPTED" in out.split("$STANDARD_INFORMATION")[1].split("Dumping")[0], path


# --- ntfs-3g's ntfscat and wimlib: the WofCompressedData streams ------------------------------


def test_wof_streams_decode_with_wimlib(fidelity_image: FidelityImage) -> None:
    for path in fidelity_image.paths(kind="wof"):
        e = fidelity_image.entry(path)
        stream = ntfscat(fidelity_image.path, e["ino"], WOF_STREAM)
        assert (len(stream), _sha(stream)) == (e["wof_stream_size"], e["wof_stream_sha256"])
        resident = data_residency(fidelity_image.path, e["ino"])
        assert resident == {"": e["data_resident"], WOF_STREAM: e["wof_stream_resident"]}
        if e["expect"] == "eio":
            _check_corrupt(fidelity_image, path, stream)
            continue
        h, memo = hashlib.sha256(), {}
        for chunk in decode_wof_stream(stream, e["size"], e["algorithm"], memo=memo):
            h.update(chunk)
        assert h.hexdigest() == e["sha256"], path
        if e["size"] < 1 << 30:
            content = b"".join(decode_wof_stream(stream, e["size"], e["algorithm"]))
            chunks = split_wof_stream(stream, e["size"], e["chunk_size"])
            assert (
                libfwnt_disagreements(chunks, content, e["algorithm"]) == e["libfwnt_bad_chunks"]
            ), path
    assert any(fidelity_image.entry(p)["wof_stream_resident"] for p in fidelity_image.sources)


def _check_corrupt(fidelity_image: FidelityImage, path: str, stream: bytes) -> None:
    """Chunk ``bad_chunk`` does not decode; the chunks before it are the source's."""
    e = fidelity_image.entry(path)
    source = fidelity_image.entry(fidelity_image.sources[path])
    assert source["sha256"] == e["source_sha256"]
    decoded = decode_wof_stream(stream, e["size"], e["algorithm"])
    good = b"".join(next(decoded) for _ in range(e["bad_chunk"]))
    with pytest.raises((OSError, ValueError)):
        next(decoded)
    assert good == ntfscat(fidelity_image.path, source["ino"])[: len(good)], path
    assert len(good) == e["bad_chunk"] * e["chunk_size"]


def test_stub_streams_and_data_with_ntfscat(fidelity_image: FidelityImage) -> None:
    image = fidelity_image.path
    for path in fidelity_image.paths(kind="stub"):
        e = fidelity_image.entry(path)
        data = ntfscat(image, e["ino"])
        assert len(data) == e["size"], path
        if e["expect"] == "data":
            assert _sha(data) == e["sha256"], path
        else:
            assert data.count(0) == len(data), path  # sparse: nothing stored
        for name, s in e.get("streams", {}).items():
            assert _sha(ntfscat(image, e["ino"], name)) == s["sha256"], (path, name)
    assert fidelity_image.entry("stubs/cloud-dehydrated.bin")["streams"]


# --- pyfsntfs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libfsntfs(fidelity_image: FidelityImage) -> Iterator[pyfsntfs.volume]:
    volume = pyfsntfs.volume()
    volume.open(os.fspath(fidelity_image.path))
    try:
        yield volume
    finally:
        volume.close()


def _entry(volume: pyfsntfs.volume, path: str) -> Any:
    return volume.get_file_entry_by_path("\\" + path.replace("/", "\\"))


def _pyfsntfs_outcome(fe: Any, e: dict[str, Any]) -> str:
    """ "ok", "wrong" or "raises": pyfsntfs reading the whole file (big.bin: its non-zero
    chunks first, a full read only if they read)."""
    h, pos = hashlib.sha256(), 0
    try:
        for at, n in e.get("data_chunks", ()):
            fe.read_buffer_at_offset(n, at)
        while pos < e["size"]:
            part = fe.read_buffer_at_offset(min(16 * MIB, e["size"] - pos), pos)
            if not part:
                break
            h.update(part)
            pos += len(part)
    except OSError:
        return "raises"
    return "ok" if (pos, h.hexdigest()) == (e["size"], e["sha256"]) else "wrong"


def test_pyfsntfs_reads_the_content(
    fidelity_image: FidelityImage, libfsntfs: pyfsntfs.volume
) -> None:
    outcomes = {}
    for path in fidelity_image.readable_files():
        e = fidelity_image.entry(path)
        fe = _entry(libfsntfs, path)
        assert fe.get_size() == e["size"], path
        outcome = _pyfsntfs_outcome(fe, e)
        if outcome != "ok":
            outcomes[path] = outcome
    assert outcomes == PYFSNTFS_KNOWN


def test_pyfsntfs_on_unreadable_files(
    fidelity_image: FidelityImage, libfsntfs: pyfsntfs.volume
) -> None:
    """pyfsntfs is no reference for these: zeros for stubs, ciphertext for EFS."""
    for path in fidelity_image.paths(expect="eio"):
        e = fidelity_image.entry(path)
        fe = _entry(libfsntfs, path)
        assert fe.get_size() == e["size"], path
        if e["kind"] == "wof":
            with pytest.raises(OSError):
                fe.read_buffer(e["size"])
            continue
        data = fe.read_buffer(e["size"]) if e["size"] else b""
        assert len(data) == e["size"], path
        if e["kind"] == "efs":
            assert _sha(data) == e["ciphertext_sha256"], path
        else:
            assert data.count(0) == len(data), path


def test_pyfsntfs_attributes_tags_and_streams(
    fidelity_image: FidelityImage, libfsntfs: pyfsntfs.volume
) -> None:
    for path, e in fidelity_image.entries.items():
        fe = _entry(libfsntfs, path)
        assert fe.file_reference & 0xFFFFFFFFFFFF == e["ino"], path
        directory = DIRECTORY if e["kind"] in ("dir", "junction") else 0
        assert fe.file_attribute_flags | directory == e["attributes"], path
        reparse = [
            fe.get_attribute(i)
            for i in range(fe.number_of_attributes)
            if fe.get_attribute(i).attribute_type == 0xC0
        ]
        assert [a.tag for a in reparse] == ([e["tag"]] if "tag" in e else []), path
        if e["kind"] in ("symlink", "junction"):
            assert (reparse[0].substitute_name, reparse[0].print_name) == (
                e["target"],
                e["print_name"],
            ), path
        streams = {}
        for i in range(fe.number_of_alternate_data_streams):
            s = fe.get_alternate_data_stream(i)
            streams[s.name] = (s.get_size(), _sha(s.read_buffer(s.get_size())))
        want = {n: (s["size"], s["sha256"]) for n, s in e.get("streams", {}).items()}
        if e["kind"] == "wof":
            want[WOF_STREAM] = (e["wof_stream_size"], e["wof_stream_sha256"])
        assert streams == want, path
