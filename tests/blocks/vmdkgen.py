"""Test-only writers of ESX snapshot deltas: COWD ("-delta.vmdk") and SEsparse ("-sesparse.vmdk").

No ESX host is at hand, so the tests make their own deltas over a qemu-made base VMDK and prove
them right the independent way: ``qemu-img convert`` of the delta must equal the base with the
changes applied.  Only then are the same files fed to our readers.

Changes are grain-aligned: ``{byte offset: bytes}`` with offset and length multiples of the
grain size (a change may stop at the disk's end inside its last grain).  SEsparse deltas can
also mark grains zeroed (type 2) or SCSI-unmapped (type 1); both read as zeros.  Layout knobs
(grain order in the file, table numbering, a gap in the grain index space) exist to exercise
the readers' indirections, not to mimic ESX byte for byte.
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
COWD_GTES = 4096
SES_GRAIN = 4096
SES_GTES = 4096
SES_GT_SECTORS = 64
SES_MAGIC = 0xCAFEBABE
SES_VOLATILE_MAGIC = 0xCAFECAFE
SES_VERSION = 0x200000001


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _grains(changes: Mapping[int, bytes], grain: int, capacity: int) -> dict[int, bytes]:
    """Split grain-aligned changes into ``{grain index: grain bytes}``.

    A change may end at the disk's end inside a grain; that grain is padded with zeros.
    """
    out: dict[int, bytes] = {}
    for offset, data in changes.items():
        end = offset + len(data)
        if offset % grain or not data or (len(data) % grain and end != capacity):
            raise ValueError(f"change at {offset} (+{len(data)}) is not grain-aligned ({grain})")
        if end > capacity:
            raise ValueError(f"change at {offset} (+{len(data)}) is past the disk end")
        for i in range(_ceil_div(len(data), grain)):
            out[offset // grain + i] = data[i * grain : (i + 1) * grain].ljust(grain, b"\0")
    return out


def _order(indices: Iterable[int], seed: int | None, chunk: int = 3) -> list[int]:
    """Grain indices in file order: sorted, or shuffled in chunks (some stay adjacent)."""
    ordered = sorted(indices)
    if seed is None:
        return ordered
    chunks = [ordered[i : i + chunk] for i in range(0, len(ordered), chunk)]
    random.Random(seed).shuffle(chunks)
    return [i for c in chunks for i in c]


def apply_changes(
    base: bytes, changes: Mapping[int, bytes], zeroed: Iterable[int] = (), grain: int = SES_GRAIN
) -> bytes:
    """What the delta should read as: ``base`` with ``changes`` written and ``zeroed`` grains
    (indices) cleared."""
    out = bytearray(base)
    for offset, data in changes.items():
        out[offset : offset + len(data)] = data
    for g in zeroed:
        out[g * grain : (g + 1) * grain] = bytes(grain)
    return bytes(out)


# --- COWD -------------------------------------------------------------------------------------


def build_cowd(
    capacity: int,
    changes: Mapping[int, bytes],
    *,
    grain_sectors: int = 1,
    parent_name: str = "",
    empty_tables: Iterable[int] = (),
    seed: int | None = None,
) -> bytes:
    """A COWD extent of ``capacity`` bytes holding ``changes``.

    ``empty_tables``: GD indices that get an allocated but all-zero grain table.
    """
    gbytes = grain_sectors * SECTOR
    if capacity % SECTOR:
        raise ValueError("capacity must be whole sectors")
    sectors = capacity // SECTOR
    grains = _grains(changes, gbytes, capacity)
    coverage = COWD_GTES * grain_sectors
    gd_entries = _ceil_div(sectors, coverage)
    gd_offset = 4
    gd_sectors = _ceil_div(gd_entries * 4, SECTOR)
    tables = sorted({g // COWD_GTES for g in grains} | set(empty_tables))
    next_sector = gd_offset + gd_sectors
    gd = [0] * gd_entries
    for t in tables:
        gd[t] = next_sector
        next_sector += COWD_GTES * 4 // SECTOR
    gts = {t: [0] * COWD_GTES for t in tables}
    body = bytearray()
    for g in _order(grains, seed):
        gts[g // COWD_GTES][g % COWD_GTES] = next_sector + len(body) // SECTOR
        body += grains[g]
    free = next_sector + len(body) // SECTOR

    header = bytearray(2048)
    struct.pack_into(
        "<4s7I", header, 0, b"COWD", 1, 3, sectors, grain_sectors, gd_offset, gd_entries, free
    )
    name = parent_name.encode()
    header[32 : 32 + len(name)] = name  # child: parentFileName[1024]
    struct.pack_into("<I", header, 1056, 1)  # parentGeneration
    struct.pack_into("<I", header, 1060, 2)  # generation
    header[1064 : 1064 + 5] = b"delta"  # name[60]
    struct.pack_into("<I", header, 1636, 2)  # savedGeneration
    out = bytearray(header)
    out += struct.pack(f"<{gd_entries}I", *gd).ljust(gd_sectors * SECTOR, b"\0")
    for t in tables:
        out += struct.pack(f"<{COWD_GTES}I", *gts[t])
    out += body
    return bytes(out)


# --- SEsparse ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SesLayout:
    """Where build_sesparse put things (sectors), for tests that corrupt them."""

    grain_dir_offset: int
    grain_tables_offset: int
    grains_offset: int
    table_numbers: dict[int, int]  # GD index -> table number
    slots: dict[int, int]  # grain index -> slot in the grain region


def ses_entry(slot: int) -> int:
    """The GT entry of an allocated grain in ``slot``: low 12 bits go to bits 48-59."""
    return (3 << 60) | ((slot & 0xFFF) << 48) | (slot >> 12)


def build_sesparse(
    capacity: int,
    changes: Mapping[int, bytes],
    *,
    zeroed: Iterable[int] = (),
    unmapped: Iterable[int] = (),
    seed: int | None = None,
    slot_gap: int = 0,
) -> tuple[bytes, SesLayout]:
    """An SEsparse extent of ``capacity`` bytes holding ``changes``.

    ``zeroed``/``unmapped``: grain indices marked type 2 / type 1 (unmapped ones keep stale slot
    bits, which readers must ignore).  ``slot_gap``: grains from the second half onwards sit
    that many slots further on, so slot numbers above 4095 exercise the split index encoding.
    """
    if capacity % SECTOR:
        raise ValueError("capacity must be whole sectors")
    cap_sectors = capacity // SECTOR
    grains = _grains(changes, SES_GRAIN, capacity)
    zeroed, unmapped = set(zeroed), set(unmapped)
    if (zeroed | unmapped) & set(grains) or zeroed & unmapped:
        raise ValueError("a grain is given two states")
    n_grains = _ceil_div(capacity, SES_GRAIN)
    gd_entries = _ceil_div(n_grains, SES_GTES)

    order = _order(grains, seed)
    slots = {g: i + (slot_gap if i >= len(order) // 2 else 0) for i, g in enumerate(order)}
    used_tables = sorted({g // SES_GTES for g in [*grains, *zeroed, *unmapped]})
    # number tables in reverse, so a table's number differs from its GD index
    numbers = {t: len(used_tables) - 1 - i for i, t in enumerate(used_tables)}

    volatile_off, journal_hdr_off, journal_off, journal_size = 1, 2, 4, 8
    gd_off = journal_off + journal_size
    gd_size = max(1, _ceil_div(gd_entries * 8, SECTOR))
    gt_off = gd_off + gd_size
    gt_size = gd_entries * SES_GT_SECTORS  # ESX reserves every table up front
    bitmap_off = gt_off + gt_size
    bitmap_size = max(1, _ceil_div(n_grains, 8 * SECTOR))
    backmap_off = bitmap_off + bitmap_size
    backmap_size = max(1, _ceil_div(n_grains * 8, SECTOR))
    grains_off = backmap_off + backmap_size
    n_slots = max([n_grains, *(s + 1 for s in slots.values())])
    grains_size = n_slots * (SES_GRAIN // SECTOR)

    const = struct.pack(
        "<26Q",
        SES_MAGIC,
        SES_VERSION,
        cap_sectors,
        SES_GRAIN // SECTOR,
        SES_GT_SECTORS,
        0,  # flags
        0,
        0,
        0,
        0,  # reserved
        volatile_off,
        1,
        journal_hdr_off,
        2,
        journal_off,
        journal_size,
        gd_off,
        gd_size,
        gt_off,
        gt_size,
        bitmap_off,
        bitmap_size,
        backmap_off,
        backmap_size,
        grains_off,
        grains_size,
    ).ljust(SECTOR, b"\0")
    volatile = struct.pack("<4Q", SES_VOLATILE_MAGIC, len(used_tables), 1, 0).ljust(SECTOR, b"\0")

    out = bytearray(grains_off * SECTOR)
    out[0:SECTOR] = const
    out[volatile_off * SECTOR : (volatile_off + 1) * SECTOR] = volatile
    gd = [0] * gd_entries
    for t, num in numbers.items():
        gd[t] = (0x10000000 << 32) | num
    struct.pack_into(f"<{gd_entries}Q", out, gd_off * SECTOR, *gd)
    gts = {t: [0] * SES_GTES for t in used_tables}
    for g, slot in slots.items():
        gts[g // SES_GTES][g % SES_GTES] = ses_entry(slot)
    for g in zeroed:
        gts[g // SES_GTES][g % SES_GTES] = 2 << 60
    for k, g in enumerate(sorted(unmapped)):
        gts[g // SES_GTES][g % SES_GTES] = (1 << 60) | (0x123 << 48) | k  # stale slot bits
    for t, table in gts.items():
        struct.pack_into(
            f"<{SES_GTES}Q", out, (gt_off + numbers[t] * SES_GT_SECTORS) * SECTOR, *table
        )
    top = max(slots.values(), default=-1) + 1
    out += bytes(top * SES_GRAIN)
    for g, slot in slots.items():
        at = grains_off * SECTOR + slot * SES_GRAIN
        out[at : at + SES_GRAIN] = grains[g]
    layout = SesLayout(gd_off, gt_off, grains_off, numbers, slots)
    return bytes(out), layout


# --- descriptors and files --------------------------------------------------------------------


@dataclass(frozen=True)
class BaseInfo:
    cid: str
    capacity: int  # bytes


def read_base_info(descriptor: Path) -> BaseInfo:
    """CID and capacity of a qemu-made VMDK: a text descriptor or a monolithicSparse file."""
    raw = descriptor.read_bytes()[: 1 << 20]
    if raw[:4] == b"KDMV":
        off, size = struct.unpack_from("<QQ", raw, 28)
        raw = raw[off * SECTOR : (off + size) * SECTOR]
    text = raw.split(b"\0", 1)[0].decode()
    cid = re.search(r"^CID=([0-9a-fA-F]{1,8})\s*$", text, re.M)  # qemu does not zero-pad
    extents = re.findall(r"^(?:RW|RDONLY)\s+(\d+)\s+\w+", text, re.M)
    if not cid or not extents:
        raise ValueError(f"{descriptor}: no CID or extents in the descriptor")
    return BaseInfo(cid.group(1).lower().zfill(8), sum(int(n) for n in extents) * SECTOR)


def delta_descriptor(
    *, cid: str, parent_cid: str, create_type: str, parent: str, sectors: int, kind: str, file: str
) -> str:
    """A delta's descriptor as ESX writes it (CID before parentCID: qemu finds the first)."""
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        f"CID={cid}\n"
        f"parentCID={parent_cid}\n"
        'isNativeSnapshot="no"\n'
        f'createType="{create_type}"\n'
        f'parentFileNameHint="{parent}"\n'
        "\n"
        "# Extent description\n"
        f'RW {sectors} {kind} "{file}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        'ddb.longContentID = "0123456789abcdef0123456789abcdef"\n'
    )


def write_cowd_delta(
    base_descriptor: Path,
    out_dir: Path,
    name: str,
    changes: Mapping[int, bytes],
    **kwargs: object,
) -> Path:
    """Write ``<name>-delta.vmdk`` and descriptor ``<name>.vmdk`` over the base; return the
    descriptor.  ``kwargs`` go to build_cowd."""
    info = read_base_info(base_descriptor)
    extent = f"{name}-delta.vmdk"
    data = build_cowd(info.capacity, changes, parent_name=base_descriptor.name, **kwargs)  # type: ignore[arg-type]
    (out_dir / extent).write_bytes(data)
    desc = out_dir / f"{name}.vmdk"
    desc.write_text(
        delta_descriptor(
            cid="fedcba98",
            parent_cid=info.cid,
            create_type="vmfsSparse",
            parent=base_descriptor.name,
            sectors=info.capacity // SECTOR,
            kind="VMFSSPARSE",
            file=extent,
        )
    )
    return desc


def write_sesparse_delta(
    base_descriptor: Path,
    out_dir: Path,
    name: str,
    changes: Mapping[int, bytes],
    **kwargs: object,
) -> tuple[Path, SesLayout]:
    """Write ``<name>-sesparse.vmdk`` and descriptor ``<name>.vmdk``; ``kwargs`` go to
    build_sesparse.  The extent file is written sparse where the slot gap leaves a hole."""
    info = read_base_info(base_descriptor)
    extent = f"{name}-sesparse.vmdk"
    data, layout = build_sesparse(info.capacity, changes, **kwargs)  # type: ignore[arg-type]
    with open(out_dir / extent, "wb") as f:
        pos = 0
        chunk = 1 << 16
        while pos < len(data):
            piece = data[pos : pos + chunk]
            if piece.count(0) == len(piece):
                f.seek(len(piece), 1)
            else:
                f.write(piece)
            pos += len(piece)
        f.truncate(len(data))
    desc = out_dir / f"{name}.vmdk"
    desc.write_text(
        delta_descriptor(
            cid="89abcdef",
            parent_cid=info.cid,
            create_type="seSparse",
            parent=base_descriptor.name,
            sectors=info.capacity // SECTOR,
            kind="SESPARSE",
            file=extent,
        )
    )
    return desc, layout
