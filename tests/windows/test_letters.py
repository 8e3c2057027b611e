"""The SYSTEM hive and drive letters, against a hive written by hivex and disks made by sfdisk.

The hive's MountedDevices (tests/windows/hives.py) names C: and E: on the MBR disk ``disk0``,
F: on the GPT disk ``disk1``, a CD-ROM D: (a device path), a Z: on a disk the VM does not have,
and one ``\\??\\Volume{...}`` name.  The hive sits at Windows/System32/config/SYSTEM of the NTFS
volume C:, copied there by ntfs-3g; E: is NTFS with an empty hive, F: NTFS with none, and the
second GPT partition is not formatted.  Two bare NTFS volumes carry damaged copies of the hive.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from regipy.exceptions import RegistryKeyNotFoundException, RegistryParsingException
from regipy.registry import RegistryHive

from tests.images import run
from tests.windows.hives import (
    C_OFFSET,
    CDROM_PATH,
    E_OFFSET,
    F_GUID,
    G2_GUID,
    GPT_DISK_GUID,
    LETTER_VALUES,
    MBR_SIGNATURE,
    MOUNTED_VALUES,
    SHORT_BROKEN,
    VOLUME_NAME,
    LetterImages,
    break_value,
    build_letter_images,
    build_system_hive,
    corrupt_subkey_list,
    empty_hive,
    hivex_export_binary,
    nk_offset,
    regf_checksum,
    unsynced,
)
from vcbfs.blocks.budget import BUDGET, Budget, OverBudgetError
from vcbfs.blocks.local import open_local
from vcbfs.blocks.lru import LRU
from vcbfs.blocks.partitions import read_partitions
from vcbfs.errors import CorruptError, NotFoundError, UnsupportedError, VcbfsError
from vcbfs.ntfs.volume import NtfsVolume
from vcbfs.windows.letters import (
    GptTarget,
    MbrTarget,
    VolumeId,
    assign_letters,
    find_letters,
    parse_letter,
    parse_target,
)
from vcbfs.windows.registry import (
    Hive,
    mounted_devices,
    open_system_hive,
    parse_header,
    read_system_hive,
    read_volume_file,
)

# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> LetterImages:
    return build_letter_images()


@pytest.fixture(scope="module")
def hive(images: LetterImages) -> bytes:
    return images.hive.read_bytes()


@dataclass
class Vm:
    """The test VM: its volumes' ids, the NTFS volumes, and sfdisk's reading of its disks."""

    c: VolumeId
    e: VolumeId
    f: VolumeId
    g2: VolumeId
    c_ntfs: NtfsVolume
    e_ntfs: NtfsVolume
    f_ntfs: NtfsVolume
    bad_ntfs: NtfsVolume
    short_ntfs: NtfsVolume
    sfdisk: list[dict]

    @property
    def volumes(self) -> list[tuple[VolumeId, NtfsVolume | None]]:
        return [
            (self.c, self.c_ntfs), (self.e, self.e_ntfs), (self.f, self.f_ntfs), (self.g2, None)
        ]  # fmt: skip

    @property
    def ids(self) -> list[VolumeId]:
        return [vid for vid, _ in self.volumes]


BAD = VolumeId(disk=2, partition=0, mbr_signature=None, start=0, gpt_guid=None)
ELSEWHERE = VolumeId(disk=3, partition=1, mbr_signature=0x11111111, start=C_OFFSET, gpt_guid=None)


@pytest.fixture(scope="module")
def vm(images: LetterImages) -> Iterator[Vm]:
    sources = [open_local(p) for p in (images.disk0, images.disk1, images.bad, images.short)]
    try:
        ids = []
        for index, disk in enumerate(sources[:2]):
            table = read_partitions(disk)
            ids += [VolumeId.from_partition(index, table, p) for p in table.partitions]
        parts = {
            (0, 1): read_partitions(sources[0]).partition(1).source(sources[0]),
            (0, 2): read_partitions(sources[0]).partition(2).source(sources[0]),
            (1, 1): read_partitions(sources[1]).partition(1).source(sources[1]),
        }
        sfdisk = [
            json.loads(run("sfdisk", "--json", p))["partitiontable"]
            for p in (images.disk0, images.disk1)
        ]
        c, e, f, g2 = ids
        yield Vm(
            c, e, f, g2,
            NtfsVolume(parts[0, 1]), NtfsVolume(parts[0, 2]), NtfsVolume(parts[1, 1]),
            NtfsVolume(sources[2]), NtfsVolume(sources[3]),
            sfdisk,
        )  # fmt: skip
    finally:
        for s in sources:
            s.close()


def _with_checksum(buf: bytearray) -> bytes:
    struct.pack_into("<I", buf, 508, regf_checksum(buf))
    return bytes(buf)


# --- the hive: built by us and hivex, read by regipy -----------------------------------------


def test_empty_hive_is_a_valid_hive(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(empty_hive())
    out = run("hivexregedit", "--export", path, "\\")
    assert "[\\]" in out and "=" not in out.split("[\\]", 1)[1]
    h = Hive(empty_hive(), "empty")
    assert h.subkeys("") == []
    assert h.values("\\") == {}
    assert h.header.checksum_ok and not h.dirty

    # hivex checks our checksum: with one byte of the base block changed it refuses the file.
    bad = bytearray(empty_hive())
    bad[300] ^= 0x01
    path.write_bytes(bad)
    done = subprocess.run(["hivexsh", "-d", str(path)], input="", capture_output=True, text=True)
    assert done.returncode != 0 and "bad checksum in hive header" in done.stderr


def test_values_read_back_exactly(images: LetterImages, hive: bytes) -> None:
    # hivex (an independent reader) and our regipy wrapper agree with what was written.
    assert hivex_export_binary(images.hive, "\\MountedDevices") == MOUNTED_VALUES
    got = mounted_devices(hive)
    assert got == MOUNTED_VALUES
    assert all(type(v) is bytes for v in got.values())
    assert mounted_devices(Hive(hive)) == MOUNTED_VALUES


def test_regipy_gives_truncated_hex_strings_by_default(images: LetterImages) -> None:
    """The regipy fact behind ``trim_values=False``: its default reading is a hex string."""
    key = RegistryHive(str(images.hive)).get_key("\\MountedDevices")
    default = {v.name: v.value for v in key.iter_values()}
    assert default["\\DosDevices\\C:"] == LETTER_VALUES["\\DosDevices\\C:"].hex()
    assert isinstance(default["\\DosDevices\\F:"], str)


def test_other_keys_types_and_case(hive: bytes) -> None:
    h = Hive(hive, "SYSTEM")
    select = h.values("Select")
    assert select["Current"].type == "REG_DWORD" and select["Current"].data == 1
    assert select["LastKnownGood"].data == 2
    assert h.binary_values("Select") == {}
    name = h.values("controlset001/CONTROL\\computername\\ComputerName")["ComputerName"]
    assert (name.type, name.data) == ("REG_SZ", "TESTVM-01")
    assert sorted(h.subkeys("\\")) == ["ControlSet001", "MountedDevices", "Select"]
    assert h.subkeys("ControlSet001/Control") == ["ComputerName"]
    assert h.binary_values("MOUNTEDDEVICES") == MOUNTED_VALUES
    for missing in ("NoSuchKey", "Select\\Nope", "ControlSet001\\Control\\ComputerName\\X"):
        with pytest.raises(NotFoundError, match="no registry key"):
            h.values(missing)
    with pytest.raises(FileNotFoundError):
        h.subkeys("Nope")
    assert h.notes == []


def test_header_and_dirty_state(hive: bytes) -> None:
    hdr = parse_header(hive)
    assert (hdr.major, hdr.root_offset, hdr.file_name) == (1, 0x20, "SYSTEM")
    assert hdr.bins_size == len(hive) - 4096
    assert hdr.checksum_ok and not hdr.dirty

    dirty = unsynced(hive)
    assert parse_header(dirty).checksum_ok and parse_header(dirty).dirty
    assert mounted_devices(dirty) == MOUNTED_VALUES

    buf = bytearray(hive)
    buf[200] ^= 0xFF  # a reserved byte: only the checksum notices
    assert not parse_header(bytes(buf)).checksum_ok and Hive(bytes(buf)).dirty
    assert mounted_devices(bytes(buf)) == MOUNTED_VALUES


def test_private_copy_leaves_no_descriptor(hive: bytes) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(20):
        Hive(hive)
    with pytest.raises(CorruptError):
        Hive(corrupt_subkey_list(hive)).values("MountedDevices")
    assert sorted(os.listdir("/proc/self/fd")) == before


# --- damaged hives: typed errors only --------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 100, 4095, 4096, 4127, 8192, -4096, -1])
def test_truncated_hive_is_corrupt(hive: bytes, keep: int) -> None:
    with pytest.raises(CorruptError, match=r"truncated|hive bin|signature"):
        mounted_devices(hive[:keep])


def test_damaged_signatures_and_lists_are_corrupt(hive: bytes, tmp_path: Path) -> None:
    for at in (0, 4096):  # 'regf', 'hbin'
        buf = bytearray(hive)
        buf[at] ^= 0x20
        with pytest.raises(CorruptError):
            mounted_devices(bytes(buf))

    # A broken subkey list: regipy alone says "no such key", we say corrupt.
    broken = corrupt_subkey_list(hive)
    with pytest.raises(
        CorruptError, match="is corrupt: it counts 3 subkeys but its subkey list holds 0"
    ):
        mounted_devices(broken)
    path = tmp_path / "broken"
    path.write_bytes(broken)
    with pytest.raises(RegistryKeyNotFoundException):
        RegistryHive(str(path)).get_key("\\MountedDevices")

    # The root counts more subkeys than its list holds.
    buf = bytearray(hive)
    root = nk_offset(hive, "ROOT")
    struct.pack_into("<I", buf, root + 20, 4)
    with pytest.raises(CorruptError, match="counts 4 subkeys"):
        mounted_devices(bytes(buf))

    # MountedDevices' value list points past the end: regipy raises its own exception.
    buf = bytearray(hive)
    struct.pack_into("<I", buf, nk_offset(hive, "MountedDevices") + 40, 0x7FFFFF00)
    with pytest.raises(CorruptError, match="MountedDevices is corrupt") as info:
        mounted_devices(bytes(buf))
    assert isinstance(info.value.__cause__, RegistryParsingException)


def test_short_value_list_keeps_what_was_read(hive: bytes) -> None:
    """regipy stops silently at a bad value record; the values before it are kept, with a note."""
    damaged, lost = break_value(hive, "\\DosDevices\\E:")
    assert lost[:2] == ["\\DosDevices\\E:", "\\DosDevices\\F:"]
    h = Hive(damaged, "SYSTEM")
    got = h.binary_values("MountedDevices")
    assert got == {k: v for k, v in MOUNTED_VALUES.items() if k not in lost}
    n, m = len(MOUNTED_VALUES), len(MOUNTED_VALUES) - len(lost)
    assert h.notes == [
        f"registry key \\MountedDevices counts {n} values but only {m} could be read"
    ]


def test_fallback_without_memfd(
    hive: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without memfd_create the hive goes through a private temporary file, removed at once."""

    def no_memfd(*args: object) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert mounted_devices(hive) == MOUNTED_VALUES
    with pytest.raises(CorruptError):
        Hive(corrupt_subkey_list(hive)).values("MountedDevices")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("offset", "value", "error"),
    [
        (20, 2, UnsupportedError),  # major version
        (28, 1, UnsupportedError),  # a transaction log, not a primary file
        (36, 0x78, UnsupportedError),  # root cell elsewhere: regipy would misread
        (40, 4000, CorruptError),  # bins size not a multiple of 4096
        (40, 0, CorruptError),
    ],
)
def test_base_block_fields_are_checked(hive: bytes, offset: int, value: int, error: type) -> None:
    buf = bytearray(hive)
    struct.pack_into("<I", buf, offset, value)
    with pytest.raises(error):
        Hive(_with_checksum(buf))


def test_random_damage_raises_only_vcbfs_errors(hive: bytes) -> None:
    rng = random.Random(20261125)
    outcomes = {"same": 0, "different": 0, "error": 0}
    for _ in range(1500):
        buf = bytearray(hive)
        for _ in range(rng.choice((1, 2, 8, 32))):
            buf[rng.randrange(4096, len(buf))] = rng.randrange(256)
        try:
            got = mounted_devices(bytes(buf))
        except VcbfsError:
            outcomes["error"] += 1
            continue
        assert all(type(k) is str and type(v) is bytes for k, v in got.items())
        outcomes["same" if got == MOUNTED_VALUES else "different"] += 1
    assert min(outcomes.values()) >= 10, outcomes


# --- MountedDevices values -------------------------------------------------------------------


def test_parse_letter() -> None:
    assert parse_letter("\\DosDevices\\C:") == "C"
    assert parse_letter("\\dosdevices\\d:") == "D"
    for name in (VOLUME_NAME, "\\DosDevices\\CD:", "\\DosDevices\\1:", "\\DosDevices\\C", "C:"):
        assert parse_letter(name) is None


def test_parse_target() -> None:
    assert parse_target(LETTER_VALUES["\\DosDevices\\C:"]) == MbrTarget(MBR_SIGNATURE, C_OFFSET)
    f = LETTER_VALUES["\\DosDevices\\F:"]
    assert f[8:12] == bytes.fromhex("2a1c3b6f")  # Microsoft's layout: first field little-endian
    assert parse_target(f) == GptTarget(F_GUID)
    reason = parse_target(CDROM_PATH.encode("utf-16-le"))
    assert isinstance(reason, str) and "device" in reason and "CdRom" in reason
    for odd in (bytes(16), b"DMIO:ID:" + bytes(15), b"DMIO:ID:" + bytes(17), b""):
        reason = parse_target(odd)
        assert isinstance(reason, str) and "unknown form" in reason


def test_volume_ids_agree_with_sfdisk(vm: Vm) -> None:
    mbr, gpt = vm.sfdisk
    assert int(mbr["id"], 16) == MBR_SIGNATURE == vm.c.mbr_signature == vm.e.mbr_signature
    assert [p["start"] * 512 for p in mbr["partitions"]] == [vm.c.start, vm.e.start]
    assert (vm.c.start, vm.e.start) == (C_OFFSET, E_OFFSET)
    assert uuid.UUID(gpt["id"]) == GPT_DISK_GUID
    assert [uuid.UUID(p["uuid"]) for p in gpt["partitions"]] == [vm.f.gpt_guid, vm.g2.gpt_guid]
    assert (vm.f.gpt_guid, vm.g2.gpt_guid) == (F_GUID, G2_GUID)
    assert vm.f.mbr_signature is None and vm.c.gpt_guid is None
    assert [(v.disk, v.partition) for v in vm.ids] == [(0, 1), (0, 2), (1, 1), (1, 2)]


def test_assign_letters_matches_mbr_and_gpt(vm: Vm) -> None:
    letters, notes = assign_letters(MOUNTED_VALUES, vm.ids)
    assert letters == {"C": vm.c, "E": vm.e, "F": vm.f}
    assert list(letters) == ["C", "E", "F"]
    assert len(notes) == 2, notes
    assert notes[0].startswith("D:") and "device" in notes[0]
    assert notes[1].startswith("Z:") and "matches no volume" in notes[1]
    assert "0xdeadbeef" in notes[1]


def test_assign_letters_edge_cases(vm: Vm) -> None:
    c_value = LETTER_VALUES["\\DosDevices\\C:"]
    # Two letters for one volume: the first letter is kept, whatever the value order.
    letters, notes = assign_letters(
        {"\\DosDevices\\G:": c_value, "\\DosDevices\\C:": c_value}, vm.ids
    )
    assert letters == {"C": vm.c}
    assert notes == [f"G: names {vm.c}, which already is C:; keeping C:"]

    # A cloned disk with the same signature: no guess.
    clone = VolumeId(5, 1, MBR_SIGNATURE, C_OFFSET, None)
    letters, notes = assign_letters(MOUNTED_VALUES, [*vm.ids, clone])
    assert letters == {"E": vm.e, "F": vm.f}
    assert any(n.startswith("C:") and "matches 2 volumes" in n for n in notes)

    # An MBR value does not match a GPT volume at the same offset, nor the reverse.
    assert vm.f.start == C_OFFSET
    assert assign_letters({"\\DosDevices\\C:": c_value}, [vm.f])[0] == {}
    assert assign_letters({"\\DosDevices\\F:": LETTER_VALUES["\\DosDevices\\F:"]}, [vm.c])[0] == {}

    # Names that are not drive letters are not used and not noted.
    assert assign_letters({VOLUME_NAME: c_value, "#{abc}": c_value}, vm.ids) == ({}, [])


# --- from an NTFS volume ---------------------------------------------------------------------


def test_read_system_hive_from_ntfs(vm: Vm, hive: bytes) -> None:
    assert read_system_hive(vm.c_ntfs) == hive
    assert read_system_hive(vm.f_ntfs) is None
    assert read_system_hive(vm.e_ntfs) == empty_hive()
    path = "windows/SYSTEM32/Config/software"
    assert read_volume_file(vm.c_ntfs, path, 1 << 20) == b"not the hive we want"
    assert read_volume_file(vm.c_ntfs, "Windows/System32", 1 << 20) is None  # a directory
    assert read_system_hive(vm.c_ntfs, max_size=len(hive)) == hive
    with pytest.raises(UnsupportedError, match="limit"):
        read_system_hive(vm.c_ntfs, max_size=len(hive) - 1)


def test_find_letters_end_to_end(vm: Vm) -> None:
    found = find_letters(vm.volumes)
    assert found.letters == {"C": vm.c, "E": vm.e, "F": vm.f}
    assert found.system == vm.c
    assert found.letter_of(vm.c) == "C" and found.letter_of(vm.g2) is None
    assert [n[:2] for n in found.notes] == ["D:", "Z:"], found.notes


def test_find_letters_prefers_the_hive_that_is_its_own_c(vm: Vm) -> None:
    # The same hive seen first on a volume it does not call C:, then on the one it does.
    volumes = [(vm.f, vm.f_ntfs), (ELSEWHERE, vm.c_ntfs), *vm.volumes]
    found = find_letters(volumes)
    assert found.system == vm.c
    assert found.letters == {"C": vm.c, "E": vm.e, "F": vm.f}

    # No hive names its own volume C:: the first readable one is used, with a note.
    found = find_letters([(ELSEWHERE, vm.c_ntfs), (vm.f, vm.f_ntfs)])
    assert found.system == ELSEWHERE
    assert found.letters == {"F": vm.f}
    assert any("does not give C: to its own volume" in n for n in found.notes)


def test_find_letters_without_a_usable_hive(vm: Vm, hive: bytes) -> None:
    found = find_letters([(vm.f, vm.f_ntfs), (vm.g2, None)])
    assert (found.letters, found.system) == ({}, None)
    assert found.notes == [
        "no readable SYSTEM hive with drive letters on any NTFS volume; no letters"
    ]

    found = find_letters([(vm.e, vm.e_ntfs), (vm.f, vm.f_ntfs)])
    assert (found.letters, found.system) == ({}, None)
    assert found.notes == [
        f"{vm.e}: SYSTEM hive has no MountedDevices key",
        "no readable SYSTEM hive with drive letters on any NTFS volume; no letters",
    ]

    found = find_letters([(BAD, vm.bad_ntfs), (vm.f, vm.f_ntfs)])
    assert (found.letters, found.system) == ({}, None)
    assert found.notes[0] == (
        f"{BAD}: cannot use the SYSTEM hive: SYSTEM: registry key \\ is corrupt: it counts 3 "
        "subkeys but its subkey list holds 0"
    )

    # A damaged hive on one volume does not stop the good one on another.
    found = find_letters([(BAD, vm.bad_ntfs), *vm.volumes])
    assert found.system == vm.c and set(found.letters) == {"C", "E", "F"}

    # A dirty hive that lost values: the letters it still has, and notes on both.
    _, lost = break_value(hive, SHORT_BROKEN)
    assert "\\DosDevices\\F:" in lost
    found = find_letters([(vm.c, vm.short_ntfs), *vm.volumes[1:]])
    assert found.system == vm.c
    assert found.letters == {"C": vm.c, "E": vm.e}
    n, m = len(MOUNTED_VALUES), len(MOUNTED_VALUES) - len(lost)
    assert found.notes[:2] == [
        f"{vm.c}: registry key \\MountedDevices counts {n} values but only {m} could be read",
        f"{vm.c}: SYSTEM hive was not cleanly written (its transaction logs are not applied); "
        "recent changes may be missing",
    ]

    found = find_letters(vm.volumes, max_hive_size=4096)
    assert found.letters == {} and "limit" in found.notes[0]


def test_hive_builder_round_trip(tmp_path: Path) -> None:
    """The builder's hive, rebuilt fresh: hivex and regipy agree on every value."""
    mounted = {"\\DosDevices\\Q:": bytes(range(12)), "\\DosDevices\\R:": b"DMIO:ID:" + bytes(16)}
    path = build_system_hive(tmp_path / "SYSTEM", mounted)
    assert hivex_export_binary(path, "\\MountedDevices") == mounted
    assert mounted_devices(path.read_bytes()) == mounted


# --- the hive and the memory budget ----------------------------------------------------------


def test_the_hive_is_held_once_and_counted_against_the_budget(vm: Vm, hive: bytes) -> None:
    """Its bytes go from the volume to regipy through a memfd in pieces (no copy of the whole
    in this process beside regipy's own), reserved against the budget while it is in use."""
    budget = Budget(8 * len(hive))
    cache: LRU[int, bytes] = LRU(1 << 30, len, budget=budget)
    for i in range(8):
        cache.put(i, bytes(len(hive)))
    with open_system_hive(vm.c_ntfs, budget=budget) as opened:
        assert opened is not None
        assert opened.binary_values("MountedDevices") == MOUNTED_VALUES
        assert budget.reserved == len(hive)
        assert budget.used + budget.reserved <= budget.capacity  # the caches made room
    assert budget.reserved == 0
    with pytest.raises(CorruptError):  # let go of: regipy's copy is gone
        opened.binary_values("MountedDevices")
    with open_system_hive(vm.f_ntfs, budget=budget) as none:
        assert none is None


def test_a_hive_beyond_the_budget_is_refused_with_a_note(vm: Vm, hive: bytes) -> None:
    with (
        pytest.raises(OverBudgetError, match=r"SYSTEM hive .* more than the whole memory budget"),
        open_system_hive(vm.c_ntfs, budget=Budget(2 * len(hive) - 1)),
    ):
        pass  # room for one copy, not for regipy's read beside the memfd
    capacity = BUDGET.capacity
    BUDGET.capacity = len(hive)
    try:
        found = find_letters(vm.volumes)
    finally:
        BUDGET.capacity = capacity
    assert found.letters == {}
    assert "memory budget" in found.notes[0] and "cannot read the SYSTEM hive" in found.notes[0]
