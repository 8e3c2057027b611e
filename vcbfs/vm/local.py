"""VMs from local files: a .vmx with its disks, a single .vmdk, or a raw disk image.

This is the provider for exported VMs and for VM folders on a datastore mounted on the proxy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from vcbfs.blocks.confine import Box
from vcbfs.blocks.local import LocalLocation
from vcbfs.blocks.vmdk.disk import VirtualDisk, open_disk
from vcbfs.errors import NotFoundError
from vcbfs.vm.image import Disk, VmImage
from vcbfs.vm.vmx import parse_vmx, vmx_disks

__all__ = ["disk_name", "open_local_vm"]

MAX_SMALL_FILE = 16 << 20


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


def open_local_vm(
    path: str | os.PathLike[str],
    *,
    allow: Sequence[str | os.PathLike[str]] = (),
    datastores: Mapping[str, str | os.PathLike[str]] | None = None,
    within: str | os.PathLike[str] | None = None,
) -> VmImage:
    """A .vmx (all its disks, chains followed), a .vmdk or a raw image, as a VM image.

    Every file the .vmx or a descriptor names must lie in the folder of ``path``, under a
    directory in ``allow`` or under a datastore root (``/vmfs/volumes/DS/...`` maps there by
    name or UUID): see ``vcbfs.blocks.confine``.  A VM found in a folder the user named
    (``within``) is confined to that folder, its .vmx included."""
    path = Path(path)
    if within is None:
        top = LocalLocation(path, Box.around(path, allow=allow, datastores=datastores))
    else:
        box = Box.under(within, allow=allow, datastores=datastores)
        inside = os.path.relpath(os.path.abspath(path), os.path.abspath(within))
        top = LocalLocation(box.resolve(box.roots[0], inside, str(within)), box, named=False)
    opened: list[VirtualDisk] = []
    try:
        if path.suffix.lower() == ".vmx":
            data = top.read_small(MAX_SMALL_FILE)
            config = parse_vmx(data, str(path))
            name = config.get("displayname") or path.stem
            files = {path.name: data}
            nvram = top.sibling(config.get("nvram") or f"{path.stem}.nvram")
            with contextlib.suppress(NotFoundError):
                files[os.path.basename(nvram.name)] = nvram.read_small(MAX_SMALL_FILE)
            disks: list[Disk] = []
            taken: set[str] = set()
            for d in vmx_disks(config):
                disk = open_disk(top.sibling(d.filename))
                opened.append(disk)
                disks.append(Disk(len(disks), disk_name(d.filename, taken), d.device, disk))
            return VmImage(name, disks, files)
        disk = open_disk(top)
        opened.append(disk)
        return VmImage(path.stem, [Disk(0, disk_name(path.name, set()), None, disk)])
    except BaseException:
        for disk in opened:
            disk.close()
        raise
