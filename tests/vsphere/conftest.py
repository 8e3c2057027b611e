"""Fixtures for the vSphere tests: one simulator per session, and the two-disk test VM in it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fs.vmfixture import TestVm, build_test_vm
from tests.ntfs.ntfsimages import NtfsImage
from tests.vsphere.simulator import Vcsim, VmInfo, add_vm, secured
from tests.windows.hives import build_system_hive

DEMO_VM = "win-demo"
DEMO_IP = "10.0.0.42"
DEMO_HOSTNAME = "win-demo.example.test"


@dataclass(frozen=True)
class VsphereVm:
    """The test VM as the simulator shows it (``vm``) and the local files it came from."""

    vm: VmInfo
    source: TestVm


@pytest.fixture(scope="session")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    """A VPX simulator on 127.0.0.1 with one user and a strong certificate, for the session.

    Tests must not change what other tests see: add their own VMs (``add_vm``) rather than
    reconfigure shared ones, and remove the snapshots they take.
    """
    sim = secured(tmp_path_factory.mktemp("vcsim"))  # pytest keeps its stderr log
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def _hive(mounted: dict[str, bytes]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return build_system_hive(Path(d) / "SYSTEM", mounted).read_bytes()


@pytest.fixture(scope="session")
def vsphere_vm(vcsim: Vcsim, ntfs_image: NtfsImage) -> VsphereVm:
    """tests/fs's two-disk Windows-like VM, as ``win-demo`` (10.0.0.42) in the simulator."""
    source = build_test_vm(ntfs_image, _hive)
    with vcsim.session() as si:
        vm = add_vm(
            vcsim,
            si,
            DEMO_VM,
            [source.sys_vmdk, source.data_vmdk],
            ip=DEMO_IP,
            hostname=DEMO_HOSTNAME,
        )
    return VsphereVm(vm, source)
