"""Every HTTP(S) request is bounded as a whole: a server that trickles its answer (each byte in
time for the per-read timeout) is cut at the request's budget and the reader is freed."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.blocks.httpserver import ALWAYS, Faults, FileServer, TrickleProxy
from vcbfs.blocks import http
from vcbfs.blocks.http import HttpOptions, HttpSession, HttpSource
from vcbfs.errors import ReadError

DISK = "/folder/vm one/vm one-flat.vmdk"
SIZE = 512 * 1024 + 321
DATA = random.Random(20240612).randbytes(SIZE)
COOKIE = 'vmware_soap_session="52a1c3e0-secret-cookie-value"'
BUDGET = 0.6  # seconds; the trickle sends a byte every 0.05 s, well within the read timeout
LIMIT = 3 * BUDGET  # a cut read must end well before this (generous: loaded CI machines)


def options(**kw: Any) -> HttpOptions:
    base: dict[str, Any] = {
        "connect_timeout": 2.0,
        "read_timeout": 0.4,
        "backoff_base": 0.005,
        "backoff_max": 0.02,
        "request_budget": BUDGET,
        "min_rate": float(1 << 30),  # the budget is (nearly) only its fixed part
        "cookie": COOKIE,
    }
    return HttpOptions(**{**base, **kw})


def bounded(fn: Callable[[], object], limit: float = LIMIT) -> tuple[object, float]:
    """Run ``fn`` on a thread; fail unless it ends within ``limit`` seconds.  Returns what it
    returned or raised, and how long it took."""
    out: dict[str, Any] = {}

    def target() -> None:
        t0 = time.monotonic()
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["value"] = exc
        out["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the reader is still held after {limit} s"
    return out["value"], out["elapsed"]


def eventually(check: Callable[[], bool], within: float = 3.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def assert_budget_error(exc: object, name: str, budget: float = BUDGET) -> ReadError:
    assert isinstance(exc, ReadError), repr(exc)
    msg = str(exc)
    assert name in msg
    assert f"time budget of {budget:.3g} s" in msg
    assert "trickles" in msg
    assert "secret-cookie" not in msg
    return exc


@pytest.fixture(params=["http", "https"])
def server(request: pytest.FixtureRequest, cert: tuple[str, str, str]) -> Iterator[FileServer]:
    tls = (cert[0], cert[1]) if request.param == "https" else None
    with FileServer({DISK: DATA}, tls=tls) as srv:
        yield srv


@pytest.fixture
def pin(server: FileServer, cert: tuple[str, str, str]) -> dict[str, str]:
    """The option that trusts ``server``'s certificate, if it has one."""
    return {"thumbprint": cert[2]} if server.tls else {}


@pytest.fixture
def session(pin: dict[str, str]) -> Iterator[HttpSession]:
    with HttpSession(options(**pin)) as s:
        yield s


def open_disk(server: FileServer, session: HttpSession) -> HttpSource:
    src = HttpSource(session, server.url(DISK))
    server.reset_counts()
    return src


# -- a trickle is cut at the budget -----------------------------------------------------------


def test_trickled_body_is_cut_at_the_budget(server: FileServer, session: HttpSession) -> None:
    src = open_disk(server, session)
    server.faults = Faults(trickle_first=ALWAYS)  # 100 kB at 20 B/s would take 80 minutes
    exc, elapsed = bounded(lambda: src.read_at(0x1000, 100_000))
    err = assert_budget_error(exc, src.name)
    assert err.offset == 0x1000
    assert elapsed >= BUDGET - 0.05  # cut by the budget, not by a read timeout
    assert server.count("GET") == 1  # a server this slow is not asked again
    assert eventually(lambda: server.cut == 1)  # the connection was closed, not kept
    server.faults = Faults()
    assert src.read_at(5, 10) == DATA[5:15]  # and the session works on


def test_trickled_headers_are_cut_at_the_budget(server: FileServer, session: HttpSession) -> None:
    src = open_disk(server, session)
    server.faults = Faults(trickle_first=ALWAYS, trickle_headers=True)
    exc, _ = bounded(lambda: src.read_at(0, 10))
    assert_budget_error(exc, src.name)
    assert eventually(lambda: server.cut == 1)
    # opening (HEAD) is bounded the same way
    exc, _ = bounded(lambda: HttpSource(session, server.url(DISK)))
    assert_budget_error(exc, src.name)
    assert server.count("HEAD") == 1


def test_trickled_tls_handshake_is_cut_at_the_budget(cert: tuple[str, str, str]) -> None:
    with (
        FileServer({DISK: DATA}, tls=(cert[0], cert[1])) as srv,
        TrickleProxy(srv.port, chunk=1, interval=0.05) as proxy,
        HttpSession(options(thumbprint=cert[2])) as session,
    ):
        url = srv.url(DISK).replace(f":{srv.port}/", f":{proxy.port}/")
        exc, _ = bounded(lambda: HttpSource(session, url))
        assert_budget_error(exc, url)
        assert eventually(lambda: proxy.cut == 1)
        assert srv.count() == 0  # it never got as far as a request


def test_slow_but_steady_transfer_gets_a_budget_for_its_size(
    server: FileServer, pin: dict[str, str]
) -> None:
    """16 KiB every 0.05 s: 320 kB/s, 0.8 s for 256 KiB.  At 1 s per 128 KiB the budget is
    0.5 + 2 s and the read succeeds; without the part per byte it is cut at 0.5 s."""
    n = 256 * 1024
    server.faults = Faults(trickle_first=ALWAYS, trickle_bytes=16 * 1024)
    steady = options(request_budget=0.5, min_rate=128 * 1024.0, **pin)
    assert steady.budget(n) == pytest.approx(2.5)
    with HttpSession(steady) as session:
        src = HttpSource(session, server.url(DISK))
        got, elapsed = bounded(lambda: src.read_at(1000, n), limit=3 * steady.budget(n))
        assert got == DATA[1000 : 1000 + n]
        assert elapsed > 0.5  # it did take longer than the fixed part of the budget
    with HttpSession(options(request_budget=0.5, **pin)) as session:
        src = HttpSource(session, server.url(DISK))
        exc, _ = bounded(lambda: src.read_at(1000, n))
        assert_budget_error(exc, src.name, budget=session.options.budget(n))


# -- retries and waiting ----------------------------------------------------------------------


def test_a_retry_is_cut_at_the_reads_deadline(server: FileServer, pin: dict[str, str]) -> None:
    """A 503, a backoff of 0.4-0.8 s, then a trickle: the retry gets what is left of the read's
    1 s, not a budget of its own."""
    opts = options(retry_deadline=1.0, request_budget=1.0, backoff_base=0.8, backoff_max=0.8, **pin)
    with HttpSession(opts) as s:
        src = HttpSource(s, server.url(DISK))
        server.reset_counts()
        server.faults = Faults(status=503, status_first=1, trickle_first=ALWAYS)
        exc, _ = bounded(lambda: src.read_at(0, 1000), limit=3.0)
    assert isinstance(exc, ReadError)
    msg = str(exc)
    assert "giving up after 2 attempts" in msg
    assert "this read's deadline of 1 s, retries included" in msg
    assert "HTTP 503" in msg
    assert server.count("GET") == 2


def test_waiting_for_a_pooled_connection_counts(server: FileServer, pin: dict[str, str]) -> None:
    """One connection, held by a trickle: the reader waiting for it is bounded as well."""
    with HttpSession(options(pool_size=1, **pin)) as session:
        src = open_disk(server, session)
        server.faults = Faults(trickle_first=ALWAYS)
        results: list[object] = []
        threads = [
            threading.Thread(target=lambda: results.append(bounded(lambda: src.read_at(0, 99))))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(LIMIT + 1)
        assert len(results) == 2
        for exc, _ in results:  # type: ignore[misc]
            assert isinstance(exc, ReadError)
            assert "time budget" in str(exc)


def test_the_watchdog_thread_ends_when_idle(
    server: FileServer, pin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http._Watchdog, "IDLE", 0.2)
    with HttpSession(options(**pin)) as session:
        assert HttpSource(session, server.url(DISK)).read_at(0, 10) == DATA[:10]
        thread = session._watchdog.thread
        assert thread is not None and thread.is_alive()
        assert eventually(lambda: not thread.is_alive(), within=BUDGET + 2)


# -- options ----------------------------------------------------------------------------------


def test_default_budget() -> None:
    opts = HttpOptions()
    assert opts.budget(0) == 60.0
    assert opts.budget(1 << 20) == 64.0  # a FUSE read
    assert opts.budget(16 << 20) == 124.0  # a whole readahead window: succeeds at 135 kB/s
    with pytest.raises(ValueError, match="request_budget"):
        HttpOptions(request_budget=0)
    with pytest.raises(ValueError, match="min_rate"):
        HttpOptions(min_rate=0)
