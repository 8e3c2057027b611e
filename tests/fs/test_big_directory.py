"""A 100,000-entry directory lists completely through a real mount, within the memory budget.

The volume is made by mkntfs and filled through ntfs-3g (empty files, so the build is mostly
directory index work), once, and cached outside the repository under a name keyed by this
file's hash.  The server runs with a 64 MiB budget; its peak RSS (``VmHWM``) after the listing
must stay within its RSS once mounted + the budget + 300 MiB.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import cache_dir, run
from tests.ntfs.ntfsimages import ntfs3g_mounted

MIB = 1 << 20
ENTRIES = 100_000
BUDGET = 64 * MIB
SLACK = 300 * MIB
VOLUME_SIZE = 384 * MIB


def entry_name(i: int) -> str:
    # a mix of lengths and a non-ASCII character, so index nodes are not all alike
    return f"entry-{i:06d}" + ("-é" * (i % 7)) + ".dat"


def _key() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def build_big_directory() -> Path:
    """The volume image with ``big/`` holding ENTRIES empty files (built once, cached)."""
    root = cache_dir("x").parent / f"bigdir-{_key()}"
    image = root / "volume.img"
    if image.exists():
        return image
    work = root.with_name(root.name + f".build-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tmp = work / "volume.img"
    with tmp.open("wb") as f:
        f.truncate(VOLUME_SIZE)
    run("mkntfs", "-F", "-Q", "-q", "-c", "4096", "-L", "BIGDIR", tmp)
    with ntfs3g_mounted(tmp, "big_writes") as mnt:
        big = mnt / "big"
        big.mkdir()
        fd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(ENTRIES):
                os.close(os.open(entry_name(i), os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
    os.replace(work, root) if not root.exists() else shutil.rmtree(work)
    return image


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


@contextlib.contextmanager
def _served(image: Path, mnt: Path, *options: str) -> Iterator[subprocess.Popen[str]]:
    mnt.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "vcbfs", "mount", "-f", *options, str(image), str(mnt)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the mount never came up"
            time.sleep(0.05)
        yield proc
    finally:
        if os.path.ismount(mnt):
            subprocess.run([sys.executable, "-m", "vcbfs", "umount", str(mnt)], check=False)
        try:
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def big_volume() -> Path:
    return build_big_directory()


def test_a_100000_entry_directory_lists_within_the_budget(big_volume: Path, tmp_path: Path):
    mnt = tmp_path / "m"
    with _served(big_volume, mnt, "--memory-budget", f"{BUDGET // MIB}M") as server:
        root = mnt / "digits/1"
        assert os.listdir(root) == ["big"]
        baseline = _status(server.pid)["VmRSS"]
        names = os.listdir(root / "big")
        assert len(names) == ENTRIES
        assert sorted(names) == sorted(entry_name(i) for i in range(ENTRIES))
        # listed with attributes (ls -l, a backup's walk), and looked up by name
        with os.scandir(root / "big") as it:
            sizes = {e.name: e.stat(follow_symlinks=False).st_size for e in it}
        assert len(sizes) == ENTRIES and not any(sizes.values())
        for i in random.Random(3).sample(range(ENTRIES), 200):
            assert (root / "big" / entry_name(i)).stat().st_size == 0
        peak = _status(server.pid)["VmHWM"]
    print(
        f"\n100,000 entries: server RSS mounted {baseline / MIB:.0f} MiB, peak {peak / MIB:.0f}"
        f" MiB (+{(peak - baseline) / MIB:.0f} MiB) with a {BUDGET // MIB} MiB budget"
    )
    assert peak <= baseline + BUDGET + SLACK
