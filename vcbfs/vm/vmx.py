"""The .vmx file: a VM's configuration, and the disks it names.

A .vmx is ``key = "value"`` lines (``#`` comments; keys are case-insensitive).  Disks are the
``scsiX:Y`` / ``ideX:Y`` / ``sataX:Y`` / ``nvmeX:Y`` devices with a ``.fileName``; a device that
is not present, or is a CD/DVD or floppy image, is not a disk.  Names are relative to the .vmx.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vcbfs.errors import CorruptError

__all__ = ["VmxDisk", "parse_vmx", "vmx_disks"]

MAX_VMX = 4 << 20
# ASCII digits, a few of them: a bus or unit of 5000 digits is no device (and int() refuses it)
_DEVICE = re.compile(r"(scsi|ide|sata|nvme)([0-9]{1,9}):([0-9]{1,9})")
_ORDER = {"ide": 0, "scsi": 1, "sata": 2, "nvme": 3}


@dataclass(frozen=True, slots=True)
class VmxDisk:
    device: str  # "scsi0:1"
    filename: str  # as written: relative to the .vmx or absolute


def parse_vmx(data: bytes, source: str = ".vmx") -> dict[str, str]:
    """Keys (lower-cased) and values of a .vmx; later lines win, as VMware reads them."""
    if len(data) > MAX_VMX:
        raise CorruptError("the .vmx is larger than 4 MiB", source=source)
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise CorruptError(f"line {lineno} is not key = value: {line!r}", source=source)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out[key.strip().lower()] = value
    return out


def vmx_disks(config: dict[str, str]) -> list[VmxDisk]:
    """The VM's disks in controller order (ide, scsi, sata, nvme; bus; unit)."""
    found = []
    for key, value in config.items():
        device, dot, field = key.partition(".")
        m = _DEVICE.fullmatch(device)
        if not m or not dot or field != "filename" or not value:
            continue
        if config.get(f"{device}.present", "true").lower() == "false":
            continue
        kind = config.get(f"{device}.devicetype", "disk").lower()
        if "cdrom" in kind or "floppy" in kind or value.lower().endswith((".iso", ".flp")):
            continue
        if not value.lower().endswith(".vmdk") and "disk" not in kind and "rawdisk" not in kind:
            continue
        found.append((_ORDER[m[1]], int(m[2]), int(m[3]), VmxDisk(device, value)))
    return [d for *_, d in sorted(found, key=lambda t: t[:3])]
