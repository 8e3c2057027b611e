"""``scripts/bench requests``: what one FUSE request costs, as opens and closes of a small file
on vcbfs, on ntfs-3g and on the do-nothing pyfuse3 + trio server of
``programs/nothing_server.py``; see ``DOC``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .harness import (
    Bench,
    Result,
    Row,
    Verbs,
    bench_dir,
    bench_parser,
    finish,
    first_line,
    log,
    md_table,
    need_tools,
    positive,
    print_header,
    print_table,
    program,
    result_figures,
    rows_of,
    run,
    runs_line,
    span,
    vcbfs_command,
    venv_python,
)
from .mount import Mounted, MountSide, Ntfs3gSide, VcbfsSide, is_mounted, mount_fixture
from .ntfs import TINY_FILE

NAME = "requests"
DOC = """\
    scripts/bench requests [--repeat N] [--count N] [--json FILE]

``requests`` measures what one FUSE request costs on each side, which bounds any benchmark that
makes many of them (tar of a tree makes about 11,500).  It opens and closes one small file
(bench/``sizes/tiny-1.bin`` of the mount benchmark's volume) COUNT times (default 5,000) in the
bench's own process: each pair is an OPEN and a RELEASE request (and a FLUSH where the server
answers it), and nothing is read.  Three servers, each on a fresh mount, runs interleaved:

  vcbfs     ``vcbfs mount`` of the mount benchmark's VM (MNT/letters/F)
  ntfs-3g   ``ntfs-3g -o ro`` of the same volume
  nothing   the least pyfuse3 + trio file system (one file, every answer from memory: no
            parsing, no disk), scripts/benchmarks/programs/nothing_server.py: the floor under
            any server built on the binding and event loop vcbfs uses

The table shows microseconds per open + close (best and median of N runs) and the ratio to
ntfs-3g's.  Printed, never asserted.  ``--json FILE`` also writes the run's figures as JSON.
"""


class NothingSide(MountSide):
    """``python programs/nothing_server.py MNT`` in the background; ``fusermount3 -u`` ends
    it."""

    name = "nothing"
    root = "MNT"

    def __init__(self, mnt: Path) -> None:
        self.mnt = mnt
        self.mnt.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Mounted]:
        proc = subprocess.Popen([venv_python(), program("nothing_server"), str(self.mnt)])
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


def register(verbs: Verbs) -> None:
    p = bench_parser(
        verbs,
        NAME,
        "the cost of one FUSE request: vcbfs, ntfs-3g, pyfuse3 + trio alone",
        DOC,
        run_bench,
    )
    p.add_argument("--count", type=positive, default=5000, help="open+close pairs per run")


def run_bench(args: argparse.Namespace) -> int:
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
    figures: list[Row] = []
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
        f = result_figures(Result(times=ts), task="open+close", tool=name)
        f.update(best_us=best / args.count * 1e6, median_us=median / args.count * 1e6)
        f.update(vs_ntfs3g=best / ref, ratio_of="time")
        figures.append(f)
    print_table(["server", "best µs", "median µs", "/ ntfs-3g"], rows)
    vcbfs = first_line([vcbfs_command(), "--version"])
    ntfs3g = first_line(["ntfs-3g", "--version"]).split(" integrated")[0]
    return finish(
        args, NAME, bench, started, f"{vcbfs}, {ntfs3g}", figures, count=args.count, file=TINY_FILE
    )


def markdown(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cost of an open + close on vcbfs against ntfs-3g, and the do-nothing floor."""
    mine = rows_of(docs, tool="vcbfs")
    peer = rows_of(docs, tool="ntfs-3g")
    floor = rows_of(docs, tool="nothing")
    rows = [
        [
            "open + close of a small file on the mount (two FUSE requests)",
            span(mine, "best_us", "{:.0f}", " µs"),
            f"ntfs-3g {span(peer, 'best_us', '{:.0f}', ' µs')}",
            span(mine, "vs_ntfs3g", "{:.2f}", "x time"),
            "report only",
        ],
        [
            "the same on a do-nothing pyfuse3 + trio file system (the binding's floor)",
            "",
            span(floor, "best_us", "{:.0f}", " µs"),
            span(floor, "vs_ntfs3g", "{:.2f}", "x time"),
            "(the floor)",
        ],
    ]
    headers = ["benchmark", "vcbfs", "peer", "ratio", "target"]
    return [runs_line(NAME, docs), "", *md_table(headers, rows)]
