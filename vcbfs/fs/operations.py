"""The pyfuse3 adapter: FUSE requests in, answers from the tree model out.

Only this module knows pyfuse3.  Every handler goes through ``_guard``: a vcbfs error becomes its
errno, anything unexpected is logged and becomes EIO, so nothing but FUSEError ever reaches
pyfuse3 (which would end the mount).  Blocking work (parsing records, reading disks) runs in
worker threads behind a capacity limiter; the tree is thread-safe.  Reads that need no waiting
(holes, cached blocks, the page cache: ``ByteSource.try_read_at``) are answered in the event
loop itself, since the hop to a thread and back costs as much as copying 1 MiB.

The tree never changes, so attributes and entries are cached by the kernel for a day, open
files keep their page cache, and readdir offsets index a listing fixed at opendir.  Every
request that would change anything gets EROFS.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pyfuse3
import trio

from vcbfs.blocks.budget import BUDGET
from vcbfs.blocks.source import Buffer, ByteSource
from vcbfs.errors import VcbfsError
from vcbfs.fs.names import decode_name, encode_name
from vcbfs.fs.profile import RequestProfile
from vcbfs.fs.tree import Attr, Tree, weigh_listing

if TYPE_CHECKING:
    from vcbfs.fs.automount import VmFolder

__all__ = ["Operations", "decode_name", "encode_name"]

log = logging.getLogger(__name__)

TIMEOUT = 24 * 3600.0
INT64_MAX = (1 << 63) - 1  # off_t, blkcnt_t and nanosecond times are signed 64-bit
BLKSIZE = 128 * 1024
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
P = ParamSpec("P")
R = TypeVar("R")


def _guard(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Let only FUSEError out of a handler."""

    name = handler.__name__

    @functools.wraps(handler)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        profile: RequestProfile | None = args[0].profile  # type: ignore[attr-defined]
        start = time.perf_counter_ns() if profile is not None else 0
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except VcbfsError as exc:
            if exc.errno in (errno.EIO, errno.ENOMEM) and not exc.reported:
                log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("%s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if profile is not None:
                profile.add(name, time.perf_counter_ns() - start)

    return wrapped


def _clamp(value: int, low: int = -INT64_MAX - 1) -> int:
    return min(max(value, low), INT64_MAX)


def _readonly(*_args: Any, **_kwargs: Any) -> Awaitable[Any]:
    async def refuse() -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    return refuse()


class _OpenDir:
    """A listing fixed at opendir (readdir offsets index it), shared with the tree's cache of
    listings but charged to the memory budget while it is open: the cache may drop its copy,
    and a thousand readers of a huge directory must not grow the server without bound."""

    __slots__ = ("__weakref__", "held", "listing")

    def __init__(self, listing: list[tuple[str, Attr]]):
        self.listing = listing
        self.held: object = None


class Operations(pyfuse3.Operations):
    """pyfuse3 operations over a Tree (one VM) or a VmFolder (many)."""

    enable_writeback_cache = False

    def __init__(
        self,
        tree: Tree | VmFolder,
        *,
        uid: int = 0,
        gid: int = 0,
        threads: int = 16,
        profile: RequestProfile | None = None,
    ):
        super().__init__()
        self.tree = tree
        self.profile = profile
        self.uid = uid
        self.gid = gid
        self._limiter = trio.CapacityLimiter(threads)
        # Taking a VM's snapshot (up to an hour of quiescing) runs on threads of its own, one
        # per VM, so that a slow VM never holds the workers that other VMs' readers need.
        self._open_limiter = trio.CapacityLimiter(threads)
        self._opening: dict[str, trio.Event] = {}
        self._files: dict[int, tuple[ByteSource, object, int]] = {}  # source, hold, inode
        self._dirs: dict[int, _OpenDir] = {}
        self._handles = itertools.count(1)

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _open_vm(self, inode: int) -> None:
        """Before a request that would snapshot a VM (automount): take the snapshot on the
        opening threads, once; other requests for that VM wait here, in the event loop."""
        opening = getattr(self.tree, "opening", None)
        key = opening(inode) if opening is not None else None
        if key is None:
            return
        event = self._opening.get(key)
        if event is not None:
            await event.wait()  # the opener's error, if any, the request itself then meets
            return
        event = self._opening[key] = trio.Event()
        try:
            open_key = self.tree.open_key  # type: ignore[union-attr]
            await trio.to_thread.run_sync(open_key, key, limiter=self._open_limiter)
        except VcbfsError:
            pass  # remembered by the folder: the request that follows raises it
        finally:
            del self._opening[key]
            event.set()

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = self.uid
        e.st_gid = self.gid
        e.st_rdev = 0
        # A size or time from disk outside what the kernel holds (an index entry's size of
        # 2**64-1, a FILETIME past 2262) is clamped here, for that entry alone: an overflow
        # would otherwise fail the whole listing it is in.
        e.st_size = _clamp(a.size, 0)
        e.st_blksize = BLKSIZE
        e.st_blocks = _clamp(a.blocks, 0)
        e.st_atime_ns = _clamp(a.atime_ns)
        e.st_mtime_ns = _clamp(a.mtime_ns)
        e.st_ctime_ns = _clamp(a.ctime_ns)
        return e

    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        if name == b".":
            return self._entry(await self._run(self.tree.getattr, parent_inode))
        text = decode_name(name)  # one name is listed so (see vcbfs/fs/names.py), or none
        if text is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        await self._open_vm(parent_inode)
        return self._entry(await self._run(self.tree.lookup, parent_inode, text))

    @_guard
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._entry(await self._run(self.tree.getattr, inode))

    @_guard
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        target = await self._run(self.tree.readlink, inode)  # names encoded as listed
        return target if isinstance(target, bytes) else target.encode("utf-8", "surrogatepass")

    @_guard
    async def opendir(self, inode: int, ctx: Any) -> int:
        await self._open_vm(inode)
        listing = await self._run(self.tree.readdir, inode)
        opened = _OpenDir(listing)
        BUDGET.hold(
            opened, weigh_listing(listing), f"a listing of {len(listing)} entries", share=1.0
        )
        opened.held = self.tree.hold(inode)
        fh = next(self._handles)
        self._dirs[fh] = opened
        return fh

    @_guard
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        found = self._dirs.get(fh)
        if found is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        listing = found.listing
        for i in range(start_id, len(listing)):
            name, attr = listing[i]
            if not pyfuse3.readdir_reply(token, encode_name(name), self._entry(attr), i + 1):
                break

    @_guard
    async def releasedir(self, fh: int) -> None:
        found = self._dirs.pop(fh, None)
        if found is not None:
            self.tree.unhold(found.held)  # its budget charge ends with the object

    @_guard
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        if flags & WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            # A file whose record the lookup just parsed opens right here, without a thread hop.
            source = self.tree.try_open(inode)
            if source is None:
                source = await self._run(self.tree.open, inode)
            elif self.profile is not None:
                self.profile.note("opens answered in the event loop")
        except VcbfsError as exc:
            await self._report(inode, exc)
            raise
        fh = next(self._handles)
        self._files[fh] = (source, self.tree.hold(inode), inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    async def _report(self, inode: int, exc: VcbfsError) -> None:
        """A file that cannot be read is logged once, by its path (which may take reads)."""
        if exc.errno == errno.EIO and not exc.reported:
            await self._run(self.tree.report, inode, exc)

    @_guard
    async def read(self, fh: int, off: int, size: int) -> Buffer:
        """From memory (holes, the page cache) right here, else in a worker thread.

        The hop to a thread and back costs about 0.1 ms here, as much as copying 1 MiB, so
        answering what needs no waiting in the event loop saves most of a cached read.
        """
        found = self._files.get(fh)
        if found is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        source = found[0]
        try:
            data = source.try_read_at(off, size)
            if data is not None:
                if self.profile is not None:
                    self.profile.note("reads answered in the event loop")
                return data
            return await self._run(source.read_at, off, size)
        except VcbfsError as exc:
            await self._report(found[2], exc)
            raise

    @_guard
    async def release(self, fh: int) -> None:
        found = self._files.pop(fh, None)  # sources belong to the tree: nothing to close
        if found is not None:
            self.tree.unhold(found[1])

    @_guard
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        # The kernel lets only a privileged caller read trusted.* (a link's metadata).
        privileged = ctx is None or ctx.uid == 0
        names = await self._run(
            functools.partial(self.tree.listxattr, inode, privileged=privileged)
        )
        return [n.encode("utf-8", "surrogatepass") for n in names]

    @_guard
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        try:
            text = name.decode("utf-8", "surrogatepass")  # as listxattr encodes them
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENODATA) from None
        try:
            return await self._run(self.tree.getxattr, inode, text)
        except VcbfsError as exc:
            if exc.errno == errno.ENOENT:
                raise pyfuse3.FUSEError(errno.ENODATA) from None
            raise

    @_guard
    async def statfs(self, ctx: Any) -> Any:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 1024
        return s

    async def forget(self, inode_list: Any) -> None:
        """Inodes are derived, not allocated: nothing to forget."""

    setattr = _readonly
    mknod = _readonly
    mkdir = _readonly
    unlink = _readonly
    rmdir = _readonly
    symlink = _readonly
    rename = _readonly
    link = _readonly
    write = _readonly
    create = _readonly
    setxattr = _readonly
    removexattr = _readonly
