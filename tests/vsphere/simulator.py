"""A test harness for govmomi's vSphere simulator (vcsim): build, start, connect, equip VMs.

The simulator is our own launcher (``vcsim/main.go``) over the govmomi simulator library that
Debian ships, built once per source hash into the test cache. Each ``Vcsim`` runs in its own
TMPDIR (where the simulator keeps its datastores as real directories) on a free port.

``add_vm`` makes a VM whose disks are real VMDK files: vcsim never reads disk contents, but it
serves datastore files over HTTP (``/folder``), which is where vcbfs reads them, so the bytes
must be there. VM properties and tasks are read through the PropertyCollector only: reading an
unset property through pyvmomi's accessors makes vcsim 0.24 drop the connection, and
``task.info`` of snapshot tasks does not deserialize (see /work/shared/notes/vcsim.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pyVim.connect import Disconnect, SmartStubAdapter
from pyVmomi import vim, vmodl

__all__ = [
    "CONSOLIDATION_KEY",
    "DEFAULT_DATASTORE",
    "QUIESCE_FAULT_KEY",
    "REMOVE_FAULTS_KEY",
    "REMOVE_SECONDS_KEY",
    "SNAPSHOT_SECONDS_KEY",
    "DiskInfo",
    "SnapshotInfo",
    "Vcsim",
    "VcsimError",
    "VmInfo",
    "add_vm",
    "build_vcsim",
    "cert_thumbprint",
    "create_snapshot",
    "destroy_vm",
    "find_all",
    "list_snapshots",
    "make_cert",
    "managed",
    "properties",
    "remove_snapshot",
    "retrieve",
    "wait_task",
]

SOURCE_DIR = Path(__file__).resolve().with_name("vcsim")
SYSTEM_GOPATH = Path("/usr/share/gocode")
DEFAULT_DATASTORE = "LocalDS_0"
QUIESCE_FAULT_KEY = "vcbfs.test.quiesceFault"  # see vcsim/hooks.go
CONSOLIDATION_KEY = "vcbfs.test.consolidationNeeded"  # see vcsim/hooks.go
SNAPSHOT_SECONDS_KEY = "vcbfs.test.snapshotSeconds"  # see vcsim/hooks.go
REMOVE_FAULTS_KEY = "vcbfs.test.removeSnapshotFaults"  # see vcsim/hooks.go
REMOVE_SECONDS_KEY = "vcbfs.test.removeSnapshotSeconds"  # see vcsim/hooks.go
START_TIMEOUT = 30.0
TASK_TIMEOUT = 60.0
SECTOR = 512


class VcsimError(RuntimeError):
    """The simulator could not be built or started."""


# -- building ---------------------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get("VCBFS_TEST_CACHE", Path.home() / ".cache" / "vcbfs-tests"))


def _source_digest() -> str:
    h = hashlib.sha256()
    for src in sorted(SOURCE_DIR.glob("*.go")):
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build_vcsim() -> Path:
    """The launcher binary, built once per source hash (GOPATH mode over Debian's govmomi)."""
    out_dir = _cache_root() / f"vcsim-{_source_digest()}"
    binary = out_dir / "vcsim"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise VcsimError(
            "the Go compiler is missing: apt-get install golang-go golang-github-vmware-govmomi-dev"
        )
    if not (SYSTEM_GOPATH / "src/github.com/vmware/govmomi/simulator").is_dir():
        raise VcsimError(
            f"govmomi's simulator is not under {SYSTEM_GOPATH}: "
            "apt-get install golang-github-vmware-govmomi-dev"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir / ".lock"):  # concurrent test runs build once
        if binary.exists():
            return binary
        with tempfile.TemporaryDirectory(prefix="vcsim-gopath-") as gopath:
            (Path(gopath) / "src").mkdir()
            (Path(gopath) / "src" / "vcsimlauncher").symlink_to(SOURCE_DIR)
            partial = out_dir / f".vcsim-{os.getpid()}-{secrets.token_hex(4)}"
            env = {
                **os.environ,
                "GO111MODULE": "off",
                "GOPATH": f"{gopath}:{SYSTEM_GOPATH}",
                "GOCACHE": str(_cache_root() / "go-build"),
                "GOFLAGS": "",
                "CGO_ENABLED": "0",  # no C compiler needed; a static binary
            }
            done = subprocess.run(
                [go, "build", "-o", str(partial), "vcsimlauncher"],
                cwd=gopath,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                partial.unlink(missing_ok=True)
                raise VcsimError(f"building the vcsim launcher failed:\n{done.stderr.strip()}")
            partial.replace(binary)  # atomic: an aborted build leaves no half binary
    return binary


# -- TLS ----------------------------------------------------------------------------------------


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed 2048-bit RSA certificate for 127.0.0.1 and localhost: (certfile, keyfile).

    vcsim's built-in certificate is 1024-bit RSA, which OpenSSL refuses ("key too weak") when
    verifying, so tests that verify TLS start the simulator with this one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = directory / "vcsim-cert.pem", directory / "vcsim-key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "7", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "rsa:2048", "-keyout", str(keyfile), "-out", str(certfile)),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return certfile, keyfile


def _colons(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def cert_thumbprint(certfile: Path) -> str:
    """The SHA-256 thumbprint of a PEM certificate as vSphere shows it: ``AB:CD:...``."""
    der = ssl.PEM_cert_to_DER_cert(certfile.read_text())
    return _colons(hashlib.sha256(der).digest())


def _unverified_context() -> ssl.SSLContext:
    # Explicit, not ssl._create_unverified_context or an environment-driven default: this machine
    # sets REQUESTS_CA_BUNDLE and friends, and the test must not depend on them.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# -- the simulator process ----------------------------------------------------------------------


class Vcsim:
    """One simulator process: ``with Vcsim(...) as sim:`` or ``start()`` / ``stop()``.

    ``username``/``password`` make Login accept only those (others get InvalidLogin); without
    them vcsim accepts any non-empty pair. ``workdir`` (default: a fresh temporary directory,
    removed on stop) is the process's TMPDIR and holds its stderr log. ``strict_sessions``
    makes it check sessions as vSphere does (``/folder`` answers 401 without a live session
    cookie; property reads need a session), so a terminated session shows on every path.
    """

    def __init__(
        self,
        *,
        esx: bool = False,
        username: str | None = None,
        password: str | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        method_delay: Mapping[str, int] | None = None,
        vms: int | None = None,
        workdir: Path | None = None,
        binary: Path | None = None,
        strict_sessions: bool = False,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if (certfile is None) != (keyfile is None):
            raise ValueError("certfile and keyfile go together")
        self.esx = esx
        self.username = username
        self.password = password
        self.certfile = certfile
        self.keyfile = keyfile
        self.method_delay = dict(method_delay or {})
        self.vms = vms
        self.binary = binary
        self.strict_sessions = strict_sessions
        self.workdir = workdir
        self._own_workdir = workdir is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._url = ""
        self._thumbprint: str | None = None
        self._datastores: dict[str, Path] = {}
        self.start_seconds = 0.0

    # -- lifecycle --

    def start(self) -> Self:
        if self._proc is not None:
            raise VcsimError("already started")
        binary = self.binary or build_vcsim()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="vcsim-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [str(binary), "-listen", "127.0.0.1:0", "-stdin-watch"]
        if self.esx:
            args.append("-esx")
        if self.username is not None:
            args += ["-username", self.username, "-password", str(self.password)]
        if self.certfile is not None:
            args += ["-tlscert", str(self.certfile), "-tlskey", str(self.keyfile)]
        if self.method_delay:
            args += ["-method-delay", ",".join(f"{k}:{v}" for k, v in self.method_delay.items())]
        if self.vms is not None:
            args += ["-vms", str(self.vms)]
        if self.strict_sessions:
            args.append("-strict-sessions")
        began = time.monotonic()
        self._stderr = (self.workdir / "vcsim.stderr").open("wb")
        # stdin stays open as a lifeline: if this process dies, the launcher sees EOF and stops
        # cleanly, removing its datastores.
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, "TMPDIR": str(self.workdir)},
        )
        try:
            self._url = self._read_url(began + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def _read_url(self, deadline: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VcsimError(f"vcsim printed no URL in {START_TIMEOUT:.0f} s{self._tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self._proc.wait(5)
                    raise VcsimError(
                        f"vcsim exited ({self._proc.returncode}) before printing its URL"
                        f"{self._tail()}"
                    )
                buf += chunk
        m = re.match(rb"URL (https://\S+)\n", buf)
        if not m:
            raise VcsimError(f"unexpected first line from vcsim: {buf!r}{self._tail()}")
        return m.group(1).decode()

    def stderr_text(self) -> str:
        """What the simulator logged so far (faults, panics), for failure messages."""
        if self.workdir is None or not (self.workdir / "vcsim.stderr").exists():
            return ""
        return (self.workdir / "vcsim.stderr").read_text(errors="replace")

    def _tail(self) -> str:
        text = self.stderr_text().strip()
        return f"; its stderr:\n{text[-4000:]}" if text else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the launcher then removes its datastores), SIGKILL if it does not exit."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._url, self._thumbprint, self._datastores = "", None, {}
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- where it is --

    @property
    def url(self) -> str:
        """The SOAP endpoint, ``https://127.0.0.1:PORT/sdk``."""
        if not self._url:
            raise VcsimError("not started")
        return self._url

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise VcsimError("not started")
        return self._proc.pid

    @property
    def datacenter(self) -> str:
        """The model's datacenter name, as ``dcPath`` of datastore URLs wants it."""
        return "ha-datacenter" if self.esx else "DC0"

    def folder_url(self, path: str, datastore: str = DEFAULT_DATASTORE) -> str:
        """The datastore HTTP URL of ``path`` (relative to the datastore root)."""
        return (
            f"https://{self.host}:{self.port}/folder/{path}"
            f"?dcPath={self.datacenter}&dsName={datastore}"
        )

    # -- TLS --

    def ssl_context(self) -> ssl.SSLContext:
        """Verifying (trusting only our certificate) if started with one, else unverified."""
        if self.certfile is None:
            return _unverified_context()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.certfile))
        return ctx

    @property
    def thumbprint_sha256(self) -> str:
        """SHA-256 of the certificate the server presents, ``AB:CD:...`` (read once)."""
        if self._thumbprint is None:
            with (
                socket.create_connection((self.host, self.port), timeout=10) as raw,
                _unverified_context().wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                der = tls.getpeercert(binary_form=True) or b""
            self._thumbprint = _colons(hashlib.sha256(der).digest())
        return self._thumbprint

    @property
    def thumbprint(self) -> str:
        """SHA-256 of our certificate file if started with one, else of the one presented."""
        return cert_thumbprint(self.certfile) if self.certfile else self.thumbprint_sha256

    # -- sessions --

    def connect(self, user: str | None = None, password: str | None = None) -> Any:
        """A logged-in ServiceInstance; close it with ``pyVim.connect.Disconnect(si)``.

        Version negotiation as SmartConnect does it, but the stub's sockets are closed when the
        login fails too (pytest turns leaked sockets' ResourceWarnings into errors).
        """
        user = user if user is not None else (self.username or "user")
        password = password if password is not None else (self.password or "pass")
        stub = SmartStubAdapter(host=self.host, port=self.port, sslContext=self.ssl_context())
        try:
            si = vim.ServiceInstance("ServiceInstance", stub)
            si.content.sessionManager.Login(user, password)
        except BaseException:
            stub.DropConnections()
            raise
        return si

    @contextlib.contextmanager
    def session(self, user: str | None = None, password: str | None = None) -> Iterator[Any]:
        """``connect`` as a context manager that logs out and closes the sockets."""
        si = self.connect(user, password)
        try:
            yield si
        finally:
            Disconnect(si)

    def datastore_dir(self, name: str = DEFAULT_DATASTORE) -> Path:
        """The local directory behind a datastore (its ``info.url``)."""
        if name not in self._datastores:
            with self.session() as si:
                for props in find_all(si, vim.Datastore, ["name", "info.url"]).values():
                    self._datastores[props["name"]] = Path(props["info.url"])
        try:
            return self._datastores[name]
        except KeyError:
            raise VcsimError(f"no datastore {name!r} (have {sorted(self._datastores)})") from None


def secured(root: Path, *, username: str = "vcbfs", **options: Any) -> Vcsim:
    """A simulator (not started) with a strong certificate made in ``root/tls``, one user with a
    random password, and its work directory (stderr log, datastores) in ``root/run``."""
    certfile, keyfile = make_cert(root / "tls")
    return Vcsim(
        username=username,
        password=secrets.token_urlsafe(12),
        certfile=certfile,
        keyfile=keyfile,
        workdir=root / "run",
        **options,
    )


# -- PropertyCollector and tasks ----------------------------------------------------------------


def managed(si: Any, obj: Any, kind: Any = vim.VirtualMachine) -> Any:
    """A managed object from a moref string (or the object itself)."""
    if isinstance(obj, str):
        return kind(obj, si._stub)
    return obj


def _collect(si: Any, spec: Any) -> list[Any]:
    pc = si.content.propertyCollector
    out: list[Any] = []
    result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    while result is not None:
        out.extend(result.objects)
        result = pc.ContinueRetrievePropertiesEx(result.token) if result.token else None
    return out


def _as_dict(objects: Iterable[Any]) -> dict[str, dict[str, Any]]:
    return {o.obj._moId: {p.name: p.val for p in o.propSet} for o in objects}


def retrieve(si: Any, objs: Sequence[Any], paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """moref -> {path: value} for objects of one type; unset properties are simply absent."""
    if not objs:
        return {}
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=o) for o in objs],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(objs[0]), pathSet=paths)],
    )
    return _as_dict(_collect(si, spec))


def properties(
    si: Any, obj: Any, paths: Sequence[str], kind: Any = vim.VirtualMachine
) -> dict[str, Any]:
    """{path: value} of one object (a moref string is taken as ``kind``)."""
    obj = managed(si, obj, kind)
    return retrieve(si, [obj], paths).get(obj._moId, {})


def find_all(si: Any, kind: Any, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """moref -> {path: value} of every object of ``kind`` in the inventory."""
    content = si.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        vmodl.query.PropertyCollector.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=paths)],
        )
        return _as_dict(_collect(si, spec))
    finally:
        view.DestroyView()


def wait_task(si: Any, task: Any, timeout: float = TASK_TIMEOUT) -> Any:
    """The task's result; its fault is raised as is (e.g. ``vim.fault.ApplicationQuiesceFault``)."""
    deadline = time.monotonic() + timeout
    while True:
        info = properties(si, task, ["info.state", "info.error", "info.result"], vim.Task)
        state = info.get("info.state")
        if state == "success":
            return info.get("info.result")
        if state == "error":
            raise info["info.error"]
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task._moId} still {state} after {timeout:.0f} s")
        time.sleep(0.05)


# -- snapshots ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotInfo:
    moref: str
    name: str
    description: str
    id: int
    quiesced: bool
    parent: str | None  # the parent snapshot's moref


def list_snapshots(si: Any, vm: Any) -> list[SnapshotInfo]:
    """The VM's snapshots, parents before children (empty when it has none)."""
    snap = properties(si, vm, ["snapshot"]).get("snapshot")
    out: list[SnapshotInfo] = []

    def walk(trees: Iterable[Any], parent: str | None) -> None:
        for t in trees:
            out.append(
                SnapshotInfo(
                    t.snapshot._moId, t.name, t.description or "", t.id, bool(t.quiesced), parent
                )
            )
            walk(t.childSnapshotList or [], t.snapshot._moId)

    if snap is not None:
        walk(snap.rootSnapshotList or [], None)
    return out


def create_snapshot(
    si: Any,
    vm: Any,
    name: str,
    description: str = "",
    *,
    memory: bool = False,
    quiesce: bool = False,
) -> str:
    """Take a snapshot (e.g. another backup tool's, which vcbfs must leave alone); its moref."""
    task = managed(si, vm).CreateSnapshot_Task(
        name=name, description=description, memory=memory, quiesce=quiesce
    )
    return str(wait_task(si, task)._moId)


def remove_snapshot(si: Any, snapshot: Any, *, children: bool = False) -> None:
    task = managed(si, snapshot, vim.vm.Snapshot).RemoveSnapshot_Task(removeChildren=children)
    wait_task(si, task)


# -- VMs with real disks ------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskInfo:
    key: int
    unit: int
    file_name: str  # the backing's datastore path, "[LocalDS_0] vm/disk.vmdk"
    files: tuple[str, ...]  # every file copied for it (descriptor, extents, parents), in the VM dir
    capacity_bytes: int


@dataclass(frozen=True)
class VmInfo:
    moref: str
    name: str
    datastore: str
    vmdir: str  # the VM's directory on the datastore
    vmx: str  # datastore path of its .vmx
    uuid: str  # config.uuid (BIOS UUID)
    instance_uuid: str
    disks: tuple[DiskInfo, ...]
    ip: str | None
    hostname: str | None


@dataclass
class _Copied:
    name: str
    files: list[str]
    sectors: int
    parent: _Copied | None


_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(.*))?$')
_PARENT = re.compile(r'^parentFileNameHint\s*=\s*"([^"]*)"\s*$')


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    candidate, n = name, 1
    while candidate in taken:
        candidate = f"{stem}-{n}{dot}{ext}"
        n += 1
    taken.add(candidate)
    return candidate


def _copy_disk(src: Path, dest: Path, taken: set[str]) -> _Copied:
    """Copy one VMDK (descriptor, extents, parent chain) into ``dest``; names made unique.

    A descriptor's extent and parent names are rewritten to the copies' names, so descriptors
    whose extents live elsewhere (absolute paths) work on the datastore.
    """
    with src.open("rb") as f:
        head = f.read(64)
    if head[:4] == b"KDMV":  # hosted sparse: header capacity (sectors) at offset 12
        desc_offset, desc_size = struct.unpack_from("<QQ", head, 28)
        with src.open("rb") as f:
            f.seek(desc_offset * SECTOR)
            embedded = f.read(desc_size * SECTOR).split(b"\0", 1)[0].decode("ascii", "replace")
        if "parentFileNameHint" in embedded:
            raise ValueError(f"{src}: sparse VMDKs with an embedded parent are not supported")
        name = _unique(src.name, taken)
        shutil.copyfile(src, dest / name)
        return _Copied(name, [name], struct.unpack_from("<Q", head, 12)[0], None)
    if b"\0" in head:
        raise ValueError(f"{src}: neither a descriptor nor a monolithicSparse VMDK")
    text = src.read_text("utf-8")
    name = _unique(src.name, taken)
    files = [name]
    sectors = 0
    parent: _Copied | None = None
    lines = []
    for line in text.splitlines():
        m = _EXTENT.match(line.strip())
        p = _PARENT.match(line.strip())
        if m and m.group(4) is not None:
            extent = src.parent / m.group(4)
            copy = _unique(Path(m.group(4)).name, taken)
            shutil.copyfile(extent, dest / copy)
            files.append(copy)
            line = f'{m.group(1)} {m.group(2)} {m.group(3)} "{copy}"{m.group(5) or ""}'
        elif p and p.group(1):
            parent = _copy_disk(src.parent / p.group(1), dest, taken)
            files += parent.files
            line = f'parentFileNameHint="{parent.name}"'
        if m:
            sectors += int(m.group(2))
        lines.append(line)
    (dest / name).write_text("\n".join(lines) + "\n")
    return _Copied(name, files, sectors, parent)


def _inventory(si: Any, datastore: str) -> dict[str, Any]:
    """Folder, pool, host, datastore and network for a new VM on ``datastore``."""
    stores = {
        ref: p for ref, p in find_all(si, vim.Datastore, ["name"]).items() if p["name"] == datastore
    }
    if not stores:
        raise VcsimError(f"no datastore {datastore!r}")
    ds_ref = next(iter(stores))
    for dc_props in find_all(si, vim.Datacenter, ["vmFolder", "datastore", "network"]).values():
        if any(d._moId == ds_ref for d in dc_props.get("datastore", [])):
            break
    else:
        raise VcsimError(f"no datacenter holds {datastore!r}")
    hosts = [
        (ref, p)
        for ref, p in sorted(find_all(si, vim.HostSystem, ["parent", "datastore"]).items())
        if any(d._moId == ds_ref for d in p.get("datastore", []))
    ]
    if not hosts:
        raise VcsimError(f"no host mounts {datastore!r}")
    host_ref, host_props = hosts[0]
    pool = properties(si, host_props["parent"], ["resourcePool"], vim.ComputeResource)
    nets = retrieve(si, list(dc_props.get("network", [])), ["name"])
    return {
        "folder": dc_props["vmFolder"],
        "pool": pool["resourcePool"],
        "host": vim.HostSystem(host_ref, si._stub),
        "network": "VM Network" if any(n["name"] == "VM Network" for n in nets.values()) else None,
    }


def _vmx_text(name: str, props: dict[str, Any], disks: Sequence[DiskInfo], extra: dict) -> str:
    """A plausible .vmx for the VM (vcsim writes an empty one and never reads it)."""
    uuid_hex = props["config.uuid"].replace("-", "")
    bios = " ".join(uuid_hex[i : i + 2] for i in range(0, 32, 2))
    bios = bios[:23] + "-" + bios[24:]
    lines = {
        ".encoding": "UTF-8",
        "config.version": "8",
        "virtualHW.version": "13",
        "displayName": name,
        "guestOS": "windows9srv-64",
        "uuid.bios": bios,
        "vc.uuid": props["config.instanceUuid"],
        "scsi0.present": "TRUE",
        "scsi0.virtualDev": "lsisas1068",
    }
    for d in disks:
        lines[f"scsi0:{d.unit}.present"] = "TRUE"
        lines[f"scsi0:{d.unit}.fileName"] = d.file_name.rsplit("/", 1)[1]
    lines.update(extra)
    return "".join(f'{k} = "{v}"\n' for k, v in lines.items())


def add_vm(
    sim: Vcsim,
    si: Any,
    name: str,
    disks: Sequence[Path] = (),
    *,
    ip: str | None = None,
    hostname: str | None = None,
    extra: Mapping[str, str] | None = None,
    datastore: str = DEFAULT_DATASTORE,
    power_on: bool = True,
) -> VmInfo:
    """Create a VM (CreateVM_Task) whose disks are copies of real VMDK files.

    The disks are copied into the VM's directory and attached with ReconfigVM_Task (no
    fileOperation: vSphere then uses the files as they are), with ``SET.guest.ipAddress`` /
    ``SET.guest.hostName`` (a simulator feature) and ``extra`` extraConfig keys, e.g.
    ``{QUIESCE_FAULT_KEY: "true"}``.
    """
    inv = _inventory(si, datastore)
    devices = [
        vim.vm.device.VirtualDeviceSpec(
            operation="add",
            device=vim.vm.device.VirtualLsiLogicSASController(
                key=-100, busNumber=0, sharedBus="noSharing"
            ),
        )
    ]
    if inv["network"]:
        devices.append(
            vim.vm.device.VirtualDeviceSpec(
                operation="add",
                device=vim.vm.device.VirtualVmxnet3(
                    key=-101,
                    backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                        deviceName=inv["network"]
                    ),
                ),
            )
        )
    config = vim.vm.ConfigSpec(
        name=name,
        guestId="windows9Server64Guest",
        numCPUs=2,
        memoryMB=4096,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=devices,
    )
    task = inv["folder"].CreateVM_Task(config=config, pool=inv["pool"], host=inv["host"])
    vm = wait_task(si, task)
    paths = ["config.files.vmPathName", "config.uuid", "config.instanceUuid", "config.hardware"]
    props = properties(si, vm, paths)
    vmx = props["config.files.vmPathName"]  # "[LocalDS_0] name/name.vmx"
    vmdir = vmx.split("] ", 1)[1].rsplit("/", 1)[0]
    local = sim.datastore_dir(datastore) / vmdir
    hardware = props["config.hardware"].device
    controller = next(d for d in hardware if isinstance(d, vim.vm.device.VirtualSCSIController))
    used = {d.unitNumber for d in hardware if d.controllerKey == controller.key}
    used.add(7)  # the controller's own unit
    units = (u for u in range(16) if u not in used)

    taken = {p.name for p in local.iterdir()}
    changes, placeholders, copies = [], [], []
    for i, src in enumerate(disks):
        copy = _copy_disk(Path(src), local, taken)
        unit = next(units)
        file_name = f"[{datastore}] {vmdir}/{copy.name}"
        # vcsim insists that "<disk>-flat.vmdk" exists when attaching an existing disk, whatever
        # the descriptor names; an empty stand-in, removed again below, satisfies it.
        flat = local / copy.name.replace(".vmdk", "-flat.vmdk", 1)
        if not flat.exists():
            flat.touch()
            placeholders.append(flat)
        changes.append(
            vim.vm.device.VirtualDeviceSpec(
                operation="add",
                device=vim.vm.device.VirtualDisk(
                    key=-200 - i,
                    controllerKey=controller.key,
                    unitNumber=unit,
                    capacityInKB=copy.sectors * SECTOR // 1024,
                    capacityInBytes=copy.sectors * SECTOR,
                    backing=_backing(datastore, vmdir, copy),
                ),
            )
        )
        copies.append((copy, unit, file_name))
    options = [vim.option.OptionValue(key=k, value=v) for k, v in (extra or {}).items()]
    if ip:
        options.append(vim.option.OptionValue(key="SET.guest.ipAddress", value=ip))
    if hostname:
        options.append(vim.option.OptionValue(key="SET.guest.hostName", value=hostname))
    try:
        if changes or options:
            spec = vim.vm.ConfigSpec(deviceChange=changes, extraConfig=options)
            wait_task(si, vm.ReconfigVM_Task(spec=spec))
    finally:
        for p in placeholders:
            p.unlink()
    keys = {
        (d.controllerKey, d.unitNumber): d.key
        for d in properties(si, vm, ["config.hardware"])["config.hardware"].device
        if isinstance(d, vim.vm.device.VirtualDisk)
    }
    infos = tuple(
        DiskInfo(keys[(controller.key, unit)], unit, fn, tuple(c.files), c.sectors * SECTOR)
        for c, unit, fn in copies
    )
    (local / vmx.rsplit("/", 1)[1]).write_text(_vmx_text(name, props, infos, dict(extra or {})))
    if power_on:
        wait_task(si, vm.PowerOnVM_Task())
    return VmInfo(
        moref=vm._moId,
        name=name,
        datastore=datastore,
        vmdir=vmdir,
        vmx=vmx,
        uuid=props["config.uuid"],
        instance_uuid=props["config.instanceUuid"],
        disks=infos,
        ip=ip,
        hostname=hostname,
    )


def destroy_vm(si: Any, vm: Any) -> None:
    """Power off (if on) and destroy a VM, so a test leaves the shared inventory as it was."""
    vm = managed(si, vm)
    if properties(si, vm, ["runtime.powerState"]).get("runtime.powerState") == "poweredOn":
        wait_task(si, vm.PowerOffVM_Task())
    wait_task(si, vm.Destroy_Task())


def _backing(datastore: str, vmdir: str, copy: _Copied) -> Any:
    return vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=f"[{datastore}] {vmdir}/{copy.name}",
        diskMode="persistent",
        thinProvisioned=False,
        parent=_backing(datastore, vmdir, copy.parent) if copy.parent else None,
    )
