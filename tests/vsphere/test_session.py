"""The vsphere package against vcsim, in-process: sessions, paging, specifiers, snapshots."""

from __future__ import annotations

import http.client
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests.blocks.test_chain import desc
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
from vcbfs.blocks.confine import ConfinementError
from vcbfs.blocks.vmdk.disk import open_disk
from vcbfs.errors import AccessDeniedError, UnsupportedError, VsphereError
from vcbfs.process import boot_id, machine_id, start_time
from vcbfs.vsphere import session as session_mod
from vcbfs.vsphere import snapshots as snapshots_mod
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
    call_once = session.call_once

    def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if "quiesce" in kwargs:  # CreateSnapshot_Task: what the journal holds when it is asked
            asked.append((kwargs, [e.snapshot_name for e in journal.entries()]))
        return call_once(fn, *args, **kwargs)

    # CreateSnapshot goes through call_once: a create is never resent blindly
    monkeypatch.setattr(session, "call_once", spy)
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
    """With no journal entry, cleanup goes by the tag: this host name and this machine id, and
    the id in both the name and the description.  It spares a snapshot whose owner (PID, boot,
    start time) still runs, another machine's (even with this host name: a clone's), another
    proxy's, and reports one without a machine id (an older vcbfs: it could be a clone's); a
    reused PID (same number, another start time) does not keep a leaked one."""
    info = new_vm("tagged-vm")
    journal = Journal(tmp_path / "journal")  # empty: the entries were lost, or kept elsewhere
    gone = subprocess.Popen(["true"])
    gone.wait()  # a PID that no longer runs
    owner = subprocess.Popen(["bash", "-c", "exec -a vcbfs-mount sleep 600"])
    proxy, me, boot = proxy_name(), machine_id(), boot_id()
    assert me, "the test needs /etc/machine-id"

    def tagged(host: str, pid: int, started: str, machine: str | None = me) -> str:
        name = f"vcbfs-backup {host} {uuid.uuid4().hex}"
        who = f"id {name[-32:]}" + (f", machine {machine}" if machine is not None else "")
        who += f", boot {boot}, pid {pid}, started {started}"
        with vcsim.session() as si:
            create_snapshot(si, info.moref, name, f"Taken by vcbfs ({who})")
        return name

    try:
        orphan = tagged(proxy, gone.pid, "4242")
        reused = tagged(proxy, owner.pid, str(int(start_time(owner.pid)) + 1))  # PID reused
        held = tagged(proxy, owner.pid, start_time(owner.pid))
        clone = tagged(proxy, 1, "1", machine="0" * 32)  # another machine, same host name
        legacy = tagged(proxy, gone.pid, "4242", machine=None)
        foreign = tagged("another-proxy", 1, "1")
        actions = cleanup(session, journal)
        assert sorted((a.snapshot, a.done, a.kept) for a in actions) == sorted(
            [(orphan, True, False), (reused, True, False), (legacy, False, True)]
        )
        assert "no machine id" in str(next(a for a in actions if a.kept))
        left = [held, clone, legacy, foreign]
        assert sorted(_snapshot_names(vcsim, info.moref)) == sorted(left)
    finally:
        owner.kill()
        owner.wait()
    assert [a.snapshot for a in cleanup(session, journal) if a.done] == [held]  # owner gone now
    assert sorted(_snapshot_names(vcsim, info.moref)) == sorted([clone, legacy, foreign])


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

    assert reached(("local", "https"), real) == "LocalLocation"
    assert reached(("https", "local"), real) == "HttpLocation"
    assert reached(("local", "https"), empty) == "HttpLocation"
    with pytest.raises(
        UnsupportedError, match=rf"no transport reaches this file \(local: {tmp_path}"
    ):
        reached(("local",), empty)


def test_datastore_paths_stay_in_their_datastore(
    session: Session, vcsim: Vcsim, vsphere_vm: VsphereVm, tmp_path: Path
) -> None:
    """An inventory path with '..', or a descriptor on the datastore naming a file outside it,
    is refused; ``/vmfs/volumes/DS/...`` (by name, or by the UUID the inventory gives) maps to
    the datastore's local root."""
    ds = vsphere_vm.vm.datastore
    root = vcsim.datastore_dir(ds)
    (tmp_path / "shadow").write_bytes(b"secret")
    stores = Datastores(session, local=[(ds, str(root))], transports=("local",))
    try:
        escape = os.path.relpath(tmp_path / "shadow", root)  # ../../../tmp/.../shadow
        with pytest.raises(ConfinementError, match="outside"):
            stores.location(f"[{ds}] {escape}")
        with pytest.raises(UnsupportedError, match="no transport"):  # '/' is the root's
            stores.location(f"[{ds}] /{tmp_path}/shadow")
        folder = root / "confine-test"
        folder.mkdir(exist_ok=True)
        (folder / "base-flat.vmdk").write_bytes(b"B" * 1024)
        (folder / "base.vmdk").write_bytes(desc("0000aaaa", ['RW 2 FLAT "base-flat.vmdk" 0']))
        (folder / "top-flat.vmdk").write_bytes(bytes(1024))
        # by name (vcsim's datastores have no VMFS UUID; tests/blocks/test_confine maps one)
        for name in [ds, *stores._uuids.values()]:
            hint = f"/vmfs/volumes/{name}/confine-test/base.vmdk"
            top = desc("0000bbbb", ['RW 2 FLAT "top-flat.vmdk" 0'], "0000aaaa", hint)
            (folder / "top.vmdk").write_bytes(top)
            with open_disk(stores.location(f"[{ds}] confine-test/top.vmdk")) as disk:
                assert disk.read_at(0, 1024) == bytes(1024)
                assert disk.layers[1].location.name == str(folder / "base.vmdk")
        (folder / "top.vmdk").write_bytes(desc("1", [f'RW 2 FLAT "{tmp_path}/shadow" 0']))
        with pytest.raises(ConfinementError, match="outside the box"):
            open_disk(stores.location(f"[{ds}] confine-test/top.vmdk"))
    finally:
        stores.close()


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


def test_a_failed_release_is_retried_then_disowned(
    session: Session,
    vcsim: Vcsim,
    new_vm: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RemoveSnapshot failing (a reset connection, vCenter restarting) is retried by the
    running provider with backoff until it works; if the provider closes first, the journal
    entry is disowned (no owning process) and the next cleanup releases the snapshot."""
    info = new_vm("flaky-release")
    journal = Journal(tmp_path / "journal")
    [vm] = find_vms(session, parse_spec("name:flaky-release"))
    failures = {"left": 2}
    real_remove = snapshots_mod._remove

    def flaky(*args: Any) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise VsphereError("connection reset by peer (injected)", source=session.host)
        real_remove(*args)

    monkeypatch.setattr(snapshots_mod, "_remove", flaky)
    provider = VsphereProvider(
        session, Datastores(session), journal, parse_spec("name:x"), retry_delays=(0.2,)
    )
    provider.open_vm(vm).close()  # the release fails at once, and once more in the background
    assert len(_snapshot_names(vcsim, info.moref)) == 1 and provider.pending()
    deadline = time.monotonic() + 30
    while provider.pending() or _snapshot_names(vcsim, info.moref):
        assert time.monotonic() < deadline, "the release was not retried"
        time.sleep(0.1)
    assert failures["left"] == 0 and journal.entries() == []

    failures["left"] = 1_000  # now it never works while the provider runs
    provider.open_vm(vm).close()
    [name] = _snapshot_names(vcsim, info.moref)
    assert journal.entries()[0].alive()  # held while this process retries: cleanup spares it
    assert [a for a in cleanup(session, journal) if a.done] == []
    provider.close()
    [entry] = journal.entries()
    assert (entry.snapshot_name, entry.pid, entry.alive()) == (name, 0, False)  # disowned
    failures["left"] = 0
    assert [(a.snapshot, a.done) for a in cleanup(session, journal)] == [(name, True)]
    assert _snapshot_names(vcsim, info.moref) == [] and journal.entries() == []
