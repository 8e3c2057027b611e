"""Partition tables (MBR with its EBR chain, and GPT) of a virtual disk, read through a ByteSource.

A backup proxy mounts the file systems *inside* a disk, so it first has to find where they are.
This module reads the partition table at the start of the disk and lists the partitions as byte
ranges; ``Partition.source`` turns one into a ByteSource for the file-system layer.

Everything here reads guest-controlled bytes, so every count, offset and size taken from the disk
is checked before use, loops are bounded, nothing large is allocated on the disk's say-so, and
bad input only ever raises ``CorruptError`` or ``UnsupportedError``.  Where a table is damaged
but still usable, the parser keeps what it can read and says what it found in
``PartitionTable.notes`` rather than failing: a backup should save every partition that exists.

Choices, in short:

* Numbering follows Linux: MBR primaries are 1-4 by slot (an empty slot leaves a gap, and the
  extended partition uses its slot number without being listed), logical partitions are 5, 6, ...
  in chain order; GPT partitions are their entry index + 1.
* ``Partition.type`` is ``"0x07"`` style (two lower-case hex digits) for MBR and the type GUID in
  ``str(uuid.UUID)`` form (lower case) for GPT.
* A partition that starts past the end of the disk is dropped with a note; one that runs past the
  end is clipped to the disk with a note (a grown-then-shrunk or truncated image still backs up).
* The EBR chain is walked with a visited set and a cap of ``MAX_EBRS`` EBRs.  A loop, a link
  outside the extended partition or the disk, or an EBR without a boot signature ends the chain
  with a note; the primaries and the logicals found so far are kept.  A broken chain never
  raises: the primaries are still good.
* A protective (or hybrid) MBR entry of type 0xEE means GPT, and GPT is preferred.  A bad primary
  GPT header or entry array falls back to the backup (at the primary's alternate LBA if that is
  sane, else at the last LBA of the disk) with a note; both bad raises ``CorruptError``.
* A disk without the 0x55AA boot signature is ``scheme="none"``, unless a valid GPT is found at
  LBA 1 anyway (a zeroed MBR), which is used with a note.
* Windows dynamic disks (LDM: MBR type 0x42, the two GPT LDM types) are listed with
  ``supported=False``; their ``source()`` raises ``UnsupportedError``.
* ``sector_size=None`` (the default) means 512 unless a GPT header is found at byte 4096 (or a
  backup header in the last 4096-byte sector) and not at 512, which selects 4096-byte sectors.
  MBR tables are always read with 512-byte sectors unless a size is given.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Literal

from vcbfs.blocks.source import ByteSource, SliceSource, read_exact
from vcbfs.errors import CorruptError, NotFoundError, UnsupportedError

__all__ = [
    "GPT_LDM_DATA",
    "GPT_LDM_METADATA",
    "MAX_EBRS",
    "MAX_GPT_ENTRIES",
    "Partition",
    "PartitionTable",
    "read_partitions",
]

Scheme = Literal["mbr", "gpt", "none"]

MAX_EBRS = 128
"""Most EBRs walked over all extended partitions (so at most this many logical partitions)."""

MAX_GPT_ENTRIES = 4096
"""Largest GPT entry count accepted (the usual count is 128)."""

MAX_GPT_ENTRY_SIZE = 4096
MAX_GPT_ARRAY_BYTES = 1 << 20
"""Largest GPT entry array read (the usual array is 16 KiB)."""

LDM_REASON = "Windows dynamic disk (LDM) is not supported yet"

GPT_LDM_METADATA = "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3"
GPT_LDM_DATA = "af9b60a0-1431-4f62-bc68-3311714a69ad"

_MBR_SIGNATURE = b"\x55\xaa"
_MBR_PROTECTIVE = 0xEE
_MBR_LDM = 0x42
_MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
_MBR_ENTRY = struct.Struct("<B3sB3sII")

_GPT_SIGNATURE = b"EFI PART"
_GPT_HEADER = struct.Struct("<8sIII4xQQQQ16sQIII")
_GPT_MIN_HEADER = 92
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")

MBR_TYPE_NAMES: dict[int, str] = {
    0x01: "FAT12",
    0x04: "FAT16 <32M",
    0x05: "Extended",
    0x06: "FAT16",
    0x07: "NTFS/exFAT/HPFS",
    0x0B: "W95 FAT32",
    0x0C: "W95 FAT32 (LBA)",
    0x0E: "W95 FAT16 (LBA)",
    0x0F: "W95 extended (LBA)",
    0x11: "Hidden FAT12",
    0x12: "Compaq diagnostics",
    0x14: "Hidden FAT16 <32M",
    0x16: "Hidden FAT16",
    0x17: "Hidden NTFS/HPFS",
    0x1B: "Hidden W95 FAT32",
    0x1C: "Hidden W95 FAT32 (LBA)",
    0x1E: "Hidden W95 FAT16 (LBA)",
    0x27: "Windows recovery environment",
    0x42: "Windows LDM (dynamic disk)",
    0x82: "Linux swap / Solaris",
    0x83: "Linux",
    0x84: "Hibernation",
    0x85: "Linux extended",
    0x86: "NTFS volume set",
    0x87: "NTFS volume set",
    0x8E: "Linux LVM",
    0xA5: "FreeBSD",
    0xA6: "OpenBSD",
    0xA8: "Darwin UFS",
    0xA9: "NetBSD",
    0xAF: "HFS/HFS+",
    0xBE: "Solaris boot",
    0xBF: "Solaris",
    0xDE: "Dell utility",
    0xEA: "Linux extended boot",
    0xEE: "GPT protective",
    0xEF: "EFI System",
    0xFB: "VMware VMFS",
    0xFC: "VMware VMKCORE",
    0xFD: "Linux RAID autodetect",
}

GPT_TYPE_NAMES: dict[str, str] = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
    "024dee41-33e7-11d3-9d69-0008c781f39f": "MBR partition scheme",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    GPT_LDM_METADATA: "Windows LDM metadata",
    GPT_LDM_DATA: "Windows LDM data",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery environment",
    "e75caf8f-f680-4cee-afa3-b001e56efc2d": "Microsoft Storage Spaces",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "ca7d7ccb-63ed-4c53-861c-1742536059cc": "Linux LUKS",
    "44479540-f297-41b2-9af7-d131d5f0458a": "Linux root (x86)",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "b921b045-1df0-41c3-af44-4c6f280d3fae": "Linux root (ARM-64)",
    "8484680c-9521-48c6-9c11-b0720656f69e": "Linux /usr (x86-64)",
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux home",
    "3b8f8425-20e0-4f3b-907f-1a25a76f98e8": "Linux server data",
    "4d21b016-b534-45c2-a9fb-5c16e091fd2d": "Linux variable data",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot",
    "8da63339-0007-60c0-c436-083ac8230908": "Linux reserved",
    "516e7cb4-6ecf-11d6-8ff8-00022d09712b": "FreeBSD data",
    "83bd6b9d-7f41-11dc-be0b-001560b84f0f": "FreeBSD boot",
    "516e7cb5-6ecf-11d6-8ff8-00022d09712b": "FreeBSD swap",
    "516e7cb6-6ecf-11d6-8ff8-00022d09712b": "FreeBSD UFS",
    "516e7cba-6ecf-11d6-8ff8-00022d09712b": "FreeBSD ZFS",
    "48465300-0000-11aa-aa11-00306543ecac": "Apple HFS/HFS+",
    "7c3457ef-0000-11aa-aa11-00306543ecac": "Apple APFS",
    "6a898cc3-1dd2-11b2-99a6-080020736631": "Solaris /usr & Apple ZFS",
    "aa31e02a-400f-11db-9590-000c2911d1b8": "VMware VMFS",
    "9d275380-40ad-11db-bf97-000c2911d1b8": "VMware diagnostic",
    "9198effc-31c0-11db-8f78-000c2911d1b8": "VMware reserved",
    "381cfccc-7288-11e0-92ee-000c2911d0b2": "VMware Virtual SAN",
}

_GPT_LDM_TYPES = frozenset({GPT_LDM_METADATA, GPT_LDM_DATA})


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition: a byte range of the disk and what the table says about it.

    ``start`` and ``size`` are in bytes.  ``type`` is ``"0x07"`` style for MBR and the lower-case
    type GUID for GPT; ``type_name`` is a human name (``"unknown"`` when not known).  ``guid``,
    ``name`` and ``attributes`` are GPT only; ``bootable`` and ``logical`` are MBR only.
    ``supported`` is False (with a ``reason``) for partitions vcbfs cannot read, such as LDM.
    """

    number: int
    start: int
    size: int
    scheme: Literal["mbr", "gpt"]
    type: str
    type_name: str
    guid: uuid.UUID | None = None
    name: str = ""
    bootable: bool = False
    attributes: int = 0
    logical: bool = False
    supported: bool = True
    reason: str = ""

    @property
    def end(self) -> int:
        """The byte just past the partition."""
        return self.start + self.size

    def source(self, disk: ByteSource) -> ByteSource:
        """The partition's bytes as a source named ``<disk>#p<number>``.

        Raises UnsupportedError for a partition vcbfs cannot read (a dynamic-disk volume).
        """
        name = f"{disk.name}#p{self.number}"
        if not self.supported:
            raise UnsupportedError(self.reason or "partition is not supported", source=name)
        return SliceSource(disk, self.start, self.size, name=name)


@dataclass(frozen=True, slots=True)
class PartitionTable:
    """What ``read_partitions`` found.

    ``mbr_signature`` (the NT disk signature at 0x1B8) is set for MBR disks, ``disk_guid`` for
    GPT disks.  ``notes`` describe damage that was worked around, in plain words.
    """

    scheme: Scheme
    mbr_signature: int | None
    disk_guid: uuid.UUID | None
    partitions: list[Partition]
    notes: list[str] = field(default_factory=list)
    sector_size: int = 512

    def partition(self, number: int) -> Partition:
        """The partition numbered ``number``, or NotFoundError."""
        for p in self.partitions:
            if p.number == number:
                return p
        raise NotFoundError(f"no partition {number} on this disk")


def read_partitions(disk: ByteSource, sector_size: int | None = None) -> PartitionTable:
    """Read the partition table of ``disk``; see the module docstring for the rules.

    ``sector_size`` forces the logical sector size (512 or 4096, any power of two 512..65536);
    None detects 4096-byte-sector GPT disks and otherwise uses 512.
    """
    if sector_size is not None and (
        sector_size < 512 or sector_size > 65536 or sector_size & (sector_size - 1)
    ):
        raise UnsupportedError(f"sector size {sector_size} is not supported", source=disk.name)
    if disk.size < 512:
        return PartitionTable("none", None, None, [], ["disk is smaller than one sector"])
    mbr = read_exact(disk, 0, 512, "master boot record")
    notes: list[str] = []

    if mbr[510:512] != _MBR_SIGNATURE:
        ss = sector_size or _guess_sector_size(disk)
        if disk.read_at(ss, 8) == _GPT_SIGNATURE:
            try:
                guid, parts, gpt_notes = _read_gpt(disk, ss)
            except CorruptError as exc:
                notes.append(f"no MBR boot signature, and no valid GPT: {exc.message}")
            else:
                notes.append("no MBR boot signature, but a valid GPT; using the GPT")
                return PartitionTable("gpt", None, guid, parts, notes + gpt_notes, ss)
        return PartitionTable("none", None, None, [], notes, sector_size or 512)

    entries = [_MBR_ENTRY.unpack_from(mbr, 446 + 16 * i) for i in range(4)]
    types = [e[2] for e in entries]
    if _MBR_PROTECTIVE in types:
        others = sum(1 for e in entries if e[2] not in (0, _MBR_PROTECTIVE) and e[5])
        if others:
            notes.append(f"hybrid MBR ({others} entries besides the GPT protective one); using GPT")
        ss = sector_size or _guess_sector_size(disk)
        guid, parts, gpt_notes = _read_gpt(disk, ss)
        return PartitionTable("gpt", None, guid, parts, notes + gpt_notes, ss)

    ss = sector_size or 512
    if any(e[0] not in (0x00, 0x80) for e in entries):
        notes.append(
            "sector 0 has a boot signature but invalid partition status bytes "
            "(an unpartitioned volume boot sector?); no partition table"
        )
        return PartitionTable("none", None, None, [], notes, ss)

    signature = struct.unpack_from("<I", mbr, 0x1B8)[0]
    parts = _read_mbr(disk, ss, entries, notes)
    return PartitionTable("mbr", signature, None, parts, notes, ss)


def _guess_sector_size(disk: ByteSource) -> int:
    """4096 if a GPT header is where a 4Kn disk has one and not where a 512 disk has one."""
    if disk.read_at(512, 8) == _GPT_SIGNATURE:
        return 512
    if disk.read_at(4096, 8) == _GPT_SIGNATURE:
        return 4096
    last512 = (disk.size // 512 - 1) * 512
    last4k = (disk.size // 4096 - 1) * 4096
    if (
        last4k > 0
        and disk.read_at(last512, 8) != _GPT_SIGNATURE
        and disk.read_at(last4k, 8) == _GPT_SIGNATURE
    ):
        return 4096
    return 512


# --- MBR ---------------------------------------------------------------------------------------


def _clip(what: str, start: int, size: int, limit: int, limit_name: str, notes: list[str]) -> int:
    """``size`` clipped so the range ends by ``limit``, with a note when it had to be."""
    if start + size > limit:
        notes.append(
            f"{what} runs {start + size - limit} bytes past the end of the {limit_name}; "
            "clipped to what exists"
        )
        return limit - start
    return size


def _mbr_partition(
    number: int, start: int, size: int, ptype: int, status: int, logical: bool
) -> Partition:
    ldm = ptype == _MBR_LDM
    return Partition(
        number=number,
        start=start,
        size=size,
        scheme="mbr",
        type=f"0x{ptype:02x}",
        type_name=MBR_TYPE_NAMES.get(ptype, "unknown"),
        bootable=status == 0x80,
        logical=logical,
        supported=not ldm,
        reason=LDM_REASON if ldm else "",
    )


def _read_mbr(
    disk: ByteSource,
    ss: int,
    entries: list[tuple[int, bytes, int, bytes, int, int]],
    notes: list[str],
) -> list[Partition]:
    parts: list[Partition] = []
    extended: list[tuple[int, int, int]] = []  # (slot number, start LBA, sectors)
    for slot, (status, _chs1, ptype, _chs2, lba, sectors) in enumerate(entries, start=1):
        if ptype == 0 or sectors == 0:
            continue
        start = lba * ss
        if lba == 0:
            notes.append(f"partition {slot} starts at sector 0 (over the MBR); ignored")
            continue
        if start >= disk.size:
            notes.append(f"partition {slot} starts past the end of the disk; ignored")
            continue
        size = _clip(f"partition {slot}", start, sectors * ss, disk.size, "disk", notes)
        if ptype in _MBR_EXTENDED:
            extended.append((slot, lba, sectors))
            continue
        parts.append(_mbr_partition(slot, start, size, ptype, status, logical=False))
    if len(extended) > 1:
        notes.append(f"{len(extended)} extended partitions in the MBR; walking each")
    visited: set[int] = set()
    number = 5
    for slot, lba, sectors in extended:
        logicals = _walk_ebrs(disk, ss, slot, lba, sectors, number, visited, notes)
        parts.extend(logicals)
        number += len(logicals)
    return parts


def _walk_ebrs(
    disk: ByteSource,
    ss: int,
    slot: int,
    ext_lba: int,
    ext_sectors: int,
    number: int,
    visited: set[int],
    notes: list[str],
) -> list[Partition]:
    """The logical partitions of the extended partition in ``slot``, numbered from ``number``.

    Each EBR's first non-extended entry is a logical partition (start relative to that EBR); its
    first extended entry links to the next EBR (start relative to the extended partition).
    """
    ext_end = ext_lba + ext_sectors  # in sectors
    disk_sectors = disk.size // ss
    found: list[Partition] = []
    ebr = ext_lba
    for _hop in range(MAX_EBRS + 1):  # a backstop: the visited set and the cap stop it first
        if ebr in visited:
            notes.append(
                f"EBR chain of extended partition {slot} loops back to sector {ebr}; "
                f"stopped after {len(found)} logical partitions"
            )
            break
        if not ext_lba <= ebr < ext_end or ebr >= disk_sectors:
            notes.append(
                f"EBR chain of extended partition {slot} links to sector {ebr}, outside the "
                f"extended partition or the disk; stopped after {len(found)} logical partitions"
            )
            break
        if len(visited) >= MAX_EBRS:
            notes.append(f"more than {MAX_EBRS} EBRs; stopped the chain")
            break
        visited.add(ebr)
        data = disk.read_at(ebr * ss, 512)
        if len(data) < 512 or data[510:512] != _MBR_SIGNATURE:
            notes.append(f"EBR at sector {ebr} has no boot signature; chain stopped")
            break
        entries = [_MBR_ENTRY.unpack_from(data, 446 + 16 * i) for i in range(4)]
        data_entry = next(
            (e for e in entries if e[2] != 0 and e[5] != 0 and e[2] not in _MBR_EXTENDED), None
        )
        link = next((e for e in entries if e[2] in _MBR_EXTENDED and e[5] != 0), None)
        if data_entry is not None:
            status, _c1, ptype, _c2, rel, sectors = data_entry
            lba = ebr + rel
            what = f"logical partition in the EBR at sector {ebr}"
            if rel == 0:
                notes.append(f"{what} starts on its own EBR; ignored")
            elif lba >= ext_end or lba >= disk_sectors:
                notes.append(f"{what} starts outside its extended partition or the disk; ignored")
            else:
                if lba + sectors > ext_end:
                    notes.append(f"{what} runs past the end of its extended partition")
                start = lba * ss
                size = _clip(f"partition {number}", start, sectors * ss, disk.size, "disk", notes)
                found.append(_mbr_partition(number, start, size, ptype, status, logical=True))
                number += 1
        if link is None:
            break
        ebr = ext_lba + link[4]
    return found


# --- GPT ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _GptHeader:
    lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: uuid.UUID
    entries_lba: int
    count: int
    entry_size: int
    entries_crc: int


def _read_gpt_header(disk: ByteSource, lba: int, ss: int) -> _GptHeader:
    """The GPT header at ``lba``, fully checked; CorruptError says what is wrong."""
    where = f"GPT header at LBA {lba}"
    sectors = disk.size // ss
    if lba < 1 or lba >= sectors:
        raise CorruptError(f"{where} would lie outside the disk")
    raw = read_exact(disk, lba * ss, ss, where)
    if raw[:8] != _GPT_SIGNATURE:
        raise CorruptError(f"{where} has no 'EFI PART' signature")
    (_sig, revision, hsize, hcrc, my_lba, alt_lba, first, last, guid, elba, count, esize, ecrc) = (
        _GPT_HEADER.unpack_from(raw)
    )
    if revision >> 16 != 1:
        raise CorruptError(f"{where} has unknown revision {revision:#010x}")
    if not _GPT_MIN_HEADER <= hsize <= ss:
        raise CorruptError(f"{where} has a bad header size {hsize}")
    zeroed = raw[:16] + b"\0\0\0\0" + raw[20:hsize]
    if zlib.crc32(zeroed) != hcrc:
        raise CorruptError(f"{where} is corrupt (CRC mismatch)")
    if my_lba != lba:
        raise CorruptError(f"{where} says it is at LBA {my_lba}")
    if first > last:
        raise CorruptError(f"{where} has an empty usable area ({first}..{last})")
    if not 0 < count <= MAX_GPT_ENTRIES:
        raise CorruptError(f"{where} has a bad partition entry count {count}")
    if not 128 <= esize <= MAX_GPT_ENTRY_SIZE or esize % 8:
        raise CorruptError(f"{where} has a bad partition entry size {esize}")
    array_bytes = count * esize
    if array_bytes > MAX_GPT_ARRAY_BYTES:
        raise CorruptError(f"{where} has a partition entry array of {array_bytes} bytes")
    array_sectors = -(-array_bytes // ss)
    if elba < 1 or elba + array_sectors > sectors:
        raise CorruptError(f"{where} puts its partition entries outside the disk (LBA {elba})")
    if elba <= lba < elba + array_sectors:
        raise CorruptError(f"{where} puts its partition entries over itself (LBA {elba})")
    return _GptHeader(lba, alt_lba, first, last, uuid.UUID(bytes_le=guid), elba, count, esize, ecrc)


def _read_gpt_entries(disk: ByteSource, hdr: _GptHeader, ss: int) -> bytes:
    """The header's partition entry array, its CRC checked."""
    n = hdr.count * hdr.entry_size
    array = read_exact(disk, hdr.entries_lba * ss, n, "GPT partition entry array")
    if zlib.crc32(array) != hdr.entries_crc:
        raise CorruptError(
            f"GPT partition entry array at LBA {hdr.entries_lba} is corrupt (CRC mismatch)"
        )
    return array


def _read_gpt(disk: ByteSource, ss: int) -> tuple[uuid.UUID, list[Partition], list[str]]:
    """Disk GUID, partitions and notes of a GPT disk, using the backup if the primary is bad."""
    notes: list[str] = []
    last_lba = disk.size // ss - 1
    primary: _GptHeader | None = None
    try:
        primary = _read_gpt_header(disk, 1, ss)
        array = _read_gpt_entries(disk, primary, ss)
    except CorruptError as exc:
        primary_error = exc.message
    else:
        _check_backup(disk, primary, ss, last_lba, notes)
        return primary.disk_guid, _gpt_partitions(disk, primary, array, ss, notes), notes

    candidates = []
    if primary is not None and 1 < primary.alternate_lba <= last_lba:
        candidates.append(primary.alternate_lba)
    if last_lba > 1 and last_lba not in candidates:
        candidates.append(last_lba)
    backup_errors = []
    for lba in candidates:
        try:
            backup = _read_gpt_header(disk, lba, ss)
            array = _read_gpt_entries(disk, backup, ss)
        except CorruptError as exc:
            backup_errors.append(exc.message)
            continue
        notes.append(
            f"primary GPT is unusable: {primary_error}; using the backup header at LBA {lba}"
        )
        return backup.disk_guid, _gpt_partitions(disk, backup, array, ss, notes), notes
    tried = "; ".join(backup_errors) or "no place for a backup header"
    raise CorruptError(f"no valid GPT: primary: {primary_error}; backup: {tried}", source=disk.name)


def _check_backup(
    disk: ByteSource, primary: _GptHeader, ss: int, last_lba: int, notes: list[str]
) -> None:
    """Notes about the backup GPT when the primary is good (it is not needed, only reported)."""
    alt = primary.alternate_lba
    if not 1 < alt <= last_lba:
        notes.append(f"primary GPT header names backup LBA {alt}, outside the disk")
        return
    try:
        _read_gpt_entries(disk, _read_gpt_header(disk, alt, ss), ss)
    except CorruptError as exc:
        notes.append(f"backup GPT is unusable: {exc.message}; the primary is fine")
        return
    if alt < last_lba:
        notes.append(
            f"backup GPT header is at LBA {alt}, before the last LBA {last_lba} "
            "(the disk was probably grown)"
        )


def _gpt_partitions(
    disk: ByteSource, hdr: _GptHeader, array: bytes, ss: int, notes: list[str]
) -> list[Partition]:
    parts: list[Partition] = []
    for index in range(hdr.count):
        tguid, pguid, first, last, attrs, raw_name = _GPT_ENTRY.unpack_from(
            array, index * hdr.entry_size
        )
        if tguid == bytes(16):
            continue
        number = index + 1
        if last < first:
            notes.append(f"GPT partition {number} ends (LBA {last}) before it starts; ignored")
            continue
        if first < hdr.first_usable or last > hdr.last_usable:
            notes.append(
                f"GPT partition {number} (LBA {first}..{last}) lies outside the usable area "
                f"LBA {hdr.first_usable}..{hdr.last_usable}"
            )
        start = first * ss
        if start >= disk.size:
            notes.append(f"GPT partition {number} starts past the end of the disk; ignored")
            continue
        size = _clip(
            f"partition {number}", start, (last - first + 1) * ss, disk.size, "disk", notes
        )
        ptype = str(uuid.UUID(bytes_le=tguid))
        ldm = ptype in _GPT_LDM_TYPES
        name = raw_name.decode("utf-16-le", errors="replace")
        parts.append(
            Partition(
                number=number,
                start=start,
                size=size,
                scheme="gpt",
                type=ptype,
                type_name=GPT_TYPE_NAMES.get(ptype, "unknown"),
                guid=uuid.UUID(bytes_le=pguid),
                name=name.split("\0", 1)[0],
                attributes=attrs,
                supported=not ldm,
                reason=LDM_REASON if ldm else "",
            )
        )
    return parts
