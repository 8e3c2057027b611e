"""Where VMs come from, as the mount sees it: list them, open one (maybe taking a snapshot).

The FUSE layer knows VMs only through this interface.  A local provider reads .vmx folders on
this machine; the vSphere provider (``vcbfs.vsphere.provider``) takes a snapshot on ``open``
and releases it when the image is closed.  Only the command line chooses which one to use.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vcbfs.errors import NotFoundError
from vcbfs.vm.image import VmImage

__all__ = ["LocalProvider", "VmEntry", "VmProvider", "directory_names"]


@dataclass(frozen=True)
class VmEntry:
    key: str  # what ``open`` takes: a moref, a path
    name: str  # the VM's display name


class VmProvider(ABC):
    """A source of VMs; ``open`` is called from worker threads and must be thread-safe."""

    @abstractmethod
    def list(self) -> list[VmEntry]:
        """The VMs, cheaply: no snapshot, no disk read."""

    @abstractmethod
    def open(self, key: str) -> VmImage:
        """The VM's image; closing it releases whatever was taken (a snapshot)."""

    def close(self) -> None:  # noqa: B027 - most providers hold nothing
        """Release the provider itself (a session)."""


def directory_names(entries: Iterable[VmEntry]) -> dict[str, VmEntry]:
    """A directory name per VM: '%', '/' and NUL escaped; VMs sharing a name (in any case)
    are told apart by their key, and by a number if even that repeats."""
    entries = list(entries)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.name.lower()] = counts.get(e.name.lower(), 0) + 1
    out: dict[str, VmEntry] = {}
    for e in entries:
        name = e.name.replace("%", "%25").replace("/", "%2f").replace("\0", "%00")
        if name in ("", ".", ".."):
            name = f"vm-{os.path.basename(e.key)}"
        if counts[e.name.lower()] > 1:
            name = f"{name} ({os.path.basename(e.key)})"
        unique, n = name, 1
        while unique in out:
            n += 1
            unique = f"{name} {n}"
        out[unique] = e
    return out


class LocalProvider(VmProvider):
    """VMs from .vmx files: given one by one, or every ``*.vmx`` in a folder's subfolders."""

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        allow: Iterable[str | os.PathLike[str]] = (),
    ):
        found: list[tuple[Path, Path | None]] = []
        for p in map(Path, paths):
            if p.is_dir():  # a VM found there is confined to the folder, symlinks or not
                found.extend(
                    (vmx, p) for vmx in sorted(p.glob("*.vmx")) + sorted(p.glob("*/*.vmx"))
                )
            elif p.exists():
                found.append((p, None))
            else:
                raise NotFoundError("no such file or folder", source=str(p))
        self._paths = {str(p): (p, within) for p, within in found}
        self._allow = list(allow)

    def list(self) -> list[VmEntry]:
        return [VmEntry(key, p.stem) for key, (p, _) in self._paths.items()]

    def open(self, key: str) -> VmImage:
        from vcbfs.vm.local import open_local_vm

        if key not in self._paths:
            raise NotFoundError("not a VM of this provider", source=key)
        path, within = self._paths[key]
        return open_local_vm(path, allow=self._allow, within=within)
