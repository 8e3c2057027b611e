"""The vSphere VM provider: listing VMs takes nothing; opening one takes a backup snapshot.

``open`` snapshots the VM (journaled and tagged, see ``snapshots``), reads the snapshot's own
configuration for its virtual disks (the frozen files: on real vSphere the VM itself has moved
on to new delta disks), opens each disk with its parent chain through the datastore transports,
and returns a VM image whose ``close`` releases the snapshot.  A disk that cannot be read
(a physical-mode RDM, an independent disk, no transport) becomes a note; the rest still mounts.
If anything fails after the snapshot was taken, the snapshot is released before the error
goes up.

A release that fails (vCenter restarting, a reset connection) is retried by the running
process, with backoff, for as long as it runs: a standing automount runs for weeks, and
``vcbfs cleanup`` spares a snapshot whose owner is alive.  When the provider closes with a
release still failing, the snapshot is disowned (its journal entry names no process), so the
next ``vcbfs cleanup`` (or the next mount's, which runs one at start) takes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
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

#: Seconds between tries of a failed release: quick at first (a reset connection), then every
#: five minutes (a vCenter being restarted or upgraded).
RETRY_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0, 300.0)

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
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.session = session
        self.datastores = datastores
        self.journal = journal
        self.spec = spec
        self.cache = cache
        self.quiesce = quiesce
        self._vms: dict[str, VmInfo] = {}
        self._lock = threading.Lock()
        self._retry_delays = tuple(retry_delays) or RETRY_DELAYS
        self._pending: dict[str, tuple[Snapshot, int, float]] = {}  # id: snap, tries, when
        self._wake = threading.Condition(self._lock)
        self._retrier: threading.Thread | None = None
        self._closed = False

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
        """Release now; on failure, keep trying in the background (see the module's doc)."""
        if self._try_release(snap, 0):
            return
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                self._pending[snap.entry.id] = (snap, 1, time.monotonic() + self._delay(1))
                if self._retrier is None:
                    self._retrier = threading.Thread(
                        target=self._retry_loop, name="vcbfs-release-retry", daemon=True
                    )
                    self._retrier.start()
                self._wake.notify()
        if closed:
            self._disown(snap)

    def _try_release(self, snap: Snapshot, tries: int) -> bool:
        try:
            for warning in release(self.session, snap, self.journal):
                log.warning("%s", warning)
        except VcbfsError as exc:
            again = f"retrying in {self._delay(tries + 1):.0f} s"
            log.error(
                "could not release %s of %s (try %d; %s): %s",
                snap.entry.snapshot_name,
                snap.vm.name,
                tries + 1,
                again if not self._closed else "disowning it for vcbfs cleanup",
                exc,
            )
            return False
        except Exception as exc:  # a bug must not end the retries of other snapshots
            log.exception("releasing %s: %s", snap.entry.snapshot_name, exc)
            return False
        if tries:
            log.warning(
                "released %s of %s after %d tries",
                snap.entry.snapshot_name,
                snap.vm.name,
                tries + 1,
            )
        return True

    def _delay(self, tries: int) -> float:
        return self._retry_delays[min(tries, len(self._retry_delays)) - 1]

    def _retry_loop(self) -> None:
        """The releases that failed, each retried at its time, until none is left or the
        provider closes."""
        while True:
            with self._lock:
                while not self._closed:
                    due = [
                        k for k, (_, _, when) in self._pending.items() if when <= time.monotonic()
                    ]
                    if due:
                        break
                    nearest = min((w for _, _, w in self._pending.values()), default=None)
                    self._wake.wait(None if nearest is None else nearest - time.monotonic())
                if self._closed:
                    return
                work = [(k, *self._pending[k][:2]) for k in due]
            for key, snap, tries in work:
                done = self._try_release(snap, tries)
                with self._lock:
                    if done:
                        self._pending.pop(key, None)
                    elif key in self._pending:
                        when = time.monotonic() + self._delay(tries + 1)
                        self._pending[key] = (snap, tries + 1, when)

    def _disown(self, snap: Snapshot) -> None:
        """Leave a snapshot this process could not release to ``vcbfs cleanup``."""
        entry = snap.entry
        entry.pid, entry.started = 0, ""  # owned by no process: cleanup may release it
        try:
            self.journal.write(entry)
        except VcbfsError as exc:
            log.error("cannot disown %s: %s", entry.snapshot_name, exc)
            return
        log.error(
            "%s of VM %r is left to `vcbfs cleanup` (this process could not release it)",
            entry.snapshot_name,
            snap.vm.name,
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

    def pending(self) -> list[str]:
        """The snapshots whose release failed and is being retried (their names)."""
        with self._lock:
            return [snap.entry.snapshot_name for snap, _, _ in self._pending.values()]

    def close(self) -> None:
        """Stop retrying: one last try each, then what still fails is disowned."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            retrier = self._retrier
        if retrier is not None:
            retrier.join(timeout=60)  # a try in progress ends at its own deadline
        with self._lock:
            left = list(self._pending.values())
            self._pending.clear()
        for snap, tries, _ in left:
            if not self._try_release(snap, tries):
                self._disown(snap)
        self.datastores.close()


def _bus_unit(device: str) -> tuple[int, int]:
    bus, _, unit = device.lstrip("abcdefghijklmnopqrstuvwxyz").partition(":")
    try:
        return int(bus), int(unit)
    except ValueError:
        return 0, 0
