"""Fault injection between vcbfs and the simulator: a TLS-terminating proxy, the CLI, the state.

``FaultProxy`` sits between vcbfs and vcsim. It presents the simulator's own certificate (so the
pinned thumbprint stays right), reads each HTTP request whole, and forwards it unless a rule
says otherwise. A rule matches requests holding every one of its byte strings (a SOAP method
name, a moref as ``>vm-42<``, ``GET /folder``) and, for its next ``times`` matches:

- ``reset``: the request never reaches vSphere; both connections are reset (TCP RST);
- ``lose``: vSphere does the work, but the answer is replaced by a reset (the caller cannot
  know whether it happened: the nastiest case for snapshots);
- ``stall``: as ``lose``, but the connection hangs ``seconds`` first (a timeout);
- ``call``: ``action_fn(request)`` runs first (say, terminating a session), then the
  request goes on.

Helpers run the real ``vcbfs`` CLI in subprocesses and read what it leaves behind (tagged
snapshots, journal entries, the server's PID).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyVmomi import vim

from tests.vsphere.simulator import Vcsim, list_snapshots, managed

__all__ = [
    "OURS",
    "FaultProxy",
    "Rule",
    "flood_control_socket",
    "journal",
    "server_pid",
    "tagged",
    "terminate_other_sessions",
    "vcbfs",
    "vcbfs_env",
    "wait_for",
]

OURS = re.compile(r"^vcbfs-backup \S+ [0-9a-f]{32}$")  # vcbfs's tag (not a look-alike)
MAX_HEAD = 1 << 16


# -- the proxy ----------------------------------------------------------------------------------


@dataclass
class Rule:
    match: tuple[bytes, ...]
    action: str  # reset | lose | stall | call
    times: int = 1
    seconds: float = 0.0
    action_fn: Callable[[bytes], object] | None = None
    hits: int = 0  # how many requests it acted on

    def matches(self, request: bytes) -> bool:
        return self.hits < self.times and all(m in request for m in self.match)


@dataclass(eq=False)  # hashed by identity
class _Conn:
    client: ssl.SSLSocket
    upstream: ssl.SSLSocket | None = None
    up_reader: _Reader | None = None
    closed: threading.Event = field(default_factory=threading.Event)


def _rst(sock: socket.socket | None) -> None:
    """Close with a TCP RST (SO_LINGER 0), never a TLS close_notify."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        # Wakes a thread blocked reading it (sends nothing); without this the socket would
        # live on, unannounced, until that read returned.
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """``with FaultProxy(sim) as proxy:``; vcbfs talks to ``proxy.port``."""

    def __init__(self, sim: Vcsim) -> None:
        if sim.certfile is None or sim.keyfile is None:
            raise ValueError("the proxy presents the simulator's certificate: start it with one")
        self.sim = sim
        self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_ctx.load_cert_chain(str(sim.certfile), str(sim.keyfile))
        self._client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._client_ctx.load_verify_locations(cafile=str(sim.certfile))
        self._client_ctx.check_hostname = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._conns: set[_Conn] = set()
        self._stop = threading.Event()
        self.requests: list[bytes] = []  # the request line of each request seen
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fault-proxy")

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset_all()
        self._thread.join(5)

    # -- commands --

    def fail(
        self,
        *match: str | bytes,
        action: str = "reset",
        times: int = 1,
        seconds: float = 0.0,
        action_fn: Callable[[bytes], object] | None = None,
    ) -> Rule:
        """Act on the next ``times`` requests holding every string of ``match``."""
        if action not in ("reset", "lose", "stall", "call"):
            raise ValueError(f"unknown action {action!r}")
        rule = Rule(
            tuple(m.encode() if isinstance(m, str) else m for m in match),
            action,
            times,
            seconds,
            action_fn,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def reset_all(self) -> int:
        """Reset every open connection (vCenter restarting, a firewall's idle cut)."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            self._drop(c)
        return len(conns)

    def count(self, *match: str) -> int:
        """How many requests seen so far hold every string of ``match`` (request line and
        body; method names only for SOAP)."""
        with self._lock:
            return sum(all(m.encode() in r for m in match) for r in self.requests)

    # -- serving --

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _drop(self, conn: _Conn, *, reset: bool = True) -> None:
        conn.closed.set()
        if reset:
            _rst(conn.client)
            _rst(conn.upstream)
        else:  # the answer was relayed: an orderly close, nothing lost on the way
            for sock in (conn.client, conn.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    with contextlib.suppress(OSError):
                        sock.close()
        with self._lock:
            self._conns.discard(conn)

    def _serve(self, raw: socket.socket) -> None:
        """One client connection, one request at a time (an SSL socket must not be read and
        written by two threads at once): read it, act on it, relay vSphere's answer."""
        try:
            raw.settimeout(30)
            client = self._server_ctx.wrap_socket(raw, server_side=True)
            client.settimeout(None)
        except OSError:
            _rst(raw)
            return
        conn = _Conn(client)
        with self._lock:
            self._conns.add(conn)
        orderly = False
        try:
            reader = _Reader(client)
            while not conn.closed.is_set():
                request = _read_request(reader)
                if request is None:
                    orderly = True  # the client hung up
                    break
                if not self._forward(conn, request):
                    break
        except (OSError, ValueError):
            pass
        finally:
            self._drop(conn, reset=not orderly)

    def _forward(self, conn: _Conn, request: bytes) -> bool:
        """Whether the connection goes on after this request."""
        rule = None
        with self._lock:
            self.requests.append(_summary(request))
            for r in self._rules:
                if r.matches(request):
                    r.hits += 1
                    rule = r
                    break
        if rule is not None and rule.action == "reset":
            return False
        if rule is not None and rule.action == "call":
            assert rule.action_fn is not None
            rule.action_fn(request)
        if conn.upstream is None:
            up = socket.create_connection((self.sim.host, self.sim.port), timeout=30)
            conn.upstream = self._client_ctx.wrap_socket(up, server_hostname=self.sim.host)
            conn.upstream.settimeout(300)
            conn.up_reader = _Reader(conn.upstream)
        conn.upstream.sendall(request)
        if rule is not None and rule.action in ("lose", "stall"):
            conn.closed.wait(rule.seconds)  # vSphere answers; nobody hears it
            return False
        assert conn.up_reader is not None
        head = conn.up_reader.read_head()
        if head is None:
            return False
        conn.client.sendall(head)
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        if request.startswith(b"HEAD ") or status in (204, 304) or 100 <= status < 200:
            pass
        elif length:
            left = int(length[1])
            while left:
                piece = conn.up_reader.read_some(left)
                conn.client.sendall(piece)
                left -= len(piece)
        elif re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
            conn.client.sendall(conn.up_reader.read_chunked())
        else:  # delimited by the close
            while piece := conn.up_reader.read_some(1 << 20, eof_ok=True):
                conn.client.sendall(piece)
            return False
        return not re.search(rb"(?im)^connection:\s*close", head)


class _Reader:
    """Lines and counted bytes from a socket (no makefile: its reference would keep the socket
    open past close, and a reset must close it at once)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def readline(self, limit: int) -> bytes:
        while b"\n" not in self.buf and len(self.buf) < limit:
            if not self._fill():
                break
        end = self.buf.find(b"\n") + 1 or len(self.buf)
        line, self.buf = self.buf[:end], self.buf[end:]
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ValueError("the message ended early")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_some(self, limit: int, *, eof_ok: bool = False) -> bytes:
        if not self.buf and not self._fill():
            if eof_ok:
                return b""
            raise ValueError("the message ended early")
        data, self.buf = self.buf[:limit], self.buf[limit:]
        return data

    def read_head(self) -> bytes | None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.readline(MAX_HEAD)
            if not line:
                return None
            head += line
            if len(head) > MAX_HEAD:
                raise ValueError("head too long")
        return head

    def read_chunked(self) -> bytes:
        body = b""
        while True:
            size_line = self.readline(MAX_HEAD)
            body += size_line
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (line := self.readline(MAX_HEAD)) not in (b"\r\n", b""):
                    body += line  # trailers
                return body + b"\r\n"
            body += self.read(size + 2)


def _read_request(reader: _Reader) -> bytes | None:
    """One HTTP/1.1 request (head and Content-Length body, or chunked), or None at EOF."""
    head = reader.read_head()
    if head is None:
        return None
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if length:
        return head + reader.read(int(length[1]))
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        return head + reader.read_chunked()
    return head


def _summary(request: bytes) -> bytes:
    """The request line, plus the SOAP method for /sdk posts."""
    line = request.split(b"\r\n", 1)[0]
    m = re.search(rb"<(?:[\w.-]+:)?Body\b[^>]*>\s*<(?:[\w.-]+:)?(\w+)", request)
    return line + (b" " + m[1] if m else b"")


# -- the CLI and what it leaves ----------------------------------------------------------------


def vcbfs_env(sim: Vcsim, root: Path, *, port: int | None = None) -> dict[str, str]:
    """The environment a backup script would set, talking to ``port`` (a proxy) or vcsim."""
    root.mkdir(parents=True, exist_ok=True)
    pw = root / "password"
    pw.write_text(f"{sim.password}\n")
    pw.chmod(0o600)
    config = root / "config.toml"
    config.write_text("# the tests' settings come from the environment\n")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "VCBFS_HOST": sim.host,
        "VCBFS_PORT": str(port or sim.port),
        "VCBFS_USER": str(sim.username),
        "VCBFS_PASSWORD_FILE": str(pw),
        "VCBFS_THUMBPRINT": sim.thumbprint,
        "VCBFS_STATE_DIR": str(root / "state"),
        "VCBFS_RUN_DIR": str(root / "run"),
        "VCBFS_CONFIG": str(config),
    }


def vcbfs(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "vcbfs", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode:
        raise AssertionError(f"vcbfs {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done


def server_pid(env: dict[str, str], mnt: Path) -> int | None:
    """The PID a background mount server recorded, if its file is there yet."""
    from vcbfs.cli.mount import mount_key

    path = Path(env["VCBFS_RUN_DIR"]) / f"mount-{mount_key(str(mnt))}.pid"
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def journal(env: dict[str, str]) -> list[dict[str, Any]]:
    """The snapshot journal's entries (``VCBFS_STATE_DIR/journal/*.json``)."""
    out = []
    for p in sorted((Path(env["VCBFS_STATE_DIR"]) / "journal").glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(p.read_text()))
    return out


def tagged(si: Any, morefs: Sequence[str]) -> dict[str, list[str]]:
    """moref -> names of its snapshots that carry vcbfs's tag."""
    return {
        m: [s.name for s in list_snapshots(si, managed(si, m)) if OURS.match(s.name)]
        for m in morefs
    }


def terminate_other_sessions(si: Any) -> list[str]:
    """Terminate every session but ``si``'s own (an administrator's "terminate session")."""
    from tests.vsphere.simulator import properties

    sm = si.content.sessionManager
    values = properties(si, sm, ["sessionList", "currentSession"], vim.SessionManager)
    own = values["currentSession"].key
    others = [s.key for s in values.get("sessionList", []) if s.key != own]
    if others:
        sm.TerminateSession(others)
    return others


def wait_for(check: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    """Poll ``check`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


# -- the control socket -------------------------------------------------------------------------


def _payloads(name: str) -> Iterator[bytes]:
    yield json.dumps({"release": f"{name}-not-here"}).encode() + b"\n"  # gone before the answer
    yield b"\xff\xfe garbage \x00\n"
    yield b"{"  # partial, no newline
    yield b"x" * (1 << 20)  # 1 MiB, no newline
    yield b"[" * 60_000 + b"\n"  # deeply nested JSON
    yield json.dumps({"release": ["not", "a", "name"]}).encode() + b"\n"
    yield json.dumps({"release": name, "force": True}).encode()[:-3]  # cut short
    yield b""  # connect and hang up at once


def flood_control_socket(path: str, name: str, connections: int, *, parallel: int = 50) -> dict:
    """``connections`` clients of the control socket, ``parallel`` at a time, each sending one
    of the hostile payloads (garbage, partial, 1 MiB, a real request then gone, nothing) and
    hanging up without reading; counts of what happened."""
    payloads = list(_payloads(name))
    stats: dict[str, Any] = {"connected": 0, "refused": 0, "sent": 0}
    errors: set[str] = set()
    lock = threading.Lock()
    todo = iter(range(connections))

    def client() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            payload = payloads[i % len(payloads)]
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:  # blocking: a full backlog waits (with a timeout set it is EAGAIN)
                    s.connect(path)
                    s.settimeout(30)
                except OSError as exc:
                    with lock:
                        stats["refused"] += 1
                        errors.add(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    stats["connected"] += 1
                with contextlib.suppress(OSError):
                    s.sendall(payload)
                    with lock:
                        stats["sent"] += 1

    threads = [threading.Thread(target=client) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats["errors"] = sorted(errors)
    return stats
