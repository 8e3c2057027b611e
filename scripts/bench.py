"""Benchmarks of vcbfs against independent readers, run side by side on one machine.

    scripts/bench disk [--size-mib N] [--repeat N] [--only KIND[,KIND]]
    scripts/bench ntfs [--repeat N] [--only big,walk] [--profile]   (see ``ntfs --help``)
    scripts/bench mount [--repeat N] [--only open,big,holes,tar,find] [--profile]
    scripts/bench vsphere [--size-mib N] [--repeat N]
    scripts/bench requests [--repeat N] [--count N]
    scripts/bench compressed [--repeat N] [--json FILE]

``disk`` reads whole virtual disks into a file, with ``vcbfs disk cat IMG > out.raw``, with
``qemu-img convert -O raw IMG out.raw``, and with libvmdk's ``vmdkmount`` (mount, ``cat
mnt/vmdkN > out.raw`` for the leaf N of the chain, unmount) where it supports the format.  The
images are built once and cached under ``$VCBFS_BENCH_DIR`` (default /var/tmp/vcbfs-bench) in a
directory named by a hash of the recipe: a raw disk of random data with zero regions (about 20 %
of it, from 4 KiB to 16 MiB long), and from it with qemu-img a monolithicFlat, a monolithicSparse
and a streamOptimized VMDK, plus a hosted delta over the monolithicSparse one holding scattered
``qemu-io`` writes.

Every time is the wall time of the whole command (process start-up, and for vmdkmount the mount
and unmount, included), with the page cache dropped before each run where the machine allows it;
runs of the tools are interleaved, repeated N times, and the table shows the best.  Outputs go to
one directory beside the images and are deleted after each run.  Once per image, before timing,
each tool's output is compared with qemu-img's; a mismatch prints a FAIL line.  Timing never
fails the run: targets are printed as PASS or "below".

Other benchmarks (``ntfs``, ``mount``, ``vsphere``, ``requests``, ``compressed``) are further
subcommands: a ``register_*`` function adds a parser whose ``run`` takes the parsed arguments,
and uses the shared helpers below (``Bench`` for timing with cold caches, ``cached_build``,
``print_header``, ``print_table``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import stat
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000  # throughput is in decimal megabytes per second
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------
# Shared helpers


def log(msg: str) -> None:
    """Progress goes to stderr; results go to stdout."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def bench_dir() -> Path:
    path = Path(os.environ.get("VCBFS_BENCH_DIR") or "/var/tmp/vcbfs-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def vcbfs_command() -> str:
    local = ROOT / ".venv" / "bin" / "vcbfs"
    found = str(local) if local.exists() else shutil.which("vcbfs")
    if not found:
        sys.exit("bench: no vcbfs (run scripts/setup)")
    return found


def need_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)} (run scripts/setup)")


class CommandError(RuntimeError):
    """A command that had to succeed failed; ``said`` is the last line of its stderr."""

    def __init__(self, cmd: Sequence[str], code: int, stderr: str):
        super().__init__(f"{' '.join(cmd)}: exit {code}: {stderr}")
        lines = stderr.splitlines()
        self.said = lines[-1] if lines else f"exit {code}"


def run(cmd: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run a command that must succeed; on failure raise CommandError with what it said."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    argv = [str(c) for c in cmd]
    proc = subprocess.run(argv, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, (proc.stderr or b"").decode(errors="replace"))
    return proc


def drop_caches() -> bool:
    """Write back dirty pages and drop the page cache; False where the machine does not let us."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def cached_build(name: str, recipe: dict[str, object], build: Callable[[Path], None]) -> Path:
    """The directory ``build`` fills for ``recipe``, built once and reused while it is complete.

    Builds go to a temporary directory renamed into place at the end, so an interrupted build
    is never mistaken for a finished one.
    """
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    final = bench_dir() / f"{name}-{key}"
    if (final / ".complete").exists():
        log(f"reusing {final}")
        return final
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.mkdir()
    log(f"building {final} (once; later runs reuse it)")
    start = time.perf_counter()
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    (tmp / ".complete").touch()
    tmp.rename(final)
    log(f"built in {time.perf_counter() - start:.1f} s")
    return final


def allocated_bytes(*paths: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in paths if p.exists())


def machine_line() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = " " + line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f", {kib / (1 << 20):.1f} GiB RAM"
    return f"{os.cpu_count()} cores{cpu}{mem}, kernel {platform.release()}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stale_bytecode() -> int:
    """How many of vcbfs's modules have no bytecode as new as their source."""
    import importlib.util

    count = 0
    for src in (ROOT / "vcbfs").rglob("*.py"):
        pyc = Path(importlib.util.cache_from_source(str(src)))
        if not pyc.exists() or pyc.stat().st_mtime < src.stat().st_mtime:
            count += 1
    return count


def print_header(title: str, bench: Bench, extra: Sequence[str] = ()) -> None:
    print(f"{title}  {datetime.now().astimezone().strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"machine: {machine_line()}")
    print(f"load average: {bench.load_at_start} at start, {load_average()} at end")
    print(f"python: {platform.python_version()}, bench dir: {bench_dir()}")
    caches = "cold cache (page cache dropped before each run)" if bench.cold else "warm cache"
    print(f"cache: {caches}")
    for line in extra:
        print(line)
    print()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> None:
    """A plain text table; the first ``left`` columns are left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(row: Sequence[str]) -> str:
        cells = [
            c.ljust(w) if i < left or i == len(row) - 1 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(fmt(row))


@dataclass
class Bench:
    """Times commands, each run from a cold page cache where the machine allows it."""

    repeat: int
    cold: bool = field(init=False)
    load_at_start: str = field(init=False)

    def __post_init__(self) -> None:
        self.load_at_start = load_average()
        self.cold = drop_caches()
        if not self.cold:
            log("cannot drop the page cache here (not root?): timing with a warm cache")

    def time(self, action: Callable[[], None], cleanup: Callable[[], None] = lambda: None) -> float:
        """Wall seconds of one ``action``; ``cleanup`` runs after it, untimed."""
        if self.cold:
            drop_caches()
        start = time.perf_counter()
        try:
            action()
            return time.perf_counter() - start
        finally:
            cleanup()


@dataclass
class Result:
    times: list[float] = field(default_factory=list)
    skipped: str = ""  # why the tool did not run on this input
    verified: str = ""  # "ok", "reference", or "FAIL"

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def secs(t: float) -> str:
    return f"{t:.2f}" if t < 100 else f"{t:.0f}"


# ---------------------------------------------------------------------------------------------
# scripts/bench disk


RECIPE_VERSION = 1


@dataclass(frozen=True)
class Image:
    kind: str
    file: str  # the file a reader opens
    files: tuple[str, ...]  # the files it owns (for the on-disk size)
    format: str
    target: float | None  # vcbfs MB/s over qemu-img MB/s wanted, if any


IMAGES = [
    Image("raw", "disk.raw", ("disk.raw",), "raw", None),
    Image("flat", "flat.vmdk", ("flat.vmdk", "flat-flat.vmdk"), "monolithicFlat", 1.0),
    Image("sparse", "sparse.vmdk", ("sparse.vmdk",), "monolithicSparse", 1.0),
    Image("stream", "stream.vmdk", ("stream.vmdk",), "streamOptimized", 0.8),
    Image("delta", "delta.vmdk", ("delta.vmdk",), "monolithicSparse delta over sparse", None),
]
KINDS = {i.kind: i for i in IMAGES}
ALIASES = {
    "monolithicflat": "flat",
    "monolithicsparse": "sparse",
    "streamoptimized": "stream",
    "chain": "delta",
}


@dataclass(frozen=True)
class DiskRecipe:
    """What the images are built from; its hash names the cache directory."""

    size_mib: int
    version: int = RECIPE_VERSION
    seed: int = 20261
    zero_fraction: float = 0.2  # of the raw disk, in runs of 4 KiB to 16 MiB
    delta_fraction: float = 0.3  # bytes written into the delta, in writes of 4 KiB to 4 MiB


def log_uniform(rng: random.Random, lo: int, hi: int, align: int = 4096) -> int:
    """A size between lo and hi, uniform in its logarithm, a multiple of ``align``."""
    n = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return max(align, n - n % align)


def disk_layout(size: int, rng: random.Random, zero_fraction: float) -> list[tuple[int, int, bool]]:
    """Runs ``(offset, length, is_zero)`` covering the disk, about ``zero_fraction`` zeros."""
    runs: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        n = min(log_uniform(rng, 4096, 16 * MIB), size - pos)
        runs.append((pos, n))
        pos += n
    order = list(range(len(runs)))
    rng.shuffle(order)
    zero: set[int] = set()
    zeros = 0
    for i in order:
        if zeros >= zero_fraction * size:
            break
        zero.add(i)
        zeros += runs[i][1]
    return [(off, n, i in zero) for i, (off, n) in enumerate(runs)]


def delta_writes(size: int, rng: random.Random, fraction: float) -> list[str]:
    """qemu-io commands writing about ``fraction`` of the disk in scattered patterned runs."""
    cmds = []
    total = 0
    while total < fraction * size:
        n = log_uniform(rng, 4096, 4 * MIB)
        off = rng.randrange(0, (size - n) // 4096 + 1) * 4096
        cmds.append(f"write -P 0x{rng.randrange(1, 256):02x} {off} {n}")
        total += n
    return cmds


def build_disk_images(recipe: DiskRecipe) -> Callable[[Path], None]:
    def build(dest: Path) -> None:
        size = recipe.size_mib * MIB
        rng = random.Random(recipe.seed)
        layout = disk_layout(size, rng, recipe.zero_fraction)
        with open(dest / "disk.raw", "wb") as f:
            f.truncate(size)
            for off, n, is_zero in layout:
                if is_zero:
                    continue
                f.seek(off)
                for done in range(0, n, 4 * MIB):
                    f.write(rng.randbytes(min(4 * MIB, n - done)))
        zeros = sum(n for _, n, z in layout if z)
        log(f"raw disk: {size // MIB} MiB, {len(layout)} runs, {100 * zeros / size:.1f} % zeros")
        for sub, name in (
            ("monolithicFlat", "flat.vmdk"),
            ("monolithicSparse", "sparse.vmdk"),
            ("streamOptimized", "stream.vmdk"),
        ):
            log(f"qemu-img convert -> {name}")
            run(
                ["qemu-img", "convert", "-O", "vmdk", "-o", f"subformat={sub}", "disk.raw", name],
                cwd=dest,
            )
        run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "vmdk",
                "-b",
                "sparse.vmdk",
                "-F",
                "vmdk",
                "delta.vmdk",
            ],
            cwd=dest,
        )
        cmds = delta_writes(size, rng, recipe.delta_fraction)
        log(f"qemu-io: {len(cmds)} writes into delta.vmdk")
        args = [a for c in cmds for a in ("-c", c)]
        out = run(["qemu-io", "-f", "vmdk", *args, "delta.vmdk"], cwd=dest)
        said = (out.stdout + out.stderr).decode(errors="replace")
        if "failed" in said.lower() or "error" in said.lower():
            raise RuntimeError(f"qemu-io: {said[-2000:]}")

    return build


class Tool:
    """One way of reading a whole disk image into ``out``."""

    name = ""

    def unsupported(self, image: Image) -> str:
        """Why this tool cannot read ``image`` at all ('' when it may)."""
        return ""

    def read(self, path: Path, out: Path) -> None:
        raise NotImplementedError


class Vcbfs(Tool):
    name = "vcbfs"

    def __init__(self) -> None:
        self.exe = vcbfs_command()

    def read(self, path: Path, out: Path) -> None:
        with open(out, "wb") as f:
            run([self.exe, "disk", "cat", path], stdout=f)


class QemuImg(Tool):
    name = "qemu-img"

    def read(self, path: Path, out: Path) -> None:
        run(["qemu-img", "convert", "-O", "raw", path, out])


class Vmdkmount(Tool):
    name = "vmdkmount"

    def __init__(self, mnt: Path) -> None:
        self.mnt = mnt
        self.mnt.mkdir(exist_ok=True)
        self.unmount()  # left over from an interrupted run

    def unsupported(self, image: Image) -> str:
        if shutil.which("vmdkmount") is None:
            return "vmdkmount not installed"
        return "not a VMDK" if image.format == "raw" else ""

    def read(self, path: Path, out: Path) -> None:
        """Mount, ``cat`` the leaf of the chain into ``out``, unmount."""
        with self.mounted(path) as disk, open(out, "wb") as f:
            run(["cat", disk], stdout=f)

    @contextlib.contextmanager
    def mounted(self, path: Path) -> Iterator[Path]:
        run(["vmdkmount", path, self.mnt], stdin=subprocess.DEVNULL)
        try:
            # One file per layer of a chain: vmdk1 is the base, the highest number the leaf.
            layers = sorted(self.mnt.glob("vmdk*"), key=lambda p: int(p.name[4:] or 0))
            if not layers:
                raise CommandError(["vmdkmount"], 0, f"no vmdk1 in {self.mnt}")
            yield layers[-1]
        finally:
            self.unmount()

    def unmount(self) -> None:
        for _ in range(100):
            if not os.path.ismount(self.mnt):
                return
            for cmd in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
                if shutil.which(cmd[0]):
                    res = subprocess.run([*cmd, str(self.mnt)], capture_output=True, check=False)
                    if res.returncode == 0:
                        break
            time.sleep(0.05)
        raise RuntimeError(f"cannot unmount {self.mnt}")


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return n


def choice_list(
    what: str, choices: Sequence[str], aliases: Mapping[str, str] | None = None
) -> Callable[[str], list[str]]:
    """An argparse type for ``a,b,c``: known names only, in ``choices`` order."""

    def parse(text: str) -> list[str]:
        names = []
        for word in (w.strip() for w in text.split(",")):
            if not word:
                continue
            name = (aliases or {}).get(word.lower(), word.lower())
            if name not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {word!r} (choose from {', '.join(choices)})"
                )
            names.append(name)
        return [c for c in choices if c in names]

    return parse


def bench_parser(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    doc: str | None,
    run: Callable[[argparse.Namespace], int],
    *,
    repeat: int = 3,
    repeat_help: str = "runs per command (3)",
) -> argparse.ArgumentParser:
    """A subcommand with the options every benchmark has (``--repeat``, default ``repeat``)."""
    p = verbs.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=positive, default=repeat, metavar="N", help=repeat_help)
    p.set_defaults(run=run)
    return p


def register_disk(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = bench_parser(
        verbs,
        "disk",
        "whole-disk reads: vcbfs disk cat vs qemu-img convert vs vmdkmount",
        __doc__,
        run_disk,
        repeat_help="runs per tool and image (3)",
    )
    p.add_argument("--size-mib", type=positive, default=1024, metavar="N", help="disk size (1024)")
    p.add_argument(
        "--only",
        type=choice_list("image kind", KINDS, ALIASES),
        default=list(KINDS),
        metavar="KIND[,KIND]",
        help=f"images to read, of {', '.join(KINDS)} (default all)",
    )


def run_disk(args: argparse.Namespace) -> int:
    need_tools("qemu-img", "qemu-io", "cat", "cmp")
    started = time.perf_counter()
    recipe = DiskRecipe(args.size_mib)
    images_dir = cached_build("disk", dataclasses.asdict(recipe), build_disk_images(recipe))
    out_dir = bench_dir() / "out"
    out_dir.mkdir(exist_ok=True)
    for stale in out_dir.glob("*.raw"):
        stale.unlink()
    tools: list[Tool] = [Vcbfs(), QemuImg(), Vmdkmount(bench_dir() / "mnt")]
    bench = Bench(args.repeat)
    images = [KINDS[k] for k in args.only]
    size = args.size_mib * MIB

    results: dict[tuple[str, str], Result] = {}
    for image in images:
        path = images_dir / image.file
        for tool in tools:
            results[image.kind, tool.name] = Result(skipped=tool.unsupported(image))
        verify(image, path, tools, results, out_dir)
        live = [t for t in tools if not results[image.kind, t.name].skipped]
        for rep in range(args.repeat):
            for tool in live:
                out = out_dir / f"{tool.name}.raw"
                t = bench.time(
                    lambda t=tool, p=path, o=out: t.read(p, o),
                    lambda o=out: o.unlink(missing_ok=True),
                )
                results[image.kind, tool.name].times.append(t)
                log(f"{image.kind} {tool.name} run {rep + 1}: {t:.2f} s")

    print_header(
        "vcbfs bench disk",
        bench,
        [
            f"versions: {tool_versions()}",
            f"disk: {args.size_mib} MiB virtual ({size:,} bytes), images in {images_dir}",
            f"timing: best of {args.repeat} runs of the whole command, runs interleaved; "
            "MB/s = virtual disk bytes / 10^6 / s; vs X = vcbfs MB/s / X MB/s",
            "images:",
            *(
                f"  {i.kind:<7} {i.format}, {on_disk_mib(images_dir, i):.0f} MiB on disk"
                for i in images
            ),
        ],
    )
    print_disk_table(images, tools, results, size)
    print()
    for (kind, name), r in results.items():
        if r.verified == "FAIL":
            why = r.skipped or "output differs from qemu-img's"
            print(f"FAIL {kind}: {name} {why}")
    print(f"whole run: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


def verify(
    image: Image, path: Path, tools: list[Tool], results: dict[tuple[str, str], Result], out: Path
) -> None:
    """Read ``image`` once with every tool and compare each output with qemu-img's."""
    ref = out / "reference.raw"
    try:
        QemuImg().read(path, ref)
        results[image.kind, QemuImg.name].verified = "reference"
        for tool in tools:
            result = results[image.kind, tool.name]
            if result.skipped or isinstance(tool, QemuImg):
                continue
            mine = out / f"{tool.name}.raw"
            try:
                tool.read(path, mine)
            except CommandError as e:
                if tool.name == Vcbfs.name:
                    result.verified = "FAIL"
                    result.skipped = f"failed: {e.said}"
                else:
                    result.skipped = f"cannot read it: {e.said}"
                log(f"{image.kind} {tool.name}: {e}")
                mine.unlink(missing_ok=True)
                continue
            same = (
                mine.stat().st_size == ref.stat().st_size
                and subprocess.run(["cmp", "-s", ref, mine], check=False).returncode == 0
            )
            result.verified = "ok" if same else "FAIL"
            if not same:
                log(f"FAIL {image.kind}: {tool.name} output differs from qemu-img's")
            mine.unlink(missing_ok=True)
    finally:
        ref.unlink(missing_ok=True)
        for stale in out.glob("*.raw"):
            stale.unlink()


def on_disk_mib(images_dir: Path, image: Image) -> float:
    return allocated_bytes(*(images_dir / f for f in image.files)) / MIB


def tool_versions() -> str:
    qemu = first_line(["qemu-img", "--version"]).removeprefix("qemu-img version ")
    vmdk = first_line(["vmdkmount", "-V"]).removeprefix("vmdkmount ")
    vcbfs = first_line([vcbfs_command(), "--version"])
    return f"{vcbfs}, qemu-img {qemu}, vmdkmount {vmdk}"


def print_disk_table(
    images: list[Image], tools: list[Tool], results: dict[tuple[str, str], Result], size: int
) -> None:
    headers = [
        "image",
        "tool",
        "best s",
        "median s",
        "MB/s",
        "vs qemu-img",
        "vs vmdkmount",
        "target",
        "output",
    ]
    rows = []
    for image in images:
        qemu = results[image.kind, QemuImg.name]
        vmdk = results[image.kind, Vmdkmount.name]
        for tool in tools:
            r = results[image.kind, tool.name]
            if not r.times:
                why = r.skipped or "not run"
                rows.append([image.kind, tool.name, "-", "-", "-", "", "", "", f"skipped: {why}"])
                continue
            mbs = size / MB / r.best
            vs_qemu = vs_vmdk = target = ""
            if isinstance(tool, Vcbfs):
                if qemu.times:
                    ratio = qemu.best / r.best
                    vs_qemu = f"{ratio:.2f}x"
                    if image.target is not None:
                        verdict = "PASS" if ratio >= image.target else "below"
                        target = f">={image.target:.1f}x {verdict}"
                if vmdk.times:
                    vs_vmdk = f"{vmdk.best / r.best:.2f}x"
            rows.append(
                [
                    image.kind,
                    tool.name,
                    secs(r.best),
                    secs(r.median),
                    f"{mbs:.0f}",
                    vs_qemu,
                    vs_vmdk,
                    target,
                    r.verified,
                ]
            )
    print_table(headers, rows)


# ---------------------------------------------------------------------------------------------
# scripts/bench ntfs

NTFS_DOC = """\
    scripts/bench ntfs [--repeat N] [--only big,walk] [--profile]

``ntfs`` reads the NTFS test volume of tests/ntfs/ntfsimages.py (a bare 512 MiB volume, built
once and cached like the tests do, holding a 64 MiB random file and about 23,000 files) with
vcbfs and with independent readers, side by side in one run:

  big   bench/big.bin written to /dev/null by ``vcbfs disk cat IMG bench/big.bin``, by
        vcbfs's API in a running process as the mount server uses it (``python -c APICAT``:
        opening the volume, the lookup and the copy, timed inside the process, so without
        interpreter start and imports), by
        sleuthkit's ``icat IMG INODE`` (the inode from vcbfs's lookup, checked against the
        manifest) and by ``cat MNT/bench/big.bin`` on a read-only ntfs-3g mount; and the same
        for a 1-byte file, which shows each tool's fixed cost (start-up, opening the volume).
  walk  every file's unnamed data read in full, reparse points not followed, of the whole
        volume and of tree/ (3,000 files in 300 directories): vcbfs through its Python API in a
        new process (``python -c WALKER IMG DIR``: lookup, iterdir, stat, open, read_at in
        1 MiB pieces; a file with several names is read once, as tar does), against
        ``tar cf - . | wc -c`` (the reference) and ``find . -type f -exec cat {} + | wc -c``,
        both run in DIR on a read-only ntfs-3g mount.

Every time is the wall time of the whole command (process start-up included) from a cold page
cache (dropped before each run where the machine allows it).  ntfs-3g is mounted afresh before
each of its runs and unmounted after it, untimed: the mount is not counted, its caches are cold.
Runs are interleaved and repeated N times; the tables show the best and the median.  Before
timing, each command runs once and its output is checked against the manifest ntfs-3g wrote
when the volume was built (sha256 of the file; files and bytes of the walk).  Targets are
printed, never asserted: big file >= 1.0x icat's MB/s; tree walk time <= 1.5x the fastest peer's.
``--profile`` ends with cProfile's top functions (by cumulative time) of the vcbfs commands,
each from a cold cache.
"""

#: vcbfs's side of the tree walk, run as ``python -c WALKER IMAGE DIR``; prints files and bytes.
WALKER = """\
import sys
from vcbfs.blocks.local import LocalSource
from vcbfs.ntfs.volume import NtfsVolume

CHUNK = 1 << 20
volume = NtfsVolume(LocalSource(sys.argv[1]))
seen = set()
files = nbytes = 0
stack = [volume.lookup(sys.argv[2])]
while stack:
    for entry in volume.iterdir(stack.pop()):
        if entry.record in seen:
            continue
        seen.add(entry.record)
        st = volume.stat(entry.record)
        if st.reparse is not None:
            continue
        if st.is_dir:
            stack.append(entry.record)
            continue
        data = volume.open(entry.record)
        size = data.size
        for offset in range(0, size, CHUNK):
            nbytes += len(data.read_at(offset, min(CHUNK, size - offset)))
        files += 1
print(files, nbytes)
"""

#: vcbfs's API in a running process, as the mount server uses it: ``python -c APICAT IMG FILE
#: TIMEFILE`` imports first, then times opening the volume, the lookup and copying the file to
#: stdout, and writes those seconds to TIMEFILE (interpreter start and imports left out).
APICAT = """\
import sys, time
from vcbfs.blocks.copy import copy_to_fd
from vcbfs.blocks.local import LocalSource
from vcbfs.ntfs.volume import NtfsVolume

start = time.perf_counter()
volume = NtfsVolume(LocalSource(sys.argv[1]))
copy_to_fd(volume.open(volume.lookup(sys.argv[2])), 1)
elapsed = time.perf_counter() - start
with open(sys.argv[3], "w") as f:
    f.write(repr(elapsed))
"""

BIG_TARGET = 1.0  # vcbfs MB/s over icat's, at least
WALK_TARGET = 1.5  # vcbfs seconds over the fastest peer's, at most
NTFS_PARTS = ("big", "walk")
TINY_FILE = "sizes/tiny-1.bin"


@dataclass
class Job:
    """One tool doing one task; ``argv`` may hold ``{mnt}``, replaced by a fresh ntfs-3g mount."""

    part: str  # "big" or "walk"
    scope: str  # the file read, or the directory walked ("/" for the whole volume)
    tool: str
    argv: list[str]
    shown: str  # the command as the table prints it
    expect: Callable[[bytes], tuple[bool, str]]  # judges the output of the checking run
    mount: bool = False
    cwd: str = ""  # inside the mount
    to_null: bool = False  # timed runs write stdout to /dev/null (else a pipe, kept)
    result: Result = field(default_factory=Result)
    read: int | None = None  # bytes the checking run counted (walk)
    reports: str = ""  # a file where the command writes its own seconds (APICAT)

    @property
    def is_vcbfs(self) -> bool:
        return self.tool.startswith("vcbfs")


def ntfs_fixture() -> Any:
    """The cached test volume (an ``NtfsImage``), built as the tests build it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.ntfs.ntfsimages import build_ntfs_image, ntfs_cache_dir

    root = ntfs_cache_dir()
    if not (root / ".complete").exists():
        log(f"building the NTFS test volume in {root} (once; about a minute)")
    return build_ntfs_image(root)


def venv_python() -> str:
    """The Python that runs vcbfs: the one beside the ``vcbfs`` script."""
    beside = Path(vcbfs_command()).parent / "python"
    return str(beside) if beside.exists() else sys.executable


@contextlib.contextmanager
def mounted_for(job: Job, image: Path) -> Iterator[tuple[list[str], Path | None]]:
    """``job``'s argv and cwd, on a fresh read-only ntfs-3g mount of ``image`` if it needs one."""
    if not job.mount:
        yield job.argv, None
        return
    from tests.ntfs.ntfsimages import ntfs3g_mounted

    with ntfs3g_mounted(image, "ro") as mnt:
        yield [a.replace("{mnt}", str(mnt)) for a in job.argv], mnt / job.cwd


def check_job(job: Job, image: Path) -> None:
    """Run ``job`` once, untimed, and judge its output; failures mark it skipped or FAIL."""
    try:
        with mounted_for(job, image) as (argv, cwd):
            out = run(argv, cwd=cwd).stdout
    except CommandError as e:
        job.result.verified = "FAIL" if job.is_vcbfs else ""
        job.result.skipped = f"failed: {e.said}"
        log(f"{job.scope} {job.tool}: {e}")
        return
    ok, what = job.expect(out)
    if job.part == "walk" and out.split():
        job.read = int(out.split()[-1])
    job.result.verified = "ok" if ok else "FAIL"
    if not ok:
        job.result.skipped = what
        log(f"FAIL {job.scope} {job.tool}: {what}")


def time_job(bench: Bench, job: Job, image: Path) -> float:
    with contextlib.ExitStack() as stack:
        argv, cwd = stack.enter_context(mounted_for(job, image))
        out: Any = subprocess.PIPE
        if job.to_null:
            out = stack.enter_context(open(os.devnull, "wb")).fileno()
        wall = bench.time(lambda: run(argv, cwd=cwd, stdout=out))
        return float(Path(job.reports).read_text()) if job.reports else wall


def sha256_is(want: str) -> Callable[[bytes], tuple[bool, str]]:
    def expect(out: bytes) -> tuple[bool, str]:
        got = hashlib.sha256(out).hexdigest()
        return got == want, f"sha256 {got[:12]}..., the manifest has {want[:12]}..."

    return expect


def ntfs_jobs(img: Any, manifest: dict[str, dict[str, Any]], parts: list[str]) -> list[Job]:
    from vcbfs.blocks.local import LocalSource
    from vcbfs.ntfs.volume import NtfsVolume

    image = str(img.path)
    vcbfs = vcbfs_command()
    jobs: list[Job] = []
    if "big" in parts:
        volume = NtfsVolume(LocalSource(image))
        report_file = Path(tempfile.gettempdir()) / f"vcbfs-bench-api-{os.getpid()}.txt"
        for rel in (img.big_file, TINY_FILE):
            inode = volume.lookup(rel)
            if inode != manifest[rel]["ino"]:
                log(f"FAIL {rel}: vcbfs finds MFT record {inode}, ntfs-3g {manifest[rel]['ino']}")
            expect = sha256_is(str(manifest[rel]["sha256"]))
            common = {"part": "big", "scope": rel, "expect": expect, "to_null": True}
            jobs += [
                Job(
                    tool="vcbfs",
                    argv=[vcbfs, "disk", "cat", image, rel],
                    shown=f"vcbfs disk cat IMG {rel}",
                    **common,
                ),
                Job(
                    tool="vcbfs API",
                    argv=[venv_python(), "-c", APICAT, image, rel, str(report_file)],
                    shown="API: open volume, lookup, copy out",
                    reports=str(report_file),
                    **common,
                ),
                Job(
                    tool="icat",
                    argv=["icat", image, str(inode)],
                    shown=f"icat IMG {inode}",
                    **common,
                ),
                Job(
                    tool="ntfs-3g",
                    argv=["cat", f"{{mnt}}/{rel}"],
                    shown=f"cat MNT/{rel}",
                    mount=True,
                    **common,
                ),
            ]
    if "walk" in parts:
        python = venv_python()
        for scope in ("/", img.tree_dir):
            inside = {
                k: v
                for k, v in manifest.items()
                if v["type"] == "file" and (scope == "/" or k.startswith(f"{scope}/"))
            }
            by_inode = {v["ino"]: int(v["size"]) for v in inside.values()}
            files, nbytes = len(by_inode), sum(by_inode.values())
            names_bytes = sum(int(v["size"]) for v in inside.values())
            cwd = "" if scope == "/" else scope
            mnt_dir = "MNT" if scope == "/" else f"MNT/{scope}"
            tar = "tar cf - . | wc -c"
            find = "find . -type f -exec cat {} + | wc -c"
            jobs += [
                Job(
                    "walk",
                    scope,
                    "vcbfs",
                    [python, "-c", WALKER, image, scope],
                    f"python -c WALKER IMG {scope}",
                    walk_expect(files, nbytes, exact=True),
                ),
                Job(
                    "walk",
                    scope,
                    "tar",
                    ["bash", "-o", "pipefail", "-c", tar],
                    f"{tar}  (in {mnt_dir})",
                    walk_expect(files, nbytes, exact=False),
                    mount=True,
                    cwd=cwd,
                ),
                Job(
                    "walk",
                    scope,
                    "find+cat",
                    ["bash", "-o", "pipefail", "-c", find],
                    f"{find}  (in {mnt_dir})",
                    walk_expect(len(inside), names_bytes, exact=True),
                    mount=True,
                    cwd=cwd,
                ),
            ]
    return jobs


def walk_expect(files: int, nbytes: int, exact: bool) -> Callable[[bytes], tuple[bool, str]]:
    """The walker prints ``files bytes``, wc -c ``bytes``; a tar archive is larger than its data."""

    def expect(out: bytes) -> tuple[bool, str]:
        said = [int(w) for w in out.split()]
        if len(said) == 2:
            ok = said == [files, nbytes]
            return (
                ok,
                f"read {said[0]} files, {said[1]:,} bytes; the manifest has {files}, {nbytes:,}",
            )
        if len(said) != 1:
            return False, f"unexpected output {out[:80]!r}"
        ok = said[0] == nbytes if exact else said[0] >= nbytes
        return ok, f"{said[0]:,} bytes; the manifest has {nbytes:,} bytes of data"

    return expect


def register_ntfs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = bench_parser(
        verbs,
        "ntfs",
        "NTFS volume reads: vcbfs vs sleuthkit icat vs ntfs-3g (big file, tree walk)",
        NTFS_DOC,
        run_ntfs,
    )
    p.add_argument(
        "--only",
        type=choice_list("part", NTFS_PARTS),
        default=list(NTFS_PARTS),
        metavar="PART[,PART]",
        help="big (file reads), walk (tree walks); default both",
    )
    p.add_argument(
        "--profile", action="store_true", help="then profile the vcbfs commands with cProfile"
    )


def run_ntfs(args: argparse.Namespace) -> int:
    need_tools("icat", "ntfs-3g", "umount", "tar", "find", "cat", "wc", "bash")
    started = time.perf_counter()
    img = ntfs_fixture()
    image = Path(img.path)
    manifest = img.entries
    jobs = ntfs_jobs(img, manifest, args.only)
    for job in jobs:
        check_job(job, image)
    bench = Bench(args.repeat)
    live = [j for j in jobs if not j.result.skipped]
    for rep in range(args.repeat):
        for job in live:
            t = time_job(bench, job, image)
            job.result.times.append(t)
            log(f"{job.scope} {job.tool} run {rep + 1}: {t:.2f} s")
    for job in jobs:
        if job.reports:
            Path(job.reports).unlink(missing_ok=True)

    files = sum(1 for v in manifest.values() if v["type"] == "file")
    dirs = sum(1 for v in manifest.values() if v["type"] == "dir")
    extra = [
        f"versions: {ntfs_tool_versions()}",
        f"volume: {image} ({image.stat().st_size // MIB} MiB bare NTFS volume, "
        f"{files:,} file names, {dirs:,} directories)",
        f"timing: best of {args.repeat} runs of the whole command, runs interleaved; "
        "ntfs-3g mounted fresh before each run, mount and unmount not timed",
        "big file: output to /dev/null; MB/s = file bytes / 10^6 / s; "
        "vcbfs/X = vcbfs MB/s / X MB/s",
        "walk: MB = what the command counted (tar: the archive, headers included); "
        "vcbfs/X = vcbfs s / X s (lower is better)",
    ]
    stale = stale_bytecode()
    if stale and os.environ.get("PYTHONDONTWRITEBYTECODE"):
        extra.append(
            f"note: PYTHONDONTWRITEBYTECODE is set and {stale} vcbfs modules have no up-to-date "
            "bytecode: every vcbfs run compiles them (scripts/setup compiles them)"
        )
    print_header("vcbfs bench ntfs", bench, extra)
    big = [j for j in jobs if j.part == "big"]
    walk = [j for j in jobs if j.part == "walk"]
    if big:
        print_big_table(big, manifest)
        print()
    if walk:
        print_walk_table(walk)
        print()
    for job in jobs:
        if job.result.verified == "FAIL":
            print(f"FAIL {job.scope} {job.tool}: {job.result.skipped}")
    if args.profile:
        profile_vcbfs(img, args.only, bench)
    print(f"whole run: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


def skipped_row(job: Job, width: int) -> list[str]:
    row = [job.scope, job.tool, job.shown] + ["-"] * (width - 4)
    return [*row, f"skipped: {job.result.skipped or 'not run'}"]


def print_big_table(jobs: list[Job], manifest: dict[str, dict[str, Any]]) -> None:
    headers = [
        "file",
        "tool",
        "command",
        "best s",
        "median s",
        "MB/s",
        "vcbfs/icat",
        "vcbfs/ntfs-3g",
        "target",
        "output",
    ]
    rows = []
    for job in jobs:
        r = job.result
        if not r.times:
            rows.append(skipped_row(job, len(headers)))
            continue
        size = int(manifest[job.scope]["size"])
        big = size >= MIB  # for a 1-byte file only the seconds mean anything
        mbs = f"{size / MB / r.best:.0f}" if big else "-"
        vs_icat = vs_ntfs3g = target = ""
        if job.is_vcbfs:
            peers = {j.tool: j.result for j in jobs if j.scope == job.scope}
            icat, ntfs3g = peers.get("icat"), peers.get("ntfs-3g")
            if icat and icat.times:
                ratio = icat.best / r.best
                vs_icat = f"{ratio:.2f}x"
                if big:
                    verdict = "PASS" if ratio >= BIG_TARGET else "below"
                    target = f">={BIG_TARGET:.1f}x icat {verdict}"
            if ntfs3g and ntfs3g.times:
                vs_ntfs3g = f"{ntfs3g.best / r.best:.2f}x"
        rows.append(
            [
                job.scope,
                job.tool,
                job.shown,
                f"{r.best:.3f}",
                f"{r.median:.3f}",
                mbs,
                vs_icat,
                vs_ntfs3g,
                target,
                r.verified,
            ]
        )
    print_table(headers, rows, left=3)


def print_walk_table(jobs: list[Job]) -> None:
    headers = ["dir", "tool", "command", "best s", "median s", "MB", "vcbfs/X", "target", "output"]
    rows = []
    for job in jobs:
        r = job.result
        if not r.times:
            rows.append(skipped_row(job, len(headers)))
            continue
        mine = next((j.result for j in jobs if j.scope == job.scope and j.is_vcbfs), None)
        peers = [j.result for j in jobs if j.scope == job.scope and not j.is_vcbfs]
        ratio = target = ""
        if job.is_vcbfs:
            fastest = min((p.best for p in peers if p.times), default=None)
            if fastest is not None:
                x = r.best / fastest
                verdict = "PASS" if x <= WALK_TARGET else "over"
                ratio = f"{x:.3f}x fastest"  # 3 places: 1.503x is over 1.5x
                target = f"<={WALK_TARGET:.1f}x {verdict}"
        elif mine is not None and mine.times:
            ratio = f"{mine.best / r.best:.2f}x"
        read = f"{job.read / MB:,.0f}" if job.read is not None else "?"
        rows.append(
            [
                job.scope,
                job.tool,
                job.shown,
                f"{r.best:.2f}",
                f"{r.median:.2f}",
                read,
                ratio,
                target,
                r.verified,
            ]
        )
    print_table(headers, rows, left=3)


def first_line(cmd: list[str]) -> str:
    """The first line a tool prints about itself ("?" if it is missing or silent)."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    said = (res.stdout or res.stderr).strip()
    return said.splitlines()[0] if said else "?"


def ntfs_tool_versions() -> str:
    vcbfs = first_line([vcbfs_command(), "--version"])
    tsk = first_line(["icat", "-V"]).removeprefix("The Sleuth Kit ver ")
    ntfs3g = first_line(["ntfs-3g", "--version"]).split(" integrated")[0]
    tar = first_line(["tar", "--version"]).removeprefix("tar (GNU tar) ")
    return f"{vcbfs}, sleuthkit {tsk}, {ntfs3g}, GNU tar {tar}"


def profile_vcbfs(img: Any, parts: list[str], bench: Bench, top: int = 25) -> None:
    """cProfile's view of the vcbfs commands, each run once from a cold cache.

    cProfile sees the main thread only: the worker threads of ``disk cat`` (reads and writes)
    show as the main thread waiting for them.
    """
    import pstats

    work = bench_dir() / "ntfs-profile"
    work.mkdir(exist_ok=True)
    walker = work / "walker.py"
    walker.write_text(WALKER)
    python = venv_python()
    runs: list[tuple[str, list[str]]] = []
    if "big" in parts:
        runs.append(
            (
                f"vcbfs disk cat IMG {img.big_file}",
                ["-m", "vcbfs", "disk", "cat", str(img.path), img.big_file],
            )
        )
    if "walk" in parts:
        runs += [(f"walker IMG {d}", [str(walker), str(img.path), d]) for d in ("/", img.tree_dir)]
    for title, argv in runs:
        out = work / "profile.out"
        with open(os.devnull, "wb") as null:
            t = bench.time(
                lambda a=argv, n=null, o=out: run([python, "-m", "cProfile", "-o", o, *a], stdout=n)
            )
        print(f"profile: {title}  ({t:.2f} s under cProfile, cold cache)")
        stats = pstats.Stats(str(out), stream=sys.stdout)
        stats.strip_dirs().sort_stats("cumulative").print_stats(top)
        out.unlink()
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# scripts/bench mount

MOUNT_DOC = """\
    scripts/bench mount [--repeat N] [--only open,big,holes,tar,find] [--profile]

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
attached to the mount's server process, and prints its hot spots.
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

    def __init__(self, vmx: Path, mnt: Path, inside: str = "letters/F") -> None:
        self.exe = vcbfs_command()
        self.vmx = vmx
        self.mnt = mnt
        self.inside = inside
        self.root = f"MNT/{inside}"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.release()  # left over from an interrupted run

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Mounted]:
        from vcbfs.cli.mount import _pidfile

        run([self.exe, "mount", self.vmx, self.mnt], stdin=subprocess.DEVNULL)
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


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


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


def register_mount(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = bench_parser(
        verbs,
        "mount",
        "the FUSE mount: vcbfs mount of the test VM vs ntfs-3g -o ro of the same volume",
        MOUNT_DOC,
        run_mount,
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


def run_mount(args: argparse.Namespace) -> int:
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
    extra = [
        f"versions: {mount_tool_versions()}",
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
    print_mount_table(tasks, sides, results, img, checks["vcbfs"].tar_bytes)
    print()
    for (task_name, side_name), r in results.items():
        if r.verified == "FAIL" or r.skipped:
            print(f"FAIL {task_name} {side_name}: {r.skipped or 'the checks above failed'}")
    if args.profile:
        profile_mount(vcbfs_side, tasks, bench)
    print(f"whole run: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


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
) -> None:
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
    for task in tasks:
        ntfs3g = results[task.name, "ntfs-3g"]
        for tool in [*(side.name for side in sides), BARE]:
            r = results.get((task.name, tool))
            if r is None:
                continue
            shown = bare_shown[task.name] if tool == BARE else task.shown
            if not r.times:
                row = [task.name, tool, shown, "-", "-", "-", "-", "", ""]
                rows.append([*row, f"skipped: {r.skipped or 'not run'}"])
                continue
            size = sizes.get(task.name)
            mbs = f"{size / MB / r.best:.0f}" if size else "-"
            ratio = target = ""
            if tool != "ntfs-3g" and ntfs3g.times:
                if task.name in ("big", "holes"):
                    x = ntfs3g.best / r.best
                    ratio = f"{x:.2f}x MB/s"
                    if task.name == "big" and tool == "vcbfs":
                        verdict = "PASS" if x >= MOUNT_BIG_TARGET else "below"
                        target = f">={MOUNT_BIG_TARGET:.1f}x {verdict}"
                else:
                    x = r.best / ntfs3g.best
                    ratio = f"{x:.2f}x time"
                    if task.name == "tar" and tool == "vcbfs":
                        verdict = "PASS" if x <= MOUNT_TAR_TARGET else "over"
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


# ---------------------------------------------------------------------------------------------
# scripts/bench vsphere

VSPHERE_DOC = """\
    scripts/bench vsphere [--size-mib N] [--repeat N]

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
asserted: read >= 0.9x curl's MB/s; open < 2 s.
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


def tests_importable() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


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


def register_vsphere(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = bench_parser(
        verbs,
        "vsphere",
        "vcbfs mount of a vcsim VM: cat of a big file vs one curl GET; time to first ls",
        VSPHERE_DOC,
        run_vsphere,
    )
    p.add_argument(
        "--size-mib", type=positive, default=512, metavar="N", help="the big file's size (512)"
    )


@dataclass
class VsphereCheck:
    lines: list[str] = field(default_factory=list)
    verdict: dict[str, str] = field(default_factory=dict)  # tool -> "ok" / "FAIL"


def run_vsphere(args: argparse.Namespace) -> int:
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

    extra = [
        f"versions: {vsphere_tool_versions()}",
        f"simulator: vcsim (govmomi {govmomi_version()}) at {sim.url}, started in "
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
    print_vsphere_table(results, facts, target.name)
    print()
    for (task, tool), r in results.items():
        if r.verified == "FAIL" or r.skipped:
            print(f"FAIL {task} {tool}: {r.skipped or 'the checks above failed'}")
    if leaked:
        print(f"FAIL: vcbfs umount left snapshots behind: {sorted(set(leaked))}")
    else:
        print(f"snapshots: none left after any of the {args.repeat + 1} unmounts")
    print(f"whole run: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


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
) -> None:
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
    for key, command in shown.items():
        r = results[key]
        task, tool = key
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
        ratio = target = ""
        if key == ("read", "vcbfs") and curl.times:
            x = (facts["size"] / r.best) / (facts["extent_size"] / curl.best)
            ratio = f"{x:.2f}x MB/s"
            verdict = "PASS" if x >= VSPHERE_READ_TARGET else "below"
            target = f">={VSPHERE_READ_TARGET:.1f}x {verdict}"
        elif task == "open":
            verdict = "PASS" if r.best < VSPHERE_OPEN_TARGET else "over"
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


# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# scripts/bench requests

REQUESTS_DOC = """\
    scripts/bench requests [--repeat N] [--count N]

``requests`` measures what one FUSE request costs on each side, which bounds any benchmark that
makes many of them (tar of a tree makes about 11,500).  It opens and closes one small file
(bench/``sizes/tiny-1.bin`` of the mount benchmark's volume) COUNT times (default 5,000) in the
bench's own process: each pair is an OPEN and a RELEASE request (and a FLUSH where the server
answers it), and nothing is read.  Three servers, each on a fresh mount, runs interleaved:

  vcbfs     ``vcbfs mount`` of the mount benchmark's VM (MNT/letters/F)
  ntfs-3g   ``ntfs-3g -o ro`` of the same volume
  nothing   the least pyfuse3 + trio file system (one file, every answer from memory: no
            parsing, no disk), run from this script: the floor under any server built on the
            binding and event loop vcbfs uses

The table shows microseconds per open + close (best and median of N runs) and the ratio to
ntfs-3g's.  Printed, never asserted.
"""


class _Nothing:
    """The least pyfuse3 + trio file system: a root holding ``f`` (1 byte); no state."""

    @staticmethod
    def serve(mnt: str) -> None:
        import errno as errno_
        import stat as stat_

        import pyfuse3
        import trio

        class Ops(pyfuse3.Operations):
            async def getattr(self, inode: int, ctx: Any = None) -> Any:
                e = pyfuse3.EntryAttributes()
                e.st_ino = inode
                e.entry_timeout = e.attr_timeout = 86400
                e.st_mode = (stat_.S_IFDIR | 0o555) if inode == 1 else (stat_.S_IFREG | 0o444)
                e.st_size = 0 if inode == 1 else 1
                return e

            async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> Any:
                if parent != 1 or name != b"f":
                    raise pyfuse3.FUSEError(errno_.ENOENT)
                return await self.getattr(2)

            async def open(self, inode: int, flags: int, ctx: Any) -> Any:
                return pyfuse3.FileInfo(fh=inode, keep_cache=True)

            async def read(self, fh: int, off: int, size: int) -> bytes:
                return b"x"[off : off + size]

            async def release(self, fh: int) -> None:
                pass

        pyfuse3.init(Ops(), mnt, {"fsname=nothing", "ro"})
        try:
            trio.run(pyfuse3.main)
        finally:
            pyfuse3.close(unmount=False)


class NothingSide(MountSide):
    """``scripts/bench.py _nothing MNT`` in the background; ``fusermount3 -u`` ends it."""

    name = "nothing"
    root = "MNT"

    def __init__(self, mnt: Path) -> None:
        self.mnt = mnt
        self.mnt.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Mounted]:
        proc = subprocess.Popen([venv_python(), __file__, "_nothing", str(self.mnt)])
        try:
            deadline = time.monotonic() + 30
            while not is_mounted(self.mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the do-nothing pyfuse3 file system did not mount")
                time.sleep(0.02)
            yield Mounted(self.mnt, proc.pid)
        finally:
            if is_mounted(self.mnt):
                run(["fusermount3", "-u", self.mnt])
            proc.wait(30)


def open_close(path: Path, count: int) -> None:
    """``count`` opens and closes of ``path``."""
    for _ in range(count):
        os.close(os.open(path, os.O_RDONLY))


def register_requests(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = bench_parser(
        verbs,
        "requests",
        "the cost of one FUSE request: vcbfs, ntfs-3g, pyfuse3 + trio alone",
        REQUESTS_DOC,
        run_requests,
    )
    p.add_argument("--count", type=positive, default=5000, help="open+close pairs per run")
    hidden = verbs.add_parser("_nothing")  # the do-nothing file system, for NothingSide
    hidden.add_argument("mnt")
    hidden.set_defaults(run=lambda a: _Nothing.serve(a.mnt) or 0)


def run_requests(args: argparse.Namespace) -> int:
    need_tools("ntfs-3g", "fusermount3")
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    img, vm = mount_fixture()
    sides: list[tuple[MountSide, str]] = [
        (VcbfsSide(vm.vmx, bench_dir() / "mnt-vcbfs"), TINY_FILE),
        (Ntfs3gSide(img.path), TINY_FILE),
        (NothingSide(bench_dir() / "mnt-nothing"), "f"),
    ]
    bench = Bench(args.repeat)
    times: dict[str, list[float]] = {side.name: [] for side, _ in sides}
    for rep in range(args.repeat):
        for side, rel in sides if rep % 2 == 0 else sides[::-1]:
            with side.mounted() as m:
                os.stat(m.root / rel)  # looked up once: the runs time only OPEN and RELEASE
                t = bench.time(lambda: open_close(m.root / rel, args.count))  # noqa: B023
            times[side.name].append(t)
            log(f"{side.name} run {rep + 1}: {t / args.count * 1e6:.1f} µs per open+close")
    print_header(
        "vcbfs bench requests",
        bench,
        [
            f"{args.count} opens and closes of one small file per run, on a fresh mount, in "
            "this process (no process start-up); best and median of the runs",
            "nothing: the least pyfuse3 + trio file system (see --help)",
        ],
    )
    ref = min(times["ntfs-3g"])
    rows = []
    for name, ts in times.items():
        best, median = min(ts), statistics.median(ts)
        rows.append(
            [
                name,
                f"{best / args.count * 1e6:.1f}",
                f"{median / args.count * 1e6:.1f}",
                f"{best / ref:.2f}x",
            ]
        )
    print_table(["server", "best µs", "median µs", "/ ntfs-3g"], rows)
    print(f"whole run: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# scripts/bench compressed

COMPRESSED_DOC = """\
    scripts/bench compressed [--repeat N] [--json FILE]

``compressed`` reads one 20 MiB file of mixed text and binary, stored four ways on the fidelity
test volume of tests/ntfs/fidelityimages.py (a bare 1 GiB NTFS volume, built once and cached
like the tests do): plain (bench/plain.bin, the reference row), NTFS LZNT1-compressed
(bench/lznt1/file.bin), and as WOF "compact OS" files, LZX and XPRESS4K (bench/wof-lzx.bin,
bench/wof-xpress4k.bin).  Side by side in one run, for each file:

  vcbfs      ``cat FILE > /dev/null`` in MNT/digits/1 of ``vcbfs mount volume.img MNT``
  ntfs-3g    the same in MNT of ``ntfs-3g -o ro volume.img MNT``.  ntfs-3g shows WOF files as
             symlinks to "unsupported reparse tag": it has rows for plain and LZNT1 only
  vcbfs API  vcbfs's reader in a running process, without FUSE (``python -c APICAT``, as in
             ``bench ntfs``: open the volume, look the file up, copy it to /dev/null, timed
             inside the process)

and what the machine and the codecs allow (report only):

  no fs      the file's stored clusters (a WOF file's: its WofCompressedData stream's) read
             straight from volume.img, in order, in 1 MiB preads by this process: the disk's
             speed, no file system, nothing decoded
  decoder    the decoder alone, in this process, in one thread, from memory: every LZNT1
             compression unit through ``vcbfs.ntfs.compression.lznt1_unit`` (units stored
             plain are kept as they are), or a fresh ``vcbfs.ntfs.wof.WofStream`` over an
             in-memory copy of the WofCompressedData stream, read in 1 MiB pieces.  The
             mount and the API decode in several threads (the codecs release the GIL), so
             they can beat this row on a machine with idle cores

The FUSE floor (``bench requests``'s do-nothing pyfuse3 + trio server) is not measured: that
server holds one 1-byte file, not 20 MiB; the run says so.

Each vcbfs and ntfs-3g run mounts afresh, stats the volume's root, drops the page cache, times
``cat`` (process start-up included) and unmounts, untimed, as ``bench mount`` does; the other
rows drop the page cache before each run too.  Runs are interleaved (the two mounts alternate
in order) and repeated N times (default 5); the table shows the best and the median.  MB/s is
the file's size (10^6 bytes per MB) over the seconds in every row, also where fewer bytes are
stored.  vcbfs/ntfs-3g = this row's MB/s / ntfs-3g's for the same file; vs plain = this row's
MB/s / the same tool's for plain.bin.  The target, printed as met or not met and never
asserted: vcbfs reads the LZNT1 file at >= 0.8x ntfs-3g's MB/s.

Before timing, every tool reads every file once (one mount per side), and the sha256 of what
it read (the decoders' output too) is checked against the manifest's: a wrong answer is FAIL
and is not timed.  ``--json FILE`` also writes every run's figures as JSON.
"""

COMPRESSED_TARGET = 0.8  # vcbfs MB/s over ntfs-3g's for the LZNT1 file, at least
COMPRESSED_FILES = ("plain", "lznt1", "wof-lzx", "wof-xpress4k")  # FidelityImage.bench keys
VCBFS_API = "vcbfs API"
DECODER = "decoder"
NOTHING_SKIPPED = (
    "the FUSE floor: bench requests' do-nothing pyfuse3 + trio server holds one 1-byte file, "
    "it cannot serve a 20 MiB one"
)


def fidelity_fixture() -> Any:
    """The cached fidelity volume (a ``FidelityImage``), built as the tests build it."""
    tests_importable()
    from tests.ntfs.fidelityimages import build_fidelity_image, fidelity_cache_dir

    root = fidelity_cache_dir()
    if not (root / ".complete").exists():
        log(f"building the fidelity test volume in {root} (once; about 15 s)")
    return build_fidelity_image(root)


def lznt1_decoder(img: Any, rel: str) -> tuple[Callable[[], bytes], str]:
    """Decoding file ``rel``'s compression units, read into memory first, with ``lznt1_unit``;
    and a description of the units."""
    from vcbfs.blocks.local import LocalSource
    from vcbfs.ntfs.compression import lznt1_unit
    from vcbfs.ntfs.stream import AttributeStream
    from vcbfs.ntfs.volume import NtfsVolume

    with LocalSource(img.path) as image:
        volume = NtfsVolume(image)
        stream = volume.open(volume.lookup(rel))
        if not isinstance(stream, AttributeStream) or not stream.unit:
            raise RuntimeError(f"{rel} is not an LZNT1-compressed file")
        cs, unit, size, end = stream.cluster_size, stream.unit, stream.size, stream.map.end_vcn
        per = unit // cs
        units: list[tuple[bytes, bool]] = []  # (the unit's stored clusters, compressed)
        for vcn in range(0, end, per):
            runs = stream.map.iter_range(vcn, min(per, end - vcn))
            stored = b"".join(
                image.read_at(lcn * cs, n * cs) for _v, n, lcn in runs if lcn is not None
            )
            units.append((stored, len(stored) < per * cs))

    def decode() -> bytes:
        parts = [lznt1_unit(data, unit, rel) if packed else data for data, packed in units]
        return b"".join(parts)[:size]

    packed = sum(1 for data, p in units if p and data)  # none stored: a hole, no decoding
    return decode, f"lznt1_unit on {packed} of {len(units)} units, one thread"


def wof_decoder(img: Any, rel: str) -> tuple[Callable[[], bytes], str]:
    """Reading file ``rel`` through a ``WofStream`` over an in-memory copy of its
    WofCompressedData stream, 1 MiB at a time; and a description."""
    from vcbfs.blocks.local import LocalSource
    from vcbfs.ntfs import wof
    from vcbfs.ntfs.stream import ResidentStream
    from vcbfs.ntfs.volume import NtfsVolume

    with LocalSource(img.path) as image:
        volume = NtfsVolume(image)
        number = volume.lookup(rel)
        st = volume.stat(number)
        if st.reparse is None:
            raise RuntimeError(f"{rel} is not a WOF file")
        info = wof.parse_wof(st.reparse.data, rel)
        raw = volume.open(number, wof.STREAM)
        packed = raw.read_at(0, raw.size)

    def decode() -> bytes:
        stream = wof.WofStream(ResidentStream(packed, rel), st.size, info.algorithm, rel)
        return b"".join(stream.read_at(at, MIB) for at in range(0, st.size, MIB))

    return decode, f"WofStream ({info.algorithm_name}), 1 MiB reads, one thread"


def discard(produce: Callable[[], bytes]) -> Callable[[], None]:
    """``produce`` as a timed action: its output is made, then dropped."""

    def action() -> None:
        produce()

    return action


def check_mounted_reads(
    side: MountSide, img: Any, results: Mapping[tuple[str, str], Result]
) -> None:
    """One untimed mount of ``side``: each bench file's sha256 against the manifest's."""
    mine = side.name == VcbfsSide.name
    try:
        with side.mounted() as m:
            for key in COMPRESSED_FILES:
                rel, r = img.bench[key], results[key, side.name]
                path = m.root / rel
                try:
                    got = file_sha256(path)
                except OSError as e:
                    r.skipped = (
                        f"shows a symlink to {os.readlink(path)!r}"
                        if path.is_symlink()
                        else f"cannot read it ({e.strerror})"
                    )
                    r.verified = "FAIL" if mine else ""
                    log(f"check {key} {side.name}: {r.skipped}")
                    continue
                judge_sha256(key, side.name, got, img, r)
    except (CommandError, RuntimeError, OSError) as e:
        for key in COMPRESSED_FILES:
            results[key, side.name].skipped = f"cannot mount: {e}"
            results[key, side.name].verified = "FAIL" if mine else ""
        log(f"check {side.name}: {e}")


def judge_sha256(key: str, tool: str, got: str, img: Any, r: Result) -> None:
    """``r`` is ok if ``got`` is the manifest's sha256 of the bench file, else FAIL (not timed)."""
    want = str(img.entries[img.bench[key]]["sha256"])
    r.verified = "ok" if got == want else "FAIL"
    if got != want:
        r.skipped = f"sha256 {got[:12]}..., the manifest has {want[:12]}..."
        log(f"FAIL {key} {tool}: {r.skipped}")


@dataclass
class CompressedRow:
    key: str  # of FidelityImage.bench
    tool: str  # a mount side's name, VCBFS_API, BARE or DECODER
    shown: str
    result: MountResult
    timed: Callable[[Bench], float] | None = None  # one timed run (None: a mount side's)


def compressed_rows(
    img: Any, sides: Sequence[MountSide], work: Path
) -> tuple[list[CompressedRow], list[Job], dict[str, Callable[[], bytes]]]:
    """The table's rows in order, the API rows' jobs, and each decoder row's producer."""
    rows: list[CompressedRow] = []
    jobs: list[Job] = []
    producers: dict[str, Callable[[], bytes]] = {}
    for key in COMPRESSED_FILES:
        rel = img.bench[key]
        rows += [CompressedRow(key, s.name, "cat FILE > /dev/null", MountResult()) for s in sides]
        report = work / f"api-{key}.txt"
        api_result = MountResult()
        api = Job(
            part="big",
            scope=rel,
            tool=VCBFS_API,
            argv=[venv_python(), "-c", APICAT, str(img.path), rel, str(report)],
            shown="API: open volume, lookup, copy out",
            expect=sha256_is(str(img.entries[rel]["sha256"])),
            to_null=True,
            reports=str(report),
            result=api_result,
        )
        jobs.append(api)
        timed_api = functools.partial(time_job, job=api, image=img.path)
        rows.append(CompressedRow(key, VCBFS_API, api.shown, api_result, timed_api))
        wof_file = key.startswith("wof-")
        runs = file_clusters(img, rel, "WofCompressedData" if wof_file else "")
        stored = sum(n for _offset, n in runs)
        what = "WofCompressedData's" if wof_file else "its"
        shown = f"{what} {stored / MB:.1f} MB of clusters, 1 MiB preads"
        bare = functools.partial(Bench.time, action=bare_read(img, runs))
        rows.append(CompressedRow(key, BARE, shown, MountResult(verified="-"), bare))
        if key == "plain":
            continue
        produce, shown = wof_decoder(img, rel) if wof_file else lznt1_decoder(img, rel)
        producers[key] = produce
        decode = functools.partial(Bench.time, action=discard(produce))
        rows.append(CompressedRow(key, DECODER, shown, MountResult(), decode))
    return rows, jobs, producers


def register_compressed(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = bench_parser(
        verbs,
        "compressed",
        "compressed files (NTFS LZNT1, WOF LZX and XPRESS4K): vcbfs mount vs ntfs-3g, the limits",
        COMPRESSED_DOC,
        run_compressed,
        repeat=5,
        repeat_help="runs per row (5)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")


def run_compressed(args: argparse.Namespace) -> int:
    from vcbfs.errors import VcbfsError

    need_tools("ntfs-3g", "umount", "fusermount3", "cat")
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    img = fidelity_fixture()
    sides: list[MountSide] = [
        VcbfsSide(img.path, bench_dir() / "mnt-compressed", inside="digits/1"),
        Ntfs3gSide(img.path),
    ]
    work = Path(tempfile.mkdtemp(prefix="vcbfs-bench-compressed-"))
    try:
        rows, jobs, producers = compressed_rows(img, sides, work)
        results = {(row.key, row.tool): row.result for row in rows}
        for side in sides:
            check_mounted_reads(side, img, results)
        for job in jobs:
            check_job(job, img.path)
        for key, produce in producers.items():
            r = results[key, DECODER]
            try:
                judge_sha256(key, DECODER, hashlib.sha256(produce()).hexdigest(), img, r)
            except VcbfsError as e:
                r.verified, r.skipped = "FAIL", f"failed: {e}"
                log(f"FAIL {key} {DECODER}: {e}")
        bench = Bench(args.repeat)
        for rep in range(args.repeat):
            order = sides if rep % 2 == 0 else sides[::-1]
            for key in COMPRESSED_FILES:
                rel = img.bench[key]
                task = MountTask(key, ("cat", rel), f"cat {rel} > /dev/null", to_null=True)
                for side in order:
                    time_side(bench, side, task, results[key, side.name], rep)
                for row in rows:
                    if row.key == key and row.timed is not None and not row.result.skipped:
                        t = row.timed(bench)
                        row.result.times.append(t)
                        log(f"{key} {row.tool} run {rep + 1}: {t:.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    size = int(img.entries[img.bench["plain"]]["size"])
    figures = compressed_figures(rows, img)
    failed = [f for f in figures if f["verified"] == "FAIL"]
    if not failed:
        check = "every tool's bytes, where it could read the file, have the manifest's sha256"
    else:
        check = f"FAIL: {len(failed)} rows read wrong bytes or could not read (see below)"
    extra = [
        f"versions: {compressed_tool_versions()}",
        f"volume: {img.path} ({img.path.stat().st_size // MIB} MiB bare NTFS volume); "
        f"each file {size:,} bytes, the same mixed content four ways",
        "vcbfs: vcbfs mount IMG MNT, FILE in MNT/digits/1; ntfs-3g: ntfs-3g -o ro IMG MNT",
        f"timing: best and median of {args.repeat} runs, interleaved; mount rows: a fresh "
        "mount per run whose root was stat'ed, page cache dropped, cat timed (process start "
        "included), mount and unmount not timed; other rows: page cache dropped, then timed",
        "MB/s = file bytes / 10^6 / s in every row (also where fewer bytes are stored); "
        "vcbfs/ntfs-3g = MB/s / ntfs-3g's MB/s for that file; vs plain = MB/s / the same "
        "tool's MB/s for plain.bin",
        "server CPU: user + system seconds of the file system's process during the best run",
        "no fs: the stored clusters read from volume.img by this process; decoder: the codec "
        "alone on the stored bytes, in memory, in this process (see --help)",
        f"check: {check}",
        f"not measured: {NOTHING_SKIPPED}",
    ]
    print_header("vcbfs bench compressed", bench, extra)
    print_compressed_table(figures)
    print()
    lznt1 = next(f for f in figures if f["file"] == "lznt1" and f["tool"] == VcbfsSide.name)
    print(target_line(lznt1, args.repeat))
    for f in figures:
        if f["verified"] == "FAIL":
            print(f"FAIL {f['path']} {f['tool']}: {f['skipped'] or 'wrong bytes'}")
    whole = time.perf_counter() - started
    if args.json:
        doc = {
            "benchmark": "compressed",
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine_line(),
            "load_average": {"start": bench.load_at_start, "end": load_average()},
            "cold_cache": bench.cold,
            "repeat": args.repeat,
            "versions": compressed_tool_versions(),
            "volume": str(img.path),
            "file_bytes": size,
            "target": {
                "lznt1_vcbfs_over_ntfs3g": COMPRESSED_TARGET,
                "best": lznt1.get("vs_ntfs3g"),
                "median": lznt1.get("median_vs_ntfs3g"),
                "met": lznt1.get("met"),
            },
            "not_measured": {"fuse_floor": NOTHING_SKIPPED},
            "rows": figures,
            "whole_run_s": round(whole, 1),
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"json: {args.json}")
    print(f"whole run: {whole:.0f} s", flush=True)
    return 0


def compressed_tool_versions() -> str:
    import pyfwnt

    vcbfs = first_line([vcbfs_command(), "--version"])
    ntfs3g = first_line(["ntfs-3g", "--version"]).split(" integrated")[0]
    wimlib = first_line(["wimlib-imagex", "--version"]).partition("(using ")[2].rstrip(")")
    return f"{vcbfs}, {ntfs3g}, libfwnt {pyfwnt.get_version()}, {wimlib or 'wimlib ?'}"


def compressed_figures(rows: list[CompressedRow], img: Any) -> list[dict[str, Any]]:
    """Each row's figures (seconds, MB/s, ratios, the target's verdict), as the table and the
    JSON show them."""
    size = int(img.entries[img.bench["plain"]]["size"])
    by = {(row.key, row.tool): row.result for row in rows}
    figures = []
    for row in rows:
        r = row.result
        f: dict[str, Any] = {
            "file": row.key,
            "path": img.bench[row.key],
            "tool": row.tool,
            "command": row.shown,
            "verified": r.verified,
            "skipped": r.skipped,
            "times_s": [round(t, 6) for t in r.times],
        }
        figures.append(f)
        if not r.times:
            continue
        f.update(best_s=r.best, median_s=r.median)
        f.update(mb_s=size / MB / r.best, median_mb_s=size / MB / r.median)
        if row.timed is None:
            f.update(server_cpu_s=[round(c, 3) for c in r.cpu], best_run_server_cpu_s=r.best_cpu)
        peer = by.get((row.key, Ntfs3gSide.name))
        if row.tool != Ntfs3gSide.name and peer is not None and peer.times:
            f.update(vs_ntfs3g=peer.best / r.best, median_vs_ntfs3g=peer.median / r.median)
        plain = by.get(("plain", row.tool))
        if row.key != "plain" and plain is not None and plain.times:
            f.update(vs_plain=plain.best / r.best, median_vs_plain=plain.median / r.median)
        if row.key == "lznt1" and row.tool == VcbfsSide.name and "vs_ntfs3g" in f:
            f.update(target=COMPRESSED_TARGET, met=f["vs_ntfs3g"] >= COMPRESSED_TARGET)
    return figures


def target_line(lznt1: dict[str, Any], repeat: int) -> str:
    if "met" not in lznt1:
        return f"target: LZNT1 through vcbfs >= {COMPRESSED_TARGET:.1f}x ntfs-3g: not measured"
    verdict = "met" if lznt1["met"] else "not met"
    return (
        f"target: LZNT1 through vcbfs at {lznt1['vs_ntfs3g']:.2f}x ntfs-3g's MB/s (best of "
        f"{repeat}; medians {lznt1['median_vs_ntfs3g']:.2f}x): >= {COMPRESSED_TARGET:.1f}x "
        f"{verdict}"
    )


def print_compressed_table(figures: list[dict[str, Any]]) -> None:
    headers = [
        "file",
        "tool",
        "command",
        "best s",
        "median s",
        "MB/s",
        "median MB/s",
        "server CPU s",
        "vcbfs/ntfs-3g",
        "vs plain",
        "target",
        "output",
    ]
    limits = {BARE: "the disk's limit", DECODER: "the codec's limit", VCBFS_API: "no FUSE"}
    rows = []
    for f in figures:
        head = [f["path"], f["tool"], f["command"]]
        if "best_s" not in f:
            rows.append([*head, *["-"] * 5, "", "", "", f"skipped: {f['skipped'] or 'not run'}"])
            continue
        target = limits.get(f["tool"], "")
        if "met" in f:
            target = f">={f['target']:.1f}x {'met' if f['met'] else 'not met'}"
        rows.append(
            [
                *head,
                f"{f['best_s']:.3f}",
                f"{f['median_s']:.3f}",
                f"{f['mb_s']:.0f}",
                f"{f['median_mb_s']:.0f}",
                f"{f['best_run_server_cpu_s']:.2f}" if "server_cpu_s" in f else "-",
                f"{f['vs_ntfs3g']:.2f}x" if "vs_ntfs3g" in f else "",
                f"{f['vs_plain']:.2f}x" if "vs_plain" in f else "",
                target,
                f["verified"],
            ]
        )
    print_table(headers, rows, left=3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmarks of vcbfs against independent readers.",
    )
    verbs = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    register_disk(verbs)
    register_ntfs(verbs)
    register_mount(verbs)
    register_vsphere(verbs)
    register_requests(verbs)
    register_compressed(verbs)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
