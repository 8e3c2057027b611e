r"""A real SYSTEM hive and real disks holding it, for the drive-letter tests.

hivex (Debian's ``libhivex-bin``) edits hives but cannot create one, and ships none, so
``empty_hive()`` writes a minimal empty primary hive by the regf format (msuhanov's "Windows
registry file format specification"): a 4 KiB base block with its XOR-32 checksum and one 4 KiB
hive bin holding the root key node, the security item hivex needs to inherit from when it adds a
key, and one free cell for the rest of the bin.  ``hivexregedit --merge`` then adds the keys of
``REG_TEXT`` (MountedDevices and a few others): so the values are written by an independent
implementation, and read back by regipy (and by ``hivexregedit --export``) in the tests.

``build_letter_images(root)`` makes, with sfdisk, mkntfs and ntfs-3g:

* ``disk0.img``: an MBR disk (signature ``MBR_SIGNATURE``) whose partition 1 is an NTFS volume
  holding the hive at ``Windows/System32/config/SYSTEM`` (MountedDevices calls it C:), and whose
  partition 2 (E:) is an NTFS volume with an empty SYSTEM hive (no MountedDevices key);
* ``disk1.img``: a GPT disk whose partition 1 (GUID ``F_GUID``, so F:) is an empty NTFS volume,
  and whose partition 2 has no letter;
* ``bad.img``: a bare NTFS volume whose SYSTEM hive is damaged (its root subkey list is broken);
* ``short.img``: a bare NTFS volume whose SYSTEM hive is dirty and has lost the last value of
  MountedDevices from F: on (``break_value(hive, SHORT_BROKEN)`` + ``unsynced``).

Everything is cached under ``<cache>/windows-<hash of this file>`` (``<cache>`` as in
``tests.images.cache_dir``), built in a temporary folder and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.images import cache_dir, run

__all__ = [
    "CDROM_PATH",
    "C_OFFSET",
    "E_OFFSET",
    "F_GUID",
    "G2_GUID",
    "GPT_DISK_GUID",
    "LETTER_VALUES",
    "MBR_SIGNATURE",
    "MOUNTED_VALUES",
    "SHORT_BROKEN",
    "VOLUME_NAME",
    "Z_SIGNATURE",
    "LetterImages",
    "break_value",
    "build_letter_images",
    "build_system_hive",
    "corrupt_subkey_list",
    "empty_hive",
    "hivex_export_binary",
    "nk_offset",
    "ntfs3g_mounted",
    "reg_text",
    "regf_checksum",
    "unsynced",
]

MIB = 1 << 20
SECTOR = 512

MBR_SIGNATURE = 0x5EEDC0DE
C_OFFSET = 2048 * SECTOR  # disk0 partition 1
E_OFFSET = (2048 + 32 * MIB // SECTOR) * SECTOR  # disk0 partition 2, right after partition 1
GPT_DISK_GUID = uuid.UUID("0d15c0de-1111-4222-8333-444455556666")
F_GUID = uuid.UUID("6f3b1c2a-9d4e-4f10-8a2b-3c4d5e6f7081")  # disk1 partition 1
G2_GUID = uuid.UUID("a1b2c3d4-e5f6-4789-9abc-def012345678")  # disk1 partition 2: no letter
Z_SIGNATURE = 0xDEADBEEF  # a disk that is not in the VM
CDROM_PATH = (
    "\\??\\IDE#CdRomNECVMWar_VMware_IDE_CDR10_______________1.00____"
    "#3031303030303030303030303030303030303130#{53f5630d-b6bf-11d0-94f2-00a0c91efb8b}"
)
VOLUME_NAME = "\\??\\Volume{3c9d2ab4-6e1f-11ef-9a40-806e6f6e6963}"


def _mbr_value(signature: int, offset: int) -> bytes:
    return struct.pack("<IQ", signature, offset)


LETTER_VALUES: dict[str, bytes] = {
    "\\DosDevices\\C:": _mbr_value(MBR_SIGNATURE, C_OFFSET),
    "\\DosDevices\\D:": CDROM_PATH.encode("utf-16-le"),
    "\\DosDevices\\E:": _mbr_value(MBR_SIGNATURE, E_OFFSET),
    "\\DosDevices\\F:": b"DMIO:ID:" + F_GUID.bytes_le,
    "\\DosDevices\\Z:": _mbr_value(Z_SIGNATURE, C_OFFSET),
}
"""The drive-letter values of the test hive's MountedDevices."""

SHORT_BROKEN = "\\DosDevices\\F:"
"""The MountedDevices value broken in ``short.img``'s hive."""

MOUNTED_VALUES: dict[str, bytes] = {
    **LETTER_VALUES,
    VOLUME_NAME: _mbr_value(MBR_SIGNATURE, C_OFFSET),
}
"""Every value of the test hive's MountedDevices (the letters and one volume GUID name)."""


# --- an empty hive, by the format ----------------------------------------------------------

_FILETIME = 133_000_000_000_000_000  # 2022-06-18, any plausible time will do
_NONE = 0xFFFFFFFF


def regf_checksum(block: bytes | bytearray) -> int:
    """The XOR-32 of the first 508 bytes of a base block."""
    value = 0
    for (dword,) in struct.iter_unpack("<I", bytes(block[:508])):
        value ^= dword
    return value


def _cell(payload: bytes) -> bytes:
    """An allocated cell: negative size (8-aligned, counting the size field), then the data."""
    size = (4 + len(payload) + 7) // 8 * 8
    return struct.pack("<i", -size) + payload.ljust(size - 4, b"\0")


def empty_hive(root_name: str = "ROOT", file_name: str = "SYSTEM") -> bytes:
    """A minimal, valid, empty primary hive file (8 KiB): a root key and nothing else."""
    name = root_name.encode("ascii")
    root = 32  # the first cell of the first hive bin, offsets counted from the first bin
    nk_size = len(_cell(bytes(76 + len(name))))
    sk = root + nk_size
    nk = struct.pack(
        "<2sHQIIIIIIIIIIIIIIIHH",
        b"nk",
        0x2C,  # KEY_HIVE_ENTRY | KEY_NO_DELETE | KEY_COMP_NAME
        _FILETIME,
        0,  # access bits
        _NONE,  # parent: none for the root
        0,  # subkeys
        0,  # volatile subkeys
        _NONE,  # subkey list
        _NONE,  # volatile subkey list
        0,  # values
        _NONE,  # value list
        sk,  # security item
        _NONE,  # class name
        0,
        0,
        0,
        0,
        0,  # largest name/class/value lengths, work var
        len(name),
        0,  # class name length
    )
    # A self-relative security descriptor with a NULL DACL (SE_SELF_RELATIVE | SE_DACL_PRESENT).
    sd = struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 0)
    sk_cell = struct.pack("<2sHIIII", b"sk", 0, sk, sk, 1, len(sd)) + sd  # a one-item list
    cells = _cell(nk + name) + _cell(sk_cell)
    free = 4096 - 32 - len(cells)
    hbin = (
        struct.pack("<4sIIQQI", b"hbin", 0, 4096, 0, _FILETIME, 0)
        + cells
        + struct.pack("<i", free).ljust(free, b"\0")
    )
    base = bytearray(4096)
    struct.pack_into(
        "<4sIIQIIIIIII", base, 0, b"regf", 1, 1, _FILETIME, 1, 5, 0, 1, root, len(hbin), 1
    )
    base[48:112] = file_name.encode("utf-16-le")[:64].ljust(64, b"\0")
    struct.pack_into("<I", base, 508, regf_checksum(base))
    return bytes(base) + hbin


# --- the SYSTEM hive, written by hivex -----------------------------------------------------


def _hex(data: bytes) -> str:
    return ",".join(f"{b:02x}" for b in data)


def _reg_name(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def reg_text(mounted: dict[str, bytes]) -> str:
    """A .reg file (regedit 5 format) for ``hivexregedit --merge --prefix HKLM\\SYSTEM``."""
    lines = ["Windows Registry Editor Version 5.00", ""]
    lines.append("[HKEY_LOCAL_MACHINE\\SYSTEM\\MountedDevices]")
    lines += [f'"{_reg_name(n)}"=hex:{_hex(v)}' for n, v in mounted.items()]
    lines += [
        "",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\Select]",
        '"Current"=dword:00000001',
        '"LastKnownGood"=dword:00000002',
        "",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001]",
        "",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Control]",
        "",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Control\\ComputerName]",
        "",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Control\\ComputerName\\ComputerName]",
        '"ComputerName"="TESTVM-01"',
        "",
    ]
    return "\r\n".join(lines)


def build_system_hive(path: Path, mounted: dict[str, bytes] = MOUNTED_VALUES) -> Path:
    """Write a SYSTEM hive with ``mounted`` as MountedDevices (and the keys of ``reg_text``)."""
    path.write_bytes(empty_hive())
    reg = path.with_suffix(".reg")
    reg.write_text(reg_text(mounted), newline="")
    run("hivexregedit", "--merge", "--prefix", "HKEY_LOCAL_MACHINE\\SYSTEM", path, reg)
    reg.unlink()
    return path


def hivex_export_binary(path: Path, key: str) -> dict[str, bytes]:
    """hivex's reading of the binary values of ``key``: ``hivexregedit --export``, parsed."""
    text = run("hivexregedit", "--export", path, key)
    text = text.replace("\\\r\n", "").replace("\\\n", "")  # joined continuation lines
    out: dict[str, bytes] = {}
    for line in text.splitlines():
        if not line.startswith('"') or '"=hex(3):' not in line:
            continue
        quoted, data = line.split('"=hex(3):', 1)
        name = quoted[1:].replace('\\"', '"').replace("\\\\", "\\")
        out[name] = bytes(int(b, 16) for b in data.replace(" ", "").split(",") if b)
    return out


def corrupt_subkey_list(hive: bytes) -> bytes:
    """``hive`` with the signature of its root key's subkey list overwritten.

    Every key lookup goes through that list, so a reader cannot find MountedDevices any more.
    regipy does not notice: it reads a list with an unknown signature as an empty one.
    """
    buf = bytearray(hive)
    root = 4096 + struct.unpack_from("<I", buf, 36)[0]
    subkeys = struct.unpack_from("<I", buf, root + 4 + 28)[0]
    at = 4096 + subkeys + 4
    assert buf[at : at + 2] in (b"lf", b"lh", b"li", b"ri"), buf[at : at + 2]
    buf[at : at + 2] = b"\xa5\x5a"
    return bytes(buf)


def nk_offset(hive: bytes, name: str) -> int:
    """File offset of the 'nk' signature of the key named ``name`` (an ASCII name)."""
    at = hive.index(name.encode("ascii")) - 76
    assert hive[at : at + 2] == b"nk", hive[at : at + 2]
    return at


def break_value(hive: bytes, name: str) -> tuple[bytes, list[str]]:
    """``hive`` with the MountedDevices value list entry of ``name`` aimed at a key node.

    regipy logs that record as bad and silently ends the value list there.  Returns the damaged
    hive and the names of the values that are lost (``name`` and those after it, in hive order).
    """
    buf = bytearray(hive)
    nk = nk_offset(hive, "MountedDevices")
    count, values = struct.unpack_from("<II", buf, nk + 36)
    names = []
    for i in range(count):
        vk = 4096 + struct.unpack_from("<I", buf, 4096 + values + 4 + 4 * i)[0] + 4
        assert buf[vk : vk + 2] == b"vk"
        name_len = struct.unpack_from("<H", buf, vk + 2)[0]
        names.append(bytes(buf[vk + 20 : vk + 20 + name_len]).decode("ascii"))
    i = names.index(name)
    struct.pack_into("<I", buf, 4096 + values + 4 + 4 * i, nk_offset(hive, "ROOT") - 4096 - 4)
    return bytes(buf), names[i:]


def unsynced(hive: bytes) -> bytes:
    """``hive`` marked as not cleanly written: primary sequence number one ahead, checksum fixed."""
    buf = bytearray(hive)
    struct.pack_into("<I", buf, 4, struct.unpack_from("<I", buf, 8)[0] + 1)
    struct.pack_into("<I", buf, 508, regf_checksum(buf))
    return bytes(buf)


# --- NTFS volumes and disks ----------------------------------------------------------------


@contextlib.contextmanager
def ntfs3g_mounted(image: Path) -> Iterator[Path]:
    """``image`` mounted read-write by ntfs-3g (``-o no_detach``, in the background).

    On exit: unmount, then wait for ntfs-3g to exit (it flushes the volume), also on failure.
    """
    mnt = Path(tempfile.mkdtemp(prefix="vcbfs-win-"))
    proc = subprocess.Popen(
        ["ntfs-3g", "-o", "no_detach", os.fspath(image), os.fspath(mnt)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ntfs-3g failed: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("ntfs-3g: no mount after 30 s")
            time.sleep(0.01)
        yield mnt
    finally:
        for _ in range(50):
            if not os.path.ismount(mnt):
                break
            if subprocess.run(["umount", mnt], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        with contextlib.suppress(OSError):
            mnt.rmdir()


def _ntfs_volume(path: Path, size: int, offset_sectors: int, hive: bytes | None) -> Path:
    """A bare NTFS volume file of ``size`` bytes, with ``hive`` as its SYSTEM hive if given."""
    with open(path, "wb") as f:
        f.truncate(size)
    run(
        "mkntfs", "-F", "-Q", "-s", str(SECTOR), "-c", "4096", "-p", str(offset_sectors),
        "-H", "255", "-S", "63", "-L", path.stem, path,
    )  # fmt: skip
    if hive is not None:
        with ntfs3g_mounted(path) as mnt:
            config = mnt / "Windows" / "System32" / "config"
            config.mkdir(parents=True)
            (config / "SYSTEM").write_bytes(hive)
            (config / "SOFTWARE").write_bytes(b"not the hive we want")
    return path


def _place(disk: Path, volume: Path, offset: int) -> None:
    """Copy ``volume`` into ``disk`` at byte ``offset`` (like ``dd conv=notrunc``)."""
    with open(volume, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(offset)
        shutil.copyfileobj(src, dst, 4 * MIB)
    volume.unlink()


def _sfdisk(path: Path, size: int, script: str) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never", str(path)],
        input=script,
        text=True,
        capture_output=True,
        check=True,
    )


MBR_SCRIPT = f"""label: dos
label-id: {MBR_SIGNATURE:#010x}

start=2048, size={32 * MIB // SECTOR}, type=7
start={E_OFFSET // SECTOR}, size={4 * MIB // SECTOR}, type=7
"""
"""disk0: 40 MiB, NTFS C: with the hive and NTFS E: with an empty hive."""

BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
GPT_SCRIPT = f"""label: gpt
label-id: {GPT_DISK_GUID}

start=2048, size={8 * MIB // SECTOR}, type={BASIC_DATA}, uuid={F_GUID}
start={2048 + 8 * MIB // SECTOR}, size={4 * MIB // SECTOR}, type={BASIC_DATA}, uuid={G2_GUID}
"""
"""disk1: 16 MiB GPT, an empty NTFS volume (F:) and a partition without a letter."""


@dataclass(frozen=True)
class LetterImages:
    """The built files: the hive, two disks and two bare volumes with damaged hives."""

    hive: Path
    disk0: Path
    disk1: Path
    bad: Path
    short: Path


def build_letter_images(root: Path | None = None) -> LetterImages:
    """Build (or reuse) the images described in the module docstring."""
    if root is None:
        key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
        root = cache_dir(f"windows-{key}")
    images = LetterImages(
        *(root / n for n in ("SYSTEM", "disk0.img", "disk1.img", "bad.img", "short.img"))
    )
    if (root / ".complete").exists():
        return images
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        hive = build_system_hive(work / "SYSTEM").read_bytes()

        _sfdisk(work / "disk0.img", 40 * MIB, MBR_SCRIPT)
        vol = _ntfs_volume(work / "c.vol", 32 * MIB, C_OFFSET // SECTOR, hive)
        _place(work / "disk0.img", vol, C_OFFSET)
        vol = _ntfs_volume(work / "e.vol", 4 * MIB, E_OFFSET // SECTOR, empty_hive())
        _place(work / "disk0.img", vol, E_OFFSET)

        _sfdisk(work / "disk1.img", 16 * MIB, GPT_SCRIPT)
        vol = _ntfs_volume(work / "f.vol", 8 * MIB, 2048, None)
        _place(work / "disk1.img", vol, 2048 * SECTOR)

        _ntfs_volume(work / "bad.img", 8 * MIB, 0, corrupt_subkey_list(hive))
        _ntfs_volume(work / "short.img", 8 * MIB, 0, unsynced(break_value(hive, SHORT_BROKEN)[0]))
        (work / ".complete").touch()
        if root.exists():
            shutil.rmtree(root)
        work.rename(root)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return images
