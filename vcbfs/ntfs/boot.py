"""The NTFS boot sector: geometry of the volume and where the MFT starts.

The primary boot sector is sector 0 of the volume; NTFS keeps a backup in the sector just past
the counted sectors (the volume's last sector), used here when the primary is damaged.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from vcbfs.blocks.source import ByteSource
from vcbfs.errors import CorruptError

__all__ = ["BootSector", "read_backup_boot_sector", "read_boot_sector"]

_BOOT = struct.Struct("<3s8sHBH5xB2xH14xQQQbxxxbxxxQ")


@dataclass(frozen=True, slots=True)
class BootSector:
    sector_size: int
    cluster_size: int
    total_sectors: int
    mft_lcn: int
    mftmirr_lcn: int
    record_size: int
    index_record_size: int
    serial: int
    from_backup: bool = False

    @property
    def cluster_count(self) -> int:
        return self.total_sectors * self.sector_size // self.cluster_size


def _size_code(code: int, cluster: int) -> int:
    """Records per cluster count, or (negative) 2**-code bytes."""
    return 1 << -code if code < 0 else code * cluster


def parse_boot_sector(raw: bytes, volume_size: int, source: str) -> BootSector:
    """Parse and check one boot sector; CorruptError says what is wrong with it."""

    def bad(why: str) -> CorruptError:
        return CorruptError(f"NTFS boot sector: {why}", source=source)

    if len(raw) < 512:
        raise bad("truncated")
    (_jump, oem, bps, spc, _reserved, _media, _spt, total, mft, mirr, rec, idx, serial) = (
        _BOOT.unpack_from(raw)
    )
    if oem != b"NTFS    ":
        raise bad(f"not NTFS (OEM id {oem!r})")
    if raw[510:512] != b"\x55\xaa":
        raise bad("no 0x55AA signature")
    if bps not in (256, 512, 1024, 2048, 4096):
        raise bad(f"sector size {bps} is not valid")
    spc = 1 << (256 - spc) if spc > 0x80 else spc  # large clusters use a negative exponent
    if spc == 0 or spc & (spc - 1) or spc * bps > 1 << 21:
        raise bad(f"{spc} sectors per cluster is not valid")
    cluster = spc * bps
    record = _size_code(rec, cluster)
    index = _size_code(idx, cluster)
    if record < 256 or record > 1 << 16 or record & (record - 1) or (record % bps and record > bps):
        raise bad(f"MFT record size {record} is not valid")
    if index < 256 or index > 1 << 16 or index & (index - 1):
        raise bad(f"index record size {index} is not valid")
    if total == 0 or total * bps > volume_size + bps:
        raise bad(f"{total} sectors do not fit the volume of {volume_size} bytes")
    clusters = total * bps // cluster
    if not 0 < mft < clusters or not 0 < mirr < clusters:
        raise bad(f"MFT at cluster {mft} (mirror {mirr}) lies outside the volume")
    return BootSector(bps, cluster, total, mft, mirr, record, index, serial)


def read_boot_sector(volume: ByteSource) -> BootSector:
    """The primary boot sector, or the backup at the volume's end when the primary is bad."""
    try:
        return parse_boot_sector(volume.read_at(0, 512), volume.size, volume.name)
    except CorruptError as primary:
        if volume.size < 1024:
            raise
        try:
            return read_backup_boot_sector(volume)
        except CorruptError:
            raise primary from None


def read_backup_boot_sector(volume: ByteSource) -> BootSector:
    """The backup boot sector alone: for a primary that parses but does not find the MFT."""
    if volume.size < 1024:
        raise CorruptError("NTFS boot sector: no room for a backup", source=volume.name)
    boot = parse_boot_sector(volume.read_at(volume.size - 512, 512), volume.size, volume.name)
    return dataclasses.replace(boot, from_backup=True)
