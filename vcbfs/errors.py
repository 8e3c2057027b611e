"""Typed errors for every layer of vcbfs.

Each class also subclasses the builtin it resembles, so callers that only know Python's own
exceptions (``except FileNotFoundError``) still work, and carries exactly one errno, so the FUSE
layer can map any of them to a reply without a table of special cases.  Messages name the thing
that was wrong and where: the file (or URL) and, for on-disk structures, the byte offset.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar

__all__ = [
    "AccessDeniedError",
    "ChainError",
    "CorruptError",
    "NotADirectory",
    "NotFoundError",
    "OutOfRangeError",
    "ReadError",
    "UnavailableError",
    "UnsupportedError",
    "VcbfsError",
    "VsphereError",
]


class VcbfsError(Exception):
    """Base of all vcbfs errors: a message, the source it concerns and, if known, an offset."""

    errno: ClassVar[int] = _errno.EIO
    reported: bool = False  # already logged with the path of the file it concerns

    def __init__(self, message: str, *, source: str | None = None, offset: int | None = None):
        self.message = message
        self.source = source
        self.offset = offset
        super().__init__(self.describe())

    def about(self, what: str) -> VcbfsError:
        """The same error, its source prefixed with ``what`` (the file a user asked for)."""
        where = f"{what} ({self.source})" if self.source else what
        new = type(self)(self.message, source=where, offset=self.offset)
        new.reported = self.reported
        return new

    def describe(self) -> str:
        """One line: ``source: at offset 0x..: message``, leaving out what is unknown."""
        parts = []
        if self.source:
            parts.append(str(self.source))
        if self.offset is not None:
            parts.append(f"at offset {self.offset:#x}")
        parts.append(self.message)
        return ": ".join(parts)

    def __str__(self) -> str:
        return self.describe()


class CorruptError(VcbfsError, ValueError):
    """An on-disk structure is malformed, truncated or points outside its file."""

    errno = _errno.EIO


class ChainError(CorruptError):
    """A delta chain is inconsistent: a CID mismatch, a cycle, a missing or too deep parent."""


class UnsupportedError(VcbfsError, NotImplementedError):
    """A valid structure that vcbfs recognises but cannot read (RDM, LDM, an unknown extent)."""

    errno = _errno.EOPNOTSUPP


class UnavailableError(VcbfsError, OSError):
    """A file whose content vcbfs cannot give faithfully: it lives outside the volume (a Data
    Deduplication, cloud or HSM stub, a WIM-backed file) or only the guest can decrypt it (EFS).

    Reading it fails (EIO) rather than returning its empty or sparse $DATA as the content."""

    errno = _errno.EIO


class NotFoundError(VcbfsError, FileNotFoundError):
    """A file, URL, partition or path that does not exist."""

    errno = _errno.ENOENT


class NotADirectory(VcbfsError, NotADirectoryError):
    """A path goes through something that is not a directory."""

    errno = _errno.ENOTDIR


class AccessDeniedError(VcbfsError, PermissionError):
    """The server or the file system refused access (HTTP 401/403, EACCES)."""

    errno = _errno.EACCES


class ReadError(VcbfsError, OSError):
    """Reading the bytes failed: I/O error, lost connection after retries, short file."""

    errno = _errno.EIO


class OutOfRangeError(VcbfsError, ValueError):
    """A caller asked for bytes outside a source (a negative offset or length)."""

    errno = _errno.EINVAL


class VsphereError(VcbfsError, RuntimeError):
    """vCenter or ESXi refused or failed a request: a fault, a failed task, no connection."""

    errno = _errno.EIO
