"""``python scripts/benchmarks ARGS`` (what ``scripts/bench`` runs), or ``python -m benchmarks
ARGS`` from scripts/: the benchmarks' command line (``cli.main``)."""

import sys
from pathlib import Path

if not __package__:
    # Run by path: Python put this directory first on sys.path, where requests.py would shadow
    # the ``requests`` library; import the package from scripts/ instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
