"""A "fidelity" NTFS volume: what Windows stores that a plain NTFS reader gets wrong.

``build_fidelity_image(root)`` makes ``volume.img`` (a bare 1 GiB NTFS volume, no partition
table, 512-byte sectors, 4 KiB clusters, made by ``mkntfs`` and populated through ``ntfs-3g``)
and ``manifest.json`` beside it: what a faithful reader must return for every path.  It holds:

- ``wof/<ALGORITHM>/``: WOF ("compact OS") files of provider 2 (FILE) for XPRESS4K, XPRESS8K,
  XPRESS16K and LZX: sizes 0, 1, 4095, 4096, 4097, 32769 and 5 MiB (mixed data: some chunks
  stored raw), a wholly random file (stored whole by wimlib: every chunk raw), 64 KiB of zeros
  (for LZX a 160-byte, resident WofCompressedData) and x86-like code full of E8 calls.
  ``wof/LZX/`` also holds two files libfwnt decodes wrongly (``E8_TAIL``, ``LENGTHS_TRAP``).
  ``wof/plain/`` holds every one of these contents as a plain file.
- ``wof/big/big.bin``: LZX, 4 GiB + 12345 bytes, mostly zeros, data around 0, 2 GiB and
  4 GiB: a chunk table of 8-byte entries.
- ``wof/corrupt/``: a damaged chunk (LZX, XPRESS4K), a chunk table pointing past the stream,
  one going backwards, and a sound neighbour (``good.bin``).
- ``wof/wim/backed.bin``: WIM-backed WOF (provider 1): its data is in a .wim we do not have.
- ``stubs/``: Data Deduplication, cloud (dehydrated: OFFLINE + RECALL_ON_DATA_ACCESS; a CLOUD_1
  one: OFFLINE only), HSM, HSM2 and unknown-tag reparse points over sparse data (and one of size
  0), with two named streams on the dehydrated cloud file; a hydrated cloud file and an
  unknown tag over real data (readable).
- ``efs/``: EFS-encrypted files ($DATA flagged 0x4000, FILE_ATTRIBUTE_ENCRYPTED, an $EFS
  stream), ciphertext random.
- ``bench/``: one 20 MiB mixed file four ways: plain (ntfscp), LZNT1, WOF LZX, WOF XPRESS4K.
- ``streams/`` (100 KiB, 65536 and 65537-byte streams, a 200-character name of 330 UTF-8
  bytes, 50 streams, a directory's 100 KiB stream), ``links/`` (a relative symlink and a
  junction, raw reparse data), ``hardlinks/`` (3 names in 2 directories), ``compressed/``
  (LZNT1), ``sparse/`` (data at both ends), ``names/`` (spaces, leading '-', accents, emoji,
  a newline) and ``plain/`` (sizes 0 to 1 MiB + 1).

The manifest (``format`` 1) has ``volume``, ``facts`` (measured during the build), ``sources``
(a WOF file -> the plain file with the same content; for a corrupt one: what it was made from)
and ``entries``: relative POSIX path -> a dict with

- always: ``kind`` (one of ``KINDS``), ``size`` (the logical size a reader must report; 0 for
  directories, and for symlinks and junctions: their unnamed data is empty), ``expect`` ("data"
  or "eio"), ``ino`` (MFT record number) and ``attributes`` (the NTFS file attributes as ntfs-3g
  reports them: $STANDARD_INFORMATION's, plus FILE_ATTRIBUTE_DIRECTORY for directories);
- ``sha256`` of the content a faithful reader returns, for every file with ``expect`` "data";
- reparse points: ``tag``, ``reparse_hex`` (the whole reparse buffer); stubs and other "eio"
  files: ``reason``; ``streams``: {name: {size, sha256}} where the file has named streams;
- WOF: ``algorithm``, ``chunk_size``, ``chunks``, ``chunk_entry_bytes``, ``wof_stream_size``,
  ``wof_stream_sha256``, ``wof_stream_resident``, ``data_resident`` (the unnamed $DATA),
  ``raw_chunks`` (chunks stored uncompressed), ``wim_blob`` (how wimlib kept the file:
  compressed, stored whole, none when empty; or assembled, damaged), ``libfwnt_bad_chunks``
  ([chunk, "raises" | "wrong"]: where pyfwnt disagrees with wimlib), ``data_chunks`` (big.bin:
  [offset, length] of its non-zero chunks); corrupt ones ``bad_chunk`` (the first chunk no
  reader can decode; those before it are sound) and ``source_sha256``;
- ``provider`` (wof-wim); efs: ``raw_size`` (stored) and ``ciphertext_sha256`` (of the first
  ``size`` stored bytes: what a reader ignoring the encryption returns); ``names``/``nlink``
  (hard links), ``target``/``print_name``/``ntfs3g_target`` (links),
  ``sparse`` (sparse/both-ends.bin).

The image is built once (about 15 s) and cached in ``<cache>/fidelity-<hash of this file>``;
concurrent builders wait on a lock, build in a sibling folder and rename it.  Read-only!

Facts relied on (wimlib 1.13.5, ntfs-3g 2022.10.3, libfwnt 20260602, libfsntfs 20260827;
measured here):

- ``wimcapture --compress=XPRESS|LZX --chunk-size=N`` keeps each file as a non-solid blob in
  the WofCompressedData layout: (chunks - 1) little-endian offsets (4 bytes; 8 when the size
  exceeds 0xFFFFFFFF), relative to the end of the table, then the chunks; a chunk whose stored
  size equals its uncompressed size is raw.  ``wiminfo --blobs`` gives each blob's SHA-1,
  offset, stored and uncompressed size and flags; a blob without WIM_RESHDR_FLAG_COMPRESSED
  (every chunk incompressible, or a 1-byte file) is stored whole, without a table.  Empty
  files have no blob.  Every chunk is decoded here with wimlib's decompressor (libwim, through
  ctypes) and with pyfwnt before anything is written; ``wimverify`` checks each .wim.
- libfwnt (pyfwnt) disagrees with wimlib on valid LZX: it translates E8 calls 10 to 7 bytes
  before a chunk's end (LZX leaves the last 10 bytes alone) and it rejects a block whose
  length code is empty (a chunk of text then random data).  Contents meant for every reader
  avoid both (``_clean_e8``; ``_mixed`` works in whole 32 KiB chunks); the traps keep them.
  Damage that both decoders reject: LZX with an invalid block type (0xFF first bytes), XPRESS
  with an over-subscribed Huffman table (256 bytes of 0xFF).  pyfwnt decodes a truncated LZX
  chunk to a full chunk of wrong bytes.
- libfsntfs (pyfsntfs) reads the chunk table with 8-byte entries only when the *stream*
  exceeds 4 GiB (so it cannot read big.bin), reads (chunks) entries instead of (chunks - 1)
  (so it fails on a 1-byte WOF file), and returns zeros for the sparse data of stubs and of
  WIM-backed WOF files.
- ntfs-3g: ``truncate`` of an empty file sets FILE_ATTRIBUTE_SPARSE_FILE and allocates nothing
  (sizes 0 and 1 stay resident, not sparse); ``system.ntfs_attrib_be`` keeps OFFLINE (0x1000)
  but drops SPARSE, ENCRYPTED and RECALL_ON_DATA_ACCESS (0x400000), so that bit is patched into
  $STANDARD_INFORMATION after unmounting (the $FILE_NAME copies keep the old flags).  Its mount
  shows WOF files and stubs as symlinks to "unsupported reparse tag 0x..." and refuses to open
  any of their streams (ELIBACC): ``ntfscat -i INO -a 0x80 -n NAME`` reads them.
- ntfs-3g's ``efs_raw`` mount option plus ``setxattr system.ntfs_efsinfo`` (an $EFS value whose
  first ULONG is its length) makes a real encrypted file: the raw data written first must be
  512 * k + 2 bytes, the last two the padding length; $DATA gets flag 0x4000 and the data size
  512 * k - padding, $STANDARD_INFORMATION gets FILE_ATTRIBUTE_ENCRYPTED.
- ``streams_interface=windows`` takes stream names of 200 non-ASCII characters (400 bytes of
  UTF-8) and streams on directories (``dir:name``); file names with a newline are accepted.
- After ``setxattr system.ntfs_reparse_data`` stat fails until the volume is mounted again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import stat
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyfwnt

from tests.images import build_once, cache_dir, run
from tests.ntfs.ntfsimages import (
    CLUSTER,
    GIB,
    KIB,
    MIB,
    SECTOR,
    lgetxattr,
    mount_point_reparse_data,
    ntfs3g_mounted,
    ntfsinfo_runs,
    sha256_file,
    symlink_reparse_data,
)
from vcbfs.errors import CorruptError
from vcbfs.ntfs.compression import lzx_chunk, xpress_huffman_chunk

__all__ = [
    "ALGORITHMS",
    "BAD_CHUNK",
    "E8_TAIL",
    "KINDS",
    "LENGTHS_TRAP",
    "WOF_STREAM",
    "FidelityImage",
    "WofAlgorithm",
    "build_fidelity_image",
    "data_residency",
    "decode_wof_stream",
    "fidelity_cache_dir",
    "libfwnt_decompress",
    "libfwnt_disagreements",
    "ntfscat",
    "reparse_buffer",
    "split_wof_stream",
    "wim_reparse",
    "wimlib_decompress",
    "wof_chunk",
    "wof_reparse",
]

log = logging.getLogger(__name__)

VOLUME_SIZE = GIB
LABEL = "VCBFS-FIDELITY"

KINDS = (
    "wof",
    "wof-wim",
    "stub",
    "plain",
    "compressed",
    "stream-host",
    "symlink",
    "junction",
    "hardlink",
    "efs",
    "dir",
)

IO_REPARSE_TAG_WOF = 0x80000017
IO_REPARSE_TAG_DEDUP = 0x80000013
IO_REPARSE_TAG_CLOUD = 0x9000001A
IO_REPARSE_TAG_CLOUD_1 = 0x9000101A
IO_REPARSE_TAG_HSM = 0xC0000004
IO_REPARSE_TAG_HSM2 = 0x80000006
IO_REPARSE_TAG_SYMLINK = 0xA000000C
IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
UNKNOWN_TAG_SPARSE = 0x8000BEEF
UNKNOWN_TAG_EMPTY = 0x8000CAFE
UNKNOWN_TAG_DATA = 0x8000D00D

WOF_PROVIDER_WIM = 1
WOF_PROVIDER_FILE = 2

FILE_ATTRIBUTE_OFFLINE = 0x1000
FILE_ATTRIBUTE_ENCRYPTED = 0x4000
FILE_ATTRIBUTE_RECALL_ON_DATA_ACCESS = 0x400000
ATTRIB_COMPRESSED_DIR = 0x810  # DIRECTORY | COMPRESSED: files made in it are LZNT1

WOF_STREAM = "WofCompressedData"
#: How ntfs-3g shows the junction's target (``<mnt>`` standing for the mount point).
JUNCTION_NTFS3G = "<mnt>/links/target-dir"
_KEY = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def fidelity_cache_dir() -> Path:
    """The image's cache folder: beside ``cache_dir(...)``, keyed by this file's hash only."""
    return cache_dir("fidelity").with_name(f"fidelity-{_KEY}")


@dataclasses.dataclass(frozen=True)
class WofAlgorithm:
    """A WOF FILE-provider algorithm and how wimlib makes its chunks."""

    name: str
    number: int  # FILE_PROVIDER_EXTERNAL_INFO_V1.Algorithm
    wimlib: str  # wimcapture --compress=
    chunk_size: int


ALGORITHMS: dict[str, WofAlgorithm] = {
    a.name: a
    for a in (
        WofAlgorithm("XPRESS4K", 0, "XPRESS", 4096),
        WofAlgorithm("LZX", 1, "LZX", 32768),
        WofAlgorithm("XPRESS8K", 2, "XPRESS", 8192),
        WofAlgorithm("XPRESS16K", 3, "XPRESS", 16384),
    )
}

#: The per-algorithm WOF files (same content in every algorithm and in wof/plain/).
WOF_SIZES = (0, 1, 4095, 4096, 4097, 32769, 5 * MIB)
WOF_RANDOM_SIZE = 100_000
WOF_CODE_SIZE = 300_001
BENCH_SIZE = 20 * MIB
BIG_SIZE = 4 * GIB + 12345
CORRUPT_SIZE = 200 * KIB + 77
WIM_BACKED_SIZE = MIB + 5
BAD_CHUNK = 2  # the chunk damaged in each wof/corrupt/ file


@dataclasses.dataclass(frozen=True)
class FidelityImage:
    """The built volume (``path``: volume.img) and its parsed manifest (manifest.json)."""

    path: Path
    manifest: dict[str, Any] = dataclasses.field(compare=False, repr=False)

    big_wof: ClassVar[str] = "wof/big/big.bin"  # 4 GiB + 12345 bytes, LZX, 8-byte table
    #: The 20 MiB benchmark file four ways (same content).
    bench: ClassVar[dict[str, str]] = {
        "plain": "bench/plain.bin",
        "lznt1": "bench/lznt1/file.bin",
        "wof-lzx": "bench/wof-lzx.bin",
        "wof-xpress4k": "bench/wof-xpress4k.bin",
    }

    @property
    def root(self) -> Path:
        """The cache folder holding volume.img, manifest.json and build.json."""
        return self.path.parent

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        """Relative POSIX path -> what a faithful reader must see (see the module doc)."""
        return self.manifest["entries"]

    @property
    def sources(self) -> dict[str, str]:
        """WOF file -> plain file with the same content (for a corrupt one: its source)."""
        return self.manifest["sources"]

    def entry(self, path: str) -> dict[str, Any]:
        return self.entries[path]

    def paths(self, **fields: Any) -> list[str]:
        """Sorted paths whose entries have all these values, e.g. ``paths(kind="wof")``."""
        return sorted(
            p for p, e in self.entries.items() if all(e.get(k) == v for k, v in fields.items())
        )

    def readable_files(self) -> list[str]:
        """Paths of every file whose content a faithful reader returns (``sha256`` known)."""
        return sorted(p for p, e in self.entries.items() if e["expect"] == "data" and "sha256" in e)

    def libfwnt_traps(self) -> list[str]:
        """WOF files with chunks libfwnt (pyfwnt, pyfsntfs) decodes wrongly."""
        return sorted(p for p, e in self.entries.items() if e.get("libfwnt_bad_chunks"))


# --- content generators (deterministic) --------------------------------------------------------

_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
_COMPONENTS = ("vss", "backup", "net.tcp", "disk0", "scheduler", "auth", "cbt", "fuse")
_MESSAGES = (
    "snapshot created for volume",
    "reading changed blocks since last run",
    "connection reset by peer, retrying",
    "checksum verified for extent",
    "user logged on from workstation",
    "queue drained, sleeping",
    "could not open file: access denied",
)
_OPCODES = b"\x55\x89\xe5\x8b\x45\x08\x83\xc4\x10\x5d\xc3\x90\x31\xc0\xe8"
LZX_CHUNK = 32768


def _log_text(rng: random.Random, size: int) -> bytes:
    """Log lines: timestamps, levels, components, messages, numbers."""
    lines, n = [], 0
    while n < size:
        line = (
            f"2026-11-{rng.randrange(1, 29):02d} {rng.randrange(24):02d}:"
            f"{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d} "
            f"{rng.choice(_LEVELS):5} [{rng.choice(_COMPONENTS)}] {rng.choice(_MESSAGES)} "
            f"id={rng.randrange(1 << 20)} took={rng.randrange(5000)}ms\r\n"
        ).encode()
        lines.append(line)
        n += len(line)
    return b"".join(lines)[:size]


def _code(rng: random.Random, size: int, at: int = 0) -> bytes:
    """x86-like code: basic blocks with many E8 calls (rel32 to a few targets) and 0xE8 bytes."""
    targets = [rng.randrange(1 << 22) for _ in range(48)]
    blocks = [bytes(rng.choice(_OPCODES) for _ in range(rng.randrange(6, 40))) for _ in range(96)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(blocks)
        rel = (rng.choice(targets) - (at + len(out) + 5)) & 0xFFFFFFFF
        out += b"\xe8" + rel.to_bytes(4, "little")
    return bytes(out[:size])


def _clean_e8(data: bytes) -> bytes:
    """``data`` with no 0xE8 among the last 10 bytes of any 32 KiB chunk (nor of the data).

    libfwnt translates E8 calls at chunk offsets size-10 .. size-7, which LZX (wimlib, and
    Windows) leaves alone: see ``E8_TAIL``.  Contents meant for every reader avoid them.
    """
    out = bytearray(data)
    ends = [*range(LZX_CHUNK, len(out) + 1, LZX_CHUNK), len(out)]
    for end in ends:
        for i in range(max(0, end - 10), end):
            if out[i] == 0xE8:
                out[i] = 0xE9
    return bytes(out)


def _mixed(rng: random.Random, size: int) -> bytes:
    """Logs, code, UTF-16 text, random (incompressible) and zero runs of 1-5 whole 32 KiB
    chunks each (a chunk of text then random data trips libfwnt: see ``LENGTHS_TRAP``)."""
    parts, n = [], 0
    while n < size:
        kind = rng.choices(("log", "code", "utf16", "random", "zeros"), (40, 28, 10, 14, 8))[0]
        length = rng.randrange(1, 6) * LZX_CHUNK
        if kind == "log":
            part = _log_text(rng, length)
        elif kind == "code":
            part = _code(rng, length, n)
        elif kind == "utf16":
            part = _log_text(rng, length // 2).decode().encode("utf-16-le")
        elif kind == "random":
            part = rng.randbytes(length)
        else:
            part = bytes(length)
        parts.append(part)
        n += len(part)
    return _clean_e8(b"".join(parts)[:size])


#: LZX files that libfwnt (pyfwnt, pyfsntfs) decodes wrongly, with the chunks it gets wrong.
E8_TAIL = "e8-chunk-tail.bin"  # E8 calls 7 to 10 bytes before chunk ends: libfwnt translates
LENGTHS_TRAP = "text-then-random.bin"  # chunks of text then random: an empty lengths code


#: Distance from each chunk's end of the E8 byte in ``E8_TAIL`` (5 chunks and a partial one):
#: 10, 9, 8 and 7 are inside the last 10 bytes (not translated; libfwnt does), 11 is outside.
E8_TAIL_DISTANCES = (10, 9, 8, 7, 11, 9)


def _e8_tail() -> bytes:
    """Five chunks and a partial one of text, an E8 call near each chunk's end (see E8_TAIL)."""
    data = bytearray(_log_text(random.Random(9), 5 * LZX_CHUNK + 20000))
    ends = [*range(LZX_CHUNK, 5 * LZX_CHUNK + 1, LZX_CHUNK), len(data)]
    for end, distance in zip(ends, E8_TAIL_DISTANCES, strict=True):
        at = end - distance
        data[at : at + 5] = (b"\xe8" + (4096).to_bytes(4, "little"))[: end - at]
    return bytes(data)


def _lengths_trap() -> bytes:
    rng = random.Random(10)
    return b"".join(_log_text(rng, 12 * KIB) + rng.randbytes(20 * KIB) for _ in range(3))


def _wof_contents() -> dict[str, bytes]:
    """The per-algorithm WOF files: name -> content."""
    out = {}
    for size in WOF_SIZES:
        rng = random.Random(size)
        out[f"size-{size}.bin"] = _mixed(rng, size) if size > MIB else _log_text(rng, size)
    out[f"random-{WOF_RANDOM_SIZE}.bin"] = random.Random(7).randbytes(WOF_RANDOM_SIZE)
    out[f"code-e8-{WOF_CODE_SIZE}.bin"] = _clean_e8(_code(random.Random(8), WOF_CODE_SIZE))
    out["zeros-65536.bin"] = bytes(65536)  # LZX: a WofCompressedData stream of a few bytes
    return out


def _big_chunks() -> dict[int, bytes]:
    """The big file's non-zero 32 KiB chunks (index -> content); every other chunk is zeros."""
    rng = random.Random(4)
    last = (BIG_SIZE - 1) // LZX_CHUNK
    mid = 2 * GIB // LZX_CHUNK

    def chunk(data: bytes, at: int = 0) -> bytes:
        return (bytes(at) + data + bytes(LZX_CHUNK))[:LZX_CHUNK]

    text = _log_text(rng, 12 * KIB)
    return {
        0: chunk(text[:6000]),
        mid: chunk(text[6000:9000], LZX_CHUNK - 1000),  # 3000 bytes across chunks, 2 GiB+
        mid + 1: chunk(text[7000:9000]),
        last - 1: _clean_e8(chunk(_code(rng, 1000), LZX_CHUNK - 1000)),  # the KB below 4 GiB
        last: rng.randbytes(BIG_SIZE - last * LZX_CHUNK),  # past 4 GiB, random: stored raw
    }


def _big_content(distinct: dict[int, bytes]) -> Iterator[bytes]:
    zero = bytes(LZX_CHUNK)
    for i in range(_chunk_count(BIG_SIZE, LZX_CHUNK)):
        yield distinct.get(i, zero)


# --- chunk codecs: wimlib's (the reference) and libfwnt's ------------------------------------


def wimlib_decompress(algorithm: str, data: bytes, size: int) -> bytes:
    """One chunk decoded by wimlib's own decompressor (libwim.so.15), through vcbfs's wrapper.

    wimlib is the reference here: Windows reads the WOF files it writes, and ntfs-3g's
    system-compression plugin decodes with its code.  Raises OSError if the chunk is invalid.
    """
    alg = ALGORITHMS[algorithm]
    decode = lzx_chunk if alg.wimlib == "LZX" else xpress_huffman_chunk
    try:
        return decode(data, size, alg.chunk_size)
    except CorruptError as exc:
        raise OSError(f"wimlib: invalid {algorithm} chunk: {exc}") from None


def libfwnt_decompress(algorithm: str, data: bytes, size: int) -> bytes:
    """One chunk decoded by pyfwnt (libfwnt: what pyfsntfs and vcbfs use)."""
    if ALGORITHMS[algorithm].wimlib == "LZX":
        return pyfwnt.lzx_decompress(data, size)
    return pyfwnt.lzxpress_huffman_decompress(data, size)


# --- WOF streams: wimlib's blobs, the chunk table, decoding ---------------------------------


@dataclasses.dataclass(frozen=True)
class _Blob:
    offset: int
    stored: int
    size: int
    compressed: bool


def _capture(src: Path, wim: Path, algorithm: WofAlgorithm) -> dict[str, _Blob]:
    """wimcapture ``src``; SHA-1 hex of each file's content -> its blob in the .wim."""
    run(
        "wimcapture",
        src,
        wim,
        f"--compress={algorithm.wimlib}",
        f"--chunk-size={algorithm.chunk_size}",
        "--threads=1",
    )
    run("wimverify", wim)  # wimlib decodes every blob and checks its SHA-1
    blobs = {}
    for block in run("wiminfo", wim, "--blobs").split("\n\n"):
        fields = dict(re.findall(r"^(\S.*?) +=[ ]?(.*)$", block, re.MULTILINE))
        if not fields or "METADATA" in fields["Flags"]:
            continue
        blobs[fields["Hash"].removeprefix("0x")] = _Blob(
            offset=int(fields["Offset in WIM"].split()[0]),
            stored=int(fields["Compressed size"].split()[0]),
            size=int(fields["Uncompressed size"].split()[0]),
            compressed="WIM_RESHDR_FLAG_COMPRESSED" in fields["Flags"],
        )
    return blobs


def _entry_bytes(size: int) -> int:
    return 8 if size > 0xFFFFFFFF else 4


def _chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def wof_chunk(stream: bytes, size: int, chunk_size: int, index: int) -> bytes:
    """Stored chunk ``index`` of a WofCompressedData stream; ValueError if its extent is
    unsound (only its own two table entries are looked at)."""
    n = _chunk_count(size, chunk_size)
    width = _entry_bytes(size)
    table = (n - 1) * width
    if not 0 <= index < n or len(stream) < table:
        raise ValueError(f"chunk {index}: no such chunk, or a stream shorter than its table")

    def start(i: int) -> int:
        if i == 0:
            return 0
        if i == n:
            return len(stream) - table
        return int.from_bytes(stream[(i - 1) * width : i * width], "little")

    lo, hi = start(index), start(index + 1)
    want = min(chunk_size, size - index * chunk_size)
    if not 0 <= lo < hi <= len(stream) - table or hi - lo > want:
        raise ValueError(f"chunk {index}: bad extent {lo}..{hi}")
    return stream[table + lo : table + hi]


def split_wof_stream(stream: bytes, size: int, chunk_size: int) -> list[bytes]:
    """The stored chunks of a WofCompressedData stream; ValueError if the table is unsound."""
    n = _chunk_count(size, chunk_size)
    if n == 0 and stream:
        raise ValueError("an empty file with a non-empty stream")
    return [wof_chunk(stream, size, chunk_size, i) for i in range(n)]


Decoder = Callable[[str, bytes, int], bytes]


def decode_wof_stream(
    stream: bytes,
    size: int,
    algorithm: str,
    decoder: Decoder = wimlib_decompress,
    memo: dict[bytes, bytes] | None = None,
) -> Iterator[bytes]:
    """The uncompressed chunks of a WofCompressedData stream, one by one (wimlib's decoder by
    default).  Raises ValueError for an unsound chunk extent or a chunk of the wrong size,
    OSError when the decoder rejects a chunk.  ``memo`` (stored -> content) saves repeats."""
    chunk_size = ALGORITHMS[algorithm].chunk_size
    if size == 0 and stream:
        raise ValueError("an empty file with a non-empty stream")
    for i in range(_chunk_count(size, chunk_size)):
        data = wof_chunk(stream, size, chunk_size, i)
        want = min(chunk_size, size - i * chunk_size)
        if len(data) == want:
            out = data
        elif memo is not None and data in memo:
            out = memo[data]
        else:
            out = decoder(algorithm, data, want)
            if memo is not None:
                memo[data] = out
        if len(out) != want:
            raise ValueError(f"chunk {i} decodes to {len(out)} bytes, not {want}")
        yield out


def libfwnt_disagreements(chunks: list[bytes], content: bytes, algorithm: str) -> list[list]:
    """[chunk index, "raises" or "wrong"] for each stored chunk pyfwnt does not decode right."""
    chunk_size = ALGORITHMS[algorithm].chunk_size
    out: list[list] = []
    for i, data in enumerate(chunks):
        want = content[i * chunk_size : (i + 1) * chunk_size]
        if len(data) == len(want):
            continue
        try:
            got = libfwnt_decompress(algorithm, data, len(want))
        except OSError:
            out.append([i, "raises"])
            continue
        if got != want:
            out.append([i, "wrong"])
    return out


def _assemble(chunks: list[bytes], size: int) -> bytes:
    """A WofCompressedData stream: the chunk-offset table, then the chunks."""
    width = _entry_bytes(size)
    table, pos = bytearray(), 0
    for c in chunks[:-1]:
        pos += len(c)
        table += pos.to_bytes(width, "little")
    return bytes(table) + b"".join(chunks)


def _blob_chunks(wim: bytes, blob: _Blob | None, content: bytes, chunk_size: int) -> list[bytes]:
    """The stored chunks of a file from its wimlib blob (raw slices if stored whole)."""
    if not content:
        return []
    assert blob is not None and blob.size == len(content)
    data = wim[blob.offset : blob.offset + blob.stored]
    if not blob.compressed:
        assert data == content
        return [content[i : i + chunk_size] for i in range(0, len(content), chunk_size)]
    chunks = split_wof_stream(data, len(content), chunk_size)
    if _assemble(chunks, len(content)) != data:
        raise RuntimeError("a wimlib blob does not re-assemble to itself")
    return chunks


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class _Wof:
    """One WOF file to write: its content's hash and size and its WofCompressedData stream."""

    algorithm: str
    size: int
    sha256: str
    stream: bytes
    blob: str  # how wimlib kept it: compressed, stored (whole), none (empty), or how made
    raw_chunks: int
    libfwnt_bad_chunks: list[list]

    def entry(self) -> dict[str, Any]:
        alg = ALGORITHMS[self.algorithm]
        return {
            "kind": "wof",
            "size": self.size,
            "expect": "data",
            "sha256": self.sha256,
            "algorithm": self.algorithm,
            "tag": IO_REPARSE_TAG_WOF,
            "reparse_hex": wof_reparse(alg.number).hex(),
            "wof_stream_size": len(self.stream),
            "wof_stream_sha256": _sha(self.stream),
            "chunk_entry_bytes": _entry_bytes(self.size),
            "chunk_size": alg.chunk_size,
            "chunks": _chunk_count(self.size, alg.chunk_size),
            "raw_chunks": self.raw_chunks,
            "wim_blob": self.blob,
            "libfwnt_bad_chunks": self.libfwnt_bad_chunks,
        }


def _raw_chunks(chunks: list[bytes], size: int, chunk_size: int) -> int:
    return sum(len(c) == min(chunk_size, size - i * chunk_size) for i, c in enumerate(chunks))


def _make_wof(algorithm: str, chunks: list[bytes], content: bytes, blob: str) -> _Wof:
    """A WOF file from its stored chunks, every chunk checked with wimlib's and libfwnt's
    decoders; only the LZX traps may have chunks libfwnt gets wrong."""
    stream = _assemble(chunks, len(content))
    if b"".join(decode_wof_stream(stream, len(content), algorithm)) != content:
        raise RuntimeError(f"{algorithm}: a WOF stream does not decode to its source")
    bad = libfwnt_disagreements(chunks, content, algorithm)
    chunk_size = ALGORITHMS[algorithm].chunk_size
    raw = _raw_chunks(chunks, len(content), chunk_size)
    return _Wof(algorithm, len(content), _sha(content), stream, blob, raw, bad)


def _compress_all(work: Path, files: dict[str, dict[str, bytes]]) -> dict[str, dict[str, Any]]:
    """Per algorithm: capture ``files[algorithm]`` (name -> content) with wimlib.

    Returns algorithm -> name -> (stored chunks, blob kind).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, contents in files.items():
        alg = ALGORITHMS[name]
        src = work / f"src-{name}"
        src.mkdir()
        for fname, data in contents.items():
            (src / fname).write_bytes(data)
        wim_path = work / f"{name}.wim"
        blobs = _capture(src, wim_path, alg)
        wim = wim_path.read_bytes()
        out[name] = {}
        for fname, data in contents.items():
            blob = blobs.get(hashlib.sha1(data).hexdigest()) if data else None
            chunks = _blob_chunks(wim, blob, data, alg.chunk_size)
            kind = "none" if blob is None else "compressed" if blob.compressed else "stored"
            out[name][fname] = (chunks, kind)
        shutil.rmtree(src)
        wim_path.unlink()
    return out


# --- reparse buffers ---------------------------------------------------------------------------


def reparse_buffer(tag: int, data: bytes) -> bytes:
    """REPARSE_DATA_BUFFER of a Microsoft tag: tag, data length, reserved, data."""
    return struct.pack("<IHH", tag, len(data), 0) + data


def wof_reparse(algorithm: int) -> bytes:
    """WOF_EXTERNAL_INFO (version 1, FILE provider) + FILE_PROVIDER_EXTERNAL_INFO_V0 (version
    1, algorithm): 16 bytes, the shape Windows stores (V1's Flags belong to the FSCTL only)."""
    body = struct.pack("<4I", 1, WOF_PROVIDER_FILE, 1, algorithm)
    return reparse_buffer(IO_REPARSE_TAG_WOF, body)


def wim_reparse(data_source: int, resource_hash: bytes) -> bytes:
    """WOF_EXTERNAL_INFO (version 1, WIM provider) + WIM_PROVIDER_EXTERNAL_INFO."""
    body = struct.pack("<4Iq", 1, WOF_PROVIDER_WIM, 1, 0, data_source) + resource_hash
    return reparse_buffer(IO_REPARSE_TAG_WOF, body)


def _dedup_reparse(rng: random.Random) -> bytes:
    """Bytes that look like a Data Deduplication reparse value (its layout is undocumented):
    a version, the chunk store's GUID, a stream id, a hash and the stream's size."""
    body = struct.pack("<HH", 1, 0) + rng.randbytes(16) + rng.randbytes(24)
    body += rng.randbytes(32) + struct.pack("<QQ", 300 * KIB, 0x1000) + bytes(24)
    return reparse_buffer(IO_REPARSE_TAG_DEDUP, body)


def _cloud_reparse(tag: int, rng: random.Random) -> bytes:
    """A cloud-files-like value: flags, length, then an 'FeRp' blob with a few elements."""
    elements = struct.pack("<HHI", 7, 8, 0x28) + struct.pack("<HHI", 10, 16, 0x30)
    payload = struct.pack("<Q", 1) + rng.randbytes(16)
    blob = b"FeRp" + struct.pack("<IIHH", 0, 0x28 + len(payload), 1, 2) + elements + payload
    return reparse_buffer(tag, struct.pack("<HH", 1, len(blob) + 4) + blob)


# --- writing through ntfs-3g -------------------------------------------------------------------


class _Manifest:
    """The manifest being collected: entries (what was meant), sources and facts."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, str] = {}
        self.facts: dict[str, Any] = {}
        self.patches: dict[str, int] = {}  # path -> file attributes to set in the MFT record

    def add(
        self, path: str, kind: str, size: int, content: bytes | None = None, **extra: Any
    ) -> None:
        entry: dict[str, Any] = {"kind": kind, "size": size, "expect": "data"}
        if content is not None:
            assert len(content) == size, path
            entry["sha256"] = _sha(content)
        entry.update(extra)
        self.entries[path] = entry

    def dirs(self, mnt: Path, *paths: str) -> None:
        for path in paths:
            (mnt / path).mkdir(parents=True, exist_ok=True)
            parts = path.split("/")
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                self.entries.setdefault(sub, {"kind": "dir", "size": 0, "expect": "data"})


def _write(path: Path, data: bytes = b"") -> None:
    with open(path, "xb") as f:
        f.write(data)


def _write_stream(path: Path, name: str, data: bytes) -> None:
    """A named stream through a ``streams_interface=windows`` mount."""
    with open(f"{path}:{name}", "wb") as f:
        f.write(data)


def _set_reparse(path: Path, buffer: bytes) -> None:
    os.setxattr(path, "system.ntfs_reparse_data", buffer, follow_symlinks=False)


def _add_streams(path: Path, streams: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    for name, data in streams.items():
        _write_stream(path, name, data)
    return {name: {"size": len(data), "sha256": _sha(data)} for name, data in streams.items()}


def _put_wof(mnt: Path, path: str, wof: _Wof, m: _Manifest, **extra: Any) -> None:
    """Create a WOF file: sparse unnamed data, the stream, then the reparse point."""
    p = mnt / path
    _write(p)
    os.truncate(p, wof.size)
    _write_stream(p, WOF_STREAM, wof.stream)
    _set_reparse(p, wof_reparse(ALGORITHMS[wof.algorithm].number))
    m.entries[path] = {**wof.entry(), **extra}


def _populate_wof(
    mnt: Path, m: _Manifest, compressed: dict[str, dict[str, Any]], contents: dict[str, bytes]
) -> None:
    m.dirs(mnt, "wof/plain", *(f"wof/{a}" for a in ALGORITHMS))
    traps = {E8_TAIL: _e8_tail(), LENGTHS_TRAP: _lengths_trap()}
    for fname, data in {**contents, **traps}.items():
        _write(mnt / "wof/plain" / fname, data)
        m.add(f"wof/plain/{fname}", "plain", len(data), data)
    for alg in ALGORITHMS:
        for fname, data in ({**contents, **traps} if alg == "LZX" else contents).items():
            chunks, blob = compressed[alg][fname]
            path = f"wof/{alg}/{fname}"
            wof = _make_wof(alg, chunks, data, blob)
            if bool(wof.libfwnt_bad_chunks) != (fname in traps):
                raise RuntimeError(f"{path}: libfwnt gets chunks {wof.libfwnt_bad_chunks} wrong")
            _put_wof(mnt, path, wof, m)
            m.sources[path] = f"wof/plain/{fname}"
    raw = {a: m.entries[f"wof/{a}/size-{5 * MIB}.bin"]["raw_chunks"] for a in ALGORITHMS}
    if not all(raw.values()):
        raise RuntimeError(f"a 5 MiB WOF file has no raw chunk inside its blob: {raw}")


def _populate_bench(
    mnt: Path, m: _Manifest, compressed: dict[str, dict[str, Any]], data: bytes
) -> None:
    m.dirs(mnt, "bench/lznt1")
    (mnt / "plain.bin").rename(mnt / "bench/plain.bin")  # ntfscp'd onto the fresh volume
    m.add("bench/plain.bin", "plain", len(data), data)
    os.setxattr(mnt / "bench/lznt1", "system.ntfs_attrib_be", ATTRIB_COMPRESSED_DIR.to_bytes(4))
    _write(mnt / "bench/lznt1/file.bin", data)
    m.add("bench/lznt1/file.bin", "compressed", len(data), data)
    for alg, name in (("LZX", "bench/wof-lzx.bin"), ("XPRESS4K", "bench/wof-xpress4k.bin")):
        chunks, blob = compressed[alg]["bench.bin"]
        wof = _make_wof(alg, chunks, data, blob)
        if wof.libfwnt_bad_chunks:
            raise RuntimeError(f"{name}: libfwnt gets chunks {wof.libfwnt_bad_chunks} wrong")
        _put_wof(mnt, name, wof, m)
        m.sources[name] = "bench/plain.bin"


def _big_wof(compressed: dict[str, dict[str, Any]]) -> _Wof:
    """The 4 GiB + 12345 bytes LZX file, assembled from once-compressed distinct chunks."""
    distinct = _big_chunks()
    stored = {i: compressed["LZX"][f"big-{i}.bin"][0] for i in distinct}
    zero = compressed["LZX"]["big-zero.bin"][0]
    assert all(len(c) == 1 for c in (*stored.values(), zero))
    n = _chunk_count(BIG_SIZE, LZX_CHUNK)
    chunks = [stored[i][0] if i in stored else zero[0] for i in range(n)]
    stream = _assemble(chunks, BIG_SIZE)
    want, got = hashlib.sha256(), hashlib.sha256()
    memos: tuple[dict[bytes, bytes], dict[bytes, bytes]] = ({}, {})
    decoded = (
        decode_wof_stream(stream, BIG_SIZE, "LZX", wimlib_decompress, memos[0]),
        decode_wof_stream(stream, BIG_SIZE, "LZX", libfwnt_decompress, memos[1]),
    )
    for a, b, c in zip(_big_content(distinct), *decoded, strict=True):
        want.update(a)
        got.update(b)
        if b != c:
            raise RuntimeError("libfwnt decodes a chunk of the big WOF file differently")
    if want.digest() != got.digest():
        raise RuntimeError("the big WOF stream does not decode to its content")
    raw = _raw_chunks(chunks, BIG_SIZE, LZX_CHUNK)
    return _Wof("LZX", BIG_SIZE, want.hexdigest(), stream, "assembled", raw, [])


def _populate_big(mnt: Path, m: _Manifest, compressed: dict[str, dict[str, Any]]) -> None:
    m.dirs(mnt, "wof/big")
    wof = _big_wof(compressed)
    data_chunks = [[i * LZX_CHUNK, len(c)] for i, c in sorted(_big_chunks().items())]
    _put_wof(mnt, "wof/big/big.bin", wof, m, data_chunks=data_chunks)


def _damage(alg: str, chunks: list[bytes], size: int, how: Callable[[bytes], bytes]) -> bytes:
    """The stream of ``chunks`` with chunk BAD_CHUNK damaged so both decoders reject it."""
    bad = how(chunks[BAD_CHUNK])
    for decoder in (wimlib_decompress, libfwnt_decompress):
        with contextlib.suppress(OSError):
            decoder(alg, bad, ALGORITHMS[alg].chunk_size)
            raise RuntimeError(f"{alg}: {decoder.__name__} decodes the damaged chunk")
    return _assemble([*chunks[:BAD_CHUNK], bad, *chunks[BAD_CHUNK + 1 :]], size)


def _table_entry(stream: bytes, entry: int, value: int) -> bytes:
    out = bytearray(stream)
    out[entry * 4 : (entry + 1) * 4] = value.to_bytes(4, "little")
    return bytes(out)


def _populate_corrupt(
    mnt: Path, m: _Manifest, compressed: dict[str, dict[str, Any]], content: bytes
) -> None:
    """Damaged WOF files beside a sound one; ``bad_chunk`` is the first chunk not decodable."""
    m.dirs(mnt, "wof/corrupt")
    _write(mnt / "wof/plain/corrupt-source.bin", content)
    m.add("wof/plain/corrupt-source.bin", "plain", len(content), content)
    lzx, _ = compressed["LZX"]["corrupt.bin"]
    xp4, _ = compressed["XPRESS4K"]["corrupt.bin"]
    _put_wof(mnt, "wof/corrupt/good.bin", _make_wof("LZX", lzx, content, "compressed"), m)

    size = len(content)
    lzx_stream, xp4_stream = _assemble(lzx, size), _assemble(xp4, size)
    chunk2 = int.from_bytes(lzx_stream[4:8], "little")  # entry k: where chunk k + 1 starts
    cases = {  # name -> (algorithm, stream, reason); chunk BAD_CHUNK is the bad one each time
        "bad-chunk.bin": (
            "LZX",
            _damage("LZX", lzx, size, lambda c: b"\xff\xff" + c[2:]),
            "LZX chunk 2 damaged: invalid block type",
        ),
        "bad-chunk-xpress.bin": (
            "XPRESS4K",
            _damage("XPRESS4K", xp4, size, lambda c: b"\xff" * 256 + c[256:]),
            "XPRESS chunk 2 damaged: over-subscribed Huffman code",
        ),
        "bad-table.bin": (
            "XPRESS4K",
            _table_entry(xp4_stream, BAD_CHUNK, 2 * len(xp4_stream)),
            "chunk-table entry 2 points past the stream's end",
        ),
        "bad-table-order.bin": (
            "LZX",
            _table_entry(lzx_stream, BAD_CHUNK, chunk2 - 1),
            "chunk-table offsets go backwards (chunk 3 starts before chunk 2)",
        ),
    }
    for name, (alg, stream, reason) in cases.items():
        path = f"wof/corrupt/{name}"
        with contextlib.suppress(OSError, ValueError):
            b"".join(decode_wof_stream(stream, size, alg))
            raise RuntimeError(f"{path} decodes")
        wof = _Wof(alg, size, _sha(content), stream, "damaged", 0, [])
        _put_wof(mnt, path, wof, m, expect="eio", bad_chunk=BAD_CHUNK, reason=reason)
        m.entries[path]["source_sha256"] = m.entries[path].pop("sha256")
    for path in m.entries:
        if path.startswith("wof/corrupt/"):
            m.sources[path] = "wof/plain/corrupt-source.bin"


def _populate_wim_backed(mnt: Path, m: _Manifest) -> None:
    m.dirs(mnt, "wof/wim")
    content = _log_text(random.Random(11), WIM_BACKED_SIZE)
    buffer = wim_reparse(3, hashlib.sha1(content).digest())
    p = mnt / "wof/wim/backed.bin"
    _write(p)
    os.truncate(p, WIM_BACKED_SIZE)
    _set_reparse(p, buffer)
    m.add(
        "wof/wim/backed.bin",
        "wof-wim",
        WIM_BACKED_SIZE,
        expect="eio",
        tag=IO_REPARSE_TAG_WOF,
        reparse_hex=buffer.hex(),
        provider=WOF_PROVIDER_WIM,
        reason="WIM-backed WOF: the data is in a .wim file outside the volume",
        source_sha256=_sha(content),
    )


def _stub(
    mnt: Path,
    m: _Manifest,
    path: str,
    buffer: bytes,
    size: int,
    reason: str,
    data: bytes | None = None,
    attributes: int = 0,
    streams: dict[str, bytes] | None = None,
) -> None:
    """A reparse point over sparse data (``data`` None: expect EIO) or over real data."""
    p = mnt / path
    if data is None:
        _write(p)
        os.truncate(p, size)
    else:
        _write(p, data)
    extra: dict[str, Any] = {}
    if streams:
        extra["streams"] = _add_streams(p, streams)
    if attributes:  # what ntfs-3g drops is patched into the MFT record after unmounting
        old = int.from_bytes(lgetxattr(p, "system.ntfs_attrib_be"), "big")
        os.setxattr(p, "system.ntfs_attrib_be", (old | attributes).to_bytes(4, "big"))
        kept = int.from_bytes(lgetxattr(p, "system.ntfs_attrib_be"), "big")
        if dropped := attributes & ~kept:
            m.patches[path] = dropped
            m.facts.setdefault("attributes ntfs-3g dropped (patched in)", {})[path] = dropped
    _set_reparse(p, buffer)
    tag = int.from_bytes(buffer[:4], "little")
    expect = {"expect": "eio", "reason": reason} if data is None else {"reason": reason}
    m.add(path, "stub", size, data, tag=tag, reparse_hex=buffer.hex(), **expect, **extra)


def _populate_stubs(mnt: Path, m: _Manifest) -> None:
    m.dirs(mnt, "stubs")
    rng = random.Random(12)
    offline = FILE_ATTRIBUTE_OFFLINE
    streams = {"Zone.Identifier": b"[ZoneTransfer]\r\nZoneId=3\r\n", "thumb": rng.randbytes(5000)}
    sparse: tuple[tuple[str, bytes, int, str, dict[str, Any]], ...] = (
        ("dedup.bin", _dedup_reparse(rng), 300 * KIB, "Data Deduplication: in the chunk store", {}),
        (
            "cloud-dehydrated.bin",
            _cloud_reparse(IO_REPARSE_TAG_CLOUD, rng),
            MIB + 3,
            "cloud placeholder, dehydrated: the data is in the cloud",
            {"attributes": offline | FILE_ATTRIBUTE_RECALL_ON_DATA_ACCESS, "streams": streams},
        ),
        (
            "cloud-1-dehydrated.bin",
            _cloud_reparse(IO_REPARSE_TAG_CLOUD_1, rng),
            77 * KIB,
            "cloud placeholder (CLOUD_1), dehydrated",
            {"attributes": offline},
        ),
        ("hsm.bin", reparse_buffer(IO_REPARSE_TAG_HSM, rng.randbytes(40)), 64 * KIB, "HSM", {}),
        ("hsm2.bin", reparse_buffer(IO_REPARSE_TAG_HSM2, rng.randbytes(40)), 10_000, "HSM2", {}),
        (
            "unknown-sparse.bin",
            reparse_buffer(UNKNOWN_TAG_SPARSE, rng.randbytes(24)),
            200 * KIB + 3,
            "unknown reparse tag over wholly sparse data",
            {},
        ),
        (
            "unknown-empty.bin",
            reparse_buffer(UNKNOWN_TAG_EMPTY, rng.randbytes(8)),
            0,
            "unknown reparse tag, size 0",
            {},
        ),
    )
    for name, buffer, size, reason, extra in sparse:
        _stub(mnt, m, f"stubs/{name}", buffer, size, reason, **extra)
    with_data = (
        (
            "cloud-hydrated.bin",
            _cloud_reparse(IO_REPARSE_TAG_CLOUD, rng),
            _log_text(rng, 100 * KIB + 17),
            "cloud file, hydrated: the data is on the volume",
        ),
        (
            "unknown-data.bin",
            reparse_buffer(UNKNOWN_TAG_DATA, rng.randbytes(16)),
            rng.randbytes(50 * KIB + 1),
            "unknown reparse tag over real data: the data is on the volume",
        ),
    )
    for name, buffer, data, reason in with_data:
        _stub(mnt, m, f"stubs/{name}", buffer, len(data), reason, data=data)


def _populate_streams(mnt: Path, m: _Manifest) -> None:
    m.dirs(mnt, "streams/dir-with-stream")
    rng = random.Random(13)
    cases: dict[str, dict[str, bytes]] = {
        "streams/big.bin": {"big": rng.randbytes(100 * KIB)},
        "streams/stream-65536.bin": {"exact": rng.randbytes(65536)},
        "streams/stream-65537.bin": {"over": rng.randbytes(65537)},
        "streams/long-name.bin": {"é" * 130 + "x" * 70: _log_text(rng, 3000)},
        "streams/many.bin": {f"s{i:02d}": _log_text(rng, 10 + 37 * i) for i in range(50)},
    }
    for path, streams in cases.items():
        data = f"unnamed data of {path}\n".encode()
        _write(mnt / path, data)
        m.add(path, "stream-host", len(data), data, streams=_add_streams(mnt / path, streams))
    streams = _add_streams(mnt / "streams/dir-with-stream", {"big": rng.randbytes(100 * KIB)})
    m.entries["streams/dir-with-stream"]["streams"] = streams


def _populate_links(mnt: Path, m: _Manifest) -> None:
    m.dirs(mnt, "links/target-dir", "hardlinks/a", "hardlinks/b")
    for path in ("links/target.txt", "links/target-dir/inner.txt"):
        data = f"I am {path}\n".encode()
        _write(mnt / path, data)
        m.add(path, "plain", len(data), data)
    links = (
        ("links/symlink.txt", "symlink", "target.txt", True, "target.txt"),
        ("links/junction", "junction", "\\??\\C:\\links\\target-dir", False, JUNCTION_NTFS3G),
    )
    for path, kind, sub, relative, ntfs3g in links:
        p = mnt / path
        if kind == "junction":
            p.mkdir()
            prn = sub.removeprefix("\\??\\")
            buffer = mount_point_reparse_data(sub, prn)
        else:
            _write(p)
            prn = sub
            buffer = symlink_reparse_data(sub, prn, relative)
        _set_reparse(p, buffer)
        m.add(
            path,
            kind,
            0,
            tag=int.from_bytes(buffer[:4], "little"),
            reparse_hex=buffer.hex(),
            target=sub,
            print_name=prn,
            ntfs3g_target=ntfs3g,
        )
    names = ["hardlinks/a/first.txt", "hardlinks/a/second.txt", "hardlinks/b/third.txt"]
    data = _log_text(random.Random(14), 9000)
    _write(mnt / names[0], data)
    for other in names[1:]:
        os.link(mnt / names[0], mnt / other)
    for name in names:
        m.add(name, "hardlink", len(data), data, names=names, nlink=3)


def _populate_misc(mnt: Path, m: _Manifest) -> None:
    rng = random.Random(15)
    m.dirs(mnt, "compressed", "sparse", "names", "plain")
    os.setxattr(mnt / "compressed", "system.ntfs_attrib_be", ATTRIB_COMPRESSED_DIR.to_bytes(4))
    for name, data in (
        ("text-200k.txt", _log_text(rng, 200 * KIB + 5)),
        ("random-100k.bin", rng.randbytes(100 * KIB)),
        ("unit-64k.txt", _log_text(rng, 64 * KIB)),
        ("small.txt", b"resident, so not compressed\n"),
        ("mixed.bin", _mixed(rng, 700 * KIB)),
    ):
        _write(mnt / "compressed" / name, data)
        m.add(f"compressed/{name}", "compressed", len(data), data)
    size = 50 * MIB + 12345
    head, tail = rng.randbytes(64 * KIB + 3), _log_text(rng, 10 * KIB)
    with open(mnt / "sparse/both-ends.bin", "xb") as f:
        f.truncate(size)
        f.write(head)
        f.seek(size - len(tail))
        f.write(tail)
    content = head + bytes(size - len(head) - len(tail)) + tail
    m.add("sparse/both-ends.bin", "plain", size, content, sparse=True)
    for name in (
        "with  two spaces.txt",
        " leading space.txt",
        "trailing space ",
        "-leading-dash.txt",
        "--double-dash",
        "naïve café.txt",
        "emoji 🎉🦄.txt",
        "日本語のファイル.txt",
        "new\nline.txt",
    ):
        data = f"the file named {name!r}\n".encode()
        _write(mnt / "names" / name, data)
        m.add(f"names/{name}", "plain", len(data), data)
    for size in (0, 1, 700, 4095, 4096, 4097, 65536, MIB + 1):
        data = rng.randbytes(size)
        _write(mnt / f"plain/size-{size}.bin", data)
        m.add(f"plain/size-{size}.bin", "plain", size, data)


def _efs_info(length: int, rng: random.Random) -> bytes:
    """An $EFS value: EFS_ATTR_HEADER (length, state, version 2, ...) and filler key data."""
    header = struct.pack("<IIII", length, 0, 2, 0) + rng.randbytes(16)  # checksum
    header += struct.pack("<II", 0x54, 0) + bytes(12)  # DDF offset, no DRF, reserved
    return header + rng.randbytes(length - len(header))


def _populate_efs(image: Path, m: _Manifest) -> None:
    """Encrypted files through an ``efs_raw`` mount (raw data first, then the $EFS value)."""
    rng = random.Random(16)
    with ntfs3g_mounted(image, "efs_raw", "streams_interface=windows") as mnt:
        m.dirs(mnt, "efs")
        for name, size in (("secret.txt", 1000), ("big.bin", 70_000)):
            raw_size = -(-size // 512) * 512
            ciphertext = rng.randbytes(raw_size)
            p = mnt / "efs" / name
            _write(p, ciphertext + struct.pack("<H", raw_size - size))
            os.setxattr(p, "system.ntfs_efsinfo", _efs_info(0x1A0, rng))
            m.add(
                f"efs/{name}",
                "efs",
                size,
                expect="eio",
                reason="EFS-encrypted: the stored data is ciphertext",
                raw_size=raw_size,
                ciphertext_sha256=_sha(ciphertext[:size]),
            )


# --- after unmounting: patches, read-back ------------------------------------------------------


def _fixup(record: bytearray, protect: bool) -> None:
    """Apply (``protect`` False) or undo the update sequence array of an MFT record."""
    usa, count = struct.unpack_from("<HH", record, 4)
    usn = record[usa : usa + 2]
    for i in range(1, count):
        end, at = i * SECTOR, usa + 2 * i
        if protect:
            record[at : at + 2], record[end - 2 : end] = record[end - 2 : end], usn
        else:
            if record[end - 2 : end] != usn:
                raise RuntimeError("torn MFT record")
            record[end - 2 : end] = record[at : at + 2]


def _set_si_attributes(image: Path, ino: int, bits: int) -> int:
    """OR ``bits`` into the file attributes of record ``ino``'s $STANDARD_INFORMATION."""
    with open(image, "r+b") as f:
        boot = f.read(SECTOR)
        per = struct.unpack_from("<b", boot, 0x40)[0]
        record_size = 1 << -per if per < 0 else per * CLUSTER
        pos = ino * record_size
        for vcn, lcn, length in ntfsinfo_runs(image, 0):
            if lcn is not None and vcn * CLUSTER <= pos < (vcn + length) * CLUSTER:
                offset = lcn * CLUSTER + pos - vcn * CLUSTER
                break
        else:
            raise RuntimeError(f"MFT record {ino} not found in $MFT's runs")
        f.seek(offset)
        record = bytearray(f.read(record_size))
        assert record[:4] == b"FILE", record[:4]
        _fixup(record, protect=False)
        at = struct.unpack_from("<H", record, 0x14)[0]
        while (atype := struct.unpack_from("<I", record, at)[0]) != 0x10:
            assert atype != 0xFFFFFFFF, "no $STANDARD_INFORMATION"
            at += struct.unpack_from("<I", record, at + 4)[0]
        value = at + struct.unpack_from("<H", record, at + 20)[0]
        flags = struct.unpack_from("<I", record, value + 32)[0] | bits
        struct.pack_into("<I", record, value + 32, flags)
        _fixup(record, protect=True)
        f.seek(offset)
        f.write(record)
    return flags


def ntfscat(image: Path, ino: int, stream: str = "") -> bytes:
    """A $DATA stream of MFT record ``ino`` read by ntfs-3g's ``ntfscat`` (no FUSE: ntfs-3g's
    mount refuses to open any stream of a reparse point it does not support, ELIBACC).  ``-f``:
    ntfs-3g's tools refuse an image that an ntfs-3g mount (even read-only) holds open."""
    cmd = ["ntfscat", "-f", "-i", str(ino), *(["-a", "0x80", "-n", stream] if stream else [])]
    cmd.append(os.fspath(image))
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ntfscat {ino} {stream!r} failed: {done.stderr.decode().strip()}")
    return done.stdout


def data_residency(image: Path, ino: int) -> dict[str, bool]:
    """$DATA attribute name -> resident, as ``ntfsinfo`` dumps MFT record ``ino``."""
    out = {}
    for section in run("ntfsinfo", "-f", "-i", str(ino), image).split("Dumping attribute ")[1:]:
        if section.startswith("$DATA"):
            name = re.search(r"Attribute name:\s+'(.*)'", section)
            out[name[1] if name else ""] = "Resident: \t\t Yes" in section
    return out


def _check(path: str, what: str, got: object, want: object) -> None:
    if got != want:
        raise RuntimeError(f"{path}: {what} did not read back ({got!r} != {want!r})")


def _read_back(image: Path, m: _Manifest) -> None:
    """Record each entry's ino and attributes and check what was written: through a read-only
    ntfs-3g mount, and with ntfscat for the streams of reparse points."""
    with ntfs3g_mounted(image, "ro", "streams_interface=windows") as mnt:
        for path, e in m.entries.items():
            p = mnt / path
            st = os.lstat(p)
            e["ino"] = st.st_ino
            e["attributes"] = int.from_bytes(lgetxattr(p, "system.ntfs_attrib_be"), "big")
            if "reparse_hex" in e:
                reparse = lgetxattr(p, "system.ntfs_reparse_data").hex()
                _check(path, "reparse data", reparse, e["reparse_hex"])
                _check(path, "symlink type", stat.S_ISLNK(st.st_mode), True)
                continue
            if e["kind"] in ("plain", "compressed", "stream-host", "hardlink"):
                _check(path, "content", sha256_file(p), (e["size"], e["sha256"]))
            for name, s in e.get("streams", {}).items():
                _check(
                    f"{path}:{name}", "stream", sha256_file(f"{p}:{name}"), (s["size"], s["sha256"])
                )
    for path, e in m.entries.items():
        if "reparse_hex" not in e:
            continue
        if e["kind"] == "wof":
            data = ntfscat(image, e["ino"], WOF_STREAM)
            _check(path, WOF_STREAM, _sha(data), e["wof_stream_sha256"])
            resident = data_residency(image, e["ino"])
            e["data_resident"], e["wof_stream_resident"] = resident[""], resident[WOF_STREAM]
        for name, s in e.get("streams", {}).items():
            _check(f"{path}:{name}", "stream", _sha(ntfscat(image, e["ino"], name)), s["sha256"])
        if e["kind"] == "stub" and e["expect"] == "data":
            _check(path, "content", _sha(ntfscat(image, e["ino"])), e["sha256"])


# --- the builder -------------------------------------------------------------------------------


def build_fidelity_image(root: Path) -> FidelityImage:
    """Build (once) the fidelity volume and its manifest in ``root``; see the module doc.

    Concurrent callers wait on a lock; the volume is built in a sibling folder and renamed.
    """
    root = Path(root)
    timings: dict[str, float] = {}
    if build_once(root, lambda work: timings.update(_build(work))):
        log.info("fidelity image built in %.1f s: %s", sum(timings.values()), timings)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    return FidelityImage(path=root / "volume.img", manifest=manifest)


class _Laps:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.clock = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self.clock, 3)
        self.clock = now


def _build(work: Path) -> dict[str, float]:
    lap = _Laps()
    contents = _wof_contents()
    bench = _mixed(random.Random(20), BENCH_SIZE)
    corrupt = _log_text(random.Random(21), CORRUPT_SIZE)
    big = {f"big-{i}.bin": c for i, c in _big_chunks().items()}
    files = {a: {**contents, "bench.bin": bench, "corrupt.bin": corrupt} for a in ALGORITHMS}
    traps = {E8_TAIL: _e8_tail(), LENGTHS_TRAP: _lengths_trap()}
    files["LZX"].update(big | traps | {"big-zero.bin": bytes(LZX_CHUNK)})
    lap("generate")
    compressed = _compress_all(work, files)
    lap("wimlib")

    image = work / "volume.img"
    with open(image, "wb") as f:
        f.truncate(VOLUME_SIZE)
    run("mkntfs", "-F", "-Q", "-s", str(SECTOR), "-c", str(CLUSTER), "-L", LABEL, image)
    host = work / "plain.host"
    host.write_bytes(bench)
    run("ntfscp", image, host, "plain.bin")
    host.unlink()
    lap("mkntfs+ntfscp")

    m = _Manifest()
    m.facts["tools"] = {
        "wimlib": run("wimlib-imagex", "--version").splitlines()[0],
        "libntfs-3g": run("mkntfs", "--version").split()[1],
        "libfwnt": pyfwnt.get_version(),
    }
    with ntfs3g_mounted(image, "streams_interface=windows") as mnt:
        _populate_bench(mnt, m, compressed, bench)
        _populate_wof(mnt, m, compressed, contents)
        lap("wof")
        _populate_big(mnt, m, compressed)
        lap("big wof")
        _populate_corrupt(mnt, m, compressed, corrupt)
        _populate_wim_backed(mnt, m)
        _populate_stubs(mnt, m)
        _populate_streams(mnt, m)
        _populate_links(mnt, m)
        _populate_misc(mnt, m)
        lap("other cases")
    lap("umount")
    _populate_efs(image, m)
    lap("efs")
    with ntfs3g_mounted(image, "ro") as mnt:
        inos = {path: os.lstat(mnt / path).st_ino for path in m.patches}
    for path, bits in m.patches.items():
        _set_si_attributes(image, inos[path], bits)
    lap("patch")
    _read_back(image, m)
    lap("read back")

    manifest = {
        "format": 1,
        "volume": {
            "size": VOLUME_SIZE,
            "cluster_size": CLUSTER,
            "sector_size": SECTOR,
            "label": LABEL,
        },
        "sources": dict(sorted(m.sources.items())),
        "facts": m.facts,
        "entries": dict(sorted(m.entries.items())),
    }
    with open(work / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
    info = {"timings_s": lap.timings, "total_s": round(sum(lap.timings.values()), 3)}
    (work / "build.json").write_text(json.dumps(info, indent=1))
    return lap.timings
