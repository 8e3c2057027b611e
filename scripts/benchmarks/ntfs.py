"""``scripts/bench ntfs``: the NTFS reader against sleuthkit's ``icat`` and ntfs-3g on the
test volume of tests/ntfs (a big file and a 1-byte one; tree walks); see ``DOC``.

Its ``Job`` (one command, checked once and then timed), ``ntfs_fixture`` and the API reader
``programs/apicat.py`` are used by ``mount``, ``requests`` and ``compressed`` too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
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
    Bench,
    CommandError,
    Result,
    Row,
    Verbs,
    bench_dir,
    bench_parser,
    choice_list,
    finish,
    first_line,
    judge,
    log,
    md_table,
    need_tools,
    print_header,
    print_table,
    program,
    result_figures,
    rows_of,
    run,
    runs_line,
    span,
    stale_bytecode,
    tests_importable,
    vcbfs_command,
    venv_python,
    verdict_of,
)

NAME = "ntfs"
DOC = """\
    scripts/bench ntfs [--repeat N] [--only big,walk] [--profile] [--json FILE]

``ntfs`` reads the NTFS test volume of tests/ntfs/ntfsimages.py (a bare 512 MiB volume, built
once and cached like the tests do, holding a 64 MiB random file and about 23,000 files) with
vcbfs and with independent readers, side by side in one run:

  big   bench/big.bin written to /dev/null by ``vcbfs disk cat IMG bench/big.bin``, by
        vcbfs's API in a running process as the mount server uses it (``python apicat.py``,
        of scripts/benchmarks/programs: opening the volume, the lookup and the copy, timed
        inside the process, so without interpreter start and imports), by
        sleuthkit's ``icat IMG INODE`` (the inode from vcbfs's lookup, checked against the
        manifest) and by ``cat MNT/bench/big.bin`` on a read-only ntfs-3g mount; and the same
        for a 1-byte file, which shows each tool's fixed cost (start-up, opening the volume).
  walk  every file's unnamed data read in full, reparse points not followed, of the whole
        volume and of tree/ (3,000 files in 300 directories): vcbfs through its Python API in a
        new process (``python walker.py IMG DIR``, of scripts/benchmarks/programs: lookup,
        iterdir, stat, open, read_at in 1 MiB pieces; a file with several names is read once,
        as tar does), against ``tar cf - . | wc -c`` (the reference) and ``find . -type f
        -exec cat {} + | wc -c``, both run in DIR on a read-only ntfs-3g mount.

Every time is the wall time of the whole command (process start-up included) from a cold page
cache (dropped before each run where the machine allows it).  ntfs-3g is mounted afresh before
each of its runs and unmounted after it, untimed: the mount is not counted, its caches are cold.
Runs are interleaved and repeated N times; the tables show the best and the median.  Before
timing, each command runs once and its output is checked against the manifest ntfs-3g wrote
when the volume was built (sha256 of the file; files and bytes of the walk).  Targets are
printed, never asserted: big file >= 1.0x icat's MB/s; tree walk time <= 1.5x the fastest peer's.
``--profile`` ends with cProfile's top functions (by cumulative time) of the vcbfs commands,
each from a cold cache.  ``--json FILE`` also writes the run's figures as JSON.
"""

BIG_TARGET = 1.0  # vcbfs MB/s over icat's, at least
WALK_TARGET = 1.5  # vcbfs seconds over the fastest peer's, at most
NTFS_PARTS = ("big", "walk")
TINY_FILE = "sizes/tiny-1.bin"
API_SHOWN = "API: open volume, lookup, copy out"


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
    reports: str = ""  # a file where the command writes its own seconds (apicat)
    files: int | None = None  # the files a walk reads, by the manifest

    @property
    def is_vcbfs(self) -> bool:
        return self.tool.startswith("vcbfs")


def ntfs_fixture() -> Any:
    """The cached test volume (an ``NtfsImage``), built as the tests build it."""
    tests_importable()
    from tests.ntfs.ntfsimages import build_ntfs_image, ntfs_cache_dir

    root = ntfs_cache_dir()
    if not (root / ".complete").exists():
        log(f"building the NTFS test volume in {root} (once; about a minute)")
    return build_ntfs_image(root)


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


def api_job(image: str, rel: str, report: Path, **fields: Any) -> Job:
    """vcbfs's API reading ``rel`` in a running process (``programs/apicat.py``)."""
    return Job(
        tool="vcbfs API",
        argv=[venv_python(), program("apicat"), image, rel, str(report)],
        shown=API_SHOWN,
        reports=str(report),
        **fields,
    )


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
                api_job(image, rel, report_file, **common),
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
                    [python, program("walker"), image, scope],
                    f"python walker.py IMG {scope}",
                    walk_expect(files, nbytes, exact=True),
                    files=files,
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
                    files=files,
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
                    files=len(inside),
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


def register(verbs: Verbs) -> None:
    p = bench_parser(
        verbs,
        NAME,
        "NTFS volume reads: vcbfs vs sleuthkit icat vs ntfs-3g (big file, tree walk)",
        DOC,
        run_bench,
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


def run_bench(args: argparse.Namespace) -> int:
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
    versions = ntfs_tool_versions()
    extra = [
        f"versions: {versions}",
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
    rows: list[Row] = []
    if big:
        rows += print_big_table(big, manifest)
        print()
    if walk:
        rows += print_walk_table(walk)
        print()
    for job in jobs:
        if job.result.verified == "FAIL":
            print(f"FAIL {job.scope} {job.tool}: {job.result.skipped}")
    if args.profile:
        profile_vcbfs(img, args.only, bench)
    return finish(
        args,
        NAME,
        bench,
        started,
        versions,
        rows,
        volume=str(image),
        file_names=files,
        directories=dirs,
        big_file=img.big_file,
        tree_dir=img.tree_dir,
    )


def skipped_row(job: Job, width: int) -> list[str]:
    row = [job.scope, job.tool, job.shown] + ["-"] * (width - 4)
    return [*row, f"skipped: {job.result.skipped or 'not run'}"]


def job_figures(job: Job) -> Row:
    return result_figures(
        job.result, task=job.part, scope=job.scope, tool=job.tool, command=job.shown
    )


def print_big_table(jobs: list[Job], manifest: dict[str, dict[str, Any]]) -> list[Row]:
    """Print the big file table; return its rows' figures, for the JSON document."""
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
    figures = []
    for job in jobs:
        r = job.result
        f = job_figures(job)
        figures.append(f)
        size = int(manifest[job.scope]["size"])
        f.update(bytes=size)
        if not r.times:
            rows.append(skipped_row(job, len(headers)))
            continue
        big = size >= MIB  # for a 1-byte file only the seconds mean anything
        mbs = f"{size / MB / r.best:.0f}" if big else "-"
        if big:
            f.update(mb_s=size / MB / r.best, median_mb_s=size / MB / r.median)
        vs_icat = vs_ntfs3g = target = ""
        if job.is_vcbfs:
            peers = {j.tool: j.result for j in jobs if j.scope == job.scope}
            icat, ntfs3g = peers.get("icat"), peers.get("ntfs-3g")
            if icat and icat.times:
                ratio = icat.best / r.best
                vs_icat = f"{ratio:.2f}x"
                f.update(vs_icat=ratio)
                if big:
                    verdict = judge(f, BIG_TARGET, ratio >= BIG_TARGET)
                    target = f">={BIG_TARGET:.1f}x icat {verdict}"
            if ntfs3g and ntfs3g.times:
                vs_ntfs3g = f"{ntfs3g.best / r.best:.2f}x"
                f.update(vs_ntfs3g=ntfs3g.best / r.best)
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
    return figures


def print_walk_table(jobs: list[Job]) -> list[Row]:
    """Print the walk table; return its rows' figures (``time_ratio``: vcbfs s / this tool's s,
    and on vcbfs's row, over the fastest peer's), for the JSON document."""
    headers = ["dir", "tool", "command", "best s", "median s", "MB", "vcbfs/X", "target", "output"]
    rows = []
    figures = []
    for job in jobs:
        r = job.result
        f = job_figures(job)
        figures.append(f)
        f.update(files=job.files, mb=None if job.read is None else job.read / MB)
        if not r.times:
            rows.append(skipped_row(job, len(headers)))
            continue
        mine = next((j.result for j in jobs if j.scope == job.scope and j.is_vcbfs), None)
        peers = [j for j in jobs if j.scope == job.scope and not j.is_vcbfs]
        ratio = target = ""
        if job.is_vcbfs:
            timed = [p for p in peers if p.result.times]
            if timed:
                fastest = min(timed, key=lambda p: p.result.best)
                x = r.best / fastest.result.best
                ratio = f"{x:.3f}x fastest"  # 3 places: 1.503x is over 1.5x
                verdict = judge(f, WALK_TARGET, x <= WALK_TARGET, miss="over")
                target = f"<={WALK_TARGET:.1f}x {verdict}"
                f.update(time_ratio=x, fastest=fastest.tool, fastest_s=fastest.result.best)
        elif mine is not None and mine.times:
            ratio = f"{mine.best / r.best:.2f}x"
            f.update(time_ratio=mine.best / r.best)
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
    return figures


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
        walker = program("walker")
        runs += [(f"walker IMG {d}", [walker, str(img.path), d]) for d in ("/", img.tree_dir)]
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


def markdown(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The README's table of the reader: big file (API, ``disk cat``), 1-byte file, walks."""
    rows = []
    big_files = sorted({str(d["big_file"]) for d in docs if d.get("big_file")})
    for rel in big_files:
        icat = rows_of(docs, task="big", scope=rel, tool="icat")
        size = span(rows_of(docs, task="big", scope=rel), "bytes", "{:.0f}")
        mib = f"{int(size.split('-')[0]) // MIB} MiB" if size else "big"
        peer = f"sleuthkit `icat` {span(icat, 'best_s', '{:.3f}', ' s')}"
        target = f"{BIG_TARGET:.1f}x"
        for tool, what in (
            ("vcbfs API", f"the {mib} file through the API, in a running process"),
            ("vcbfs", f"`vcbfs disk cat` of the {mib} file (a new process)"),
        ):
            mine = rows_of(docs, task="big", scope=rel, tool=tool)
            if mine:
                rows.append(
                    [
                        what,
                        span(mine, "best_s", "{:.3f}", " s"),
                        peer,
                        span(mine, "vs_icat", "{:.2f}", "x MB/s"),
                        f"{target} ({verdict_of(mine)})",
                    ]
                )
    icat = rows_of(docs, task="big", scope=TINY_FILE, tool="icat")
    for tool, what in (
        ("vcbfs", "the same for a 1-byte file (start-up)"),
        ("vcbfs API", "a 1-byte file through the API"),
    ):
        mine = rows_of(docs, task="big", scope=TINY_FILE, tool=tool)
        if mine:
            rows.append(
                [
                    what,
                    span(mine, "best_s", "{:.3f}", " s"),
                    f"`icat` {span(icat, 'best_s', '{:.3f}', ' s')}",
                    "",
                    "report only",
                ]
            )
    scopes = sorted({str(r["scope"]) for r in rows_of(docs, task="walk")}, key=lambda s: s == "/")
    for scope in scopes:
        mine = rows_of(docs, task="walk", scope=scope, tool="vcbfs")
        if not mine:
            continue
        files = span(mine, "files", "{:,.0f}")
        what = "the whole volume" if scope == "/" else f"`{scope}/` ({files} files)"
        fastest = {str(r["fastest"]) for r in mine if r.get("fastest")}
        who = f"{fastest.pop()} on ntfs-3g" if len(fastest) == 1 else "fastest peer"
        rows.append(
            [
                f"walk + read of {what}",
                span(mine, "best_s", "{:.2f}", " s"),
                f"{who} {span(mine, 'fastest_s', '{:.2f}', ' s')}",
                span(mine, "time_ratio", "{:.2f}", "x time"),
                f"within {WALK_TARGET:.1f}x ({verdict_of(mine)})",
            ]
        )
    headers = ["benchmark", "vcbfs", "peer", "ratio", "target"]
    return [runs_line(NAME, docs), "", *md_table(headers, rows)]
