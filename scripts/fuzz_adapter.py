"""Run one adapter fuzz target for a million executions (or a time), outside CI.

Each execution makes an input with ``random.Random(seed)`` through the same generators the
hypothesis targets in tests/fs/test_fuzz_adapter.py draw from (``tests/fs/adapterfuzz.py``),
and walks the mount over it through every read-only handler.  Without hypothesis's engine an
execution costs a few milliseconds instead of tens, which is what makes a million reachable.

A failing input (a check that failed, or an exception other than FUSEError out of a handler)
is printed and kept as ``tests/fs/fuzz_regressions/TARGET-SIGNATURE.json`` (one per distinct
failure), which CI replays; the run goes on.  The last line is the record for docs/design.md:
target, executions, seconds, rate, failures.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fs.adapterfuzz import TARGETS, RandomChooser, keep, run_walk


def signature(exc: BaseException) -> str:
    """Failures alike (same type, same place, same message but for its names and numbers) are
    kept once."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    what = re.sub(r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*"|0x[0-9a-f]+|\d+""", "_", str(exc))
    text = f"{type(exc).__name__} {where} {what}"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions (1,000,000)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=None, help="first seed (random)")
    parser.add_argument("--no-keep", action="store_true", help="do not save failing inputs")
    args = parser.parse_args()
    make = TARGETS[args.target]
    first = args.seed if args.seed is not None else random.SystemRandom().getrandbits(40)
    print(f"{args.target}: seeds from {first}", flush=True)
    seen: dict[str, int] = {}
    failures = 0
    start = last = time.monotonic()
    runs = 0
    while runs < args.runs:
        now = time.monotonic()
        if args.seconds is not None and now - start >= args.seconds:
            break
        if now - last >= 60:
            rate = runs / (now - start)
            print(f"  {runs} executions, {rate:.0f}/s, {failures} failing", flush=True)
            last = now
        seed = first + runs
        specs = make(RandomChooser(random.Random(seed)))
        runs += 1
        try:
            run_walk(specs, seed)
        except Exception as exc:  # every failure is reported and kept
            failures += 1
            sig = signature(exc)
            seen[sig] = seen.get(sig, 0) + 1
            if seen[sig] == 1:
                print(f"FAILED seed {seed}: {type(exc).__name__}: {short(str(exc))}", flush=True)
                traceback.print_exc(limit=-3)
                if not args.no_keep:
                    print(f"  kept as {keep(specs, seed, f'{args.target}-{sig}')}", flush=True)
    took = time.monotonic() - start
    print(
        f"RESULT target={args.target} executions={runs} seconds={took:.0f} "
        f"rate={runs / took:.0f}/s failures={failures} distinct={len(seen)}",
        flush=True,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
