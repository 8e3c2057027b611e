"""The fidelity volume through a real mount: what a backup agent reads is right or is EIO.

WOF files read as their content at any offset (and again from the page cache), with st_size
and st_blocks as a plain reader expects; stubs, WIM-backed WOF, EFS files and damaged WOF
files stay listed with their true size, give EIO, and the server names each once in its log;
streams too large for an xattr are listed beside their file; nothing is listed as an xattr
that the kernel would refuse; the raw disk in fullvm/ is untouched by any of this.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import random
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fs.test_mount import _foreground, _Served
from tests.ntfs.fidelityimages import FidelityImage
from vcbfs.vm.streams import beside_name


@pytest.fixture(scope="module")
def served(
    fidelity_image: FidelityImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, _Served]]:
    mnt = tmp_path_factory.mktemp("fidelity") / "mnt"
    with _foreground(fidelity_image.path, mnt) as server:
        yield mnt / "digits/1", server


@pytest.fixture(scope="module")
def root(served: tuple[Path, _Served]) -> Path:
    return served[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(img: FidelityImage) -> list[str]:
    skip = {"dir", "symlink", "junction"}
    return sorted(p for p, e in img.entries.items() if e["kind"] not in skip)


def test_every_file_is_listed_with_its_true_size(root: Path, fidelity_image: FidelityImage) -> None:
    for path in _files(fidelity_image):
        st = os.lstat(root / path)
        assert stat.S_ISREG(st.st_mode), path
        assert st.st_size == fidelity_image.entries[path]["size"], path
        assert os.path.basename(path) in os.listdir((root / path).parent), path


def test_readable_files_read_exactly(root: Path, fidelity_image: FidelityImage) -> None:
    wrong = [
        p
        for p in fidelity_image.readable_files()
        if p != fidelity_image.big_wof and _sha256(root / p) != fidelity_image.entries[p]["sha256"]
    ]
    assert wrong == []


def test_unreadable_files_give_eio_and_are_logged_once(
    root: Path, fidelity_image: FidelityImage
) -> None:
    eio = fidelity_image.paths(expect="eio")
    assert len(eio) >= 10
    for path in eio:
        for _ in range(2):  # the second time too: nothing was cached as zeros
            with pytest.raises(OSError) as exc:
                _sha256(root / path)
            assert exc.value.errno == errno.EIO, path


def test_the_log_names_each_unreadable_file_once(
    served: tuple[Path, _Served], fidelity_image: FidelityImage
) -> None:
    # The damaged WOF files open and fail on read: the log names the chunk each time.
    root, server = served
    for path in fidelity_image.paths(expect="eio"):
        for _ in range(3):
            with pytest.raises(OSError):
                _sha256(root / path)
    log = _drain(server)
    for path in fidelity_image.paths(expect="eio"):
        kind = fidelity_image.entries[path]["kind"]
        lines = [line for line in log.splitlines() if f"digits/1/{path}" in line]
        if kind == "wof":
            assert f"chunk {fidelity_image.entries[path]['bad_chunk']}" in log, path
        else:
            assert len(lines) == 1, (path, lines)
            assert "cannot be read" in lines[0], lines


def _drain(server: _Served) -> str:
    """What the running server has written to its stderr so far."""
    assert server.process.stderr is not None
    fd = server.process.stderr.fileno()
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")


def test_wof_files_read_at_any_offset_and_again_from_the_page_cache(
    root: Path, fidelity_image: FidelityImage
) -> None:
    rng = random.Random(5)
    for wof, plain in sorted(fidelity_image.sources.items()):
        e = fidelity_image.entries[wof]
        if e["expect"] != "data" or wof == fidelity_image.big_wof:
            continue
        data = (root / plain).read_bytes()
        with open(root / wof, "rb", buffering=0) as f:
            for _ in range(8):
                off = rng.randrange(len(data) + 1)
                n = rng.choice([1, 4095, 4097, 32769, 200_000])
                assert os.pread(f.fileno(), n, off) == data[off : off + n], (wof, off, n)
        assert (root / wof).read_bytes() == data  # whole, twice: the page cache holds it
        assert (root / wof).read_bytes() == data


def test_the_4_gib_wof_file(root: Path, fidelity_image: FidelityImage) -> None:
    e = fidelity_image.entries[fidelity_image.big_wof]
    path = root / fidelity_image.big_wof
    assert os.stat(path).st_size == e["size"]
    with open(path, "rb", buffering=0) as f:
        for off, length in e["data_chunks"]:
            got = os.pread(f.fileno(), length, off)
            assert len(got) == length and any(got), off


def test_st_blocks_counts_what_a_wof_file_holds(root: Path, fidelity_image: FidelityImage) -> None:
    for path in fidelity_image.paths(kind="wof", expect="data"):
        e = fidelity_image.entries[path]
        if "wof_stream_size" in e and not e["wof_stream_resident"]:
            blocks = os.stat(root / path).st_blocks * 512
            assert blocks == -(-e["wof_stream_size"] // 4096) * 4096, path


def test_xattrs_of_wof_files_stubs_and_links(root: Path, fidelity_image: FidelityImage) -> None:
    for path in fidelity_image.paths(kind="wof", expect="data"):
        names = os.listxattr(root / path)
        assert "user.WofCompressedData" not in names and "user.ntfs_reparse_data" not in names
        assert "user.ntfs_attrib_be" in names
    for path in fidelity_image.paths(kind="stub"):
        e = fidelity_image.entries[path]
        raw = os.getxattr(root / path, "user.ntfs_reparse_data")
        assert raw == bytes.fromhex(e["reparse_hex"]), path  # the stub can be put back
    for kind in ("symlink", "junction"):
        for path in fidelity_image.paths(kind=kind):
            p = root / path
            assert os.path.islink(p)
            names = os.listxattr(p, follow_symlinks=False)
            assert names and all(n.startswith("trusted.ntfs_") for n in names), names
            for n in names:
                assert os.getxattr(p, n, follow_symlinks=False) is not None


def test_large_streams_are_listed_and_tar_takes_them(
    root: Path, fidelity_image: FidelityImage, tmp_path: Path
) -> None:
    hosts = {p: e["streams"] for p, e in fidelity_image.entries.items() if e.get("streams")}
    big = {
        posixpath.join(posixpath.dirname(p), beside_name(posixpath.basename(p), name)): info
        for p, streams in hosts.items()
        for name, info in streams.items()
        if info["size"] > 65536 or len(f"user.{name}".encode()) > 255
    }
    for path in big:  # every name an agent can create again (NAME_MAX)
        assert len(posixpath.basename(path).encode()) <= 255, path
    cut = [p for p in big if p.rsplit("~", 1)[-1].isalnum() and ":" in p and "~" in p]
    assert len(cut) == 1  # the stream with a 200-character name: listed under a short name
    full = os.getxattr(root / cut[0], "user.ntfs_stream_name").decode()
    assert full.startswith("long-name.bin:") and len(full.encode()) > 255
    assert any(info["size"] == 100 * 1024 for info in big.values())
    assert not any(name.endswith(":stream-65536") for name in big)  # exactly 64 KiB: an xattr
    archive = tmp_path / "streams.tar"
    # A plain tar of the directory (no --xattrs): what any agent does by default.
    subprocess.run(["tar", "-cf", archive, "-C", root, "streams"], check=True)
    with tarfile.open(archive) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        for path, info in big.items():
            if not path.startswith("streams/"):
                continue
            member = tar.extractfile(members[path])
            assert member is not None, path
            assert hashlib.sha256(member.read()).hexdigest() == info["sha256"], path
    for path, info in big.items():
        assert _sha256(root / path) == info["sha256"], path
    catalog = (root.parent.parent / "fullvm/catalog").read_text()
    assert f"volume1.streams_beside_files = {len(big)}\n" in catalog


def test_fullvm_holds_the_disk_untouched(
    served: tuple[Path, _Served], fidelity_image: FidelityImage
) -> None:
    flat = served[0].parent.parent / "fullvm/volume-flat.vmdk"
    done = subprocess.run(["cmp", flat, fidelity_image.path], capture_output=True, check=False)
    assert done.returncode == 0, done.stdout
