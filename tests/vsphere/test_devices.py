"""Which of a snapshot's virtual disks are read, in which order, and why others are skipped."""

from __future__ import annotations

from pyVmomi import vim

from vcbfs.vsphere.provider import VsphereProvider

Disk = vim.vm.device.VirtualDisk


def _disk(key: int, controller: int, unit: int, backing: object) -> object:
    return Disk(key=key, controllerKey=controller, unitNumber=unit, backing=backing)


def _flat(name: str, mode: str = "persistent") -> object:
    return Disk.FlatVer2BackingInfo(fileName=name, diskMode=mode)


def test_disk_files_in_controller_order_and_skips() -> None:
    devices = [
        vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0),
        vim.vm.device.VirtualIDEController(key=200, busNumber=0),
        vim.vm.device.VirtualAHCIController(key=15000, busNumber=1),
        _disk(2001, 1000, 1, _flat("[ds1] vm/data.vmdk")),
        _disk(2000, 1000, 0, _flat("[ds1] vm/vm.vmdk")),
        _disk(3000, 200, 0, _flat("[ds1] vm/boot.vmdk")),
        _disk(16000, 15000, 2, Disk.SparseVer2BackingInfo(fileName="[ds2] vm/sata.vmdk")),
        _disk(
            2002,
            1000,
            2,
            Disk.RawDiskMappingVer1BackingInfo(
                fileName="[ds1] vm/lun.vmdk", compatibilityMode="physicalMode"
            ),
        ),
        _disk(
            2003,
            1000,
            3,
            Disk.RawDiskMappingVer1BackingInfo(
                fileName="[ds1] vm/vlun.vmdk", compatibilityMode="virtualMode"
            ),
        ),
        _disk(2004, 1000, 4, _flat("[ds1] vm/scratch.vmdk", "independent_persistent")),
    ]
    config = vim.vm.ConfigInfo(hardware=vim.vm.VirtualHardware(device=devices))
    notes: list[str] = []
    found = VsphereProvider._disk_files(config, notes)
    assert found == [
        ("ide0:0", "[ds1] vm/boot.vmdk"),
        ("scsi0:0", "[ds1] vm/vm.vmdk"),
        ("scsi0:1", "[ds1] vm/data.vmdk"),
        ("scsi0:3", "[ds1] vm/vlun.vmdk"),  # a virtual-mode RDM is snapshotted: read its delta
        ("sata1:2", "[ds2] vm/sata.vmdk"),
    ]
    assert len(notes) == 2
    assert "scsi0:2" in notes[0] and "physical-mode RDM" in notes[0]
    assert "scsi0:4" in notes[1] and "independent" in notes[1]


def test_datacenter_paths_follow_folders() -> None:
    """``dcPath`` is the datacenter's inventory path below the root folder."""
    from vcbfs.vsphere.datastore import Datastores

    root, region, emea = object(), object(), object()
    dc1, dc2, ds1, ds2 = object(), object(), object(), object()
    answers = {
        vim.Folder: [
            (root, {"name": "Datacenters"}),
            (region, {"name": "Region", "parent": root}),
            (emea, {"name": "EMEA", "parent": region}),
        ],
        vim.Datastore: [(ds1, {"name": "san-1"}), (ds2, {"name": "local"})],
        vim.Datacenter: [
            (dc1, {"name": "DC0", "parent": root, "datastore": [ds2]}),
            (dc2, {"name": "Paris", "parent": emea, "datastore": [ds1]}),
        ],
    }

    class Inventory:  # answers the PropertyCollector queries _datacenters makes
        def retrieve(self, kind: type, props: list[str]) -> list[tuple[object, dict]]:
            return answers[kind]

    stores = Datastores.__new__(Datastores)
    stores.session, stores._dc = Inventory(), None  # type: ignore[assignment]
    assert stores._datacenters() == {"local": "DC0", "san-1": "Region/EMEA/Paris"}
