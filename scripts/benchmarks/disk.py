"""``scripts/bench disk``: whole virtual disks read by ``vcbfs disk cat``, ``qemu-img convert``
and ``vmdkmount``, from images built once from a recipe (see ``DOC``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import (
    MB,
    MIB,
    Bench,
    CommandError,
    Result,
    Row,
    Verbs,
    allocated_bytes,
    bench_dir,
    bench_parser,
    cached_build,
    choice_list,
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
    secs,
    span,
    vcbfs_command,
    verdict_of,
)

NAME = "disk"
DOC = """\
    scripts/bench disk [--size-mib N] [--repeat N] [--only KIND[,KIND]] [--json FILE]

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
fails the run: targets are printed as PASS or "below".  ``--json FILE`` also writes the run's
figures as JSON (``scripts/bench tables FILE`` makes the README's table of them).

The other benchmarks (``ntfs``, ``mount``, ``vsphere``, ``requests``, ``compressed``) are further
subcommands: see ``scripts/bench --help``.
"""

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
#: how the README's table names each image
LABELS = {
    "raw": "raw",
    "flat": "monolithicFlat",
    "sparse": "monolithicSparse",
    "stream": "streamOptimized",
    "delta": "delta over sparse",
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


def register(verbs: Verbs) -> None:
    p = bench_parser(
        verbs,
        NAME,
        "whole-disk reads: vcbfs disk cat vs qemu-img convert vs vmdkmount",
        DOC,
        run_bench,
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


def run_bench(args: argparse.Namespace) -> int:
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

    versions = tool_versions()
    on_disk = {i.kind: on_disk_mib(images_dir, i) for i in images}
    print_header(
        "vcbfs bench disk",
        bench,
        [
            f"versions: {versions}",
            f"disk: {args.size_mib} MiB virtual ({size:,} bytes), images in {images_dir}",
            f"timing: best of {args.repeat} runs of the whole command, runs interleaved; "
            "MB/s = virtual disk bytes / 10^6 / s; vs X = vcbfs MB/s / X MB/s",
            "images:",
            *(f"  {i.kind:<7} {i.format}, {on_disk[i.kind]:.0f} MiB on disk" for i in images),
        ],
    )
    rows = print_disk_table(images, tools, results, size)
    print()
    for (kind, name), r in results.items():
        if r.verified == "FAIL":
            why = r.skipped or "output differs from qemu-img's"
            print(f"FAIL {kind}: {name} {why}")
    return finish(
        args,
        NAME,
        bench,
        started,
        versions,
        rows,
        disk_bytes=size,
        images={
            i.kind: {"format": i.format, "on_disk_mib": round(on_disk[i.kind], 1)} for i in images
        },
    )


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
) -> list[Row]:
    """Print the table; return its rows' figures, for the JSON document."""
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
    figures = []
    for image in images:
        qemu = results[image.kind, QemuImg.name]
        vmdk = results[image.kind, Vmdkmount.name]
        for tool in tools:
            r = results[image.kind, tool.name]
            f = result_figures(r, task=image.kind, format=image.format, tool=tool.name)
            figures.append(f)
            if not r.times:
                why = r.skipped or "not run"
                rows.append([image.kind, tool.name, "-", "-", "-", "", "", "", f"skipped: {why}"])
                continue
            mbs = size / MB / r.best
            f.update(mb_s=mbs, median_mb_s=size / MB / r.median)
            vs_qemu = vs_vmdk = target = ""
            if isinstance(tool, Vcbfs):
                if qemu.times:
                    ratio = qemu.best / r.best
                    vs_qemu = f"{ratio:.2f}x"
                    f.update(vs_qemu_img=ratio)
                    if image.target is not None:
                        verdict = judge(f, image.target, ratio >= image.target)
                        target = f">={image.target:.1f}x {verdict}"
                if vmdk.times:
                    vs_vmdk = f"{vmdk.best / r.best:.2f}x"
                    f.update(vs_vmdkmount=vmdk.best / r.best)
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
    return figures


def markdown(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The README's table: MB/s of each tool per image, vcbfs over qemu-img, the target."""
    kinds = [k for k in KINDS if rows_of(docs, task=k)]
    rows = []
    for kind in kinds:

        def cell(tool: str, kind: str = kind) -> str:
            found = rows_of(docs, task=kind, tool=tool)
            shown = span(found, "mb_s", unit=" MB/s")
            if any(r["verified"] == "FAIL" for r in found):
                shown = f"{shown} FAIL".strip()
            if not shown:
                why = next((r["skipped"] for r in found if r["skipped"]), "not run")
                shown = f"({why.split(':')[0]})"
            return shown

        mine = rows_of(docs, task=kind, tool=Vcbfs.name)
        want = KINDS[kind].target
        target = f"{want:.1f}x: {verdict_of(mine)}" if want is not None else "none"
        rows.append(
            [
                LABELS[kind],
                cell(Vcbfs.name),
                cell(QemuImg.name),
                cell(Vmdkmount.name),
                span(mine, "vs_qemu_img", "{:.2f}", "x"),
                target,
            ]
        )
    headers = ["image", "vcbfs", "qemu-img", "vmdkmount", "vcbfs / qemu-img", "target"]
    return [runs_line(NAME, docs), "", *md_table(headers, rows)]
