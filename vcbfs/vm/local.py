"""VMs from local files: a .vmx with its disks, a single .vmdk, or a raw disk image.

This is the provider for exported VMs and for VM folders on a datastore mounted on the proxy.
"""

from __future__ import annotations

import os
from pathlib import Path

from vcbfs.blocks.local import LocalLocation
from vcbfs.blocks.vmdk.disk import VirtualDisk, open_disk
from vcbfs.errors import NotFoundError
from vcbfs.vm.image import Disk, VmImage
from vcbfs.vm.vmx import parse_vmx, vmx_disks

__all__ = ["disk_name", "open_local_vm"]

MAX_SMALL_FILE = 16 << 20


def _read_small(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(MAX_SMALL_FILE)
    except FileNotFoundError:
        raise NotFoundError("no such file", source=str(path)) from None


def disk_name(filename: str, taken: set[str]) -> str:
    """The fullvm/ base name of a disk: its file name without .vmdk, made unique."""
    stem = os.path.basename(filename)
    for suffix in (".vmdk", ".img", ".raw"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    name, n = stem or "disk", 1
    while name.lower() in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name.lower())
    return name


def open_local_vm(path: str | os.PathLike[str]) -> VmImage:
    """A .vmx (all its disks, chains followed), a .vmdk or a raw image, as a VM image."""
    path = Path(path)
    opened: list[VirtualDisk] = []
    try:
        if path.suffix.lower() == ".vmx":
            data = _read_small(path)
            config = parse_vmx(data, str(path))
            name = config.get("displayname") or path.stem
            files = {path.name: data}
            nvram = path.parent / (config.get("nvram") or f"{path.stem}.nvram")
            if nvram.is_file():
                files[nvram.name] = _read_small(nvram)
            disks: list[Disk] = []
            taken: set[str] = set()
            for d in vmx_disks(config):
                disk = open_disk(LocalLocation(path.parent / d.filename))
                opened.append(disk)
                disks.append(Disk(len(disks), disk_name(d.filename, taken), d.device, disk))
            return VmImage(name, disks, files)
        disk = open_disk(LocalLocation(path))
        opened.append(disk)
        return VmImage(path.stem, [Disk(0, disk_name(path.name, set()), None, disk)])
    except BaseException:
        for disk in opened:
            disk.close()
        raise
