"""A folder of VMs: one directory per VM, each opened (snapshotted) on first use, released idle.

    /                the VMs of a provider, by name; listing or stat'ing takes nothing
    /<vm>/           the VM's tree (fullvm/, digits/, letters/), opened on the first lookup or
                     listing inside it; with ``idle`` set, released again after that many
                     seconds without an open file or directory

Opening a VM takes a snapshot, so it happens once however many readers arrive together (a
lock per VM; the others wait for it).  Each opening of a VM is an *epoch*: inode numbers
inside a VM are ``epoch << 48 | inode in its tree``, so after an idle release and a new
snapshot no inode of the old snapshot can reach the new one (it answers ESTALE), while the
VM directories themselves keep small, stable numbers.  (A tree's inodes stay below 2**48; its
stream inodes set bit 62, above the epoch bits 48-61.)
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import stat
import threading
import time
from dataclasses import dataclass, field

from vcbfs.blocks.source import ByteSource
from vcbfs.errors import NotADirectory, NotFoundError, VcbfsError
from vcbfs.fs.tree import ROOT_INO, Attr, Tree
from vcbfs.vm.provider import VmEntry, VmProvider, directory_names

__all__ = ["StaleError", "VmFolder"]

log = logging.getLogger(__name__)

EPOCH_SHIFT = 48
EPOCH_MASK = (1 << 14) - 1
LIST_TTL = 60.0  # how long a listing of the provider's VMs is trusted
RETRY_AFTER = 10.0  # a VM that failed to open is not tried again sooner


class StaleError(VcbfsError, OSError):
    """An inode of a snapshot that has since been released."""

    errno = errno.ESTALE


@dataclass
class _Vm:
    """One VM's directory.  ``lock`` is held while its snapshot is taken or released (that
    can take minutes); ``counts`` only for a moment, around ``tree``, ``epoch`` and ``holds``
    changes, so that the event loop (which counts open handles) never waits on a snapshot."""

    ino: int
    dirname: str
    entry: VmEntry
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: threading.Lock = field(default_factory=threading.Lock)
    tree: Tree | None = None
    epoch: int = 0
    holds: int = 0
    last_used: float = 0.0
    failed: tuple[float, VcbfsError] | None = None


class VmFolder:
    """The tree model of a mount with many VMs (same interface as ``Tree``)."""

    def __init__(
        self,
        provider: VmProvider,
        *,
        idle: float | None = None,
        now_ns: int = 0,
        dir_mode: int = 0o555,
        file_mode: int = 0o444,
    ) -> None:
        self.provider = provider
        self.idle = idle
        self.now_ns = now_ns
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self._lock = threading.Lock()
        self._by_name: dict[str, _Vm] = {}
        self._by_ino: dict[int, _Vm] = {}
        self._by_key: dict[str, _Vm] = {}
        self._epochs: dict[int, _Vm] = {}
        self._next_epoch = itertools.count(1)
        self._next_ino = itertools.count(ROOT_INO + 1)
        self._listed = -LIST_TTL
        self._closed = False

    # -- the VMs ---------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-list the provider's VMs when the listing is older than LIST_TTL."""
        now = time.monotonic()
        with self._lock:
            if now - self._listed < LIST_TTL:
                return
        entries = directory_names(self.provider.list())
        with self._lock:
            self._listed = now
            names: dict[str, _Vm] = {}
            for dirname, entry in entries.items():
                vm = self._by_key.get(entry.key)
                if vm is None:
                    vm = _Vm(next(self._next_ino), dirname, entry)
                    self._by_key[entry.key] = vm
                    self._by_ino[vm.ino] = vm
                vm.dirname = dirname
                names[dirname] = vm
            for vm in self._by_name.values():  # gone from the inventory but still open
                if vm.tree is not None and vm.dirname not in names:
                    names[vm.dirname] = vm
            self._by_name = names

    def open_all(self) -> None:
        """Open every VM now (``vcbfs mount`` of a specifier naming several VMs).

        Like vcbSnapAll, a VM that fails is logged and left out; failing them all is an error.
        """
        self._refresh()
        errors = []
        for vm in list(self._by_name.values()):
            try:
                self._open(vm)
            except VcbfsError as exc:
                errors.append(exc)
        if errors and len(errors) == len(self._by_name):
            raise errors[0]

    def _open(self, vm: _Vm) -> Tree:
        with vm.lock:
            vm.last_used = time.monotonic()
            if vm.tree is not None:
                return vm.tree
            if vm.failed is not None and time.monotonic() - vm.failed[0] < RETRY_AFTER:
                raise vm.failed[1]
            if self._closed:
                raise NotFoundError("the mount is closing", source=vm.dirname)
            try:
                image = self.provider.open(vm.entry.key)
            except VcbfsError as exc:
                vm.failed = (time.monotonic(), exc)
                log.error("%s: %s", vm.dirname, exc)
                raise
            vm.failed = None
            tree = Tree(image, now_ns=self.now_ns, dir_mode=self.dir_mode, file_mode=self.file_mode)
            epoch = self._new_epoch(vm)
            with vm.counts:
                vm.tree, vm.epoch, vm.last_used = tree, epoch, time.monotonic()
            return tree

    def opening(self, ino: int) -> str | None:
        """The key of the VM that a request on ``ino`` would open first (a lookup or listing in
        a VM directory whose snapshot is not taken yet); None if nothing needs opening.

        Cheap and non-blocking, so that the FUSE layer can take the snapshot on a thread of
        its own (``open_key``), not on a worker every other VM's readers share."""
        vm = self._by_ino.get(ino)
        return vm.entry.key if vm is not None and vm.tree is None else None

    def open_key(self, key: str) -> None:
        """Open (snapshot) the VM ``key`` now, if it is not open; its error if it fails."""
        vm = self._by_key.get(key)
        if vm is not None:
            self._open(vm)

    def _new_epoch(self, vm: _Vm) -> int:
        with self._lock:
            for _ in range(EPOCH_MASK):
                epoch = next(self._next_epoch) & EPOCH_MASK
                if epoch and epoch not in self._epochs:
                    self._epochs[epoch] = vm
                    return epoch
        raise VcbfsError("too many VMs open at once")

    def release(self, dirname: str, *, force: bool = False) -> bool:
        """Release one VM's snapshot now; False if it was not open."""
        self._refresh()
        vm = self._by_name.get(dirname)
        if vm is None:
            raise NotFoundError("no such VM in this mount", source=dirname)
        with vm.lock, vm.counts:  # checked and detached at once: nothing opens in between
            if vm.holds and not force:
                raise BusyError(
                    f"{vm.holds} open file(s) or folder(s) inside; close them first",
                    source=dirname,
                )
            tree = self._detach(vm)
        return self._release(vm, tree)

    def _detach(self, vm: _Vm) -> Tree | None:
        """Take the VM's tree away from new users; the caller holds ``vm.lock`` and
        ``vm.counts``."""
        tree, vm.tree = vm.tree, None
        with self._lock:
            self._epochs.pop(vm.epoch, None)
        vm.epoch = 0
        vm.holds = 0
        return tree

    def _release(self, vm: _Vm, tree: Tree | None) -> bool:
        """Close a detached tree (release the snapshot), outside the VM's lock."""
        if tree is None:
            return False
        try:
            tree.close()
        except Exception as exc:  # a reset connection too: logged, never the end of the mount
            log.error("%s: releasing: %s", vm.dirname, exc)
        log.info("%s: released", vm.dirname)
        return True

    def expire(self, now: float | None = None) -> list[str]:
        """Release VMs idle for ``idle`` seconds with nothing open; their directory names."""
        if self.idle is None:
            return []
        now = time.monotonic() if now is None else now
        done = []
        for vm in list(self._by_ino.values()):
            if vm.tree is None or not vm.lock.acquire(blocking=False):
                continue  # not open, or being opened or used right now
            try:
                with vm.counts:
                    idle = not vm.holds and now - vm.last_used >= self.idle
                    tree = self._detach(vm) if idle else None
            finally:
                vm.lock.release()
            if self._release(vm, tree):
                done.append(vm.dirname)
        return done

    def close(self) -> None:
        """Release every open VM, then the provider."""
        self._closed = True
        for vm in list(self._by_ino.values()):
            with vm.lock, vm.counts:
                tree = self._detach(vm)
            self._release(vm, tree)
        self.provider.close()

    # -- inode numbers ---------------------------------------------------------------------

    def _inside(self, ino: int) -> tuple[_Vm, Tree, int] | None:
        """The VM, tree and tree inode of an inode inside an open VM; None if its snapshot has
        been released."""
        epoch = (ino >> EPOCH_SHIFT) & EPOCH_MASK
        vm = self._epochs.get(epoch)
        tree = vm.tree if vm is not None else None
        if vm is None or tree is None or vm.epoch != epoch:
            return None
        return vm, tree, ino & ~(EPOCH_MASK << EPOCH_SHIFT)

    def _split(self, ino: int) -> tuple[_Vm, Tree, int] | None:
        """The VM, its tree and the tree's inode for ``ino`` (opening the VM for its own
        directory); None for the root."""
        if ino == ROOT_INO:
            return None
        vm = self._by_ino.get(ino)
        if vm is not None:
            return vm, self._open(vm), ROOT_INO
        found = self._inside(ino)
        if found is None:
            raise StaleError(f"inode {ino} belongs to a released snapshot")
        found[0].last_used = time.monotonic()
        return found

    @staticmethod
    def _outer(vm: _Vm, attr: Attr) -> Attr:
        ino = vm.ino if attr.ino == ROOT_INO else attr.ino | (vm.epoch << EPOCH_SHIFT)
        return dataclasses.replace(attr, ino=ino)

    def _dir_attr(self, ino: int) -> Attr:
        t = self.now_ns
        return Attr(ino, stat.S_IFDIR | self.dir_mode, 2, 0, 0, t, t, t)

    # -- the tree interface ----------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        if ino == ROOT_INO or ino in self._by_ino:
            return self._dir_attr(ino)  # a VM directory: no snapshot for a stat
        vm, tree, inner = self._split(ino)  # type: ignore[misc]
        return self._outer(vm, tree.getattr(inner))

    def lookup(self, parent: int, name: str) -> Attr:
        if parent == ROOT_INO:
            self._refresh()
            vm = self._by_name.get(name)
            if vm is None:
                raise NotFoundError(f"no VM {name!r}")
            return self._dir_attr(vm.ino)
        vm, tree, inner = self._split(parent)  # type: ignore[misc]
        return self._outer(vm, tree.lookup(inner, name))

    def readdir(self, ino: int) -> list[tuple[str, Attr]]:
        if ino == ROOT_INO:
            self._refresh()
            return [(name, self._dir_attr(vm.ino)) for name, vm in sorted(self._by_name.items())]
        vm, tree, inner = self._split(ino)  # type: ignore[misc]
        return [(name, self._outer(vm, a)) for name, a in tree.readdir(inner)]

    def open(self, ino: int) -> ByteSource:
        found = self._split(ino)
        if found is None:
            raise NotADirectory("the root is a directory")
        _vm, tree, inner = found
        return tree.open(inner)

    def try_open(self, ino: int) -> ByteSource | None:
        """``open`` of an open VM's file when that needs no disk read; else None."""
        found = None if ino == ROOT_INO or ino in self._by_ino else self._inside(ino)
        return found[1].try_open(found[2]) if found else None  # else the thread path says why

    def report(self, ino: int, exc: VcbfsError, where: str = "") -> None:
        """``Tree.report`` in the VM's tree, its path under the VM's name."""
        found = None if ino == ROOT_INO or ino in self._by_ino else self._inside(ino)
        if found is None:
            log.error("%sinode %d: cannot be read: %s", where, ino, exc)
            exc.reported = True
            return
        vm, tree, inner = found
        tree.report(inner, exc, f"{where}{vm.dirname}/")

    def readlink(self, ino: int) -> str:
        found = self._split(ino)
        if found is None:
            raise NotFoundError("the root is not a link")
        return found[1].readlink(found[2])

    def _xattr_owner(self, ino: int) -> tuple[_Vm, Tree, int] | None:
        """The root and the VM directories have no xattrs (and asking takes no snapshot)."""
        return None if ino == ROOT_INO or ino in self._by_ino else self._split(ino)

    def listxattr(self, ino: int, *, privileged: bool = True) -> list[str]:
        found = self._xattr_owner(ino)
        return found[1].listxattr(found[2], privileged=privileged) if found else []

    def getxattr(self, ino: int, name: str) -> bytes:
        found = self._xattr_owner(ino)
        if not found:
            raise NotFoundError(f"no xattr {name!r}")
        return found[1].getxattr(found[2], name)

    def hold(self, ino: int) -> object:
        """Count an open file or directory inside a VM (an idle VM has none)."""
        if ino == ROOT_INO:
            return None
        vm = self._by_ino.get(ino) or self._epochs.get((ino >> EPOCH_SHIFT) & EPOCH_MASK)
        if vm is None:
            return None
        with vm.counts:
            vm.holds += 1
            vm.last_used = time.monotonic()
            return (vm, vm.epoch)

    def unhold(self, token: object) -> None:
        if token is None:
            return
        vm, epoch = token  # type: ignore[misc]
        with vm.counts:
            if vm.epoch == epoch and vm.holds:
                vm.holds -= 1
            vm.last_used = time.monotonic()


class BusyError(VcbfsError, OSError):
    """Something inside is still open."""

    errno = errno.EBUSY
