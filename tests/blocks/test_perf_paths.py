"""``try_read_at``: the non-blocking read the mount answers in its event loop.

Whatever a source answers there must be exactly what ``read_at`` returns; None (read in a
thread) is always allowed.  These tests hold every source to that, and check that the sources
which can answer from memory (holes, zero extents, cached blocks, the page cache) do.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from tests.blocks.test_chain import flat_zero_flat
from tests.memsource import MemoryLocation, MemorySource
from vcbfs.blocks import local as local_mod
from vcbfs.blocks import pagecache
from vcbfs.blocks.cache import CachedSource
from vcbfs.blocks.local import LocalSource
from vcbfs.blocks.source import ZERO_CHUNK, Buffer, ByteSource, SliceSource, ZeroSource, zeros
from vcbfs.blocks.vmdk.disk import open_disk

MIB = 1 << 20


class InMemory(MemorySource):
    """A memory source that says so: it answers ``try_read_at`` too."""

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        return self.data[offset : offset + n]


def same(source: ByteSource, offset: int, n: int) -> Buffer | None:
    """``try_read_at``'s answer, checked against ``read_at``'s when there is one."""
    got = source.try_read_at(offset, n)
    if got is not None:
        assert bytes(got) == source.read_at(offset, n), (offset, n)
    return got


def test_default_source_never_answers() -> None:
    src = MemorySource(b"abcdef")
    assert src.try_read_at(0, 3) is None
    assert src.try_read_at(6, 3) == b""  # at the end: empty, as read_at
    assert src.try_read_at(100, 3) == b""
    assert src.try_read_at(-1, 3) is None  # read_at raises: left to it
    assert src.try_read_at(0, -1) is None
    assert src.reads == []


def test_zeros_share_one_buffer_up_to_the_fuse_maximum() -> None:
    a, b = zeros(4096), zeros(ZERO_CHUNK)
    assert isinstance(a, memoryview) and bytes(a) == bytes(4096)
    assert isinstance(b, memoryview) and len(b) == ZERO_CHUNK and not any(b)
    big = zeros(ZERO_CHUNK + 1)
    assert isinstance(big, bytes) and big == bytes(ZERO_CHUNK + 1)
    assert zeros(0) == b""


def test_zero_and_slice_sources() -> None:
    z = ZeroSource(3 << 20)
    assert bytes(same(z, 5, 1000) or b"x") == bytes(1000)
    assert same(z, (3 << 20) - 10, 100) == bytes(10)  # clipped at the end
    base = InMemory(bytes(range(256)) * 64)
    s = SliceSource(base, 1000, 5000)
    for off, n in [(0, 10), (4990, 100), (123, 4000)]:
        assert same(s, off, n) is not None
    assert SliceSource(MemorySource(b"x" * 100), 10, 50).try_read_at(0, 10) is None


def test_local_source_answers_from_the_page_cache(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(300_000)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    with LocalSource(p) as src:
        src.read_at(0, len(data))  # in the page cache now (it was just written, too)
        got = same(src, 4096, 200_000)
        if src._nowait:  # a file system with RWF_NOWAIT (ext4, xfs, btrfs, tmpfs)
            assert got is not None
        assert same(src, len(data) - 5, 100) in (None, data[-5:])


def test_local_source_would_block_or_refuses_nowait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"y" * 10_000)
    with LocalSource(p) as src:
        src._nowait = True

        def would_block(*_args: object) -> int:
            raise BlockingIOError(errno.EAGAIN, "not cached")

        monkeypatch.setattr(local_mod.os, "preadv", would_block)
        assert src.try_read_at(0, 100) is None
        assert src._nowait  # try again next time

        def refused(*_args: object) -> int:
            raise OSError(errno.EOPNOTSUPP, "no nowait here")

        monkeypatch.setattr(local_mod.os, "preadv", refused)
        assert src.try_read_at(0, 100) is None
        assert not src._nowait  # never asked again: reads go to threads
        assert src.read_at(0, 100) == b"y" * 100

        def short(_fd: int, bufs: list[bytearray], _off: int, _flags: int) -> int:
            return len(bufs[0]) // 2  # part of the range is cached, the rest is not

        monkeypatch.setattr(local_mod.os, "preadv", short)
        src._nowait = True
        assert src.try_read_at(0, 100) is None


def test_closed_local_source_leaves_the_error_to_read_at(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"z" * 100)
    src = LocalSource(p)
    src.close()
    assert src.try_read_at(0, 10) is None


def test_cached_source_answers_cached_blocks_and_keeps_its_streams() -> None:
    bs = 4096
    data = random.Random(2).randbytes(64 * bs)
    base = MemorySource(data)
    cache = CachedSource(base, block_size=bs, capacity=64 * bs, max_readahead=8 * bs)
    assert cache.try_read_at(0, bs) is None  # cold
    assert cache.read_at(0, bs) == data[:bs]
    # The reads below go through the try path where they can, and to read_at where not, as
    # the mount does; the sequential stream must keep growing its window across both.
    pos, n = bs, bs
    requests_before = cache.requests
    while pos < len(data):
        got = same(cache, pos, n)
        if got is None:
            assert cache.read_at(pos, n) == data[pos : pos + n]
        pos += n
    fetched = cache.requests - requests_before
    assert fetched <= 64 // 8 + 2, fetched  # large readahead fetches, not one per block
    assert same(cache, 10, 3 * bs) is not None  # spans blocks, all cached
    assert bytes(same(cache, 100, 50) or b"") == data[100:150]


def test_virtual_disk_flat_and_zero_extents() -> None:
    files = flat_zero_flat()
    with open_disk(MemoryLocation(files, "d.vmdk")) as disk:
        # MemorySource cannot answer without "I/O": only the zero extent comes back.
        assert disk.try_read_at(0, 100) is None
        assert same(disk, 1024, 2048) == bytes(2048)
        assert disk.try_read_at(1000, 100) is None  # partly flat

    class InMemoryLocation(MemoryLocation):
        def open(self) -> ByteSource:
            return InMemory(self.files[self.name], self.name)

        def sibling(self, name: str) -> MemoryLocation:
            return InMemoryLocation(self.files, name)

    with open_disk(InMemoryLocation(files, "d.vmdk")) as disk:
        for off in range(0, disk.size, 256):
            for n in (1, 300, 1024, disk.size):
                assert same(disk, off, n) is not None


def nowait_works(folder: Path) -> bool:
    """Whether the file system under ``folder`` answers RWF_NOWAIT reads (ext4, xfs, tmpfs)."""
    probe = folder / "nowait-probe"
    probe.write_bytes(b"p" * 4096)
    with LocalSource(probe) as src:
        src.read_at(0, 4096)
        return src.try_read_at(0, 4096) is not None


def answers_like_read_at(disk: ByteSource, seed: int) -> int:
    """Random ranges through ``try_read_at``, each answer checked; how many were answered."""
    rng = random.Random(seed)
    answered = 0
    for _ in range(200):
        off = rng.randrange(disk.size)
        n = min(disk.size - off, rng.choice([1, 512, 4096, 65536, 300_001]))
        answered += same(disk, off, n) is not None
    return answered


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_sparse_vmdk_answers_once_its_grain_tables_are_cached(
    tmp_path: Path, subformat: str
) -> None:
    """A hosted sparse extent maps from cached grain tables without a thread (issue 13): cold,
    it leaves the read to a thread; after one pass, reads come back from memory, identical."""
    from tests.images import run
    from vcbfs.blocks.local import LocalLocation

    data = bytearray(random.Random(3).randbytes(4 << 20))
    data[1 << 20 : 2 << 20] = bytes(1 << 20)  # unallocated grains in the sparse file
    raw = tmp_path / "d.raw"
    raw.write_bytes(data)
    vmdk = tmp_path / "d.vmdk"
    run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", raw, vmdk)
    with open_disk(LocalLocation(vmdk)) as disk:
        assert disk.try_read_at(0, 4096) is None  # no grain table in memory yet
        assert disk.read_at(0, disk.size) == bytes(data)
        answered = answers_like_read_at(disk, 4)
        if nowait_works(tmp_path):
            assert answered == 200


@pytest.mark.parametrize("size", [1, 4096, ZERO_CHUNK])
def test_zero_views_are_readonly_and_unchanged(size: int) -> None:
    z = zeros(size)
    with pytest.raises(TypeError):
        z[0] = 1  # type: ignore[index]
    assert not any(bytes(zeros(ZERO_CHUNK)))


def _mappings_of(path: Path) -> int:
    return Path("/proc/self/maps").read_text().count(str(path))


@pytest.mark.skipif(not pagecache.probe(), reason="no cachestat(2) on this kernel")
def test_large_cached_reads_are_views_of_the_page_cache(tmp_path: Path) -> None:
    """A read of at least MAP_MIN bytes that the page cache holds is a view of a mapping of
    them (the reply then copies once), equal to read_at, unmapped when dropped; a range with
    pages missing is never mapped (the event loop would wait on the disk)."""
    data = random.Random(2).randbytes(4 << 20)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    with LocalSource(p) as src:
        src.read_at(0, len(data))
        got = same(src, 12_345, 1 << 20)
        assert isinstance(got, memoryview) and got.readonly
        assert _mappings_of(p) == 1
        del got
        assert _mappings_of(p) == 0
        small = src.try_read_at(4096, pagecache.MAP_MIN - 1)
        assert small is not None and not isinstance(small, memoryview)  # copied: cheaper

        os.fsync(src._fd)
        os.posix_fadvise(src._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(src._fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead past a read
        src.read_at(0, MIB)
        if not src._mapper.cached(0, MIB) or src._mapper.cached(2 * MIB, MIB):
            pytest.skip("this file system keeps pages other than the ones read")
        assert src._mapper.view(MIB - 65536, MIB) is None  # ends in pages not cached
        assert same(src, MIB - 65536, MIB) is None  # nor does preadv answer: a thread reads
        assert bytes(src._mapper.view(4096, MIB - 4096) or b"") == data[4096:MIB]


def test_page_cache_views_turn_off_where_the_kernel_refuses(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"q" * (1 << 20))
    with LocalSource(p) as src:
        src._mapper.fd = -1  # cachestat fails with EBADF, as on a kernel without it
        assert src._mapper.view(0, 1 << 20) is None
        assert not src._mapper.enabled
        assert same(src, 0, 1 << 20) is not None or not src._nowait  # preadv still answers
