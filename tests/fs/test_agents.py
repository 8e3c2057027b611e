"""Real backup agents over a real vcbfs mount of the fidelity volume (see tests/ntfs).

rsync -aHAX, GNU tar --xattrs --acls, GNU cp -a and restic (twice, over two versions of the
volume at one mount point) copy ``MNT/digits/1`` into tmpfs (which keeps user.* and trusted.*
xattrs of any size).  What this proves, each against the mount itself (whose content is first
checked against the fidelity manifest, big.bin's 4 GiB included):

- every agent meets every file it cannot read and says so: its error lines name exactly the
  manifest's "eio" files (stubs, EFS, corrupt WOF, WIM-backed WOF), nothing else, and its exit
  status is its "some files could not be read" one;
- everything else arrives whole: every path, its type, mode, mtime, size, sha256, symlink
  target, hard links (one inode in the copy for the names of one file) and xattrs (names and
  values; trusted.* of links as root), streams over 64 KiB as ``FILE:STREAM`` files;
- restic's second backup, of a changed copy of the volume mounted at the same mount point,
  re-reads only what changed (stable inodes and times), ``restic diff`` reports exactly the
  changes made, and a restore equals the second version's mount;
- no xattr is listed that getxattr then refuses, for root and for an unprivileged user (who is
  shown no trusted.*).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import posixpath
import random
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fs.test_mount import vcbfs
from tests.ntfs.fidelityimages import FidelityImage
from tests.ntfs.ntfsimages import ntfs3g_mounted, sha256_file
from vcbfs.vm.streams import beside_name

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (trusted.* xattrs, setpriv)"),
]

CHUNK = 1 << 20
XATTR_MAX = 65536  # larger streams are listed beside their file as FILE:STREAM
XATTR_NAME_MAX = 255
SHM = Path("/dev/shm")  # tmpfs: user.* and trusted.* xattrs of any size (ext4 limits them)
SHM_NEEDED = 5 << 30  # one copy at a time: big.bin (4 GiB) is written out whole by most agents
NOBODY = 65534
AGENT_TIMEOUT = 900
#: The agents' messages in UTF-8, whatever the caller's locale.
AGENT_ENV = {**os.environ, "LC_ALL": "C.UTF-8"}


# --- the mount ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _mounted(source: Path, mnt: Path, *options: str) -> Iterator[Path]:
    """``vcbfs mount [options] SOURCE MNT``; yields the volume's root, ``MNT/digits/1``."""
    vcbfs("mount", *options, str(source), str(mnt))
    try:
        assert os.path.ismount(mnt)
        yield mnt / "digits" / "1"
    finally:
        if os.path.ismount(mnt):
            vcbfs("umount", str(mnt))


@contextlib.contextmanager
def _open_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new directory under ``parent``, removed (with whatever is in it) afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def mnt(fidelity_image: FidelityImage) -> Iterator[Path]:
    """The fidelity volume mounted (``-o allow_other``) on a folder anyone may pass through;
    yields the volume's root."""
    base = Path(tempfile.mkdtemp(prefix="vcbfs-agents-"))
    try:
        base.chmod(0o755)
        (base / "mnt").mkdir()
        with _mounted(fidelity_image.path, base / "mnt", "-o", "allow_other") as root:
            yield root
    finally:
        with contextlib.suppress(OSError):
            (base / "mnt").rmdir()
            base.rmdir()


# --- trees described ----------------------------------------------------------------------------


@dataclasses.dataclass
class Node:
    """What an agent should carry over of one path."""

    kind: str  # "dir", "file", "symlink" or "other"
    mode: int  # permission bits
    mtime_ns: int
    ino: int
    size: int | None = None  # files
    sha256: str | None = None  # files read whole
    error: int | None = None  # errno of reading a file
    target: str | None = None  # symlinks
    xattrs: dict[str, bytes] = dataclasses.field(default_factory=dict)
    xattr_error: int | None = None


def _node(path: str) -> Node:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    else:
        kind = "other"
    node = Node(kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_ino)
    if kind == "file":
        node.size = st.st_size
        try:
            read, node.sha256 = sha256_file(path)
            if read != st.st_size:
                node.sha256 = f"read {read} bytes of {st.st_size}"
        except OSError as exc:
            node.error = exc.errno
    elif kind == "symlink":
        node.target = os.readlink(path)
    try:
        node.xattrs = {
            name: os.getxattr(path, name, follow_symlinks=False)
            for name in os.listxattr(path, follow_symlinks=False)
        }
    except OSError as exc:
        node.xattr_error = exc.errno
    return node


def _describe(root: Path) -> dict[str, Node]:
    """Every path under ``root`` ("." for root itself), links not followed, files read."""

    def fail(exc: OSError) -> None:
        raise exc

    out = {".": _node(str(root))}
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            out[rel] = _node(os.path.join(dirpath, name))
    return out


@pytest.fixture(scope="module")
def source(mnt: Path) -> dict[str, Node]:
    """The mounted volume described: every file read through the mount once."""
    return _describe(mnt)


def _kind(entry: dict[str, Any]) -> str:
    return {"dir": "dir", "symlink": "symlink", "junction": "symlink"}.get(entry["kind"], "file")


def _beside(name: str, size: int) -> bool:
    """Whether a stream cannot be an xattr: over 64 KiB, or ``user.NAME`` over 255 bytes."""
    return size > XATTR_MAX or len(f"user.{name}".encode()) > XATTR_NAME_MAX


def _listed(path: str, stream: str) -> str:
    return posixpath.join(posixpath.dirname(path), beside_name(posixpath.basename(path), stream))


def _stream_entries(image: FidelityImage) -> dict[str, dict[str, Any]]:
    """The listed name (``FILE:STREAM``, cut to NAME_MAX with a hash where longer) -> {size,
    sha256} for every stream the manifest says cannot be an xattr."""
    return {
        _listed(path, name): s
        for path, e in image.entries.items()
        for name, s in e.get("streams", {}).items()
        if _beside(name, s["size"])
    }


def _too_long_names(image: FidelityImage) -> set[str]:
    """The listed names of the streams whose name is too long for an xattr name."""
    return {
        _listed(path, name)
        for path, e in image.entries.items()
        for name in e.get("streams", {})
        if len(f"user.{name}".encode()) > XATTR_NAME_MAX
    }


def _eio(image: FidelityImage) -> set[str]:
    return set(image.paths(expect="eio"))


def _compare(
    source: dict[str, Node],
    copy: dict[str, Node],
    leave_out: set[str],
    xattrs_kept: Callable[[Node], bool] = lambda node: True,
) -> list[str]:
    """How ``copy`` differs from ``source`` (paths in ``leave_out`` may differ or be absent);
    ``xattrs_kept(source_node)``: whether the agent is meant to keep that path's xattrs."""
    problems = []
    for rel, want in sorted(source.items()):
        if rel in leave_out:
            continue
        got = copy.get(rel)
        if got is None:
            problems.append(f"{rel!r}: missing from the copy")
            continue
        fields = ["kind", "mode", "mtime_ns", "size", "sha256", "target", "xattr_error"]
        diffs = [
            f"{f} {getattr(got, f)!r} != {getattr(want, f)!r}"
            for f in fields
            if getattr(got, f) != getattr(want, f)
        ]
        if xattrs_kept(want) and got.xattrs != want.xattrs:
            diffs.append(f"xattrs {_xattr_diff(got.xattrs, want.xattrs)}")
        if diffs:
            problems.append(f"{rel!r}: " + "; ".join(diffs))
    problems += [f"{rel!r}: in the copy, not on the mount" for rel in sorted(copy.keys() - source)]
    # Hard links: the names of one file are one inode in the copy, and only they.
    both = [
        rel
        for rel, node in source.items()
        if node.kind == "file" and rel not in leave_out and rel in copy
    ]
    by_source: dict[int, list[str]] = defaultdict(list)
    by_copy: dict[int, list[str]] = defaultdict(list)
    for rel in both:
        by_source[source[rel].ino].append(rel)
        by_copy[copy[rel].ino].append(rel)
    groups = {frozenset(g) for g in by_source.values()}
    problems += [
        f"hard links differ: {sorted(g)} are one file in the copy"
        for g in {frozenset(g) for g in by_copy.values()} - groups
    ]
    problems += [
        f"hard links differ: {sorted(g)} are one file on the mount"
        for g in groups - {frozenset(g) for g in by_copy.values()}
    ]
    return problems


def _xattr_diff(got: dict[str, bytes], want: dict[str, bytes]) -> str:
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    differ = sorted(n for n in want.keys() & got.keys() if want[n] != got[n])
    return f"(missing {missing}, extra {extra}, other values {differ})"


# --- what the agents said -----------------------------------------------------------------------


@dataclasses.dataclass
class Said:
    """An agent's stderr read: paths it named (relative to the volume's root) with what it said
    of them, and lines that are neither such errors nor its closing summary."""

    named: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    other: list[str] = dataclasses.field(default_factory=list)

    def name(self, rel: str, line: str) -> None:
        self.named[rel].append(line)


_C_ESCAPE = re.compile(rb"\\(?:([0-7]{3})|x([0-9a-fA-F]{2})|(.))", re.DOTALL)
_SIMPLE = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"a": b"\a", b"b": b"\b", b"f": b"\f"}
_SIMPLE |= {b"v": b"\v", b"\\": b"\\", b"'": b"'", b'"': b'"', b"?": b"?"}


def _unescape_c(text: str) -> str:
    """C-style escapes (tar's default quoting, cp's ``$'...'``) decoded, bytes as UTF-8."""

    def one(m: re.Match[bytes]) -> bytes:
        if m[1]:
            return bytes([int(m[1], 8)])
        if m[2]:
            return bytes([int(m[2], 16)])
        return _SIMPLE.get(m[3], b"\\" + m[3])

    raw = _C_ESCAPE.sub(one, text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def _relative(path: str, *roots: Path) -> str:
    """``path`` relative to the first of ``roots`` it is under (it must be under one)."""
    norm = os.path.normpath(path)
    for root in roots:
        rel = os.path.relpath(norm, root)
        if rel != ".." and not rel.startswith("../"):
            return rel
    raise ValueError(f"{path!r} is under none of {roots}")


def _unescape_rsync(text: str) -> str:
    """rsync writes a byte it will not print as ``\\#ooo``."""
    raw = re.sub(
        rb"\\#([0-7]{3})",
        lambda m: bytes([int(m[1], 8)]),
        text.encode("utf-8", "surrogateescape"),
    )
    return raw.decode("utf-8", "surrogateescape")


_RSYNC_PATH = re.compile(r'^rsync: \[\w+\] .*?"(.+)": .* \(\d+\)$')
_RSYNC_DISCARDED = re.compile(r"^ERROR: (.+) failed verification -- update discarded\.$")
_RSYNC_CODE = re.compile(r"^rsync error: .* \(code \d+\) at \S+ \[\w+=[\d.]+\]$")


def _rsync_said(stderr: str, src: Path, dest: Path) -> Said:
    said = Said()
    for line in filter(None, stderr.split("\n")):
        try:
            if m := _RSYNC_PATH.match(line):
                said.name(_relative(_unescape_rsync(m[1]), src, dest), line)
                continue
            if m := _RSYNC_DISCARDED.match(line):
                said.name(os.path.normpath(_unescape_rsync(m[1])), line)
                continue
        except ValueError:
            pass
        if not _RSYNC_CODE.match(line):
            said.other.append(line)
    return said


# A read across a bad WOF chunk goes through the page cache: it returns the good pages first (a
# short read), then EIO.  GNU tar takes the short read for a file that shrank, pads it with zeros
# and says so ("File shrank by N bytes"): that line names the unreadable file too.
_TAR_READ_ERROR = re.compile(
    r"^tar: (.+): (Cannot open: .+|Read error at byte \d+, while reading \d+ bytes?: .+"
    r"|File shrank by \d+ bytes?; padding with zeros)$"
)
_TAR_EXIT = "tar: Exiting with failure status due to previous errors"


def _tar_said(stderr: str) -> Said:
    said = Said()
    for line in filter(None, stderr.split("\n")):
        if m := _TAR_READ_ERROR.match(line):
            said.name(os.path.normpath(_unescape_c(m[1])), line)
        elif line != _TAR_EXIT:
            said.other.append(line)
    return said


# cp quotes names for the shell: '...' pieces, "'" for a quote, $'...' with C escapes.
_CP_PIECE = re.compile(r"'([^']*)'|\"'\"|\$'((?:\\.|[^'\\])*)'")
_CP_LINE = re.compile(r"^cp: [a-z][a-z ]*? ((?:'[^']*'|\"'\"|\$'(?:\\.|[^'\\])*')+)(?:\s|:)")


def _cp_unquote(token: str) -> str:
    out = []
    for m in _CP_PIECE.finditer(token):
        if m[1] is not None:
            out.append(m[1])
        elif m[2] is not None:
            out.append(_unescape_c(m[2]))
        else:
            out.append("'")
    return "".join(out)


def _cp_said(stderr: str, src: Path, dest: Path) -> Said:
    said = Said()
    for line in filter(None, stderr.split("\n")):
        try:
            if m := _CP_LINE.match(line):
                said.name(_relative(_cp_unquote(m[1]), src, dest), line)
                continue
        except ValueError:
            pass
        said.other.append(line)
    return said


_RESTIC_WARNING = "Warning: at least one source file could not be read"


def _restic_said(stderr: str, cwd: Path, root: Path) -> Said:
    """``restic backup --json``: an error is a JSON line naming its ``item``."""
    said = Said()
    for line in filter(None, stderr.split("\n")):
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        if isinstance(msg, dict) and msg.get("message_type") == "error" and msg.get("item"):
            try:
                said.name(_relative(os.path.join(cwd, msg["item"]), root), line)
                continue
            except ValueError:
                pass
        if line != _RESTIC_WARNING:
            said.other.append(line)
    return said


def _check_said(
    agent: str,
    said: Said,
    eio: set[str],
    source: dict[str, Node],
    copy: dict[str, Node] | None,
) -> list[str]:
    """The agent named exactly the unreadable files, and said nothing else."""
    problems = [f"{agent} said: {line}" for line in said.other]
    problems += [
        f"{agent} named {rel!r}, which is readable: {said.named[rel]}"
        for rel in sorted(said.named.keys() - eio)
    ]
    for rel in sorted(eio - said.named.keys()):
        want = source.get(rel)
        got = (copy or {}).get(rel)
        # An agent that does not open an empty file (GNU tar) cannot meet its EIO; the copy then
        # holds all the file is: nothing, with its metadata (its reparse data among the xattrs).
        if (
            want is not None
            and want.size == 0
            and got is not None
            and (got.kind, got.size, got.xattrs) == ("file", 0, want.xattrs)
        ):
            continue
        problems.append(f"{agent} did not name {rel!r}, which cannot be read")
    return problems


# --- the agents ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One agent's pass over the mount: how it exited, what it said, and what it made."""

    agent: str
    returncode: int
    stderr: str
    seconds: float
    said: Said
    copy: dict[str, Node]  # the copy (or restore) described
    streams: dict[str, tuple[int, str]]  # FILE:STREAM -> (size, sha256) in the copy or archive
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/setup installs them)")


def _run(
    argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[bytes], float]:
    start = time.monotonic()
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env or AGENT_ENV,
        capture_output=True,
        timeout=AGENT_TIMEOUT,
        check=False,
    )
    return done, time.monotonic() - start


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@pytest.fixture(scope="module")
def shm() -> Path:
    """tmpfs for the copies, with room for one of them (they are made and dropped in turn)."""
    if not SHM.is_dir():
        pytest.skip(f"no {SHM}")
    free = shutil.disk_usage(SHM).free
    if free < SHM_NEEDED:
        pytest.skip(f"{SHM} has {free >> 20} MiB free, the copies need {SHM_NEEDED >> 20} MiB")
    return SHM


def _streams_in(copy: dict[str, Node], image: FidelityImage) -> dict[str, tuple[int, str]]:
    return {
        rel: (copy[rel].size or 0, copy[rel].sha256 or "")
        for rel in _stream_entries(image)
        if rel in copy
    }


@pytest.fixture(scope="module")
def rsync_run(mnt: Path, shm: Path, fidelity_image: FidelityImage) -> Run:
    """``rsync -aHAX MNT/digits/1/ DEST/``."""
    _need("rsync")
    with _open_dir(shm, "vcbfs-rsync-") as dest:
        done, seconds = _run(["rsync", "-aHAX", f"{mnt}/", f"{dest}/"])
        stderr = _text(done.stderr)
        copy = _describe(dest)
        said = _rsync_said(stderr, mnt, dest)
    streams = _streams_in(copy, fidelity_image)
    return Run("rsync", done.returncode, stderr, seconds, said, copy, streams)


def _tar_streams(archive: Path, wanted: set[str]) -> dict[str, tuple[int, str]]:
    """The archive's members that are ``wanted`` paths: (size, sha256) of their data."""
    out = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            rel = os.path.normpath(member.name)
            if rel in wanted and member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                out[rel] = (member.size, hashlib.sha256(f.read()).hexdigest())
    return out


@pytest.fixture(scope="module")
def tar_run(
    mnt: Path, shm: Path, fidelity_image: FidelityImage, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """``tar --xattrs --acls -cf ARCHIVE -C MNT/digits/1 .``, extracted with
    ``--xattrs --xattrs-include='*'`` into tmpfs (the archive itself on disk)."""
    _need("tar")
    archive = tmp_path_factory.mktemp("tar") / "volume.tar"
    try:
        done, seconds = _run(
            ["tar", "--xattrs", "--acls", "-cf", str(archive), "-C", str(mnt), "."]
        )
        stderr = _text(done.stderr)
        with _open_dir(shm, "vcbfs-tar-") as dest:
            extract, extract_seconds = _run(
                ["tar", "--xattrs", "--xattrs-include=*", "-xf", str(archive), "-C", str(dest)]
            )
            copy = _describe(dest)
        streams = _tar_streams(archive, set(_stream_entries(fidelity_image)))
        notes = {
            "archive_bytes": archive.stat().st_size,
            "extract_returncode": extract.returncode,
            "extract_stderr": _text(extract.stderr),
            "extract_seconds": extract_seconds,
        }
    finally:
        archive.unlink(missing_ok=True)
    return Run("tar", done.returncode, stderr, seconds, _tar_said(stderr), copy, streams, notes)


@pytest.fixture(scope="module")
def cp_run(mnt: Path, shm: Path, fidelity_image: FidelityImage) -> Run:
    """``cp -a MNT/digits/1/. DEST``."""
    _need("cp")
    with _open_dir(shm, "vcbfs-cp-") as dest:
        done, seconds = _run(["cp", "-a", f"{mnt}/.", str(dest)])
        stderr = _text(done.stderr)
        copy = _describe(dest)
        said = _cp_said(stderr, mnt, dest)
    streams = _streams_in(copy, fidelity_image)
    return Run("cp", done.returncode, stderr, seconds, said, copy, streams)


# --- restic over two versions of the volume -----------------------------------------------------

#: The changes that make version 2 (none touches a WOF file, a stub or an EFS file).
MODIFIED = "plain/size-700.bin"
ADDED = "plain/added.txt"
DELETED = "plain/size-4095.bin"
SMALL_STREAM = ("names/naïve café.txt", "added")  # fits an xattr: user.added
BIG_STREAM = ("plain/size-1.bin", "big2")  # 100 KiB: listed as plain/size-1.bin:big2
BIG_STREAM_ENTRY = f"{BIG_STREAM[0]}:{BIG_STREAM[1]}"


def _make_version2(image: FidelityImage, folder: Path) -> tuple[Path, dict[str, bytes]]:
    """A changed copy of the volume (through ntfs-3g) and the new data: path -> content (and
    ``user.added`` -> the small stream)."""
    for path in (MODIFIED, DELETED, SMALL_STREAM[0], BIG_STREAM[0]):
        e = image.entry(path)
        assert e["kind"] == "plain" and e["expect"] == "data" and not e.get("streams"), path
    assert ADDED not in image.entries and BIG_STREAM_ENTRY not in image.entries
    v2 = folder / "volume.img"
    subprocess.run(["cp", "--sparse=always", str(image.path), str(v2)], check=True)
    rng = random.Random(2)
    new = {
        MODIFIED: rng.randbytes(5000),
        ADDED: b"a file added in version 2\n",
        BIG_STREAM_ENTRY: rng.randbytes(100 * 1024),
        f"user.{SMALL_STREAM[1]}": b"a small stream added in version 2",
    }
    with ntfs3g_mounted(v2, "streams_interface=windows") as m:
        (m / MODIFIED).write_bytes(new[MODIFIED])
        (m / ADDED).write_bytes(new[ADDED])
        (m / DELETED).unlink()
        with open(f"{m / SMALL_STREAM[0]}:{SMALL_STREAM[1]}", "xb") as f:
            f.write(new[f"user.{SMALL_STREAM[1]}"])
        with open(f"{m / BIG_STREAM_ENTRY}", "xb") as f:
            f.write(new[BIG_STREAM_ENTRY])
    return v2, new


@dataclasses.dataclass
class ResticRun:
    backups: list[Run]  # version 1, version 2 (version 2's ``copy``: its mount, described)
    summaries: list[dict[str, Any]]  # each backup's JSON summary
    new: dict[str, bytes]  # version 2's new data
    check: subprocess.CompletedProcess[bytes]
    restore: Run  # ``copy``: the restore of version 2
    diff: list[tuple[str, str]]  # (modifier, path) of ``restic diff``
    diff_metadata: list[tuple[str, str]]  # ... of ``restic diff --metadata``
    prefix: str  # where the volume's root is in a snapshot
    devices: list[int]  # st_dev of the two mounts


def _restic_changes(out: bytes) -> list[tuple[str, str]]:
    changes = []
    for line in filter(None, _text(out).split("\n")):
        msg = json.loads(line)
        if msg.get("message_type") == "change":
            changes.append((msg["modifier"], msg["path"]))
    return sorted(changes)


@pytest.fixture(scope="module")
def restic_run(
    shm: Path, fidelity_image: FidelityImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ResticRun]:
    """Version 1 and version 2 of the volume backed up in turn from ONE mount point (so that
    the second backup has the first as its parent), then checked, diffed and restored."""
    _need("restic", "ntfs-3g")
    tmp = tmp_path_factory.mktemp("restic")
    v2, new = _make_version2(fidelity_image, tmp)
    env = {
        **AGENT_ENV,
        "RESTIC_PASSWORD": "vcbfs-test",
        "RESTIC_REPOSITORY": str(tmp / "repo"),
        "RESTIC_CACHE_DIR": str(tmp / "cache"),
    }

    def restic(
        *args: str, cwd: Path | None = None
    ) -> tuple[subprocess.CompletedProcess[bytes], float]:
        return _run(["restic", *args], cwd=cwd, env=env)

    done, _ = restic("init")
    assert done.returncode == 0, _text(done.stderr)
    mnt = tmp / "mnt"  # the same mount point for both versions
    mnt.mkdir()
    backups, summaries, snapshots, devices = [], [], [], []
    for image in (fidelity_image.path, v2):
        with _mounted(image, mnt) as root:
            # From inside the mount: the snapshot holds /digits/1/...
            done, seconds = restic("backup", "--json", "digits/1", cwd=mnt)
            stderr = _text(done.stderr)
            lines = [json.loads(x) for x in _text(done.stdout).split("\n") if x.startswith("{")]
            summary = next((x for x in lines if x.get("message_type") == "summary"), None)
            assert summary is not None, f"restic backup exited {done.returncode}: {stderr}"
            summaries.append(summary)
            snapshots.append(summary["snapshot_id"])
            said = _restic_said(stderr, mnt, root)
            devices.append(os.stat(root).st_dev)
            # Version 1 is the module's mount (``source``): only version 2 is read here.
            mount = _describe(root) if image == v2 else {}
        backups.append(Run("restic", done.returncode, stderr, seconds, said, mount, {}))
    prefix = "/digits/1"
    # The large streams as the first snapshot holds them (restic dump: no restore needed).
    for rel in _stream_entries(fidelity_image):
        dump, _ = restic("dump", snapshots[0], f"{prefix}/{rel}")
        if dump.returncode == 0:
            backups[0].streams[rel] = (len(dump.stdout), hashlib.sha256(dump.stdout).hexdigest())
    check, _ = restic("check")
    diff, _ = restic("diff", "--json", *snapshots)
    diff_metadata, _ = restic("diff", "--json", "--metadata", *snapshots)
    with _open_dir(shm, "vcbfs-restic-") as dest:
        done, seconds = restic("restore", snapshots[1], "--target", str(dest))
        stderr = _text(done.stderr)
        restored = (
            _describe(dest / prefix.lstrip("/")) if (dest / prefix.lstrip("/")).is_dir() else {}
        )
    restore = Run("restic restore", done.returncode, stderr, seconds, Said(), restored, {})
    yield ResticRun(
        backups,
        summaries,
        new,
        check,
        restore,
        _restic_changes(diff.stdout),
        _restic_changes(diff_metadata.stdout),
        prefix,
        devices,
    )
    shutil.rmtree(tmp, ignore_errors=True)


# --- the tests ----------------------------------------------------------------------------------


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_mount_matches_manifest(source: dict[str, Node], fidelity_image: FidelityImage) -> None:
    """The reference the agents are held to: the mount is the manifest (big.bin's 4 GiB read
    and hashed here, once), every large stream listed beside its file, every small one an
    xattr, and the unreadable files listed with their size, reading them EIO."""
    entries = fidelity_image.entries
    beside = _stream_entries(fidelity_image)
    assert _too_long_names(fidelity_image), "a stream whose name is too long for an xattr"
    problems = []
    want_paths = {".", *entries, *beside}
    problems += [f"{p!r}: not on the mount" for p in sorted(want_paths - source.keys())]
    problems += [
        f"{p!r}: on the mount, not in the manifest" for p in sorted(source.keys() - want_paths)
    ]
    for path, e in sorted(entries.items()):
        node = source.get(path)
        if node is None:
            continue
        got: tuple[object, ...] = (node.kind,)
        want: tuple[object, ...] = (_kind(e),)
        if node.kind == "file":
            got += (node.size, node.error, node.sha256)
            if e["expect"] == "eio":
                want += (e["size"], errno.EIO, None)
            else:
                want += (e["size"], None, e.get("sha256", node.sha256))
        for name, s in e.get("streams", {}).items():
            if _beside(name, s["size"]):
                continue
            value = node.xattrs.get(f"user.{name}")
            got += (name, None if value is None else hashlib.sha256(value).hexdigest())
            want += (name, s["sha256"])
        if got != want:
            problems.append(f"{path!r}: {got} != {want}")
    for path, s in sorted(beside.items()):
        node = source.get(path)
        if node is not None and (node.kind, node.size, node.sha256) != (
            "file",
            s["size"],
            s["sha256"],
        ):
            problems.append(f"{path!r}: {node} is not the stream {s}")
    big = source.get(fidelity_image.big_wof)
    assert big is not None and big.sha256 == entries[fidelity_image.big_wof]["sha256"]
    assert not problems, _report(problems)


def _agent_problems(
    run: Run,
    source: dict[str, Node],
    eio: set[str],
    failure_status: int,
    xattrs_kept: Callable[[Node], bool] = lambda node: True,
) -> list[str]:
    problems = _check_said(run.agent, run.said, eio, source, run.copy)
    want_status = failure_status if run.said.named else 0
    if run.returncode != want_status:
        problems.append(f"{run.agent} exited {run.returncode}, not {want_status}")
    problems += _compare(source, run.copy, eio, xattrs_kept)
    return problems


def test_rsync(rsync_run: Run, source: dict[str, Node], fidelity_image: FidelityImage) -> None:
    """rsync -aHAX: exit 23 naming exactly the unreadable files; the rest copied whole."""
    problems = _agent_problems(rsync_run, source, _eio(fidelity_image), 23)
    assert not problems, _report(problems)


def test_tar(tar_run: Run, source: dict[str, Node], fidelity_image: FidelityImage) -> None:
    """tar --xattrs --acls: exit 2 naming exactly the unreadable files; extracted (xattrs
    included), the rest is the mount."""
    problems = _agent_problems(tar_run, source, _eio(fidelity_image), 2)
    notes = tar_run.notes
    if notes["extract_returncode"] or notes["extract_stderr"]:
        problems.append(
            f"tar -x exited {notes['extract_returncode']}: {notes['extract_stderr'].strip()}"
        )
    assert not problems, _report(problems)


def test_cp(cp_run: Run, source: dict[str, Node], fidelity_image: FidelityImage) -> None:
    """cp -a (mode, times, links, xattrs: what --preserve=all keeps): exit 1 naming exactly
    the unreadable files; the rest copied whole."""
    problems = _agent_problems(cp_run, source, _eio(fidelity_image), 1)
    assert not problems, _report(problems)


def test_restic_two_versions(
    restic_run: ResticRun, source: dict[str, Node], fidelity_image: FidelityImage
) -> None:
    """restic over version 1 then version 2 at one mount point: both backups name exactly the
    unreadable files (exit 3); the second re-reads only the changed files; check passes; the
    restore is version 2's mount; diff reports exactly the changes made."""
    r = restic_run
    eio = _eio(fidelity_image)
    problems = []
    for version, run in enumerate(r.backups, 1):
        problems += [
            f"backup {version}: {p}"
            for p in _check_said("restic", run.said, eio, run.copy or source, None)
        ]
        want_status = 3 if run.said.named else 0
        if run.returncode != want_status:
            problems.append(f"backup {version}: restic exited {run.returncode}, not {want_status}")
    v1, v2 = source, r.backups[1].copy

    # Version 2's mount shows the changes, and nothing else changed.
    stream_host, stream = SMALL_STREAM
    seen = {
        MODIFIED: v2[MODIFIED].sha256 if MODIFIED in v2 else None,
        ADDED: v2[ADDED].sha256 if ADDED in v2 else None,
        BIG_STREAM_ENTRY: v2[BIG_STREAM_ENTRY].sha256 if BIG_STREAM_ENTRY in v2 else None,
        f"user.{stream}": v2[stream_host].xattrs.get(f"user.{stream}")
        if stream_host in v2
        else None,
    }
    want = {
        MODIFIED: hashlib.sha256(r.new[MODIFIED]).hexdigest(),
        ADDED: hashlib.sha256(r.new[ADDED]).hexdigest(),
        BIG_STREAM_ENTRY: hashlib.sha256(r.new[BIG_STREAM_ENTRY]).hexdigest(),
        f"user.{stream}": r.new[f"user.{stream}"],
    }
    if seen != want:
        problems.append(f"version 2's mount: {seen} != {want}")
    if DELETED in v2:
        problems.append(f"version 2's mount still lists {DELETED!r}")
    same = set(v1) - {MODIFIED, DELETED, stream_host, BIG_STREAM[0], posixpath.dirname(ADDED)}
    for path in sorted(same):
        differs = _compare({path: v1[path]}, {path: v2[path]} if path in v2 else {}, set())
        problems += [f"version 2's mount: {d}" for d in differs]

    # The second backup read again only what changed: the same paths, inodes and times (ntfs-3g
    # sets a file's times when a stream is added to it: those files changed too).
    readable = [p for p, n in v2.items() if n.kind == "file" and n.error is None]
    changed = {MODIFIED, stream_host, BIG_STREAM[0]}
    added = {ADDED, BIG_STREAM_ENTRY}
    counts = {k: r.summaries[1][k] for k in ("files_new", "files_changed", "files_unmodified")}
    want_counts = {
        "files_new": len(added),
        "files_changed": len(changed),
        "files_unmodified": len(readable) - len(added) - len(changed),
    }
    if counts != want_counts:
        problems.append(f"second backup: {counts} != {want_counts}")

    if r.check.returncode or b"no errors were found" not in r.check.stdout:
        problems.append(f"restic check: {_text(r.check.stdout + r.check.stderr).strip()}")

    # The restore is version 2 (restic 0.14 keeps no xattrs of symlinks: it skips them when
    # backing up, node.fillExtendedAttributes; so a link's trusted.* are not compared).
    restore = r.restore
    if restore.returncode or restore.stderr.strip():
        problems.append(f"restic restore exited {restore.returncode}: {restore.stderr.strip()}")
    problems += [
        f"restore: {p}"
        for p in _compare(v2, restore.copy, eio, lambda node: node.kind != "symlink")
    ]

    # restic diff: exactly the changes made; with --metadata also the files whose streams
    # changed (times, xattrs) and every directory above a change (a directory's node holds its
    # subtree's id).
    p = r.prefix
    want_diff = sorted(
        [
            ("+", f"{p}/{ADDED}"),
            ("+", f"{p}/{BIG_STREAM_ENTRY}"),
            ("-", f"{p}/{DELETED}"),
            ("M", f"{p}/{MODIFIED}"),
        ]
    )
    if r.diff != want_diff:
        problems.append(f"restic diff: {r.diff} != {want_diff}")
    above = set()
    for path in (ADDED, BIG_STREAM_ENTRY, DELETED, MODIFIED, stream_host, BIG_STREAM[0]):
        parts = f"{p}/{path}".strip("/").split("/")[:-1]
        above |= {"/" + "/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1)}
    want_updated = {f"{p}/{stream_host}", f"{p}/{BIG_STREAM[0]}", *above}
    updated = {path for mod, path in r.diff_metadata if mod == "U"}
    others = sorted(c for c in r.diff_metadata if c[0] != "U")
    if others != want_diff or not want_updated <= updated:
        problems.append(
            f"restic diff --metadata: {r.diff_metadata}, not {want_diff} and U {want_updated}"
        )
    # restic keeps each node's st_dev (device_id), and the kernel numbers each FUSE mount anew
    # (another mount may have taken the first one's number): then every node is "U".
    if r.devices[0] == r.devices[1] and updated != want_updated:
        problems.append(f"restic diff --metadata: U {sorted(updated - want_updated)} too")
    assert not problems, _report(problems)


_WALKER = r"""
import json, os, sys
root = sys.argv[1]
out, walk_errors = {}, []
def visit(path):
    entry = out[os.path.relpath(path, root)] = {"listed": [], "refused": {}}
    try:
        os.lstat(path)
        entry["listed"] = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError as exc:
        entry["error"] = exc.errno
        return
    for name in entry["listed"]:
        try:
            os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            entry["refused"][name] = exc.errno
visit(root)
for dirpath, dirnames, filenames in os.walk(root, onerror=walk_errors.append):
    for name in dirnames + filenames:
        visit(os.path.join(dirpath, name))
json.dump({"entries": out, "walk_errors": [str(e) for e in walk_errors]}, sys.stdout)
"""


def _walk(prefix: list[str], python: str, root: Path) -> dict[str, Any]:
    done = subprocess.run(
        [*prefix, python, "-c", _WALKER, str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _unprivileged() -> tuple[list[str], str]:
    """A command prefix running as nobody, and a Python that nobody can run."""
    if shutil.which("setpriv"):
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    elif shutil.which("runuser"):
        prefix = ["runuser", "-u", "nobody", "--"]
    else:
        pytest.skip("neither setpriv nor runuser")
    for python in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(python):
            ok = subprocess.run([*prefix, python, "-c", "pass"], capture_output=True, check=False)
            if ok.returncode == 0:
                return prefix, python
    pytest.skip("no Python that nobody may run")


def test_no_xattr_listed_that_getxattr_refuses(mnt: Path, source: dict[str, Node]) -> None:
    """Every xattr listed on every entry (FILE:STREAM ones included) can be read, by root and by
    an unprivileged user, who is shown no trusted.* (only root may read them)."""
    as_root = _walk([], sys.executable, mnt)
    prefix, python = _unprivileged()
    as_nobody = _walk(prefix, python, mnt)
    problems = []
    for who, walk in (("root", as_root), ("nobody", as_nobody)):
        problems += [f"{who}: walking: {e}" for e in walk["walk_errors"]]
        entries = walk["entries"]
        if set(entries) != set(source):
            problems.append(f"{who}: walked {sorted(set(entries) ^ set(source))} differently")
        for rel, e in sorted(entries.items()):
            if "error" in e:
                problems.append(f"{who}: {rel!r}: listxattr: {os.strerror(e['error'])}")
            for name, err in sorted(e["refused"].items()):
                problems.append(f"{who}: {rel!r}: {name} listed, getxattr: {os.strerror(err)}")
    trusted = {
        rel
        for rel, e in as_root["entries"].items()
        if any(n.startswith("trusted.") for n in e["listed"])
    }
    assert trusted, "root is shown the links' trusted.* xattrs"
    for rel, e in sorted(as_nobody["entries"].items()):
        want = [
            n
            for n in as_root["entries"].get(rel, {}).get("listed", [])
            if not n.startswith("trusted.")
        ]
        if e["listed"] != want:
            problems.append(
                f"nobody: {rel!r}: listed {e['listed']}, root sees {want} (trusted.* aside)"
            )
    assert not problems, _report(problems)


@pytest.mark.parametrize("agent", ["rsync", "tar", "cp", "restic"])
def test_large_streams_reach_agent(
    agent: str, request: pytest.FixtureRequest, fidelity_image: FidelityImage
) -> None:
    """Every stream that cannot be an xattr (over 64 KiB, or a name too long for one) is in the
    copy (rsync, cp), the archive (tar) or the snapshot (restic) as FILE:STREAM, whole."""
    if agent == "restic":
        run = request.getfixturevalue("restic_run").backups[0]
    else:
        run = request.getfixturevalue(f"{agent}_run")
    want = {p: (s["size"], s["sha256"]) for p, s in _stream_entries(fidelity_image).items()}
    assert any(size > XATTR_MAX for size, _ in want.values())
    assert _too_long_names(fidelity_image) <= want.keys()
    got = {p: run.streams.get(p) for p in want}
    missing = sorted(p for p in want if got[p] is None)
    wrong = sorted(p for p in want if got[p] is not None and got[p] != want[p])
    assert (missing, wrong) == ([], []), f"{agent}: missing {missing}, wrong {wrong}"
