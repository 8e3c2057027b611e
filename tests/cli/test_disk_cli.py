"""``vcbfs disk info`` and ``vcbfs disk cat`` as a user runs them: local files and HTTPS."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.blocks.httpserver import FileServer
from tests.images import qemu_vmdk
from tests.ntfs.fidelityimages import FidelityImage

MIB = 1 << 20


def vcbfs(*args: str, env: dict[str, str] | None = None, stdout=subprocess.PIPE):
    return subprocess.run(
        [sys.executable, "-m", "vcbfs", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A 24 MiB MBR disk (signature 0x1a2b3c4d, a logical partition) as a monolithicSparse VMDK."""
    d = tmp_path_factory.mktemp("cli")
    raw = d / "disk.raw"
    data = bytearray(os.urandom(24 * MIB))
    data[: 2048 * 512] = bytes(2048 * 512)
    raw.write_bytes(data)
    table = (
        "label: dos\nlabel-id: 0x1a2b3c4d\n"
        "start=2048, size=8192, type=7, bootable\n"
        "start=10240, size=30720, type=5\n"
        "start=12288, size=8192, type=83\n"
    )
    subprocess.run(["sfdisk", "-q", str(raw)], input=table.encode(), check=True)
    return qemu_vmdk(raw, d / "disk.vmdk", "monolithicSparse"), raw.read_bytes()


def test_info_json(partitioned: tuple[Path, bytes]) -> None:
    vmdk, raw = partitioned
    done = vcbfs("disk", "info", str(vmdk), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["capacity"] == len(raw) and info["format"] == "monolithicSparse"
    assert info["chain"][0]["extents"][0]["type"] == "SPARSE"
    parts = info["partitions"]
    assert parts["scheme"] == "mbr" and parts["mbr_signature"] == "0x1a2b3c4d"
    assert [(p["number"], p["start"], p["size"]) for p in parts["entries"]] == [
        (1, 2048 * 512, 8192 * 512),
        (5, 12288 * 512, 8192 * 512),
    ]
    assert parts["entries"][0]["bootable"] and parts["entries"][1]["logical"]


def test_info_human(vmdk_images: dict[str, Path]) -> None:
    done = vcbfs("disk", "info", str(vmdk_images["chain-sparse"]))
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "(chain of 3)" in out and "parent s1.vmdk" in out and "partitions (none)" in out


def test_cat_partition(partitioned: tuple[Path, bytes], tmp_path: Path) -> None:
    vmdk, raw = partitioned
    done = vcbfs("disk", "cat", str(vmdk), "--partition", "5")
    assert done.returncode == 0
    assert done.stdout == raw[12288 * 512 : (12288 + 8192) * 512]
    missing = vcbfs("disk", "cat", str(vmdk), "--partition", "3")
    assert missing.returncode == 1
    assert missing.stderr.decode().strip().endswith("no partition 3 (partitions: 1, 5)")


def test_cat_to_a_file_keeps_holes(vmdk_images: dict[str, Path], tmp_path: Path) -> None:
    top = vmdk_images["big-split-sparse"]
    out = tmp_path / "big.raw"
    with out.open("wb") as f:
        assert vcbfs("disk", "cat", str(top), stdout=f).returncode == 0
    st = out.stat()
    assert st.st_size == (top.parent / "ref.raw").stat().st_size
    assert st.st_blocks * 512 < 64 * MIB  # 4 GiB of disk, 4 MiB of data


def test_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.vmdk"
    bad.write_bytes(b"KDMV" + (7).to_bytes(4, "little") + bytes(504))
    done = vcbfs("disk", "info", str(bad))
    assert done.returncode == 1
    assert done.stderr.decode() == f"vcbfs: {bad}: hosted sparse version 7 is not known\n"
    debug = vcbfs("--debug", "disk", "info", str(bad))
    assert "Traceback" in debug.stderr.decode()
    gone = vcbfs("disk", "cat", str(tmp_path / "nothing.vmdk"))
    assert gone.returncode == 1
    assert gone.stderr.decode() == f"vcbfs: {tmp_path / 'nothing.vmdk'}: no such file\n"


def test_module_and_console_entry_points() -> None:
    exe = Path(sys.executable).parent / "vcbfs"
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("vcbfs ")


@pytest.fixture
def datastore(vmdk_images: dict[str, Path], cert: tuple[str, str, str]) -> Iterator[FileServer]:
    """An HTTPS datastore holding the chain and the split images, each file under /folder."""
    files = {}
    for kind in ("chain-sparse", "twoGbMaxExtentSparse", "chain-flat-base"):
        for f in vmdk_images[kind].parent.iterdir():
            if f.name != "ref.raw":
                files[f"/folder/{kind}/{f.name}"] = f.read_bytes()
    with FileServer(files, tls=(cert[0], cert[1])) as srv:
        yield srv


@pytest.mark.parametrize("kind", ["chain-sparse", "twoGbMaxExtentSparse", "chain-flat-base"])
def test_cat_over_https(kind: str, datastore: FileServer, cert, vmdk_images) -> None:
    url = datastore.url(f"/folder/{kind}/disk.vmdk")
    refused = vcbfs("disk", "info", url)
    assert refused.returncode == 1
    assert "TLS certificate verification failed" in refused.stderr.decode()
    cookie = 'vmware_soap_session="52a8-secret"'
    done = vcbfs("disk", "cat", url, "--thumbprint", cert[2], env={"VCBFS_SESSION_COOKIE": cookie})
    assert done.returncode == 0, done.stderr
    assert done.stdout == (vmdk_images[kind].parent / "ref.raw").read_bytes()
    assert all(r.headers.get("Cookie") == cookie for r in datastore.requests)
    # the cache makes few large requests, not one per grain table or grain
    gets = datastore.count("GET")
    assert gets < len(done.stdout) // (256 * 1024)


def test_password_in_url_is_refused(datastore: FileServer) -> None:
    url = datastore.url("/folder/chain-sparse/disk.vmdk").replace("https://", "https://u:pw@")
    done = vcbfs("disk", "info", url)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "VCBFS_PASSWORD" in err and "pw@" not in err


def test_times_past_year_9999_are_shown_not_fatal() -> None:
    # An NTFS time reaches year 30828; `disk ls -l` crashed on one past 9999.
    from vcbfs.cli.disk import _iso

    assert _iso(0) == "1970-01-01 00:00:00"
    last = (0x7FFFFFFFFFFFFFFF - 116444736000000000) * 100  # the largest FILETIME, in ns
    assert _iso(last) == f"{last // 10**9} s after 1970"


def test_options_anywhere_on_the_command_line(
    partitioned: tuple[Path, bytes], fidelity_image: FidelityImage
) -> None:
    # The README writes `disk cat PATH [--partition N] FILE`: FILE after the option used to be
    # "unrecognized arguments" (exit 2).
    path, _data = partitioned
    before = vcbfs("disk", "cat", "--partition", "1", str(path))
    after = vcbfs("disk", "cat", str(path), "--partition", "1", "--debug")
    assert before.returncode == after.returncode == 0 and before.stdout == after.stdout
    image = str(fidelity_image.path)
    plain = fidelity_image.bench["plain"]
    wants = hashlib.sha256(vcbfs("disk", "cat", image, plain).stdout).hexdigest()
    assert wants == fidelity_image.entries[plain]["sha256"]
    listing = vcbfs("disk", "ls", image, "stubs", "-l").stdout
    assert vcbfs("disk", "ls", image, "-l", "stubs").stdout == listing
    assert vcbfs("disk", "ls", "-l", image, "stubs").stdout == listing and b"dedup" in listing
    extra = vcbfs("disk", "ls", image, "stubs", "more")
    assert extra.returncode == 2 and b"unrecognized arguments: more" in extra.stderr
