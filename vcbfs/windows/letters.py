r"""The guest's drive letters: which volume on the VM's disks Windows calls C:, D:, ...

Windows records each letter in ``HKLM\SYSTEM\MountedDevices`` as a value named
``\DosDevices\X:`` whose data identifies a partition:

* 12 bytes: the MBR disk signature (4 bytes, the NT signature at 0x1B8) and the partition's byte
  offset on that disk (8 bytes, little-endian), for partitions of MBR disks;
* ``DMIO:ID:`` and 16 bytes: a GUID in Microsoft's mixed-endian layout (``uuid.UUID(bytes_le=)``),
  the unique partition GUID for partitions of GPT disks (and the LDM volume GUID for volumes of
  dynamic disks, which then match no partition);
* a UTF-16 device path (``\??\IDE#CdRom...``, ``\??\USBSTOR#...``) for CD-ROMs and removable
  media: not a partition of a virtual disk, so ignored.

Values named ``\??\Volume{...}`` are volume GUID names, not letters, and are not used.

``assign_letters`` is the pure matching of those values against the volumes found on the disks
(``VolumeId``: disk index, partition number, MBR signature, start offset, GPT partition GUID).
``find_letters`` does the discovery: it looks for the SYSTEM hive on each NTFS volume and uses
the first hive that maps C: to its own volume (or, failing that, the first readable one).  Both
return plain-word notes saying why a letter or a volume was left out, so the mount can log them:
a missing letter must never stop a backup, the volume is still reachable by disk and partition.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vcbfs.blocks.budget import OverBudgetError
from vcbfs.blocks.partitions import Partition, PartitionTable
from vcbfs.errors import NotADirectory, NotFoundError, ReadError, UnsupportedError, VcbfsError
from vcbfs.windows.registry import MAX_HIVE_SIZE, open_system_hive

if TYPE_CHECKING:
    from vcbfs.ntfs.volume import NtfsVolume

__all__ = [
    "GPT_PREFIX",
    "GptTarget",
    "LetterMap",
    "MbrTarget",
    "VolumeId",
    "assign_letters",
    "find_letters",
    "parse_letter",
    "parse_target",
]

GPT_PREFIX = b"DMIO:ID:"
_LETTER = re.compile(r"\\DosDevices\\([A-Za-z]):", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class VolumeId:
    """A volume found on the VM's disks, as MountedDevices can name it.

    ``disk`` is the disk's index in the VM, ``partition`` the partition number (as in
    ``vcbfs.blocks.partitions``; 0 for a disk without a partition table), ``start`` the byte
    offset of the volume on its disk.  ``mbr_signature`` is set for partitions of MBR disks,
    ``gpt_guid`` (the unique partition GUID) for partitions of GPT disks.
    """

    disk: int
    partition: int
    mbr_signature: int | None
    start: int
    gpt_guid: uuid.UUID | None

    @classmethod
    def from_partition(cls, disk: int, table: PartitionTable, partition: Partition) -> VolumeId:
        """The id of ``partition`` of the disk with index ``disk`` and partition table ``table``."""
        return cls(
            disk=disk,
            partition=partition.number,
            mbr_signature=table.mbr_signature if partition.scheme == "mbr" else None,
            start=partition.start,
            gpt_guid=partition.guid if partition.scheme == "gpt" else None,
        )

    def __str__(self) -> str:
        return f"disk {self.disk} partition {self.partition}"


@dataclass(frozen=True, slots=True)
class MbrTarget:
    """A MountedDevices value naming a partition of an MBR disk."""

    signature: int
    offset: int

    def matches(self, vol: VolumeId) -> bool:
        return vol.mbr_signature == self.signature and vol.start == self.offset

    def __str__(self) -> str:
        return f"MBR disk {self.signature:#010x}, partition at byte {self.offset}"


@dataclass(frozen=True, slots=True)
class GptTarget:
    """A MountedDevices value naming a GPT partition (or a dynamic-disk volume) by GUID."""

    guid: uuid.UUID

    def matches(self, vol: VolumeId) -> bool:
        return vol.gpt_guid == self.guid

    def __str__(self) -> str:
        return f"GPT partition or dynamic volume {{{self.guid}}}"


Target = MbrTarget | GptTarget


def parse_letter(name: str) -> str | None:
    r"""``"C"`` for a value named ``\DosDevices\C:`` (any case); None for any other name."""
    m = _LETTER.fullmatch(name)
    return m.group(1).upper() if m else None


def _device_path(data: bytes) -> str | None:
    """The text of a UTF-16 device path value (``\\??\\...``), or None if it is not one."""
    if len(data) < 8 or len(data) % 2:
        return None
    try:
        text = data.decode("utf-16-le").rstrip("\0")
    except UnicodeDecodeError:
        return None
    if text.startswith(("\\??\\", "_??_", "\\Device\\")) and text.isprintable():
        return text
    return None


def parse_target(data: bytes) -> Target | str:
    """What a MountedDevices value points at, or a plain-word reason why it names no partition."""
    if len(data) == 12:
        signature, offset = struct.unpack("<IQ", data)
        return MbrTarget(signature, offset)
    if len(data) == len(GPT_PREFIX) + 16 and data.startswith(GPT_PREFIX):
        return GptTarget(uuid.UUID(bytes_le=data[len(GPT_PREFIX) :]))
    path = _device_path(data)
    if path is not None:
        shown = path if len(path) <= 60 else path[:57] + "..."
        return f"names a device ({shown}), not a partition of a virtual disk"
    return f"has an unknown form ({len(data)} bytes)"


def assign_letters(
    mounted: Mapping[str, bytes], volumes: Sequence[VolumeId]
) -> tuple[dict[str, VolumeId], list[str]]:
    r"""Match the ``\DosDevices\X:`` values of MountedDevices against the VM's volumes.

    Returns letter -> volume, in letter order, and notes on everything left out: a value of
    another form, a letter that matches no volume (a disk not in this VM, a dynamic volume), a
    letter that matches several volumes (cloned disks with the same signature: no guess is
    made), and a second letter for a volume that already has one (the first letter is kept).
    """
    letters: dict[str, VolumeId] = {}
    notes: list[str] = []
    owner: dict[VolumeId, str] = {}
    targets: dict[str, bytes] = {}
    for name, data in mounted.items():
        letter = parse_letter(name)
        if letter is None:
            continue
        if letter in targets:
            notes.append(f"{letter}: is named twice in MountedDevices; using the first")
            continue
        targets[letter] = data
    for letter in sorted(targets):
        target = parse_target(targets[letter])
        if isinstance(target, str):
            notes.append(f"{letter}: {target}; no letter assigned")
            continue
        found = list(dict.fromkeys(v for v in volumes if target.matches(v)))
        if not found:
            notes.append(f"{letter}: ({target}) matches no volume on this VM's disks; ignored")
            continue
        if len(found) > 1:
            which = ", ".join(str(v) for v in found)
            notes.append(
                f"{letter}: ({target}) matches {len(found)} volumes ({which}), "
                "probably disks with the same signature; no letter assigned"
            )
            continue
        vol = found[0]
        if vol in owner:
            notes.append(
                f"{letter}: names {vol}, which already is {owner[vol]}:; keeping {owner[vol]}:"
            )
            continue
        owner[vol] = letter
        letters[letter] = vol
    return letters, notes


@dataclass(frozen=True, slots=True)
class LetterMap:
    """The guest's drive letters, the volume whose SYSTEM hive gave them, and notes on gaps."""

    letters: dict[str, VolumeId]
    system: VolumeId | None
    notes: list[str] = field(default_factory=list)

    def letter_of(self, volume: VolumeId) -> str | None:
        """The letter of ``volume``, or None if it has none."""
        for letter, vol in self.letters.items():
            if vol == volume:
                return letter
        return None


def find_letters(
    volumes: Sequence[tuple[VolumeId, NtfsVolume | None]], max_hive_size: int = MAX_HIVE_SIZE
) -> LetterMap:
    """Find the Windows system volume among ``volumes`` and the drive letters its hive gives.

    ``volumes`` lists every volume of the VM, with its open ``NtfsVolume`` or None when it is not
    NTFS (it can still own a letter).  Each NTFS volume is tried, in order, for a readable SYSTEM
    hive with a MountedDevices key; the first whose hive maps C: to that same volume wins, else
    the first readable one (with a note).  With no readable hive there are no letters, and the
    notes say why.  Never raises for damaged guests: errors become notes.
    """
    ids = [vid for vid, _ in volumes]
    notes: list[str] = []
    first: tuple[VolumeId, dict[str, VolumeId], list[str]] | None = None
    for vid, vol in volumes:
        if vol is None:
            continue
        # The hive is held once, counted against the memory budget, and only while its
        # MountedDevices is read.
        try:
            with open_system_hive(vol, max_hive_size) as hive:
                if hive is None:
                    continue
                try:
                    mounted = hive.binary_values("MountedDevices")
                except NotFoundError:
                    notes.append(f"{vid}: SYSTEM hive has no MountedDevices key")
                    continue
                hive_notes, dirty = hive.notes, hive.dirty
        except (UnsupportedError, ReadError, NotFoundError, NotADirectory, OverBudgetError) as exc:
            notes.append(f"{vid}: cannot read the SYSTEM hive: {exc}")
            continue
        except VcbfsError as exc:
            notes.append(f"{vid}: cannot use the SYSTEM hive: {exc}")
            continue
        notes += [f"{vid}: {note}" for note in hive_notes]
        if dirty:
            notes.append(
                f"{vid}: SYSTEM hive was not cleanly written (its transaction logs are not "
                "applied); recent changes may be missing"
            )
        if not any(parse_letter(name) for name in mounted):
            notes.append(f"{vid}: SYSTEM hive has no drive letters in MountedDevices")
            continue
        letters, assign_notes = assign_letters(mounted, ids)
        if letters.get("C") == vid:
            return LetterMap(letters, vid, notes + assign_notes)
        if first is None:
            first = (vid, letters, assign_notes)
    if first is None:
        notes.append("no readable SYSTEM hive with drive letters on any NTFS volume; no letters")
        return LetterMap({}, None, notes)
    vid, letters, assign_notes = first
    notes.append(
        f"{vid}: its SYSTEM hive does not give C: to its own volume; using its letters anyway"
    )
    return LetterMap(letters, vid, notes + assign_notes)
