"""Whole-source copies: into files (sparse, in-kernel where possible), pipes and appends."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.memsource import MemorySource
from vcbfs.blocks.copy import copy_to_fd, is_seekable_file
from vcbfs.blocks.local import LocalSource
from vcbfs.blocks.source import ByteSource, Span
from vcbfs.errors import ReadError

MIB = 1 << 20


class HoleySource(MemorySource):
    """Memory with declared holes, so copies can skip them."""

    def __init__(self, data: bytes, holes: list[tuple[int, int]]):
        super().__init__(data)
        self.holes = holes

    def spans(self, offset: int = 0, length: int | None = None):
        pos = 0
        for start, n in self.holes:
            if start > pos:
                yield Span(pos, start - pos, True)
            yield Span(start, n, False)
            pos = start + n
        if pos < self.size:
            yield Span(pos, self.size - pos, True)


def _data() -> tuple[bytes, list[tuple[int, int]]]:
    data = bytearray(os.urandom(9 * MIB + 333))
    holes = [(2 * MIB, 3 * MIB), (7 * MIB + 5, MIB)]
    for start, n in holes:
        data[start : start + n] = bytes(n)
    return bytes(data), holes


def test_into_a_file_skips_holes(tmp_path: Path) -> None:
    data, holes = _data()
    out = tmp_path / "out"
    seen: list[int] = []
    with out.open("wb") as f:
        assert copy_to_fd(HoleySource(data, holes), f.fileno(), progress=seen.append) == len(data)
        assert f.tell() == len(data)
    assert out.read_bytes() == data
    assert out.stat().st_blocks * 512 < len(data) - 3 * MIB
    assert seen[-1] == len(data) and seen == sorted(seen)


def test_local_flat_data_is_copied_in_the_kernel(tmp_path: Path, monkeypatch) -> None:
    data, _ = _data()
    (tmp_path / "in").write_bytes(data)
    calls = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a) or real(*a))
    with LocalSource(tmp_path / "in") as src, (tmp_path / "out").open("wb") as f:
        copy_to_fd(src, f.fileno())
    assert (tmp_path / "out").read_bytes() == data
    assert calls


def test_into_a_pipe_writes_zeros_in_order() -> None:
    data, holes = _data()
    r, w = os.pipe()
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    assert not is_seekable_file(w)
    copy_to_fd(HoleySource(data, holes), w)
    os.close(w)
    t.join()
    os.close(r)
    assert bytes(got) == data


def test_append_mode_is_not_written_at_offsets(tmp_path: Path) -> None:
    data, holes = _data()
    out = tmp_path / "out"
    out.write_bytes(b"head")
    with out.open("ab") as f:
        assert not is_seekable_file(f.fileno())
        copy_to_fd(HoleySource(data, holes), f.fileno())
    assert out.read_bytes() == b"head" + data


class Failing(MemorySource):
    def _read(self, offset: int, n: int) -> bytes:
        if offset >= 3 * MIB:
            raise ReadError("lost", source=self.name, offset=offset)
        return super()._read(offset, n)


def test_a_read_error_stops_the_copy(tmp_path: Path) -> None:
    src: ByteSource = Failing(bytes(8 * MIB))
    with (tmp_path / "out").open("wb") as f, pytest.raises(ReadError, match="lost"):
        copy_to_fd(src, f.fileno())
