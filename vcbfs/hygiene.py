"""Hygiene for a long-lived server that holds secrets and keeps state in a run directory.

* :func:`drop_secret_env`: a password or session cookie passed in the environment is gone once
  read: from ``os.environ``, from the C ``environ`` (so no child inherits it), and from the block
  the kernel shows as ``/proc/PID/environ`` (overwritten in place: unsetting a variable leaves
  those bytes, and root can read them for as long as the process lives).
* :func:`no_core_dumps`: ``PR_SET_DUMPABLE 0`` and a core size limit of 0, so a crash writes no
  core file with the password in it, and only a process with ``CAP_SYS_PTRACE`` may read the
  server's memory or its ``/proc`` files.
* :func:`private_dir`, :func:`write_private_file`, :func:`read_private_file`: state files (PIDs,
  sockets) live in a directory that is a real directory (not a symbolic link), owned by the
  effective user and not writable by group or others; files in it are created under a fresh
  name and renamed into place, and read only if they are regular files owned by the same user,
  never through a symbolic link.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import stat
from pathlib import Path

from vcbfs.errors import AccessDeniedError

__all__ = [
    "SECRET_VARS",
    "UnsafeStateError",
    "drop_secret_env",
    "no_core_dumps",
    "private_dir",
    "read_private_file",
    "write_private_file",
]

SECRET_VARS = ("VCBFS_PASSWORD", "VCBFS_SESSION_COOKIE")
PR_SET_DUMPABLE = 4


class UnsafeStateError(AccessDeniedError):
    """A run directory or state file that someone else could have put there or changed."""


def drop_secret_env(names: tuple[str, ...] = SECRET_VARS) -> None:
    """Remove ``names`` from the environment everywhere it can be read, once it has been read."""
    import posix

    for name in names:
        os.environ.pop(name, None)  # unsetenv(): gone from the C environ, and so from children
        posix.environ.pop(name.encode(), None)  # the startup copy os.environ was built from
    _scrub_initial_environ({name.encode() for name in names})


def _scrub_initial_environ(names: set[bytes]) -> None:
    """Overwrite with NULs every ``NAME=value`` of ``names`` in the environment block the process
    started with (``/proc/self/stat`` fields 50 and 51 bound it; the kernel reads
    ``/proc/PID/environ`` from there)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])
    except (OSError, IndexError, ValueError):
        return
    if not 0 < start < end:
        return
    block = ctypes.string_at(start, end - start)
    offset = 0
    for entry in block.split(b"\0"):
        if entry.partition(b"=")[0] in names:
            ctypes.memset(start + offset, 0, len(entry))
        offset += len(entry) + 1


def no_core_dumps() -> None:
    """No core file, and no reading of this process's memory without ``CAP_SYS_PTRACE``."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE, 0): {os.strerror(err)}")


def _dir_rule() -> str:
    return (
        f"it must be a directory (not a symbolic link) owned by uid {os.geteuid()} "
        "and not writable by group or others"
    )


def private_dir(path: Path, *, create: bool) -> int | None:
    """An open descriptor of the directory ``path``, checked: a real directory owned by the
    effective user, not writable by group or others (else :class:`UnsafeStateError`, naming it
    and the rule).  A missing one is created (mode 0700, with its parents) when ``create``, else
    None.  Creating it can fail with OSError."""
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(parents=True, mode=0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:
            link = False
        what = "is a symbolic link" if link else "is not a directory"
        raise UnsafeStateError(f"{what}; {_dir_rule()}", source=str(path)) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafeStateError(f"is owned by uid {st.st_uid}; {_dir_rule()}", source=str(path))
        if st.st_mode & 0o022:
            raise UnsafeStateError(
                f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"{_dir_rule()}",
                source=str(path),
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private_file(dir_fd: int, name: str, data: bytes) -> None:
    """``data`` as the file ``name`` (mode 0600) in the directory ``dir_fd``: written under a
    fresh name, then renamed over whatever ``name`` was (a symbolic link is replaced, never
    followed)."""
    temp = f".{name}.{os.getpid()}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=dir_fd)  # a crashed run's, with this PID
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_private_file(dir_fd: int, name: str, *, where: str, limit: int = 4096) -> bytes | None:
    """The bytes of ``name`` in the directory ``dir_fd`` (``where`` names it in errors); None if
    there is no such file.  A symbolic link, anything but a regular file, or a file owned by
    another user or writable by group or others is an :class:`UnsafeStateError`."""
    source = f"{where}/{name}"
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStateError("is a symbolic link: not trusted", source=source) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeStateError("is not a regular file: not trusted", source=source)
        if st.st_uid != os.geteuid():
            raise UnsafeStateError(
                f"is owned by uid {st.st_uid}, not {os.geteuid()}: not trusted", source=source
            )
        if st.st_mode & 0o022:
            raise UnsafeStateError(
                f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                "not trusted",
                source=source,
            )
        return os.read(fd, limit)
    finally:
        os.close(fd)
