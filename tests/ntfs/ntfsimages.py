"""A reference NTFS volume built with ntfs-3g, and ntfs-3g's reading of it (the manifest).

``build_ntfs_image(root)`` makes ``volume.img``: a bare NTFS volume (no partition table, 512 MiB,
512-byte sectors, 4 KiB clusters, label ``VCBFS-TEST``) made by ``mkntfs`` and populated with
``ntfscp`` (the big file, first, on the fresh volume) and through an ``ntfs-3g`` mount, so that it
holds the cases an NTFS reader gets wrong: thousands of files, a 20,000-entry directory, files
with hundreds of runs, $ATTRIBUTE_LIST files, LZNT1-compressed and sparse files, named streams,
hard links, real symlinks and junctions (raw reparse data), Unicode and case-only-different names,
resident files, odd timestamps.  ``NtfsImage`` names the notable paths (relative POSIX paths
inside the volume) so tests need not hard-code them.

``reference_manifest(image)`` mounts an image read-only with ntfs-3g and records, for every
path: type, size, sha256, times, MFT record number, link count, NTFS attribute bits, symlink
target, reparse data and named streams.  The builder stores it as ``manifest.json`` beside the
image: the independent answer our reader must match.

The image is built once and cached in ``<cache>/ntfs-<hash of this file>`` (``<cache>`` as in
``tests.images.cache_dir``): editing this file rebuilds it.  Tests must treat it as read-only.
``build.json`` beside it records the build timings and what sleuthkit found in it.

ntfs-3g facts this builder relies on (2022.10.3, measured; see also /work/shared/notes):

- ntfs-3g's cluster allocator keeps files apart (each new allocation leaves 4096 free clusters
  after it for the file to grow), so interleaved appends on an empty volume stay contiguous.
  Fragmented files are made on an almost full volume (a filler file, deleted afterwards), where
  interleaved appends leapfrog each other cluster by cluster.  So most free clusters of the
  volume hold 0xA5 bytes, not zeros: a reader that takes holes or uninitialized tails from the
  disk returns garbage.
- sleuthkit 4.11's ``istat`` rejects a sparse run longer than the volume (``sparse/far.bin``:
  "Run length is larger than file system"); ``ntfsinfo -v -i`` shows that runlist.
- Windows-style absolute symlinks (``\\??\\C:\\...``) and junctions are shown by ntfs-3g as
  symlinks to ``<mountpoint>/.NTFS-3G/C:/...`` (or ``<mountpoint>/...`` when the target exists on
  the volume); the manifest writes the mount point as ``<mnt>``.  A symlink whose substitute
  name is ``C:\\...`` without ``\\??\\`` and without the relative flag is not a valid Windows
  link: ntfs-3g shows it as a symlink to ``unsupported reparse tag 0xa000000c``.
- Reading ``system.ntfs_reparse_data`` into a buffer that is too small fails with EIO instead of
  ERANGE (Python's ``os.getxattr`` starts with 128 bytes), so xattrs are read with ``lgetxattr``
  asking for the size first.
- After ``setxattr system.ntfs_reparse_data`` the kernel's cached inode keeps the old type and
  stat fails with EIO until the volume is mounted again.
- ``streams_interface=xattr`` cannot carry streams over 64 KiB (the kernel's xattr limit), so
  large streams are written, and all streams read, through a ``streams_interface=windows``
  mount (``file:stream``).
- ntfs-3g reports times before 1970 with the fraction dropped (the seconds are truncated toward
  zero and tv_nsec is forced to 0); ``ntfs_times`` in the manifest keeps the exact NTFS values.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.images import build_once, cache_dir, run

__all__ = [
    "MANIFEST_EXCLUDED",
    "NtfsImage",
    "build_ntfs_image",
    "fls_listing",
    "istat",
    "istat_runs",
    "ntfs3g_mounted",
    "ntfs_cache_dir",
    "ntfs_time_to_ns",
    "ntfsinfo_runs",
    "reference_manifest",
    "sha256_file",
]

log = logging.getLogger(__name__)

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
CLUSTER = 4096
SECTOR = 512
VOLUME_SIZE = 512 * MIB
LABEL = "VCBFS-TEST"

IO_REPARSE_TAG_SYMLINK = 0xA000000C
IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
SYMLINK_FLAG_RELATIVE = 1

FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_SPARSE_FILE = 0x200
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
FILE_ATTRIBUTE_COMPRESSED = 0x800

#: Names in the root directory that the manifest leaves out: the NTFS metafiles (which ntfs-3g
#: hides anyway), the root's own entry "." and Windows' ``System Volume Information`` (not made
#: here).  The walk leaves out any root name starting with "$" as well.
MANIFEST_EXCLUDED = (
    "$MFT",
    "$MFTMirr",
    "$LogFile",
    "$Volume",
    "$AttrDef",
    ".",
    "$Bitmap",
    "$Boot",
    "$BadClus",
    "$Secure",
    "$UpCase",
    "$Extend",
    "System Volume Information",
)
#: The mount point in symlink targets of the manifest.
MNT = "<mnt>"
NTFS_EPOCH_OFFSET = 116444736000000000  # 100 ns units from 1601-01-01 to 1970-01-01

_KEY = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def ntfs_cache_dir() -> Path:
    """The image's cache folder: beside ``cache_dir(...)``, keyed by this file's hash only."""
    return cache_dir("ntfs").with_name(f"ntfs-{_KEY}")


def ntfs_time_to_ns(value: int) -> int:
    """An NTFS time (100 ns units since 1601) as ns since the Unix epoch, floored exactly."""
    return (value - NTFS_EPOCH_OFFSET) * 100


# --- what the volume holds ------------------------------------------------------------------

TREE_DIRS = 300
TREE_FILES = 3000
HUGE_ENTRIES = 20_000
HARD_LINKS = 200
MANY_STREAMS = 100
DEEP_LEVELS = 30
FRAG_CHUNKS = {"frag-a.bin": 500, "frag-b.bin": 300, "frag-c.bin": 100}
COMB_CLUSTERS = 600  # data in every other cluster of sparse/comb.bin

#: ``mtime``/``atime`` (ns since 1970) set on the files under times/.
TIMES = {
    "times/y1999.txt": (946728000_000000000, 946684799_123456700),  # 2000-01-01 / 1999-12-31
    "times/pre-1970.txt": (-300000000_000000000, -300000000_123456700),  # 1960-06-30
    "times/y2200.txt": (7258118400_000000000, 7258118400_000000100),  # 2200-01-01
}
TIMES_DIR_MTIME_NS = 1_000_000_000_000000000  # 2001-09-09, set on times/ itself

SYMLINK_TARGET_FILE = "data/file.txt"
#: (path, tag, substitute name, print name, relative flag, is a directory)
REPARSE_POINTS: tuple[tuple[str, int, str, str, bool, bool], ...] = (
    # What mklink writes for an absolute link: \??\ + the DOS path, print name without it.
    (
        "reparse/abs-link.txt",
        IO_REPARSE_TAG_SYMLINK,
        "\\??\\C:\\Users\\Public\\target.txt",
        "C:\\Users\\Public\\target.txt",
        False,
        False,
    ),
    # A bare DOS path with no relative flag: not what Windows writes; ntfs-3g rejects it.
    (
        "reparse/abs-link-bare.txt",
        IO_REPARSE_TAG_SYMLINK,
        "C:\\Users\\Public\\target.txt",
        "C:\\Users\\Public\\target.txt",
        False,
        False,
    ),
    (
        "reparse/rel-link.txt",
        IO_REPARSE_TAG_SYMLINK,
        "..\\data\\file.txt",
        "..\\data\\file.txt",
        True,
        False,
    ),
    # Absolute, to a file that exists on this volume (ntfs-3g resolves C: to the volume).
    (
        "reparse/abs-same-volume.txt",
        IO_REPARSE_TAG_SYMLINK,
        "\\??\\C:\\data\\file.txt",
        "C:\\data\\file.txt",
        False,
        False,
    ),
    ("reparse/dir-link", IO_REPARSE_TAG_SYMLINK, "..\\data", "..\\data", True, True),
    (
        "reparse/junction-windows",
        IO_REPARSE_TAG_MOUNT_POINT,
        "\\??\\C:\\Windows",
        "C:\\Windows",
        False,
        True,
    ),
    (
        "reparse/junction-data",
        IO_REPARSE_TAG_MOUNT_POINT,
        "\\??\\C:\\data",
        "C:\\data",
        False,
        True,
    ),
)


@dataclasses.dataclass(frozen=True)
class NtfsImage:
    """The built volume and where its notable contents are (POSIX paths relative to its root)."""

    path: Path  # volume.img: the bare NTFS volume
    manifest_path: Path  # manifest.json: reference_manifest() of the image
    root: Path  # the cache folder holding both (and build.json)
    label: str = LABEL
    volume_size: int = VOLUME_SIZE
    cluster_size: int = CLUSTER
    sector_size: int = SECTOR
    big_file: str = "bench/big.bin"  # 64 MiB random, contiguous (ntfscp on the fresh volume)
    big_file_size: int = 64 * MIB
    tree_dir: str = "tree"  # 3,000 files in 300 directories, up to 4 levels below tree/
    tree_files: int = TREE_FILES
    tree_dirs: int = TREE_DIRS  # counting tree/ itself
    huge_dir: str = "huge"  # 20,000 entries (mostly empty files)
    huge_dir_entries: int = HUGE_ENTRIES
    # Hundreds of runs each; the runlists of the first two go on in extension records.
    fragmented: tuple[str, ...] = tuple(f"fragmented/{n}" for n in FRAG_CHUNKS)
    attr_list_links: str = "attrlist/many-links.bin"  # 201 names: needs an $ATTRIBUTE_LIST
    attr_list_links_dir: str = "attrlist/links"  # its 200 extra names (long)
    attr_list_streams: str = "attrlist/many-streams.bin"  # 100 named streams: $ATTRIBUTE_LIST
    compressed_dir: str = "compressed"  # FILE_ATTRIBUTE_COMPRESSED: files in it are LZNT1
    compressed_text: str = "compressed/text.txt"  # 1 MiB + 333 bytes of repeated text
    compressed_random: str = "compressed/random.bin"  # 300 KiB random: units stored raw
    compressed_mixed: str = "compressed/mixed.bin"  # 64 KiB units alternately text / random
    compressed_sparse: str = "compressed/sparse.bin"  # compressed and sparse (holes)
    compressed_small: str = "compressed/small.txt"  # resident: not compressed at all
    compressed_unit: str = "compressed/exact-unit.txt"  # exactly one 64 KiB compression unit
    compressed_inherited: str = "compressed/sub/inherited.txt"  # in a subdirectory
    sparse_file: str = "sparse/far.bin"  # 1 MiB at 0 and 1 MiB at 2 GiB, sparse in between
    sparse_comb: str = "sparse/comb.bin"  # 600 one-cluster runs between 599 holes
    sparse_empty: str = "sparse/all-hole.bin"  # 10 MiB, no data at all (initialized size 0)
    streams_file: str = "streams/with-streams.txt"  # unnamed data plus the streams below
    streams: tuple[str, ...] = ("empty", "small", "Zone.Identifier", "medium", "large")
    large_stream: str = "large"  # 200 KiB, non-resident (written through the windows mount)
    streams_dir: str = "streams/dir-with-stream"  # a directory with a named stream
    streams_only: str = "streams/only-streams.bin"  # empty unnamed data, one stream
    hard_links: tuple[tuple[str, ...], ...] = (
        ("links/a/original.txt", "links/b/second-name.txt", "links/c/third-name.txt"),
        ("links/a/pair.bin", "links/b/pair-link.bin"),
    )
    symlink_target_file: str = SYMLINK_TARGET_FILE
    symlink_abs: str = "reparse/abs-link.txt"
    symlink_abs_bare: str = "reparse/abs-link-bare.txt"
    symlink_rel: str = "reparse/rel-link.txt"
    symlink_same_volume: str = "reparse/abs-same-volume.txt"
    dir_symlink: str = "reparse/dir-link"
    junction: str = "reparse/junction-windows"
    junction_same_volume: str = "reparse/junction-data"
    unicode_cjk: str = "unicode/日本語.txt"
    unicode_emoji: str = "unicode/🎉party.txt"  # outside the BMP: a surrogate pair in UTF-16
    unicode_latin: str = "unicode/Café-naïve-Ångström.txt"
    unicode_dir_file: str = "unicode/目录/文件.txt"
    case_pair: tuple[str, str] = ("unicode/case/Readme.TXT", "unicode/case/README.txt")
    long_name: str = "unicode/" + "n" * 251 + ".txt"  # 255 UTF-16 units
    long_cjk_name: str = "unicode/" + "長" * 85  # 85 units, 255 bytes of UTF-8
    trailing_dot: str = "unicode/trailing-dot."  # legal in the POSIX namespace only
    trailing_space: str = "unicode/trailing-space "
    deep_file: str = (
        "deep/"
        + "/".join(f"level-{i:02d}-abcdefgh" for i in range(1, DEEP_LEVELS + 1))
        + "/deep.txt"
    )
    empty_file: str = "sizes/empty.bin"
    empty_dir: str = "sizes/empty-dir"
    cluster_file: str = "sizes/cluster-4096.bin"
    cluster_plus_one_file: str = "sizes/cluster-4097.bin"
    tiny_files: tuple[str, ...] = (
        "sizes/tiny-1.bin",
        "sizes/tiny-100.bin",
        "sizes/tiny-600.bin",
    )
    old_time_file: str = "times/y1999.txt"
    pre_epoch_file: str = "times/pre-1970.txt"
    future_time_file: str = "times/y2200.txt"
    times_dir: str = "times"

    @functools.cached_property
    def manifest(self) -> dict[str, Any]:
        """The parsed manifest.json (see ``reference_manifest``)."""
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        """Manifest entries: relative path ('.' for the root) -> what ntfs-3g reports."""
        return self.manifest["entries"]

    @property
    def build_info(self) -> dict[str, Any]:
        """build.json: build timings and sleuthkit's findings (inodes, run counts)."""
        return json.loads((self.root / "build.json").read_text(encoding="utf-8"))


# --- ntfs-3g mounts and xattrs ---------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.lgetxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.lgetxattr.restype = ctypes.c_ssize_t


def lgetxattr(path: str | os.PathLike[str], name: str) -> bytes:
    """An xattr of ``path`` (not following symlinks), asking ntfs-3g for its size first."""
    p, n = os.fsencode(path), name.encode()
    for _ in range(3):
        size = _libc.lgetxattr(p, n, None, 0)
        if size < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fsdecode(p))
        buf = ctypes.create_string_buffer(max(size, 1))
        got = _libc.lgetxattr(p, n, buf, max(size, 1))
        if got >= 0:
            return buf.raw[:got]
        err = ctypes.get_errno()
        if err not in (34, 5):  # ERANGE, or ntfs-3g's EIO for too small a buffer: value grew
            raise OSError(err, os.strerror(err), os.fsdecode(p))
    raise OSError(5, "xattr size keeps changing", os.fsdecode(p))


def _attrib(path: str | os.PathLike[str]) -> int:
    return int.from_bytes(lgetxattr(path, "system.ntfs_attrib_be"), "big")


@contextlib.contextmanager
def ntfs3g_mounted(image: Path, *options: str) -> Iterator[Path]:
    """Mount ``image`` with ntfs-3g (``-o no_detach`` + options) on a temporary folder.

    ntfs-3g runs in the background; on exit the folder is unmounted, the process waited for
    (it flushes the volume before exiting) and the folder removed, also on failure.
    """
    opts = ",".join(("no_detach", *options))
    mnt = Path(tempfile.mkdtemp(prefix="vcbfs-ntfs3g-"))
    try:
        with tempfile.TemporaryFile(prefix="vcbfs-ntfs3g-err-") as errfile:

            def stderr() -> str:
                errfile.seek(0)
                return errfile.read().decode(errors="replace").strip()

            proc = subprocess.Popen(
                ["ntfs-3g", "-o", opts, os.fspath(image), os.fspath(mnt)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errfile,
            )
            mounted = False
            try:
                deadline = time.monotonic() + 30
                while not (mounted := os.path.ismount(mnt)):
                    if proc.poll() is not None:
                        raise RuntimeError(f"ntfs-3g -o {opts} failed: {stderr()}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"ntfs-3g -o {opts}: no mount after 30 s: {stderr()}")
                    time.sleep(0.005)
                yield mnt
            finally:
                _unmount(mnt, proc, stderr, mounted)
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()


def _unmount(
    mnt: Path, proc: subprocess.Popen[bytes], stderr: Callable[[], str], mounted: bool
) -> None:
    """Unmount (retrying while busy, lazily as a last resort) and wait for ntfs-3g to exit."""
    if not mounted and proc.poll() is None:
        proc.terminate()  # the mount never appeared: nothing to flush
    for attempt in range(50):
        if not os.path.ismount(mnt):
            break
        if subprocess.run(["umount", mnt], capture_output=True, check=False).returncode == 0:
            break
        if attempt == 49:
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        time.sleep(0.1)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"ntfs-3g did not exit after umount: {stderr()}") from None


# --- sleuthkit ---------------------------------------------------------------------------------


def istat(image: Path, inode: int, runs: bool = False) -> str:
    """sleuthkit's ``istat`` of one MFT record (``-r``: runs instead of cluster lists)."""
    return run("istat", *(["-r"] if runs else []), image, str(inode))


def istat_runs(text: str, attr: str = "$DATA (128-") -> list[tuple[int, int, bool]]:
    """The runs ``istat -r`` lists under the first attribute whose header contains ``attr``.

    Returns (start cluster or -1, length, sparse) per run; for an attribute split over several
    records (attribute list) istat lists the whole runlist under one header.
    """
    out: list[tuple[int, int, bool]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("Type: "):
            if inside:
                break
            inside = attr in line
        elif inside and "Starting address:" in line:
            start = line.split("Starting address:")[1].split(",")[0].strip()
            length = int(line.split("length:")[1].split()[0])
            sparse = "Sparse" in line
            out.append((-1 if sparse else int(start), length, sparse))
    return out


def fls_listing(image: Path) -> list[tuple[str, int, int, int, str]]:
    """``fls -r -p`` of the image as (type, inode, attribute type, attribute id, path) rows.

    Deleted entries are left out; a named stream shows as ``path:name`` (attribute type 128).
    """
    rows = []
    for line in run("fls", "-r", "-p", image).splitlines():
        meta, _, path = line.partition(":\t")
        if not path:
            continue
        kind, _, addr = meta.partition(" ")
        if addr.startswith("*") or kind.startswith("-") or "realloc" in addr:
            continue  # deleted, or a stale name of a reused record
        parts = addr.strip().split("-")
        if len(parts) == 3:
            inode, atype, aid = (int(x) for x in parts)
        else:
            inode, atype, aid = int(parts[0]), 0, 0
        rows.append((kind, inode, atype, aid, path))
    return rows


def ntfsinfo_runs(image: Path, inode: int) -> list[tuple[int, int | None, int]]:
    """(vcn, lcn or None for a hole, length) of the unnamed $DATA, as ``ntfsinfo -v`` dumps it."""
    out = run("ntfsinfo", "-v", "-i", str(inode), image)
    section = out.split("Dumping attribute $DATA (0x80)", 1)[1].split("Dumping attribute", 1)[0]
    if "Name length:\t\t 0 " not in section:
        raise RuntimeError(f"ntfsinfo: the first $DATA of {inode} is not the unnamed one")
    runs = []
    for line in section.split("Runlist:", 1)[1].splitlines()[1:]:
        fields = line.split()
        if len(fields) != 3 or not fields[0].startswith("0x"):
            break
        vcn, lcn, length = fields
        runs.append((int(vcn, 16), None if lcn == "<HOLE>" else int(lcn, 16), int(length, 16)))
    return runs


# --- reparse data ------------------------------------------------------------------------------


def symlink_reparse_data(substitute: str, print_name: str, relative: bool) -> bytes:
    """An IO_REPARSE_TAG_SYMLINK buffer, print name first: readers must follow the offsets."""
    sub, prn = substitute.encode("utf-16-le"), print_name.encode("utf-16-le")
    body = struct.pack(
        "<HHHHI",
        len(prn),  # substitute name offset
        len(sub),
        0,  # print name offset
        len(prn),
        SYMLINK_FLAG_RELATIVE if relative else 0,
    )
    body += prn + sub
    return struct.pack("<IHH", IO_REPARSE_TAG_SYMLINK, len(body), 0) + body


def mount_point_reparse_data(substitute: str, print_name: str) -> bytes:
    """An IO_REPARSE_TAG_MOUNT_POINT (junction) buffer: names NUL-terminated, substitute first."""
    sub, prn = substitute.encode("utf-16-le"), print_name.encode("utf-16-le")
    body = struct.pack("<HHHH", 0, len(sub), len(sub) + 2, len(prn))
    body += sub + b"\0\0" + prn + b"\0\0"
    return struct.pack("<IHH", IO_REPARSE_TAG_MOUNT_POINT, len(body), 0) + body


def reparse_data(tag: int, substitute: str, print_name: str, relative: bool) -> bytes:
    if tag == IO_REPARSE_TAG_SYMLINK:
        return symlink_reparse_data(substitute, print_name, relative)
    return mount_point_reparse_data(substitute, print_name)


# --- the reference walk ------------------------------------------------------------------------


def _excluded(name: str) -> bool:
    return name.startswith("$") or name in MANIFEST_EXCLUDED


def sha256_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256) of a file's content, read in 1 MiB pieces."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MIB):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def _describe(mnt: Path, rel: str) -> dict[str, Any]:
    p = mnt / rel if rel != "." else mnt
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    attributes = _attrib(p)
    entry: dict[str, Any] = {
        "type": kind,
        "size": st.st_size,
        "allocated": st.st_blocks * 512,
        "mode": st.st_mode,
        "ino": st.st_ino,
        "nlink": st.st_nlink,
        "mtime_ns": st.st_mtime_ns,
        "atime_ns": st.st_atime_ns,
        "ctime_ns": st.st_ctime_ns,
        # creation, last data change (mtime), last access (atime), MFT change (st_ctime)
        "ntfs_times": list(struct.unpack("<4Q", lgetxattr(p, "system.ntfs_times"))),
        "attributes": attributes,
    }
    if kind == "file":
        size, digest = sha256_file(p)
        if size != st.st_size:
            raise RuntimeError(f"{rel}: read {size} bytes, stat says {st.st_size}")
        entry["sha256"] = digest
    if kind == "symlink":
        target = os.readlink(p)
        prefix = os.fspath(mnt) + "/"
        entry["target"] = MNT + "/" + target[len(prefix) :] if target.startswith(prefix) else target
    if attributes & FILE_ATTRIBUTE_REPARSE_POINT:
        entry["reparse"] = lgetxattr(p, "system.ntfs_reparse_data").hex()
    # Named streams: user.NAME under streams_interface=xattr (contents read in a second pass).
    # The kernel refuses user.* xattrs on symlinks, so reparse points get none here.
    if kind != "symlink":
        names = [n[5:] for n in os.listxattr(p, follow_symlinks=False) if n.startswith("user.")]
        entry["streams"] = {name: None for name in sorted(names)}
    return entry


def reference_manifest(image: Path) -> dict[str, Any]:
    """ntfs-3g's reading of ``image`` (mounted read-only), as a JSON-able dict.

    ``entries`` maps every path (POSIX, relative to the root; '.' is the root; NTFS metafiles
    and ``System Volume Information`` in the root are left out: ``excluded_at_root`` lists
    them, and any other root name starting with "$" would be left out too) to:

    - ``type``: file, dir or symlink (reparse points ntfs-3g shows as symlinks, junctions and
      directory symlinks included; their ``attributes`` keep FILE_ATTRIBUTE_DIRECTORY);
    - ``size``, ``allocated`` (st_blocks * 512), ``mode``, ``sha256`` (files);
    - ``ino`` (ntfs-3g's st_ino: the MFT record number), ``nlink``;
    - ``mtime_ns``, ``atime_ns``, ``ctime_ns`` as ntfs-3g's stat reports them (st_ctime is the
      MFT record change time, not the creation time) and ``ntfs_times``: the raw
      [creation, data change, access, MFT change] times in 100 ns units since 1601;
    - ``attributes``: the NTFS file attribute bits (system.ntfs_attrib_be);
    - ``target`` (symlinks): readlink, with the mount point replaced by ``<mnt>``;
    - ``reparse`` (reparse points): the raw reparse data, hex;
    - ``streams`` (files and dirs): named stream -> {size, sha256}.
    """
    image = Path(image)
    entries: dict[str, dict[str, Any]] = {}
    with ntfs3g_mounted(image, "ro", "streams_interface=xattr") as mnt:
        stack = ["."]
        while stack:
            rel = stack.pop()
            entry = entries[rel] = _describe(mnt, rel)
            if entry["type"] == "dir":
                base = mnt / rel if rel != "." else mnt
                for name in os.listdir(base):
                    if rel == "." and _excluded(name):
                        continue
                    stack.append(name if rel == "." else f"{rel}/{name}")
        statvfs = os.statvfs(mnt)
    with ntfs3g_mounted(image, "ro", "streams_interface=windows") as mnt:
        for rel, entry in entries.items():
            for name in entry.get("streams", {}):
                base = os.fspath(mnt / rel) if rel != "." else os.fspath(mnt)
                size, digest = sha256_file(Path(f"{base}:{name}"))
                entry["streams"][name] = {"size": size, "sha256": digest}
    return {
        "format": 1,
        "reader": "ntfs-3g -o ro,streams_interface=xattr (streams read with =windows)",
        "excluded_at_root": list(MANIFEST_EXCLUDED),
        "mount_placeholder": MNT,
        "volume": {
            "label": run("ntfslabel", image).strip(),
            "size": image.stat().st_size,
            "cluster_size": statvfs.f_frsize,
            "clusters": statvfs.f_blocks,
            "free_clusters": statvfs.f_bfree,
        },
        "entries": dict(sorted(entries.items())),
    }


# --- the builder -------------------------------------------------------------------------------

_LOREM = (
    b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    b"incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
    b"exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.\n"
)


def _text(size: int, salt: int = 0) -> bytes:
    line = b"%08d " % salt + _LOREM
    return (line * (size // len(line) + 1))[:size]


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)


def _touch(path: Path) -> None:
    os.mknod(path, 0o644 | stat.S_IFREG)


def _tree_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.40:
        return rng.randrange(0, 700)  # resident
    if r < 0.70:
        return rng.randrange(700, 8 * KIB)
    if r < 0.90:
        return rng.randrange(8 * KIB, 64 * KIB)
    if r < 0.99:
        return rng.randrange(64 * KIB, 128 * KIB)
    return rng.randrange(128 * KIB, MIB)


def _populate_tree(mnt: Path, rng: random.Random) -> None:
    level1 = [f"tree/dir-{i:02d}" for i in range(10)]
    level2 = [f"{d}/sub-{j}" for d in level1 for j in range(5)]
    level3 = [f"{d}/leaf-{k}" for d in level2 for k in range(3)]
    level4 = [f"{d}/deeper" for d in level3[: TREE_DIRS - 1 - 10 - 50 - 150]]
    dirs = ["tree", *level1, *level2, *level3, *level4]
    assert len(dirs) == TREE_DIRS
    for d in dirs:
        (mnt / d).mkdir()
    exts = (".txt", ".log", ".dat", ".bin", ".cfg", "")
    for n in range(TREE_FILES):
        d = dirs[n % TREE_DIRS]
        name = f"Report {n:04d}.docx" if n % 97 == 0 else f"file-{n:04d}{rng.choice(exts)}"
        size = _tree_size(rng)
        data = _text(size, n) if n % 3 == 0 else rng.randbytes(size)
        _write(mnt / d / name, data)


def _populate_huge(mnt: Path) -> None:
    d = mnt / "huge"
    d.mkdir()
    suffix = "abcdefghijklmnopqrstuvwxyz"
    for i in range(HUGE_ENTRIES):
        name = f"item-{i:05d}-{suffix[: i % 27]}"
        if i % 1000 == 0:
            _write(d / name, _text(100, i))
        else:
            _touch(d / name)


def _populate_attrlists(mnt: Path, img: NtfsImage, rng: random.Random) -> None:
    (mnt / img.attr_list_links_dir).mkdir(parents=True)
    target = mnt / img.attr_list_links
    _write(target, rng.randbytes(10 * KIB))
    for i in range(HARD_LINKS):
        os.link(target, mnt / img.attr_list_links_dir / (f"hard-link-{i:03d}-" + "L" * 200))
    many = mnt / img.attr_list_streams
    _write(many, b"unnamed data of a file with 100 named streams\n")
    for i in range(MANY_STREAMS):
        os.setxattr(many, f"user.stream-{i:03d}", _text(64 + 2 * i, i))


def _populate_compressed(mnt: Path, img: NtfsImage, rng: random.Random) -> None:
    d = mnt / img.compressed_dir
    d.mkdir()
    os.setxattr(d, "system.ntfs_attrib_be", (0x810).to_bytes(4, "big"))
    _write(mnt / img.compressed_text, _text(MIB + 333))
    _write(mnt / img.compressed_random, rng.randbytes(300 * KIB))
    unit = 64 * KIB  # the compression unit: 16 clusters
    mixed = b"".join(
        _text(unit, i) if i % 2 == 0 else rng.randbytes(unit) for i in range(16)
    ) + _text(10_000, 99)
    _write(mnt / img.compressed_mixed, mixed)
    with open(mnt / img.compressed_sparse, "xb") as f:
        f.truncate(4 * MIB + 1234)
        f.seek(0)
        f.write(_text(unit + 5000, 1))
        f.seek(2 * MIB)
        f.write(_text(100 * KIB, 2))
        f.seek(3 * MIB + 7)
        f.write(rng.randbytes(3 * KIB))
    _write(mnt / img.compressed_small, _text(100))
    _write(mnt / img.compressed_unit, _text(unit, 3))
    (d / "sub").mkdir()
    _write(mnt / img.compressed_inherited, _text(200 * KIB, 4))


def _populate_sparse(mnt: Path, img: NtfsImage, rng: random.Random) -> None:
    (mnt / "sparse").mkdir()
    with open(mnt / img.sparse_file, "xb") as f:
        f.truncate(2 * GIB + MIB)
        f.seek(0)
        f.write(rng.randbytes(MIB))
        f.seek(2 * GIB)
        f.write(rng.randbytes(MIB))
    fd = os.open(mnt / img.sparse_comb, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    try:
        for i in range(COMB_CLUSTERS):
            os.pwrite(fd, rng.randbytes(CLUSTER), 2 * i * CLUSTER)
    finally:
        os.close(fd)
    with open(mnt / img.sparse_empty, "xb") as f:
        f.truncate(10 * MIB)


def _populate_streams(mnt: Path, img: NtfsImage, rng: random.Random) -> None:
    (mnt / img.streams_dir).mkdir(parents=True)
    f = mnt / img.streams_file
    _write(f, b"the unnamed data stream\n")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user.small", b"hello, stream")
    os.setxattr(f, "user.Zone.Identifier", b"[ZoneTransfer]\r\nZoneId=3\r\n")
    os.setxattr(f, "user.medium", rng.randbytes(60 * KIB))  # non-resident, under 64 KiB
    os.setxattr(mnt / img.streams_dir, "user.dirstream", b"a stream on a directory\n")
    _touch(mnt / img.streams_only)
    os.setxattr(mnt / img.streams_only, "user.only", _text(3000))


def _populate_links(mnt: Path, img: NtfsImage) -> None:
    for d in ("links/a", "links/b", "links/c"):
        (mnt / d).mkdir(parents=True)
    for i, names in enumerate(img.hard_links):
        _write(mnt / names[0], _text(5000 + i, i))
        for other in names[1:]:
            os.link(mnt / names[0], mnt / other)


def _populate_reparse(mnt: Path) -> dict[str, bytes]:
    (mnt / "data").mkdir()
    _write(mnt / SYMLINK_TARGET_FILE, b"the target of the symlinks\n")
    (mnt / "reparse").mkdir()
    made = {}
    for path, tag, sub, prn, relative, is_dir in REPARSE_POINTS:
        p = mnt / path
        if is_dir:
            p.mkdir()
        else:
            _touch(p)
        data = reparse_data(tag, sub, prn, relative)
        os.setxattr(p, "system.ntfs_reparse_data", data)
        made[path] = data
    return made


def _populate_names(mnt: Path, img: NtfsImage) -> None:
    (mnt / "unicode/case").mkdir(parents=True)
    (mnt / "unicode/目录").mkdir()
    for path in (
        img.unicode_cjk,
        img.unicode_emoji,
        img.unicode_latin,
        img.unicode_dir_file,
        img.long_name,
        img.long_cjk_name,
        img.trailing_dot,
        img.trailing_space,
    ):
        _write(mnt / path, path.encode())
    for path in img.case_pair:
        _write(mnt / path, f"I am {path}\n".encode())
    deep = mnt / img.deep_file
    deep.parent.mkdir(parents=True)
    _write(deep, b"30 levels down\n")


def _populate_sizes(mnt: Path, img: NtfsImage, rng: random.Random) -> None:
    (mnt / img.empty_dir).mkdir(parents=True)
    _touch(mnt / img.empty_file)
    _write(mnt / img.cluster_file, rng.randbytes(CLUSTER))
    _write(mnt / img.cluster_plus_one_file, rng.randbytes(CLUSTER + 1))
    for path in img.tiny_files:
        size = int(path.rsplit("-", 1)[1].split(".")[0])
        _write(mnt / path, rng.randbytes(size))


def _populate_times(mnt: Path) -> None:
    (mnt / "times").mkdir()
    for path, (atime, mtime) in TIMES.items():
        _write(mnt / path, f"{path}\n".encode())
        os.utime(mnt / path, ns=(atime, mtime))
    os.utime(mnt / "times", ns=(TIMES_DIR_MTIME_NS, TIMES_DIR_MTIME_NS))


def _fragment(mnt: Path, img: NtfsImage, rng: random.Random) -> None:
    """Files with hundreds of runs: interleaved appends on an almost full volume.

    With plenty of free space ntfs-3g gives each file room to grow and interleaved appends stay
    contiguous; with all free space in one range, each append's hint is taken by the other
    file's last cluster and the files leapfrog each other.  The filler is deleted afterwards.
    """
    (mnt / "fragmented").mkdir()
    names = list(FRAG_CHUNKS)
    for name in names:
        _touch(mnt / "fragmented" / name)
    chunks = {
        n: [rng.choice((1, 1, 1, 2, 3)) * CLUSTER for _ in range(c)] for n, c in FRAG_CHUNKS.items()
    }
    for n in names:
        chunks[n][-1] -= rng.randrange(1, CLUSTER)  # a partial last cluster
    need = sum(-(-sum(c) // CLUSTER) for c in chunks.values())
    keep_free = need + 256
    filler = mnt / "fragmented" / "filler"
    free = os.statvfs(mnt).f_bfree
    block = b"\xa5" * MIB
    with open(filler, "xb", buffering=0) as f:
        left = (free - keep_free) * CLUSTER
        while left > 0:
            left -= f.write(block[: min(left, MIB)])
    fds = {n: os.open(mnt / "fragmented" / n, os.O_WRONLY | os.O_APPEND) for n in names}
    try:
        for i in range(max(FRAG_CHUNKS.values())):
            for n in names:
                if i < len(chunks[n]):
                    os.write(fds[n], rng.randbytes(chunks[n][i]))
    finally:
        for fd in fds.values():
            os.close(fd)
    filler.unlink()


def _check_reparse(mnt: Path, made: dict[str, bytes]) -> None:
    for path, data in made.items():
        p = mnt / path
        if lgetxattr(p, "system.ntfs_reparse_data") != data:
            raise RuntimeError(f"{path}: reparse data did not read back")
        if not stat.S_ISLNK(os.lstat(p).st_mode):
            raise RuntimeError(f"{path}: ntfs-3g does not show the reparse point as a symlink")


def _sleuthkit_facts(image: Path, img: NtfsImage, manifest: dict[str, Any]) -> dict[str, Any]:
    """What istat says about the tricky records; raises if the builder missed its aim."""
    entries = manifest["entries"]
    facts: dict[str, Any] = {}
    for path in (img.attr_list_links, img.attr_list_streams, *img.fragmented, img.sparse_comb):
        ino = entries[path]["ino"]
        text = istat(image, ino, runs=True)
        runs = istat_runs(text)
        facts[path] = {
            "ino": ino,
            "attribute_list": "$ATTRIBUTE_LIST (32-" in text,
            "data_runs": len([r for r in runs if not r[2]]),
            "sparse_runs": len([r for r in runs if r[2]]),
        }
    for path in (img.attr_list_links, img.attr_list_streams):
        if not facts[path]["attribute_list"]:
            raise RuntimeError(f"{path}: istat shows no $ATTRIBUTE_LIST")
    for path in img.fragmented:
        if facts[path]["data_runs"] < 50:
            raise RuntimeError(f"{path}: only {facts[path]['data_runs']} runs")
    return facts


def build_ntfs_image(root: Path) -> NtfsImage:
    """Build (once) the reference NTFS volume and its manifest in ``root``; see the module doc.

    Concurrent callers wait on a lock; the volume is built in a sibling folder and renamed.
    """
    root = Path(root)
    img = NtfsImage(path=root / "volume.img", manifest_path=root / "manifest.json", root=root)
    timings: dict[str, float] = {}
    if build_once(root, lambda work: timings.update(_build(work, img))):
        log.info("ntfs image built in %.1f s: %s", sum(timings.values()), timings)
    return img


def _build(work: Path, img: NtfsImage) -> dict[str, float]:
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 3)
        clock = now

    image = work / img.path.name
    rng = random.Random(20261125)
    with open(image, "wb") as f:
        f.truncate(VOLUME_SIZE)
    run("mkntfs", "-F", "-Q", "-s", str(SECTOR), "-c", str(CLUSTER), "-L", LABEL, image)
    big = work / "big.host"
    big.write_bytes(rng.randbytes(img.big_file_size))
    run("ntfscp", image, big, "big.bin")
    big.unlink()
    lap("mkntfs+ntfscp")

    with ntfs3g_mounted(image, "streams_interface=xattr") as mnt:
        (mnt / "bench").mkdir()
        (mnt / "big.bin").rename(mnt / img.big_file)
        _populate_tree(mnt, rng)
        lap("tree")
        _populate_huge(mnt)
        lap("huge")
        _populate_attrlists(mnt, img, rng)
        lap("attrlists")
        _populate_compressed(mnt, img, rng)
        _populate_sparse(mnt, img, rng)
        _populate_streams(mnt, img, rng)
        _populate_links(mnt, img)
        made = _populate_reparse(mnt)
        _populate_names(mnt, img)
        _populate_sizes(mnt, img, rng)
        _populate_times(mnt)
        lap("small cases")
        _fragment(mnt, img, rng)
        lap("fragmented")
    lap("umount")
    with ntfs3g_mounted(image, "streams_interface=windows") as mnt:
        with open(f"{mnt / img.streams_file}:{img.large_stream}", "xb") as f:
            f.write(rng.randbytes(200 * KIB))
        _check_reparse(mnt, made)
    lap("large stream")
    manifest = reference_manifest(image)
    lap("manifest")
    facts = _sleuthkit_facts(image, img, manifest)
    lap("istat")
    with open(work / img.manifest_path.name, "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=0)
    info = {"timings_s": timings, "total_s": round(sum(timings.values()), 3), "istat": facts}
    (work / "build.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
    return timings
