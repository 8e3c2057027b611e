"""vcbfs against a simulated standalone ESXi host, and against a large inventory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fs.vmfixture import SYS_FILES
from tests.vsphere.conftest import VsphereVm
from tests.vsphere.simulator import Vcsim, add_vm, secured
from tests.vsphere.test_vsphere import _ours, vcbfs

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")


def _start(root: Path, **kw: object) -> Vcsim:
    return secured(root, username="root", **kw).start()


def _env(sim: Vcsim, tmp_path: Path) -> dict[str, str]:
    pw = tmp_path / "pw"
    pw.write_text(f"{sim.password}\n")
    pw.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        f'host = "{sim.host}"\nport = {sim.port}\nuser = "{sim.username}"\n'
        f'password_file = "{pw}"\nthumbprint = "{sim.thumbprint}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
    )
    config.chmod(0o600)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VCBFS_RUN_DIR": str(tmp_path / "run"),
        "VCBFS_CONFIG": str(config),  # settings from a config file this time
    }


@pytest.fixture(scope="module")
def esx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    sim = _start(tmp_path_factory.mktemp("esx"), esx=True)
    try:
        yield sim
    finally:
        sim.stop()


def test_standalone_esxi(esx: Vcsim, vsphere_vm: VsphereVm, tmp_path: Path) -> None:
    with esx.session() as si:
        vm = add_vm(esx, si, "esx-guest", [vsphere_vm.source.sys_vmdk], ip="10.1.0.9")
    env = _env(esx, tmp_path)
    found = json.loads(vcbfs(env, "ls", "-s", "ipaddr:10.1.0.9", "--json").stdout)
    assert [v["name"] for v in found] == ["esx-guest"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    vcbfs(env, "mount", "moref:" + vm.moref, str(mnt))
    try:
        assert (mnt / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
        assert len(_ours(esx, vm.moref)) == 1
    finally:
        vcbfs(env, "umount", str(mnt))
    assert _ours(esx, vm.moref) == []


def test_a_large_inventory_is_listed_in_pages(tmp_path: Path) -> None:
    """1,200 VMs: more than one PropertyCollector page (1,000 objects)."""
    sim = _start(tmp_path / "big", vms=600)
    try:
        every = json.loads(vcbfs(_env(sim, tmp_path), "ls", "--json").stdout)
    finally:
        sim.stop()
    assert len(every) == 1200
    assert len({v["moref"] for v in every}) == 1200
