"""Benchmark corpora: NTFS volumes shaped like real guests, on the disk formats VMs use.

A benchmark volume that is easy flatters (issue 13): one big file and a tidy tree hide what a
system drive costs.  ``build_corpus(RECIPES["system"])`` makes a volume shaped like a Windows
system drive beside a file-server share, through ntfs-3g (so an independent implementation
writes every structure):

- ``Windows/System32``: a directory of 12,000 entries (DLLs, executables, MUI files), a third
  of them hard links into ``Windows/WinSxS`` (2,500 component folders), as Windows has them;
- ``Windows/System32/CompactOS``: WOF-compressed files (XPRESS4K and LZX, made by wimlib), as
  ``compact /exe`` leaves them on Windows 10+;
- ``Windows/Installer/Compressed``: an NTFS-compressed (LZNT1) folder of 110+ MiB of mixed
  logs, text and binaries;
- ``Users/*``: documents, downloads carrying ``Zone.Identifier`` streams, and ``AppData``
  paths 40 folders deep;
- ``Shares/Projects``: a file-server tree (200 projects, 1,600 folders), and ``Shares/Scans``
  with 15,000 entries in one directory;
- ``Database/data.mdf``: a 2.5 GiB sparse file with data in a few places; ``Media/video.mp4``:
  1.1 GiB written first with ``ntfscp`` (contiguous, as a big file on a fresh volume is);
- sizes drawn like a system drive's: most files 1-24 KiB, a tail to 16 MiB, a few resident.

About 105,000 entries and 4 GB of data.  ``RECIPES["million"]`` is the other extreme:
1,000,000 small files (for the memory bound), and ``RECIPES["mini"]`` the shape of "system"
at 1/100 of its counts and sizes, for the test suite.

Each corpus comes as the bare volume (``volume.img``, what ntfs-3g reads) and as three VMs
with the same guest: ``flat/`` (a flat VMDK whose extents are an MBR head and the volume
file itself), ``sparse/`` (qemu-img's monolithicSparse) and ``chain/`` (a sparse delta
over a flat base, as a VM with a user snapshot has: the base holds the volume before the last
tenth of the files was written and some were changed or deleted; the delta holds the rest).
The SYSTEM hive maps C: to the volume, so ``letters/C`` works.  ``corpus.json`` records what
was made (counts, bytes, depth, the largest directory) and how long each step took.

Everything is cached outside the repository (``tests.images.cache_dir``), keyed by this
file's hash and the recipe; ntfs-3g writes at about 23 MB/s here, so "system" takes minutes.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.images import build_once, cache_dir, run
from tests.ntfs.ntfsimages import ntfs3g_mounted
from tests.ntfs.wofpack import pack, wof_reparse
from tests.windows.hives import build_system_hive

__all__ = ["RECIPES", "Corpus", "CorpusRecipe", "build_corpus", "corpus_dir"]

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
SECTOR = 512
CLUSTER = 4096
HEAD = MIB  # the MBR and the gap before the partition
SIGNATURE = 0xC0B5C0B5
WOF_STREAM = "WofCompressedData"
ATTRIB_COMPRESSED_DIR = 0x810  # FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_COMPRESSED
DELTA_GRAIN = 64 * KIB


@dataclass(frozen=True)
class CorpusRecipe:
    """What a corpus holds; counts and sizes scale together."""

    name: str
    volume_size: int
    system32: int = 12_000  # entries in Windows/System32 (the large directory)
    winsxs_dirs: int = 2_500
    winsxs_links: int = 4_000  # System32 entries that are hard links into WinSxS
    wof_files: int = 300
    compressed_bytes: int = 112 * MIB  # in the LZNT1 folder
    users: int = 20
    documents: int = 500  # per user
    downloads: int = 100  # per user, each with a Zone.Identifier stream
    deep_chains: int = 3
    depth: int = 40
    projects: int = 200
    project_dirs: int = 8
    project_files: int = 35  # per folder
    scans: int = 15_000  # entries in Shares/Scans
    big_file: int = GIB + 64 * MIB
    sparse_file: int = 5 * GIB // 2
    tail: float = 1.0  # 0 leaves out files over 256 KiB (the mini corpus)
    tiny_files: int = 0  # the "million" recipe: this many small files, nothing else
    seed: int = 20261205


RECIPES = {
    "system": CorpusRecipe("system", volume_size=8 * GIB),
    "mini": CorpusRecipe(
        "mini",
        volume_size=256 * MIB,
        system32=240,
        winsxs_dirs=50,
        winsxs_links=80,
        wof_files=12,
        compressed_bytes=2 * MIB,
        users=2,
        documents=30,
        downloads=10,
        deep_chains=1,
        projects=4,
        project_dirs=3,
        project_files=8,
        scans=300,
        big_file=8 * MIB,
        sparse_file=64 * MIB,
        tail=0.0,
    ),
    "million": CorpusRecipe("million", volume_size=6 * GIB, tiny_files=1_000_000),
}


@dataclass(frozen=True)
class Corpus:
    """A built corpus: the bare volume, the three VMs holding it, and its facts."""

    root: Path
    recipe: CorpusRecipe
    facts: dict[str, Any]

    @property
    def volume(self) -> Path:
        return self.root / "volume.img"

    def vmx(self, layout: str) -> Path:
        """The .vmx of ``layout``: "flat", "sparse" or "chain"."""
        return self.root / layout / "vm.vmx"

    def disk(self, layout: str) -> Path:
        """The VM's disk descriptor (for ``chain``, the delta on top)."""
        return self.root / layout / ("delta.vmdk" if layout == "chain" else "disk.vmdk")


LAYOUTS = ("flat", "sparse", "chain")


def corpus_dir(recipe: CorpusRecipe) -> Path:
    key = hashlib.sha256(Path(__file__).read_bytes())
    key.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    return cache_dir("corpus").with_name(f"corpus-{recipe.name}-{key.hexdigest()[:16]}")


def build_corpus(recipe: CorpusRecipe) -> Corpus:
    """Build (once, cached) the corpus of ``recipe``; see the module doc."""
    root = corpus_dir(recipe)
    if build_once(root, lambda work: _build(work, recipe)):
        _remove_other_versions(root, f"corpus-{recipe.name}-")
    facts = json.loads((root / "corpus.json").read_text())
    return Corpus(root, recipe, facts)


def _remove_other_versions(keep: Path, prefix: str) -> None:
    """Corpora of other versions of this file: gigabytes each, never used again."""
    for lock_path in keep.parent.glob(prefix + "*.lock"):
        folder = lock_path.with_name(lock_path.name.removesuffix(".lock"))
        if folder == keep:
            continue
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being built or read by another run right now
            for old in (folder, folder.with_name(folder.name + ".building")):
                if old.exists():
                    shutil.rmtree(old)
            lock_path.unlink()


# --- contents ----------------------------------------------------------------------------------

_WORDS = (
    b"the backup of a volume reads every file once and writes it to the archive; error "
    b"INFO WARN service started stopped configuration update installed package component "
    b'<xml version=\'1.0\'> {"key": 42, "value": [1, 2, 3]} SELECT * FROM orders WHERE '
)


def _text(rng: random.Random, size: int) -> bytes:
    """Log- or document-like text: compresses about 3:1, as real text does."""
    out = bytearray()
    while len(out) < size:
        start = rng.randrange(len(_WORDS) - 40)
        out += b"%d:%06x " % (len(out), rng.getrandbits(24))
        out += _WORDS[start : start + rng.randrange(20, 40)] + b"\r\n"
    return bytes(out[:size])


def _binary(rng: random.Random, size: int) -> bytes:
    """Executable-like bytes: random code with zero padding and repeated tables."""
    out = bytearray()
    while len(out) < size:
        n = rng.randrange(512, 8192)
        kind = rng.random()
        if kind < 0.6:
            out += rng.randbytes(n)
        elif kind < 0.8:
            out += bytes(n)
        else:
            out += (rng.randbytes(16) * (n // 16 + 1))[:n]
    return bytes(out[:size])


def _content(rng: random.Random, size: int) -> bytes:
    return _text(rng, size) if rng.random() < 0.35 else _binary(rng, size)


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _size(rng: random.Random, tail: float) -> int:
    """A file size drawn like a system drive's: mostly 1-24 KiB, a long tail."""
    r = rng.random()
    if r < 0.05:
        return rng.randrange(0, 700)  # resident in its MFT record
    if r < 0.90 or tail == 0:
        return _log_uniform(rng, KIB, 24 * KIB)
    if r < 0.99:
        return _log_uniform(rng, 24 * KIB, 256 * KIB)
    if r < 0.999:
        return _log_uniform(rng, 256 * KIB, 2 * MIB)
    return _log_uniform(rng, 2 * MIB, 16 * MIB)


class _Writer:
    """Writes files through an ntfs-3g mount (``streams_interface=windows``), counting them."""

    def __init__(self, mnt: Path, rng: random.Random, tail: float):
        self.mnt = mnt
        self.rng = rng
        self.tail = tail
        self.files = 0
        self.dirs = 0
        self.links = 0
        self.bytes = 0
        self.streams = 0
        self.paths: list[str] = []  # regular files written, for the chain's later changes

    def dir(self, rel: str) -> Path:
        """``rel`` and the folders above it, made where missing."""
        path = self.mnt
        for part in Path(rel).parts:
            path = path / part
            if not path.exists():
                path.mkdir()
                self.dirs += 1
        return path

    def file(self, rel: str, data: bytes | None = None, keep: bool = True) -> Path:
        if data is None:
            data = _content(self.rng, _size(self.rng, self.tail))
        path = self.mnt / rel
        with open(path, "xb") as f:
            f.write(data)
        self.files += 1
        self.bytes += len(data)
        if keep:
            self.paths.append(rel)
        return path

    def link(self, existing: str, rel: str) -> None:
        os.link(self.mnt / existing, self.mnt / rel)
        self.links += 1

    def stream(self, rel: str, name: str, data: bytes) -> None:
        with open(f"{self.mnt / rel}:{name}", "wb") as f:
            f.write(data)
        self.streams += 1
        self.bytes += len(data)


def _populate_system(w: _Writer, r: CorpusRecipe) -> None:
    rng = w.rng
    w.dir("Windows/System32/config")
    w.dir("Windows/WinSxS")
    sxs: list[str] = []
    for i in range(r.winsxs_dirs):
        comp = (
            f"Windows/WinSxS/amd64_microsoft-windows-c{i:05d}_31bf3856ad364e35_10.0.19041.{i % 997}"
        )
        w.dir(comp)
        for j in range(2):
            sxs.append(f"{comp}/component{j}.dll")
            w.file(sxs[-1])
    exts = (".dll", ".dll", ".dll", ".exe", ".sys", ".mui", ".cpl", ".ocx")
    for i in range(r.system32 - 2):  # config/ and CompactOS/ are entries too
        name = f"Windows/System32/m{i:05d}{exts[i % len(exts)]}"
        if i < r.winsxs_links:
            w.link(sxs[i % len(sxs)], name)
        else:
            w.file(name)
    wof = w.dir("Windows/System32/CompactOS")
    for i in range(r.wof_files):
        algorithm = "LZX" if i % 3 == 0 else "XPRESS4K"
        data = _binary(rng, _log_uniform(rng, 4 * KIB, 256 * KIB))
        path = wof / f"app{i:04d}.exe"
        with open(path, "xb") as f:
            f.truncate(len(data))
        w.files += 1
        w.bytes += len(data)
        w.stream(f"Windows/System32/CompactOS/{path.name}", WOF_STREAM, pack(data, algorithm))
        os.setxattr(path, "system.ntfs_reparse_data", wof_reparse(algorithm))
    comp = w.dir("Windows/Installer/Compressed")
    os.setxattr(comp, "system.ntfs_attrib_be", ATTRIB_COMPRESSED_DIR.to_bytes(4, "big"))
    made, i = 0, 0
    while made < r.compressed_bytes:
        size = min(_log_uniform(rng, 16 * KIB, 2 * MIB), r.compressed_bytes - made)
        data = _text(rng, size) if i % 2 == 0 else _binary(rng, size)
        w.file(f"Windows/Installer/Compressed/{'log' if i % 2 == 0 else 'msp'}{i:04d}.bin", data)
        made += size
        i += 1


def _populate_users(w: _Writer, r: CorpusRecipe) -> None:
    rng = w.rng
    for u in range(r.users):
        home = f"Users/user{u:02d}"
        w.dir(f"{home}/Documents")
        for i in range(r.documents):
            ext = (".docx", ".xlsx", ".pdf", ".txt")[i % 4]
            w.file(f"{home}/Documents/Report {i:04d} - Q{i % 4 + 1}{ext}")
        w.dir(f"{home}/Downloads")
        for i in range(r.downloads):
            rel = f"{home}/Downloads/setup-{i:03d}.exe"
            w.file(rel)
            w.stream(rel, "Zone.Identifier", b"[ZoneTransfer]\r\nZoneId=3\r\n")
    for c in range(r.deep_chains):
        rel = f"Users/user00/AppData/Local/Packages/chain{c}"
        for level in range(r.depth):
            rel += f"/level{level:02d}"
            w.dir(rel)
            w.file(f"{rel}/state.dat", _text(rng, rng.randrange(100, 3000)))


def _populate_shares(w: _Writer, r: CorpusRecipe) -> None:
    for p in range(r.projects):
        for d in range(r.project_dirs):
            folder = f"Shares/Projects/project-{p:03d}/{('src', 'docs', 'data', 'build')[d % 4]}{d}"
            w.dir(folder)
            for i in range(r.project_files):
                w.file(f"{folder}/item-{i:03d}.dat")
    w.dir("Shares/Scans")
    for i in range(r.scans):
        w.file(f"Shares/Scans/scan-{i:05d}.tif")


def _populate_sparse(w: _Writer, r: CorpusRecipe) -> None:
    w.dir("Database")
    with open(w.mnt / "Database/data.mdf", "xb") as f:
        f.truncate(r.sparse_file)
        for at in (0, r.sparse_file // 3, r.sparse_file // 2, r.sparse_file - MIB):
            f.seek(at)
            f.write(w.rng.randbytes(MIB))
            w.bytes += MIB
    w.files += 1


def _populate_tiny(w: _Writer, r: CorpusRecipe) -> None:
    per_dir = 1000
    for d in range(r.tiny_files // per_dir):
        folder = w.dir(f"files/d{d:04d}")
        for i in range(per_dir):
            with open(folder / f"f{i:04d}.txt", "xb") as f:
                f.write(b"%d %d\n" % (d, i))
            w.files += 1
    w.bytes += r.tiny_files * 12


def _change_for_the_delta(w: _Writer, r: CorpusRecipe) -> dict[str, int]:
    """What a week of use adds after the user snapshot: new files, rewrites and deletions."""
    rng = w.rng
    added = max(10, w.files // 10)
    for u in range(max(1, r.users)):
        w.dir(f"Users/user{u:02d}/Documents/New")
    for i in range(added):
        w.file(f"Users/user{i % max(1, r.users):02d}/Documents/New/draft-{i:05d}.docx")
    candidates = [p for p in w.paths if "/Documents/New/" not in p]
    rewritten = rng.sample(candidates, min(len(candidates) // 20, 2000))
    for rel in rewritten:
        path = w.mnt / rel
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(_content(rng, size))
    kept = set(rewritten)
    deleted = rng.sample([p for p in candidates if p not in kept], len(rewritten) // 5)
    for rel in deleted:
        (w.mnt / rel).unlink()
        w.files -= 1
    return {"added": added, "rewritten": len(rewritten), "deleted": len(deleted)}


# --- disks -------------------------------------------------------------------------------------


def _mbr_head(path: Path, volume_size: int) -> None:
    """The first MiB of the disk: an MBR with one NTFS partition at 1 MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.raw"
        with open(probe, "wb") as f:
            f.truncate(HEAD + volume_size)
        sectors = volume_size // SECTOR
        table = f"label: dos\nlabel-id: {SIGNATURE:#x}\nstart=2048, size={sectors}, type=7\n"
        subprocess.run(["sfdisk", "-q", str(probe)], input=table.encode(), check=True)
        with open(probe, "rb") as f:
            path.write_bytes(f.read(HEAD))


def _flat_vm(folder: Path, head: Path, volume: Path, size: int) -> Path:
    """A flat disk over the head and the volume (hard-linked beside it) and its .vmx."""
    folder.mkdir()
    os.link(head, folder / "disk-head.bin")
    os.link(volume, folder / "disk-volume.bin")
    disk = folder / "disk.vmdk"
    # libvmdk (vmdkmount, the benchmark's peer) refuses createType monolithicFlat, ignores an
    # extent's offset (so 2 GiB pieces of one file cannot be named) and needs the section
    # comments; vcbfs reads any of these.
    disk.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=c0b5c0b5\nparentCID=ffffffff\n"
        'createType="twoGbMaxExtentFlat"\n\n# Extent description\n'
        f'RW {HEAD // SECTOR} FLAT "disk-head.bin" 0\n'
        f'RW {size // SECTOR} FLAT "disk-volume.bin" 0\n\n'
        "# The Disk Data Base\n#DDB\n\n"
        'ddb.virtualHWVersion = "14"\nddb.adapterType = "lsilogic"\n'
    )
    _vmx(folder, disk.name)
    return disk


def _vmx(folder: Path, disk: str) -> None:
    (folder / "vm.vmx").write_text(
        '.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "14"\n'
        f'displayName = "corpus-{folder.name}"\nguestOS = "windows9srv-64"\n'
        'scsi0.present = "TRUE"\nscsi0.virtualDev = "lsisas1068"\n'
        f'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "{disk}"\n'
    )


def _differing_ranges(a: Path, b: Path, offset: int) -> Iterator[tuple[int, int]]:
    """(disk offset, length) of the grains where volumes ``a`` and ``b`` differ, merged."""
    start = end = -1
    with open(a, "rb") as fa, open(b, "rb") as fb:
        pos = 0
        while True:
            x, y = fa.read(64 * DELTA_GRAIN), fb.read(64 * DELTA_GRAIN)
            if not x and not y:
                break
            for at in range(0, max(len(x), len(y)), DELTA_GRAIN):
                if x[at : at + DELTA_GRAIN] != y[at : at + DELTA_GRAIN]:
                    here = offset + pos + at
                    if here == end:
                        end += DELTA_GRAIN
                    else:
                        if start >= 0:
                            yield start, end - start
                        start, end = here, here + DELTA_GRAIN
            pos += len(x)
    if start >= 0:
        yield start, end - start


def _chain_vm(folder: Path, head: Path, base_volume: Path, volume: Path, size: int) -> int:
    """A sparse delta over a flat base: the base disk is ``base_volume``, and the delta holds
    every grain where ``volume`` differs (written with qemu-io); returns the bytes in it."""
    base_dir = folder / "base"
    _flat_vm(base_dir, head, base_volume, size)
    (base_dir / "vm.vmx").unlink()
    delta = folder / "delta.vmdk"
    run("qemu-img", "create", "-q", "-f", "vmdk", "-b", "base/disk.vmdk", "-F", "vmdk", delta)
    total = 0
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        commands = []
        with open(volume, "rb") as f:
            for n, (at, length) in enumerate(_differing_ranges(base_volume, volume, HEAD)):
                f.seek(at - HEAD)
                piece = Path(tmp) / f"{n}.bin"
                piece.write_bytes(f.read(length))
                commands.append(f"write -q -s {piece} {at} {length}\n")
                total += length
        commands.append("quit\n")
        subprocess.run(
            ["qemu-io", os.fspath(delta)],
            input="".join(commands).encode(),
            check=True,
            capture_output=True,
        )
    _vmx(folder, delta.name)
    return total


# --- the build ---------------------------------------------------------------------------------


def _build(work: Path, r: CorpusRecipe) -> None:
    laps: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        laps[name] = round(now - clock, 1)
        clock = now

    rng = random.Random(r.seed)
    volume = work / "volume.img"
    with open(volume, "wb") as f:
        f.truncate(r.volume_size)
    run("mkntfs", "-F", "-Q", "-s", str(SECTOR), "-c", str(CLUSTER), "-L", "CORPUS", "-p",
        str(HEAD // SECTOR), "-H", "255", "-S", "63", volume)  # fmt: skip
    if not r.tiny_files:
        big = work / "video.host"
        with open(big, "wb") as f:
            for at in range(0, r.big_file, 64 * MIB):
                f.write(rng.randbytes(min(64 * MIB, r.big_file - at)))
        run("ntfscp", volume, big, "video.mp4")
        big.unlink()
    lap("mkntfs+ntfscp")
    hive = build_system_hive(
        work / "SYSTEM",
        {"\\DosDevices\\C:": SIGNATURE.to_bytes(4, "little") + HEAD.to_bytes(8, "little")},
    ).read_bytes()
    (work / "SYSTEM").unlink()
    with ntfs3g_mounted(volume, "streams_interface=windows") as mnt:
        w = _Writer(mnt, rng, r.tail)
        w.dir("Windows/System32/config")
        w.file("Windows/System32/config/SYSTEM", hive, keep=False)
        if r.tiny_files:
            _populate_tiny(w, r)
        else:
            w.dir("Media")
            (mnt / "video.mp4").rename(mnt / "Media/video.mp4")
            w.files += 1
            w.bytes += r.big_file
            _populate_system(w, r)
            lap("system")
            _populate_users(w, r)
            _populate_shares(w, r)
            _populate_sparse(w, r)
        lap("users+shares")
    base = work / "base-volume.img"
    if not r.tiny_files:
        run("cp", "--sparse=always", volume, base)
        with ntfs3g_mounted(volume, "streams_interface=windows") as mnt:
            w.mnt = mnt
            changes = _change_for_the_delta(w, r)
        lap("changes")
    head = work / "head.bin"
    _mbr_head(head, r.volume_size)
    _flat_vm(work / "flat", head, volume, r.volume_size)
    (work / "sparse").mkdir()
    run("qemu-img", "convert", "-f", "vmdk", "-O", "vmdk", "-o", "subformat=monolithicSparse",
        work / "flat" / "disk.vmdk", work / "sparse" / "disk.vmdk")  # fmt: skip
    _vmx(work / "sparse", "disk.vmdk")
    lap("sparse vmdk")
    facts: dict[str, Any] = {}
    if not r.tiny_files:
        (work / "chain").mkdir()
        facts["delta_bytes"] = _chain_vm(work / "chain", head, base, volume, r.volume_size)
        facts["delta_changes"] = changes
        lap("chain")
    walked = _walk(work / "flat" / "disk-volume.bin")
    lap("walk")
    facts.update(
        recipe=dataclasses.asdict(r),
        written={
            "files": w.files,
            "dirs": w.dirs,
            "links": w.links,
            "streams": w.streams,
            "bytes": w.bytes,
        },
        ntfs3g=walked,
        timings_s=laps,
        tools={
            "libntfs-3g": run("mkntfs", "--version").split()[1],
            "qemu-img": run("qemu-img", "--version").splitlines()[0],
        },
    )
    (work / "corpus.json").write_text(json.dumps(facts, indent=1))


def _walk(volume: Path) -> dict[str, int]:
    """ntfs-3g's view of the finished volume: entries, bytes, links, depth, largest folder."""
    counts = {"entries": 0, "files": 0, "dirs": 0, "bytes": 0, "hard_links": 0,
              "max_depth": 0, "largest_dir": 0}  # fmt: skip
    with ntfs3g_mounted(volume, "ro") as mnt:
        for top, dirs, files in os.walk(mnt):
            rel = Path(top).relative_to(mnt)
            counts["max_depth"] = max(counts["max_depth"], len(rel.parts))
            counts["largest_dir"] = max(counts["largest_dir"], len(dirs) + len(files))
            counts["dirs"] += len(dirs)
            counts["entries"] += len(dirs) + len(files)
            for name in files:
                st = os.lstat(os.path.join(top, name))
                counts["files"] += 1
                counts["bytes"] += st.st_size
                counts["hard_links"] += st.st_nlink > 1
    return counts
