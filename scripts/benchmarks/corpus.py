"""``scripts/bench corpus``: the mount on volumes shaped like real guests, against ntfs-3g,
ntfs-3g over libvmdk's vmdkmount, the machine's limits and the floor of the stack; see DOC."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import (
    MB,
    Bench,
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
    tests_importable,
    vcbfs_command,
    venv_python,
    verdict_of,
)
from .mount import (
    BARE,
    Mounted,
    MountResult,
    MountSide,
    Ntfs3gSide,
    VcbfsSide,
    bare_read,
    cpu_seconds,
    is_mounted,
    tree_listing,
)

NAME = "corpus"
DOC = """\
    scripts/bench corpus [--corpus system|million|mini] [--repeat N] [--only TASK[,TASK]]
                         [--json FILE]

``corpus`` is the mount benchmark on a volume shaped like a real guest (tests/ntfs/
corpusimages.py, built once and cached: "system" is a Windows system drive beside a file
share, 114,000 entries and 4.5 GB; "million" is 1,000,000 small files; "mini" is the test
suite's small one).  One run times, side by side, cold caches (sync + drop_caches before each
timed command), best of N, runs interleaved:

  vcbfs flat     vcbfs mount of the corpus VM on a flat VMDK; ROOT = MNT/letters/C
  vcbfs sparse   the same guest on a monolithicSparse VMDK (qemu-img's)
  vcbfs chain    the same guest as a sparse delta over a flat base (a VM with a snapshot)
  ntfs-3g        ntfs-3g -o ro of the bare volume
  ntfs-3g/vmdk   ntfs-3g -o ro over a loop device on libvmdk's vmdkmount of the sparse disk
                 and of the chain (the peer of vcbfs on those formats)
  floor          a pyfuse3 + trio server answering a dump of vcbfs's own tree from memory
                 (programs/floor_server.py): the limit of the binding vcbfs uses
  no fs          the machine itself: the big file's clusters read from the image

Tasks (in ROOT): ``open`` (vcbfs mount, then ``ls letters/C``: mount to first listing),
``tar`` (``tar cf - . | wc -c``), ``find`` (``find . -printf '%s %T@\\n'``), ``big`` (``cat``
of the 1.1 GiB file, cold) and ``hot`` (the same on a fresh mount with the image in the page
cache).  vcbfs runs with ``--request-profile``: the table is followed by the requests of its
best tar (count, mean microseconds).  Peak RSS (VmHWM) of each server is taken at the end of
each tar.  Before timing, the listings (path, type, size) of every side are compared with
ntfs-3g's (the WOF folder aside: ntfs-3g shows its files as unsupported reparse points).
Targets are printed, never asserted.
"""

TASKS = ("open", "tar", "find", "big", "hot")
TAR = "tar cf - . | wc -c"
FIND = "find . -printf '%s %T@\\n' > /dev/null"
BIG = "Media/video.mp4"
WOF_DIR = "Windows/System32/CompactOS"
HEAD = 1 << 20  # the corpus disks' partition offset
TARGETS = {
    ("tar", "vcbfs flat", "ntfs-3g"): 1.0,  # time ratio, at most
    ("tar", "vcbfs flat", "floor"): 1.25,
    ("tar", "vcbfs sparse", "ntfs-3g/vmdk sparse"): 0.8,
    ("tar", "vcbfs chain", "ntfs-3g/vmdk chain"): 0.8,
    ("find", "vcbfs flat", "ntfs-3g"): 0.6,
}
BIG_COLD_TARGET = 0.95  # vcbfs MB/s over the bare clusters' MB/s, at least
BIG_HOT_TARGET = 1.5  # vcbfs MB/s over ntfs-3g's, at least
OPEN_TARGET = 0.5  # seconds from vcbfs mount to the first listing of letters/C, at most
RSS_TARGET = {"system": 250, "million": 400, "mini": 250}  # peak MB during tar, at most


class VmdkNtfs3gSide(MountSide):
    """ntfs-3g -o ro on a read-only loop device over the leaf of ``vmdkmount DISK``."""

    def __init__(self, disk: Path, volume_size: int, name: str, mnt: Path) -> None:
        self.disk = disk
        self.size = volume_size
        self.name = name
        self.root = "MNT"
        self.vmdk_mnt = mnt
        mnt.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Mounted]:
        from tests.ntfs.ntfsimages import ntfs3g_mounted

        run(["vmdkmount", self.disk, self.vmdk_mnt], stdin=subprocess.DEVNULL)
        loop = ""
        try:
            layers = sorted(self.vmdk_mnt.glob("vmdk*"), key=lambda p: int(p.name[4:] or 0))
            loop = (
                run(
                    [
                        "losetup",
                        "--find",
                        "--show",
                        "--read-only",
                        "--offset",
                        str(HEAD),
                        "--sizelimit",
                        str(self.size),
                        layers[-1],
                    ]
                )
                .stdout.decode()
                .strip()
            )
            with ntfs3g_mounted(Path(loop), "ro") as mnt:
                yield Mounted(mnt, Ntfs3gSide(Path(loop)).server_pid(mnt))
        finally:
            if loop:
                run(["losetup", "-d", loop])
            for _ in range(100):
                if not is_mounted(self.vmdk_mnt):
                    break
                subprocess.run(["fusermount3", "-u", self.vmdk_mnt], capture_output=True)
                time.sleep(0.05)


class FloorSide(MountSide):
    """The floor server over a dump of vcbfs's tree (made once, cached in the bench folder)."""

    name = "floor"
    root = "MNT"

    def __init__(self, dump: Path, mnt: Path) -> None:
        self.dump = dump
        self.mnt = mnt
        mnt.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Mounted]:
        argv = [venv_python(), program("floor_server"), "serve", str(self.dump), str(self.mnt)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while not is_mounted(self.mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"floor server: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
                time.sleep(0.05)
            yield Mounted(self.mnt, proc.pid)
        finally:
            subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def floor_dump(corpus: Any, vcbfs: VcbfsSide) -> Path:
    """A dump of vcbfs's ``letters/C`` of the corpus, made once per corpus version."""
    dump = bench_dir() / f"floor-{corpus.root.name}" / "tree"
    if not dump.with_suffix(".index").exists():
        dump.parent.mkdir(parents=True, exist_ok=True)
        log(f"floor: dumping {corpus.root.name} (once)")
        with vcbfs.mounted() as m:
            tmp = dump.with_name("partial")
            run([venv_python(), program("floor_server"), "dump", m.root, tmp])
            os.replace(tmp.with_suffix(".blob"), dump.with_suffix(".blob"))
            os.replace(tmp.with_suffix(".index"), dump.with_suffix(".index"))
    return dump


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    return 0.0


@dataclass
class CorpusResult(MountResult):
    rss: list[float] = field(default_factory=list)  # peak MB, run by run
    profile: dict[str, Any] | None = None  # vcbfs's request profile of its best run


def shell(command: str, root: Path) -> None:
    run(["bash", "-o", "pipefail", "-c", command], cwd=root, stdout=subprocess.DEVNULL)


def time_on(
    bench: Bench,
    side: MountSide,
    command: str,
    r: CorpusResult,
    cold: bool = True,
    profile: Path | None = None,
) -> None:
    """One timed ``command`` on a fresh mount of ``side`` (ROOT stat'ed first), into ``r``."""
    with side.mounted() as m:
        os.stat(m.root)
        if not cold:
            shell("cat " + BIG + " > /dev/null", m.root)  # the image into the page cache
        cpu0 = cpu_seconds(m.pid)
        was, bench.cold = bench.cold, bench.cold and cold
        try:
            wall = bench.time(lambda: shell(command, m.root))
        finally:
            bench.cold = was
        r.cpu.append(cpu_seconds(m.pid) - cpu0)
        r.rss.append(peak_rss_mb(m.pid))
    r.times.append(wall)
    if profile is not None and profile.exists() and wall == min(r.times):
        r.profile = json.loads(profile.read_text())


def time_open(bench: Bench, side: VcbfsSide, r: CorpusResult) -> None:
    """vcbfs mount, then the first ``ls letters/C``: both in the time."""

    def action() -> None:
        run([side.exe, "mount", side.vmx, side.mnt], stdin=subprocess.DEVNULL)
        run(["ls", side.mnt / "letters" / "C"], stdout=subprocess.DEVNULL)

    r.times.append(bench.time(action, side.release))
    r.cpu.append(0.0)


def register(verbs: Verbs) -> None:
    p = bench_parser(
        verbs,
        NAME,
        "the mount on a real guest's shape: vcbfs on flat, sparse and a chain vs ntfs-3g, "
        "vmdkmount, the floor",
        DOC,
        run_bench,
    )
    p.add_argument("--corpus", choices=("system", "million", "mini"), default="system")
    p.add_argument(
        "--only",
        type=choice_list("task", TASKS),
        default=list(TASKS),
        metavar="TASK[,TASK]",
        help="open, tar, find, big, hot; default all",
    )


def run_bench(args: argparse.Namespace) -> int:
    need_tools("ntfs-3g", "vmdkmount", "losetup", "fusermount3", "tar", "find", "bash")
    tests_importable()
    from tests.ntfs.corpusimages import RECIPES, build_corpus

    started = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    corpus = build_corpus(RECIPES[args.corpus])
    size = corpus.recipe.volume_size
    work = bench_dir() / "corpus"
    work.mkdir(parents=True, exist_ok=True)
    profiles = {lay: work / f"requests-{lay}.json" for lay in ("flat", "sparse", "chain")}
    vcbfs = {
        lay: VcbfsSide(
            corpus.vmx(lay),
            work / f"mnt-{lay}",
            "letters/C",
            f"vcbfs {lay}",
            ["--request-profile", str(profiles[lay])],
        )
        for lay in ("flat", "sparse", "chain")
    }
    ntfs3g = Ntfs3gSide(corpus.volume)
    peers = {
        f"ntfs-3g/vmdk {lay}": VmdkNtfs3gSide(
            corpus.disk(lay), size, f"ntfs-3g/vmdk {lay}", work / f"vmdk-{lay}"
        )
        for lay in ("sparse", "chain")
    }
    floor = FloorSide(floor_dump(corpus, vcbfs["flat"]), work / "mnt-floor")
    has_big = corpus.volume.exists() and corpus.recipe.tiny_files == 0
    sides: dict[str, MountSide] = {
        **{s.name: s for s in vcbfs.values()},
        ntfs3g.name: ntfs3g,
        **peers,
        floor.name: floor,
    }
    plan: dict[str, list[str]] = {
        "open": ["vcbfs flat"],
        "tar": list(sides),
        "find": ["vcbfs flat", "ntfs-3g", "floor"],
        "big": ["vcbfs flat", "ntfs-3g"] if has_big else [],
        "hot": ["vcbfs flat", "ntfs-3g"] if has_big else [],
    }
    tasks = [t for t in TASKS if t in args.only and plan[t]]
    check_lines = check_listings(sides, plan["tar"] if "tar" in tasks else ["vcbfs flat"])
    for line in check_lines:
        log(line)

    bench = Bench(args.repeat)
    results: dict[tuple[str, str], CorpusResult] = {}
    bare = None
    if "big" in tasks:
        from .mount import file_clusters

        img = type("Img", (), {"path": corpus.volume})()
        bare = bare_read(img, file_clusters(img, BIG))
    commands = {
        "tar": TAR,
        "find": FIND,
        "big": f"cat {BIG} > /dev/null",
        "hot": f"cat {BIG} > /dev/null",
    }
    for rep in range(args.repeat):
        for task in tasks:
            names = plan[task] if rep % 2 == 0 else plan[task][::-1]
            for name in names:
                r = results.setdefault((task, name), CorpusResult(verified="ok"))
                side = sides[name]
                if task == "open":
                    time_open(bench, vcbfs["flat"], r)
                else:
                    lay = name.split()[-1] if name.startswith("vcbfs") else ""
                    time_on(
                        bench,
                        side,
                        commands[task],
                        r,
                        cold=task != "hot",
                        profile=profiles.get(lay) if task == "tar" else None,
                    )
                log(f"{task} {name} run {rep + 1}: {r.times[-1]:.2f} s")
            if task == "big" and bare is not None:
                r = results.setdefault((task, BARE), CorpusResult(verified="-"))
                r.times.append(bench.time(bare))
                r.cpu.append(0.0)
                log(f"big {BARE} run {rep + 1}: {r.times[-1]:.2f} s")

    facts = corpus.facts["ntfs3g"]
    versions = tool_versions()
    extra = [
        f"versions: {versions}",
        f"corpus: {args.corpus} ({corpus.root}): {facts['entries']:,} entries, "
        f"{facts['bytes'] / 1e9:.2f} GB in files (sparse sizes included), largest folder "
        f"{facts['largest_dir']:,}, depth {facts['max_depth']}, {facts['hard_links']:,} "
        "files with hard links",
        f"timing: best of {args.repeat}, fresh mount per run, ROOT stat'ed, page cache dropped "
        "(not for hot); vcbfs runs with --request-profile",
        *check_lines,
    ]
    print_header("vcbfs bench corpus", bench, extra)
    rows = print_corpus_table(tasks, plan, results, args.corpus, corpus)
    best = results.get(("tar", "vcbfs flat"))
    if best is not None and best.profile:
        print("\nvcbfs flat, requests of its best tar (from --request-profile):")
        print_table(
            ["request", "count", "total ms", "mean us"],
            [
                [q["request"], f"{q['count']:,}", f"{q['total_ms']:.0f}", f"{q['mean_us']:.1f}"]
                for q in best.profile["requests"]
            ],
        )
        for what, n in best.profile.get("notes", {}).items():
            print(f"  {what}: {n:,}")
    return finish(
        args,
        NAME,
        bench,
        started,
        versions,
        rows,
        corpus=args.corpus,
        corpus_facts=facts,
        checks=check_lines,
        profile=best.profile if best else None,
    )


def check_listings(sides: Mapping[str, MountSide], names: Sequence[str]) -> list[str]:
    """Each side's listing (path, type, size) against ntfs-3g's, the WOF folder aside."""

    def listing(side: MountSide) -> dict[str, tuple[str, int]]:
        with side.mounted() as m:
            found = tree_listing(m.root)
        return {p: v for p, v in found.items() if not p.startswith(WOF_DIR)}

    want = listing(sides["ntfs-3g"])
    lines = []
    for name in names:
        if name == "ntfs-3g":
            continue
        got = listing(sides[name])
        got.pop("System Volume Information", None)
        bad = sorted(set(got.items()) ^ set(want.items()))
        if bad:
            lines.append(f"check {name}: FAIL {len(bad)} differences, e.g. {bad[:3]}")
        else:
            lines.append(f"check {name}: the same {len(got):,} paths, types and sizes as ntfs-3g")
    return lines


def print_corpus_table(
    tasks: list[str],
    plan: Mapping[str, list[str]],
    results: Mapping[tuple[str, str], CorpusResult],
    corpus_name: str,
    corpus: Any,
) -> list[Row]:
    headers = [
        "task",
        "tool",
        "best s",
        "median s",
        "MB/s",
        "server CPU s",
        "peak MB",
        "ratio",
        "target",
    ]
    big_bytes = corpus.recipe.big_file
    rows, figures = [], []
    for task in tasks:
        for tool in [*plan[task], BARE]:
            r = results.get((task, tool))
            if r is None or not r.times:
                continue
            f = result_figures(r, task=task, tool=tool)
            figures.append(f)
            mbs = big_bytes / MB / r.best if task in ("big", "hot") else None
            if mbs:
                f["mb_s"] = mbs
            if r.rss:
                f["peak_rss_mb"] = max(r.rss)
            ratio, target = ratio_and_target(task, tool, r, results, f, corpus_name)
            rows.append(
                [
                    task,
                    tool,
                    f"{r.best:.2f}",
                    f"{r.median:.2f}",
                    f"{mbs:.0f}" if mbs else "-",
                    f"{r.cpu[r.times.index(r.best)]:.2f}",
                    f"{max(r.rss):.0f}" if r.rss else "-",
                    ratio,
                    target,
                ]
            )
    print_table(headers, rows, left=2)
    return figures


def ratio_and_target(
    task: str,
    tool: str,
    r: CorpusResult,
    results: Mapping[tuple[str, str], CorpusResult],
    f: Row,
    corpus_name: str,
) -> tuple[str, str]:
    ratios, targets = [], []
    for (t, who, peer), limit in TARGETS.items():
        other = results.get((t, peer))
        if t == task and who == tool and other is not None and other.times:
            x = r.best / other.best
            ratios.append(f"{x:.2f}x {peer}")
            f[f"vs {peer}"] = x
            targets.append(f"<={limit}x {peer} {judge(f, limit, x <= limit, miss='over')}")
    if task == "big" and tool == "vcbfs flat" and (task, BARE) in results:
        x = results[task, BARE].best / r.best
        ratios.append(f"{x:.2f}x no-fs MB/s")
        f["vs no-fs MB/s"] = x
        targets.append(f">={BIG_COLD_TARGET}x {judge(f, BIG_COLD_TARGET, x >= BIG_COLD_TARGET)}")
    if task == "hot" and tool == "vcbfs flat" and (task, "ntfs-3g") in results:
        x = results[task, "ntfs-3g"].best / r.best
        ratios.append(f"{x:.2f}x ntfs-3g MB/s")
        f["vs ntfs-3g MB/s"] = x
        targets.append(f">={BIG_HOT_TARGET}x {judge(f, BIG_HOT_TARGET, x >= BIG_HOT_TARGET)}")
    if task == "open":
        targets.append(f"<{OPEN_TARGET} s {judge(f, OPEN_TARGET, r.best < OPEN_TARGET)}")
    if task == "tar" and tool == "vcbfs flat" and r.rss:
        limit = RSS_TARGET[corpus_name]
        ok = max(r.rss) <= limit
        f["rss_target_mb"], f["rss_met"] = limit, ok
        targets.append(f"peak <={limit} MB {'PASS' if ok else 'over'}")
    f["targets"] = "; ".join(targets) or "report only"
    return "; ".join(ratios), f["targets"]


def tool_versions() -> str:
    vcbfs = first_line([vcbfs_command(), "--version"])
    ntfs3g = first_line(["ntfs-3g", "--version"]).split(" integrated")[0]
    vmdk = first_line(["vmdkmount", "-V"])
    return f"{vcbfs}, {ntfs3g}, {vmdk}"


def markdown(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    out = [runs_line(NAME, docs), ""]
    table = []
    for d in docs[:1]:
        for row in d["rows"]:
            rows = rows_of(docs, task=row["task"], tool=row["tool"])
            ratios = [f"{span(rows, k, '{:.2f}')}x {k[3:]}" for k in row if k.startswith("vs ")]
            if row.get("targets", "").count(";") and "met" in row:  # several targets
                verdicts = row["targets"].replace("PASS", "met").replace(" over", " not met")
                verdicts = verdicts.replace(" below", " not met")
            else:
                verdicts = ""
            table.append(
                [
                    row["task"],
                    row["tool"],
                    span(rows, "best_s", "{:.2f}", " s"),
                    span(rows, "mb_s", "{:.0f}"),
                    span(rows, "peak_rss_mb", "{:.0f}"),
                    "; ".join(ratios),
                    verdicts
                    or (verdict_of(rows) if "met" in row else row.get("targets", "report only")),
                ]
            )
    return out + md_table(["task", "tool", "best", "MB/s", "peak MB", "ratio", "target"], table)
