"""``scripts/bench compressed``: one 20 MiB file stored plain, LZNT1-compressed and as WOF
LZX and XPRESS4K files, read through a vcbfs mount and an ntfs-3g mount, through the API, and
by the decoders alone; see ``DOC``."""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
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
    bench_dir,
    bench_parser,
    file_sha256,
    finish,
    first_line,
    log,
    md_table,
    need_tools,
    print_header,
    print_table,
    result_figures,
    rows_of,
    runs_line,
    span,
    tests_importable,
    vcbfs_command,
    verdict_of,
)
from .mount import (
    BARE,
    MountResult,
    MountSide,
    MountTask,
    Ntfs3gSide,
    VcbfsSide,
    bare_read,
    file_clusters,
    time_side,
)
from .ntfs import Job, api_job, check_job, sha256_is, time_job

NAME = "compressed"
DOC = """\
    scripts/bench compressed [--repeat N] [--json FILE]

``compressed`` reads one 20 MiB file of mixed text and binary, stored four ways on the fidelity
test volume of tests/ntfs/fidelityimages.py (a bare 1 GiB NTFS volume, built once and cached
like the tests do): plain (bench/plain.bin, the reference row), NTFS LZNT1-compressed
(bench/lznt1/file.bin), and as WOF "compact OS" files, LZX and XPRESS4K (bench/wof-lzx.bin,
bench/wof-xpress4k.bin).  Side by side in one run, for each file:

  vcbfs      ``cat FILE > /dev/null`` in MNT/digits/1 of ``vcbfs mount volume.img MNT``
  ntfs-3g    the same in MNT of ``ntfs-3g -o ro volume.img MNT``.  ntfs-3g shows WOF files as
             symlinks to "unsupported reparse tag": it has rows for plain and LZNT1 only
  vcbfs API  vcbfs's reader in a running process, without FUSE (``python apicat.py``, as in
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
#: how the README's table names each file, in its order
LABELS = {
    "lznt1": "LZNT1-compressed",
    "plain": "plain (reference)",
    "wof-lzx": "WOF LZX",
    "wof-xpress4k": "WOF XPRESS4K",
}


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
        api_result = MountResult()
        api = api_job(
            str(img.path),
            rel,
            work / f"api-{key}.txt",
            part="big",
            scope=rel,
            expect=sha256_is(str(img.entries[rel]["sha256"])),
            to_null=True,
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


def register(verbs: Verbs) -> None:
    bench_parser(
        verbs,
        NAME,
        "compressed files (NTFS LZNT1, WOF LZX and XPRESS4K): vcbfs mount vs ntfs-3g, the limits",
        DOC,
        run_bench,
        repeat=5,
        repeat_help="runs per row (5)",
    )


def run_bench(args: argparse.Namespace) -> int:
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
    versions = compressed_tool_versions()
    extra = [
        f"versions: {versions}",
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
    return finish(
        args,
        NAME,
        bench,
        started,
        versions,
        figures,
        volume=str(img.path),
        file_bytes=size,
        target={
            "lznt1_vcbfs_over_ntfs3g": COMPRESSED_TARGET,
            "best": lznt1.get("vs_ntfs3g"),
            "median": lznt1.get("median_vs_ntfs3g"),
            "met": lznt1.get("met"),
        },
        not_measured={"fuse_floor": NOTHING_SKIPPED},
    )


def compressed_tool_versions() -> str:
    import pyfwnt

    vcbfs = first_line([vcbfs_command(), "--version"])
    ntfs3g = first_line(["ntfs-3g", "--version"]).split(" integrated")[0]
    wimlib = first_line(["wimlib-imagex", "--version"]).partition("(using ")[2].rstrip(")")
    return f"{vcbfs}, {ntfs3g}, libfwnt {pyfwnt.get_version()}, {wimlib or 'wimlib ?'}"


def compressed_figures(rows: list[CompressedRow], img: Any) -> list[Row]:
    """Each row's figures (seconds, MB/s, ratios, the target's verdict), as the table and the
    JSON show them."""
    size = int(img.entries[img.bench["plain"]]["size"])
    by = {(row.key, row.tool): row.result for row in rows}
    figures = []
    for row in rows:
        r = row.result
        f = result_figures(
            r, file=row.key, path=img.bench[row.key], tool=row.tool, command=row.shown
        )
        figures.append(f)
        if not r.times:
            continue
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
            met = f["vs_ntfs3g"] >= COMPRESSED_TARGET
            f.update(target=COMPRESSED_TARGET, met=met, verdict="met" if met else "not met")
    return figures


def target_line(lznt1: Row, repeat: int) -> str:
    if "met" not in lznt1:
        return f"target: LZNT1 through vcbfs >= {COMPRESSED_TARGET:.1f}x ntfs-3g: not measured"
    verdict = "met" if lznt1["met"] else "not met"
    return (
        f"target: LZNT1 through vcbfs at {lznt1['vs_ntfs3g']:.2f}x ntfs-3g's MB/s (best of "
        f"{repeat}; medians {lznt1['median_vs_ntfs3g']:.2f}x): >= {COMPRESSED_TARGET:.1f}x "
        f"{verdict}"
    )


def print_compressed_table(figures: list[Row]) -> None:
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
            target = f">={f['target']:.1f}x {f['verdict']}"
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


def markdown(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The README's table (each file through the two mounts, the target), and a line with the
    limits the same runs measured (the decoders alone, the disk)."""
    rows = []
    for key, label in LABELS.items():
        mine = rows_of(docs, file=key, tool=VcbfsSide.name)
        peer = rows_of(docs, file=key, tool=Ntfs3gSide.name)
        if not mine:
            continue
        theirs = span(peer, "mb_s", unit=" MB/s")
        if not theirs:
            theirs = "(cannot read WOF)" if key.startswith("wof-") else "(not measured)"
        if peer and theirs.endswith("MB/s"):
            ratio = span(mine, "vs_ntfs3g", "{:.2f}", "x")
            if key == "lznt1":
                ratio += f" (medians {span(mine, 'median_vs_ntfs3g', '{:.2f}', 'x')})"
        else:
            ratio = f"{span(mine, 'vs_plain', '{:.2f}', 'x')} of plain"
        if key == "lznt1":
            target = f"{COMPRESSED_TARGET:.1f}x ({verdict_of(mine)})"
        else:
            target = "" if key == "plain" else "report"
        rows.append([label, span(mine, "mb_s", unit=" MB/s"), theirs, ratio, target])
    headers = ["file", "vcbfs mount", "ntfs-3g", "vcbfs / ntfs-3g", "target"]
    decoders = [
        f"{LABELS[k].removesuffix('-compressed')} {span(found, 'mb_s', unit=' MB/s')}"
        for k in LABELS
        if (found := rows_of(docs, file=k, tool=DECODER))
    ]
    bare = span(rows_of(docs, tool=BARE), "mb_s", unit=" MB/s")
    limits = (
        f"Limits in the same runs: the decoders alone, one thread, in memory: "
        f"{', '.join(decoders)}; the stored clusters read with no file system: {bare}."
    )
    return [runs_line(NAME, docs), "", *md_table(headers, rows), "", limits]
