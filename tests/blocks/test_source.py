"""The byte-source protocol and the local, slice, zero and memory sources."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.memsource import MemorySource
from vcbfs.blocks.confine import ConfinementError
from vcbfs.blocks.local import LocalLocation, LocalSource
from vcbfs.blocks.source import SliceSource, Span, ZeroSource, coalesce, read_exact
from vcbfs.errors import AccessDeniedError, CorruptError, NotFoundError, OutOfRangeError, ReadError


def test_reads_are_short_only_at_the_end() -> None:
    src = MemorySource(bytes(range(256)) * 4)
    assert src.read_at(0, 10) == bytes(range(10))
    assert src.read_at(1020, 10) == bytes(range(252, 256))
    assert src.read_at(1024, 10) == b""
    assert src.read_at(5000, 10) == b""
    assert src.read_at(3, 0) == b""
    with pytest.raises(OutOfRangeError):
        src.read_at(-1, 4)
    with pytest.raises(OutOfRangeError):
        src.read_at(0, -4)


def test_read_exact_names_the_structure() -> None:
    with pytest.raises(CorruptError, match="grain table is truncated"):
        read_exact(MemorySource(b"abc", "f.vmdk"), 1, 8, "grain table")


def test_coalesce_merges_neighbours_of_one_kind() -> None:
    spans = [Span(0, 5, True), Span(5, 5, True), Span(10, 0, False), Span(10, 2, False)]
    assert list(coalesce(spans)) == [Span(0, 10, True), Span(10, 2, False)]


def test_local_source_reads_and_finds_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    with path.open("wb") as f:
        f.write(b"A" * 8192)
        f.seek(1 << 20)
        f.write(b"B" * 4096)
        f.truncate(3 << 20)
    with LocalSource(path) as src:
        assert src.size == 3 << 20
        assert src.read_at(8190, 4) == b"AA\0\0"
        assert src.read_at((1 << 20) - 2, 4) == b"\0\0BB"
        spans = list(src.spans())
        assert spans[0].allocated and spans[0].offset == 0
        assert Span(spans[0].end, (1 << 20) - spans[0].end, False) == spans[1]
        assert spans[-1].allocated is False and spans[-1].end == 3 << 20
        assert sum(s.length for s in spans) == src.size
        assert list(src.spans(1 << 20, 100)) == [Span(1 << 20, 100, True)]


def test_local_source_parallel_reads(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    (tmp_path / "f").write_bytes(data)
    src = LocalSource(tmp_path / "f")
    bad: list[int] = []

    def reader(seed: int) -> None:
        for i in range(200):
            off = (seed * 7919 + i * 104729) % len(data)
            if src.read_at(off, 4096) != data[off : off + 4096]:
                bad.append(off)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def test_local_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        LocalSource(tmp_path / "missing.vmdk")
    with pytest.raises(ReadError, match="directory"):
        LocalSource(tmp_path)
    locked = tmp_path / "locked"
    locked.write_bytes(b"x")
    locked.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(AccessDeniedError):
            LocalSource(locked)


def test_location_siblings(tmp_path: Path) -> None:
    loc = LocalLocation(tmp_path / "vm" / "disk.vmdk")
    assert loc.sibling("disk-flat.vmdk").name == str(tmp_path / "vm" / "disk-flat.vmdk")
    with pytest.raises(ConfinementError, match=r"'/abs/x\.vmdk', outside the box"):
        loc.sibling("/abs/x.vmdk")


def test_slice_and_zero_sources() -> None:
    base = MemorySource(bytes(range(100)))
    part = SliceSource(base, 10, 20)
    assert part.size == 20
    assert part.read_at(0, 5) == bytes(range(10, 15))
    assert part.read_at(18, 10) == bytes([28, 29])
    assert list(part.spans()) == [Span(0, 20, True)]
    zero = ZeroSource(10)
    assert zero.read_at(5, 10) == bytes(5)
    assert list(zero.spans(2)) == [Span(2, 8, False)]
    with pytest.raises(OutOfRangeError):
        SliceSource(base, -1, 5)
