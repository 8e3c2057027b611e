"""The process-wide memory budget, measured: peak RSS of a reader that reads a lot stays within
the budget + 300 MiB over its RSS after imports.

A subprocess opens the two-disk test VM twelve times (as an automount holding twelve VMs
would), reads ``letters/`` (the SYSTEM hive), walks every directory of every volume through the
tree model (listings, stats, the 20,000-entry directory, links, streams), and reads the head of
every file and the whole of the compressed ones.  It prints its RSS after imports and its peak
(``VmHWM``).  Measured on 2026-12-05 with the same load and no budget (the code before it): RSS
after imports 21 MiB, peak 551 MiB (+530 MiB, over the bound of 64 + 300); with a 64 MiB budget:
peak 139 MiB (+118 MiB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fs.vmfixture import TestVm

MIB = 1 << 20
SLACK = 300 * MIB
COPIES = 12  # VMs open at once: 12 x 37 MiB of caches before the budget, past the bound

LOAD = r"""
import json, stat, sys

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out

from vcbfs.fs.tree import ROOT_INO, Tree
from vcbfs.vm.local import open_local_vm
from vcbfs.errors import VcbfsError

vmx, copies, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if budget:
    from vcbfs.blocks.budget import configure
    configure(budget)
baseline = status()["VmRSS"]
HEAD = 4 << 10
trees = [Tree(open_local_vm(vmx)) for _ in range(copies)]
counts = {"dirs": 0, "files": 0, "bytes": 0, "errors": 0}
for tree in trees:
    tree.readdir(tree.lookup(ROOT_INO, "letters").ino)  # reads the SYSTEM hive
    stack = [tree.lookup(ROOT_INO, "digits").ino]
    while stack:
        ino = stack.pop()
        try:
            listing = tree.readdir(ino)
        except VcbfsError:
            counts["errors"] += 1
            continue
        counts["dirs"] += 1
        for name, attr in listing:
            if stat.S_ISDIR(attr.mode):
                stack.append(attr.ino)
            elif stat.S_ISREG(attr.mode):
                counts["files"] += 1
                try:
                    src = tree.open(attr.ino)
                    whole = "compressed" in name or attr.size <= HEAD
                    n = attr.size if whole and attr.size <= 4 << 20 else min(attr.size, HEAD)
                    pos = 0
                    while pos < n:
                        got = len(src.read_at(pos, min(1 << 20, n - pos)))
                        if not got:
                            break
                        pos += got
                    counts["bytes"] += pos
                except VcbfsError:
                    counts["errors"] += 1
print(json.dumps({"baseline": baseline, "peak": status()["VmHWM"], **counts}))
"""


def run_load(vmx: Path, copies: int, budget: int) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(vmx), str(copies), str(budget)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_peak_rss_stays_within_the_budget(test_vm: TestVm) -> None:
    budget = 64 * MIB
    got = run_load(test_vm.vmx, COPIES, budget)
    print(
        f"\nload: {got['dirs']} dirs, {got['files']} files, {got['bytes'] / MIB:.0f} MiB read; "
        f"RSS after imports {got['baseline'] / MIB:.0f} MiB, peak {got['peak'] / MIB:.0f} MiB "
        f"(+{(got['peak'] - got['baseline']) / MIB:.0f} MiB) with a {budget // MIB} MiB budget"
    )
    assert got["files"] > COPIES * 20_000
    assert got["peak"] <= got["baseline"] + budget + SLACK
