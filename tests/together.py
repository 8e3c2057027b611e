"""Running one function in several threads at once, for the tests of concurrent readers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def together(fn: Callable[[], T], n: int, timeout: float = 120.0) -> list[T | BaseException]:
    """``fn()`` in ``n`` threads released at the same moment: each one's result or exception."""
    start = threading.Barrier(n)
    outcomes: list[T | BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            start.wait()
            outcome: T | BaseException = fn()
        except BaseException as exc:
            outcome = exc
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"{fn} did not return in {timeout} s")
    return outcomes
