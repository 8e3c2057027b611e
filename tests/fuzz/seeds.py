"""The fuzzers' seed corpus: real, valid structures for every target, made by the tools and
builders the other tests trust (qemu-img, sfdisk, mkntfs + ntfs-3g, hivex, wimlib, vmdkgen).

Mutating a valid structure reaches the checks deep inside a parser; random bytes mostly stop
at the magic number.  The corpus is committed (``tests/fuzz/corpus/<target>/``, a few hundred
KiB), so CI and ``scripts/fuzz`` need none of these tools; run ``python -m tests.fuzz.seeds``
to make it again (it replaces the folder).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.blocks import vmdkgen
from tests.blocks.partimages import (
    GPT_SCRIPT,
    LDM_MBR_SCRIPT,
    MBR_SCRIPT,
    ebr_chain_image,
    sfdisk_image,
)
from tests.fuzz.harness import encode_image, encode_patches
from tests.fuzz.targets import SEPARATOR, TARGETS, corpus_dir
from tests.ntfs import lznt1_compress, wofpack
from tests.ntfs.ntfsimages import ntfs3g_mounted, reparse_data
from tests.windows.hives import LETTER_VALUES, build_system_hive, empty_hive
from vcbfs.ntfs.attributes import AT
from vcbfs.ntfs.stream import AttributeStream
from vcbfs.ntfs.volume import NtfsVolume

MIB = 1 << 20
NTFS_SIZE = 4 * MIB


def _run(*cmd: str | os.PathLike[str]) -> None:
    subprocess.run([os.fspath(c) for c in cmd], check=True, capture_output=True)


def _qemu_vmdk(raw: Path, out: Path, subformat: str) -> Path:
    _run("qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
         f"subformat={subformat}", raw, out)  # fmt: skip
    return out


def _small_raw(path: Path, size: int = 128 << 10) -> Path:
    """A disk image of zeros with a few patterned stretches (so grains are few and small)."""
    rng = random.Random(7)
    with open(path, "wb") as f:
        f.truncate(size)
        for at in (0, size // 3, size - 4096):
            f.seek(at)
            f.write(rng.randbytes(2048) + b"vcbfs" * 400)
    return path


# --- VMDK ---------------------------------------------------------------------------------------


def vmdk_seeds(work: Path) -> dict[str, list[bytes]]:
    raw = _small_raw(work / "r.raw")
    mono = _qemu_vmdk(raw, work / "mono.vmdk", "monolithicSparse").read_bytes()
    stream = _qemu_vmdk(raw, work / "stream.vmdk", "streamOptimized").read_bytes()
    flat_desc = _qemu_vmdk(raw, work / "flat.vmdk", "monolithicFlat").read_bytes()
    split_desc = _qemu_vmdk(raw, work / "split.vmdk", "twoGbMaxExtentSparse").read_bytes()
    split_extent = (work / "split-s001.vmdk").read_bytes()
    capacity = raw.stat().st_size
    changes = {0: b"\x11" * 4096, 8192: b"\x22" * 8192, capacity - 4096: b"\x33" * 4096}
    cowd1 = vmdkgen.build_cowd(capacity, changes, grain_sectors=8, parent_name="parent.vmdk")
    cowd2 = vmdkgen.build_cowd(capacity, {0: b"\x44" * 512}, grain_sectors=1, seed=3)
    ses, _ = vmdkgen.build_sesparse(capacity, changes, zeroed=[5], unmapped=[6], seed=2)
    cid = "1234abcd"
    sectors = capacity // 512
    base = (
        f"# Disk DescriptorFile\nversion=1\nCID={cid}\nparentCID=ffffffff\n"
        f'createType="vmfs"\nRW {sectors} VMFS "c.vmdk"\nddb.adapterType = "lsilogic"\n'
    ).encode()
    mixed = (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n'
        f'RW 64 FLAT "a.vmdk" 2\nRW 128 ZERO\nRDONLY {sectors - 192} SPARSE "b.vmdk"\n'
    ).encode()

    def delta(kind: str, create: str) -> bytes:
        return vmdkgen.delta_descriptor(
            cid="fedcba98", parent_cid=cid, create_type=create, parent="b.vmdk",
            sectors=sectors, kind=kind, file="a.vmdk",
        ).encode()  # fmt: skip

    flat = raw.read_bytes()[: 64 * 512 + 1024]
    disks = [
        mono,
        stream,
        SEPARATOR.join([flat_desc.replace(b'"flat-flat.vmdk"', b'"a.vmdk"'), raw.read_bytes()]),
        SEPARATOR.join([mixed, flat, mono]),
        SEPARATOR.join([delta("VMFSSPARSE", "vmfsSparse"), cowd1, base, raw.read_bytes()]),
        SEPARATOR.join([delta("SESPARSE", "seSparse"), ses, base, raw.read_bytes()]),
        SEPARATOR.join([delta("SPARSE", "monolithicSparse"), mono, mono]),
    ]
    texts = [flat_desc, split_desc, base, mixed, delta("VMFSSPARSE", "vmfsSparse")]
    texts.append(mono[512 : 512 + 1024].rstrip(b"\0"))  # the embedded one
    return {
        "descriptor": texts,
        "sparse": [mono, stream, split_extent],
        "cowd": [cowd1, cowd2],
        "sesparse": [ses],
        "vmdk_disk": disks,
    }


# --- partitions ---------------------------------------------------------------------------------


def _sparse_image(buf: bytes, ss: int = 512) -> list[tuple[int, bytes]]:
    """The non-zero sectors of a disk image as patches."""
    zero = bytes(ss)
    return [(at, buf[at : at + ss]) for at in range(0, len(buf), ss) if buf[at : at + ss] != zero]


def partition_seeds(work: Path) -> list[bytes]:
    out = []
    for i, (script, size) in enumerate(
        ((MBR_SCRIPT, 64 * MIB), (GPT_SCRIPT, 8 * MIB), (LDM_MBR_SCRIPT, 4 * MIB))
    ):
        buf = sfdisk_image(work / f"p{i}.img", size, script).read_bytes()
        out.append(encode_image(len(buf), _sparse_image(buf)))
    chain = bytes(ebr_chain_image(6))
    out.append(encode_image(len(chain), _sparse_image(chain)))
    _run("truncate", "-s", "4M", work / "4k.img")
    gpt4k = subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--sector-size", "4096",
         os.fspath(work / "4k.img")],
        input="label: gpt\nstart=256, size=256, type=L\n", text=True, capture_output=True,
    )  # fmt: skip
    if gpt4k.returncode == 0:
        buf = (work / "4k.img").read_bytes()
        out.append(encode_image(len(buf), _sparse_image(buf, 4096), flags=0))
    return out


# --- NTFS ---------------------------------------------------------------------------------------


def _ntfs_volume(work: Path) -> bytes:
    """A small NTFS volume holding one of each structure the reader decodes."""
    image = work / "ntfs.img"
    with open(image, "wb") as f:
        f.truncate(NTFS_SIZE)
    _run("mkntfs", "-F", "-Q", "-s", "512", "-c", "4096", "-L", "FUZZ", image)
    rng = random.Random(11)
    text = b"".join(b"line %d of a compressible file\n" % i for i in range(3000))
    with ntfs3g_mounted(image, "streams_interface=xattr") as mnt:
        (mnt / "dir").mkdir()
        for i in range(40):  # enough entries for an INDX block
            (mnt / "dir" / f"file-{i:02d}.txt").write_bytes(b"x" * (i * 37))
        (mnt / "comp").mkdir()
        os.setxattr(mnt / "comp", "system.ntfs_attrib_be", (0x810).to_bytes(4, "big"))
        (mnt / "comp" / "text.txt").write_bytes(text)
        with open(mnt / "sparse.bin", "wb") as f:
            f.truncate(1 * MIB)
            f.seek(512 * 1024)
            f.write(rng.randbytes(8192))
        (mnt / "streams.txt").write_bytes(b"unnamed\n")
        os.setxattr(mnt / "streams.txt", "user.small", b"a small stream")
        os.setxattr(mnt / "streams.txt", "user.big", rng.randbytes(6000))
        (mnt / "links").mkdir()
        target = mnt / "links" / "target.bin"
        target.write_bytes(rng.randbytes(5000))
        for i in range(12):  # long names overflow the record: an $ATTRIBUTE_LIST
            os.link(target, mnt / "links" / (f"link-{i:02d}-" + "L" * 180))
        for name, tag, sub, prn, rel in (
            ("abs-link", 0xA000000C, "\\??\\C:\\dir\\file-01.txt", "C:\\dir\\file-01.txt", False),
            ("rel-link", 0xA000000C, "dir\\file-02.txt", "dir\\file-02.txt", True),
            ("junction", 0xA0000003, "\\??\\C:\\dir", "C:\\dir", False),
        ):
            p = mnt / name
            if tag == 0xA0000003:
                p.mkdir()
            else:
                p.write_bytes(b"")
            os.setxattr(p, "system.ntfs_reparse_data", reparse_data(tag, sub, prn, rel))
        (mnt / "wof.bin").write_bytes(b"")
        os.setxattr(mnt / "wof.bin", "system.ntfs_reparse_data", wofpack.wof_reparse("LZX"))
    return image.read_bytes()


def _records(vol: NtfsVolume) -> Iterator[tuple[int, int, bytes]]:
    """(number, volume offset, raw bytes) of every MFT record in use."""
    size = vol.mft.record_size
    stream = vol.mft.stream
    assert isinstance(stream, AttributeStream)
    cs = stream.cluster_size
    for n in range(vol.mft.record_count):
        lcn, _left = stream.map.lookup(n * size // cs)
        assert lcn is not None
        offset = lcn * cs + n * size % cs
        raw = vol.source.read_at(offset, size)
        if raw[:4] == b"FILE" and raw[22] & 1:
            yield n, offset, raw


def ntfs_seeds(work: Path) -> dict[str, list[bytes]]:
    from tests.fuzz.harness import BytesSource

    base = _ntfs_volume(work)
    src = BytesSource(base, "ntfs.img")
    vol = NtfsVolume(src)
    out: dict[str, list[bytes]] = {k: [] for k in (
        "ntfs_boot", "mft_record", "attribute_list", "runlist", "index_node", "reparse",
        "lznt1", "ntfs_volume")}  # fmt: skip
    out["ntfs_boot"].append(
        encode_image(len(base), [(0, base[:512]), (len(base) - 512, base[-512:])])
    )
    out["ntfs_boot"].append(encode_image(len(base), [(len(base) - 512, base[-512:])]))
    out["ntfs_volume"].append(b"")
    out["ntfs_volume"].append(encode_patches([(0, base[:512])]))
    for n, offset, raw in _records(vol):
        out["mft_record"].append(raw)
        out["ntfs_volume"].append(encode_patches([(offset, raw)]))
        if n < 16 and n not in (0, 5, 10):
            continue
        try:
            _rec, attrs = vol.mft.attributes(n)
        except Exception:
            continue
        for a in vol.mft.record(n).attributes + attrs:
            if not a.resident and a.runlist:
                head = struct.pack("<QQQB", a.start_vcn, a.last_vcn, vol.boot.cluster_count, 0)
                out["runlist"].append(head + a.runlist)
            if a.type == AT.ATTRIBUTE_LIST:
                out["attribute_list"].append(vol.mft.value([a]))
                if not a.resident:
                    lcn = a.runlist and AttributeStream(src, 4096, [a], "list").map.lookup(0)[0]
                    if lcn:
                        at = lcn * 4096
                        out["ntfs_volume"].append(encode_patches([(at, base[at : at + 4096])]))
            if a.type == AT.REPARSE_POINT and a.resident:
                out["reparse"].append(a.value)
            if a.type == AT.INDEX_ROOT and a.resident:
                seed = struct.pack("<I", len(a.value)) + a.value
                alloc = vol._stream(vol._node(n), AT.INDEX_ALLOCATION, "$I30")
                if alloc is not None:
                    blocks = alloc.read_at(0, alloc.size)
                    seed += blocks
                    assert isinstance(alloc, AttributeStream)
                    for vcn in range(0, alloc.size // 4096):
                        lcn, _ = alloc.map.lookup(vcn)
                        if lcn is not None:
                            at = lcn * 4096
                            out["ntfs_volume"].append(encode_patches([(at, base[at : at + 4096])]))
                out["index_node"].append(seed)
            if (
                a.type == AT.DATA
                and a.compressed
                and not a.resident
                and isinstance(stream := vol._stream(vol._node(n), AT.DATA), AttributeStream)
            ):
                for lcn_start, count in stream.map.allocated_ranges():
                    lcn, _ = stream.map.lookup(lcn_start)
                    assert lcn is not None
                    raw_unit = base[lcn * 4096 : (lcn + min(count, 16)) * 4096]
                    out["lznt1"].append(bytes([3]) + raw_unit)  # 4 KiB clusters
                    break
    out["attribute_list"] += [b"", bytes(26)]
    unit = b"".join(b"compressible %05d " % i for i in range(3000))[:65536]
    out["lznt1"].append(bytes([3]) + lznt1_compress.compress_unit(unit))
    for tag, sub, prn, rel in (
        (0xA000000C, "\\??\\C:\\Windows", "C:\\Windows", False),
        (0xA0000003, "\\??\\Volume{x}\\", "", False),
    ):
        out["reparse"].append(reparse_data(tag, sub, prn, rel))
    out["reparse"] += [wofpack.wof_reparse("XPRESS4K"), wofpack.wof_reparse("LZX", provider=1)]
    out["reparse"].append(struct.pack("<IHH", 0x80000013, 4, 0) + b"dedu")
    return out | {"_base": [gzip.compress(base, 9, mtime=0)]}


def codec_seeds() -> dict[str, list[bytes]]:
    text = b"".join(b"the %d-th line of a file, compressed by wimlib\n" % i for i in range(2000))
    rng = random.Random(5)
    out: dict[str, list[bytes]] = {"xpress": [], "lzx": [], "wof": []}
    for algo, (number, _ctype, chunk) in wofpack.ALGORITHMS.items():
        comp = wofpack.Compressor(algo)
        try:
            for data in (text[:chunk], text[: chunk // 3], rng.randbytes(chunk // 2) + text):
                data = data[:chunk]
                packed = comp.chunk_bytes(data)
                if len(packed) == len(data):
                    continue
                size = len(data).to_bytes(2, "little")
                if algo == "LZX":
                    out["lzx"].append(size + packed)
                else:
                    out["xpress"].append(bytes([(4096, 8192, 16384).index(chunk)]) + size + packed)
        finally:
            comp.close()
        for data in (text, text[:5000], rng.randbytes(3000) + text[:9000]):
            out["wof"].append(struct.pack("<QB", len(data), number) + wofpack.pack(data, algo))
    return out


# --- Windows and .vmx ---------------------------------------------------------------------------


def windows_seeds(work: Path) -> dict[str, list[bytes]]:
    system = build_system_hive(work / "SYSTEM").read_bytes()
    letters = []
    for values in (LETTER_VALUES, {"\\DosDevices\\C:": struct.pack("<IQ", 0x5EEDC0DE, MIB)}):
        enc = b""
        for name, value in values.items():
            n = name.encode()
            enc += bytes([len(n)]) + n + struct.pack("<H", len(value)) + value
        letters.append(enc)
    return {"hive": [system, empty_hive()], "letters": letters}


VMX = b""".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "web01"
guestOS = "windows9srv-64"
scsi0.present = "TRUE"
scsi0.virtualDev = "lsisas1068"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "web01.vmdk"
scsi0:1.fileName = "/vmfs/volumes/ds1/web01/web01_1.vmdk"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "win.iso"
sata0:0.fileName = "data.vmdk"
nvme0:0.present = "FALSE"
nvme0:0.fileName = "gone.vmdk"
nvram = "web01.nvram"
"""


def write_corpus(seeds: dict[str, list[bytes]]) -> None:
    for name, inputs in seeds.items():
        d = corpus_dir(name)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        for data in inputs:
            (d / (hashlib.sha1(data).hexdigest()[:16] + ".bin")).write_bytes(data)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vcbfs-seeds-") as tmp:
        work = Path(tmp)
        seeds: dict[str, list[bytes]] = {}
        seeds.update(vmdk_seeds(work))
        seeds["partitions"] = partition_seeds(work)
        ntfs = ntfs_seeds(work)
        base = ntfs.pop("_base")[0]
        seeds.update(ntfs)
        seeds.update(codec_seeds())
        seeds.update(windows_seeds(work))
        seeds["vmx"] = [VMX, VMX.replace(b"\n", b"\r\n"), b"# empty\n"]
    missing = set(TARGETS) - set(seeds)
    if missing:
        sys.exit(f"no seeds for {sorted(missing)}")
    write_corpus(seeds)
    (corpus_dir("ntfs_volume").parent / "ntfs_base.img.gz").write_bytes(base)
    for name in sorted(seeds):
        files = list(corpus_dir(name).iterdir())
        print(f"{name:16} {len(files):4} files {sum(f.stat().st_size for f in files):9} bytes")


if __name__ == "__main__":
    main()
