"""Fixtures for the NTFS tests: the reference volume built once (and cached between runs)."""

from __future__ import annotations

import pytest

from tests.ntfs.ntfsimages import NtfsImage, build_ntfs_image, ntfs_cache_dir


@pytest.fixture(scope="session")
def ntfs_image() -> NtfsImage:
    """The reference NTFS volume (read-only!) with its ntfs-3g manifest; see ntfsimages."""
    return build_ntfs_image(ntfs_cache_dir())
