"""``scripts/bench mount``: a vcbfs FUSE mount of the test VM against a read-only ntfs-3g mount
of the same NTFS volume (first access, a big file, a sparse file, tar, find); see ``DOC``.

Its mount sides (``MountSide``: ``VcbfsSide``, ``Ntfs3gSide``), the timing of a command on a
fresh mount (``time_side``) and the no-file-system reads (``bare_read``) are used by
``requests``, ``compressed`` and ``vsphere`` too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import (
    MB,
    MIB,
    ROOT,
    Bench,
    CommandError,
    Result,
    Row,
    Verbs,
    bench_dir,
    bench_parser,
    choice_list,
    file_sha256,
    finish,
    first_line,
    judge,
    log,
    md_table,
    need_tools,
    print_header,
    print_table,
    result_figures,
    rows_of,
    run,
    runs_line,
    span,
    vcbfs_command,
    venv_python,
    verdict_of,
)
from .ntfs import ntfs_fixture

NAME = "mount"
DOC = """\
    scripts/bench mount [--repeat N] [--only open,big,holes,tar,find] [--profile] [--json FILE]

``mount`` compares a vcbfs FUSE mount of the test VM of tests/fs/vmfixture.py (two disks, built
once and cached like the tests do; its ``letters/F`` is the reference NTFS volume of tests/ntfs,
inside a GPT disk) with a read-only ntfs-3g mount (``ntfs-3g -o ro``) of that same volume's
image (volume.img), side by side in one run.  The commands run in the volume's root on each
mount (ROOT: MNT/letters/F for vcbfs, MNT for ntfs-3g):

  open  ``stat .`` in ROOT, the first access after mounting: vcbfs builds digits/ and
        letters/ then (it reads the guest's SYSTEM hive for the letters and opens the NTFS
        volumes), where ntfs-3g has opened its volume while mounting; report only
  big   ``cat bench/big.bin > /dev/null``: a 64 MiB random file, contiguous; MB/s
  holes ``cat sparse/far.bin > /dev/null``: 2 GiB + 1 MiB, all holes but 1 MiB at each end:
        how fast each side makes zeros (most of tar's bytes, below); report only
  tar   ``tar cf - . | wc -c``: every file of the volume read in full.  That includes
        sparse/far.bin, 2 GiB + 1 MiB of which all but 2 MiB are holes: both sides read those
        zeros, about 2.15 GB of the 2.33 GB archive; the same work for both
  find  ``find . -ls > /dev/null``: a metadata walk (lookup, stat, readlink); report only

Each run mounts afresh, stats ROOT (not for ``open``), drops the page cache, times the command
(process start-up included) and unmounts, also on failure (``vcbfs umount`` and the ntfs-3g
wrapper wait for the server to exit): the kernel's caches and the file system's own caches are
cold, and neither mounting nor the first access to ROOT (the ``open`` row) is in the time of
``big``, ``tar`` and ``find``.  The server's CPU time (user + system, from /proc) during each
timed run is recorded too.  Runs are interleaved (the order of the two sides alternates between
repetitions) and repeated N times; the table shows the best and the median.  Targets are
printed, never asserted: big file >= 1.5x ntfs-3g's MB/s; tar <= 0.7x ntfs-3g's time.

Two rows without any file system show what the machine itself allows, and so what a target
asks for (report only): for ``big``, the file's clusters read straight from volume.img, in
order, in 1 MiB preads, by the bench's own process after the page cache was dropped (the
disk's speed, no FUSE, no NTFS); for ``tar``, the same tar of a copy of the tree on tmpfs
(``cp -a --sparse=always`` from the ntfs-3g mount; tar still reads every zero of the sparse
file, through the same pipe, on the same cores).

Before timing, each side is mounted once and checked: bench/big.bin's sha256 against the
manifest ntfs-3g wrote when the volume was built, the two trees' listings (paths, types, file
sizes) against each other, and tar's byte counts against each other.  ``--profile`` then runs
each vcbfs command once more from a cold cache with py-spy (``.venv/bin/pip install py-spy``)
attached to the mount's server process, and prints its hot spots.  ``--json FILE`` also writes
the run's figures as JSON.
"""

MOUNT_TASKS = ("open", "big", "holes", "tar", "find")
MOUNT_BIG_TARGET = 1.5  # vcbfs MB/s over ntfs-3g's, at least
MOUNT_TAR_TARGET = 0.7  # vcbfs seconds over ntfs-3g's, at most
PY_SPY_RATE = 250  # samples per second


@dataclass(frozen=True)
class MountTask:
    name: str
    argv: tuple[str, ...]  # run in the volume's root on the mount
    shown: str
    to_null: bool  # stdout to /dev/null (else a pipe: tar's byte count)
    prime: bool = True  # stat the volume's root after mounting, before the timed run


def mount_tasks(img: Any) -> list[MountTask]:
    tar = "tar cf - . | wc -c"
    return [
        MountTask("open", ("stat", "."), "stat .  (first access)", True, prime=False),
        MountTask("big", ("cat", img.big_file), f"cat {img.big_file} > /dev/null", True),
        MountTask("holes", ("cat", img.sparse_file), f"cat {img.sparse_file} > /dev/null", True),
        MountTask("tar", ("bash", "-o", "pipefail", "-c", tar), tar, False),
        MountTask("find", ("find", ".", "-ls"), "find . -ls > /dev/null", True),
    ]


def is_mounted(path: Path) -> bool:
    """Whether something (a dead FUSE server's mount included) is mounted at ``path``."""
    want = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
            if point == want:
                return True
    return False


def machine_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine so far, every core, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # idle and iowait are not busy


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Mounted:
    root: Path  # where the commands run
    pid: int  # the server process


class MountSide:
    """A file system serving the reference volume; ``mounted()`` makes a fresh mount."""

    name = ""
    root = ""  # ``Mounted.root``, as the table names it

    def mounted(self) -> contextlib.AbstractContextManager[Mounted]:
        raise NotImplementedError


class VcbfsSide(MountSide):
    """``vcbfs mount VMX MNT``, commands in MNT/``inside``, then ``vcbfs umount MNT``.

    ``inside`` is the volume's folder in the mount: letters/F for the test VM's reference
    volume, digits/1 for a bare volume image mounted as it is.
    """

    name = "vcbfs"

    def __init__(
        self,
        vmx: Path,
        mnt: Path,
        inside: str = "letters/F",
        name: str = "vcbfs",
        options: Sequence[str] = (),
    ) -> None:
        self.exe = vcbfs_command()
        self.name = name
        self.options = list(options)
        self.vmx = vmx
        self.mnt = mnt
        self.inside = inside
        self.root = f"MNT/{inside}"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.release()  # left over from an interrupted run

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Mounted]:
        from vcbfs.cli.mount import _pidfile

        run([self.exe, "mount", *self.options, self.vmx, self.mnt], stdin=subprocess.DEVNULL)
        try:
            pid = int(_pidfile(str(self.mnt)).read_text())
            yield Mounted(self.mnt / self.inside, pid)
        finally:
            self.release()

    def release(self) -> None:
        """Unmount (a dead server's mount too); ``vcbfs umount`` waits for the server."""
        if is_mounted(self.mnt):
            run([self.exe, "umount", self.mnt])
        if is_mounted(self.mnt):
            raise RuntimeError(f"{self.mnt} is still mounted after vcbfs umount")


class Ntfs3gSide(MountSide):
    """``ntfs-3g -o ro volume.img MNT`` (tests/ntfs's wrapper: it unmounts and waits)."""

    name = "ntfs-3g"
    root = "MNT"

    def __init__(self, image: Path) -> None:
        self.image = image

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Mounted]:
        from tests.ntfs.ntfsimages import ntfs3g_mounted

        with ntfs3g_mounted(self.image, "ro") as mnt:
            yield Mounted(mnt, self.server_pid(mnt))

    def server_pid(self, mnt: Path) -> int:
        want = [b"ntfs-3g", os.fsencode(self.image), os.fsencode(mnt)]
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if os.path.basename(argv[0]) == want[0] and all(w in argv for w in want[1:]):
                    return int(proc.name)
        raise RuntimeError(f"no ntfs-3g process serving {mnt}")


def mount_fixture() -> tuple[Any, Any]:
    """The reference volume (an ``NtfsImage``) and the test VM holding it (a ``TestVm``)."""
    img = ntfs_fixture()
    from tests.fs.vmfixture import build_test_vm
    from tests.windows.hives import build_system_hive

    def hive(mounted: dict[str, bytes]) -> bytes:
        with tempfile.TemporaryDirectory() as d:
            return build_system_hive(Path(d) / "SYSTEM", mounted).read_bytes()

    return img, build_test_vm(img, hive)


def run_task(task: MountTask, root: Path) -> bytes:
    with open(os.devnull, "wb") as null:
        out: Any = null if task.to_null else subprocess.PIPE
        return run(list(task.argv), cwd=root, stdout=out).stdout or b""


@dataclass
class MountResult(Result):
    cpu: list[float] = field(default_factory=list)  # the server's CPU seconds, run by run
    peer_cpu: list[float] = field(default_factory=list)  # the simulator's (vsphere only)
    busy: list[float] = field(default_factory=list)  # the machine's busy share (vsphere only)

    @property
    def best_cpu(self) -> float:
        return self.cpu[self.times.index(self.best)]


def time_task(bench: Bench, side: MountSide, task: MountTask) -> tuple[float, float]:
    """Wall seconds of ``task`` on a fresh mount of ``side``, and the server's CPU seconds."""
    with side.mounted() as m:
        if task.prime:
            os.stat(m.root)
        cpu: list[float] = []

        def action() -> None:
            cpu.append(cpu_seconds(m.pid))
            run_task(task, m.root)
            cpu.append(cpu_seconds(m.pid))

        wall = bench.time(action)
        return wall, cpu[1] - cpu[0]


BARE = "no fs"  # the rows that use no file system: the machine's own limits


def file_clusters(img: Any, rel: str, stream_name: str = "") -> list[tuple[int, int]]:
    """(byte offset, length) in the volume image of each allocated run of file ``rel`` (of its
    named stream ``stream_name``, if given)."""
    from vcbfs.blocks.local import LocalSource
    from vcbfs.ntfs.volume import NtfsVolume

    with LocalSource(img.path) as image:
        volume = NtfsVolume(image)
        stream = volume.open(volume.lookup(rel), stream_name)
        cs = stream.cluster_size
        runs = stream.map.iter_range(0, -(-stream.size // cs))
        return [(lcn * cs, n * cs) for _vcn, n, lcn in runs if lcn is not None]


def bare_read(img: Any, runs: list[tuple[int, int]]) -> Callable[[], None]:
    """Reading ``runs`` (from ``file_clusters``) from the image itself, 1 MiB at a time, in
    order."""

    def action() -> None:
        fd = os.open(img.path, os.O_RDONLY)
        try:
            for offset, length in runs:
                end = offset + length
                while offset < end:
                    got = len(os.pread(fd, min(MIB, end - offset), offset))
                    if not got:
                        raise OSError(f"{img.path} ends at {offset}")
                    offset += got
        finally:
            os.close(fd)

    return action


@contextlib.contextmanager
def tmpfs_copy(img: Any) -> Iterator[Path]:
    """A copy of the volume's tree on tmpfs (holes kept), removed afterwards."""
    copy = Path(tempfile.mkdtemp(prefix="vcbfs-bench-tree-", dir="/dev/shm"))
    try:
        with Ntfs3gSide(img.path).mounted() as m:
            run(["cp", "-a", "--sparse=always", f"{m.root}/.", str(copy)])
        yield copy
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def tree_listing(root: Path) -> dict[str, tuple[str, int]]:
    """Relative path -> (type, size for regular files) of every entry under ``root``."""
    kinds = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}
    found: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            kind = kinds.get(stat.S_IFMT(st.st_mode), "other")
            found[os.path.relpath(path, root)] = (kind, st.st_size if kind == "file" else 0)
    return found


@dataclass
class SideCheck:
    big_sha256: str = ""
    listing: dict[str, tuple[str, int]] = field(default_factory=dict)
    tar_bytes: int | None = None
    error: str = ""


def check_side(side: MountSide, img: Any) -> SideCheck:
    """One untimed mount of ``side``: the big file's sha256, the tree, tar's byte count."""
    check = SideCheck()
    tar = next(t for t in mount_tasks(img) if t.name == "tar")
    try:
        with side.mounted() as m:
            check.big_sha256 = file_sha256(m.root / img.big_file)
            check.listing = tree_listing(m.root)
            check.tar_bytes = int(run_task(tar, m.root).split()[0])
    except (CommandError, OSError, RuntimeError, ValueError, IndexError) as e:
        check.error = f"{type(e).__name__}: {e}"
        log(f"check {side.name}: {check.error}")
    return check


def compare_sides(img: Any, checks: dict[str, SideCheck]) -> tuple[list[str], dict[str, str]]:
    """Lines saying what the checks found, and each side's verdict ("ok" or "FAIL")."""
    lines: list[str] = []
    verdict = {}
    want = str(img.entries[img.big_file]["sha256"])
    for name, c in checks.items():
        if c.error:
            lines.append(f"check {name}: FAIL {c.error}")
            verdict[name] = "FAIL"
            continue
        verdict[name] = "ok" if c.big_sha256 == want else "FAIL"
        if verdict[name] == "FAIL":
            lines.append(
                f"check {name}: FAIL {img.big_file} sha256 {c.big_sha256[:12]}..., "
                f"the manifest has {want[:12]}..."
            )
    v, n = checks["vcbfs"], checks["ntfs-3g"]
    if v.error or n.error:
        return lines, verdict
    if all(x == "ok" for x in verdict.values()):
        lines.append(f"check: {img.big_file} has the manifest's sha256 on both sides")
    # vcbfs lists streams an xattr cannot carry beside their file, as FILE:STREAM.
    beside = {
        f"{path}:{name}"
        for path, e in img.entries.items()
        for name, info in (e.get("streams") or {}).items()
        if info["size"] > 65536
    }
    only_v = sorted(v.listing.keys() - n.listing.keys() - beside)
    only_n = sorted(n.listing.keys() - v.listing.keys())
    differ = sorted(k for k in v.listing.keys() & n.listing.keys() if v.listing[k] != n.listing[k])
    if not (only_v or only_n or differ):
        lines.append(
            f"check: both trees list the same {len(n.listing):,} paths, with the same types "
            "and file sizes (symlink targets, directory sizes and link counts differ by design); "
            f"vcbfs also lists {len(beside & v.listing.keys())} large streams as FILE:STREAM"
        )
    else:
        verdict["vcbfs"] = "FAIL"
        for what, paths in (
            ("only on vcbfs", only_v),
            ("only on ntfs-3g", only_n),
            ("of another type or size", differ),
        ):
            if paths:
                shown = ", ".join(paths[:5]) + (", ..." if len(paths) > 5 else "")
                lines.append(f"check: FAIL {len(paths)} paths {what}: {shown}")
    if v.tar_bytes == n.tar_bytes:
        lines.append(f"check: tar archives of the same size on both sides ({v.tar_bytes:,} bytes)")
    else:
        lines.append(
            f"check: tar archive sizes differ: vcbfs {v.tar_bytes:,} bytes, ntfs-3g "
            f"{n.tar_bytes:,} bytes (headers count too: see the tree check)"
        )
    return lines, verdict


def register(verbs: Verbs) -> None:
    p = bench_parser(
        verbs,
        NAME,
        "the FUSE mount: vcbfs mount of the test VM vs ntfs-3g -o ro of the same volume",
        DOC,
        run_bench,
    )
    p.add_argument(
        "--only",
        type=choice_list("task", MOUNT_TASKS),
        default=list(MOUNT_TASKS),
        metavar="TASK[,TASK]",
        help="open (first access), big (file read), holes (sparse file read), tar (whole "
        "volume), find (metadata walk); default all",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="then run each vcbfs command once more with py-spy on the mount's server",
    )


def py_spy_command() -> str | None:
    beside = Path(venv_python()).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def time_side(bench: Bench, side: MountSide, task: MountTask, r: MountResult, rep: int) -> None:
    """One timed run of ``task`` on ``side``, into ``r`` (a failure marks it skipped)."""
    if r.skipped:
        return
    try:
        wall, cpu = time_task(bench, side, task)
    except CommandError as e:
        r.skipped = f"failed: {e.said}"
        log(f"{task.name} {side.name}: {e}")
        return
    r.times.append(wall)
    r.cpu.append(cpu)
    log(f"{task.name} {side.name} run {rep + 1}: {wall:.2f} s, server CPU {cpu:.2f} s")


def run_bench(args: argparse.Namespace) -> int:
    need_tools("ntfs-3g", "umount", "fusermount3", "tar", "find", "stat", "cat", "wc", "bash")
    if args.profile and py_spy_command() is None:
        sys.exit("bench: --profile needs py-spy (.venv/bin/pip install py-spy)")
    started = time.perf_counter()
    # SIGTERM unwinds like ^C does, so that every mount is unmounted on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    img, vm = mount_fixture()
    tasks = [t for t in mount_tasks(img) if t.name in args.only]
    vcbfs_side = VcbfsSide(vm.vmx, bench_dir() / "mnt-vcbfs")
    sides: list[MountSide] = [vcbfs_side, Ntfs3gSide(img.path)]

    checks = {side.name: check_side(side, img) for side in sides}
    check_lines, verdict = compare_sides(img, checks)
    for line in check_lines:
        log(line)

    bench = Bench(args.repeat)
    results = {
        (t.name, s.name): MountResult(verified=verdict[s.name]) for t in tasks for s in sides
    }
    with contextlib.ExitStack() as stack:
        bare: dict[str, Callable[[], None]] = {}
        if "big" in args.only:
            bare["big"] = bare_read(img, file_clusters(img, img.big_file))
        if "tar" in args.only:
            tar = next(t for t in tasks if t.name == "tar")
            copy = stack.enter_context(tmpfs_copy(img))

            def tar_copy() -> None:
                run_task(tar, copy)

            bare["tar"] = tar_copy
        for name in bare:
            results[name, BARE] = MountResult(verified="-")
        for rep in range(args.repeat):
            order = sides if rep % 2 == 0 else sides[::-1]
            for task in tasks:
                for side in order:
                    time_side(bench, side, task, results[task.name, side.name], rep)
                if task.name in bare:
                    wall = bench.time(bare[task.name])
                    results[task.name, BARE].times.append(wall)
                    results[task.name, BARE].cpu.append(0.0)
                    log(f"{task.name} {BARE} run {rep + 1}: {wall:.2f} s")

    far = img.entries.get(img.sparse_file, {})
    versions = mount_tool_versions()
    extra = [
        f"versions: {versions}",
        f"vcbfs: vcbfs mount {vm.vmx} MNT; ROOT = MNT/letters/F (disk 1, GPT partition 1)",
        f"ntfs-3g: ntfs-3g -o ro {img.path} MNT; ROOT = MNT",
        f"volume: {img.volume_size // MIB} MiB NTFS, {len(checks['vcbfs'].listing):,} paths; "
        f"{img.big_file} {img.big_file_size // MIB} MiB; {img.sparse_file} "
        f"{int(far.get('size', 0)):,} bytes, nearly all holes, read in full by tar on both sides",
        f"timing: best of {args.repeat} runs of the whole command, runs interleaved; each run "
        "on a fresh mount whose ROOT was stat'ed (except open), page cache dropped before the "
        "run; mounting, that first stat and unmounting are not timed",
        "server CPU: user + system seconds of the file system's process during the best run",
        "vcbfs/ntfs-3g: big, holes: vcbfs MB/s / ntfs-3g MB/s (higher is better); "
        "others: vcbfs s / ntfs-3g s (lower is better); the no-fs rows: the same ratio "
        "for the machine's own limit (no file system at all)",
        *check_lines,
    ]
    print_header("vcbfs bench mount", bench, extra)
    rows = print_mount_table(tasks, sides, results, img, checks["vcbfs"].tar_bytes)
    print()
    for (task_name, side_name), r in results.items():
        if r.verified == "FAIL" or r.skipped:
            print(f"FAIL {task_name} {side_name}: {r.skipped or 'the checks above failed'}")
    if args.profile:
        profile_mount(vcbfs_side, tasks, bench)
    return finish(
        args,
        NAME,
        bench,
        started,
        versions,
        rows,
        vmx=str(vm.vmx),
        volume=str(img.path),
        paths=len(checks["vcbfs"].listing),
        big_file=img.big_file,
        big_file_bytes=img.big_file_size,
        sparse_file=img.sparse_file,
        sparse_file_bytes=int(far.get("size", 0)),
        tar_bytes=checks["vcbfs"].tar_bytes,
        checks=check_lines,
    )


def mount_tool_versions() -> str:
    vcbfs = first_line([vcbfs_command(), "--version"])
    ntfs3g = first_line(["ntfs-3g", "--version"]).split(" integrated")[0]
    tar = first_line(["tar", "--version"]).removeprefix("tar (GNU tar) ")
    find = first_line(["find", "--version"]).removeprefix("find (GNU findutils) ")
    return f"{vcbfs}, {ntfs3g}, GNU tar {tar}, GNU find {find}"


def print_mount_table(
    tasks: list[MountTask],
    sides: list[MountSide],
    results: dict[tuple[str, str], MountResult],
    img: Any,
    tar_bytes: int | None,
) -> list[Row]:
    """Print the table; return its rows' figures (``vs_ntfs3g`` in ``ratio_of`` units: MB/s
    for big and holes, time for the others), for the JSON document."""
    headers = [
        "task",
        "tool",
        "command (in ROOT)",
        "best s",
        "median s",
        "MB/s",
        "server CPU s",
        "vcbfs/ntfs-3g",
        "target",
        "output",
    ]
    far = int(img.entries[img.sparse_file]["size"])
    sizes = {"big": img.big_file_size, "holes": far, "tar": tar_bytes}
    bare_shown = {
        "big": f"{img.big_file}'s clusters from volume.img, 1 MiB preads",
        "tar": "the same tar, of a copy of the tree on tmpfs",
    }
    rows = []
    figures = []
    for task in tasks:
        ntfs3g = results[task.name, "ntfs-3g"]
        for tool in [*(side.name for side in sides), BARE]:
            r = results.get((task.name, tool))
            if r is None:
                continue
            shown = bare_shown[task.name] if tool == BARE else task.shown
            f = result_figures(r, task=task.name, tool=tool, command=shown)
            figures.append(f)
            if not r.times:
                row = [task.name, tool, shown, "-", "-", "-", "-", "", ""]
                rows.append([*row, f"skipped: {r.skipped or 'not run'}"])
                continue
            size = sizes.get(task.name)
            mbs = f"{size / MB / r.best:.0f}" if size else "-"
            if size:
                f.update(mb_s=size / MB / r.best, median_mb_s=size / MB / r.median)
            if tool != BARE:
                f.update(
                    server_cpu_s=[round(c, 3) for c in r.cpu], best_run_server_cpu_s=r.best_cpu
                )
            ratio = target = ""
            if tool != "ntfs-3g" and ntfs3g.times:
                if task.name in ("big", "holes"):
                    x = ntfs3g.best / r.best
                    ratio = f"{x:.2f}x MB/s"
                    f.update(vs_ntfs3g=x, ratio_of="MB/s")
                    if task.name == "big" and tool == "vcbfs":
                        verdict = judge(f, MOUNT_BIG_TARGET, x >= MOUNT_BIG_TARGET)
                        target = f">={MOUNT_BIG_TARGET:.1f}x {verdict}"
                else:
                    x = r.best / ntfs3g.best
                    ratio = f"{x:.2f}x time"
                    f.update(vs_ntfs3g=x, ratio_of="time")
                    if task.name == "tar" and tool == "vcbfs":
                        verdict = judge(f, MOUNT_TAR_TARGET, x <= MOUNT_TAR_TARGET, miss="over")
                        target = f"<={MOUNT_TAR_TARGET:.1f}x {verdict}"
                if tool == BARE:
                    target = "the machine's limit"
                target = target or "report only"
            rows.append(
                [
                    task.name,
                    tool,
                    shown,
                    f"{r.best:.2f}",
                    f"{r.median:.2f}",
                    mbs,
                    "-" if tool == BARE else f"{r.best_cpu:.2f}",
                    ratio,
                    target,
                    r.verified,
                ]
            )
    print_table(headers, rows, left=3)
    return figures


def profile_mount(side: VcbfsSide, tasks: list[MountTask], bench: Bench, top: int = 12) -> None:
    """Each command once more on a fresh vcbfs mount, with py-spy recording the server.

    py-spy samples every thread of the server (the trio loop and the worker threads that do
    the reads) without pausing it (``--nonblocking``), leaving out the samples it judges idle;
    frames are whole functions (``--function``).  It runs outside the mount (cwd /): a lookup
    in the mount while the server is stopped would never be answered.
    """
    spy = py_spy_command()
    assert spy is not None
    work = bench_dir() / "mount-profile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        for task in tasks:
            raw = work / f"{task.name}.txt"
            said = work / f"{task.name}.err"
            with side.mounted() as m, open(said, "wb") as err:
                if task.prime:
                    os.stat(m.root)
                cmd = [spy, "record", "-p", str(m.pid), "-r", str(PY_SPY_RATE), "--nonblocking"]
                cmd += ["--function", "--full-filenames", "-f", "raw", "-o", str(raw)]
                proc = subprocess.Popen(
                    cmd, cwd="/", stdin=subprocess.DEVNULL, stdout=err, stderr=err
                )
                try:
                    deadline = time.monotonic() + 20
                    while b"Sampling" not in said.read_bytes():
                        if proc.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"py-spy: {said.read_text(errors='replace')}")
                        time.sleep(0.02)
                    cpu0 = cpu_seconds(m.pid)
                    wall = bench.time(lambda k=task, d=m.root: run_task(k, d))  # type: ignore[misc]
                    cpu = cpu_seconds(m.pid) - cpu0
                finally:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            print_profile(task, raw, wall, cpu, top)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def short_frame(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:12)`` as ``func (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    for prefix in ("site-packages/", f"{ROOT}/", "/lib/python3."):
        at = where.find(prefix)
        if at >= 0:
            where = where[at + len(prefix) :]
            if prefix == "/lib/python3.":
                where = where.partition("/")[2]
            break
    return f"{name} ({where}" if where else name


def frame_owner(frames: list[str]) -> str:
    """The package a sample's time belongs to: its innermost frame outside the standard library
    (a dataclass ``__init__``, ``bytes.join`` or ``threading`` counts for its caller)."""
    aliases = {"outcome": "trio", "sniffio": "trio"}
    for frame in reversed(frames):
        where = frame.partition(" (")[2]
        if "/" in where and not where.startswith("<"):
            top = where.split("/")[0]
            if top not in sys.stdlib_module_names:
                return aliases.get(top, top)
    return "stdlib"


def print_profile(task: MountTask, raw: Path, wall: float, cpu: float, top: int) -> None:
    """Self and inclusive samples per function, from py-spy's raw (collapsed stacks) output."""
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short_frame(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            under[frame] = under.get(frame, 0) + n
    busy = total / PY_SPY_RATE
    print(
        f"profile: {task.shown} on vcbfs: {wall:.2f} s from a cold cache under py-spy; "
        f"server CPU {cpu:.2f} s; {total:,} non-idle samples at {PY_SPY_RATE}/s = "
        f"{busy:.2f} s of thread time"
    )
    if not total:
        print()
        return
    # vcbfs's own functions, less the ones every sample of the trio thread is under
    by_owner: dict[str, int] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            who = frame_owner([short_frame(f) for f in stack.split(";")])
            by_owner[who] = by_owner.get(who, 0) + int(count)
    shares = ", ".join(
        f"{who} {100 * n / total:.0f} % ({n / PY_SPY_RATE:.2f} s)"
        for who, n in sorted(by_owner.items(), key=lambda kv: -kv[1])
    )
    print(f"  by package of the innermost non-stdlib frame: {shares}")
    ours = {
        f: n
        for f, n in under.items()
        if " (vcbfs/" in f and " (vcbfs/cli/" not in f and not f.startswith("serve (")
    }
    for title, counts in (("self", own), ("inclusive, vcbfs functions", ours)):
        print(f"  top {top} by {title} (share of samples, seconds):")
        for frame, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {100 * n / total:5.1f} %  {n / PY_SPY_RATE:6.2f} s  {frame}")
    print()


def markdown(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The README's mount rows: each task on vcbfs against ntfs-3g, with the no-fs limits."""
    big_mib = span([dict(d) for d in docs], "big_file_bytes", "{:.0f}")
    big = f"{int(big_mib.split('-')[0]) // MIB} MiB file" if big_mib else "big file"
    far = span([dict(d) for d in docs], "sparse_file_bytes", "{:.0f}")
    sparse = f"{int(far.split('-')[0]) / (1 << 30):.0f} GiB sparse file" if far else "sparse file"
    what = {
        "open": ("mount: first access (`stat .`)", "report only"),
        "big": (f"mount: `cat` of the {big}", f"{MOUNT_BIG_TARGET:.1f}x"),
        "holes": (f"mount: `cat` of the {sparse}", "report only"),
        "tar": ("mount: `tar cf - . | wc -c`", f"{MOUNT_TAR_TARGET:.1f}x"),
        "find": ("mount: `find . -ls`", "report only"),
    }
    limits = {
        "big": "the same clusters read from the image with no file system (the disk's limit)",
        "tar": "the same tar of a copy of the tree on tmpfs (no file system server)",
    }
    rows = []
    for task in MOUNT_TASKS:
        mine = rows_of(docs, task=task, tool="vcbfs")
        if not mine:
            continue
        peer = rows_of(docs, task=task, tool="ntfs-3g")
        per_s = task in ("big", "holes")

        def figure(found: list[Row], per_s: bool = per_s) -> str:
            if per_s:
                return span(found, "mb_s", unit=" MB/s")
            return span(found, "best_s", "{:.2f}", " s")

        unit = "x" if per_s else "x time"
        title, target = what[task]
        if target != "report only":
            target = f"{target} ({verdict_of(mine)})"
        rows.append(
            [
                title,
                figure(mine),
                f"ntfs-3g {figure(peer)}",
                span(mine, "vs_ntfs3g", "{:.2f}", unit),
                target,
            ]
        )
        bare = rows_of(docs, task=task, tool=BARE)
        if bare:
            shown = span(bare, "vs_ntfs3g", "{:.2f}", "x")
            rows.append([limits[task], "", figure(bare), shown, "(the machine's limit)"])
    headers = ["benchmark", "vcbfs", "peer", "ratio", "target"]
    return [runs_line(NAME, docs), "", *md_table(headers, rows)]
