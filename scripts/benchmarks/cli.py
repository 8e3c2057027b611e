"""The benchmarks' command line: one subcommand per benchmark module (its ``register``), and
``tables``, which prints the README's markdown tables from the JSON documents of runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from . import compressed, corpus, disk, mount, ntfs, requests, vsphere
from .harness import Verbs

#: the benchmark modules, in the order of ``--help`` and of the tables
BENCHMARKS: tuple[ModuleType, ...] = (disk, ntfs, mount, corpus, vsphere, requests, compressed)

TABLES_DOC = """\
    scripts/bench tables FILE.json [FILE.json ...]

Prints the README's markdown tables (``| benchmark | vcbfs | peer | ratio | target |`` and the
like) from the documents ``scripts/bench BENCHMARK --json FILE.json`` wrote: one table per
benchmark, headed by the dates, repeats and machines of its runs.  Several runs of one
benchmark make one table whose cells are ranges (``lo-hi``) over the runs, and whose targets
say whether every run met them.
"""


def register_tables(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "tables",
        help="the README's markdown tables, from the --json files of runs",
        description=TABLES_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.json")
    p.set_defaults(run=print_tables)


def print_tables(args: argparse.Namespace) -> int:
    known = {m.NAME: m for m in BENCHMARKS}
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in args.files:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            sys.exit(f"bench: {path}: {e}")
        name = doc.get("benchmark") if isinstance(doc, dict) else None
        if name not in known or not isinstance(doc.get("rows"), list):
            sys.exit(f"bench: {path}: not the --json document of a benchmark")
        runs.setdefault(name, []).append(doc)
    blocks = []
    for module in BENCHMARKS:
        docs = sorted(runs.get(module.NAME, []), key=lambda d: str(d.get("date")))
        if docs:
            blocks.append("\n".join(module.markdown(docs)))
    print("\n\n".join(blocks))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmarks of vcbfs against independent readers.",
    )
    verbs = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for module in BENCHMARKS:
        module.register(verbs)
    register_tables(verbs)
    args = parser.parse_args(argv)
    return int(args.run(args))
