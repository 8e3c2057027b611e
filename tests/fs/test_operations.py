"""The pyfuse3 adapter's own rules, without a mount: what it hands the kernel stays in range."""

from __future__ import annotations

import stat

from vcbfs.fs.operations import INT64_MAX, Operations
from vcbfs.fs.tree import Attr


def test_out_of_range_sizes_and_times_are_clamped_per_entry() -> None:
    # An index entry's size of 2**64-1 or a FILETIME past 2262 used to raise OverflowError
    # in the conversion, failing the whole directory listing the entry was in.
    ops = Operations(None)  # type: ignore[arg-type]  # _entry needs no tree
    huge = Attr(7, stat.S_IFREG | 0o444, 1, (1 << 64) - 1, 1 << 70, 9 * 10**20, -(10**21), 5)
    e = ops._entry(huge)
    assert (e.st_size, e.st_blocks) == (INT64_MAX, INT64_MAX)
    assert (e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns) == (INT64_MAX, -INT64_MAX - 1, 5)
    ok = ops._entry(Attr(8, stat.S_IFREG | 0o444, 1, 10, 1, 1, 2, 3))
    assert (ok.st_size, ok.st_blocks, ok.st_atime_ns, ok.st_mtime_ns) == (10, 1, 1, 2)
