"""Differential tests: vcbfs reads every kind of VMDK exactly as qemu-img does."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images import VMDK_KINDS
from vcbfs.blocks.local import LocalLocation
from vcbfs.blocks.vmdk.disk import open_disk

CHUNK = 8 << 20


def _same_files(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


@pytest.mark.parametrize("kind", VMDK_KINDS)
def test_disk_cat_equals_qemu(kind: str, vmdk_images: dict[str, Path], tmp_path: Path) -> None:
    top = vmdk_images[kind]
    out = tmp_path / "out.raw"
    with out.open("wb") as f:
        subprocess.run(
            [sys.executable, "-m", "vcbfs", "disk", "cat", str(top)], stdout=f, check=True
        )
    assert _same_files(out, top.parent / "ref.raw")


@pytest.mark.parametrize("kind", VMDK_KINDS)
def test_random_ranges_equal_qemu(kind: str, vmdk_images: dict[str, Path]) -> None:
    top = vmdk_images[kind]
    rng = random.Random(kind)
    with open_disk(LocalLocation(top)) as disk, (top.parent / "ref.raw").open("rb") as ref:
        assert disk.size == ref.seek(0, 2)
        for _ in range(200):
            offset = rng.randrange(disk.size + 1000)
            n = rng.choice((1, 511, 512, 4096, 65536, 65537, 300_000))
            ref.seek(offset)
            assert disk.read_at(offset, n) == ref.read(n), (offset, n)


@pytest.mark.parametrize("kind", VMDK_KINDS)
def test_allocation_map_is_sound(kind: str, vmdk_images: dict[str, Path]) -> None:
    """Spans cover the disk in order, and every hole reads as zeros in qemu's reading."""
    top = vmdk_images[kind]
    with open_disk(LocalLocation(top)) as disk, (top.parent / "ref.raw").open("rb") as ref:
        pos = 0
        for span in disk.spans():
            assert span.offset == pos and span.length > 0
            pos = span.end
            if not span.allocated and span.length < (64 << 20):
                ref.seek(span.offset)
                assert ref.read(span.length).count(0) == span.length
        assert pos == disk.size
