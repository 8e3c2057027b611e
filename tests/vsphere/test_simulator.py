"""The simulator harness itself: what vcbfs's vSphere tests rely on, proven once."""

from __future__ import annotations

import http.client
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pyVmomi import vim

from tests.vsphere.conftest import DEMO_HOSTNAME, DEMO_IP, DEMO_VM, VsphereVm
from tests.vsphere.simulator import (
    QUIESCE_FAULT_KEY,
    Vcsim,
    VcsimError,
    add_vm,
    cert_thumbprint,
    create_snapshot,
    destroy_vm,
    find_all,
    list_snapshots,
    managed,
    properties,
    remove_snapshot,
    wait_task,
)


def _get(sim: Vcsim, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET over verified TLS (trusting only the test certificate), ignoring the environment."""
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == (sim.host, sim.port)
    conn = http.client.HTTPSConnection(sim.host, sim.port, context=sim.ssl_context(), timeout=30)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_starts_and_answers(vcsim: Vcsim) -> None:
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+/sdk", vcsim.url)
    assert vcsim.host == "127.0.0.1" and vcsim.port > 0 and vcsim.pid > 0
    with vcsim.session() as si:
        about = si.content.about
        assert about.apiType == "VirtualCenter"
        vms = find_all(si, vim.VirtualMachine, ["name"])
    assert {"DC0_H0_VM0", "DC0_C0_RP0_VM0"} <= {p["name"] for p in vms.values()}
    assert vcsim.datastore_dir().is_dir()


def test_bad_password_is_invalid_login(vcsim: Vcsim) -> None:
    with pytest.raises(vim.fault.InvalidLogin):
        vcsim.connect(vcsim.username, "not-" + str(vcsim.password))
    with pytest.raises(vim.fault.InvalidLogin):
        vcsim.connect("administrator", vcsim.password)


def test_presents_the_test_certificate(vcsim: Vcsim) -> None:
    assert vcsim.certfile is not None
    assert vcsim.thumbprint_sha256 == cert_thumbprint(vcsim.certfile) == vcsim.thumbprint
    assert len(vcsim.thumbprint) == 95
    # and it verifies: connect() and _get() use a context trusting only this certificate
    assert _get(vcsim, vcsim.url.replace("/sdk", "/about"))[0] == 200


def test_vm_disks_are_attached(vcsim: Vcsim, vsphere_vm: VsphereVm) -> None:
    vm, source = vsphere_vm.vm, vsphere_vm.source
    with vcsim.session() as si:
        props = properties(si, vm.moref, ["name", "config.hardware", "config.uuid"])
    assert props["name"] == DEMO_VM and props["config.uuid"] == vm.uuid
    disks = [d for d in props["config.hardware"].device if isinstance(d, vim.vm.device.VirtualDisk)]
    names = [d.backing.fileName for d in disks]
    assert names == [f"[LocalDS_0] {vm.vmdir}/sys.vmdk", f"[LocalDS_0] {vm.vmdir}/data.vmdk"]
    assert [d.capacityInBytes for d in disks] == [d.capacity_bytes for d in vm.disks]
    assert vm.disks[0].capacity_bytes == 25 << 20  # 1 MiB + the 24 MiB system volume

    local = vcsim.datastore_dir() / vm.vmdir
    assert (local / "sys.vmdk").read_bytes() == source.sys_vmdk.read_bytes()
    # the flat descriptor now names copies beside it, not the cache's absolute path
    descriptor = (local / "data.vmdk").read_text()
    assert '"data-head.bin"' in descriptor and '"data-volume.img"' in descriptor
    assert "/" not in "".join(re.findall(r'"([^"]*)"', descriptor))
    assert vm.disks[1].files == ("data.vmdk", "data-head.bin", "data-volume.img", "data-tail.bin")
    assert (local / "data-volume.img").stat().st_size == source.data.path.stat().st_size
    assert not list(local.glob("*-flat.vmdk"))  # the attach stand-ins are gone


def test_folder_serves_the_copied_bytes(vcsim: Vcsim, vsphere_vm: VsphereVm) -> None:
    vm, source = vsphere_vm.vm, vsphere_vm.source
    with vcsim.session() as si:
        cookie = str(si._stub.cookie).split(";", 1)[0]
    status, body = _get(vcsim, vcsim.folder_url(f"{vm.vmdir}/sys.vmdk"), {"Cookie": cookie})
    assert status == 200 and body == source.sys_vmdk.read_bytes()

    url = vcsim.folder_url(f"{vm.vmdir}/data-volume.img")
    status, body = _get(vcsim, url, {"Cookie": cookie, "Range": "bytes=65536-131071"})
    with source.data.path.open("rb") as f:
        f.seek(65536)
        assert status == 206 and body == f.read(65536)


def test_guest_identity(vcsim: Vcsim, vsphere_vm: VsphereVm) -> None:
    vm = vsphere_vm.vm
    with vcsim.session() as si:
        props = properties(si, vm.moref, ["guest.ipAddress", "guest.hostName", "guest.net"])
        found = si.content.searchIndex.FindByIp(ip=DEMO_IP, vmSearch=True)
    assert props["guest.ipAddress"] == DEMO_IP
    assert props["guest.hostName"] == DEMO_HOSTNAME
    assert props["guest.net"][0].ipAddress == [DEMO_IP]
    assert found._moId == vm.moref


def test_quiesce_fault_hook(vcsim: Vcsim, vsphere_vm: VsphereVm) -> None:
    with vcsim.session() as si:
        bad = add_vm(vcsim, si, "quiesce-fault", extra={QUIESCE_FAULT_KEY: "true"})
        with pytest.raises(vim.fault.ApplicationQuiesceFault) as caught:
            create_snapshot(si, bad.moref, "vcbfs", quiesce=True)
        assert "quiesce" in caught.value.msg
        assert list_snapshots(si, bad.moref) == []
        # without quiescing, and for other VMs, snapshots work
        crash_consistent = create_snapshot(si, bad.moref, "vcbfs", quiesce=False)
        good = create_snapshot(si, vsphere_vm.vm.moref, "vcbfs", quiesce=True)
        assert [s.quiesced for s in list_snapshots(si, vsphere_vm.vm.moref)] == [True]
        # the faulty VM's other methods are untouched
        wait_task(si, managed(si, bad.moref).PowerOffVM_Task())
        remove_snapshot(si, crash_consistent)
        remove_snapshot(si, good)
        assert list_snapshots(si, vsphere_vm.vm.moref) == []
        destroy_vm(si, bad.moref)


def test_snapshot_helpers_and_removal_keep_disks(vcsim: Vcsim, vsphere_vm: VsphereVm) -> None:
    """Stock vcsim deletes the VM's disk here (removal order 1, 4); the launcher repairs that."""
    with vcsim.session() as si:
        vm = add_vm(vcsim, si, "snapshot-order", [vsphere_vm.source.sys_vmdk], power_on=False)
        local = vcsim.datastore_dir() / vm.vmdir
        refs = [create_snapshot(si, vm.moref, f"s{i}", f"user snapshot {i}") for i in range(4)]
        snaps = list_snapshots(si, vm.moref)
        assert [(s.moref, s.name, s.description) for s in snaps] == [
            (r, f"s{i}", f"user snapshot {i}") for i, r in enumerate(refs)
        ]
        assert [s.parent for s in snaps] == [None, *refs[:3]]
        vmsn = sorted(p.name for p in local.glob("*.vmsn"))
        assert len(vmsn) == 4
        for i in (0, 3, 1):
            remove_snapshot(si, refs[i])
            assert (local / "sys.vmdk").exists()
            vmsn.remove(f"{vm.name}-Snapshot{i + 1}.vmsn")
            assert sorted(p.name for p in local.glob("*.vmsn")) == vmsn
        refs = [refs[2], *(create_snapshot(si, vm.moref, f"t{i}") for i in range(2))]
        wait_task(si, managed(si, vm.moref).RemoveAllSnapshots_Task())
        assert list_snapshots(si, vm.moref) == []
        assert not list(local.glob("*.vmsn"))
        assert (local / "sys.vmdk").read_bytes() == vsphere_vm.source.sys_vmdk.read_bytes()
        layout = properties(si, vm.moref, ["layoutEx.file"])["layoutEx.file"]
        assert all(f.name.startswith(f"[LocalDS_0] {vm.vmdir}/") for f in layout)
        destroy_vm(si, vm.moref)
        assert not local.exists()


def test_esx_model_delays_and_cleanup(tmp_path: Path) -> None:
    sim = Vcsim(esx=True, vms=0, method_delay={"CreateSnapshot_Task": 300}, workdir=tmp_path)
    with sim:
        store = sim.datastore_dir()
        with sim.session() as si:
            assert si.content.about.apiType == "HostAgent"
            assert find_all(si, vim.VirtualMachine, ["name"]) == {}
            vm = add_vm(sim, si, "esx-vm", ip="10.0.0.7")
            began = time.monotonic()
            create_snapshot(si, vm.moref, "slow")
            assert time.monotonic() - began >= 0.3
        status, _ = _get(sim, sim.folder_url(f"{vm.vmdir}/{vm.vmx.rsplit('/', 1)[1]}"))
        assert status == 200
    assert not store.exists()  # SIGTERM removed the datastore


def test_start_failure_shows_the_launchers_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(VcsimError, match="loading the TLS key pair"):
        Vcsim(certfile=missing, keyfile=missing).start()
