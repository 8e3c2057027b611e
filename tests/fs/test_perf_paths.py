"""The mount's fast read path: NTFS streams and ``Operations.read`` answering without a thread.

NTFS streams answer ``try_read_at`` from holes, uninitialized tails, inflated compression units
and whatever the volume below has at hand.  The volume here is the reference image of tests/ntfs
behind a source that either has everything at hand or nothing, so both branches are exercised
whatever the page cache holds.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator
from typing import Any

import pyfuse3
import pytest

from tests.ntfs.ntfsimages import NtfsImage
from vcbfs.blocks.local import LocalSource
from vcbfs.blocks.source import Buffer, ByteSource
from vcbfs.fs.operations import Operations
from vcbfs.fs.tree import Attr
from vcbfs.ntfs.volume import NtfsVolume

MIB = 1 << 20


class AtHand(ByteSource):
    """A source that claims to have everything in memory (its try path is its read path)."""

    def __init__(self, base: ByteSource, at_hand: bool):
        self.base, self.at_hand = base, at_hand
        self.name, self.size = base.name, base.size

    def _read(self, offset: int, n: int) -> bytes:
        return self.base.read_at(offset, n)

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        return self.base.read_at(offset, n) if self.at_hand else None


@pytest.fixture(scope="module", params=[True, False], ids=["at-hand", "never"])
def volume(request: pytest.FixtureRequest, ntfs_image: NtfsImage) -> Iterator[NtfsVolume]:
    src = LocalSource(ntfs_image.path)
    yield NtfsVolume(AtHand(src, request.param))
    src.close()


def ranges(size: int, cs: int) -> list[tuple[int, int]]:
    out = [(0, 1), (0, 4096), (0, MIB), (size - 1, 10), (max(0, size - 5000), 4096)]
    out += [(size // 2, 3 * cs + 17), (cs - 1, 2), (max(0, size - MIB), 2 * MIB)]
    return [(o, n) for o, n in out if o >= 0]


def check(src: ByteSource, offset: int, n: int) -> Buffer | None:
    got = src.try_read_at(offset, n)
    if got is not None:
        assert bytes(got) == src.read_at(offset, n), (src.name, offset, n)
    return got


@pytest.mark.parametrize(
    "attr",
    [
        "big_file",
        "sparse_file",
        "sparse_comb",
        "sparse_empty",
        "compressed_text",
        "compressed_mixed",
        "compressed_sparse",
        "compressed_small",
        "symlink_target_file",
    ],
)
def test_try_read_matches_read(volume: NtfsVolume, ntfs_image: NtfsImage, attr: str) -> None:
    path = getattr(ntfs_image, attr)
    src = volume.open(volume.lookup(path))
    at_hand = isinstance(volume.source, AtHand) and volume.source.at_hand  # type: ignore[attr-defined]
    for offset, n in ranges(src.size, ntfs_image.cluster_size):
        got = check(src, offset, n)
        if at_hand and not getattr(src, "unit", 0):  # compressed: once its units are inflated
            assert got is not None, (path, offset, n)
        if got is None:  # the mount would now read in a thread, inflating units on the way
            src.read_at(offset, n)
            check(src, offset, n)


def test_holes_need_no_volume(volume: NtfsVolume, ntfs_image: NtfsImage) -> None:
    """Inside sparse/far.bin's hole and all of all-hole.bin, zeros come without any read."""
    far = volume.open(volume.lookup(ntfs_image.sparse_file))
    got = check(far, 1 << 30, MIB)
    assert got is not None and not any(got)
    empty = volume.open(volume.lookup(ntfs_image.sparse_empty))
    got = check(empty, 0, empty.size)
    assert got is not None and len(got) == empty.size and not any(got)


# ---------------------------------------------------------------------------------------------
# Operations.read: the event loop answers what is at hand, a thread reads the rest


class OneFile:
    """The least of a tree for ``Operations``: one file, inode 5."""

    def __init__(self, source: ByteSource):
        self.source = source
        self.held: list[object] = []

    def open(self, ino: int) -> ByteSource:
        if ino != 5:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.source

    def try_open(self, ino: int) -> ByteSource | None:
        return None  # opening goes through a worker thread, as for a record not parsed yet

    def hold(self, ino: int) -> object:
        self.held.append(ino)
        return ino

    def unhold(self, token: object) -> None:
        self.held.remove(token)


class Counting(ByteSource):
    def __init__(self, data: bytes, at_hand: bool):
        self.data, self.at_hand = data, at_hand
        self.name, self.size = "<counting>", len(data)
        self.tries = self.reads = 0

    def _read(self, offset: int, n: int) -> bytes:
        self.reads += 1
        return self.data[offset : offset + n]

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        self.tries += 1
        return memoryview(self.data)[offset : offset + n] if self.at_hand else None


@pytest.mark.parametrize("at_hand", [True, False])
async def test_operations_read_inline_or_in_a_thread(at_hand: bool) -> None:
    data = bytes(range(256)) * 1000
    src = Counting(data, at_hand)
    tree: Any = OneFile(src)
    ops = Operations(tree)
    info = await ops.open(5, 0, None)
    for off, size in [(0, 100), (1000, 4096), (len(data) - 10, 4096), (len(data), 10)]:
        got = await ops.read(info.fh, off, size)
        assert bytes(got) == data[off : off + size]
    assert src.tries == 3  # the read at the end is b"" without asking the source
    assert src.reads == (0 if at_hand else 3)
    await ops.release(info.fh)
    assert tree.held == []
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.read(info.fh, 0, 10)
    assert e.value.errno == errno.EBADF


async def test_an_immutable_tree_is_cached_by_the_kernel() -> None:
    """Open files keep their page cache; entries and attributes are trusted for hours."""
    ops = Operations(OneFile(Counting(b"data", at_hand=True)))  # type: ignore[arg-type]
    info = await ops.open(5, 0, None)
    assert info.keep_cache and not info.direct_io
    entry = ops._entry(Attr(5, stat.S_IFREG | 0o444, 1, 4, 1, 0, 0, 0))
    assert entry.entry_timeout >= 3600 and entry.attr_timeout >= 3600
    await ops.release(info.fh)


async def test_a_failing_release_does_not_end_the_mount() -> None:
    """Only FUSEError may leave a handler (anything else would stop pyfuse3's main loop)."""

    class Broken(OneFile):
        def unhold(self, token: object) -> None:
            raise RuntimeError("injected")

    ops = Operations(Broken(Counting(b"data", at_hand=True)))  # type: ignore[arg-type]
    info = await ops.open(5, 0, None)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.release(info.fh)
    assert e.value.errno == errno.EIO
