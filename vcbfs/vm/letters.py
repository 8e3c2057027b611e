"""Drive letters of a VM image's volumes, from the guest's own registry (see windows/letters)."""

from __future__ import annotations

from vcbfs.errors import VcbfsError
from vcbfs.ntfs.volume import NtfsVolume
from vcbfs.vm.image import VmImage, Volume
from vcbfs.windows.letters import VolumeId, find_letters

__all__ = ["volume_letters"]


def volume_id(volume: Volume) -> VolumeId:
    p = volume.partition
    return VolumeId(
        disk=volume.disk.index,
        partition=p.number if p else 0,
        mbr_signature=volume.mbr_signature,
        start=volume.start,
        gpt_guid=p.guid if p else None,
    )


def volume_letters(image: VmImage) -> dict[str, Volume]:
    """Letter -> volume, as the guest's SYSTEM hive assigns them; notes go to the image."""
    pairs: list[tuple[VolumeId, NtfsVolume]] = []
    by_id: dict[VolumeId, Volume] = {}
    for vol in image.volumes():
        try:
            ntfs = vol.ntfs()
        except VcbfsError as exc:
            image.note(f"volume {vol.number}: {exc}")
            continue
        vid = volume_id(vol)
        pairs.append((vid, ntfs))
        by_id[vid] = vol
    found = find_letters(pairs)
    for note in found.notes:
        image.note(note)
    return {letter: by_id[vid] for letter, vid in found.letters.items() if vid in by_id}
