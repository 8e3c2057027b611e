"""``vcbfs disk ls`` and ``vcbfs disk cat FILE[:STREAM]`` on an NTFS volume inside a VMDK."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images import link_into
from tests.ntfs.ntfsimages import NtfsImage

SECTOR = 512


def vcbfs(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vcbfs", *args], capture_output=True, check=False)


@pytest.fixture(scope="module")
def vmdk(ntfs_image: NtfsImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test volume as partition 1 of an MBR disk: a descriptor over two FLAT extents."""
    d = tmp_path_factory.mktemp("ntfs-disk")
    sectors = ntfs_image.path.stat().st_size // SECTOR
    head = d / "head.bin"
    with head.open("wb") as f:
        f.truncate(2048 * SECTOR)
    table = f"label: dos\nlabel-id: 0x0badcafe\nstart=2048, size={sectors}, type=7\n"
    whole = d / "probe.raw"  # sfdisk needs the whole disk's size to accept the partition
    with whole.open("wb") as f:
        f.truncate((2048 + sectors) * SECTOR)
    subprocess.run(["sfdisk", "-q", str(whole)], input=table.encode(), check=True)
    head.write_bytes(whole.read_bytes()[: 2048 * SECTOR])
    whole.unlink()
    volume = link_into(ntfs_image.path, d, "volume.img").name  # beside its descriptor
    (d / "disk.vmdk").write_text(
        "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n'
        f'RW 2048 FLAT "head.bin" 0\nRW {sectors} FLAT "{volume}" 0\n'
    )
    return d / "disk.vmdk"


def test_ls_root_and_long(vmdk: Path, ntfs_image: NtfsImage) -> None:
    done = vcbfs("disk", "ls", str(vmdk))
    assert done.returncode == 0, done.stderr
    names = done.stdout.decode().splitlines()
    assert "bench/" in names and "unicode/" in names
    assert not any(n.startswith("$") for n in names)
    long = vcbfs("disk", "ls", str(vmdk), "reparse", "-l")
    assert "junction" in long.stdout.decode() and "-> C:\\Windows" in long.stdout.decode()


def test_ls_json_matches_the_manifest(vmdk: Path, ntfs_image: NtfsImage) -> None:
    done = vcbfs("disk", "ls", str(vmdk), "streams", "--partition", "1", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    entries = ntfs_image.entries
    for name, row in rows.items():
        ref = entries[f"streams/{name}"]
        if ref["type"] == "file":
            assert row["size"] == ref["size"]
        streams = {k: v["size"] for k, v in (ref.get("streams") or {}).items()}
        assert row.get("streams", {}) == streams


def test_cat_file_and_stream(vmdk: Path, ntfs_image: NtfsImage) -> None:
    done = vcbfs("disk", "cat", str(vmdk), ntfs_image.big_file)
    assert done.returncode == 0
    ref = ntfs_image.entries[ntfs_image.big_file]
    assert hashlib.sha256(done.stdout).hexdigest() == ref["sha256"]
    stream = vcbfs("disk", "cat", str(vmdk), f"{ntfs_image.streams_file}:large")
    want = ntfs_image.entries[ntfs_image.streams_file]["streams"]["large"]
    assert hashlib.sha256(stream.stdout).hexdigest() == want["sha256"]


def test_cat_missing_file_is_one_line(vmdk: Path) -> None:
    done = vcbfs("disk", "cat", str(vmdk), "no/such/file.txt")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "no 'no'" in err and "Traceback" not in err


def test_bare_volume_needs_no_partition(ntfs_image: NtfsImage) -> None:
    done = vcbfs("disk", "cat", os.fspath(ntfs_image.path), ntfs_image.tiny_files[0])
    assert done.returncode == 0
    assert (
        hashlib.sha256(done.stdout).hexdigest()
        == ntfs_image.entries[ntfs_image.tiny_files[0]]["sha256"]
    )
