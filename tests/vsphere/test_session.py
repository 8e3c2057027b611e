"""The vsphere package against vcsim, in-process: sessions, paging, specifiers, snapshots."""

from __future__ import annotations

import http.client
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests.vsphere.conftest import DEMO_IP, DEMO_VM, VsphereVm
from tests.vsphere.simulator import (
    SNAPSHOT_SECONDS_KEY,
    Vcsim,
    add_vm,
    create_snapshot,
    destroy_vm,
    list_snapshots,
    managed,
)
from vcbfs.errors import AccessDeniedError, UnsupportedError, VsphereError
from vcbfs.vsphere import session as session_mod
from vcbfs.vsphere.datastore import Datastores
from vcbfs.vsphere.inventory import NameCache, VmInfo, find_vms, list_vms, select
from vcbfs.vsphere.provider import VsphereProvider
from vcbfs.vsphere.session import LoginError, Session
from vcbfs.vsphere.snapshots import Journal, cleanup, proxy_name, release, take
from vcbfs.vsphere.spec import parse_spec
from vcbfs.vsphere.tasks import TaskTimeout


@pytest.fixture
def session(vcsim: Vcsim) -> Iterator[Session]:
    s = Session(
        vcsim.host,
        str(vcsim.username),
        str(vcsim.password),
        port=vcsim.port,
        thumbprint=vcsim.thumbprint,
    )
    yield s
    s.close()


def test_expired_session_logs_in_again(session: Session, vsphere_vm: VsphereVm) -> None:
    before = session.cookie()
    session.content.sessionManager.Logout()  # as if the server had expired the session
    names = [vm.name for vm in list_vms(session)]
    assert DEMO_VM in names
    assert session.cookie() != before
    assert session.fresh_cookie() == session.cookie()


def test_paged_retrieval(
    session: Session, vsphere_vm: VsphereVm, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = list_vms(session)
    monkeypatch.setattr(session_mod, "PAGE", 1)  # one VM per page: ContinueRetrievePropertiesEx
    assert list_vms(session) == every and len(every) > 2


def test_bad_login_and_pinning(vcsim: Vcsim) -> None:
    with pytest.raises(LoginError, match="wrong user name or password"):
        Session(vcsim.host, "vcbfs", "nope", port=vcsim.port, thumbprint=vcsim.thumbprint)
    with pytest.raises(AccessDeniedError, match="not the pinned"):
        Session(vcsim.host, "vcbfs", "x", port=vcsim.port, thumbprint="ab" * 32)


def test_specifiers(session: Session, vsphere_vm: VsphereVm, tmp_path: Path) -> None:
    vms = list_vms(session)
    demo = next(vm for vm in vms if vm.name == DEMO_VM)
    assert demo.ipaddr == DEMO_IP and demo.power == "on"
    assert select(vms, parse_spec(f"NAME:{DEMO_VM.upper()}")) == [demo]  # case-insensitive
    assert select(vms, parse_spec(f"uuid:{demo.uuid.upper()}")) == [demo]
    assert select(vms, parse_spec("any:")) == vms
    assert select(vms, parse_spec("none:")) == []
    cache = NameCache(tmp_path / "vmnames.json")
    cache.update(vms)
    # A powered-off VM has no guest IP: the cache still knows where it was.
    off = VmInfo(demo.moref, demo.name, demo.uuid, "", "", "", "off", False, "", (), demo.ref)
    assert select([off], parse_spec(f"ipaddr:{DEMO_IP}"), cache) == [off]
    assert select([off], parse_spec(f"ipaddr:{DEMO_IP}")) == []


def test_take_release_and_cleanup(
    session: Session, vcsim: Vcsim, vsphere_vm: VsphereVm, tmp_path: Path
) -> None:
    with vcsim.session() as si:
        info = add_vm(vcsim, si, "journal-vm", [vsphere_vm.source.sys_vmdk])
        create_snapshot(si, info.moref, "vcbfs-backup lookalike", "a user's, not ours")
    vm = find_vms(session, parse_spec("name:journal-vm"))[0]
    journal = Journal(tmp_path / "journal")
    snap = take(session, vm, journal)
    [entry] = journal.entries()
    assert entry.snapshot_moref == snap.moref and entry.alive()
    assert cleanup(session, journal) == []  # held by a live process (this one)
    assert release(session, snap, journal) == []
    assert journal.entries() == []

    # A dead owner's entry: cleanup releases that snapshot, and nothing else.
    snap = take(session, vm, journal)
    [entry] = journal.entries()
    entry.pid, entry.started = 1, "0"
    journal.write(entry)
    actions = cleanup(session, journal, dry_run=True)
    assert [a.snapshot for a in actions] == [entry.snapshot_name] and not actions[0].done
    actions = cleanup(session, journal)
    assert [a.done for a in actions] == [True] and journal.entries() == []
    with vcsim.session() as si:
        left = [s.name for s in list_snapshots(si, managed(si, info.moref))]
    assert left == ["vcbfs-backup lookalike"]


@pytest.fixture
def new_vm(vcsim: Vcsim, vsphere_vm: VsphereVm) -> Iterator[Callable[..., Any]]:
    """Adds VMs on the demo disk (``new_vm(name, **add_vm options)``); destroyed afterwards,
    with whatever snapshots they hold, so the shared simulator is left as it was."""
    made: list[str] = []

    def make(name: str, **options: Any) -> Any:
        with vcsim.session() as si:
            info = add_vm(vcsim, si, name, [vsphere_vm.source.sys_vmdk], **options)
        made.append(info.moref)
        return info

    yield make
    with vcsim.session() as si:
        for moref in made:
            destroy_vm(si, moref)


def _snapshot_names(vcsim: Vcsim, moref: str) -> list[str]:
    with vcsim.session() as si:
        return [s.name for s in list_snapshots(si, managed(si, moref))]


def test_the_journal_comes_first_and_the_snapshot_is_quiesced_without_memory(
    session: Session, new_vm: Callable[..., Any], tmp_path: Path, monkeypatch: Any
) -> None:
    new_vm("ordered-vm")
    vm = find_vms(session, parse_spec("name:ordered-vm"))[0]
    journal = Journal(tmp_path / "journal")
    asked: list[tuple[dict[str, Any], list[str]]] = []
    call = session.call

    def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if "quiesce" in kwargs:  # CreateSnapshot_Task: what the journal holds when it is asked
            asked.append((kwargs, [e.snapshot_name for e in journal.entries()]))
        return call(fn, *args, **kwargs)

    monkeypatch.setattr(session, "call", spy)
    snap = take(session, vm, journal)
    [(kwargs, journaled)] = asked
    assert journaled == [kwargs["name"]] == [snap.entry.snapshot_name]
    assert kwargs["memory"] is False and kwargs["quiesce"] is True
    release(session, snap, journal)


def test_a_create_that_outlasts_its_timeout_leaves_no_snapshot(
    session: Session, vcsim: Vcsim, new_vm: Callable[..., Any], tmp_path: Path
) -> None:
    """The simulator's create task runs 2 s and cannot be cancelled (like many vSphere tasks).
    Made within the grace, the snapshot is removed at once; made later, it is left to cleanup
    through a disowned journal entry, even while the process that asked for it runs on."""
    info = new_vm("slow-snap", extra={SNAPSHOT_SECONDS_KEY: "2"})
    vm = find_vms(session, parse_spec("name:slow-snap"))[0]
    journal = Journal(tmp_path / "journal")
    with pytest.raises(TaskTimeout, match="not taken after 0 s; it was made late, and has been"):
        take(session, vm, journal, timeout=0.3, grace=30)
    assert journal.entries() == [] and _snapshot_names(vcsim, info.moref) == []

    with pytest.raises(TaskTimeout, match="vcbfs cleanup` removes its snapshot once made"):
        take(session, vm, journal, timeout=0.3, grace=0.3)
    [entry] = journal.entries()
    assert not entry.alive()
    deadline = time.monotonic() + 30
    while _snapshot_names(vcsim, info.moref) != [entry.snapshot_name]:
        assert time.monotonic() < deadline, "the slow snapshot never appeared"
        time.sleep(0.2)
    assert [(a.snapshot, a.done) for a in cleanup(session, journal)] == [
        (entry.snapshot_name, True)
    ]
    assert journal.entries() == [] and _snapshot_names(vcsim, info.moref) == []


def test_cleanup_by_tag_alone_spares_live_owners_and_other_proxies(
    session: Session, vcsim: Vcsim, new_vm: Callable[..., Any], tmp_path: Path
) -> None:
    """With no journal entry, cleanup goes by the tag: this proxy's name, and the id in both the
    name and the description.  It spares a snapshot whose owner (the PID in its description)
    is a vcbfs process still running (journaled in another state directory), and every other
    proxy's."""
    info = new_vm("tagged-vm")
    journal = Journal(tmp_path / "journal")  # empty: the entries were lost, or kept elsewhere
    gone = subprocess.Popen(["true"])
    gone.wait()  # a PID that no longer runs
    owner = subprocess.Popen(["bash", "-c", "exec -a vcbfs-mount sleep 600"])
    proxy = proxy_name()

    def tagged(host: str, pid: int) -> str:
        name = f"vcbfs-backup {host} {uuid.uuid4().hex}"
        with vcsim.session() as si:
            create_snapshot(si, info.moref, name, f"Taken by vcbfs (id {name[-32:]}, pid {pid})")
        return name

    try:
        orphan = tagged(proxy, gone.pid)
        held = tagged(proxy, owner.pid)
        foreign = tagged("another-proxy", 1)
        actions = cleanup(session, journal)
        assert [(a.snapshot, a.done) for a in actions] == [(orphan, True)]
        assert sorted(_snapshot_names(vcsim, info.moref)) == sorted([held, foreign])
    finally:
        owner.kill()
        owner.wait()
    assert [a.snapshot for a in cleanup(session, journal)] == [held]  # its owner is gone now
    assert _snapshot_names(vcsim, info.moref) == [foreign]


def test_transports_are_tried_in_the_order_given(
    session: Session, vcsim: Vcsim, vsphere_vm: VsphereVm, tmp_path: Path
) -> None:
    """As VCB tried its transports: the first that reaches the file wins; a local datastore
    path without the file falls through to the next; none left is an error naming each try."""
    disk = vsphere_vm.vm.disks[0].file_name  # "[LocalDS_0] dir/disk.vmdk"
    ds = vsphere_vm.vm.datastore
    real, empty = (ds, str(vcsim.datastore_dir(ds))), (ds, str(tmp_path))

    def reached(transports: tuple[str, ...], local: tuple[str, str]) -> str:
        stores = Datastores(session, local=[local], transports=transports)
        try:
            return type(stores.location(disk).inner).__name__  # type: ignore[attr-defined]
        finally:
            stores.close()

    assert reached(("local", "https"), real) == "_DatastoreFile"
    assert reached(("https", "local"), real) == "HttpLocation"
    assert reached(("local", "https"), empty) == "HttpLocation"
    with pytest.raises(
        UnsupportedError, match=rf"no transport reaches this file \(local: {tmp_path}"
    ):
        reached(("local",), empty)


def test_a_physical_rdm_is_left_out_and_the_rest_of_the_vm_opens(
    session: Session, vsphere_vm: VsphereVm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vcsim cannot hold an RDM disk (it drops the connection), so the demo VM's own
    configuration, read from the simulator, gets one added before the provider reads it."""
    vm = find_vms(session, parse_spec(f"name:{DEMO_VM}"))[0]
    config = session.properties(vm.ref, ["config"])["config"]
    controller = next(
        d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualSCSIController)
    )
    rdm = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(
        fileName=f"[{vsphere_vm.vm.datastore}] {DEMO_VM}/lun.vmdk",
        compatibilityMode="physicalMode",
    )
    disk = vim.vm.device.VirtualDisk(
        key=2099, controllerKey=controller.key, unitNumber=9, backing=rdm
    )
    config.hardware.device = [*config.hardware.device, disk]
    properties = session.properties

    def with_rdm(obj: Any, paths: list[str]) -> dict[str, Any]:
        return {"config": config} if obj == "snapshot" else properties(obj, paths)

    monkeypatch.setattr(session, "properties", with_rdm)
    datastores = Datastores(session)
    provider = VsphereProvider(
        session, datastores, Journal(tmp_path / "journal"), parse_spec(f"name:{DEMO_VM}")
    )
    snap: Any = type("Snap", (), {"ref": "snapshot"})()
    image = provider._image(vm, snap)
    try:
        assert [d.device for d in image.disks] == ["scsi0:0", "scsi0:1"]
        assert [n for n in image.notes if "physical-mode RDM" in n] == [
            f"disk scsi0:9 ({rdm.fileName}) is a physical-mode RDM: vSphere cannot snapshot it, "
            "so it is skipped; back it up from the SAN"
        ]
        assert [v.number for v in image.volumes()] == [1, 2]  # the other disks read as ever
    finally:
        for d in image.disks:
            d.source.close()
        datastores.close()


def test_the_simulators_own_certificate(tmp_path: Path) -> None:
    """vcsim's built-in certificate (1024-bit RSA): refused by default, accepted once pinned."""
    with Vcsim(username="u", password="p", workdir=tmp_path) as sim:
        with pytest.raises(AccessDeniedError, match="not trusted") as refused:
            Session(sim.host, "u", "p", port=sim.port)
        assert sim.thumbprint_sha256 in str(refused.value)  # shown, ready to pin
        pinned = Session(sim.host, "u", "p", port=sim.port, thumbprint=sim.thumbprint_sha256)
        datastores = Datastores(pinned)
        try:
            vms = list_vms(pinned)
            assert len(vms) == 4
            assert datastores.read_small(vms[0].vmx_path) == b""  # HTTPS pinned too (empty .vmx)
        finally:
            datastores.close()
            pinned.close()


@pytest.mark.parametrize(
    "fault",
    [
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        http.client.RemoteDisconnected("Remote end closed connection without response"),
        http.client.BadStatusLine("HTTP/1.1 5"),
    ],
)
def test_transport_failures_become_typed_vsphere_errors(session: Session, fault: Exception) -> None:
    # A reset connection raised out of Session.call as itself, past every `except VcbfsError`
    # (and out of the automount's release, ending the server).
    def failing() -> None:
        raise fault

    with pytest.raises(VsphereError, match="lost the connection") as exc:
        session.call(failing)
    assert exc.value.source == session.host and exc.value.__cause__ is fault
    assert session.call(lambda: session.content.rootFolder.name)  # the session still works
