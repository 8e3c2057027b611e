"""vcbfs's NTFS reader and ``vcbfs disk`` against the fidelity volume: never wrong bytes.

Every file of the volume either reads back exactly as the manifest says (WOF files of every
algorithm and size, the 4 GiB one with 8-byte chunk tables, hydrated cloud files, unknown tags
over real data) or fails with an EIO-class error naming why (dedup, cloud, HSM and unknown
stubs, WIM-backed WOF, EFS, damaged WOF chunks).  The manifest was written by the builder from
wimlib's decoding and checked against ntfs-3g and libfsntfs (test_fidelityimages.py).
"""

from __future__ import annotations

import errno
import hashlib
import posixpath
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.ntfs.fidelityimages import FidelityImage
from vcbfs.blocks.local import LocalSource
from vcbfs.errors import CorruptError, UnavailableError, VcbfsError
from vcbfs.ntfs.volume import NtfsVolume

#: What the error of each kind of unreadable file must say.
REASONS = {
    "stub": "not on the volume|Deduplication|hierarchical storage|placeholder",
    "wof-wim": "WIM-backed",
    "efs": "EFS-encrypted",
    "wof": "chunk",
}


@pytest.fixture(scope="module")
def vol(fidelity_image: FidelityImage) -> Iterator[NtfsVolume]:
    source = LocalSource(str(fidelity_image.path))
    try:
        yield NtfsVolume(source)
    finally:
        source.close()


def _files(img: FidelityImage) -> list[str]:
    return sorted(
        p for p, e in img.entries.items() if e["kind"] not in ("dir", "symlink", "junction")
    )


def _sha256(vol: NtfsVolume, number: int, stream: str = "") -> str:
    src = vol.open(number, stream)
    h = hashlib.sha256()
    for off in range(0, src.size, 8 << 20):
        h.update(src.read_at(off, 8 << 20))
    return h.hexdigest()


def test_every_file_reads_faithfully_or_fails_naming_why(
    vol: NtfsVolume, fidelity_image: FidelityImage
) -> None:
    wrong = []
    for path in _files(fidelity_image):
        e = fidelity_image.entries[path]
        number = vol.lookup(path)
        st = vol.stat(number)
        assert st.size == e["size"], path  # listed with its true size, readable or not
        try:
            got = ("data", _sha256(vol, number))
        except VcbfsError as exc:
            assert exc.errno == errno.EIO, (path, exc)
            assert isinstance(exc, UnavailableError | CorruptError), (path, exc)
            got = ("eio", str(exc))
        if got[0] != e["expect"] or (got[0] == "data" and got[1] != e["sha256"]):
            wrong.append((path, e["kind"], e["expect"], got))
        elif got[0] == "eio":
            assert any(w in got[1] for w in REASONS[e["kind"]].split("|")), (path, got[1])
    assert wrong == []
    assert len(fidelity_image.paths(kind="wof", expect="data")) >= 40
    assert {fidelity_image.entries[p]["kind"] for p in fidelity_image.paths(expect="eio")} == {
        "stub",
        "wof-wim",
        "efs",
        "wof",
    }


def test_wof_files_read_at_any_offset_and_size(
    vol: NtfsVolume, fidelity_image: FidelityImage
) -> None:
    rng = random.Random(11)
    for wof_path, plain_path in sorted(fidelity_image.sources.items()):
        if fidelity_image.entries[wof_path]["expect"] != "data":
            continue
        plain = vol.open(vol.lookup(plain_path))
        data = plain.read_at(0, plain.size)
        wof = vol.open(vol.lookup(wof_path))
        chunk = fidelity_image.entries[wof_path]["chunk_size"]
        for _ in range(12):
            off = rng.randrange(len(data) + 2)
            n = rng.choice([1, chunk - 1, chunk, chunk + 1, 3 * chunk + 5, 128 << 10])
            assert wof.read_at(off, n) == data[off : off + n], (wof_path, off, n)


def test_the_4_gib_wof_file_reads_around_its_data(
    vol: NtfsVolume, fidelity_image: FidelityImage
) -> None:
    e = fidelity_image.entries[fidelity_image.big_wof]
    assert e["chunk_entry_bytes"] == 8 and e["size"] > 1 << 32
    src = vol.open(vol.lookup(fidelity_image.big_wof))
    assert src.size == e["size"]
    starts = {off for off, _length in e["data_chunks"]}
    for off, length in e["data_chunks"]:
        got = src.read_at(off, length)
        assert len(got) == length and any(got), (off, length)
        end = off + length
        if end not in starts and end < e["size"]:  # zeros follow the data
            assert src.read_at(end, 100) == bytes(100), end


def test_the_raw_wof_stream_and_reparse_data_stay_readable(
    vol: NtfsVolume, fidelity_image: FidelityImage
) -> None:
    for path in fidelity_image.paths(kind="wof", expect="data"):
        e = fidelity_image.entries[path]
        if "wof_stream_sha256" not in e:
            continue  # an empty WOF file has no stream
        number = vol.lookup(path)
        assert _sha256(vol, number, "WofCompressedData") == e["wof_stream_sha256"], path
        assert vol.reparse_data(number) == bytes.fromhex(e["reparse_hex"]), path
        st = vol.stat(number)  # st_blocks counts what the file really holds: its stream
        if not e["wof_stream_resident"]:
            assert st.allocated == -(-e["wof_stream_size"] // 4096) * 4096, path
    for path in fidelity_image.paths(kind="stub"):
        number = vol.lookup(path)
        assert vol.reparse_data(number) == bytes.fromhex(
            fidelity_image.entries[path]["reparse_hex"]
        )


def test_a_stubs_named_streams_still_read(vol: NtfsVolume, fidelity_image: FidelityImage) -> None:
    hosts = [
        p for p in fidelity_image.paths(kind="stub") if fidelity_image.entries[p].get("streams")
    ]
    assert hosts
    for path in hosts:
        number = vol.lookup(path)
        for name, info in fidelity_image.entries[path]["streams"].items():
            assert _sha256(vol, number, name) == info["sha256"], (path, name)


def test_a_damaged_chunk_names_it_and_the_chunks_before_it_read(
    vol: NtfsVolume, fidelity_image: FidelityImage
) -> None:
    damaged = [p for p in fidelity_image.paths(kind="wof", expect="eio")]
    assert len(damaged) >= 3
    for path in damaged:
        e = fidelity_image.entries[path]
        number = vol.lookup(path)
        if "bad-table" in path:  # the whole table is checked when the file opens
            with pytest.raises(CorruptError, match=f"chunk {e['bad_chunk']}") as exc:
                vol.open(number)
            assert f"record {e['ino']}" in str(exc.value)
            continue
        src = vol.open(number)
        with pytest.raises(CorruptError, match=f"chunk {e['bad_chunk']}") as exc:
            src.read_at(0, src.size)
        assert f"record {e['ino']}" in str(exc.value)
        if "bad-chunk" in path:
            good = e["bad_chunk"] * e["chunk_size"]
            source = fidelity_image.sources[path]
            plain = vol.open(vol.lookup(source))
            assert src.read_at(0, good) == plain.read_at(0, good)


# --- vcbfs disk ---------------------------------------------------------------------------------


def _disk(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "vcbfs", "disk", *args],
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_disk_cat_gives_wof_content_and_fails_loudly_on_stubs(
    fidelity_image: FidelityImage,
) -> None:
    image = str(fidelity_image.path)
    for path in (fidelity_image.bench["wof-lzx"], fidelity_image.bench["wof-xpress4k"]):
        done = _disk("cat", image, path)
        assert done.returncode == 0, done.stderr
        assert hashlib.sha256(done.stdout).hexdigest() == fidelity_image.entries[path]["sha256"]
    for path in fidelity_image.paths(expect="eio"):
        done = _disk("cat", image, path)
        err = done.stderr.decode()
        assert done.returncode == 1 and done.stdout == b"", (path, err)
        assert err.startswith(f"vcbfs: {path} ("), err  # names the file, then why
        kind = fidelity_image.entries[path]["kind"]
        assert any(w in err for w in REASONS[kind].split("|")), err


def test_disk_ls_shows_true_sizes_of_wof_files_and_stubs(fidelity_image: FidelityImage) -> None:
    import json

    for folder in ("stubs", "wof/LZX"):
        done = _disk("ls", str(fidelity_image.path), folder, "--json")
        assert done.returncode == 0, done.stderr
        rows = {r["name"]: r for r in json.loads(done.stdout)}
        want = {posixpath.basename(p): e for p, e in fidelity_image.entries.items()
                if posixpath.dirname(p) == folder}  # fmt: skip
        assert set(rows) == set(want)
        for name, row in rows.items():
            assert row["size"] == want[name]["size"], name
            assert row["type"] == ("wof" if want[name]["kind"] == "wof" else row["type"]), name
            if want[name]["kind"] == "stub" and want[name]["expect"] == "eio":
                assert row["type"] != "file" and row["allocated"] == 0, name  # holds nothing
