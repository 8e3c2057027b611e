"""Hosted sparse and streamOptimized extents: damaged files give typed errors, never crashes."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.images import qemu_vmdk
from tests.memsource import MemoryLocation, MemorySource
from vcbfs.blocks.vmdk.disk import open_disk
from vcbfs.blocks.vmdk.sparse import SparseExtent, read_sparse_header
from vcbfs.errors import CorruptError, UnsupportedError, VcbfsError

SIZE = 2 << 20


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A 2 MiB disk, half written, as monolithicSparse and streamOptimized; and its raw."""
    d = tmp_path_factory.mktemp("sparse")
    raw = bytearray(SIZE)
    rng = random.Random(5)
    for at in range(0, SIZE, 192 * 1024):
        raw[at : at + 70_000] = rng.randbytes(70_000)
    (d / "r.raw").write_bytes(raw)
    out = {"raw": bytes(raw)}
    for kind in ("monolithicSparse", "streamOptimized"):
        qemu_vmdk(d / "r.raw", d / f"{kind}.vmdk", kind)
        out[kind] = (d / f"{kind}.vmdk").read_bytes()
    return out


def _read_all(blob: bytes) -> bytes:
    with open_disk(MemoryLocation({"d.vmdk": blob}, "d.vmdk")) as disk:
        return disk.read_at(0, disk.size)


@pytest.mark.parametrize("kind", ["monolithicSparse", "streamOptimized"])
def test_reads_back(small: dict[str, bytes], kind: str) -> None:
    assert _read_all(small[kind]) == small["raw"]


def test_header_facts(small: dict[str, bytes]) -> None:
    h = read_sparse_header(MemorySource(small["streamOptimized"]))
    assert h.compressed and h.markers and h.capacity == SIZE // 512 and h.grain_sectors == 128


def _patch(blob: bytes, offset: int, value: bytes) -> bytes:
    return blob[:offset] + value + blob[offset + len(value) :]


@pytest.mark.parametrize(
    ("offset", "value", "error", "why"),
    [
        (0, b"XXXX", CorruptError, None),  # no magic: read as a raw image, not an error
        (4, struct.pack("<I", 9), UnsupportedError, "version 9"),
        (20, struct.pack("<Q", 3), CorruptError, "power of two"),
        (12, struct.pack("<Q", 1 << 60), CorruptError, "absurd"),
        (44, struct.pack("<I", 0), CorruptError, "grain table is out of range"),
        (56, struct.pack("<Q", 1 << 40), CorruptError, "outside the file"),
        (36, struct.pack("<Q", 1 << 30), CorruptError, "too large"),
    ],
)
def test_corrupt_headers(small: dict[str, bytes], offset: int, value: bytes, error, why) -> None:
    blob = _patch(small["monolithicSparse"], offset, value)
    if why is None:
        assert len(_read_all(blob)) == len(blob)  # just bytes now: a raw image
        return
    with pytest.raises(error, match=why):
        _read_all(blob)


def test_grain_pointing_outside_the_file(small: dict[str, bytes]) -> None:
    blob = small["monolithicSparse"]
    gd = struct.unpack_from("<Q", blob, 56)[0] * 512
    gt = struct.unpack_from("<I", blob, gd)[0] * 512
    blob = _patch(blob, gt, struct.pack("<I", 0x7FFFFFFF))
    with pytest.raises(CorruptError, match="grain 0 points outside the file"):
        _read_all(blob)


def test_redundant_directory_heals_a_bad_primary(small: dict[str, bytes]) -> None:
    blob = small["monolithicSparse"]
    gd = struct.unpack_from("<Q", blob, 56)[0] * 512
    blob = _patch(blob, gd, struct.pack("<I", 0x7FFFFFF0))  # primary GT 0 now out of the file
    assert _read_all(blob) == small["raw"]


def test_stream_grain_damage(small: dict[str, bytes]) -> None:
    blob = small["streamOptimized"]
    src = MemorySource(blob)
    ext = SparseExtent(src, SIZE)
    _kind, loc = ext._grain(0)
    damaged = _patch(blob, loc + 12, b"\xff" * 16)  # the deflate stream of grain 0
    with pytest.raises(CorruptError, match="does not inflate"):
        _read_all(damaged)
    wrong_lba = _patch(blob, loc, struct.pack("<Q", 77))
    with pytest.raises(CorruptError, match="marker says LBA 77"):
        _read_all(wrong_lba)


def test_stream_header_in_footer(small: dict[str, bytes]) -> None:
    """VMware's streams put GD_AT_END in the first header and the real one in the footer."""
    blob = small["streamOptimized"]  # qemu writes no footer: add one as VMware does
    footer_marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\0")
    footer = blob[:512]
    eos = bytes(512)
    at_end = _patch(blob, 56, b"\xff" * 8) + footer_marker + footer + eos
    assert _read_all(at_end) == small["raw"]
    with pytest.raises(CorruptError, match="footer"):
        _read_all(at_end[:-1536] + bytes(1536))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
@pytest.mark.parametrize("kind", ["monolithicSparse", "streamOptimized"])
def test_fuzz_metadata_only_typed_errors(small: dict[str, bytes], kind: str, data) -> None:
    blob = bytearray(small[kind])
    # Aim at metadata: the header, the directory and tables after it, and the footer.
    regions = [(0, 4096), (len(blob) - 2048, len(blob))]
    h = read_sparse_header(MemorySource(bytes(blob)))
    regions.append((h.gd_offset * 512, h.gd_offset * 512 + 4096))
    for _ in range(data.draw(st.integers(1, 8))):
        lo, hi = regions[data.draw(st.integers(0, len(regions) - 1))]
        at = data.draw(st.integers(lo, min(hi, len(blob)) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    try:
        out = _read_all(bytes(blob))
    except VcbfsError:
        return
    assert len(out) <= 1 << 40


def test_grain_directories_are_held_against_the_memory_budget(small: dict[str, bytes]) -> None:
    import gc

    from vcbfs.blocks.budget import BUDGET

    gc.collect()
    with BUDGET.lock:
        BUDGET._evict()  # takes off the holds of extents already collected
    before = BUDGET.held
    ext = SparseExtent(MemorySource(small["monolithicSparse"]), SIZE)
    directories = len(ext._gd) * 4 + (len(ext._rgd) * 4 if ext._rgd is not None else 0)
    assert directories > 0 and BUDGET.held == before + directories
    del ext
    gc.collect()
    with BUDGET.lock:
        BUDGET._evict()  # the next operation takes a finalized hold off
    assert BUDGET.held == before
