"""The harness every benchmark shares: running commands, timing them from a cold page cache,
caching built inputs, the header and the plain text table of a run, its JSON document, and the
markdown helpers that ``scripts/bench tables`` builds the README's tables with.

It holds no benchmark: each one is a module beside it (``disk``, ``ntfs``, ...) whose
``register`` adds its subcommand through ``bench_parser`` and whose ``run_bench`` times, prints
and ends with ``finish`` (the ``--json`` document and the ``whole run`` line).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

ROOT = Path(__file__).resolve().parents[2]  # the project: scripts/benchmarks/harness.py
PROGRAMS = Path(__file__).resolve().parent / "programs"  # run by path in their own process
MB = 1_000_000  # throughput is in decimal megabytes per second
MIB = 1 << 20

Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Row: TypeAlias = dict[str, Any]  # one row of a run's JSON document


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


def venv_python() -> str:
    """The Python that runs vcbfs: the one beside the ``vcbfs`` script."""
    beside = Path(vcbfs_command()).parent / "python"
    return str(beside) if beside.exists() else sys.executable


def program(name: str) -> str:
    """The path of ``programs/NAME.py``, a program a benchmark runs in a process of its own."""
    return str(PROGRAMS / f"{name}.py")


def tests_importable() -> None:
    """Let the fixture builders of tests/ be imported (they stay there; the bench uses them)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


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


def first_line(cmd: list[str]) -> str:
    """The first line a tool prints about itself ("?" if it is missing or silent)."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    said = (res.stdout or res.stderr).strip()
    return said.splitlines()[0] if said else "?"


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


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


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
    count = 0
    for src in (ROOT / "vcbfs").rglob("*.py"):
        pyc = Path(importlib.util.cache_from_source(str(src)))
        if not pyc.exists() or pyc.stat().st_mtime < src.stat().st_mtime:
            count += 1
    return count


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


# ---------------------------------------------------------------------------------------------
# The command line every benchmark shares


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
    verbs: Verbs,
    name: str,
    summary: str,
    doc: str | None,
    run: Callable[[argparse.Namespace], int],
    *,
    repeat: int = 3,
    repeat_help: str = "runs per command (3)",
) -> argparse.ArgumentParser:
    """A subcommand with the options every benchmark has: ``--repeat`` (default ``repeat``)
    and ``--json FILE``."""
    p = verbs.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=positive, default=repeat, metavar="N", help=repeat_help)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.set_defaults(run=run)
    return p


# ---------------------------------------------------------------------------------------------
# A run's JSON document (``--json FILE``)


def result_figures(r: Result, **names: Any) -> Row:
    """A row of the JSON document: ``names`` (what and who), the check, every run's seconds,
    and the best and the median where it ran; the benchmark adds MB/s, ratios and targets."""
    row: Row = {**names, "verified": r.verified, "skipped": r.skipped}
    row["times_s"] = [round(t, 6) for t in r.times]
    if r.times:
        row.update(best_s=r.best, median_s=r.median)
    return row


def judge(row: Row, target: float, met: bool, miss: str = "below") -> str:
    """Record ``target`` and whether the row ``met`` it; the verdict as the tables print it."""
    verdict = "PASS" if met else miss
    row.update(target=target, verdict=verdict, met=met)
    return verdict


def finish(
    args: argparse.Namespace,
    benchmark: str,
    bench: Bench,
    started: float,
    versions: str,
    rows: list[Row],
    **extra: Any,
) -> int:
    """The end of every run: the JSON document if ``--json FILE`` asked for one (its path
    printed), then the ``whole run`` line."""
    whole = time.perf_counter() - started
    if args.json:
        doc = {
            "benchmark": benchmark,
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine_line(),
            "load_average": {"start": bench.load_at_start, "end": load_average()},
            "cold_cache": bench.cold,
            "repeat": args.repeat,
            "versions": versions,
            **extra,
            "rows": rows,
            "whole_run_s": round(whole, 1),
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"json: {args.json}")
    print(f"whole run: {whole:.0f} s", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Markdown for ``scripts/bench tables``: several runs of one benchmark make one table, each cell
# the range of its figure over the runs


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table (``|`` in a cell escaped, as the README writes it)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]


def runs_line(benchmark: str, docs: Sequence[Mapping[str, Any]]) -> str:
    """Which runs a table shows: their dates, repeats and machines."""
    dates = sorted({str(d["date"])[:10] for d in docs})
    repeats = sorted({int(d["repeat"]) for d in docs})
    machines = sorted({str(d["machine"]) for d in docs})
    cold = "cold cache" if all(d.get("cold_cache") for d in docs) else "warm cache in some runs"
    count = f"{len(docs)} runs" if len(docs) > 1 else "1 run"
    best = "/".join(str(r) for r in repeats)
    return (
        f"`scripts/bench {benchmark}`: {count} ({', '.join(dates)}); best of {best}, {cold}; "
        f"{'; '.join(machines)}"
    )


def rows_of(docs: Sequence[Mapping[str, Any]], **match: Any) -> list[Row]:
    """The rows whose fields are ``match``, from every run (one per run, where it has one)."""
    return [r for d in docs for r in d["rows"] if all(r.get(k) == v for k, v in match.items())]


def span(rows: Sequence[Row], key: str, fmt: str = "{:.0f}", unit: str = "") -> str:
    """``key``'s figure over the runs, as ``lo-hi`` (or one figure), with ``unit``; "" if none."""
    values = sorted(r[key] for r in rows if r.get(key) is not None)
    if not values:
        return ""
    lo, hi = fmt.format(values[0]), fmt.format(values[-1])
    return f"{lo if lo == hi else f'{lo}-{hi}'}{unit}"


def verdict_of(rows: Sequence[Row]) -> str:
    """Whether the rows met their target: met, not met, or met in K of N runs."""
    judged = [bool(r["met"]) for r in rows if "met" in r]
    if not judged:
        return "not measured"
    if all(judged):
        return "met"
    if not any(judged):
        return "not met"
    return f"met in {sum(judged)} of {len(judged)} runs"
