"""The pyfuse3 adapter's own rules, without a mount: what it hands the kernel stays in range."""

from __future__ import annotations

import stat

from vcbfs.fs.operations import INT64_MAX, Operations, encode_name
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


class _Names:
    """A directory whose entries have names POSIX cannot hold as they are."""

    NAMES = ("plain.txt", "a/b", "nul\0here", "lone\ud800surrogate", "pct%2F", "caf\u00e9")

    def readdir(self, ino: int) -> list[tuple[str, Attr]]:
        return [(n, self._attr(i)) for i, n in enumerate(self.NAMES)]

    def lookup(self, parent: int, name: str) -> Attr:
        from vcbfs.errors import NotFoundError

        if name not in self.NAMES:
            raise NotFoundError(f"no {name!r}")
        return self._attr(self.NAMES.index(name))

    def hold(self, ino: int) -> None:
        return None

    @staticmethod
    def _attr(i: int) -> Attr:
        return Attr(100 + i, stat.S_IFREG | 0o444, 1, i, 0, 0, 0, 0)


async def test_every_name_is_listed_and_looks_up_to_its_inode() -> None:
    # An unpaired surrogate made opendir fail (EIO) for the whole directory; '/' and NUL
    # broke or cut the listing.
    ops = Operations(_Names())  # type: ignore[arg-type]
    fh = await ops.opendir(1, None)
    # readdir sends each name as encode_name makes it (no token to call readdir with here)
    listed = [(encode_name(name), attr) for name, attr in ops._dirs[fh].listing]
    assert len(listed) == len(_Names.NAMES)
    for raw, attr in listed:
        assert b"/" not in raw and b"\0" not in raw
        assert (await ops.lookup(1, raw)).st_ino == attr.ino
    names = [raw for raw, _attr in listed]
    assert names[1] == "a\uf02fb".encode() and names[3] == b"lone\xed\xa0\x80surrogate"
    assert len(set(names)) == len(names)
