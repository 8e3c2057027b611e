"""Confinement: names inside VM files (extents, parents, a .vmx's disks and nvram, datastore
paths) never lead to the proxy's own files, and never to a FIFO or a device.

Each hostile name is tried through the same entry points the CLI and the mount use, with a
"secret" file standing in for /etc/shadow just outside the VM's folder.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.blocks.test_chain import desc
from vcbfs.blocks.confine import Box, ConfinementError
from vcbfs.blocks.local import LocalLocation
from vcbfs.blocks.vmdk.disk import open_disk
from vcbfs.errors import NotFoundError
from vcbfs.vm.local import open_local_vm
from vcbfs.vm.provider import LocalProvider

SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n".ljust(1024, b"#")


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """tmp/etc/shadow (the proxy's secret), tmp/vms/vm1/ (the VM folder), tmp/other/."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "shadow").write_bytes(SECRET)
    (tmp_path / "vms" / "vm1").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "d-flat.vmdk").write_bytes(b"O" * 1024)
    return tmp_path


def vm_dir(world: Path) -> Path:
    return world / "vms" / "vm1"


def write_disk(folder: Path, extent: str, hint: str | None = None, cid: str = "1") -> Path:
    parent = "ffffffff" if hint is None else "fffffffe"
    (folder / "d.vmdk").write_bytes(desc(cid, [f'RW 2 FLAT "{extent}" 0'], parent, hint))
    return folder / "d.vmdk"


def hostile_names(world: Path) -> list[str]:
    shadow = str(world / "etc" / "shadow")
    return [shadow, "../../etc/shadow", "../../../" * 20 + shadow.lstrip("/"), "/etc/shadow"]


def test_extent_names_leaving_the_folder_are_refused(world: Path) -> None:
    for name in hostile_names(world):
        top = write_disk(vm_dir(world), name)
        with pytest.raises(ConfinementError) as caught:
            open_disk(LocalLocation(top))
        message = str(caught.value)
        assert str(top) in message and repr(name) in message, message  # the reference
        assert "outside the box" in message and "--allow-path" in message  # the rule


def test_parent_hints_leaving_the_folder_are_refused(world: Path) -> None:
    folder = vm_dir(world)
    (folder / "d-flat.vmdk").write_bytes(bytes(1024))
    for hint in hostile_names(world):
        top = write_disk(folder, "d-flat.vmdk", hint=hint)
        with pytest.raises(ConfinementError, match="outside the box"):
            open_disk(LocalLocation(top))


def test_esxi_parent_path_of_an_unknown_datastore_is_found_beside(world: Path) -> None:
    folder = vm_dir(world)
    (folder / "base.vmdk").write_bytes(desc("0000aaaa", ['RW 2 FLAT "base-flat.vmdk" 0']))
    (folder / "base-flat.vmdk").write_bytes(b"B" * 1024)
    (folder / "d-flat.vmdk").write_bytes(bytes(1024))
    hint = "/vmfs/volumes/5a1b2c3d-00000000-1111-002233445566/vm1/base.vmdk"
    (folder / "d.vmdk").write_bytes(
        desc("0000bbbb", ['RW 2 FLAT "d-flat.vmdk" 0'], "0000aaaa", hint)
    )
    with open_disk(LocalLocation(folder / "d.vmdk")) as disk:
        assert len(disk.layers) == 2
        assert disk.layers[1].location.name == str(folder / "base.vmdk")


def test_allow_path_widens_the_box(world: Path) -> None:
    top = write_disk(vm_dir(world), "../../other/d-flat.vmdk")
    with pytest.raises(ConfinementError):
        open_disk(LocalLocation(top))
    box = Box.around(top, allow=[world / "other"])
    with open_disk(LocalLocation(top, box)) as disk:
        assert disk.read_at(0, 1024) == b"O" * 1024
    box = Box.around(top, allow=[world / "other"])  # still not the secret
    with pytest.raises(ConfinementError):
        open_disk(LocalLocation(write_disk(vm_dir(world), "../../etc/shadow"), box))


def test_symlinks_leading_out_are_refused(world: Path) -> None:
    folder = vm_dir(world)
    (folder / "d-flat.vmdk").symlink_to(world / "etc" / "shadow")
    top = write_disk(folder, "d-flat.vmdk")
    with pytest.raises(ConfinementError, match="symlink"):
        open_disk(LocalLocation(top))
    # a folder on the way out is refused too
    (folder / "sub").symlink_to(world / "etc")
    top = write_disk(folder, "sub/shadow")
    with pytest.raises(ConfinementError, match="symlink"):
        open_disk(LocalLocation(top))
    # a symlink that stays inside is fine
    (folder / "real-flat.vmdk").write_bytes(b"R" * 1024)
    (folder / "link-flat.vmdk").symlink_to("real-flat.vmdk")
    with open_disk(LocalLocation(write_disk(folder, "link-flat.vmdk"))) as disk:
        assert disk.read_at(0, 1024) == b"R" * 1024


def test_fifos_and_devices_are_refused_without_blocking(world: Path) -> None:
    folder = vm_dir(world)
    os.mkfifo(folder / "fifo-flat.vmdk")
    os.mknod(folder / "zero-flat.vmdk", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    os.mknod(folder / "loop-flat.vmdk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    for name, kind in (
        ("fifo-flat.vmdk", "a FIFO"),
        ("zero-flat.vmdk", "a character device"),
        ("loop-flat.vmdk", "a block device"),
    ):
        start = time.monotonic()
        with pytest.raises(ConfinementError, match=kind):
            open_disk(LocalLocation(write_disk(folder, name)))
        assert time.monotonic() - start < 5  # did not wait for a FIFO writer


def test_a_fifo_named_on_the_command_line_is_refused(world: Path) -> None:
    os.mkfifo(world / "fifo.vmdk")
    done = subprocess.run(
        [sys.executable, "-m", "vcbfs", "disk", "info", str(world / "fifo.vmdk")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "a FIFO, not a disk file" in done.stderr


def test_vmx_names_are_confined(world: Path) -> None:
    folder = vm_dir(world)
    (folder / "d-flat.vmdk").write_bytes(bytes(1024))
    write_disk(folder, "d-flat.vmdk")
    shadow = world / "etc" / "shadow"
    cases = {
        "nvram": f'nvram = "{shadow}"\nscsi0:0.fileName = "d.vmdk"\n',
        "disk": f'scsi0:0.fileName = "{shadow}"\n',
        "relative disk": 'scsi0:0.fileName = "../../etc/shadow"\n',
    }
    for what, text in cases.items():
        (folder / "vm1.vmx").write_text('displayName = "vm1"\nscsi0:0.present = "TRUE"\n' + text)
        with pytest.raises(ConfinementError, match="outside the box"):
            open_local_vm(folder / "vm1.vmx")
        print(what, "refused")
    # the nvram beside the .vmx is read; a missing one is not an error
    (folder / "vm1.vmx").write_text('scsi0:0.fileName = "d.vmdk"\nnvram = "vm1.nvram"\n')
    assert "vm1.nvram" not in open_local_vm(folder / "vm1.vmx").files
    (folder / "vm1.nvram").write_bytes(b"NVRAM")
    vm = open_local_vm(folder / "vm1.vmx")
    assert vm.files["vm1.nvram"] == b"NVRAM"
    vm.close()


def test_automount_folder_confines_vms_to_the_folder(world: Path) -> None:
    """A VM folder that is a symlink to elsewhere inside an automounted folder is refused."""
    elsewhere = world / "other" / "vm2"
    elsewhere.mkdir()
    (elsewhere / "d-flat.vmdk").write_bytes(bytes(1024))
    write_disk(elsewhere, "d-flat.vmdk")
    (elsewhere / "vm2.vmx").write_text('scsi0:0.fileName = "d.vmdk"\n')
    (world / "vms" / "vm2").symlink_to(elsewhere)
    provider = LocalProvider([world / "vms"])
    keys = {e.name: e.key for e in provider.list()}
    with pytest.raises(ConfinementError, match="symlink"):
        provider.open(keys["vm2"])


def test_box_maps_esxi_paths_by_name_and_uuid(world: Path) -> None:
    ds = world / "ds1"
    (ds / "vm1").mkdir(parents=True)
    box = Box.of([], {"ds1": ds, "5a1b2c3d-0000": ds})
    for store in ("ds1", "5a1b2c3d-0000"):
        path = box.resolve("/nowhere", f"/vmfs/volumes/{store}/vm1/base.vmdk", "x.vmdk")
        assert path == str(ds / "vm1" / "base.vmdk")
    for name in ("/vmfs/volumes/ds1/../../etc/shadow", "/vmfs/volumes/other/vm1/x.vmdk"):
        with pytest.raises(ConfinementError):
            box.resolve(str(ds / "vm1"), name, "x.vmdk")
    with pytest.raises(ConfinementError, match="NUL"):
        box.resolve(str(ds), "a\0b", "x.vmdk")


def test_cli_names_the_reference_and_the_rule(world: Path) -> None:
    top = write_disk(vm_dir(world), "../../etc/shadow")
    cmd = [sys.executable, "-m", "vcbfs", "disk", "cat", str(top)]
    done = subprocess.run(cmd, capture_output=True, timeout=60)
    assert done.returncode == 1 and SECRET not in done.stdout
    err = done.stderr.decode()
    assert "'../../etc/shadow', outside the box" in err and "--allow-path" in err
    done = subprocess.run([*cmd, "--allow-path", str(world / "etc")], capture_output=True)
    assert done.returncode == 0 and done.stdout == SECRET


def test_missing_file_is_not_found_not_refused(world: Path) -> None:
    top = write_disk(vm_dir(world), "gone-flat.vmdk")
    with pytest.raises(NotFoundError):
        open_disk(LocalLocation(top))
