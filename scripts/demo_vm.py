"""Build the example VM of scripts/demo: ``demo_vm.py DIR`` (re)makes DIR, quietly.

DIR/win.vmx names one disk, DIR/win.vmdk (monolithicSparse): an MBR disk (signature
``SIGNATURE``) whose partition 1, at 1 MiB, is a small NTFS volume made with mkntfs and filled
through ntfs-3g: a SYSTEM hive (tests/windows/hives.py's ``build_system_hive``, written by
hivexregedit) whose MountedDevices maps C: to that partition, and a few user files, one with
a second name (a hard link) and an alternate data stream.  The same steps as the mount tests'
VM (tests/fs/vmfixture.py), at demo size.  DIR is built beside itself and renamed into place,
so an interrupted run leaves the previous VM (or none), never half of one.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.images import run  # noqa: E402
from tests.ntfs.ntfsimages import ntfs3g_mounted  # noqa: E402
from tests.windows.hives import build_system_hive  # noqa: E402

MIB = 1 << 20
SECTOR = 512
SIGNATURE = 0x0DE30C0D
VOLUME_SIZE = 16 * MIB
PART_OFFSET = MIB

FILES = {
    "boot.ini": b"[boot loader]\r\ntimeout=30\r\n",
    "Users/Public/Documents/budget.csv": b"quarter,amount\r\nQ1,1200\r\nQ2,1350\r\n",
    "Users/Public/Downloads/readme.txt": b"Hello from drive C: of the example VM.\r\n",
    "Users/Public/Downloads/setup.exe": b"MZ" + bytes(510),
}
#: Second names (hard links): new name -> existing file
LINKS = {"Users/Public/Downloads/readme-link.txt": "Users/Public/Downloads/readme.txt"}
#: Named streams (ntfs-3g's streams_interface=xattr): file -> {stream: data}
STREAMS = {
    "Users/Public/Downloads/readme.txt": {
        "Zone.Identifier": b"[ZoneTransfer]\r\nZoneId=3\r\n",
    },
}

VMX = """\
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "13"
displayName = "demo-win"
guestOS = "windows9srv-64"
memSize = "2048"
scsi0.present = "TRUE"
scsi0.virtualDev = "lsisas1068"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "win.vmdk"
"""


def system_volume(path: Path, work: Path) -> None:
    """An NTFS volume holding the SYSTEM hive (C: = this partition) and ``FILES``."""
    mounted = {"\\DosDevices\\C:": struct.pack("<IQ", SIGNATURE, PART_OFFSET)}
    hive = build_system_hive(work / "SYSTEM", mounted).read_bytes()
    with path.open("wb") as f:
        f.truncate(VOLUME_SIZE)
    run(
        "mkntfs", "-F", "-Q", "-q", "-s", str(SECTOR), "-c", "4096",
        "-p", str(PART_OFFSET // SECTOR), "-H", "255", "-S", "63", "-L", "SYSTEM", path,
    )  # fmt: skip
    with ntfs3g_mounted(path, "streams_interface=xattr") as mnt:
        config = mnt / "Windows" / "System32" / "config"
        config.mkdir(parents=True)
        (config / "SYSTEM").write_bytes(hive)
        for rel, data in FILES.items():
            (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
            (mnt / rel).write_bytes(data)
        for rel, target in LINKS.items():
            (mnt / rel).hardlink_to(mnt / target)
        for rel, streams in STREAMS.items():
            for name, data in streams.items():
                run("setfattr", "-n", f"user.{name}", "-v", f"0x{data.hex()}", mnt / rel)


def build(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", dir=dest.parent))
    work.chmod(0o755)
    try:
        volume = work / "c.vol"
        system_volume(volume, work)
        raw = work / "win.raw"
        with raw.open("wb") as f:
            f.truncate(PART_OFFSET + VOLUME_SIZE)
        table = (
            f"label: dos\nlabel-id: {SIGNATURE:#010x}\n"
            f"start={PART_OFFSET // SECTOR}, size={VOLUME_SIZE // SECTOR}, type=7, bootable\n"
        )
        subprocess.run(
            ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(raw)],
            input=table.encode(),
            capture_output=True,
            check=True,
        )
        with raw.open("r+b") as f, volume.open("rb") as v:
            f.seek(PART_OFFSET)
            shutil.copyfileobj(v, f, 4 * MIB)
        vmdk = work / "win.vmdk"
        run("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, vmdk)
        for scratch in (raw, volume, work / "SYSTEM"):
            scratch.unlink()
        (work / "win.vmx").write_text(VMX)
        shutil.rmtree(dest, ignore_errors=True)
        work.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: demo_vm.py DIR", file=sys.stderr)
        return 2
    build(Path(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
