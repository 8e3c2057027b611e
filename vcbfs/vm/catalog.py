"""The files vcbfs writes about a VM: the catalog, flat descriptors, the rewritten .vmx.

``fullvm/`` must be a VM that can be registered again: each disk becomes a monolithicFlat
descriptor (``NAME.vmdk``) over its raw data (``NAME-flat.vmdk``), and the .vmx names those
files.  The catalog says what the VM was made of, for the backup's own records, and how many
named streams each volume shows as ``FILE:STREAM`` entries rather than xattrs.
"""

from __future__ import annotations

import re

from vcbfs.errors import VcbfsError
from vcbfs.vm.image import Disk, VmImage, Volume
from vcbfs.vm.streams import count_beside
from vcbfs.vm.vmx import parse_vmx, vmx_disks

__all__ = ["catalog_text", "flat_descriptor", "rewrite_vmx"]

SECTOR = 512
_KEEP_DDB = (
    "adapterType",
    "geometry.cylinders",
    "geometry.heads",
    "geometry.sectors",
    "virtualHWVersion",
    "uuid",
    "longContentID",
    "thinProvisioned",
)


def flat_descriptor(disk: Disk) -> bytes:
    """A monolithicFlat descriptor for the disk's data as ``NAME-flat.vmdk``."""
    top = disk.source.layers[0].descriptor
    cid = top.cid if top is not None and top.cid is not None else 0xFFFFFFFE
    ddb = top.ddb if top is not None else {}
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        'encoding="UTF-8"',
        f"CID={cid:08x}",
        "parentCID=ffffffff",
        'createType="monolithicFlat"',
        "",
        "# Extent description",
        f'RW {-(-disk.source.size // SECTOR)} FLAT "{disk.name}-flat.vmdk" 0',
        "",
        "# The Disk Data Base",
        "#DDB",
        "",
    ]
    for key in _KEEP_DDB:
        if key in ddb:
            lines.append(f'ddb.{key} = "{ddb[key]}"')
    if "adapterType" not in ddb:
        lines.append('ddb.adapterType = "lsilogic"')
    return ("\n".join(lines) + "\n").encode()


_DISK_KEY = re.compile(r"^\s*((?:scsi|ide|sata|nvme)\d+:\d+)\.(\w+)\s*=", re.I)


def rewrite_vmx(data: bytes, image: VmImage) -> bytes:
    """The .vmx with each disk's fileName pointing at its descriptor in fullvm/.

    A virtual disk the image does not hold (an RDM or independent disk that a snapshot leaves
    out, a disk that could not be read) is marked not present, with a comment saying so, so
    that a copy of fullvm/ still registers as a VM.
    """
    names = {d.device.lower(): d.name for d in image.disks if d.device}
    left_out = {d.device: d.filename for d in vmx_disks(parse_vmx(data)) if d.device not in names}
    lines = data.decode("utf-8", errors="surrogateescape").splitlines(keepends=True)
    out = []
    marked = set()
    for line in lines:
        m = _DISK_KEY.match(line)
        end = "\n" if line.endswith("\n") else ""
        dev = m[1].lower() if m else ""
        if m and dev in names and m[2].lower() == "filename":
            line = f'{m[1]}.fileName = "{names[dev]}.vmdk"{end}'
        elif m and dev in left_out and m[2].lower() == "present":
            line = f'{m[1]}.present = "FALSE"{end}'
            marked.add(dev)
        out.append(line)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    for dev, filename in left_out.items():
        out.append(f"# vcbfs: {dev} ({filename}) is not in this backup (see the catalog)\n")
        if dev not in marked:
            out.append(f'{dev}.present = "FALSE"\n')
    return "".join(out).encode("utf-8", errors="surrogateescape")


def _streams_beside(volume: Volume) -> str:
    """How many named streams the mount lists as ``FILE:STREAM`` entries (too large or too
    oddly named for an xattr): a backup of the tree holds them as files of their own."""
    try:
        beside, unreadable = count_beside(volume.ntfs())
    except VcbfsError as exc:
        return f"unknown ({exc})"
    return f"{beside} ({unreadable} records unreadable)" if unreadable else str(beside)


def catalog_text(image: VmImage) -> str:
    """A plain-text description of the VM, its disks (with their chains) and volumes."""
    lines = [f"vm.name = {image.name}"]
    for d in image.disks:
        p = f"disk{d.index}"
        lines.append(f"{p}.device = {d.device or ''}")
        lines.append(f"{p}.file = {d.name}.vmdk")
        lines.append(f"{p}.capacity = {d.source.size}")
        for i, layer in enumerate(d.source.layers):
            lines.append(f"{p}.chain{i} = {layer.location.name} ({layer.format})")
    for v in image.volumes():
        where = f"partition {v.partition.number}" if v.partition else "whole disk"
        lines.append(f"volume{v.number} = disk{v.disk.index} {where} at {v.start}")
        lines.append(f"volume{v.number}.streams_beside_files = {_streams_beside(v)}")
    lines += [f"note{i} = {note}" for i, note in enumerate(image.notes)]  # what was left out
    return "\n".join(lines) + "\n"
