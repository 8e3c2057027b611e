"""The vSphere VM provider: listing VMs takes nothing; opening one takes a backup snapshot.

``open`` snapshots the VM (journaled and tagged, see ``snapshots``), reads the snapshot's own
configuration for its virtual disks (the frozen files: on real vSphere the VM itself has moved
on to new delta disks), opens each disk with its parent chain through the datastore transports,
and returns a VM image whose ``close`` releases the snapshot.  A disk that cannot be read
(a physical-mode RDM, an independent disk, no transport) becomes a note; the rest still mounts.
If anything fails after the snapshot was taken, the snapshot is released before the error
goes up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from pyVmomi import vim

from vcbfs.blocks.vmdk.disk import open_disk
from vcbfs.errors import NotFoundError, VcbfsError
from vcbfs.vm.image import Disk, VmImage
from vcbfs.vm.local import disk_name
from vcbfs.vm.provider import VmEntry, VmProvider
from vcbfs.vsphere.datastore import Datastores, parse_ds_path
from vcbfs.vsphere.inventory import NameCache, VmInfo, find_vms
from vcbfs.vsphere.session import Session
from vcbfs.vsphere.snapshots import Journal, Snapshot, release, take
from vcbfs.vsphere.spec import Spec

__all__ = ["VsphereProvider"]

log = logging.getLogger(__name__)

_CONTROLLERS: tuple[tuple[type, str], ...] = (
    (vim.vm.device.VirtualIDEController, "ide"),
    (vim.vm.device.VirtualSCSIController, "scsi"),
    (vim.vm.device.VirtualAHCIController, "sata"),
    (vim.vm.device.VirtualNVMEController, "nvme"),
)


class VsphereProvider(VmProvider):
    """VMs of one vCenter/ESXi matching a specifier, each opened as a snapshot."""

    def __init__(
        self,
        session: Session,
        datastores: Datastores,
        journal: Journal,
        spec: Spec,
        *,
        cache: NameCache | None = None,
        quiesce: bool = True,
    ) -> None:
        self.session = session
        self.datastores = datastores
        self.journal = journal
        self.spec = spec
        self.cache = cache
        self.quiesce = quiesce
        self._vms: dict[str, VmInfo] = {}
        self._lock = threading.Lock()

    def vms(self) -> list[VmInfo]:
        found = find_vms(self.session, self.spec, self.cache, require=False)
        with self._lock:
            self._vms.update((vm.moref, vm) for vm in found)
        return found

    def list(self) -> list[VmEntry]:
        return [VmEntry(vm.moref, vm.name) for vm in self.vms()]

    def open(self, key: str) -> VmImage:
        with self._lock:
            vm = self._vms.get(key)
        if vm is None:
            vm = next((v for v in self.vms() if v.moref == key), None)
            if vm is None:
                raise NotFoundError(f"no VM {key}", source=self.session.host)
        return self.open_vm(vm)

    def open_vm(self, vm: VmInfo) -> VmImage:
        snap = take(self.session, vm, self.journal, quiesce=self.quiesce)
        try:
            return self._image(vm, snap)
        except BaseException:
            self._release(snap)
            raise

    def _release(self, snap: Snapshot) -> None:
        try:
            for warning in release(self.session, snap, self.journal):
                log.warning("%s", warning)
        except VcbfsError as exc:
            log.error(
                "could not release %s (vcbfs cleanup will): %s", snap.entry.snapshot_name, exc
            )

    def _image(self, vm: VmInfo, snap: Snapshot) -> VmImage:
        config = self.session.properties(snap.ref, ["config"]).get("config")
        if config is None:
            raise NotFoundError(
                f"snapshot of {vm.name!r} has no configuration", source=self.session.host
            )
        notes: list[str] = []
        disks: list[Disk] = []
        taken: set[str] = set()
        try:
            for device, filename in self._disk_files(config, notes):
                try:
                    disk = open_disk(self.datastores.location(filename))
                except VcbfsError as exc:
                    notes.append(f"disk {device} ({filename}): {exc}")
                    continue
                disks.append(
                    Disk(len(disks), disk_name(parse_ds_path(filename)[1], taken), device, disk)
                )
            files = self._config_files(vm, config, notes)
        except BaseException:
            for d in disks:
                d.source.close()
            raise
        image = VmImage(vm.name, disks, files, close=lambda: self._release(snap))
        for note in notes:
            image.note(note)
        return image

    @staticmethod
    def _disk_files(config: Any, notes: list[str]) -> list[tuple[str, str]]:
        """``(device, "[ds] file.vmdk")`` of each disk the snapshot froze, in controller order."""
        devices = list(config.hardware.device or ())
        controllers: dict[int, tuple[str, int]] = {}
        for dev in devices:
            for cls, kind in _CONTROLLERS:
                if isinstance(dev, cls):
                    controllers[dev.key] = (kind, int(dev.busNumber))
        found = []
        for dev in devices:
            if not isinstance(dev, vim.vm.device.VirtualDisk):
                continue
            kind, bus = controllers.get(dev.controllerKey, ("disk", 0))
            device = f"{kind}{bus}:{dev.unitNumber if dev.unitNumber is not None else 0}"
            backing = dev.backing
            filename = str(getattr(backing, "fileName", "") or "")
            mode = str(getattr(backing, "diskMode", "") or "")
            if isinstance(backing, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo) and (
                str(backing.compatibilityMode) == "physicalMode"
            ):
                notes.append(
                    f"disk {device} ({filename}) is a physical-mode RDM: vSphere cannot "
                    "snapshot it, so it is skipped; back it up from the SAN"
                )
                continue
            if mode.startswith("independent"):
                notes.append(
                    f"disk {device} ({filename}) is independent ({mode}): snapshots leave it "
                    "out, so it is skipped"
                )
                continue
            if not filename:
                notes.append(f"disk {device} has no backing file ({type(backing).__name__})")
                continue
            found.append((device, filename))
        order = {"ide": 0, "scsi": 1, "sata": 2, "nvme": 3}
        found.sort(key=lambda d: (order.get(d[0].rstrip("0123456789:"), 9), _bus_unit(d[0])))
        return found

    def _config_files(self, vm: VmInfo, config: Any, notes: list[str]) -> dict[str, bytes]:
        """The .vmx (and .nvram) for fullvm/, read through the same transports."""
        files: dict[str, bytes] = {}
        vmx = vm.vmx_path or str(getattr(config.files, "vmPathName", "") or "")
        if not vmx:
            return files
        try:
            files[os.path.basename(parse_ds_path(vmx)[1])] = self.datastores.read_small(vmx)
        except VcbfsError as exc:
            notes.append(f"cannot read the .vmx: {exc}")
            return files
        ds, path = parse_ds_path(vmx)
        nvram = f"[{ds}] {path[: -len('.vmx')] if path.endswith('.vmx') else path}.nvram"
        with contextlib.suppress(VcbfsError):  # an .nvram is optional
            files[os.path.basename(parse_ds_path(nvram)[1])] = self.datastores.read_small(nvram)
        return files

    def close(self) -> None:
        self.datastores.close()


def _bus_unit(device: str) -> tuple[int, int]:
    bus, _, unit = device.lstrip("abcdefghijklmnopqrstuvwxyz").partition(":")
    try:
        return int(bus), int(unit)
    except ValueError:
        return 0, 0
