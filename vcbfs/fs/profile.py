"""A per-request profile of a mount: FUSE requests by type, with their count and time.

Off by default (``vcbfs mount --request-profile FILE`` turns it on): a benchmark figure is
only useful with where its time went, and the counts alone tell a lot (how many lookups a
tar made, how many reads were answered in the event loop instead of a worker thread).  The
time of a request is its wall time in the server, from the handler's start to its answer,
waiting for a worker thread included.  Handlers run in one trio thread, so plain counters
do; nothing here takes a lock.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RequestProfile"]


@dataclass(slots=True)
class _Row:
    count: int = 0
    total_ns: int = 0


class RequestProfile:
    """Requests by type: counts and total nanoseconds; ``notes`` are counts without times."""

    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}
        self.notes: dict[str, int] = {}
        self.started = time.monotonic()

    def add(self, request: str, ns: int) -> None:
        row = self.rows.get(request)
        if row is None:
            row = self.rows[request] = _Row()
        row.count += 1
        row.total_ns += ns

    def note(self, what: str) -> None:
        self.notes[what] = self.notes.get(what, 0) + 1

    def summary(self) -> dict[str, object]:
        """What ``write`` stores: a row per request type, busiest first, and the notes."""
        rows = sorted(self.rows.items(), key=lambda item: -item[1].total_ns)
        return {
            "seconds": round(time.monotonic() - self.started, 3),
            "requests": [
                {
                    "request": name,
                    "count": row.count,
                    "total_ms": round(row.total_ns / 1e6, 3),
                    "mean_us": round(row.total_ns / row.count / 1e3, 1),
                }
                for name, row in rows
            ],
            "notes": dict(sorted(self.notes.items())),
        }

    def write(self, path: str | os.PathLike[str]) -> None:
        """The summary as JSON, written whole (a reader never sees half a file)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.summary(), indent=1) + "\n")
        os.replace(tmp, target)
