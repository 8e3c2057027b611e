"""The adapter fuzzer: hypothesis-made volumes through every read-only FUSE handler.

Each example is one or two NTFS volumes (``tests/fs/fakevolume.py``) whose entries carry what
a damaged or crafted disk can: names with unpaired surrogates, '/', NUL, '.', '..', 255 code
units or none, names that differ only in case; sizes and FILETIMEs anywhere in 0..2**64-1;
any attribute bits; symlinks and junctions to absolute, relative, '..'-laden, drive-letter,
UNC, empty and garbage targets; reparse data that does not parse; named streams of any size and
name; hard links; index entries whose keys are stale or point at records that are missing,
past the MFT or past what an inode can hold; records whose stat, names, streams or data fail.

The tree over them is walked through the real ``Operations`` handlers, called directly under
trio (no kernel mount: ``readdir_reply`` is caught), and every answer is checked:

- only ``pyfuse3.FUSEError`` leaves a handler, whatever the request (random inodes, names,
  handles, offsets too);
- a directory lists every entry it holds: one bad entry is listed all the same (reading it
  gives EIO) and never fails the listing; what is left out is left out per entry, by rule;
- every listed name is a name the kernel takes (not empty, '.', '..', no '/' or NUL, at most
  1024 bytes), no two alike, and looks up to the inode the listing gave (or to EIO where the
  entry's own record is unreadable);
- inode numbers never alias: an entry's inode names its own view and record;
- every link target, resolved from the link's own place in the mount, stays inside the mount;
- every listed xattr has a value (or EIO), within the kernel's size limits.

CI runs a small budget (deterministic under ``CI``); ``VCBFS_FUZZ_EXAMPLES=N`` sets the budget
of every target for a long run, and ``scripts/fuzz-adapter`` runs one target for N executions
or a time.  Inputs that failed are kept as JSON in ``tests/fs/fuzz_regressions/`` and replayed
here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fs.adapterfuzz import REGRESSIONS, TARGETS, link_value, load, run_walk
from tests.fs.fakevolume import Entry, Name, Record, VolumeSpec
from vcbfs.fs.operations import Operations
from vcbfs.ntfs.reparse import TAG_SYMLINK
from vcbfs.ntfs.volume import ROOT

T = TypeVar("T")
EXAMPLES = int(os.environ.get("VCBFS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 40,
    deadline=None,
    derandomize=bool(os.environ.get("CI")) and not EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None if EXAMPLES else settings.default.database,
)


class DrawChooser:
    """The generators' choices drawn by hypothesis (so that a failure shrinks)."""

    def __init__(self, draw: Any):
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))

    def binary(self, max_size: int) -> bytes:
        return self.draw(st.binary(max_size=max_size))


def target(name: str) -> st.SearchStrategy[list[VolumeSpec]]:
    make = TARGETS[name]
    return st.composite(lambda draw: make(DrawChooser(draw)))()


@FUZZ
@given(specs=target("walk"), seed=st.integers(0, 1 << 32))
def test_walk(specs: list[VolumeSpec], seed: int) -> None:
    """Whole volumes: every handler over every entry, every answer checked."""
    run_walk(specs, seed)


@FUZZ
@given(specs=target("names"), seed=st.integers(0, 1 << 32))
def test_names(specs: list[VolumeSpec], seed: int) -> None:
    """One directory of many names at once: case, escapes, surrogates, cut stream names."""
    run_walk(specs, seed)


@FUZZ
@given(specs=target("links"), seed=st.integers(0, 1 << 32))
def test_links(specs: list[VolumeSpec], seed: int) -> None:
    """Links at every depth, hard-linked across depths, under misplaced directories."""
    run_walk(specs, seed)


def test_walk_with_worker_threads() -> None:
    """The same walk through the adapter as mounted (each request hops to a worker thread)."""
    root = Record(is_dir=True, names=[Name(ROOT, ".", 3)])
    records = {ROOT: root}
    for i, name in enumerate(["a", "A", "a/b", "\ud800", "x" * 255, "link", ""]):
        reparse = link_value(TAG_SYMLINK, "..\\..\\..", "..\\..\\..", 1) if name == "link" else None
        records[16 + i] = Record(names=[Name(ROOT, name, 0)], size=(1 << 64) - 1, reparse=reparse)
        root.index.append(Entry(name, 16 + i, 0))
    run_walk([VolumeSpec(records, ["C"])], 7, Operations)


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.json")), ids=lambda p: p.stem)
def test_regressions(path: Path) -> None:
    """Inputs the fuzzer once failed on, replayed."""
    run_walk(*load(path))
