"""Chains and extent lines: CID checks, loops, missing parents, ZERO, RDM and NOACCESS extents."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.images import run
from tests.memsource import MemoryLocation
from vcbfs.blocks.local import LocalLocation
from vcbfs.blocks.vmdk.disk import open_disk
from vcbfs.errors import ChainError, NotFoundError, UnsupportedError


def desc(
    cid: str, extents: list[str], parent_cid: str = "ffffffff", hint: str | None = None
) -> bytes:
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        f"CID={cid}",
        f"parentCID={parent_cid}",
        'createType="monolithicFlat"',
        *extents,
    ]
    if hint:
        lines.insert(4, f'parentFileNameHint="{hint}"')
    return ("\n".join(lines) + "\n").encode()


def flat_zero_flat() -> dict[str, bytes]:
    """A disk of 1 KiB flat ("A"), 2 KiB ZERO extent, 1 KiB flat ("B"): d.vmdk and its files."""
    return {
        "d.vmdk": desc("1", ['RW 2 FLAT "a.bin" 1', "RW 4 ZERO", 'RW 2 FLAT "b.bin"']),
        "a.bin": b"x" * 512 + b"A" * 1024,
        "b.bin": b"B" * 1024,
    }


def test_zero_extent_between_flat_extents() -> None:
    files = flat_zero_flat()
    with open_disk(MemoryLocation(files, "d.vmdk")) as disk:
        assert disk.size == 8 * 512
        assert disk.read_at(0, disk.size) == b"A" * 1024 + bytes(2048) + b"B" * 1024
        assert [(s.offset, s.allocated) for s in disk.spans()] == [
            (0, True),
            (1024, False),
            (3072, True),
        ]


def test_parent_cid_mismatch_names_both_files() -> None:
    files = {
        "base.vmdk": desc("0000aaaa", ['RW 2 FLAT "base.bin"']),
        "base.bin": bytes(1024),
        "top.vmdk": desc("0000bbbb", ['RW 2 FLAT "top.bin"'], "0000cccc", "base.vmdk"),
        "top.bin": bytes(1024),
    }
    with pytest.raises(
        ChainError, match=r"top\.vmdk expects parentCID 0000cccc.*base\.vmdk has CID 0000aaaa"
    ):
        open_disk(MemoryLocation(files, "top.vmdk"))


def test_chain_loops_and_depth_are_bounded() -> None:
    files = {
        "a.vmdk": desc("1", ["RW 2 ZERO"], "2", "b.vmdk"),
        "b.vmdk": desc("2", ["RW 2 ZERO"], "1", "a.vmdk"),
    }
    with pytest.raises(ChainError, match="loops back"):
        open_disk(MemoryLocation(files, "a.vmdk"))
    deep = {
        f"d{i}.vmdk": desc(f"{i + 1:x}", ["RW 2 ZERO"], f"{i + 2:x}", f"d{i + 1}.vmdk")
        for i in range(300)
    }
    with pytest.raises(ChainError, match="deeper than 256"):
        open_disk(MemoryLocation(deep, "d0.vmdk"))


def test_missing_parent() -> None:
    files = {"top.vmdk": desc("2", ["RW 2 ZERO"], "1", "gone.vmdk")}
    with pytest.raises(NotFoundError, match=r"gone\.vmdk"):
        open_disk(MemoryLocation(files, "top.vmdk"))


def test_absolute_esxi_parent_falls_back_to_the_same_folder(
    vmdk_images: dict[str, Path], tmp_path: Path
) -> None:
    src = vmdk_images["chain-flat-base"].parent
    for name in ("base.vmdk", "base-flat.vmdk", "s1.vmdk", "disk.vmdk"):
        shutil.copy(src / name, tmp_path / name)
    text = (tmp_path / "s1.vmdk").read_bytes()
    old, new = (
        b'parentFileNameHint="base.vmdk"',
        b'parentFileNameHint="/vmfs/volumes/5f2a/vm/base.vmdk"',
    )
    at = text.index(old)
    end = text.index(b"\0", at)  # the embedded descriptor's NUL padding takes the growth
    grow = len(new) - len(old)
    assert text[end : end + grow] == bytes(grow)
    patched = text[:at] + new + text[at + len(old) : end] + text[end + grow :]
    assert len(patched) == len(text)
    (tmp_path / "s1.vmdk").write_bytes(patched)
    with open_disk(LocalLocation(tmp_path / "disk.vmdk")) as disk:
        assert [layer.location.name for layer in disk.layers][-1] == str(tmp_path / "base.vmdk")
        assert disk.read_at(0, disk.size) == (src / "ref.raw").read_bytes()


def test_rdm_and_noaccess_extents_are_listed_and_refuse_reads() -> None:
    files = {
        "p.vmdk": desc("1", ['RW 4 VMFSPASSTHROUGH "lun-rdmp.vmdk"']).replace(
            b"monolithicFlat", b"vmfsPassthroughRawDeviceMap"
        ),
        "n.vmdk": desc("1", ['RW 2 FLAT "x.bin"', 'NOACCESS 2 FLAT "y.bin"']),
        "x.bin": b"x" * 1024,
    }
    with open_disk(MemoryLocation(files, "p.vmdk")) as disk:
        ext = disk.describe()["chain"][0]["extents"][0]  # type: ignore[index]
        assert ext["type"] == "VMFSPASSTHROUGH" and "physical-mode RDM" in ext["unreadable"]
        with pytest.raises(UnsupportedError, match="physical-mode RDM"):
            disk.read_at(0, 512)
    with open_disk(MemoryLocation(files, "n.vmdk")) as disk:
        assert disk.read_at(0, 1024) == b"x" * 1024
        with pytest.raises(UnsupportedError, match="NOACCESS"):
            disk.read_at(1000, 100)


def test_virtual_rdm_reads_its_mapping_file_when_it_can() -> None:
    files = {"v.vmdk": desc("1", ['RW 2 VMFSRDM "lun-rdm.vmdk"']), "lun-rdm.vmdk": b"L" * 1024}
    with open_disk(MemoryLocation(files, "v.vmdk")) as disk:
        assert disk.read_at(0, 2048) == b"L" * 1024
    del files["lun-rdm.vmdk"]
    with open_disk(MemoryLocation(files, "v.vmdk")) as disk, pytest.raises(UnsupportedError):
        disk.read_at(0, 10)


def test_bare_delta_extent_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "x-delta.vmdk").write_bytes(b"COWD" + bytes(2044))
    with pytest.raises(UnsupportedError, match="delta extent, not a disk"):
        open_disk(LocalLocation(tmp_path / "x-delta.vmdk"))


def test_split_sparse_extent_opens_alone(vmdk_images: dict[str, Path]) -> None:
    s001 = vmdk_images["twoGbMaxExtentSparse"].parent / "disk-s001.vmdk"
    with open_disk(LocalLocation(s001)) as disk:
        assert disk.format == "sparse extent"
        ref = (s001.parent / "ref.raw").read_bytes()
        assert disk.read_at(0, len(ref)) == ref


def test_chain_reported_by_qemu_info_matches(vmdk_images: dict[str, Path]) -> None:
    top = vmdk_images["chain-sparse"]
    info = run("qemu-img", "info", "--backing-chain", "--output=json", top)
    with open_disk(LocalLocation(top)) as disk:
        names = [Path(layer.location.name).name for layer in disk.layers]
    assert names == ["disk.vmdk", "s1.vmdk", "base.vmdk"]
    for name in names:
        assert name in info


def test_direct_file_ranges_for_kernel_copies(vmdk_images: dict[str, Path]) -> None:
    with open_disk(LocalLocation(vmdk_images["mixed-extents"])) as disk:
        fd, at = disk.direct(4096, 8192)  # type: ignore[misc]
        assert at == 4096 + 1024 and os.pread(fd, 16, at) == disk.read_at(4096, 16)
        assert disk.direct(8 * 1024 * 1024 - 512, 1024) is None  # crosses into the sparse extent
    with open_disk(LocalLocation(vmdk_images["chain-flat-base"])) as disk:
        fd, at = disk.direct(20 << 20, 4096)  # untouched by the deltas: the flat base's bytes
        assert os.pread(fd, 4096, at) == disk.read_at(20 << 20, 4096)
        assert disk.direct(1 << 20, 4096) is None  # written in a sparse delta
