"""How a file's named streams (alternate data streams) are shown: as xattrs, or beside it.

POSIX has no named streams, so the mount shows each as an extended attribute ``user.NAME``
where one can carry it, and otherwise as a regular file ``FILE:STREAM`` listed beside the file
(a stream no agent would ever ask for by name is a stream no backup keeps).  What an xattr can
carry is set by Linux: a value of at most 64 KiB (XATTR_SIZE_MAX), a name of at most 255 bytes
(XATTR_NAME_MAX), a list of names of at most 64 KiB (XATTR_LIST_MAX), and ``user.*`` only on
regular files and directories, so every stream of a link goes beside it.  A stream named like
one of the Windows-metadata xattrs goes beside its file too, as does one whose name holds NUL
(which ends an xattr's name), and a WOF file's
WofCompressedData is its content, not a stream.  The catalog counts the streams shown beside
their files (``count_beside``), so the backup's own record says how many took that form.

A name ``FILE:STREAM`` longer than a Linux file name may be (NAME_MAX, 255 bytes) could be
listed but never restored by an agent, so it is cut to fit and made unique with a hash
(``beside_name``); the entry then carries its whole name as ``user.ntfs_stream_name``.
"""

from __future__ import annotations

import hashlib
import re

from vcbfs.errors import VcbfsError
from vcbfs.ntfs import wof
from vcbfs.ntfs.volume import FIRST_USER_RECORD, NtfsVolume

__all__ = [
    "META_XATTRS",
    "NAME_MAX",
    "XATTR_SIZE_MAX",
    "beside_name",
    "count_beside",
    "is_cut",
    "stream_forms",
]

XATTR_SIZE_MAX = 65536
XATTR_NAME_MAX = 255
XATTR_LIST_MAX = 65536
NAME_MAX = 255  # bytes of one file name on Linux file systems (what an agent can create)
#: The Windows metadata every file and directory carries as xattrs (ntfs-3g's names).
META_XATTRS = ("ntfs_attrib_be", "ntfs_acl", "ntfs_times", "ntfs_reparse_data")
_META_LIST = sum(len(f"user.{m}") + 1 for m in META_XATTRS)  # the list room they take


def stream_forms(vol: NtfsVolume, record: int) -> tuple[list[str], list[str]]:
    """The record's streams shown as xattrs ``user.NAME``, and those listed beside it."""
    st = vol.stat(record)
    if not st.has_streams:
        return [], []
    link = st.reparse is not None and st.reparse.is_link
    room = XATTR_LIST_MAX - _META_LIST
    as_xattr: list[str] = []
    beside: list[str] = []
    for stream, size in vol.streams(record):
        if stream == wof.STREAM and vol.is_wof(record):
            continue  # the file's own content, decoded
        name = len(f"user.{stream}".encode("utf-8", "surrogatepass"))
        fits = size <= XATTR_SIZE_MAX and name <= XATTR_NAME_MAX and name + 1 <= room
        if link or stream in META_XATTRS or not fits or "\0" in stream:
            beside.append(stream)
        else:
            as_xattr.append(stream)
            room -= name + 1
    return as_xattr, beside


def count_beside(vol: NtfsVolume) -> tuple[int, int]:
    """(streams listed beside their files, records that could not be read), over the MFT.

    One lean pass over every record (``NtfsVolume.streamed_records``); only records with
    named streams are parsed whole.
    """
    beside = unreadable = 0
    for record in vol.streamed_records(FIRST_USER_RECORD):
        try:
            beside += len(stream_forms(vol, record)[1])
        except VcbfsError:
            unreadable += 1
    return beside, unreadable


def beside_name(file: str, stream: str) -> str:
    """The name a stream is listed under beside its file: ``FILE:STREAM``, or, when that is
    longer than NAME_MAX bytes as listed, its start and ``~`` and 12 hex digits of its
    SHA-256 (a name ``is_cut`` knows)."""
    full = f"{file}:{stream}"
    if sum(map(_shown_len, full)) <= NAME_MAX:
        return full
    tag = "~" + hashlib.sha256(full.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    room = NAME_MAX - len(tag)
    cut = 0
    for ch in full:  # whole characters, unpaired surrogates too
        room -= _shown_len(ch)
        if room < 0:
            break
        cut += 1
    return full[:cut] + tag


def is_cut(name: str) -> bool:
    """Whether ``name`` has the form of a name ``beside_name`` cut."""
    return _CUT.search(name) is not None


_CUT = re.compile("~[0-9a-f]{12}\\Z")


def _shown_len(ch: str) -> int:
    """The bytes a character of a name takes as the mount lists it (see vcbfs/fs/names.py:
    '/' and NUL are shown as 3-byte private-use characters, those as 4 bytes)."""
    if ch in "/\0":
        return 3
    if ch in "\uf000\uf02e\uf02f":
        return 4
    return len(ch.encode("utf-8", "surrogatepass"))
