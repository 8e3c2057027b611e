"""Copy a whole byte source to a file descriptor, fast: chunks are read and written in parallel.

Reading (``pread``, inflating grains, HTTPS) and writing both release the GIL, so a few worker
threads keep the disk, the network and zlib busy.  Into a regular file each worker writes its own
chunk with ``pwrite`` and holes are left unwritten (the copy stays sparse); into a pipe or a tape
the caller writes finished chunks in order and holes as zeros.  Flat data of a local file goes
file to file in the kernel (``copy_file_range``) without passing through Python at all.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from vcbfs.blocks.source import ByteSource

__all__ = ["copy_to_fd", "is_seekable_file"]

# Measured on a cold 1 GiB image (2 cores, virtio disk): 1 MiB chunks with 4 readers beat
# 4 MiB chunks or 1-2 readers by 1.2-3x; more readers or larger chunks gain nothing.
CHUNK = 1 << 20
WORKERS = 4
AHEAD = 16  # chunks read ahead of the writer: bounds memory to AHEAD * CHUNK
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def is_seekable_file(fd: int) -> bool:
    """True for a regular file we may write at offsets in (``>>`` appends: not that)."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return False
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False
    return True


def _chunks(source: ByteSource, chunk: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, allocated) pieces of at most ``chunk`` bytes, aligned to ``chunk``."""
    for span in source.spans():
        pos, end = span.offset, span.end
        if not span.allocated:
            yield pos, span.length, False
            continue
        while pos < end:
            n = min(chunk - pos % chunk, end - pos)
            yield pos, n, True
            pos += n


def copy_to_fd(
    source: ByteSource,
    fd: int,
    *,
    sparse: bool | None = None,
    chunk: int = CHUNK,
    workers: int = WORKERS,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write all of ``source`` to ``fd`` from its current position; return the bytes copied.

    ``sparse`` (default: when ``fd`` is a regular file) leaves holes unwritten.
    """
    if sparse is None:
        sparse = is_seekable_file(fd)
    base = os.lseek(fd, 0, os.SEEK_CUR) if sparse else 0
    zeros = memoryview(bytes(chunk))
    done = 0
    pending: deque[tuple[int, int, Future[bytes | None] | None]] = deque()

    kernel_copy = True

    def read_and_write(pos: int, n: int) -> None:
        nonlocal kernel_copy
        where = source.direct(pos, n) if kernel_copy else None
        if where is not None:
            try:
                _copy_range(where[0], where[1], fd, base + pos, n)
                return
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel_copy = False  # not between these file systems: copy through memory
        data = memoryview(source.read_at(pos, n))
        at = base + pos
        while data:
            written = os.pwrite(fd, data, at)
            data, at = data[written:], at + written

    def write_one() -> None:
        nonlocal done
        _pos, n, fut = pending.popleft()
        if fut is None:  # a hole
            if not sparse:
                left = n
                while left:
                    _write_all(fd, zeros[: min(left, chunk)])
                    left -= min(left, chunk)
        else:
            data = fut.result()
            if data is not None:
                _write_all(fd, data)
        done += n
        if progress is not None:
            progress(done)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vcbfs-copy") as pool:
        try:
            for pos, n, allocated in _chunks(source, chunk):
                fut: Future[bytes | None] | None = None
                if allocated:
                    job = read_and_write if sparse else source.read_at
                    fut = pool.submit(job, pos, n)
                pending.append((pos, n, fut))
                while len(pending) > AHEAD:
                    write_one()
            while pending:
                write_one()
        finally:
            for _pos, _n, fut in pending:
                if fut is not None:
                    fut.cancel()
    if sparse:
        os.ftruncate(fd, base + done)
        os.lseek(fd, base + done, os.SEEK_SET)
    return done


def _copy_range(src: int, src_at: int, dst: int, dst_at: int, n: int) -> None:
    while n > 0:
        done = os.copy_file_range(src, dst, n, src_at, dst_at)
        if done <= 0:
            raise OSError(errno.EINVAL, "copy_file_range made no progress")
        src_at, dst_at, n = src_at + done, dst_at + done, n - done


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
