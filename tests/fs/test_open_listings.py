"""A directory's listing, fixed at opendir, is charged to the memory budget while it is open.

The listing is the tree's own (no copy per handle), but the tree's cache may drop it while a
reader still holds it: the handle's charge keeps the bound true.  Too many open listings for the
budget give ENOMEM (logged with the budget's size), never an unbounded server.
"""

from __future__ import annotations

import errno
import gc
from collections.abc import Iterator
from unittest import mock

import pyfuse3
import pytest
import trio

import vcbfs.fs.operations
import vcbfs.vm.letters
from tests.fs.adapterfuzz import InlineOperations, Token, reply
from tests.fs.fakevolume import (
    Entry,
    FakeImage,
    Name,
    Record,
    VolumeSpec,
    fake_volume_letters,
    root_record,
)
from vcbfs.blocks.budget import MIB, Budget
from vcbfs.fs.tree import ROOT_INO, Tree, weigh_listing
from vcbfs.ntfs.volume import ROOT

ENTRIES = 3000


def _names() -> list[str]:
    return [f"document-{i:05d}.txt" for i in range(ENTRIES)]


@pytest.fixture
def ops() -> Iterator[InlineOperations]:
    root = root_record()
    records = {ROOT: root}
    for i, name in enumerate(_names()):
        records[16 + i] = Record(names=[Name(ROOT, name)], size=i)
        root.index.append(Entry(name, 16 + i, size=i))
    tree = Tree(FakeImage([VolumeSpec(records, ["C"])]), now_ns=1)  # type: ignore[arg-type]
    with mock.patch.object(vcbfs.vm.letters, "volume_letters", fake_volume_letters):
        yield InlineOperations(tree)


async def _volume_root(ops: InlineOperations) -> int:
    digits = await ops.lookup(ROOT_INO, b"digits")
    return (await ops.lookup(digits.st_ino, b"1")).st_ino


async def _list(ops: InlineOperations, fh: int) -> list[bytes]:
    token = Token(10**6)
    with mock.patch.object(pyfuse3, "readdir_reply", reply):
        await ops.readdir(fh, 0, token)
    return [name for name, _attr, _next in token.got]


def test_an_open_listing_is_charged_until_released(ops: InlineOperations) -> None:
    budget = Budget(64 * MIB)

    async def main() -> None:
        ino = await _volume_root(ops)
        weight = weigh_listing(ops.tree.readdir(ino))
        before = budget.stats()["held"]
        fh = await ops.opendir(ino, None)
        assert budget.stats()["held"] == before + weight
        assert sorted(await _list(ops, fh)) == sorted(n.encode() for n in _names())
        await ops.releasedir(fh)
        gc.collect()
        assert budget.stats()["held"] == before

    with mock.patch.object(vcbfs.fs.operations, "BUDGET", budget):
        trio.run(main)


def test_open_listings_past_the_budget_get_enomem(
    ops: InlineOperations, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        ino = await _volume_root(ops)
        weight = weigh_listing(ops.tree.readdir(ino))
        budget = Budget(weight * 3 // 2)  # room for one open listing, not two
        with mock.patch.object(vcbfs.fs.operations, "BUDGET", budget):
            first = await ops.opendir(ino, None)
            with pytest.raises(pyfuse3.FUSEError) as refused:
                await ops.opendir(ino, None)
            assert refused.value.errno == errno.ENOMEM
            assert len(await _list(ops, first)) == ENTRIES  # the open one still reads whole
            await ops.releasedir(first)
            gc.collect()
            again = await ops.opendir(ino, None)  # its charge was given back
            await ops.releasedir(again)

    trio.run(main)
    assert any(
        "more than" in r.getMessage() and "memory budget" in r.getMessage() for r in caplog.records
    )
