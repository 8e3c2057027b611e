"""A logged-in vSphere session: TLS trust, login, transparent re-login, PropertyCollector reads.

Trust is decided here once: verify against CAs (the default), pin one certificate by its
SHA-256 thumbprint, or (``insecure``, an explicit choice that logs a warning) trust anything.
pyvmomi's own thumbprint option only checks the first connection of a pool, so pinning is done
by an SSL context that checks the fingerprint on every handshake.

Every call goes through ``call``: a ``NotAuthenticated`` fault (the session expired or was
closed by an administrator) logs in again with the same credentials and retries once.  The
password is kept only in memory and never appears in a message.

Properties are read through the PropertyCollector, never through pyvmomi's attribute access:
that is one round trip for thousands of objects, it pages, and it reads unset properties as
absent rather than failing on them.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from pyVmomi import vim, vmodl

from vcbfs.errors import AccessDeniedError, VsphereError

__all__ = ["LoginError", "Session", "fault_text", "peer_thumbprint"]

log = logging.getLogger(__name__)
T = TypeVar("T")
PAGE = 1000
HTTP_TIMEOUT = 300  # one SOAP call; tasks are polled, so no call waits for one


#: A connection the peer closed while idle in the pool: the request never reached vSphere,
#: or (RemoteDisconnected) vSphere closed it as the request arrived.
_STALE = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    http.client.RemoteDisconnected,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


def _lost(exc: BaseException, host: str) -> VsphereError:
    return VsphereError(f"lost the connection ({type(exc).__name__}: {exc})", source=host)


class LoginError(AccessDeniedError):
    """vCenter/ESXi refused the user name and password."""


class _PinnedContext(ssl.SSLContext):
    """Accept exactly the certificate whose SHA-256 is ``pinned``, on every connection."""

    pinned: str = ""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        sock = super().wrap_socket(*args, **kwargs)
        der = sock.getpeercert(binary_form=True) or b""
        seen = hashlib.sha256(der).hexdigest()
        if seen != self.pinned:
            sock.close()
            raise ssl.SSLCertVerificationError(
                f"server certificate SHA-256 {_colons(seen)} is not the pinned "
                f"{_colons(self.pinned)}"
            )
        return sock


def _colons(hexdigest: str) -> str:
    return ":".join(hexdigest[i : i + 2] for i in range(0, len(hexdigest), 2)).upper()


def ssl_context(*, thumbprint: str | None, insecure: bool, ca_file: str | None) -> ssl.SSLContext:
    """The TLS trust for SOAP calls: pinned, CA-verified or (explicitly) none."""
    if thumbprint:
        ctx: ssl.SSLContext = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.pinned = thumbprint.replace(":", "").lower()  # type: ignore[attr-defined]
        return ctx
    if insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_file)


def peer_thumbprint(host: str, port: int, timeout: float = 10.0) -> str | None:
    """The SHA-256 of the certificate a server presents (unverified), to show the user."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True) or b""
    except OSError:
        return None
    return hashlib.sha256(der).hexdigest()


def fault_text(exc: BaseException) -> str:
    """A vSphere fault as one line: its type and message, nothing else."""
    name = type(exc).__name__
    if isinstance(exc, vmodl.MethodFault):
        msg = exc.msg or ""
        if not msg and getattr(exc, "faultMessage", None):
            msg = "; ".join(m.message for m in exc.faultMessage if m.message)
        return f"{name}: {msg}" if msg else name
    return f"{name}: {exc}"


class Session:
    """One login to vCenter or ESXi, shared by threads (pyvmomi stubs are thread-safe)."""

    def __init__(
        self,
        host: str,
        user: str,
        password: str,
        *,
        port: int = 443,
        thumbprint: str | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self.thumbprint = thumbprint
        self.insecure = insecure
        self.ca_file = ca_file
        self._lock = threading.Lock()
        if insecure and not thumbprint:
            log.warning("TLS certificate verification of %s is off (--insecure)", host)
        self.si = self._connect()
        self.content = self.si.RetrieveContent()
        self.pc = self.content.propertyCollector
        self.api_type = self.content.about.apiType  # "VirtualCenter" or "HostAgent"

    def __repr__(self) -> str:
        return f"Session({self.user}@{self.host}:{self.port})"

    # -- connecting ------------------------------------------------------------------------

    def _connect(self) -> Any:
        from pyVim.connect import SmartStubAdapter

        ctx = ssl_context(thumbprint=self.thumbprint, insecure=self.insecure, ca_file=self.ca_file)
        where = f"{self.host}:{self.port}"
        stub = None
        done = False
        try:
            # Version negotiation as SmartConnect does it, but with the stub in hand so that
            # its sockets are closed when the login fails.
            stub = SmartStubAdapter(
                host=self.host,
                port=self.port,
                sslContext=ctx,
                httpConnectionTimeout=HTTP_TIMEOUT,
            )
            si = vim.ServiceInstance("ServiceInstance", stub)
            si.content.sessionManager.Login(self.user, self._password)
            done = True
            return si
        except vim.fault.InvalidLogin:
            raise LoginError(
                f"login as {self.user!r} refused: wrong user name or password", source=where
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise AccessDeniedError(self._untrusted(exc), source=where) from None
        except vmodl.MethodFault as exc:
            raise VsphereError(f"login failed: {fault_text(exc)}", source=where) from None
        except (OSError, ssl.SSLError) as exc:
            raise VsphereError(f"cannot connect: {exc}", source=where) from None
        except Exception as exc:  # pyvmomi raises bare Exception for "not a VIM server"
            raise VsphereError(f"cannot connect: {exc}", source=where) from None
        finally:
            if stub is not None and not done:
                stub.DropConnections()

    def _untrusted(self, exc: ssl.SSLCertVerificationError) -> str:
        reason = getattr(exc, "verify_message", None) or str(exc)
        if self.thumbprint:
            return f"certificate refused: {reason}"
        seen = peer_thumbprint(self.host, self.port)
        hint = (
            f"; if you trust it, pin it with --thumbprint {_colons(seen)}"
            if seen
            else "; pin it with --thumbprint SHA256"
        )
        return f"server certificate not trusted ({reason}){hint}"

    def _relogin(self) -> None:
        with self._lock:
            if self._alive():
                return  # another thread met the same expiry and has logged in again
            log.info("vSphere session of %s expired: logging in again", self.user)
            try:
                self.content.sessionManager.Login(self.user, self._password)
            except vim.fault.InvalidLogin:
                raise LoginError(
                    f"login as {self.user!r} refused: wrong user name or password",
                    source=self.host,
                ) from None

    def _alive(self) -> bool:
        """Whether the session is logged in; vSphere refuses a Login on a live session."""
        try:
            return self.content.sessionManager.currentSession is not None
        except vim.fault.NotAuthenticated:
            return False

    def cookie(self) -> str:
        """The session cookie for datastore HTTP requests: ``vmware_soap_session="..."``."""
        return str(self.si._stub.cookie).split(";", 1)[0].strip()

    def fresh_cookie(self) -> str:
        """The cookie of a session known to be alive (logging in again if it had expired)."""
        self.properties(self.content.sessionManager, ["currentSession"])
        return self.cookie()

    def close(self) -> None:
        from pyVim.connect import Disconnect

        try:
            Disconnect(self.si)
        except Exception as exc:  # logging out of a dead session is not worth an error
            log.debug("logout failed: %s", exc)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calling ---------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args)``, logging in again once if the session has expired.

        A pooled connection the peer has closed (vCenter restarted, a load balancer's idle
        cut) fails the first request sent on it: the pool is dropped and the call made once
        more on a fresh connection.  Only for calls that can be repeated: see ``call_once``.
        Any other transport failure (a refused connection, a timeout, a broken HTTP reply)
        becomes a ``VsphereError`` naming the host, so callers meet one typed error instead
        of whatever the socket raised.
        """
        try:
            return self._call(fn, args, kwargs)
        except _STALE as exc:
            log.info("%s: the connection was closed (%s); trying again", self.host, exc)
            self._drop_connections()
            return self._transport(self._call, fn, args, kwargs)
        except (OSError, http.client.HTTPException) as exc:
            raise _lost(exc, self.host) from exc

    def call_once(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` for a request that must not be sent twice (creating a snapshot): a
        connection lost while it was sent is a ``VsphereError`` (the pool is dropped, so the
        caller's next call goes on a fresh connection); the caller finds out what became of it."""
        try:
            return self._call(fn, args, kwargs)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, _STALE):
                self._drop_connections()
            raise _lost(exc, self.host) from exc

    def _call(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except vim.fault.NotAuthenticated:
            self._relogin()
            return fn(*args, **kwargs)

    def _transport(self, call: Callable[..., T], *args: Any) -> T:
        try:
            return call(*args)
        except (OSError, http.client.HTTPException) as exc:
            raise _lost(exc, self.host) from exc

    def _drop_connections(self) -> None:
        try:
            self.si._stub.DropConnections()
        except Exception as exc:  # the pool is best effort: the retry makes a new one anyway
            log.debug("dropping connections: %s", exc)

    def retrieve(
        self, obj_type: type, props: Iterable[str], root: Any = None
    ) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``(object, {property: value})`` for every ``obj_type`` under ``root``, paged."""
        view = self.call(
            self.content.viewManager.CreateContainerView,
            root or self.content.rootFolder,
            [obj_type],
            True,
        )
        try:
            traversal = vmodl.query.PropertyCollector.TraversalSpec(
                name="view", path="view", skip=False, type=vim.view.ContainerView
            )
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[
                    vmodl.query.PropertyCollector.ObjectSpec(
                        obj=view, skip=True, selectSet=[traversal]
                    )
                ],
                propSet=[
                    vmodl.query.PropertyCollector.PropertySpec(type=obj_type, pathSet=list(props))
                ],
            )
            yield from self._paged(spec)
        finally:
            try:
                self.call(view.DestroyView)
            except Exception as exc:
                log.debug("DestroyView failed: %s", exc)

    def properties(self, obj: Any, props: Iterable[str]) -> dict[str, Any]:
        """Some properties of one object; an unset property is absent from the result."""
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=list(props))
            ],
        )
        for _obj, values in self._paged(spec):
            return values
        return {}

    def properties_of(
        self, objs: Iterable[Any], props: Iterable[str]
    ) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``properties`` of several objects of one type, in one round trip per page; an
        object gone meanwhile is left out."""
        objs = list(objs)
        if not objs:
            return
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=o, skip=False) for o in objs],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=type(objs[0]), pathSet=list(props))
            ],
            reportMissingObjectsInResults=True,
        )
        yield from self._paged(spec)

    def _paged(self, spec: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=PAGE)
        result = self.call(self.pc.RetrievePropertiesEx, [spec], options)
        for _ in range(1_000_000):
            if result is None:
                return
            for oc in result.objects:
                yield oc.obj, {p.name: p.val for p in oc.propSet or ()}
            if not result.token:
                return
            result = self.call(self.pc.ContinueRetrievePropertiesEx, result.token)
