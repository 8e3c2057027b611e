"""Partition-table reading, checked against util-linux on real images and fuzzed for safety."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.blocks.partimages import (
    GPT_LABEL_ID,
    GPT_SCRIPT,
    LDM_MBR_SCRIPT,
    MBR_LABEL_ID,
    MBR_SCRIPT,
    MIB,
    BytesSource,
    ebr_chain_image,
    fdisk_4k_gpt_image,
    fdisk_4k_list,
    fix_gpt_crcs,
    gpt_entry_array,
    gpt_headers,
    sfdisk_image,
    sfdisk_json,
    table_sectors,
)
from vcbfs.blocks.local import LocalSource
from vcbfs.blocks.partitions import MAX_EBRS, Partition, PartitionTable, read_partitions
from vcbfs.errors import CorruptError, NotFoundError, UnsupportedError

pytestmark = pytest.mark.skipif(
    shutil.which("sfdisk") is None or shutil.which("fdisk") is None, reason="needs util-linux"
)

EXTENDED_TYPES = {"5", "f", "85"}


# --- fixtures: images built once per session ---------------------------------------------------


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("partimages")


@pytest.fixture(scope="session")
def mbr_image(images: Path) -> Path:
    return sfdisk_image(images / "mbr.img", 8 * MIB, MBR_SCRIPT)


@pytest.fixture(scope="session")
def gpt_image(images: Path) -> Path:
    return sfdisk_image(images / "gpt.img", 8 * MIB, GPT_SCRIPT)


@pytest.fixture(scope="session")
def ldm_image(images: Path) -> Path:
    return sfdisk_image(images / "ldm.img", 4 * MIB, LDM_MBR_SCRIPT)


@pytest.fixture(scope="session")
def gpt4k_image(images: Path) -> Path:
    return fdisk_4k_gpt_image(images / "gpt4k.img", 16 * MIB)


@pytest.fixture(scope="session")
def mbr_bytes(mbr_image: Path) -> bytes:
    return mbr_image.read_bytes()


@pytest.fixture(scope="session")
def gpt_bytes(gpt_image: Path) -> bytes:
    return gpt_image.read_bytes()


@pytest.fixture(scope="session")
def gpt4k_bytes(gpt4k_image: Path) -> bytes:
    return gpt4k_image.read_bytes()


def parse(data: bytes | bytearray, **kw: int) -> PartitionTable:
    return read_partitions(BytesSource(data), **kw)


def by_number(table: PartitionTable) -> dict[int, Partition]:
    return {p.number: p for p in table.partitions}


def node_number(node: str, image: Path) -> int:
    return int(node.removeprefix(str(image)))


def layout(table: PartitionTable) -> list[tuple[int, int, int, str]]:
    return [(p.number, p.start, p.size, p.type) for p in table.partitions]


# --- MBR ---------------------------------------------------------------------------------------


def test_mbr_matches_sfdisk(mbr_image: Path) -> None:
    ref = sfdisk_json(mbr_image)
    with LocalSource(mbr_image) as disk:
        table = read_partitions(disk)
    assert table.scheme == "mbr"
    assert table.mbr_signature == MBR_LABEL_ID == int(ref["id"], 16)
    assert table.disk_guid is None
    assert table.notes == []
    want = {
        node_number(p["node"], mbr_image): p
        for p in ref["partitions"]
        if p["type"] not in EXTENDED_TYPES
    }
    got = by_number(table)
    assert sorted(got) == sorted(want) == [1, 4, 5, 6, 7]
    for number, p in want.items():
        part = got[number]
        assert part.scheme == "mbr"
        assert part.start == p["start"] * 512
        assert part.size == p["size"] * 512
        assert part.type == f"0x{int(p['type'], 16):02x}"
        assert part.bootable == p.get("bootable", False)
        assert part.logical == (number >= 5)
        assert part.supported
        assert part.guid is None
    assert [p.number for p in table.partitions] == [1, 4, 5, 6, 7]


def test_mbr_type_names(mbr_bytes: bytes) -> None:
    got = by_number(parse(mbr_bytes))
    assert got[1].type_name == "Linux"
    assert got[4].type_name == "NTFS/exFAT/HPFS"
    assert got[6].type_name == "Linux swap / Solaris"


def first_ebr(buf: bytes | bytearray) -> tuple[int, int]:
    """(byte offset of the first EBR, start sector of the extended partition) of mbr.img."""
    ext_lba = struct.unpack_from("<I", buf, 446 + 2 * 16 + 8)[0]  # slot 3
    return ext_lba * 512, ext_lba


def ebr_link_field(ebr: int) -> int:
    return ebr + 446 + 16 + 8  # the second entry's start sector


def test_ebr_loop_to_itself_stops_with_note(mbr_bytes: bytes) -> None:
    buf = bytearray(mbr_bytes)
    ebr, _ = first_ebr(buf)
    struct.pack_into("<I", buf, ebr_link_field(ebr), 0)
    table = parse(buf)
    assert [p.number for p in table.partitions] == [1, 4, 5]
    assert any("loops back" in n for n in table.notes)


def test_ebr_loop_to_earlier_ebr_keeps_what_was_found(mbr_bytes: bytes) -> None:
    buf = bytearray(mbr_bytes)
    ebr1, ext_lba = first_ebr(buf)
    ebr2 = (ext_lba + struct.unpack_from("<I", buf, ebr_link_field(ebr1))[0]) * 512
    ebr3 = (ext_lba + struct.unpack_from("<I", buf, ebr_link_field(ebr2))[0]) * 512
    struct.pack_into("<B3sB3sII", buf, ebr3 + 446 + 16, 0, b"", 0x05, b"", 0, 2)  # back to 1
    table = parse(buf)
    assert layout(table) == layout(parse(mbr_bytes))  # all three logicals were already found
    assert any("loops back" in n for n in table.notes)


@pytest.mark.parametrize("link", [10240 + 100, 0xFFFFFFF0], ids=["inside-disk", "past-disk"])
def test_ebr_link_outside_extended_stops_with_note(mbr_bytes: bytes, link: int) -> None:
    buf = bytearray(mbr_bytes)
    ebr, ext_lba = first_ebr(buf)
    assert ext_lba + 10240 < len(buf) // 512  # the first link lands inside the disk
    struct.pack_into("<I", buf, ebr_link_field(ebr), link)
    table = parse(buf)
    assert [p.number for p in table.partitions] == [1, 4, 5]
    assert any("outside the extended partition" in n for n in table.notes)


def test_logical_starting_on_its_ebr_is_skipped(mbr_bytes: bytes) -> None:
    buf = bytearray(mbr_bytes)
    ebr, _ = first_ebr(buf)
    struct.pack_into("<I", buf, ebr + 446 + 8, 0)  # the logical's start, relative to its EBR
    table = parse(buf)
    ref = by_number(parse(mbr_bytes))
    # numbers stay dense, as in Linux: the two remaining logicals are 5 and 6
    assert [(p.number, p.start) for p in table.partitions] == [
        (1, ref[1].start),
        (4, ref[4].start),
        (5, ref[6].start),
        (6, ref[7].start),
    ]
    assert any("starts on its own EBR" in n for n in table.notes)


def test_ebr_without_signature_stops_chain(mbr_bytes: bytes) -> None:
    buf = bytearray(mbr_bytes)
    ebr, _ = first_ebr(buf)
    buf[ebr + 510 : ebr + 512] = b"\0\0"
    table = parse(buf)
    assert [p.number for p in table.partitions] == [1, 4]
    assert any("no boot signature" in n for n in table.notes)


def test_ebr_chain_is_capped() -> None:
    table = parse(ebr_chain_image(MAX_EBRS + 5))
    assert len(table.partitions) == MAX_EBRS
    assert table.partitions[-1].number == 4 + MAX_EBRS
    assert any(f"more than {MAX_EBRS} EBRs" in n for n in table.notes)


def test_ebr_chain_below_cap_is_complete() -> None:
    table = parse(ebr_chain_image(40))
    assert [p.number for p in table.partitions] == list(range(5, 45))
    assert all(p.logical and p.size == 512 for p in table.partitions)
    assert table.notes == []


def test_mbr_partition_past_disk_end_is_clipped(mbr_bytes: bytes) -> None:
    cut = 14336 * 512 + 512 * 512  # partition 4 (1024 sectors at 14336) keeps 512 sectors
    table = parse(mbr_bytes[:cut])
    p4 = table.partition(4)
    assert (p4.start, p4.size) == (14336 * 512, 512 * 512)
    assert any("partition 4 runs" in n and "clipped" in n for n in table.notes)


def test_mbr_partition_starting_past_disk_end_is_dropped(mbr_bytes: bytes) -> None:
    table = parse(mbr_bytes[: 14336 * 512])
    assert 4 not in by_number(table)
    assert any("partition 4 starts past the end" in n for n in table.notes)
    assert [p.number for p in table.partitions] == [1, 5, 6, 7]


def test_mbr_ldm_partition_is_unsupported(ldm_image: Path) -> None:
    with LocalSource(ldm_image) as disk:
        table = read_partitions(disk)
        ntfs, ldm = table.partitions
        assert ntfs.supported and ntfs.source(disk).size == 2048 * 512
        assert ldm.type == "0x42"
        assert not ldm.supported
        assert ldm.reason == "Windows dynamic disk (LDM) is not supported yet"
        with pytest.raises(UnsupportedError, match="LDM") as info:
            ldm.source(disk)
        assert info.value.source == f"{disk.name}#p2"
    assert table.mbr_signature == 0x0BADF00D


def test_no_boot_signature_is_unpartitioned() -> None:
    table = parse(bytes(MIB))
    assert (table.scheme, table.partitions, table.mbr_signature) == ("none", [], None)


def test_disk_smaller_than_a_sector() -> None:
    table = parse(b"\x55\xaa" * 100)
    assert table.scheme == "none"
    assert table.notes


def test_boot_sector_with_bad_status_bytes_is_not_a_table(mbr_bytes: bytes) -> None:
    buf = bytearray(mbr_bytes)
    buf[446] = 0x33  # a volume boot record's code, not a partition status
    table = parse(buf)
    assert table.scheme == "none"
    assert any("status" in n for n in table.notes)


def test_mbr_ignores_stray_gpt_signature_for_sector_size(mbr_bytes: bytes) -> None:
    buf = bytearray(mbr_bytes)
    buf[4096 : 4096 + 8] = b"EFI PART"  # stale bytes in the gap before partition 1
    table = parse(buf)
    assert table.sector_size == 512
    assert layout(table) == layout(parse(mbr_bytes))


def test_partition_lookup(mbr_bytes: bytes) -> None:
    table = parse(mbr_bytes)
    assert table.partition(6).type == "0x82"
    with pytest.raises(NotFoundError):
        table.partition(2)


def test_bad_sector_size_argument(mbr_bytes: bytes) -> None:
    with pytest.raises(UnsupportedError):
        parse(mbr_bytes, sector_size=1000)


# --- GPT ---------------------------------------------------------------------------------------


def test_gpt_matches_sfdisk(gpt_image: Path) -> None:
    ref = sfdisk_json(gpt_image)
    with LocalSource(gpt_image) as disk:
        table = read_partitions(disk)
    assert table.scheme == "gpt"
    assert table.disk_guid == uuid.UUID(ref["id"]) == uuid.UUID(GPT_LABEL_ID)
    assert table.mbr_signature is None
    assert table.notes == []
    assert table.sector_size == 512
    want = {node_number(p["node"], gpt_image): p for p in ref["partitions"]}
    got = by_number(table)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4, 6]
    for number, p in want.items():
        part = got[number]
        assert part.scheme == "gpt"
        assert part.start == p["start"] * 512
        assert part.size == p["size"] * 512
        assert part.type == p["type"].lower()
        assert part.guid == uuid.UUID(p["uuid"])
        assert part.name == p["name"]
        assert not part.logical and not part.bootable
    assert got[3].attributes == (1 << 63) | 1  # RequiredPartition (bit 0) + GUID:63
    assert got[1].attributes == 0


def test_gpt_type_names_and_ldm(gpt_bytes: bytes) -> None:
    got = by_number(parse(gpt_bytes))
    assert got[1].type_name == "EFI System"
    assert got[2].type_name == "Microsoft reserved"
    assert got[3].type_name == "Microsoft basic data"
    assert got[4].type_name == "Linux"
    assert got[4].name == "données"
    assert got[6].type_name == "Windows LDM metadata"
    assert [p.number for p in parse(gpt_bytes).partitions if not p.supported] == [6]
    with pytest.raises(UnsupportedError):
        got[6].source(BytesSource(gpt_bytes))


HEADER_FIELDS = {
    "my_lba": (24, "<Q", 2),
    "entry count": (80, "<I", 10**6),
    "entry size": (84, "<I", 100),
    "small entry size": (84, "<I", 64),
}


def flip(buf: bytearray, offset: int) -> None:
    buf[offset] ^= 0x40


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("header byte", "CRC mismatch"),
        ("signature", "signature"),
        ("header zeroed", "signature"),
        ("entries byte", "entry array"),
        ("my_lba", "says it is at LBA"),
        ("entry count", "entry count"),
        ("entry size", "entry size"),
        ("small entry size", "entry size"),
    ],
)
def test_gpt_bad_primary_uses_backup(gpt_bytes: bytes, damage: str, why: str) -> None:
    buf = bytearray(gpt_bytes)
    hdr = gpt_headers(buf)[0]
    if damage == "header byte":
        flip(buf, hdr + 0x38)  # inside the disk GUID
    elif damage == "signature":
        flip(buf, hdr)
    elif damage == "header zeroed":
        buf[hdr : hdr + 512] = bytes(512)
    elif damage == "entries byte":
        flip(buf, gpt_entry_array(buf, hdr) + 128 * 2 + 60)  # in partition 3's name
    else:
        field, fmt, value = HEADER_FIELDS[damage]
        struct.pack_into(fmt, buf, hdr + field, value)
        # keep the header CRC right, so only the bad field can be blamed
        struct.pack_into("<I", buf, hdr + 16, 0)
        struct.pack_into("<I", buf, hdr + 16, zlib.crc32(buf[hdr : hdr + 92]))
    table = parse(buf)
    assert layout(table) == layout(parse(gpt_bytes))
    assert [p.name for p in table.partitions] == [p.name for p in parse(gpt_bytes).partitions]
    assert table.disk_guid == uuid.UUID(GPT_LABEL_ID)
    assert len(table.notes) == 1
    assert "primary GPT is unusable" in table.notes[0]
    assert why in table.notes[0]
    assert "using the backup" in table.notes[0]


def test_gpt_both_headers_corrupt_is_an_error(gpt_bytes: bytes) -> None:
    buf = bytearray(gpt_bytes)
    for hdr in gpt_headers(buf):
        flip(buf, hdr + 0x38)
    with pytest.raises(CorruptError, match=r"no valid GPT.*primary.*backup"):
        parse(buf)


def test_gpt_both_entry_arrays_corrupt_is_an_error(gpt_bytes: bytes) -> None:
    buf = bytearray(gpt_bytes)
    for hdr in gpt_headers(buf):
        flip(buf, gpt_entry_array(buf, hdr) + 40)
    with pytest.raises(CorruptError, match="entry array"):
        parse(buf)


def test_protective_mbr_with_garbage_gpt_is_an_error(gpt_bytes: bytes) -> None:
    buf = bytearray(gpt_bytes)
    rnd = os.urandom(34 * 512)
    buf[512 : 34 * 512] = rnd[512:]
    buf[-33 * 512 :] = rnd[: 33 * 512]
    with pytest.raises(CorruptError, match="no valid GPT") as info:
        parse(buf)
    assert info.value.source == "mem.img"


def test_gpt_bad_backup_is_noted(gpt_bytes: bytes) -> None:
    buf = bytearray(gpt_bytes)
    flip(buf, gpt_headers(buf)[1] + 0x38)
    table = parse(buf)
    assert layout(table) == layout(parse(gpt_bytes))
    assert any(n.startswith("backup GPT is unusable") for n in table.notes)


def test_zeroed_mbr_on_gpt_disk_still_finds_gpt(gpt_bytes: bytes) -> None:
    buf = bytearray(gpt_bytes)
    buf[:512] = bytes(512)
    table = parse(buf)
    assert table.scheme == "gpt"
    assert layout(table) == layout(parse(gpt_bytes))
    assert any("no MBR boot signature" in n for n in table.notes)


def test_hybrid_mbr_prefers_gpt(gpt_bytes: bytes) -> None:
    buf = bytearray(gpt_bytes)
    struct.pack_into("<B3sB3sII", buf, 446 + 16, 0x80, b"", 0x07, b"", 6144, 4096)
    table = parse(buf)
    assert table.scheme == "gpt"
    assert layout(table) == layout(parse(gpt_bytes))
    assert any("hybrid MBR" in n for n in table.notes)


def test_grown_gpt_disk_is_noted(gpt_bytes: bytes) -> None:
    table = parse(gpt_bytes + bytes(MIB))
    assert layout(table) == layout(parse(gpt_bytes))
    assert any("probably grown" in n for n in table.notes)


def test_truncated_gpt_disk_clips_and_drops(gpt_bytes: bytes) -> None:
    table = parse(gpt_bytes[: 11264 * 512])
    got = by_number(table)
    assert sorted(got) == [1, 2, 3, 4]  # 6 starts past the end
    assert got[4].size == 1024 * 512  # 2048 sectors at 10240, 1024 of them exist
    assert any("partition 4 runs" in n for n in table.notes)
    assert any("partition 6 starts past the end" in n for n in table.notes)
    assert any("outside the disk" in n for n in table.notes)  # the backup header is gone


def patch_entry(buf: bytearray, index: int, first: int, last: int) -> None:
    for hdr in gpt_headers(buf):
        off = gpt_entry_array(buf, hdr) + 128 * index
        struct.pack_into("<QQ", buf, off + 32, first, last)
    fix_gpt_crcs(buf)


def test_gpt_entry_outside_usable_area_is_noted(gpt_bytes: bytes) -> None:
    buf = bytearray(gpt_bytes)
    patch_entry(buf, 0, 10, 4095)
    table = parse(buf)
    assert table.partition(1).start == 10 * 512
    assert any("outside the usable area" in n for n in table.notes)
    assert not any("unusable" in n for n in table.notes)


def test_gpt_entry_ending_before_start_is_dropped(gpt_bytes: bytes) -> None:
    buf = bytearray(gpt_bytes)
    patch_entry(buf, 1, 4096, 4000)
    table = parse(buf)
    assert 2 not in by_number(table)
    assert any("partition 2 ends" in n for n in table.notes)


def test_gpt_4k_sectors_match_fdisk(gpt4k_image: Path) -> None:
    rows = fdisk_4k_list(gpt4k_image)
    assert len(rows) == 2
    with LocalSource(gpt4k_image) as disk:
        auto = read_partitions(disk)
        forced = read_partitions(disk, sector_size=4096)
        with pytest.raises(CorruptError):
            read_partitions(disk, sector_size=512)
    assert auto == forced
    assert auto.scheme == "gpt" and auto.sector_size == 4096
    for part, row in zip(auto.partitions, rows, strict=True):
        assert part.number == node_number(row["Device"], gpt4k_image)
        assert part.start == int(row["Start"]) * 4096
        assert part.size == int(row["Sectors"]) * 4096
        assert part.type == row["Type-UUID"].lower()
        assert part.guid == uuid.UUID(row["UUID"])


def test_gpt_4k_primary_detected_when_backup_lost(gpt4k_bytes: bytes) -> None:
    buf = bytearray(gpt4k_bytes)
    buf[-4096:] = bytes(4096)
    table = parse(buf)
    assert table.sector_size == 4096
    assert layout(table) == layout(parse(gpt4k_bytes))
    assert any("backup GPT is unusable" in n for n in table.notes)


def test_gpt_4k_backup_detected_when_primary_lost(gpt4k_bytes: bytes) -> None:
    buf = bytearray(gpt4k_bytes)
    buf[4096 : 2 * 4096] = bytes(4096)
    table = parse(buf)
    assert table.sector_size == 4096
    assert layout(table) == layout(parse(gpt4k_bytes))
    assert any("using the backup" in n for n in table.notes)


# --- reading through a partition ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["mbr", "gpt"])
def test_partition_source_matches_dd(
    which: str, mbr_image: Path, gpt_image: Path, tmp_path: Path
) -> None:
    image = tmp_path / f"{which}-filled.img"
    shutil.copyfile(mbr_image if which == "mbr" else gpt_image, image)
    with LocalSource(image) as disk:
        parts = read_partitions(disk).partitions
    with open(image, "r+b") as f:
        for p in parts:  # fill every partition with its own random bytes
            f.seek(p.start)
            f.write(os.urandom(p.size))
    with LocalSource(image) as disk:
        table = read_partitions(disk)
        assert layout(table) == [(p.number, p.start, p.size, p.type) for p in parts]
        checked = 0
        for p in table.partitions:
            if not p.supported:
                continue
            src = p.source(disk)
            assert src.name == f"{image}#p{p.number}"
            assert src.size == p.size
            dd = subprocess.run(
                [
                    "dd",
                    f"if={image}",
                    "bs=512",
                    f"skip={p.start // 512}",
                    f"count={p.size // 512}",
                    "status=none",
                ],
                capture_output=True,
                check=True,
            ).stdout
            assert src.read_at(0, p.size + 4096) == dd
            assert src.read_at(p.size - 100, 100) == dd[-100:]
            checked += 1
    assert checked == (5 if which == "mbr" else 4)


# --- fuzz --------------------------------------------------------------------------------------

FUZZ = settings(max_examples=250, deadline=None)

_values = st.one_of(
    st.just(b"\x00\xd8"),  # a lone UTF-16 surrogate, when it lands in a GPT name
    st.integers(0, 255).map(lambda v: bytes([v])),
    st.sampled_from([0, 1, 2, 33, 0x7F, 0x80, 0xFF, 0xEE, 0x05, 0x0F, 0x85, 0x42]).map(
        lambda v: bytes([v])
    ),
    st.sampled_from([0, 1, 2, 8, 34, 64, 127, 128, 2048, 0xFFFFFFFF, 1 << 31]).map(
        lambda v: struct.pack("<I", v)
    ),
    st.sampled_from([0, 1, 2, 16383, 16384, 1 << 40, (1 << 64) - 1]).map(
        lambda v: struct.pack("<Q", v)
    ),
)


@pytest.fixture(scope="session")
def mbr_sectors(mbr_bytes: bytes) -> list[int]:
    sectors = table_sectors(mbr_bytes)
    assert len(sectors) == 4  # the MBR and three EBRs
    return sectors


@pytest.fixture(scope="session")
def gpt_sectors(gpt_bytes: bytes) -> list[int]:
    return table_sectors(gpt_bytes)


@pytest.fixture(scope="session")
def gpt4k_sectors(gpt4k_bytes: bytes) -> list[int]:
    return table_sectors(gpt4k_bytes, 4096)


# where the fields are: GPT header, GPT entries (first four), MBR/EBR entries and signature
FIELD_OFFSETS = sorted(
    {8, 12, 16, 24, 32, 40, 48, 56, 72, 80, 84, 88}
    | {128 * k + f for k in range(4) for f in (0, 16, 32, 40, 48, 56)}
    | {446 + 16 * k + f for k in range(4) for f in (0, 4, 8, 12)}
    | {510}
)


def mutate(data: bytes, sectors: list[int], ss: int, draw: st.DrawFn) -> bytearray:
    """``data`` with 1-8 values written over its table sectors, often right on a field."""
    buf = bytearray(data)
    where = st.one_of(st.integers(0, ss - 1), st.sampled_from(FIELD_OFFSETS))
    for _ in range(draw(st.integers(1, 8))):
        off = draw(st.sampled_from(sectors)) + draw(where)
        value = draw(_values)
        buf[off : off + len(value)] = value
    return buf[: len(data)]


def check_result(buf: bytes | bytearray, **kw: int) -> None:
    disk = BytesSource(buf)
    try:
        table = read_partitions(disk, **kw)
    except (CorruptError, UnsupportedError):
        return
    numbers = [p.number for p in table.partitions]
    assert len(numbers) == len(set(numbers))
    for p in table.partitions:
        assert p.number >= 1
        assert p.start >= 0 and p.size > 0 and p.end <= disk.size
        try:
            src = p.source(disk)
        except UnsupportedError:
            assert not p.supported
        else:
            assert src.read_at(0, 16) == bytes(buf[p.start : p.start + 16])


@FUZZ
@given(data=st.data())
def test_fuzz_mbr(mbr_bytes: bytes, mbr_sectors: list[int], data: st.DataObject) -> None:
    check_result(mutate(mbr_bytes, mbr_sectors, 512, data.draw))


@FUZZ
@given(data=st.data(), fix_crcs=st.booleans())
def test_fuzz_gpt(
    gpt_bytes: bytes, gpt_sectors: list[int], data: st.DataObject, fix_crcs: bool
) -> None:
    buf = mutate(gpt_bytes, gpt_sectors, 512, data.draw)
    if fix_crcs:  # get past the checksums to the fields behind them
        fix_gpt_crcs(buf)
    check_result(buf)


@FUZZ
@given(data=st.data(), fix_crcs=st.booleans(), forced=st.sampled_from([None, 512, 4096]))
def test_fuzz_gpt_4k(
    gpt4k_bytes: bytes,
    gpt4k_sectors: list[int],
    data: st.DataObject,
    fix_crcs: bool,
    forced: int | None,
) -> None:
    buf = mutate(gpt4k_bytes, gpt4k_sectors, 4096, data.draw)
    if fix_crcs:
        fix_gpt_crcs(buf, 4096)
    check_result(buf, **({} if forced is None else {"sector_size": forced}))
