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
"""

from __future__ import annotations

import base64
import random
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import urllib3
from urllib3.connection import HTTPConnection
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

    A failed request is tried again up to ``retries`` more times, after a jittered backoff of
    ``backoff_base * 2**k`` seconds capped at ``backoff_max``, or after the server's Retry-After
    up to ``retry_after_max``; ``retry_deadline`` bounds one read, retries included, in seconds.
    ``pool_size`` is the most connections kept and used at once per host.
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


class _QuietUnverifiedPool(HTTPSConnectionPool):
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


class HttpSession:
    """One connection pool and retry policy shared by all sources opened with it.

    ``renew_cookie``, when given, is asked for a fresh session cookie after a 401 (a vSphere
    session that expired); the request is then tried once more with it.
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
        if not opts.thumbprint and not opts.verify:
            self._pool.pool_classes_by_scheme = {
                "http": HTTPConnectionPool,
                "https": _QuietUnverifiedPool,
            }
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
    ) -> T:
        """Send ``method url`` until ``accept`` takes a response or retrying is pointless.

        ``accept`` sees every response that is neither retryable (429/5xx) nor a refusal
        (401/403/404); it returns the result, raises a typed error, or raises ``_Transient`` for
        a broken body.  ``name`` (the redacted URL) and ``offset`` go into error messages.
        """
        if self._closed:
            raise ReadError("HTTP session is closed", source=name, offset=offset)
        opts = self.options
        deadline = time.monotonic() + opts.retry_deadline
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            retry_after: float | None = None
            sent = dict(headers)
            if self.cookie:
                sent["Cookie"] = self.cookie
            try:
                resp = self._pool.request(
                    method,
                    url,
                    headers=sent,
                    preload_content=False,
                    decode_content=False,
                    redirect=False,
                    retries=False,
                    timeout=self._timeout,
                )
            except LocationValueError as exc:
                raise ReadError(f"bad URL: {exc}", source=name) from None
            except SSLError as exc:
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
                    elif resp.status == 401 and self._renew_cookie and not renewed:
                        renewed = True
                        self.cookie = self._renew_cookie()
                        attempt -= 1  # not a failure of the server's: retry at once
                        continue
                    else:
                        _raise_refusal(resp, name, offset)
                        result = accept(resp)
                        done = True
                        return result
                except VcbfsError:  # typed answers are final (and some are OSErrors)
                    raise
                except _Transient as exc:
                    cause = self._scrub(exc.cause)
                except (HTTPError, OSError) as exc:  # the body broke off or stalled
                    cause = self._describe(exc)
                finally:
                    if not done:  # unread body: the connection cannot be reused
                        resp.close()
                    resp.release_conn()

            delay = min(opts.backoff_max, opts.backoff_base * 2 ** min(attempt - 1, 32))
            delay *= random.uniform(0.5, 1.0)  # jitter: many threads must not retry in step
            if retry_after is not None:
                delay = max(delay, min(retry_after, opts.retry_after_max))
            if attempt > opts.retries or time.monotonic() + delay > deadline:
                raise ReadError(
                    f"giving up after {attempt} attempt{'s' * (attempt > 1)}: {cause}",
                    source=name,
                    offset=offset,
                ) from None
            time.sleep(delay)

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
        )


class HttpLocation(Location):
    """A datastore file URL; ``url`` may carry credentials, ``name`` never does."""

    def __init__(self, session: HttpSession, url: str):
        self.session = session
        self.url = url
        self.name = redact_url(url)

    def open(self) -> HttpSource:
        return HttpSource(self.session, self.url)

    def sibling(self, name: str) -> HttpLocation:
        """The file ``name`` in this file's datastore directory; query (dcPath, dsName) kept.

        The datastore interface has no absolute paths: ``/folder/...`` is relative to the
        datastore named by ``dsName``.  An absolute name (``/vmfs/volumes/<uuid>/vm/x.vmdk``, as
        VMDK descriptors record parents) cannot be mapped to a URL, so its base name is looked up
        in this directory, where snapshot files and their parents normally live.
        """
        parts = urlsplit(self.url)
        segments = parts.path.split("/")[:-1]  # the directory, still percent-encoded
        if name.startswith("/"):
            name = name.rsplit("/", 1)[-1]
        root = 2 if len(segments) >= 2 and segments[1] == "folder" else 1
        for seg in name.split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                if len(segments) > root:
                    segments.pop()
                continue
            segments.append(quote(seg, safe=""))
        path = "/".join(segments)
        return HttpLocation(
            self.session, urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
        )
