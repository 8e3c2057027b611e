"""``scripts/bench vsphere``: a vcbfs mount of a VM on VMware's simulator (vcsim), read over
the datastore HTTPS transport, against one streamed ``curl`` GET; mount and umount times; see
``DOC``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import (
    MB,
    MIB,
    Bench,
    CommandError,
    Row,
    Verbs,
    bench_dir,
    bench_parser,
    cached_build,
    finish,
    first_line,
    judge,
    log,
    md_table,
    need_tools,
    positive,
    print_header,
    print_table,
    result_figures,
    rows_of,
    run,
    runs_line,
    span,
    tests_importable,
    vcbfs_command,
    verdict_of,
)
from .mount import MountResult, cpu_seconds, is_mounted, machine_ticks

NAME = "vsphere"
DOC = """\
    scripts/bench vsphere [--size-mib N] [--repeat N] [--json FILE]

``vsphere`` runs vcbfs against VMware's vSphere simulator (vcsim, through the test suite's Go
launcher in tests/vsphere, built once into the test cache), started for the run with a 2048-bit
certificate made by openssl and one user with a random password.  It adds a VM, ``bench-big``,
whose one disk is a descriptor over two FLAT extents: ``big-head.bin`` (1 MiB: an MBR) and
``big-flat.vmdk``, which is the NTFS volume of partition 1 itself.  The volume (built once and
cached under the bench dir, like the disk benchmark's images) holds a SYSTEM hive mapping C: to
it and ``big.bin``, N MiB of random data (default 512), written by ``ntfscp`` on the fresh
volume: a few long runs (mkntfs puts $LogFile mid-volume), about 94 % of the extent.  vcbfs
reaches vcsim through the environment a backup script would set (VCBFS_HOST, VCBFS_PORT,
VCBFS_USER, VCBFS_PASSWORD_FILE (mode 600), VCBFS_THUMBPRINT, VCBFS_STATE_DIR, VCBFS_RUN_DIR,
VCBFS_CONFIG) and reads the disk over the datastore HTTPS transport (vcsim's ``/folder``).

  open   ``vcbfs mount name:bench-big MNT``, then the first successful ``ls MNT/letters/C``:
         log-in, finding the VM, the quiesced snapshot, opening the disk over HTTPS, reading
         the guest's hive for the letters; the ``mount`` row is the mount command alone
  read   ``cat MNT/letters/C/big.bin > /dev/null`` on that fresh mount (mounting and the ls
         are not in this time), against ONE streamed ``curl`` GET of the whole flat extent
         that holds it: ``curl --cacert CERT https://127.0.0.1:PORT/folder/bench-big/
         big-flat.vmdk?dcPath=DC0&dsName=LocalDS_0 -o /dev/null``.  Each side's MB/s counts
         its own bytes (the file; the extent)
  umount ``vcbfs umount MNT``, which removes the snapshot; after each one the simulator is
         asked whether a vcbfs snapshot is left (a FAIL line if so)

Every time is a wall time from a cold page cache (dropped before each timed step where the
machine allows it), process start-up included.  Runs are interleaved (curl and vcbfs alternate
which goes first) and repeated N times; the table shows the best and the median.  Before
timing, big.bin is read once through a mount and the extent once with curl, and both sha256s
are checked against those recorded when the volume was built.  Targets are printed, never
asserted: read >= 0.9x curl's MB/s; open < 2 s.  ``--json FILE`` also writes the run's figures
as JSON.
"""

VSPHERE_READ_TARGET = 0.9  # vcbfs MB/s over curl's, at least
VSPHERE_OPEN_TARGET = 2.0  # seconds from `vcbfs mount` to the first `ls letters/C`, at most
VSPHERE_VM = "bench-big"
VSPHERE_SIGNATURE = 0xB16D15C0  # the MBR disk signature the hive's C: names
VSPHERE_RECIPE_VERSION = 1
SNAPSHOT_PREFIX = "vcbfs-backup "


@dataclass(frozen=True)
class VsphereRecipe:
    """What the big disk is built from; its hash names the cache directory."""

    size_mib: int
    version: int = VSPHERE_RECIPE_VERSION
    seed: int = 20261126
    file: str = "big.bin"


def build_big_disk(recipe: VsphereRecipe) -> Callable[[Path], None]:
    """big.vmdk (descriptor), big-head.bin (MBR), big-flat.vmdk (the volume), facts.json."""

    def build(dest: Path) -> None:
        tests_importable()
        from tests.ntfs.ntfsimages import istat, istat_runs, ntfs3g_mounted
        from tests.windows.hives import build_system_hive

        size = recipe.size_mib * MIB
        cluster = 4096
        vol_size = size + size // 16 + 32 * MIB  # room for the MFT and the log
        vol_size -= vol_size % MIB
        volume = dest / "big-flat.vmdk"
        with volume.open("wb") as f:
            f.truncate(vol_size)
        run(
            ["mkntfs", "-F", "-Q", "-q", "-s", "512", "-c", str(cluster), "-p", "2048",
             "-H", "255", "-S", "63", "-L", "BENCH", volume]
        )  # fmt: skip
        rng = random.Random(recipe.seed)
        host = dest / "big.host"
        digest = hashlib.sha256()
        with host.open("wb") as f:
            for done in range(0, size, 4 * MIB):
                chunk = rng.randbytes(min(4 * MIB, size - done))
                digest.update(chunk)
                f.write(chunk)
        log(f"ntfscp {size // MIB} MiB -> {recipe.file}")
        run(["ntfscp", volume, host, recipe.file])
        host.unlink()
        mounted = {"\\DosDevices\\C:": struct.pack("<IQ", VSPHERE_SIGNATURE, MIB)}
        hive = build_system_hive(dest / "SYSTEM", mounted).read_bytes()
        (dest / "SYSTEM").unlink()
        with ntfs3g_mounted(volume) as mnt:
            config = mnt / "Windows" / "System32" / "config"
            config.mkdir(parents=True)
            (config / "SYSTEM").write_bytes(hive)
            inode = (mnt / recipe.file).stat().st_ino
        runs = istat_runs(istat(volume, inode, runs=True))
        if any(sparse for _, _, sparse in runs) or sum(n for _, n, _ in runs) * cluster < size:
            raise RuntimeError(f"{recipe.file} is not fully allocated: {runs}")
        extent_digest = hashlib.sha256()
        with volume.open("rb") as f:
            while chunk := f.read(4 * MIB):
                extent_digest.update(chunk)
        # The MBR: sfdisk on a sparse stand-in for the whole disk, of which we keep 1 MiB.
        probe = dest / "probe.raw"
        with probe.open("wb") as f:
            f.truncate(MIB + vol_size)
        table = (
            f"label: dos\nlabel-id: {VSPHERE_SIGNATURE:#010x}\n"
            f"start=2048, size={vol_size // 512}, type=7, bootable\n"
        )
        run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", probe], input=table.encode())
        with probe.open("rb") as f:
            (dest / "big-head.bin").write_bytes(f.read(MIB))
        probe.unlink()
        (dest / "big.vmdk").write_text(
            "# Disk DescriptorFile\nversion=1\nCID=b16d15c0\nparentCID=ffffffff\n"
            'createType="monolithicFlat"\n'
            'RW 2048 FLAT "big-head.bin" 0\n'
            f'RW {vol_size // 512} FLAT "big-flat.vmdk" 0\n'
            'ddb.adapterType = "lsilogic"\n'
        )
        facts = {
            "file": recipe.file,
            "size": size,
            "sha256": digest.hexdigest(),
            "mft_record": inode,
            "runs": [[start * cluster, n * cluster] for start, n, _ in runs],  # bytes in extent
            "extent": volume.name,
            "extent_size": vol_size,
            "extent_sha256": extent_digest.hexdigest(),
        }
        (dest / "facts.json").write_text(json.dumps(facts, indent=2) + "\n")

    return build


def vsphere_env(sim: Any, work: Path) -> dict[str, str]:
    """What a backup script would set; this process's own VCBFS_* settings are left out."""
    password = work / "password"
    password.write_text(f"{sim.password}\n")
    password.chmod(0o600)
    config = work / "config.toml"
    config.write_text("# the settings come from the environment\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VCBFS_")}
    env.update(
        VCBFS_HOST=sim.host,
        VCBFS_PORT=str(sim.port),
        VCBFS_USER=str(sim.username),
        VCBFS_PASSWORD_FILE=str(password),
        VCBFS_THUMBPRINT=sim.thumbprint,
        VCBFS_STATE_DIR=str(work / "state"),
        VCBFS_RUN_DIR=str(work / "run"),
        VCBFS_CONFIG=str(config),
    )
    return env


class VsphereMount:
    """``vcbfs mount name:VM MNT`` and ``vcbfs umount MNT``, with the bench's environment."""

    def __init__(self, env: dict[str, str], mnt: Path, spec: str) -> None:
        self.exe = vcbfs_command()
        self.env = env
        self.mnt = mnt
        self.spec = spec
        self.mnt.mkdir(parents=True, exist_ok=True)

    def mount(self) -> None:
        run([self.exe, "mount", self.spec, self.mnt], env=self.env, stdin=subprocess.DEVNULL)

    def server_pid(self) -> int:
        pidfiles = list(Path(self.env["VCBFS_RUN_DIR"]).glob("mount-*.pid"))
        return int(pidfiles[0].read_text()) if len(pidfiles) == 1 else 0

    def release(self) -> None:
        """Unmount (a dead server's mount too); ``vcbfs umount`` waits for the server."""
        if is_mounted(self.mnt):
            run([self.exe, "umount", self.mnt], env=self.env)
        if is_mounted(self.mnt):
            raise RuntimeError(f"{self.mnt} is still mounted after vcbfs umount")


def register(verbs: Verbs) -> None:
    p = bench_parser(
        verbs,
        NAME,
        "vcbfs mount of a vcsim VM: cat of a big file vs one curl GET; time to first ls",
        DOC,
        run_bench,
    )
    p.add_argument(
        "--size-mib", type=positive, default=512, metavar="N", help="the big file's size (512)"
    )


@dataclass
class VsphereCheck:
    lines: list[str] = field(default_factory=list)
    verdict: dict[str, str] = field(default_factory=dict)  # tool -> "ok" / "FAIL"


def run_bench(args: argparse.Namespace) -> int:
    need_tools("curl", "cat", "mkntfs", "ntfscp", "ntfs-3g", "sfdisk", "istat", "openssl")
    need_tools("fusermount3", "hivexregedit")
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    recipe = VsphereRecipe(args.size_mib)
    disk_dir = cached_build("vsphere", dataclasses.asdict(recipe), build_big_disk(recipe))
    facts = json.loads((disk_dir / "facts.json").read_text())
    tests_importable()
    from tests.vsphere.simulator import build_vcsim, secured

    if not build_vcsim().exists():  # builds the launcher once (about a minute) if need be
        sys.exit("bench: no vcsim launcher")
    work = Path(tempfile.mkdtemp(prefix="vsphere-run-", dir=bench_dir()))
    side: VsphereMount | None = None
    try:
        with secured(work) as sim:
            side = VsphereMount(vsphere_env(sim, work), work / "mnt", f"name:{VSPHERE_VM}")
            return vsphere_bench(args, sim, side, disk_dir, facts, started)
    finally:
        if side is not None:
            with contextlib.suppress(CommandError, RuntimeError):
                side.release()
        shutil.rmtree(work, ignore_errors=True)


def vsphere_bench(
    args: argparse.Namespace,
    sim: Any,
    side: VsphereMount,
    disk_dir: Path,
    facts: dict[str, Any],
    started: float,
) -> int:
    from tests.vsphere.simulator import add_vm, list_snapshots, managed

    added = time.perf_counter()
    with sim.session() as si:
        vm = add_vm(sim, si, VSPHERE_VM, [disk_dir / "big.vmdk"])
    log(
        f"vcsim up in {sim.start_seconds:.2f} s; {VSPHERE_VM} added in "
        f"{time.perf_counter() - added:.1f} s (its disk copied into the datastore)"
    )
    extent = next(f for f in vm.disks[0].files if f.startswith(Path(facts["extent"]).stem))
    url = sim.folder_url(f"{vm.vmdir}/{extent}")
    curl = ["curl", "-sS", "--fail", "--noproxy", "*", "--cacert", str(sim.certfile), url]
    target = side.mnt / "letters" / "C" / facts["file"]

    def leftovers() -> list[str]:
        with sim.session() as si:
            snaps = list_snapshots(si, managed(si, vm.moref))
        return [s.name for s in snaps if s.name.startswith(SNAPSHOT_PREFIX)]

    check = vsphere_check(side, curl, target, facts, leftovers)
    for line in check.lines:
        log(line)

    bench = Bench(args.repeat)
    names = ("open", "mount", "read", "umount")
    results = {(t, "vcbfs"): MountResult(verified=check.verdict["vcbfs"]) for t in names}
    results["read", "curl"] = MountResult(verified=check.verdict["curl"])
    leaked: list[str] = []

    def load(action: Callable[[], None]) -> Callable[[], None]:
        """``action``, noting the simulator's CPU seconds and the machine's busy share."""

        def measured() -> None:
            sim0, (busy0, all0) = cpu_seconds(sim.pid), machine_ticks()
            action()
            busy1, all1 = machine_ticks()
            sim_cpu.append(cpu_seconds(sim.pid) - sim0)
            busy.append((busy1 - busy0) / max(1, all1 - all0))

        return measured

    sim_cpu: list[float] = []
    busy: list[float] = []

    def curl_once(rep: int) -> None:
        r = results["read", "curl"]
        t = bench.time(load(lambda: run([*curl, "-o", os.devnull])))
        r.times.append(t)
        r.cpu.append(0.0)
        r.peer_cpu.append(sim_cpu[-1])
        r.busy.append(busy[-1])
        log(
            f"read curl run {rep + 1}: {t:.2f} s (vcsim CPU {sim_cpu[-1]:.2f} s, "
            f"machine {busy[-1]:.0%} busy)"
        )

    def vcbfs_once(rep: int) -> None:
        mount_s: list[float] = []

        def open_() -> None:
            t0 = time.perf_counter()
            side.mount()
            mount_s.append(time.perf_counter() - t0)
            os.listdir(target.parent)

        try:
            t_open = bench.time(open_)
            pid = side.server_pid()
            cpu: list[float] = []

            def read() -> None:
                cpu.append(cpu_seconds(pid) if pid else 0.0)
                with open(os.devnull, "wb") as null:
                    run(["cat", target], stdout=null)
                cpu.append(cpu_seconds(pid) if pid else 0.0)

            t_read = bench.time(load(read))
            t0 = time.perf_counter()
            side.release()
            t_umount = time.perf_counter() - t0
        finally:
            side.release()
        for name, t, c in (
            ("open", t_open, 0.0),
            ("mount", mount_s[0], 0.0),
            ("read", t_read, cpu[1] - cpu[0]),
            ("umount", t_umount, 0.0),
        ):
            results[name, "vcbfs"].times.append(t)
            results[name, "vcbfs"].cpu.append(c)
            results[name, "vcbfs"].peer_cpu.append(sim_cpu[-1])
            results[name, "vcbfs"].busy.append(busy[-1])
        log(
            f"vcbfs run {rep + 1}: open {t_open:.2f} s (mount {mount_s[0]:.2f} s), "
            f"read {t_read:.2f} s (server CPU {cpu[1] - cpu[0]:.2f} s, vcsim CPU "
            f"{sim_cpu[-1]:.2f} s, machine {busy[-1]:.0%} busy), umount {t_umount:.2f} s"
        )
        left = leftovers()
        if left:
            leaked.extend(left)
            log(f"FAIL: snapshots left after vcbfs umount: {left}")

    for rep in range(args.repeat):
        steps = [curl_once, vcbfs_once] if rep % 2 == 0 else [vcbfs_once, curl_once]
        for step in steps:
            try:
                step(rep)
            except (CommandError, OSError, RuntimeError) as e:
                who = "curl" if step is curl_once else "vcbfs"
                log(f"{who} run {rep + 1}: {e}")
                said = e.said if isinstance(e, CommandError) else f"{type(e).__name__}: {e}"
                for (_task, tool), r in results.items():
                    if tool == who and not r.skipped:
                        r.skipped = f"failed: {said}"

    versions = vsphere_tool_versions()
    govmomi = govmomi_version()
    extra = [
        f"versions: {versions}",
        f"simulator: vcsim (govmomi {govmomi}) at {sim.url}, started in "
        f"{sim.start_seconds:.2f} s; VM {VSPHERE_VM}, disk {vm.disks[0].file_name}, "
        f"{vm.disks[0].capacity_bytes // MIB} MiB",
        f"file: letters/C/{facts['file']}, {facts['size'] // MIB} MiB random, in "
        f"{len(facts['runs'])} runs of the flat extent {extent} "
        f"({facts['extent_size'] // MIB} MiB: the whole NTFS volume); disk built in {disk_dir}",
        f"vcbfs: vcbfs mount name:{VSPHERE_VM} MNT (VCBFS_* environment, pinned thumbprint, "
        "https transport); a fresh mount, and so a fresh snapshot, for every run",
        f"curl: {' '.join(curl[:-1])} URL -o /dev/null  (URL = {url.split('?')[0]}?...)",
        f"timing: {args.repeat} run{'s' if args.repeat > 1 else ''} (best and median shown), "
        "curl and vcbfs interleaved; "
        "page cache dropped before each timed step; MB/s = bytes moved / 10^6 / s (vcbfs: "
        "the file; curl: the whole extent)",
        "server CPU: the vcbfs process's user + system seconds during the read; vcsim CPU: the "
        "simulator's (it encrypts every byte for both sides); machine busy: the share of all "
        f"{os.cpu_count()} cores not idle during the read (from /proc/stat)",
        "vcbfs/curl: vcbfs MB/s / curl MB/s (higher is better)",
        *check.lines,
    ]
    print_header("vcbfs bench vsphere", bench, extra)
    rows = print_vsphere_table(results, facts, target.name)
    print()
    for (task, tool), r in results.items():
        if r.verified == "FAIL" or r.skipped:
            print(f"FAIL {task} {tool}: {r.skipped or 'the checks above failed'}")
    if leaked:
        print(f"FAIL: vcbfs umount left snapshots behind: {sorted(set(leaked))}")
    else:
        print(f"snapshots: none left after any of the {args.repeat + 1} unmounts")
    return finish(
        args,
        NAME,
        bench,
        started,
        versions,
        rows,
        simulator=f"vcsim (govmomi {govmomi})",
        vm=VSPHERE_VM,
        file=facts["file"],
        file_bytes=facts["size"],
        extent_bytes=facts["extent_size"],
        snapshots_left=sorted(set(leaked)),
        checks=check.lines,
    )


def vsphere_check(
    side: VsphereMount,
    curl: list[str],
    target: Path,
    facts: dict[str, Any],
    leftovers: Callable[[], list[str]],
) -> VsphereCheck:
    """Read the file once through a mount and once with curl; compare with the built sha256."""
    check = VsphereCheck()
    want = facts["sha256"]
    try:
        side.mount()
        try:
            h = hashlib.sha256()
            with open(target, "rb") as f:
                while chunk := f.read(MIB):
                    h.update(chunk)
        finally:
            side.release()
        left = leftovers()
        if h.hexdigest() != want:
            check.verdict["vcbfs"] = "FAIL"
            check.lines.append(
                f"check vcbfs: FAIL sha256 {h.hexdigest()[:12]}..., want {want[:12]}..."
            )
        elif left:
            check.verdict["vcbfs"] = "FAIL"
            check.lines.append(f"check vcbfs: FAIL snapshots left after umount: {left}")
        else:
            check.verdict["vcbfs"] = "ok"
    except (CommandError, OSError, RuntimeError) as e:
        check.verdict["vcbfs"] = "FAIL"
        check.lines.append(f"check vcbfs: FAIL {type(e).__name__}: {e}")
    want = facts["extent_sha256"]
    try:
        got = hashlib.sha256(run([*curl, "-o", "-"]).stdout).hexdigest()
        check.verdict["curl"] = "ok" if got == want else "FAIL"
        if got != want:
            check.lines.append(f"check curl: FAIL sha256 {got[:12]}..., want {want[:12]}...")
    except CommandError as e:
        check.verdict["curl"] = "FAIL"
        check.lines.append(f"check curl: FAIL {e}")
    if all(v == "ok" for v in check.verdict.values()):
        check.lines.append(
            f"check: {facts['file']} through the mount and the extent through curl have the "
            "sha256s recorded at build time; the snapshot was gone after umount"
        )
    return check


def govmomi_version() -> str:
    changelog = Path("/usr/share/doc/golang-github-vmware-govmomi-dev/changelog.Debian.gz")
    with contextlib.suppress(OSError, ValueError):
        import gzip

        first = gzip.decompress(changelog.read_bytes()).decode().splitlines()[0]
        return first.split("(", 1)[1].split(")", 1)[0]
    return "?"


def vsphere_tool_versions() -> str:
    vcbfs = first_line([vcbfs_command(), "--version"])
    curl = " ".join(first_line(["curl", "--version"]).split()[:2])
    return f"{vcbfs}, {curl}"


def print_vsphere_table(
    results: dict[tuple[str, str], MountResult], facts: dict[str, Any], name: str
) -> list[Row]:
    """Print the table; return its rows' figures, for the JSON document."""
    headers = [
        "task",
        "tool",
        "command",
        "best s",
        "median s",
        "MB/s",
        "server CPU s",
        "vcsim CPU s",
        "machine busy",
        "vcbfs/curl",
        "target",
        "output",
    ]
    shown = {
        ("open", "vcbfs"): f"vcbfs mount name:{VSPHERE_VM} MNT; ls MNT/letters/C",
        ("mount", "vcbfs"): "  of which: vcbfs mount (returns when serving)",
        ("read", "vcbfs"): f"cat MNT/letters/C/{name} > /dev/null",
        ("read", "curl"): "curl --cacert CERT FLAT_EXTENT_URL -o /dev/null",
        ("umount", "vcbfs"): "vcbfs umount MNT (removes the snapshot)",
    }
    curl = results["read", "curl"]
    rows = []
    figures = []
    for key, command in shown.items():
        r = results[key]
        task, tool = key
        f = result_figures(r, task=task, tool=tool, command=command.strip())
        figures.append(f)
        if not r.times:
            row = [task, tool, command, "-", "-", "-", "-", "-", "-", "", ""]
            rows.append([*row, f"skipped: {r.skipped or 'not run'}"])
            continue
        moved = facts["extent_size"] if tool == "curl" else facts["size"]
        mbs = f"{moved / MB / r.best:.0f}" if task == "read" else "-"
        cpu = f"{r.best_cpu:.2f}" if key == ("read", "vcbfs") else "-"
        best = r.times.index(r.best)
        sim_cpu = f"{r.peer_cpu[best]:.2f}" if task == "read" else "-"
        busy = f"{r.busy[best]:.0%}" if task == "read" else "-"
        if task == "read":
            f.update(bytes=moved, mb_s=moved / MB / r.best, median_mb_s=moved / MB / r.median)
            f.update(best_run_vcsim_cpu_s=r.peer_cpu[best], best_run_machine_busy=r.busy[best])
        if key == ("read", "vcbfs"):
            f.update(server_cpu_s=[round(c, 3) for c in r.cpu], best_run_server_cpu_s=r.best_cpu)
        ratio = target = ""
        if key == ("read", "vcbfs") and curl.times:
            x = (facts["size"] / r.best) / (facts["extent_size"] / curl.best)
            ratio = f"{x:.2f}x MB/s"
            f.update(vs_curl=x)
            verdict = judge(f, VSPHERE_READ_TARGET, x >= VSPHERE_READ_TARGET)
            target = f">={VSPHERE_READ_TARGET:.1f}x {verdict}"
        elif task == "open":
            verdict = judge(f, VSPHERE_OPEN_TARGET, r.best < VSPHERE_OPEN_TARGET, miss="over")
            target = f"<{VSPHERE_OPEN_TARGET:.0f} s {verdict}"
        elif task in ("mount", "umount"):
            target = "report only"
        rows.append(
            [
                task,
                tool,
                command,
                f"{r.best:.2f}",
                f"{r.median:.2f}",
                mbs,
                cpu,
                sim_cpu,
                busy,
                ratio,
                target,
                r.verified,
            ]
        )
    print_table(headers, rows, left=3)
    return figures


def markdown(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The README's vSphere table: the read against curl, the time to the first ls, umount."""
    size = span([dict(d) for d in docs], "file_bytes", "{:.0f}")
    mib = f"{int(size.split('-')[0]) // MIB} MiB" if size else "big"
    read = rows_of(docs, task="read", tool="vcbfs")
    curl = rows_of(docs, task="read", tool="curl")
    opened = rows_of(docs, task="open", tool="vcbfs")
    umount = rows_of(docs, task="umount", tool="vcbfs")
    rows = [
        [
            f"`cat` of the {mib} file through the mount",
            span(read, "mb_s", unit=" MB/s"),
            f"one streamed `curl` GET of the extent, {span(curl, 'mb_s', unit=' MB/s')}",
            span(read, "vs_curl", "{:.2f}", "x"),
            f"{VSPHERE_READ_TARGET:.1f}x ({verdict_of(read)})",
        ],
        [
            "`vcbfs mount name:VM` to the first `ls letters/C` (login, snapshot, disks, hive)",
            span(opened, "best_s", "{:.2f}", " s"),
            "",
            "",
            f"under {VSPHERE_OPEN_TARGET:.0f} s ({verdict_of(opened)})",
        ],
        [
            "`vcbfs umount` (snapshot removed)",
            span(umount, "best_s", "{:.2f}", " s"),
            "",
            "",
            "report only",
        ],
    ]
    headers = ["benchmark", "vcbfs", "peer", "ratio", "target"]
    return [runs_line(NAME, docs), "", *md_table(headers, rows)]
