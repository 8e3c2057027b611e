"""Test disk images built with the reference tools (qemu-img, qemu-io, sfdisk), once per run.

Images are cached outside the repository under ``$VCBFS_TEST_CACHE`` (default
``~/.cache/vcbfs-tests``) in a folder named after a hash of this file, so changing a recipe
rebuilds, and a second run reuses them.  Each image has a reference raw produced by
``qemu-img convert -O raw``: the independent answer our reader must match byte for byte.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.blocks import vmdkgen

__all__ = [
    "VMDK_KINDS",
    "build_once",
    "build_vmdk_images",
    "cache_dir",
    "qemu_raw",
    "qemu_vmdk",
    "run",
]

MIB = 1 << 20
BASE_SIZE = 40 * MIB + 7 * 512  # not a multiple of the 64 KiB grain: the last grain is partial
BIG_SIZE = 4 * 1024 * MIB + 512 * 1024  # past two 2 GiB extents, mostly holes

VMDK_KINDS = (
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
    "mixed-extents",
    "chain-sparse",
    "chain-flat-base",
    "big-split-sparse",
    "big-split-flat",
    "esx-cowd-chain",
    "esx-sesparse",
)


def run(*cmd: str | os.PathLike[str], cwd: Path | None = None) -> str:
    """Run a tool; raise with its stderr on failure."""
    done = subprocess.run(
        [os.fspath(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def cache_dir(name: str) -> Path:
    """A cache folder for one builder, keyed by this file's hash."""
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("VCBFS_TEST_CACHE", Path.home() / ".cache" / "vcbfs-tests"))
    return root / f"{name}-{key}"


def build_once(root: Path, build: Callable[[Path], object]) -> bool:
    """Make ``root`` with ``build(work)`` unless it is complete already; True if it built.

    ``build`` fills a sibling ``.building`` folder, which is renamed into place and marked
    complete only when it returns: an interrupted build leaves nothing that looks done.
    Concurrent callers (pytest-xdist, a benchmark beside the suite) wait on a lock file.
    """
    if (root / ".complete").exists():
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return False
        work = root.with_name(root.name + ".building")
        for old in (root, work):
            if old.exists():
                shutil.rmtree(old)
        work.mkdir()
        build(work)
        work.rename(root)
        (root / ".complete").touch()
        return True


def link_into(src: Path, folder: Path, name: str) -> Path:
    """``src`` as ``folder/name``: a hard link (a copy across file systems), so that a
    descriptor can name it beside itself, as vcbfs's confinement requires."""
    dest = folder / name
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
    return dest


def qemu_vmdk(raw: Path, out: Path, subformat: str) -> Path:
    """``raw`` converted by qemu-img into a VMDK of ``subformat`` at ``out``."""
    run("qemu-img", "convert", "-O", "vmdk", "-o", f"subformat={subformat}", raw, out)
    return out


def qemu_raw(image: Path, out: Path) -> Path:
    run("qemu-img", "convert", "-O", "raw", image, out)
    return out


def _random_disk(path: Path, size: int, seed: int) -> None:
    """Random data with holes: zero runs both grain-aligned and not, and a zero tail."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    for start, length in ((5 * MIB, 3 * MIB), (20 * MIB + 4096, 100_000), (33 * MIB, 64 * 1024)):
        data[start : start + length] = bytes(length)
    data[size - 300_000 :] = bytes(300_000)
    path.write_bytes(data)


def _write_descriptor(path: Path, create_type: str, extents: list[str], cid: str = "1234abcd"):
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        'encoding="UTF-8"',
        f"CID={cid}",
        "parentCID=ffffffff",
        f'createType="{create_type}"',
        "",
        "# Extent description",
        *extents,
        "",
        "# The Disk Data Base",
        "#DDB",
        "",
        'ddb.adapterType = "lsilogic"',
        'ddb.virtualHWVersion = "13"',
    ]
    path.write_text("\n".join(lines) + "\n")


def build_vmdk_images(root: Path) -> dict[str, Path]:
    """Every kind of VMDK in VMDK_KINDS, each in its own folder; returns kind -> top file.

    Each folder also holds ``ref.raw``: qemu's reading of the image.
    """
    done = root / ".complete"
    tops = {kind: root / kind / "disk.vmdk" for kind in VMDK_KINDS}
    if done.exists():
        return tops
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    base = root / "base.raw"
    _random_disk(base, BASE_SIZE, seed=1)

    for kind in (
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ):
        (root / kind).mkdir()
        qemu_vmdk(base, tops[kind], kind)

    # ESXi's own layout: a "vmfs" descriptor over a flat file with a name holding spaces.
    d = root / "vmfs"
    d.mkdir()
    shutil.copyfile(base, d / "my disk-flat.vmdk")
    _write_descriptor(tops["vmfs"], "vmfs", [f'RW {BASE_SIZE // 512} VMFS "my disk-flat.vmdk"'])

    # A hand-made descriptor mixing a FLAT extent at an offset with a sparse one.  (qemu 7.2
    # misreads ZERO extents, so they are tested against a hand-made expectation instead.)
    d = root / "mixed-extents"
    d.mkdir()
    a = 8 * MIB
    blob = base.read_bytes()
    (d / "part-a.bin").write_bytes(b"\xee" * 1024 + blob[:a])  # data starts 2 sectors in
    (d / "part-s.raw").write_bytes(blob[a:])
    qemu_vmdk(d / "part-s.raw", d / "part-s.vmdk", "monolithicSparse")
    (d / "part-s.raw").unlink()
    _write_descriptor(
        tops["mixed-extents"],
        "monolithicFlat",
        [
            f'RW {a // 512} FLAT "part-a.bin" 2',
            f'RW {(BASE_SIZE - a) // 512} SPARSE "part-s.vmdk"',
        ],
    )

    # Hosted snapshot chains (what Workstation and qemu make): base <- s1 <- disk.
    for kind, base_fmt in (
        ("chain-sparse", "monolithicSparse"),
        ("chain-flat-base", "monolithicFlat"),
    ):
        d = root / kind
        d.mkdir()
        qemu_vmdk(base, d / "base.vmdk", base_fmt)
        run(
            "qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", d / "s1.vmdk"
        )
        run(
            "qemu-io",
            "-c",
            "write -P 0xab 1M 3M",
            "-c",
            "write -P 0x5a 6000k 8k",
            "-c",
            f"write -P 0x77 {BASE_SIZE - 512 * 3} 1536",
            d / "s1.vmdk",
        )
        run("qemu-img", "create", "-q", "-f", "vmdk", "-b", "s1.vmdk", "-F", "vmdk", tops[kind])
        run(
            "qemu-io",
            "-c",
            "write -P 0xcd 2M 64k",
            "-c",
            "write -z 30M 1M",
            "-c",
            "write -P 0x11 5M 2M",
            tops[kind],
        )

    # ESXi snapshot deltas over the "vmfs" base: two COWD redo logs, and one SEsparse delta.
    # No tool but ESXi writes them; tests/blocks/vmdkgen.py does, checked against qemu.
    rng = random.Random(3)

    def changes(count: int, grain: int = 4096) -> dict[int, bytes]:
        out = {}
        for _ in range(count):
            at = rng.randrange(0, BASE_SIZE - 256 * 1024) // grain * grain
            out[at] = rng.randbytes(grain * rng.choice((1, 2, 3)))
        out[0] = rng.randbytes(grain)
        return out

    for kind in ("esx-cowd-chain", "esx-sesparse"):
        d = root / kind
        d.mkdir()
        shutil.copyfile(root / "vmfs" / "my disk-flat.vmdk", d / "my disk-flat.vmdk")
        shutil.copyfile(tops["vmfs"], d / "my disk.vmdk")
    d = root / "esx-cowd-chain"
    first = vmdkgen.write_cowd_delta(
        d / "my disk.vmdk", d, "my disk-000001", changes(60), grain_sectors=8, seed=4
    )
    second = vmdkgen.write_cowd_delta(
        first, d, "my disk-000002", changes(30, 65536), grain_sectors=128
    )
    second.rename(tops["esx-cowd-chain"])
    d = root / "esx-sesparse"
    top, _ = vmdkgen.write_sesparse_delta(
        d / "my disk.vmdk",
        d,
        "my disk-000001",
        changes(80),
        zeroed=[5, 6, 7],
        unmapped=[100],
        seed=5,
    )
    top.rename(tops["esx-sesparse"])

    # Past 2 GiB: several extent files, mostly holes (sparse on the host too).
    big = root / "big.raw"
    with big.open("wb") as f:
        f.truncate(BIG_SIZE)
        rng = random.Random(2)
        for at in (0, 2 * 1024 * MIB - 4096, 3 * 1024 * MIB + 12345 * 512, BIG_SIZE - MIB):
            f.seek(at)
            f.write(rng.randbytes(MIB))
    for kind, sub in (
        ("big-split-sparse", "twoGbMaxExtentSparse"),
        ("big-split-flat", "twoGbMaxExtentFlat"),
    ):
        (root / kind).mkdir()
        qemu_vmdk(big, tops[kind], sub)
    big.unlink()

    for top in tops.values():
        qemu_raw(top, top.parent / "ref.raw")
    done.touch()
    return tops
