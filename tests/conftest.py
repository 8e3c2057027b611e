"""Shared fixtures: reference images built once per run (and cached between runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images import build_vmdk_images, cache_dir


@pytest.fixture(scope="session")
def vmdk_images() -> dict[str, Path]:
    """kind -> top .vmdk of every VMDK kind; ``ref.raw`` beside each is qemu's reading."""
    return build_vmdk_images(cache_dir("vmdk"))
