"""The .vmx reader, the disks a VM names, and the fullvm/ files written about it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images import run
from vcbfs.blocks.vmdk.descriptor import parse_descriptor
from vcbfs.errors import CorruptError, NotFoundError
from vcbfs.vm.catalog import catalog_text, flat_descriptor, rewrite_vmx
from vcbfs.vm.image import Disk, VmImage
from vcbfs.vm.local import open_local_vm
from vcbfs.vm.vmx import parse_vmx, vmx_disks

VMX = b"""\xef\xbb\xbf.encoding = "UTF-8"
displayName = "web 01"
# a comment
scsi0:1.fileName = "web01_1.vmdk"
scsi0:0.fileName = "web01.vmdk"
scsi0:2.present = "FALSE"
scsi0:2.fileName = "gone.vmdk"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "/vmfs/volumes/iso/x.iso"
sata0:0.fileName = "../other/data.vmdk"
nvme0:0.fileName = "fast.vmdk"
ide0:0.fileName = "boot.vmdk"
SCSI0:3.FILENAME = "upper.vmdk"
"""


def test_disks_in_controller_order() -> None:
    config = parse_vmx(VMX)
    assert config["displayname"] == "web 01"
    assert [(d.device, d.filename) for d in vmx_disks(config)] == [
        ("ide0:0", "boot.vmdk"),
        ("scsi0:0", "web01.vmdk"),
        ("scsi0:1", "web01_1.vmdk"),
        ("scsi0:3", "upper.vmdk"),
        ("sata0:0", "../other/data.vmdk"),
        ("nvme0:0", "fast.vmdk"),
    ]


def test_bad_vmx_lines() -> None:
    with pytest.raises(CorruptError, match="line 2"):
        parse_vmx(b'a = "1"\nnot a pair\n')


@pytest.fixture
def vm_dir(tmp_path: Path) -> Path:
    run("qemu-img", "create", "-q", "-f", "vmdk", tmp_path / "web01.vmdk", "4M")
    run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        tmp_path / "web01_1.vmdk",
        "2M",
    )
    (tmp_path / "web01.vmx").write_text(
        'displayName = "web01"\nscsi0:0.fileName = "web01.vmdk"\n'
        'scsi0:1.fileName = "web01_1.vmdk"\nnvram = "web01.nvram"\n'
    )
    (tmp_path / "web01.nvram").write_bytes(b"NVRAM")
    return tmp_path


def test_local_vm_and_its_fullvm_files(vm_dir: Path) -> None:
    vm = open_local_vm(vm_dir / "web01.vmx")
    try:
        assert vm.name == "web01"
        assert [d.name for d in vm.disks] == ["web01", "web01_1"]
        assert sorted(vm.files) == ["web01.nvram", "web01.vmx"]
        desc = parse_descriptor(flat_descriptor(vm.disks[1]))
        assert desc.create_type == "monolithicFlat"
        assert desc.extents[0].filename == "web01_1-flat.vmdk"
        assert desc.sectors * 512 == vm.disks[1].source.size
        text = rewrite_vmx(vm.files["web01.vmx"], vm).decode()
        assert 'scsi0:1.fileName = "web01_1.vmdk"' in text and 'nvram = "web01.nvram"' in text
        catalog = catalog_text(vm)
        assert "disk1.capacity = 2097152" in catalog and "vm.name = web01" in catalog
    finally:
        vm.close()


def test_a_missing_disk_is_a_clear_error(vm_dir: Path) -> None:
    (vm_dir / "web01_1.vmdk").unlink()
    with pytest.raises(NotFoundError, match=r"web01_1\.vmdk"):
        open_local_vm(vm_dir / "web01.vmx")


def test_duplicate_disk_names_are_made_unique(tmp_path: Path) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        run("qemu-img", "create", "-q", "-f", "vmdk", tmp_path / d / "disk.vmdk", "1M")
    (tmp_path / "x.vmx").write_text(
        'scsi0:0.fileName = "a/disk.vmdk"\nscsi0:1.fileName = "b/disk.vmdk"\n'
    )
    vm = open_local_vm(tmp_path / "x.vmx")
    try:
        assert [d.name for d in vm.disks] == ["disk", "disk-2"]
    finally:
        vm.close()


def test_disks_left_out_are_marked_not_present() -> None:
    """An RDM or independent disk (skipped by a snapshot) is not in fullvm/: its copy of the
    .vmx must not ask for it, or the copied VM would not register."""
    image = VmImage("web", [Disk(0, "web01", "scsi0:0", None)])  # type: ignore[arg-type]
    vmx = (
        b'scsi0:0.fileName = "web01.vmdk"\nscsi0:0.present = "TRUE"\n'
        b'scsi0:1.fileName = "rdm.vmdk"\nscsi0:1.present = "TRUE"\n'
        b'sata0:0.fileName = "independent.vmdk"\n'
        b'ide1:0.deviceType = "cdrom-image"\nide1:0.fileName = "x.iso"'
    )
    text = rewrite_vmx(vmx, image).decode()
    config = parse_vmx(text.encode())
    assert [d.device for d in vmx_disks(config)] == ["scsi0:0"]
    assert config["scsi0:1.present"] == config["sata0:0.present"] == "FALSE"
    assert "ide1:0.present" not in config and config["ide1:0.filename"] == "x.iso"
    assert "# vcbfs: scsi0:1 (rdm.vmdk) is not in this backup" in text
