"""Datastore files over HTTP(S) as byte sources: vSphere's ``/folder/PATH?dcPath=DC&dsName=DS``.

This is the network route of VCB: without a SAN or NFS mount, a snapshot's disk files are read
from vCenter or an ESXi host through the datastore file interface, one ranged GET per read.

* ``HttpOptions`` holds TLS, authentication, timeout, retry and pool settings.
* ``HttpSession`` owns one urllib3 ``PoolManager`` (thread-safe, keep-alive connections, at most
  ``pool_size`` per host) shared by every source opened with it, and the retry loop.
* ``HttpSource`` is a stateless ``ByteSource``: the size is learned at open, every ``read_at``
  is an independent ``Range`` request, so any number of threads may read it at once.
* ``HttpLocation`` names a datastore file and its siblings (a VMDK's extents and parents).

Transient failures (refused/reset connections, bodies cut short, timeouts, HTTP 429/5xx) are
retried with capped exponential backoff, bounded both in count and in total time.  Answers that
another try cannot change (401/403/404/416, TLS refusals) raise typed errors at once.  Secrets
(the session cookie, a password in the URL) never reach names, logs or error messages.

Every request is bounded as a whole, not only per socket read: from asking the pool for a
connection to the last body byte (connect, TLS handshake, headers, body) it has a time budget
(``HttpOptions.budget``).  A watchdog thread cuts the connection of a request still running at
its deadline (``shutdown`` of the socket, which wakes the blocked read at once), so a server that
trickles a byte now and then, each within the read timeout, frees the worker after the budget.

Names are confined: an ``HttpLocation`` and its siblings stay below ``/folder/`` of the URL they
were given, with its ``dcPath`` and ``dsName`` unchanged, whatever ``..``, ``%2e%2e``,
backslashes, ``?``, ``#`` or ``&`` a VM file's names hold.
"""

from __future__ import annotations

import base64
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import (
    SplitResult,
    quote_from_bytes,
    unquote,
    unquote_to_bytes,
    urlsplit,
    urlunsplit,
)

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from vcbfs.blocks.confine import ConfinementError
from vcbfs.blocks.source import ByteSource, Location
from vcbfs.errors import (
    AccessDeniedError,
    NotFoundError,
    ReadError,
    UnsupportedError,
    VcbfsError,
)

__all__ = ["HttpLocation", "HttpOptions", "HttpSession", "HttpSource", "redact_url"]

T = TypeVar("T")

#: Statuses that mean "busy or briefly broken, ask again".
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)
_FINGERPRINT_MISMATCH = re.compile(r'Expected "([0-9a-fA-F:]+)", got "([0-9a-fA-F]+)"')


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """How to reach a datastore: TLS trust, credentials, timeouts, retries and pooling.

    ``thumbprint`` (the server certificate's SHA-256, hex, colons optional, any case) pins the
    certificate instead of verifying it against CAs, which is how vSphere hosts with self-signed
    certificates are usually trusted; it wins over ``ca_file`` and ``verify``.  Otherwise the
    server is verified against ``ca_file`` or the system CA store, unless ``verify=False`` (an
    explicit, insecure choice).  ``cookie`` is sent verbatim as the ``Cookie`` header (e.g.
    ``vmware_soap_session="..."``); it is left out of ``repr`` and never appears in errors.

    ``connect_timeout`` and ``read_timeout`` bound one connect and one socket read.  A request as
    a whole (waiting for a pooled connection, connect, TLS handshake, headers and the entire
    body) is bounded by ``budget(n)`` = ``request_budget + n / min_rate`` seconds for ``n`` bytes
    asked; past it the connection is cut and closed (never pooled again) and the read fails with
    a ``ReadError`` naming the URL and the budget, without a retry: a server that slow is not
    helped by asking it again.  The defaults, 60 s plus 1 s per 256 KiB, give a 1 MiB read
    64 s and a 16 MiB readahead range 124 s (it succeeds at 135 kB/s and more, a 1 Mbit/s
    share of a link), while a server trickling a byte every few seconds frees the worker
    after about a minute instead of holding it for hours.

    A failed request is tried again up to ``retries`` more times, after a jittered backoff of
    ``backoff_base * 2**k`` seconds capped at ``backoff_max``, or after the server's Retry-After
    up to ``retry_after_max``.  No try starts and no backoff is slept after ``retry_deadline``
    seconds, and the last try is cut at ``max(retry_deadline, budget(n))``: that bounds one
    read, retries included.  ``pool_size`` is the most connections kept and used at once per host.
    """

    verify: bool = True
    ca_file: str | None = None
    thumbprint: str | None = None
    cookie: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 5
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    retry_deadline: float = 120.0
    retry_after_max: float = 10.0
    pool_size: int = 8
    request_budget: float = 60.0
    min_rate: float = 256 * 1024

    def __post_init__(self) -> None:
        if self.thumbprint is not None:
            fp = re.sub(r"[\s:]", "", self.thumbprint).lower()
            if not re.fullmatch(r"[0-9a-f]{64}", fp):
                raise ValueError(
                    "thumbprint must be a SHA-256 fingerprint: 64 hex digits, colons optional"
                )
            object.__setattr__(self, "thumbprint", fp)
        if self.cookie is not None and not (self.cookie.isascii() and self.cookie.isprintable()):
            # never echo the value: it is a credential
            raise ValueError("cookie must be a single header line of printable ASCII")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.retries < 0 or self.pool_size < 1:
            raise ValueError("retries must be >= 0 and pool_size >= 1")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.retry_deadline < 0:
            raise ValueError("backoff and deadline must not be negative")
        if not (self.request_budget > 0 and self.min_rate > 0):
            raise ValueError("request_budget and min_rate must be positive")

    def budget(self, n: int) -> float:
        """Seconds one request for ``n`` bytes may take, from start to its last byte."""
        return self.request_budget + max(n, 0) / self.min_rate


class _Attempt:
    """One request on the wire, which the watchdog may cut once ``deadline`` has passed.

    The connection it runs on is known by a duplicate of its socket's descriptor, taken on this
    request's own thread; ``shutdown`` through the duplicate acts on the socket itself, for
    every descriptor, and since the duplicate is ours it cannot be closed and reused under the
    watchdog (the real socket may be closed at any time by urllib3 or http.client).  The cut
    request fails at once and its thread closes the connection, which is never pooled again.
    """

    __slots__ = ("_fd", "_lock", "deadline", "expired", "finished")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.expired = False  # cut by the watchdog
        self.finished = False
        self._fd: int | None = None
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket) -> None:
        """Watch ``sock``, the connection this request is about to use (once per request).

        Raises ``_Expired`` if the deadline has passed already (while connecting): the socket is
        not used at all then, rather than cut before the TLS handshake.
        """
        with self._lock:
            if self.expired:
                raise _Expired
            if self._fd is not None or self.finished:
                return
            try:
                self._fd = os.dup(sock.fileno())
            except (OSError, ValueError):  # already closed: nothing to wait on
                return

    def expire(self) -> None:
        with self._lock:
            if self.finished or self.expired:
                return
            self.expired = True
            if self._fd is not None:
                self._cut()

    def finish(self) -> None:
        with self._lock:
            self.finished = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def overdue(self) -> bool:
        return self.expired or time.monotonic() >= self.deadline

    def _cut(self) -> None:
        assert self._fd is not None
        sock = socket.socket(fileno=self._fd)
        try:
            # Reading side only: every read, blocked or to come, sees the end of the stream
            # at once, while the connection stays established until the request's thread
            # closes it.  (After SHUT_RDWR, a socket not yet wrapped in TLS would look
            # unconnected to ssl, which then skips the handshake and leaks the SSLSocket.)
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # already gone
        finally:
            sock.detach()  # the descriptor stays ours, closed by finish()


class _Expired(Exception):
    """Raised on a request's thread that reaches a connection after its deadline."""


class _Watchdog:
    """A thread that cuts every watched request still running at its deadline.

    It sleeps until the earliest deadline of the requests in flight (a handful: at most the
    pool size per host plus the readers waiting for a connection), so it costs nothing while
    requests end in time, and it ends after ``IDLE`` seconds without any.
    """

    IDLE = 30.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: set[_Attempt] = set()
        self._wake_at = float("inf")
        self._running = False
        self.thread: threading.Thread | None = None

    def watch(self, attempt: _Attempt) -> None:
        with self._cond:
            self._active.add(attempt)
            if not self._running:
                self._running = True
                self.thread = threading.Thread(
                    target=self._run, name="vcbfs-http-deadline", daemon=True
                )
                self.thread.start()
            elif attempt.deadline < self._wake_at:
                self._cond.notify()

    def forget(self, attempt: _Attempt) -> None:
        with self._cond:
            self._active.discard(attempt)

    def _run(self) -> None:
        idle_since: float | None = None
        with self._cond:
            while True:
                now = time.monotonic()
                overdue = [a for a in self._active if a.deadline <= now]
                for a in overdue:
                    self._active.discard(a)
                    a.expire()
                if self._active:
                    idle_since = None
                    self._wake_at = min(a.deadline for a in self._active)
                else:
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= self.IDLE:
                        self._running = False
                        self._wake_at = float("inf")
                        return
                    self._wake_at = idle_since + self.IDLE
                self._cond.wait(max(0.0, self._wake_at - now))


_current = threading.local()  # .attempt: the _Attempt this thread is sending, if any


def _watch_socket(sock: socket.socket | None) -> None:
    attempt: _Attempt | None = getattr(_current, "attempt", None)
    if attempt is not None and sock is not None:
        attempt.attach(sock)


class _WatchedHTTPConnection(HTTPConnection):
    """A connection that the request using it can cut at its deadline (see ``_Attempt``)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        try:
            _watch_socket(sock)  # before the TLS handshake, which is bounded too
        except BaseException:
            sock.close()
            raise
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_socket(self.sock)  # a pooled connection, reused
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _QuietUnverifiedPool(_HTTPSPool):
    """An HTTPS pool used only for an explicit ``verify=False``.

    urllib3 warns (``InsecureRequestWarning``) on every request of an unverified pool; here the
    caller asked for exactly that, so the warning is noise, and a hard error under ``-W error``.
    Silencing it in this pool avoids a process-wide warning filter, which would also hide the
    warning for unrelated code (and ``warnings.catch_warnings`` is not thread-safe).
    """

    def _validate_conn(self, conn: HTTPConnection) -> None:
        HTTPConnectionPool._validate_conn(self, conn)
        if conn.is_closed:  # connect early, as the parent does, so TLS errors surface here
            conn.connect()


class _Transient(Exception):
    """A response that another try may fix (a body cut short)."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


#: How many fresh session cookies one request may ask for after a 401.
RENEWALS = 3


class HttpSession:
    """One connection pool and retry policy shared by all sources opened with it.

    ``renew_cookie``, when given, is asked for a fresh session cookie after a 401 (a vSphere
    session that expired); the request is then tried again with it, up to ``RENEWALS`` times
    (sessions ended one after another while the request was under way), so a 401 that a fresh
    session does not cure still ends as a typed refusal.
    """

    def __init__(
        self,
        options: HttpOptions | None = None,
        *,
        renew_cookie: Callable[[], str] | None = None,
    ):
        self.options = opts = options or HttpOptions()
        self.cookie = opts.cookie
        self._renew_cookie = renew_cookie
        tls: dict[str, object]
        if opts.thumbprint:
            # Pinning replaces CA and host name checks: the fingerprint is the identity.
            tls = {"cert_reqs": "CERT_NONE", "assert_fingerprint": opts.thumbprint}
        elif opts.verify:
            tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": opts.ca_file}
        else:
            tls = {"cert_reqs": "CERT_NONE", "assert_hostname": False}
        self._timeout = urllib3.Timeout(connect=opts.connect_timeout, read=opts.read_timeout)
        self._pool = urllib3.PoolManager(
            maxsize=opts.pool_size,
            block=True,  # at most pool_size connections per host; more readers wait for one
            retries=False,
            timeout=self._timeout,
            **tls,
        )
        unverified = not opts.thumbprint and not opts.verify
        self._pool.pool_classes_by_scheme = {
            "http": _HTTPPool,
            "https": _QuietUnverifiedPool if unverified else _HTTPSPool,
        }
        self._watchdog = _Watchdog()
        self._closed = False

    def close(self) -> None:
        """Close every pooled connection; sources opened with this session stop working."""
        self._closed = True
        self._pool.clear()

    def __enter__(self) -> HttpSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the retry loop ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        accept: Callable[[urllib3.BaseHTTPResponse], T],
        *,
        name: str,
        offset: int | None = None,
        length: int = 0,
    ) -> T:
        """Send ``method url`` until ``accept`` takes a response or retrying is pointless.

        ``accept`` sees every response that is neither retryable (429/5xx) nor a refusal
        (401/403/404); it returns the result, raises a typed error, or raises ``_Transient`` for
        a broken body.  ``name`` (the redacted URL) and ``offset`` go into error messages.
        ``length`` (the bytes asked) sizes each try's time budget (``HttpOptions.budget``).
        """
        if self._closed:
            raise ReadError("HTTP session is closed", source=name, offset=offset)
        opts = self.options
        budget = opts.budget(length)
        start = time.monotonic()
        retry_until = start + opts.retry_deadline  # no try or backoff starts after this
        end = start + max(opts.retry_deadline, budget)  # and the last try is cut here
        attempt = 0
        renewals = 0
        cause = ""
        while True:
            attempt += 1
            earlier = cause  # what the last try failed with
            now = time.monotonic()
            if now >= end:  # a slow cookie renewal
                raise self._out_of_time(name, offset, attempt - 1, budget, end - start, earlier)
            watched = _Attempt(min(now + budget, end))
            whole = end - start if watched.deadline == end and attempt > 1 else None
            retry_after: float | None = None
            sent = dict(headers)
            if self.cookie:
                sent["Cookie"] = self.cookie
            self._watchdog.watch(watched)
            try:
                try:
                    resp = self._send(method, url, sent, watched)
                except LocationValueError as exc:
                    raise ReadError(f"bad URL: {exc}", source=name) from None
                except _Expired:
                    raise self._out_of_time(name, offset, attempt, budget, whole, earlier) from None
                except SSLError as exc:
                    if watched.overdue():  # a cut handshake: not the server's TLS answer
                        raise self._out_of_time(
                            name, offset, attempt, budget, whole, earlier
                        ) from None
                    refusal = self._tls_failure(exc, name)
                    if refusal is not None:
                        raise refusal from None
                    cause = self._describe(exc)
                except (HTTPError, OSError) as exc:
                    cause = self._describe(exc)
                else:
                    done = False
                    try:
                        if resp.status in RETRY_STATUSES:
                            cause = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
                            retry_after = _retry_after(resp.headers.get("Retry-After"))
                        elif resp.status == 401 and self._renew_cookie and renewals < RENEWALS:
                            renewals += 1
                            self.cookie = self._renew_cookie()
                            attempt -= 1  # not a failure of the server's: retry at once
                            continue
                        else:
                            _raise_refusal(resp, name, offset)
                            result = accept(resp)
                            if watched.expired:  # cut: its headers may have been cut short
                                raise self._out_of_time(
                                    name, offset, attempt, budget, whole, earlier
                                )
                            done = True
                            return result
                    except VcbfsError:  # typed answers are final (and some are OSErrors)
                        if watched.expired:  # not an answer: the cut headers of one
                            raise self._out_of_time(
                                name, offset, attempt, budget, whole, earlier
                            ) from None
                        raise
                    except _Transient as exc:
                        cause = self._scrub(exc.cause)
                    except (HTTPError, OSError) as exc:  # the body broke off or stalled
                        cause = self._describe(exc)
                    finally:
                        if not done or watched.expired:  # unread or cut: never pooled again
                            resp.close()
                        resp.release_conn()
            finally:
                watched.finish()
                self._watchdog.forget(watched)

            if watched.overdue():  # cut at its deadline: a server this slow is not retried
                raise self._out_of_time(name, offset, attempt, budget, whole, earlier)
            delay = min(opts.backoff_max, opts.backoff_base * 2 ** min(attempt - 1, 32))
            delay *= random.uniform(0.5, 1.0)  # jitter: many threads must not retry in step
            if retry_after is not None:
                delay = max(delay, min(retry_after, opts.retry_after_max))
            if attempt > opts.retries or time.monotonic() + delay > retry_until:
                raise ReadError(
                    f"giving up after {attempt} attempt{'s' * (attempt > 1)}: {cause}",
                    source=name,
                    offset=offset,
                ) from None
            time.sleep(delay)

    def _send(
        self, method: str, url: str, headers: dict[str, str], watched: _Attempt
    ) -> urllib3.BaseHTTPResponse:
        """One request, its headers read; the watchdog cuts it at ``watched.deadline``."""
        opts = self.options
        left = max(watched.deadline - time.monotonic(), 0.001)
        # The watchdog cannot see a socket still connecting: bound the connect by the budget.
        timeout = urllib3.Timeout(connect=min(opts.connect_timeout, left), read=opts.read_timeout)
        _current.attempt = watched
        try:
            return self._pool.request(
                method,
                url,
                headers=headers,
                preload_content=False,
                decode_content=False,
                redirect=False,
                retries=False,
                timeout=timeout,
                pool_timeout=left,  # waiting for a free connection counts too
            )
        finally:
            _current.attempt = None

    def _out_of_time(
        self,
        name: str,
        offset: int | None,
        attempts: int,
        budget: float,
        whole: float | None,
        earlier: str,
    ) -> ReadError:
        """The error for a request cut at its deadline: its own budget's, or (``whole``
        seconds) the deadline of the read it is a retry of."""
        opts = self.options
        rule = f"{opts.request_budget:.3g} s + 1 s per {opts.min_rate / 1024:.4g} KiB asked"
        if whole is None:
            text = (
                f"request cut off at its time budget of {budget:.3g} s ({rule}): "
                "the server is too slow or trickles its answer"
            )
        else:
            text = (
                f"request cut off at this read's deadline of {whole:.3g} s, retries included "
                f"(each request may take {budget:.3g} s: {rule})"
            )
        if attempts > 1:
            text = f"giving up after {attempts} attempts: {text}"
            if earlier:
                text += f"; the attempt before failed with: {earlier}"
        return ReadError(text, source=name, offset=offset)

    def _describe(self, exc: BaseException) -> str:
        """A short, secret-free account of a transport failure."""
        opts = self.options
        if isinstance(exc, ReadTimeoutError):
            text = f"read timed out after {opts.read_timeout:g} s (server stalled)"
        elif isinstance(exc, NewConnectionError):
            os_err = next((e for e in _chain(exc) if type(e) is not type(exc)), None)
            text = f"cannot connect: {os_err if os_err is not None else exc}"
        elif isinstance(exc, ConnectTimeoutError):
            text = f"connect timed out after {opts.connect_timeout:g} s"
        elif isinstance(exc, ProtocolError) and len(exc.args) == 2:
            text = f"{str(exc.args[0]).rstrip('.')}: {exc.args[1]!r}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        for cookie in {self.cookie, self.options.cookie}:
            if cookie:
                text = text.replace(cookie, "<cookie>")
        return text

    def _tls_failure(self, exc: SSLError, name: str) -> VcbfsError | None:
        """The error for a TLS failure no retry can fix, or None if it looks transient."""
        chain = list(_chain(exc))
        for e in chain:
            m = _FINGERPRINT_MISMATCH.search(str(e))
            if m:
                return AccessDeniedError(
                    f"server certificate fingerprint {_colons(m[2])} does not match "
                    f"pinned {_colons(m[1])}",
                    source=name,
                )
        for e in chain:
            if isinstance(e, ssl.SSLCertVerificationError):
                reason = getattr(e, "verify_message", None) or e.reason or str(e)
                return AccessDeniedError(
                    f"TLS certificate verification failed ({reason}); to trust this server, "
                    "pin its SHA-256 thumbprint (thumbprint=...), give its CA (ca_file=...), "
                    "or explicitly skip verification (verify=False, insecure)",
                    source=name,
                )
        if any(isinstance(e, ssl.SSLEOFError | ConnectionError | socket.timeout) for e in chain):
            return None
        return ReadError(f"TLS handshake failed: {self._scrub(str(exc))}", source=name)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the exceptions it wraps (args, cause, context), depth first, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend(a for a in e.args if isinstance(a, BaseException))
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def _colons(hexdigest: str) -> str:
    h = hexdigest.replace(":", "").upper()
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _raise_refusal(resp: urllib3.BaseHTTPResponse, name: str, offset: int | None) -> None:
    status = resp.status
    if status == 401:
        raise AccessDeniedError(
            "access denied (HTTP 401 Unauthorized): missing, wrong or expired session cookie "
            "or credentials",
            source=name,
            offset=offset,
        )
    if status == 403:
        raise AccessDeniedError(
            "access denied (HTTP 403 Forbidden): the session may not read this file",
            source=name,
            offset=offset,
        )
    if status == 404:
        raise NotFoundError("no such file on the datastore (HTTP 404)", source=name, offset=offset)


def _unexpected(resp: urllib3.BaseHTTPResponse, name: str, offset: int | None) -> ReadError:
    status = resp.status
    if 300 <= status < 400:
        where = redact_url(resp.headers.get("Location", "") or "?")
        return ReadError(f"unexpected redirect (HTTP {status}) to {where}", source=name)
    return ReadError(
        f"unexpected answer HTTP {status} {resp.reason or ''}".rstrip(), source=name, offset=offset
    )


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total)`` of a ``Content-Range: bytes a-b/n`` header; total may be None."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    return int(m[1]), int(m[2]), None if m[3] == "*" else int(m[3])


def redact_url(url: str) -> str:
    """``url`` without user name, password or fragment: safe to show, log and put in errors."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _request_target(url: str) -> tuple[str, dict[str, str]]:
    """The URL to send (credentials removed) and the headers carrying those credentials."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise UnsupportedError("not a valid URL (bad port)", source=redact_url(url)) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UnsupportedError("not an http:// or https:// URL", source=redact_url(url))
    headers: dict[str, str] = {}
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        token = base64.b64encode(user_pass.encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    return redact_url(url), headers


class HttpSource(ByteSource):
    """One file read with ranged GETs; the size is fixed when it is opened.

    Closing it releases nothing: the connections belong to the session.
    """

    def __init__(self, session: HttpSession, url: str):
        self.session = session
        self.name = redact_url(url)
        self._url, auth = _request_target(url)
        self._headers = {"Accept-Encoding": "identity", "User-Agent": "vcbfs", **auth}
        self.size = self._probe()

    def _probe(self) -> int:
        """HEAD's Content-Length, or the total of a ``bytes=0-0`` GET's Content-Range."""

        def head(resp: urllib3.BaseHTTPResponse) -> int | None:
            if resp.status == 200:
                length = resp.headers.get("Content-Length", "").strip()
                return int(length) if length.isdigit() else None
            if resp.status in (405, 501):  # HEAD not supported: ask with a ranged GET
                return None
            raise _unexpected(resp, self.name, None)

        def first_byte(resp: urllib3.BaseHTTPResponse) -> int:
            if resp.status == 206:
                cr = _content_range(resp.headers.get("Content-Range"))
                if cr is None or cr[2] is None:
                    raise ReadError(
                        f"cannot tell the file size: Content-Range is "
                        f"{resp.headers.get('Content-Range')!r}",
                        source=self.name,
                    )
                return cr[2]
            if resp.status == 416:  # nothing at offset 0: an empty file
                m = _UNSATISFIED_RANGE.match(resp.headers.get("Content-Range", ""))
                if m:
                    return int(m[1])
            if resp.status == 200:
                raise ReadError(
                    "server ignores Range requests; cannot read parts of the file",
                    source=self.name,
                )
            raise _unexpected(resp, self.name, None)

        size = self.session._request("HEAD", self._url, self._headers, head, name=self.name)
        if size is None:
            headers = {**self._headers, "Range": "bytes=0-0"}
            size = self.session._request("GET", self._url, headers, first_byte, name=self.name)
        return size

    def _read(self, offset: int, n: int) -> bytes:
        last = offset + n - 1

        def body(resp: urllib3.BaseHTTPResponse) -> bytes:
            if resp.status == 206:
                cr = _content_range(resp.headers.get("Content-Range"))
                if cr is None or cr[:2] != (offset, last):
                    raise ReadError(
                        f"asked for bytes {offset}-{last}, server sent Content-Range "
                        f"{resp.headers.get('Content-Range')!r}",
                        source=self.name,
                        offset=offset,
                    )
                if cr[2] is not None and cr[2] != self.size:
                    raise ReadError(
                        f"file size changed from {self.size} to {cr[2]} bytes since it was opened",
                        source=self.name,
                        offset=offset,
                    )
            elif resp.status == 200:
                if offset != 0 or n != self.size:
                    raise ReadError(
                        "server ignored the Range header (HTTP 200 for part of the file)",
                        source=self.name,
                        offset=offset,
                    )
            elif resp.status == 416:
                raise ReadError(
                    f"range bytes={offset}-{last} is beyond the end of the file (server: "
                    f"{resp.headers.get('Content-Range', 'no Content-Range')}; "
                    f"size at open {self.size})",
                    source=self.name,
                    offset=offset,
                )
            else:
                raise _unexpected(resp, self.name, offset)
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ReadError(
                    f"server sent an encoded body ({encoding}) although identity was asked",
                    source=self.name,
                    offset=offset,
                )
            data = resp.read(n, decode_content=False)
            if len(data) != n:
                raise _Transient(f"connection dropped after {len(data)} of {n} bytes")
            if resp.read(1, decode_content=False):
                raise ReadError(
                    f"server sent more than the {n} bytes asked for",
                    source=self.name,
                    offset=offset,
                )
            return data

        return self.session._request(
            "GET",
            self._url,
            {**self._headers, "Range": f"bytes={offset}-{last}"},
            body,
            name=self.name,
            offset=offset,
            length=n,
        )


_SEPARATORS = re.compile(rb"[/\\]")
_ABSOLUTE = re.compile(r"[/\\]|[A-Za-z]:[/\\]")


def _components(path: str) -> list[bytes]:
    """A URL path's names, percent-decoded, split at ``/`` and ``\\`` (a ``%2F`` or ``%5C``
    too: some servers decode them into separators), empty names left out."""
    return [c for c in _SEPARATORS.split(unquote_to_bytes(path)) if c]


def _resolve(directory: list[bytes], names: list[bytes], root: int) -> list[bytes]:
    """``names`` followed from ``directory``; ``..`` stops at the first ``root`` components."""
    out = list(directory)
    for c in names:
        if c == b".":
            continue
        if c == b"..":
            if len(out) > root:
                out.pop()
            continue
        out.append(c)
    return out


def _confined(parts: SplitResult, path: list[bytes], source: str) -> str:
    """The URL of ``parts`` with the path ``path``, each name percent-encoded whole."""
    if any(b"\0" in c for c in path):
        raise ConfinementError("names a file whose name holds a NUL", source=source)
    encoded = "/" + "/".join(quote_from_bytes(c, safe="") for c in path)
    return urlunsplit((parts.scheme, parts.netloc, encoded, parts.query, ""))


def _root(path: list[bytes]) -> int:
    """How many leading names ``..`` cannot leave: ``/folder`` is the datastore's root."""
    return 1 if path[:1] == [b"folder"] else 0


class HttpLocation(Location):
    """A datastore file URL; ``url`` may carry credentials, ``name`` never does.

    The datastore interface serves a datastore's files below ``/folder/``, the datastore named by
    the query's ``dsName`` (in ``dcPath``); other paths of the same server (``/host/``, ``/sdk``)
    are not datastore files.  So the path is made canonical here: ``..`` and ``.`` (also written
    ``%2e%2e``, or with ``\\`` or ``%2F`` as separators) are resolved and stop at ``/folder``,
    and every name is percent-encoded whole.  Left as they were, urllib3 itself would resolve a
    ``/folder/../host/x`` to ``/host/x``, outside the datastore, and a server might decode and
    resolve the rest.  The query (``dcPath``, ``dsName``) is kept exactly; a fragment is dropped.
    """

    def __init__(self, session: HttpSession, url: str):
        self.session = session
        parts = urlsplit(url)
        path = _components(parts.path)
        self.url = _confined(parts, _resolve([], path, _root(path)), redact_url(url))
        self.name = redact_url(self.url)

    def open(self) -> HttpSource:
        return HttpSource(self.session, self.url)

    def sibling(self, name: str) -> HttpLocation:
        """The file ``name`` in this file's datastore directory; query (dcPath, dsName) kept.

        The datastore interface has no absolute paths: ``/folder/...`` is relative to the
        datastore named by ``dsName``.  An absolute name (``/vmfs/volumes/<uuid>/vm/x.vmdk``, as
        VMDK descriptors record parents, or a Windows ``C:\\...``) cannot be mapped to a URL,
        so its base name is looked up in this directory, where snapshot files and their parents
        normally live.  ``/`` and ``\\`` both separate names; ``..`` stops at the datastore's
        root; ``%``, ``?``, ``#``, ``&``, ``;`` are parts of a name, percent-encoded, so no name
        reaches the query.  A NUL is refused (``ConfinementError``), and so is a name that ends
        in a directory (``""``, ``.``, ``sub/``: ``NotFoundError``), which the server would
        answer with an HTML listing.
        """
        if "\0" in name:
            raise ConfinementError(f"names {name!r}, which holds a NUL", source=self.name)
        parts = urlsplit(self.url)
        path = _components(parts.path)
        root = _root(path)
        directory = path[:-1] if len(path) > root else path
        names = re.split(r"[/\\]", name)
        if _ABSOLUTE.match(name):
            names = names[-1:]
        if names[-1] in ("", ".", ".."):
            raise NotFoundError(f"names {name!r}, a directory, not a file", source=self.name)
        found = _resolve(directory, [_encode(n) for n in names if n], root)
        return HttpLocation(self.session, _confined(parts, found, self.name))


def _encode(name: str) -> bytes:
    try:
        return name.encode("utf-8", "surrogateescape")  # bytes a decoder could not read
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogatepass")
