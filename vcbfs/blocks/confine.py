"""Where names found inside VM files may lead: the box of directories vcbfs reads from.

A descriptor's extent and parent names, a .vmx's disk and nvram names and the inventory's
datastore paths are written by whoever can write a datastore folder, and vcbfs runs as root.
So every such name must resolve inside the box:

* the directory of the file the user named (its real path), for local VMs and disks;
* the datastore roots the settings name (``--datastore-path DS=DIR``), where an ESXi path
  ``/vmfs/volumes/DS/...`` maps to DIR by the datastore's name or UUID;
* any directory given with ``--allow-path DIR``.

The check is made twice: lexically on the name (``..`` and absolute names), and by the kernel
when the file is opened (``openat2`` with ``RESOLVE_BENEATH`` from the root's directory, so a
symlink that leads out is refused too).  Only regular files open; FIFOs and devices are refused
without blocking (``O_NONBLOCK``).  Block devices open only when named by the user.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vcbfs.errors import AccessDeniedError, NotFoundError, ReadError, VcbfsError

__all__ = ["Box", "ConfinementError", "open_file"]

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (generic syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
RULE = (
    "vcbfs reads only files inside the directory of the file it was given or a datastore "
    "root the settings name (--allow-path DIR widens this)"
)


class ConfinementError(AccessDeniedError):
    """A name in a VM file leads outside the box, or to something that is not a disk file."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None = None
_have_openat2 = True


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int | None:
    """``openat2``; None where the kernel (or a seccomp filter) does not offer it."""
    global _libc, _have_openat2
    if not _have_openat2:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(
        _SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
    )
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM):
        _have_openat2 = False
        return None
    raise OSError(err, os.strerror(err), path)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class Box:
    """The directories that names in VM files may resolve into (real paths), and the datastore
    roots by name or UUID for ``/vmfs/volumes/DS/...`` names."""

    roots: tuple[str, ...]
    datastores: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def under(
        cls,
        directory: str | os.PathLike[str],
        *,
        allow: Iterable[str | os.PathLike[str]] = (),
        datastores: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> Box:
        """The box of a directory the user named, widened by the allowed directories and the
        datastore roots."""
        return cls.of([directory, *allow], datastores)

    @classmethod
    def of(
        cls,
        roots: Iterable[str | os.PathLike[str]],
        datastores: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> Box:
        """The box of these directories and datastore roots (by name or UUID), as real paths."""
        stores = {k: os.path.realpath(v) for k, v in (datastores or {}).items()}
        real = [*map(os.path.realpath, roots), *stores.values()]
        return cls(tuple(dict.fromkeys(real)), stores)

    @classmethod
    def around(
        cls,
        path: str | os.PathLike[str],
        *,
        allow: Iterable[str | os.PathLike[str]] = (),
        datastores: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> Box:
        """The box of a file the user named: the directory holding it, and so on."""
        directory = os.path.dirname(os.path.realpath(path))
        return cls.under(directory, allow=allow, datastores=datastores)

    def root_of(self, path: str) -> str | None:
        """The deepest root holding ``path`` (already normalised), if any."""
        best = None
        for root in self.roots:
            if _inside(path, root) and (best is None or len(root) > len(best)):
                best = root
        return best

    def resolve(self, directory: str, name: str, referrer: str) -> str:
        """The path ``name`` (written in ``referrer``, whose directory is ``directory``) names,
        or ConfinementError if it leads outside the box."""
        if "\0" in name:
            raise ConfinementError(f"names {name!r}, which holds a NUL", source=referrer)
        if name.startswith("/vmfs/volumes/"):
            store, _, rest = name[len("/vmfs/volumes/") :].partition("/")
            root = self.datastores.get(store)
            if root is not None:
                path = os.path.normpath(os.path.join(root, rest))
                if _inside(path, root):
                    return path
        path = os.path.normpath(os.path.join(directory, name))
        if path.startswith("//"):  # normpath keeps a leading '//'
            path = "/" + path.lstrip("/")
        if self.root_of(path) is None:
            raise ConfinementError(f"names {name!r}, outside the box: {RULE}", source=referrer)
        return path


def open_file(path: str, box: Box | None, *, devices: bool = False) -> int:
    """A read-only descriptor of ``path``: beneath a root of ``box`` if one is given, and a
    regular file (or, with ``devices``, a block device).  Never blocks on a FIFO."""
    try:
        fd = _open(path, box)
    except VcbfsError:
        raise  # a refusal (a PermissionError too): not an OSError of the open
    except OSError as exc:
        raise _os_error(exc, path) from None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or (devices and stat.S_ISBLK(st.st_mode))):
            if stat.S_ISDIR(st.st_mode):
                raise ReadError("is a directory, not a disk file", source=path)
            raise ConfinementError(f"is {_kind(st.st_mode)}, not a disk file", source=path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open(path: str, box: Box | None) -> int:
    if box is None:
        return os.open(path, _FLAGS)
    root = box.root_of(path)
    if root is None:
        raise ConfinementError(f"outside the box: {RULE}", source=path)
    rel = os.path.relpath(path, root)
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = _openat2(dirfd, rel, _FLAGS, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise ConfinementError(
                    f"leads outside {root} through a symlink: {RULE}", source=path
                ) from None
            raise
        if fd is not None:
            return fd
        # No openat2: check the real path, then open without following a last symlink.
        if box.root_of(os.path.realpath(path)) is None:
            raise ConfinementError(f"leads outside the box through a symlink: {RULE}", source=path)
        return os.open(rel, _FLAGS | os.O_NOFOLLOW, dir_fd=dirfd)
    finally:
        os.close(dirfd)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device (only one named on the command line is read)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _os_error(exc: OSError, path: str) -> Exception:
    if exc.errno == errno.ENOENT:
        return NotFoundError("no such file", source=path)
    if exc.errno == errno.ELOOP:
        return ConfinementError("is a symlink, which vcbfs does not follow here", source=path)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDeniedError("permission denied", source=path)
    if exc.errno == errno.ENXIO:
        return ConfinementError("is a socket or device without a reader", source=path)
    return ReadError(exc.strerror or str(exc), source=path)
