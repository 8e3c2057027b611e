"""Fixtures for the mount tests: the two-disk test VM."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.fs.vmfixture import TestVm, build_test_vm
from tests.ntfs.ntfsimages import NtfsImage
from tests.windows.hives import build_system_hive


def _hive(mounted: dict[str, bytes]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return build_system_hive(Path(d) / "SYSTEM", mounted).read_bytes()


@pytest.fixture(scope="session")
def test_vm(ntfs_image: NtfsImage) -> TestVm:
    return build_test_vm(ntfs_image, _hive)
