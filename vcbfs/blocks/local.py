"""Local files and block devices as byte sources (``pread``), and their locations.

This is the SAN/NFS route of VCB: a datastore mounted on the proxy, or any image file.  Holes in
sparse local files are reported through ``SEEK_DATA``/``SEEK_HOLE`` where the file system has them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

from vcbfs.blocks.confine import Box, open_file
from vcbfs.blocks.pagecache import Mapper
from vcbfs.blocks.source import Buffer, ByteSource, Location, Span
from vcbfs.errors import ReadError

__all__ = ["LocalLocation", "LocalSource", "open_local"]

_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


class LocalSource(ByteSource):
    """A local file or block device read with ``pread``; the size is fixed at open.

    Without a box the path is one the user named, and may be a block device; with one, it is a
    name found in a VM file, opened only beneath the box and only if it is a regular file."""

    def __init__(self, path: str | os.PathLike[str], box: Box | None = None):
        self.name = os.fspath(path)
        self._fd = open_file(self.name, box, devices=box is None)
        try:
            self.size = os.lseek(self._fd, 0, os.SEEK_END)
        except BaseException:
            os.close(self._fd)
            raise
        self._nowait = bool(_RWF_NOWAIT)  # cleared if the file system refuses RWF_NOWAIT
        self._mapper = Mapper(self._fd)

    def _read(self, offset: int, n: int) -> bytes:
        try:
            data = os.pread(self._fd, n, offset)
            if len(data) == n:
                return data
            parts = [data]
            got = len(data)
            while got < n:
                more = os.pread(self._fd, n - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        except OSError as exc:
            raise ReadError(exc.strerror or str(exc), source=self.name, offset=offset) from None

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        """The bytes if the page cache holds all of them: a large read as a view of them
        (``pagecache``), a small one copied (``preadv`` with ``RWF_NOWAIT``, which also starts
        the kernel's readahead of what is missing)."""
        if not self._nowait:
            return None
        view = self._mapper.view(offset, n)
        if view is not None:
            return view
        buf = bytearray(n)
        try:
            got = os.preadv(self._fd, (buf,), offset, _RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._nowait = False  # not on this file system: always read in a thread
            return None  # a real error is read_at's to report
        return buf if got == n else None

    def spans(self, offset: int = 0, length: int | None = None) -> Iterator[Span]:
        start, end = self._clip(offset, length)
        pos = start
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                    data = end
                elif exc.errno == errno.EINVAL:  # no SEEK_DATA here (a device, old fs)
                    yield Span(pos, end - pos, True)
                    return
                else:
                    raise ReadError(
                        exc.strerror or str(exc), source=self.name, offset=pos
                    ) from None
            data = min(data, end)
            if data > pos:
                yield Span(pos, data - pos, False)
            if data >= end:
                return
            try:
                hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), end)
            except OSError:
                hole = end
            yield Span(data, hole - data, True)
            pos = hole

    def direct(self, offset: int, n: int) -> tuple[int, int] | None:
        if offset < 0 or n < 0 or offset + n > self.size or self._fd < 0:
            return None
        return self._fd, offset

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class LocalLocation(Location):
    """A path on this machine; siblings resolve against its directory, inside its box.

    The first location is the file the user named; its box (by default the directory holding
    it) bounds every name its files lead to (see ``confine``)."""

    def __init__(self, path: str | os.PathLike[str], box: Box | None = None, *, named: bool = True):
        self.path = Path(path)
        self.name = os.fspath(path)
        self.box = box if box is not None else Box.around(path)
        self._named = named  # named by the user: opened as given (a block device too)

    def open(self) -> ByteSource:
        return LocalSource(self.path, None if self._named else self.box)

    def sibling(self, name: str) -> Location:
        directory = os.path.dirname(os.path.realpath(self.path) if self._named else self.name)
        path = self.box.resolve(directory, name, self.name)
        return LocalLocation(path, self.box, named=False)

    def read_small(self, limit: int) -> bytes:
        """The whole file, if it holds at most ``limit`` bytes (a .vmx, an .nvram)."""
        with self.open() as source:
            if source.size > limit:
                raise ReadError(f"{source.size} bytes is larger than {limit}", source=self.name)
            return bytes(source.read_at(0, source.size))


def open_local(path: str | os.PathLike[str]) -> LocalSource:
    """Open a local file (or block device) the user named as a byte source."""
    return LocalSource(path)
