"""A VM image: its configuration files, its disks, the NTFS volumes on them, their letters.

This is what a mount shows, independent of where the VM came from (local files or a vSphere
snapshot).  Everything past the disks is found lazily and once: listing the VM's volumes reads
partition tables and boot sectors, nothing more; opening a volume reads its MFT's first record;
drive letters need the system volume's SYSTEM hive.  Failures are kept per disk and per volume
as notes, so one unreadable disk does not hide the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from vcbfs.blocks.partitions import Partition, read_partitions
from vcbfs.blocks.source import ByteSource
from vcbfs.blocks.vmdk.disk import VirtualDisk
from vcbfs.errors import VcbfsError
from vcbfs.ntfs.volume import NtfsVolume

__all__ = ["Disk", "VmImage", "Volume"]

log = logging.getLogger(__name__)
NTFS_OEM = b"NTFS    "


@dataclass
class Disk:
    index: int  # 0-based, in the VM's controller order
    name: str  # the base name for fullvm/: "web01" -> web01.vmdk + web01-flat.vmdk
    device: str | None  # "scsi0:0", if known
    source: VirtualDisk


@dataclass
class Volume:
    number: int  # 1-based: digits/<number>
    disk: Disk
    partition: Partition | None  # None: the whole disk is the volume
    source: ByteSource
    mbr_signature: int | None = None  # of the disk, when it has an MBR
    _ntfs: NtfsVolume | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def start(self) -> int:
        return self.partition.start if self.partition else 0

    def ntfs(self) -> NtfsVolume:
        """The NTFS reader for this volume, opened once."""
        with self._lock:
            if self._ntfs is None:
                self._ntfs = NtfsVolume(self.source)
            return self._ntfs

    def ntfs_if_open(self) -> NtfsVolume | None:
        """The NTFS reader if it is open already (never blocks to open it)."""
        return self._ntfs


class VmImage:
    """One VM (or one snapshot of it) as the mount sees it."""

    def __init__(
        self,
        name: str,
        disks: list[Disk],
        files: dict[str, bytes] | None = None,
        close: Callable[[], None] | None = None,
    ):
        self.name = name
        self.disks = disks
        self.files = files or {}  # e.g. {"web01.vmx": b"...", "web01.nvram": b"..."}
        self.notes: list[str] = []
        self._close = close
        self._lock = threading.Lock()
        self._volumes: list[Volume] | None = None

    def volumes(self) -> list[Volume]:
        """Every NTFS volume, in disk and partition order (found once)."""
        with self._lock:
            if self._volumes is None:
                self._volumes = self._find_volumes()
            return self._volumes

    def _find_volumes(self) -> list[Volume]:
        found: list[Volume] = []
        for disk in self.disks:
            try:
                if disk.source.read_at(3, 8) == NTFS_OEM:
                    found.append(Volume(len(found) + 1, disk, None, disk.source))
                    continue
                table = read_partitions(disk.source)
            except VcbfsError as exc:
                self.note(f"disk {disk.index} ({disk.name}): {exc}")
                continue
            for note in table.notes:
                self.note(f"disk {disk.index} ({disk.name}): {note}")
            for p in table.partitions:
                if not p.supported:
                    self.note(f"disk {disk.index} partition {p.number}: {p.reason}")
                    continue
                try:
                    part = p.source(disk.source)
                    if part.read_at(3, 8) == NTFS_OEM:
                        found.append(Volume(len(found) + 1, disk, p, part, table.mbr_signature))
                except VcbfsError as exc:
                    self.note(f"disk {disk.index} partition {p.number}: {exc}")
        return found

    def note(self, text: str) -> None:
        """Record (and log) why something of this VM could not be read."""
        log.warning("%s: %s", self.name, text)
        self.notes.append(text)

    def close(self) -> None:
        for disk in self.disks:
            disk.source.close()
        if self._close is not None:
            self._close()
