"""A two-disk Windows-like VM for the mount tests, built from real tools and cached.

- disk 0 (``sys.vmdk``, monolithicSparse): MBR, signature 0x5EC0FFEE, one NTFS partition at
  1 MiB holding ``Windows/System32/config/SYSTEM`` (a real hive) and a few user files;
- disk 1 (``data.vmdk``, a descriptor over FLAT extents): GPT, one partition at 1 MiB whose
  data is the reference NTFS volume of tests/ntfs (so ntfs-3g's manifest of it applies);
- ``vm.vmx`` naming both; the hive maps C: to disk 0's volume (MBR signature + offset) and F:
  to disk 1's (GPT partition GUID), a letter not next to C.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.images import cache_dir, link_into, qemu_vmdk, run
from tests.ntfs.ntfsimages import NtfsImage, ntfs3g_mounted

SECTOR = 512
MIB = 1 << 20
SYS_SIGNATURE = 0x5EC0FFEE
DATA_PART_GUID = uuid.UUID("6a1f3c2e-9b7d-4e5f-8a10-c0ffee000f0f")
SYS_VOLUME_SIZE = 24 * MIB


@dataclass(frozen=True)
class TestVm:
    __test__ = False

    vmx: Path
    sys_vmdk: Path
    data_vmdk: Path
    sys_volume: Path  # the system volume alone, for ntfs-3g comparisons
    data: NtfsImage  # the reference volume on disk 1, with its manifest
    sys_files: dict[str, bytes]  # files written on the system volume


def _hash() -> str:
    here = Path(__file__).read_bytes()
    return hashlib.sha256(here).hexdigest()[:16]


SYS_FILES = {
    "Users/Public/target.txt": b"the target of links\n",
    "Users/Public/Documents/report.txt": b"quarterly figures\n" * 100,
    "boot.ini": b"[boot loader]\n",
}


def _system_volume(path: Path, hive: bytes) -> None:
    with path.open("wb") as f:
        f.truncate(SYS_VOLUME_SIZE)
    run("mkntfs", "-F", "-Q", "-q", "-s", "512", "-c", "4096", "-p", "2048", "-L", "SYSTEM", path)
    with ntfs3g_mounted(path) as mnt:
        (mnt / "Windows/System32/config").mkdir(parents=True)
        (mnt / "Windows/System32/config/SYSTEM").write_bytes(hive)
        for rel, data in SYS_FILES.items():
            (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
            (mnt / rel).write_bytes(data)


def build_test_vm(data: NtfsImage, make_hive) -> TestVm:  # type: ignore[no-untyped-def]
    """Build (once) the VM; ``make_hive(mounted)`` returns SYSTEM hive bytes with those values."""
    root = cache_dir("vm").with_name(f"vm-{_hash()}-{data.root.name}")
    vm = TestVm(
        root / "vm.vmx",
        root / "sys.vmdk",
        root / "data.vmdk",
        root / "sys-volume.img",
        data,
        SYS_FILES,
    )
    if (root / ".complete").exists():
        return vm
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    mounted = {
        "\\DosDevices\\C:": SYS_SIGNATURE.to_bytes(4, "little") + MIB.to_bytes(8, "little"),
        "\\DosDevices\\F:": b"DMIO:ID:" + DATA_PART_GUID.bytes_le,
    }
    _system_volume(vm.sys_volume, make_hive(mounted))

    # disk 0: MBR + the system volume, as a monolithicSparse VMDK
    raw = root / "sys.raw"
    sectors = SYS_VOLUME_SIZE // SECTOR
    with raw.open("wb") as f:
        f.truncate(MIB + SYS_VOLUME_SIZE)
    table = (
        f"label: dos\nlabel-id: {SYS_SIGNATURE:#x}\nstart=2048, size={sectors}, type=7, bootable\n"
    )
    subprocess.run(["sfdisk", "-q", str(raw)], input=table.encode(), check=True)
    with raw.open("r+b") as f, vm.sys_volume.open("rb") as v:
        f.seek(MIB)
        shutil.copyfileobj(v, f)
    qemu_vmdk(raw, vm.sys_vmdk, "monolithicSparse")
    raw.unlink()

    # disk 1: GPT around the reference volume, without copying it: head, volume, tail extents
    vol_sectors = data.path.stat().st_size // SECTOR
    total = 2048 + vol_sectors + 2048
    probe = root / "probe.raw"
    with probe.open("wb") as f:
        f.truncate(total * SECTOR)
    table = (
        "label: gpt\n"
        f"start=2048, size={vol_sectors}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, "
        f'uuid={DATA_PART_GUID}, name="data"\n'
    )
    subprocess.run(["sfdisk", "-q", str(probe)], input=table.encode(), check=True)
    with probe.open("rb") as f:
        (root / "data-head.bin").write_bytes(f.read(2048 * SECTOR))
        f.seek((2048 + vol_sectors) * SECTOR)
        (root / "data-tail.bin").write_bytes(f.read(2048 * SECTOR))
    probe.unlink()
    volume = link_into(data.path, root, "data-volume.img").name  # beside its descriptor
    vm.data_vmdk.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=0badf00d\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n'
        'RW 2048 FLAT "data-head.bin" 0\n'
        f'RW {vol_sectors} FLAT "{volume}" 0\n'
        'RW 2048 FLAT "data-tail.bin" 0\n'
        'ddb.adapterType = "lsilogic"\n'
    )
    vm.vmx.write_text(
        '.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "13"\n'
        'displayName = "testvm"\nguestOS = "windows9srv-64"\n'
        'scsi0.present = "TRUE"\nscsi0.virtualDev = "lsisas1068"\n'
        'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "sys.vmdk"\n'
        'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "data.vmdk"\n'
        'ide1:0.present = "TRUE"\nide1:0.deviceType = "cdrom-image"\n'
        'ide1:0.fileName = "/vmfs/volumes/iso/win.iso"\n'
    )
    (root / "vm.nvram").write_bytes(os.urandom(8684))
    (root / ".complete").touch()
    return vm
