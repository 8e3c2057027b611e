"""The least pyfuse3 + trio file system, for ``bench requests``: ``python nothing_server.py
MNT`` serves a root holding ``f`` (1 byte), every answer from memory, no state, until
``fusermount3 -u MNT``.  It is the floor under any server built on the binding and event loop
vcbfs uses.
"""

import errno
import stat
import sys
from typing import Any

import pyfuse3
import trio


class Nothing(pyfuse3.Operations):
    """A root (inode 1) holding ``f`` (inode 2, 1 byte: ``x``)."""

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.entry_timeout = e.attr_timeout = 86400
        e.st_mode = (stat.S_IFDIR | 0o555) if inode == 1 else (stat.S_IFREG | 0o444)
        e.st_size = 0 if inode == 1 else 1
        return e

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> Any:
        if parent != 1 or name != b"f":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(2)

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return b"x"[off : off + size]

    async def release(self, fh: int) -> None:
        pass


def serve(mnt: str) -> None:
    pyfuse3.init(Nothing(), mnt, {"fsname=nothing", "ro"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    serve(sys.argv[1])
