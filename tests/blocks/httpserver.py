"""A real HTTP/1.1 file server on 127.0.0.1 for the HTTP source tests, with fault injection.

It serves byte strings by URL path (HEAD, GET with one ``Range``, 206/416, keep-alive), optionally
over TLS, in background threads.  ``Faults`` makes it misbehave for the first K requests (or for
all of them): answer with a status, cut the body short, reset the connection, stall, or trickle
the answer a few bytes at a time.  Every request and every accepted connection is recorded so
tests can count retries and reuse.  ``TrickleProxy`` relays a server's bytes slowly, TLS
handshake included.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import quote, unquote, urlsplit

__all__ = ["Faults", "FileServer", "Seen", "TrickleProxy"]

ALWAYS = 1 << 30


@dataclass
class Faults:
    """Misbehaviour, each for the first ``*_first`` requests that reach it (``ALWAYS`` = all)."""

    status: int = 0  # answer with this HTTP status ...
    status_first: int = 0  # ... for the first K requests
    retry_after: str | None = None  # Retry-After header sent with ``status``
    drop_first: int = 0  # GETs whose body is cut short by a clean close after half of it
    reset_first: int = 0  # requests answered by a TCP reset and nothing else
    stall_first: int = 0  # requests that stall for ``stall_seconds`` ...
    stall_seconds: float = 2.0
    stall_in_body: bool = False  # ... before the headers, or after half of the body
    head_length: bool = True  # HEAD answers carry Content-Length
    head_allowed: bool = True  # HEAD is answered at all (else 405)
    ignore_range: bool = False  # GET always answers 200 with the whole file
    trickle_first: int = 0  # answers sent ``trickle_bytes`` at a time ...
    trickle_bytes: int = 1
    trickle_interval: float = 0.05  # ... every this many seconds
    trickle_headers: bool = False  # from the status line on, else only the body

    def take(self, name: str) -> bool:
        """Use up one of the ``name`` faults; True if this request gets it."""
        left = getattr(self, name)
        if left > 0:
            setattr(self, name, left - 1)
            return True
        return False


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str] = field(hash=False)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FileServer

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that time out or refuse TLS are expected here: stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # idle keep-alive connections end by themselves
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    server: _Server

    def setup(self) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.connections += 1
        if owner.tls is not None:
            self.request.settimeout(self.timeout)
            self.request = owner.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.close()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = unquote(urlsplit(self.path).path)
        with owner.lock:
            owner.requests.append(Seen(self.command, self.path, dict(self.headers.items())))
            f = owner.faults
            reset = f.take("reset_first")
            stall = not reset and f.take("stall_first")
            status = f.status if f.status and not reset and f.take("status_first") else 0
            trickle = not reset and not status and f.take("trickle_first")
            data = owner.files.get(path)
        if reset:
            self._reset()
            return
        if stall and not f.stall_in_body:
            owner.stopping.wait(f.stall_seconds)
        if status:
            extra = {"Retry-After": f.retry_after} if f.retry_after else {}
            self._simple(status, head, extra)
            return
        if data is None:
            self._simple(404, head)
            return
        if head:
            if not f.head_allowed:
                self._simple(405, head, {"Allow": "GET"})
                return
            self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            if f.head_length:
                self.send_header("Content-Length", str(len(data)))
            if trickle and f.trickle_headers:
                self._trickle(self._head())
                return
            self.end_headers()
            return
        start, end, status = 0, len(data), 200
        rng = self.headers.get("Range")
        if rng is not None and not f.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng)
            if m is None:
                self._simple(400, head)
                return
            start, end = int(m[1]), int(m[2]) + 1
            if start >= len(data) or end <= start:
                self._simple(416, head, {"Content-Range": f"bytes */{len(data)}"})
                return
            end = min(end, len(data))
            status = 206
        body = data[start:end]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        if trickle:
            self._trickle(self._head() + body if f.trickle_headers else body)
            return
        self.end_headers()
        with owner.lock:
            drop = f.take("drop_first")
        if drop or (stall and f.stall_in_body):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if drop:
                self.close_connection = True
                return
            owner.stopping.wait(f.stall_seconds)
        self.wfile.write(body)

    def _head(self) -> bytes:
        """The status line and headers sent so far, with the blank line: taken, not sent."""
        self._headers_buffer.append(b"\r\n")  # type: ignore[attr-defined]
        head = b"".join(self._headers_buffer)  # type: ignore[attr-defined]
        self._headers_buffer = []  # type: ignore[attr-defined]
        return head

    def _trickle(self, payload: bytes) -> None:
        """Send ``payload`` slowly (headers not yet sent are sent first, as they are)."""
        owner = self.server.owner
        f = owner.faults
        step = max(1, f.trickle_bytes)
        self.close_connection = True
        try:
            if getattr(self, "_headers_buffer", None):
                self.end_headers()
            for i in range(0, len(payload), step):
                if i and owner.stopping.wait(f.trickle_interval):
                    return
                self.wfile.write(payload[i : i + step])
                self.wfile.flush()
        except OSError:  # the client gave up and closed the connection
            with owner.lock:
                owner.cut += 1
            return
        with owner.lock:
            owner.trickled += 1

    def _simple(self, status: int, head: bool, headers: dict[str, str] | None = None) -> None:
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _reset(self) -> None:
        """Close with SO_LINGER 0, so the client sees ECONNRESET rather than a clean end."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.wfile.close()
        self.connection.close()


class _Stoppable:
    """``with`` stops it at the end."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class FileServer(_Stoppable):
    """Serve ``files`` (URL path -> bytes) on an ephemeral 127.0.0.1 port until ``stop()``.

    ``tls`` is ``(certfile, keyfile)`` for HTTPS.  ``faults`` may be replaced or changed at any
    time; ``requests`` and ``connections`` count what the server saw; ``trickled`` and ``cut``
    count the trickled answers that were sent whole and those the client closed midway.
    """

    def __init__(self, files: dict[str, bytes], *, tls: tuple[str, str] | None = None):
        self.files = dict(files)
        self.faults = Faults()
        self.requests: list[Seen] = []
        self.connections = 0
        self.trickled = 0
        self.cut = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.tls: ssl.SSLContext | None = None
        if tls is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str, query: str = "dcPath=dc&dsName=ds1") -> str:
        scheme = "https" if self.tls else "http"
        q = f"?{query}" if query else ""
        return f"{scheme}://127.0.0.1:{self.port}{quote(path)}{q}"

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if method is None or r.method == method)

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.connections = 0

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class TrickleProxy(_Stoppable):
    """A TCP relay from ``port`` on 127.0.0.1 to ``target``: the client's bytes go through at once,
    the server's ``chunk`` bytes at a time every ``interval`` seconds, from the first byte (a TLS
    handshake too).  ``cut`` counts relays that ended because the client closed midway.
    """

    def __init__(self, target: int, *, chunk: int = 1, interval: float = 0.05):
        self.target, self.chunk, self.interval = target, chunk, interval
        self.cut = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            client.close()
            return
        with self.lock:
            self._sockets += [client, upstream]
        threading.Thread(target=self._pass, args=(client, upstream), daemon=True).start()
        try:
            while not self.stopping.is_set():
                data = upstream.recv(self.chunk)
                if not data:
                    break
                client.sendall(data)
                if self.stopping.wait(self.interval):
                    break
        except OSError:
            if not self.stopping.is_set():
                with self.lock:
                    self.cut += 1
        finally:
            client.close()
            upstream.close()

    @staticmethod
    def _pass(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stop(self) -> None:
        self.stopping.set()
        self._listener.close()
        with self.lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        self._thread.join()
