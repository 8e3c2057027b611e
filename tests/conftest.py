"""Shared fixtures: reference images built once per run (and cached between runs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.images import build_vmdk_images, cache_dir
from tests.ntfs.fidelityimages import FidelityImage, build_fidelity_image, fidelity_cache_dir
from tests.ntfs.ntfsimages import NtfsImage, build_ntfs_image, ntfs_cache_dir


@pytest.fixture(scope="session")
def vmdk_images() -> dict[str, Path]:
    """kind -> top .vmdk of every VMDK kind; ``ref.raw`` beside each is qemu's reading."""
    return build_vmdk_images(cache_dir("vmdk"))


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A self-signed certificate for IP:127.0.0.1: (certfile, keyfile, SHA-256 thumbprint)."""
    d = tmp_path_factory.mktemp("tls")
    certfile, keyfile = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", keyfile, "-out", certfile),
        ],
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        ["openssl", "x509", "-in", certfile, "-noout", "-fingerprint", "-sha256"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    thumbprint = out.strip().split("=", 1)[1]  # AB:CD:... as vSphere shows it
    assert len(thumbprint) == 95
    return certfile, keyfile, thumbprint


@pytest.fixture(scope="session")
def ntfs_image() -> NtfsImage:
    """The reference NTFS volume (read-only!) with its ntfs-3g manifest; see tests/ntfs."""
    return build_ntfs_image(ntfs_cache_dir())


@pytest.fixture(scope="session")
def fidelity_image() -> FidelityImage:
    """The fidelity NTFS volume (read-only!): WOF, stubs, EFS, streams; see tests/ntfs."""
    return build_fidelity_image(fidelity_cache_dir())
