"""Disk images with real partition tables for the partition tests, and ways to damage them.

Images are built by util-linux (``sfdisk``, and ``fdisk -b 4096`` for 4Kn GPT) into sparse files,
so the tests compare our parser with an independent implementation of the same formats.
"""

from __future__ import annotations

import json
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

from vcbfs.blocks.source import ByteSource

MIB = 1 << 20

MBR_LABEL_ID = 0x1A2B3C4D
GPT_LABEL_ID = "11111111-2222-3333-4444-555555555555"

EFI = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MSR = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LDM_METADATA = "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3"


class BytesSource(ByteSource):
    """An in-memory disk: a ByteSource over ``bytes`` (or a bytearray, copied)."""

    def __init__(self, data: bytes | bytearray, name: str = "mem.img"):
        self._data = bytes(data)
        self.size = len(self._data)
        self.name = name

    def _read(self, offset: int, n: int) -> bytes:
        return self._data[offset : offset + n]


def _run(cmd: list[str], stdin: str | None = None) -> str:
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def sfdisk_image(path: Path, size: int, script: str) -> Path:
    """A sparse file of ``size`` bytes partitioned by ``sfdisk`` from ``script``.

    ``{dev}`` in the script is replaced by the image path (for ``{dev}5 : ...`` lines).
    """
    with open(path, "wb") as f:
        f.truncate(size)
    _run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never", str(path)],
        script.replace("{dev}", str(path)),
    )
    return path


def sfdisk_json(path: Path) -> dict[str, Any]:
    """``sfdisk --json`` of an image: the reference reading of its partition table."""
    return json.loads(_run(["sfdisk", "--json", str(path)]))["partitiontable"]


def fdisk_4k_gpt_image(path: Path, size: int) -> Path:
    """A GPT image with 4096-byte logical sectors and two Linux partitions, made by fdisk."""
    with open(path, "wb") as f:
        f.truncate(size)
    _run(["fdisk", "-b", "4096", str(path)], "g\nn\n1\n\n+1M\nn\n2\n\n+2M\nw\n")
    return path


def fdisk_4k_list(path: Path) -> list[dict[str, str]]:
    """``fdisk -b 4096 -l`` rows (Device, Start, Sectors, Type-UUID, UUID) of a 4Kn image."""
    out = _run(
        ["fdisk", "-b", "4096", "-l", "-o", "Device,Start,Sectors,Type-UUID,UUID", str(path)]
    )
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Device"))
    keys = lines[head].split()
    return [dict(zip(keys, line.split(), strict=True)) for line in lines[head + 1 :] if line]


MBR_SCRIPT = """label: dos
label-id: 0x1A2B3C4D

{dev}1 : start=2048, size=2048, type=83, bootable
{dev}3 : start=4096, size=10240, type=f
{dev}4 : start=14336, size=1024, type=7
{dev}5 : size=1024, type=83
{dev}6 : size=1024, type=82
{dev}7 : size=1024, type=7
"""
"""8 MiB: primaries 1 and 4, slot 2 empty, extended 3 holding logicals 5, 6, 7."""

GPT_SCRIPT = f"""label: gpt
label-id: {GPT_LABEL_ID}

{{dev}}1 : start=2048, size=2048, type={EFI}, name="EFI system partition", \
uuid=AAAAAAAA-0000-0000-0000-000000000001
{{dev}}2 : start=4096, size=256, type={MSR}, name="Microsoft reserved partition", \
uuid=AAAAAAAA-0000-0000-0000-000000000002
{{dev}}3 : start=6144, size=4096, type={BASIC_DATA}, name="Basic data partition", \
uuid=AAAAAAAA-0000-0000-0000-000000000003, attrs="RequiredPartition GUID:63"
{{dev}}4 : start=10240, size=2048, type={LINUX}, name="données", \
uuid=AAAAAAAA-0000-0000-0000-000000000004
{{dev}}6 : start=12288, size=2048, type={LDM_METADATA}, name="LDM metadata partition", \
uuid=AAAAAAAA-0000-0000-0000-000000000006
"""
"""8 MiB: entries 1-4 and 6 (entry 5 empty), incl. EFI, MSR, basic data and LDM metadata."""

LDM_MBR_SCRIPT = """label: dos
label-id: 0x0BADF00D

start=2048, size=2048, type=7
start=4096, type=42
"""
"""4 MiB: an NTFS primary and a Windows dynamic-disk (LDM, 0x42) partition."""


def gpt_headers(buf: bytes | bytearray, ss: int = 512) -> list[int]:
    """Byte offsets of the primary (LBA 1) and backup (last LBA) GPT header sectors."""
    return [ss, (len(buf) // ss - 1) * ss]


def gpt_entry_array(buf: bytes | bytearray, header: int, ss: int = 512) -> int:
    """Byte offset of the entry array the GPT header at byte ``header`` points to."""
    return struct.unpack_from("<Q", buf, header + 72)[0] * ss


def fix_gpt_crcs(buf: bytearray, ss: int = 512) -> None:
    """Recompute the entry-array and header CRCs of both GPT headers, where they are sane.

    Used after patching a field on purpose, so the parser sees a self-consistent (but wrong)
    table instead of stopping at the checksum.
    """
    for off in gpt_headers(buf, ss):
        if buf[off : off + 8] != b"EFI PART":
            continue
        hsize = struct.unpack_from("<I", buf, off + 12)[0]
        elba, count, esize = struct.unpack_from("<QII", buf, off + 72)
        n = count * esize
        if 0 < n <= MIB and elba * ss + n <= len(buf):
            crc = zlib.crc32(buf[elba * ss : elba * ss + n])
            struct.pack_into("<I", buf, off + 88, crc)
        if 92 <= hsize <= ss:
            struct.pack_into("<I", buf, off + 16, 0)
            struct.pack_into("<I", buf, off + 16, zlib.crc32(buf[off : off + hsize]))


def ebr_chain_image(n: int) -> bytearray:
    """An MBR disk whose extended partition holds a well-formed chain of ``n`` EBRs.

    EBR ``k`` sits at sector ``1 + 2k`` and describes a one-sector Linux logical right after it.
    """
    sectors = 2 * n + 2
    buf = bytearray((sectors + 1) * 512)
    struct.pack_into("<B3sB3sII", buf, 446, 0, b"", 0x05, b"", 1, sectors)
    buf[510:512] = b"\x55\xaa"
    for k in range(n):
        ebr = (1 + 2 * k) * 512
        struct.pack_into("<B3sB3sII", buf, ebr + 446, 0, b"", 0x83, b"", 1, 1)
        if k < n - 1:
            struct.pack_into("<B3sB3sII", buf, ebr + 462, 0, b"", 0x05, b"", 2 * (k + 1), 2)
        buf[ebr + 510 : ebr + 512] = b"\x55\xaa"
    return buf


def table_sectors(buf: bytes | bytearray, ss: int = 512) -> list[int]:
    """Byte offsets of the non-zero sectors of a pristine image: its partition-table sectors."""
    zero = bytes(ss)
    return [off for off in range(0, len(buf), ss) if buf[off : off + ss] != zero]
