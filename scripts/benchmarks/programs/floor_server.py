"""The floor of this stack: a pyfuse3 + trio server answering a whole tree from memory.

    python floor_server.py dump TREE DUMP      # once: record TREE (any mounted tree)
    python floor_server.py serve DUMP MNT      # serve it until ``fusermount3 -u MNT``

``dump`` walks a tree (the benchmark records vcbfs's own ``letters/C``, so names, sizes,
times, links, xattrs and bytes are exactly what vcbfs serves) into ``DUMP.index`` (a pickle of
the entries) and ``DUMP.blob`` (each inode's bytes once, all-zero MiB chunks left out as
holes).  ``serve`` loads the blob into anonymous memory (dropping the page cache does not
touch it), then answers every request from dicts and slices, with the kernel settings vcbfs
uses (entry and attribute timeouts of a day, ``keep_cache``, 1 MiB readahead, readdirplus).
Nothing is parsed and nothing waits: what a tar through it costs is what the kernel, FUSE,
pyfuse3 and trio cost, the limit vcbfs can approach on this binding.
"""

from __future__ import annotations

import errno
import os
import pickle
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

CHUNK = 1 << 20
DAY = 86400.0
ROOT = pyfuse3.ROOT_INODE


@dataclass
class Entry:
    mode: int
    size: int
    nlink: int
    times: tuple[int, int, int]  # atime, mtime, ctime (ns)
    blocks: int
    chunks: list[int] = field(default_factory=list)  # blob offset per MiB, -1 for zeros
    target: bytes = b""  # a symlink's
    children: list[tuple[bytes, int]] = field(default_factory=list)  # a directory's, sorted
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


def dump(tree: Path, out: Path) -> None:
    """Record ``tree`` into ``out.index`` and ``out.blob``."""
    entries: dict[int, Entry] = {}
    inodes: dict[int, int] = {}  # st_ino -> our inode (hard links share one)
    with open(out.with_suffix(".blob"), "wb") as blob:

        def record(path: Path) -> int:
            st = os.lstat(path)
            if st.st_ino in inodes:
                return inodes[st.st_ino]
            ino = ROOT if not entries else len(entries) + ROOT
            inodes[st.st_ino] = ino
            e = Entry(st.st_mode, st.st_size, st.st_nlink,
                      (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns), st.st_blocks)  # fmt: skip
            entries[ino] = e
            for name in os.listxattr(path, follow_symlinks=False):
                e.xattrs[name.encode()] = os.getxattr(path, name, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                e.target = os.fsencode(os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    while chunk := f.read(CHUNK):
                        if chunk.count(0) == len(chunk):
                            e.chunks.append(-1)
                        else:
                            e.chunks.append(blob.tell())
                            blob.write(chunk)
            elif stat.S_ISDIR(st.st_mode):
                for name in sorted(os.listdir(path)):
                    e.children.append((os.fsencode(name), record(path / name)))
            return ino

        record(tree)
    with open(out.with_suffix(".index"), "wb") as f:
        pickle.dump(entries, f, protocol=pickle.HIGHEST_PROTOCOL)


class Floor(pyfuse3.Operations):
    """Every answer from memory: the entries, and one buffer holding every file's bytes."""

    def __init__(self, entries: dict[int, Entry], blob: bytearray):
        super().__init__()
        self.entries = entries
        self.blob = memoryview(blob)
        self.zeros = memoryview(bytes(CHUNK))
        self.names = {ino: dict(e.children) for ino, e in entries.items() if e.children}

    def _attr(self, ino: int) -> Any:
        e = self.entries[ino]
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = a.attr_timeout = DAY
        a.st_mode = e.mode
        a.st_nlink = e.nlink
        a.st_size = e.size
        a.st_blocks = e.blocks
        a.st_blksize = 128 * 1024
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = e.times
        return a

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        ino = self.names.get(parent_inode, {}).get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(ino)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return self.entries[inode].target

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        children = self.entries[fh].children
        for i in range(start_id, len(children)):
            name, ino = children[i]
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=False)

    async def read(self, fh: int, off: int, size: int) -> Any:
        e = self.entries[fh]
        end = min(off + size, e.size)
        parts = []
        while off < end:
            index, within = divmod(off, CHUNK)
            n = min(CHUNK - within, end - off)
            at = e.chunks[index]
            parts.append(self.zeros[:n] if at < 0 else self.blob[at + within : at + within + n])
            off += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def release(self, fh: int) -> None:
        pass

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return list(self.entries[inode].xattrs)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self.entries[inode].xattrs.get(name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    async def statfs(self, ctx: Any) -> Any:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 1024
        return s


def serve(index: Path, mnt: str) -> None:
    from vcbfs.fs.mount import fuse_options, raise_readahead

    with open(index.with_suffix(".index"), "rb") as f:
        entries = pickle.load(f)
    blob = bytearray(os.path.getsize(index.with_suffix(".blob")))
    with open(index.with_suffix(".blob"), "rb") as f:
        f.readinto(blob)
    pyfuse3.init(Floor(entries, blob), mnt, fuse_options(fsname="floor"))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, raise_readahead, mnt)
            await pyfuse3.main()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    verb, *rest = sys.argv[1:]
    if verb == "dump":
        dump(Path(rest[0]), Path(rest[1]))
    elif verb == "serve":
        serve(Path(rest[0]), rest[1])
    else:
        sys.exit(__doc__)
