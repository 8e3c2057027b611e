"""Real FUSE mounts of a two-disk VM, read as a backup agent reads them."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fs.vmfixture import SYS_FILES, TestVm
from tests.together import together
from vcbfs.cli.mount import _pidfile
from vcbfs.process import start_time

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
CHUNK = 1 << 20
FILETIME_EPOCH = 116444736000000000


def _ns(filetime: int) -> int:
    return (filetime - FILETIME_EPOCH) * 100


def vcbfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "vcbfs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and done.returncode:
        raise AssertionError(f"vcbfs {' '.join(args)}: {done.stderr}")
    return done


def _mount(vm: TestVm, mnt: Path) -> None:
    mnt.mkdir(exist_ok=True)
    vcbfs("mount", str(vm.vmx), str(mnt))
    assert os.path.ismount(mnt)


def _umount(mnt: Path) -> None:
    if os.path.ismount(mnt):
        vcbfs("umount", str(mnt))


@dataclass
class _Served:
    process: subprocess.Popen[str]
    stderr: str = ""  # all the server said, once it has exited


@contextlib.contextmanager
def _foreground(source: Path, mnt: Path, *options: str) -> Iterator[_Served]:
    """``vcbfs mount -f SOURCE MNT``, serving; afterwards unmounted, exited, its stderr read."""
    mnt.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "vcbfs", "mount", "-f", *options, str(source), str(mnt)]
    served = _Served(
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            assert served.process.poll() is None, served.process.communicate()[1]
            assert time.monotonic() < deadline, "the mount never came up"
            time.sleep(0.05)
        yield served
    finally:
        _umount(mnt)
        try:
            served.stderr = served.process.communicate(timeout=60)[1]
        finally:
            if served.process.poll() is None:
                served.process.kill()
                served.process.wait()


@pytest.fixture(scope="module")
def mnt(test_vm: TestVm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("mnt") / "vm"
    _mount(test_vm, path)
    try:
        yield path
    finally:
        _umount(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def test_tree(mnt: Path) -> None:
    assert sorted(os.listdir(mnt)) == ["digits", "fullvm", "letters"]
    assert sorted(os.listdir(mnt / "digits")) == ["1", "2"]
    assert sorted(os.listdir(mnt / "letters")) == ["C", "F"]
    assert sorted(os.listdir(mnt / "fullvm")) == [
        "catalog",
        "data-flat.vmdk",
        "data.vmdk",
        "sys-flat.vmdk",
        "sys.vmdk",
        "vm.nvram",
        "vm.vmx",
    ]


def test_letters_are_the_digits_volumes(mnt: Path) -> None:
    for letter, digit in (("C", "1"), ("F", "2")):
        assert sorted(os.listdir(mnt / "letters" / letter)) == sorted(
            os.listdir(mnt / "digits" / digit)
        )
    assert (mnt / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]


def test_data_volume_equals_ntfs3g(mnt: Path, test_vm: TestVm) -> None:
    manifest = test_vm.data.manifest
    excluded = set(manifest["excluded_at_root"])
    root = mnt / "letters/F"
    seen: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel_dir == "." and name in excluded:
                continue
            seen[rel] = os.lstat(os.path.join(dirpath, name))
    want = {p for p in manifest["entries"] if p != "."}
    # Streams too large for an xattr are listed beside their file as FILE:STREAM.
    large = {
        f"{p}:{name}": info
        for p, e in manifest["entries"].items()
        for name, info in e.get("streams", {}).items()
        if info["size"] > 65536
    }
    assert large, "the reference volume has a stream over 64 KiB"
    assert sorted(set(seen) ^ want ^ set(large)) == []
    for rel, info in large.items():
        assert stat.S_ISREG(seen[rel].st_mode)
        assert (seen[rel].st_size, _sha256(root / rel)) == (info["size"], info["sha256"])
    bad = []
    for rel, st in seen.items():
        if rel in large:
            continue
        ref = manifest["entries"][rel]
        kind = (
            "symlink"
            if os.path.islink(root / rel)
            else "dir"
            if os.path.isdir(root / rel)
            else "file"
        )
        got = (kind, st.st_mtime_ns, st.st_ctime_ns, st.st_atime_ns)
        # the exact NTFS times (ntfs-3g's stat drops the fraction of times before 1970)
        _created, written, accessed, changed = (_ns(t) for t in ref["ntfs_times"])
        exp = (ref["type"], written, changed, accessed)
        if kind == "file":
            got += (st.st_size, st.st_blocks * 512, st.st_nlink, _sha256(root / rel))
            exp += (ref["size"], ref["allocated"], ref["nlink"], ref["sha256"])
        if got != exp:
            bad.append((rel, got, exp))
    assert bad == []


def _describe_tree(root: Path, leave_out: set[str]) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: type, times, and for files size, blocks, links, sha256."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in leave_out]
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in leave_out:
                continue
            path = Path(dirpath) / name
            st = os.lstat(path)
            got: tuple[object, ...] = (stat.S_IFMT(st.st_mode), st.st_mtime_ns, st.st_atime_ns)
            if stat.S_ISREG(st.st_mode):
                got += (st.st_size, st.st_blocks, st.st_nlink, _sha256(path))
            out[rel] = got
    return out


def test_system_volume_equals_ntfs3g(mnt: Path, test_vm: TestVm) -> None:
    """letters/C against a read-only ntfs-3g mount of the same volume, entry by entry."""
    from tests.ntfs.ntfsimages import ntfs3g_mounted

    hidden = {"System Volume Information"}  # ntfs-3g shows it; vcbfs leaves it out
    with ntfs3g_mounted(test_vm.sys_volume, "ro") as ref:
        theirs = _describe_tree(ref, hidden)
    ours = _describe_tree(mnt / "letters/C", hidden)
    assert len(ours) >= len(test_vm.sys_files) and ours == theirs


def test_symlinks_resolve_inside_the_mount(mnt: Path, test_vm: TestVm) -> None:
    data = test_vm.data
    rel = mnt / "letters/F" / data.symlink_rel
    assert os.readlink(rel) == data.entries[data.symlink_rel]["target"]
    absolute = mnt / "letters/F" / data.symlink_abs
    target = os.path.realpath(absolute)
    assert target.startswith(str(mnt / "letters/C/"))
    junction = mnt / "letters/F" / data.junction
    assert os.path.realpath(junction) == str(mnt / "letters/C/Windows")
    assert sorted(os.listdir(junction)) == ["System32"]


def test_streams_and_attributes_as_xattrs(mnt: Path, test_vm: TestVm, tmp_path: Path) -> None:
    data = test_vm.data
    path = mnt / "letters/F" / data.streams_file
    names = os.listxattr(path)
    ref = data.entries[data.streams_file]["streams"]
    small = {n for n, s in ref.items() if s["size"] <= 65536}
    assert {
        n[5:] for n in names if n.startswith("user.") and not n.startswith("user.ntfs_")
    } == small
    for n in small:
        assert hashlib.sha256(os.getxattr(path, f"user.{n}")).hexdigest() == ref[n]["sha256"]
    assert (
        int.from_bytes(os.getxattr(path, "user.ntfs_attrib_be"), "big")
        == (data.entries[data.streams_file]["attributes"])
    )
    assert os.getxattr(path, "user.ntfs_acl")[0] == 1
    times = struct.unpack("<4Q", os.getxattr(path, "user.ntfs_times"))
    assert list(times) == data.entries[data.streams_file]["ntfs_times"]
    large = Path(f"{path}:{data.large_stream}")
    assert _sha256(large) == ref[data.large_stream]["sha256"]
    st = os.stat(large)  # its own inode, which getattr must know too
    assert st.st_size == ref[data.large_stream]["size"] and st.st_ino != os.stat(path).st_ino
    assert large.name in os.listdir(path.parent)  # listed, so that an agent backs it up
    listed = {e.name: e.inode() for e in os.scandir(path.parent)}
    assert listed[large.name] == st.st_ino  # the listing and the lookup agree
    out = tmp_path / "x.tar"
    # tmpfs keeps user xattrs of any size (ext4 only what fits one block)
    back = Path(tempfile.mkdtemp(dir="/dev/shm"))
    subprocess.run(
        ["tar", "--xattrs", "-cf", str(out), "-C", str(path.parent), path.name], check=True
    )
    try:
        subprocess.run(["tar", "--xattrs", "-xf", str(out), "-C", str(back)], check=True)
        restored = back / path.name  # the same bytes, and every xattr with its value
        assert _sha256(restored) == _sha256(path)
        assert sorted(os.listxattr(restored)) == sorted(names)
        for n in names:
            assert os.getxattr(restored, n) == os.getxattr(path, n), n
    finally:
        shutil.rmtree(back)
    with tarfile.open(out) as tar:
        assert tar.getmembers()[0].size == data.entries[data.streams_file]["size"]


@pytest.mark.parametrize(
    "action",
    [
        lambda p: open(p / "boot.ini", "w"),  # noqa: SIM115
        lambda p: open(p / "new.txt", "x"),  # noqa: SIM115
        lambda p: os.mkdir(p / "newdir"),
        lambda p: os.unlink(p / "boot.ini"),
        lambda p: os.rename(p / "boot.ini", p / "boot2.ini"),
        lambda p: os.chmod(p / "boot.ini", 0o777),
        lambda p: os.setxattr(p / "boot.ini", "user.x", b"1"),
        lambda p: os.truncate(p / "boot.ini", 0),
        lambda p: os.symlink("boot.ini", p / "link"),
        lambda p: os.link(p / "boot.ini", p / "hard"),
        lambda p: os.rmdir(p / "Users"),
    ],
)
def test_every_write_is_refused(mnt: Path, action) -> None:
    with pytest.raises(OSError) as info:
        action(mnt / "letters/C")
    assert info.value.errno == errno.EROFS


def test_parallel_readers_read_the_same_bytes(mnt: Path, test_vm: TestVm) -> None:
    path = mnt / "letters/F" / test_vm.data.big_file
    want = test_vm.data.entries[test_vm.data.big_file]["sha256"]
    assert together(lambda: _sha256(path), 16) == [want] * 16


def test_fullvm_copies_out_as_a_vm(mnt: Path, test_vm: TestVm, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    out.mkdir()
    for name in os.listdir(mnt / "fullvm"):
        subprocess.run(
            ["cp", "--sparse=always", str(mnt / "fullvm" / name), str(out / name)], check=True
        )
    assert 'scsi0:1.fileName = "data.vmdk"' in (out / "vm.vmx").read_text()
    info = vcbfs("disk", "info", str(out / "sys.vmdk"))
    assert "monolithicFlat" in info.stdout and "0x5ec0ffee" in info.stdout
    for disk in ("sys", "data"):
        a = subprocess.run(
            [sys.executable, "-m", "vcbfs", "disk", "cat", str(out / f"{disk}.vmdk")],
            capture_output=True,
            check=True,
        ).stdout
        b = subprocess.run(
            [sys.executable, "-m", "vcbfs", "disk", "cat", str(getattr(test_vm, f"{disk}_vmdk"))],
            capture_output=True,
            check=True,
        ).stdout
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


def test_inodes_are_stable_across_mounts(mnt: Path, test_vm: TestVm, tmp_path: Path) -> None:
    other = tmp_path / "again"
    _mount(test_vm, other)
    try:
        for rel in (
            "letters/C/boot.ini",
            f"letters/F/{test_vm.data.big_file}",
            f"digits/2/{test_vm.data.deep_file}",
            "fullvm/vm.vmx",
            "digits/1",
        ):
            assert os.lstat(mnt / rel).st_ino == os.lstat(other / rel).st_ino, rel
    finally:
        _umount(other)


def test_umount_leaves_no_process_and_no_mount(test_vm: TestVm, tmp_path: Path) -> None:
    path = tmp_path / "m"
    _mount(test_vm, path)
    pid = int(_pidfile(str(path)).read_text())
    vcbfs("umount", str(path))
    assert not os.path.ismount(path)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Running; an exited server that init has not reaped yet (a zombie) is not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_killed_mount_is_cleaned_by_umount(test_vm: TestVm, tmp_path: Path) -> None:
    path = tmp_path / "m"
    _mount(test_vm, path)
    pid = int(_pidfile(str(path)).read_text())
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    with pytest.raises(OSError) as info:
        os.listdir(path)
    assert info.value.errno == errno.ENOTCONN
    vcbfs("umount", str(path))
    assert not os.path.ismount(path) and os.listdir(path) == []


def test_mount_errors_reach_the_caller(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    done = vcbfs("mount", str(tmp_path / "missing.vmx"), str(tmp_path / "m"), check=False)
    assert done.returncode == 1 and "no such file" in done.stderr
    assert not os.path.ismount(tmp_path / "m")
    bad = vcbfs(
        "mount", str(tmp_path / "missing.vmx"), str(tmp_path / "m"), "-o", "rw=1", check=False
    )
    assert bad.returncode == 1 and "unknown mount option" in bad.stderr
    shutil.rmtree(tmp_path / "m")


def _mount_options(mnt: Path) -> set[str]:
    """The mount's options as /proc/self/mountinfo lists them (per mount and per super)."""
    want = os.path.realpath(mnt)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == want:
            return set(fields[5].split(",")) | set(fields[-1].split(","))
    raise AssertionError(f"{mnt} is not mounted")


def test_a_mount_is_private_read_only_and_reads_ahead(mnt: Path) -> None:
    options = _mount_options(mnt)
    assert "ro" in options and "allow_other" not in options
    dev = os.stat(mnt).st_dev
    ra = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").read_text()
    assert int(ra) == 1024


def test_listing_the_top_reads_no_volume_through(test_vm: TestVm, tmp_path: Path) -> None:
    """Listing the mount, digits/ and letters/ reads partition tables, boot sectors and the
    guest's SYSTEM hive: a few MiB, not the volumes (512 MiB here)."""
    path = tmp_path / "m"
    _mount(test_vm, path)
    try:
        pid = int(_pidfile(str(path)).read_text())

        def read_so_far() -> int:
            io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
            return int(io["rchar"])

        before = read_so_far()
        for rel in ("", "digits", "letters", "digits/1", "letters/F"):
            assert os.listdir(path / rel)
        assert read_so_far() - before < 16 << 20
    finally:
        _umount(path)


def test_umount_of_a_busy_mount_detaches_it_and_the_server_ends_when_let_go(
    test_vm: TestVm, tmp_path: Path
) -> None:
    path = tmp_path / "m"
    _mount(test_vm, path)
    pid = int(_pidfile(str(path)).read_text())
    f = (path / "letters/C/boot.ini").open("rb")
    umount = subprocess.Popen(
        [sys.executable, "-m", "vcbfs", "umount", str(path)], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while os.path.ismount(path):  # detached at once
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert f.read() == SYS_FILES["boot.ini"]  # what is open still reads
        assert umount.poll() is None and start_time(pid)  # both wait for it
    finally:
        f.close()
        _, said = umount.communicate(timeout=60)
    assert umount.returncode == 0
    assert f"{path} is in use (open files, or a shell inside): it is detached now" in said
    assert not start_time(pid)  # exited (perhaps not yet reaped by init)


def test_owner_modes_and_sharing_options(test_vm: TestVm, tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.mkdir()
    done = vcbfs(
        "mount", str(test_vm.vmx), str(path), "-o", "uid=1234,gid=5678,umask=027,allow_other"
    )
    try:
        assert "allow_other" in _mount_options(path)
        assert "WARNING: allow_other: every local user can read" in done.stderr
        assert "now 440 for files" in done.stderr
        for rel, mode in (("letters/C", 0o550), ("letters/C/boot.ini", 0o440), ("", 0o550)):
            st = (path / rel).stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, mode), rel
    finally:
        _umount(path)


@pytest.mark.parametrize("option", ["uid=-1", "gid=-1", "uid=4294967295", "gid=99999999999"])
def test_an_owner_the_kernel_cannot_show_is_refused(
    test_vm: TestVm, tmp_path: Path, option: str
) -> None:
    # uid=-1 used to mount, and then every stat inside failed with EIO.
    (tmp_path / "m").mkdir()
    done = vcbfs("mount", str(test_vm.vmx), str(tmp_path / "m"), "-o", option, check=False)
    assert done.returncode == 1 and f"bad value in mount option {option!r}" in done.stderr
    assert not os.path.ismount(tmp_path / "m")


def test_an_unwritable_run_directory_is_a_clear_error(test_vm: TestVm, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "file").write_text("")
    env = {**os.environ, "VCBFS_RUN_DIR": str(tmp_path / "file/run")}
    done = subprocess.run(
        [sys.executable, "-m", "vcbfs", "mount", str(test_vm.vmx), str(tmp_path / "m")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"vcbfs: {tmp_path}/file/run: cannot record the server's PID")
    assert not os.path.ismount(tmp_path / "m")


def test_a_failed_fuse_mount_still_closes_the_model(test_vm: TestVm, tmp_path: Path) -> None:
    """The model may hold a vSphere snapshot by now: it must be closed (released) anyway."""
    from vcbfs.fs.mount import fuse_options, serve
    from vcbfs.fs.tree import Tree
    from vcbfs.vm.local import open_local_vm

    tree = Tree(open_local_vm(test_vm.vmx))
    events: list[str] = []
    real_close = tree.close

    def close() -> None:
        events.append("close")
        real_close()

    tree.close = close  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):  # pyfuse3 cannot mount on a missing directory
        serve(
            tree,
            str(tmp_path / "no-such-dir"),
            fuse_options(),
            ready=lambda: events.append("ready"),
            cleanup=lambda: events.append("cleanup"),
        )
    assert events == ["close", "cleanup"]


def test_a_corrupt_file_is_listed_fails_with_eio_and_is_logged(
    test_vm: TestVm, tmp_path: Path
) -> None:
    """A torn MFT record fails that one file, but it is still listed, so that a backup meets
    it and reports it instead of silently going without it; the server's log names it, and
    its directory and siblings stay readable."""
    from tests.ntfs.patching import read_record
    from vcbfs.blocks.local import LocalSource
    from vcbfs.ntfs.volume import NtfsVolume

    image = tmp_path / "sys.img"
    shutil.copyfile(test_vm.sys_volume, image)
    with LocalSource(image) as src:
        vol = NtfsVolume(src)
        offset, _ = read_record(vol, vol.lookup("boot.ini"))
    with image.open("r+b") as f:  # break the fixup tail of the record's second sector
        f.seek(offset + 1022)
        f.write(b"\xde\xad")
    path = tmp_path / "m"
    with _foreground(image, path) as served:
        root = path / "digits/1"
        assert "boot.ini" in os.listdir(root)
        with pytest.raises(OSError) as info:
            (root / "boot.ini").read_bytes()
        assert info.value.errno == errno.EIO
        tar = subprocess.run(
            ["tar", "cf", str(tmp_path / "backup.tar"), "."],  # not /dev/null: tar skips reading
            cwd=root,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        assert tar.returncode != 0
        assert "./boot.ini: Cannot open: Input/output error" in tar.stderr
        want = SYS_FILES["Users/Public/Documents/report.txt"]
        assert (root / "Users/Public/Documents/report.txt").read_bytes() == want
    assert not os.path.ismount(path)
    assert served.process.returncode == 0
    assert "digits/1: 'boot.ini' in directory record 5 is unreadable" in served.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_unmounts_a_foreground_mount(
    test_vm: TestVm, tmp_path: Path, sig: signal.Signals
) -> None:
    path = tmp_path / "m"
    with _foreground(test_vm.vmx, path) as served:
        assert (path / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
        served.process.send_signal(sig)
        served.process.wait(60)
        assert not os.path.ismount(path)
    assert served.process.returncode == 0, served.stderr


def test_a_name_with_a_colon_is_a_file_and_file_colon_stream_a_stream(tmp_path: Path) -> None:
    """NTFS's POSIX namespace allows ':' in a name (ntfs-3g writes such names): the whole name
    is looked up first, before ``FILE:STREAM``, and without a listing having been read."""
    from tests.ntfs.ntfsimages import ntfs3g_mounted

    image = tmp_path / "colon.img"
    with image.open("wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkntfs", "-F", "-Q", "-q", str(image)], check=True, capture_output=True)
    with ntfs3g_mounted(image, "streams_interface=xattr") as m:
        (m / "a:b").write_bytes(b"a colon\n")
        (m / "c").write_bytes(b"plain\n")
        os.setxattr(m / "c", "user.d", b"a stream\n")
    path = tmp_path / "m"
    _mount_source(image, path)
    try:
        root = path / "digits/1"
        assert (root / "a:b").read_bytes() == b"a colon\n"
        assert (root / "c:d").read_bytes() == b"a stream\n"
        with pytest.raises(FileNotFoundError):
            (root / "a:c").stat()
        assert sorted(os.listdir(root)) == ["a:b", "c"]
    finally:
        _umount(path)


def _mount_source(source: Path, mnt: Path) -> None:
    mnt.mkdir(exist_ok=True)
    vcbfs("mount", str(source), str(mnt))


CRASHING_SERVER = """
import sys
from vcbfs.fs.mount import fuse_options, serve
from vcbfs.fs.tree import Tree
from vcbfs.vm.local import open_local_vm


class Boom(BaseException):
    '''Not an Exception, so no handler's guard takes it: a failure of the server itself.'''


tree = Tree(open_local_vm(sys.argv[1]))
lookup, close = tree.lookup, tree.close


def crashing(parent, name):
    if name == "crash-now":
        raise Boom()
    return lookup(parent, name)


def closing():
    print("closed", flush=True)
    close()


tree.lookup, tree.close = crashing, closing
serve(tree, sys.argv[2], fuse_options(), ready=lambda: print("ready", flush=True))
"""


def _mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


def test_a_crashed_server_leaves_enotconn_not_an_empty_folder(
    test_vm: TestVm, tmp_path: Path
) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SERVER, str(test_vm.vmx), str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        assert "letters" in os.listdir(mnt)
        with pytest.raises(OSError):
            os.stat(mnt / "crash-now")
        out, err = server.communicate(timeout=60)
        assert server.returncode != 0 and "closed" in out  # the image (snapshot) was released
        assert "the mount is left in place" in err
        assert _mounted(mnt)
        with pytest.raises(OSError) as exc:
            os.listdir(mnt)  # not an empty folder: an error every agent reports
        assert exc.value.errno == errno.ENOTCONN
        vcbfs("umount", str(mnt))
        assert not _mounted(mnt) and os.listdir(mnt) == []
    finally:
        if server.poll() is None:
            server.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


def test_a_request_profile_counts_and_times_what_the_mount_answered(
    test_vm: TestVm, tmp_path: Path
) -> None:
    """``--request-profile FILE``: requests by type with counts and mean times, as JSON, so
    a benchmark's figure comes with where its time went (issue 13)."""
    profile = tmp_path / "requests.json"
    with _foreground(test_vm.vmx, tmp_path / "m", "--request-profile", str(profile)) as served:
        read = 0
        for path in sorted((tmp_path / "m" / "digits").rglob("*")):
            if path.is_file() and not path.is_symlink() and path.stat().st_size:
                with contextlib.suppress(OSError):  # a damaged fixture file may give EIO
                    path.read_bytes()
                    read += 1
        assert read > 10
    assert served.process.returncode == 0, served.stderr
    summary = json.loads(profile.read_text())
    rows = {r["request"]: r for r in summary["requests"]}
    assert {"lookup", "getattr", "opendir", "readdir", "open", "read", "release"} <= set(rows)
    assert rows["open"]["count"] >= read and rows["release"]["count"] == rows["open"]["count"]
    assert rows["read"]["count"] >= read
    assert all(r["count"] > 0 and r["mean_us"] > 0 for r in rows.values())
    times = [r["total_ms"] for r in summary["requests"]]
    assert times == sorted(times, reverse=True)  # busiest first
