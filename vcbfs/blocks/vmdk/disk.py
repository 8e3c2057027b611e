"""A virtual disk: a chain of layers (delta over parent over base), each a list of extents.

``open_disk`` takes any file a user may hand us: a descriptor, a hosted sparse file with an
embedded descriptor, or a raw image.  It follows ``parentFileNameHint`` down the chain, checking
each parent's CID against the child's parentCID, and refuses cycles and absurd depths.

Reads compose layers: a run that a layer holds is read from it, a zero run is zeros, an absent
run falls through to the parent, and below the bottom layer everything is zeros.  ``spans()``
does the same for the allocation map, so a backup can skip what no layer ever wrote.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

from vcbfs.blocks.confine import ConfinementError
from vcbfs.blocks.source import (
    Buffer,
    ByteSource,
    Location,
    OwnedSources,
    Span,
    coalesce,
    read_exact,
    zeros,
)
from vcbfs.blocks.vmdk.descriptor import (
    NO_PARENT,
    Descriptor,
    ExtentLine,
    looks_like_descriptor,
    parse_descriptor,
)
from vcbfs.blocks.vmdk.extent import SECTOR, Extent, FlatExtent, Kind, Run, ZeroExtent
from vcbfs.blocks.vmdk.sparse import (
    SPARSE_MAGIC,
    SparseExtent,
    read_embedded_descriptor,
    read_sparse_header,
)
from vcbfs.errors import ChainError, CorruptError, NotFoundError, UnsupportedError

__all__ = ["Layer", "UnreadableExtent", "VirtualDisk", "open_disk"]

MAX_CHAIN = 256  # vSphere allows 32 snapshots; anything deeper is a loop or damage
MAX_DESCRIPTOR_FILE = 1 << 20
COWD_MAGIC = b"COWD"
SESPARSE_MAGIC = (0xCAFEBABE).to_bytes(8, "little")
FLAT_TYPES = ("FLAT", "VMFS", "VMFSTHIN", "VMFSEAGERZEROEDTHICK")


class UnreadableExtent(Extent):
    """An extent vcbfs recognises but cannot read (physical RDM, NOACCESS): reads fail clearly."""

    def __init__(self, line: ExtentLine, name: str, reason: str):
        self.type_name = line.type
        self.name = name
        self.size = line.sectors * SECTOR
        self.reason = reason

    def map(self, offset: int, length: int) -> Iterator[Run]:
        if length > 0:
            yield Run(offset, length, Kind.DATA, offset)

    def read_run(self, run: Run) -> bytes:
        raise UnsupportedError(self.reason, source=self.name, offset=run.offset)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "unreadable": self.reason}


@dataclass
class Layer:
    """One file of a chain: its descriptor (None for a raw image) and its opened extents."""

    location: Location
    format: str
    descriptor: Descriptor | None
    extents: list[Extent]

    def __post_init__(self) -> None:
        self.starts: list[int] = []
        pos = 0
        for ext in self.extents:
            self.starts.append(pos)
            pos += ext.size
        self.size = pos

    @property
    def cid(self) -> int | None:
        return self.descriptor.cid if self.descriptor else None

    def runs(
        self, offset: int, length: int, allocation: bool = False
    ) -> Iterator[tuple[Extent, Run, int]]:
        """(extent, extent-relative run, layer offset of the run) over a range of this layer.

        With ``allocation``, extents also report holes of their files (see Extent.allocation).
        """
        end = min(offset + length, self.size)
        i = bisect.bisect_right(self.starts, offset) - 1
        while offset < end and i < len(self.extents):
            ext, start = self.extents[i], self.starts[i]
            stop = min(end, start + ext.size)
            runs = ext.allocation if allocation else ext.map
            for run in runs(offset - start, stop - offset):
                yield ext, run, start + run.offset
            offset = stop
            i += 1

    def runs_nowait(self, offset: int, length: int) -> Iterator[tuple[Extent, Run | None, int]]:
        """``runs`` where mapping needs no I/O; a None run means the rest would have to wait."""
        end = min(offset + length, self.size)
        i = bisect.bisect_right(self.starts, offset) - 1
        while offset < end and i < len(self.extents):
            ext, start = self.extents[i], self.starts[i]
            stop = min(end, start + ext.size)
            runs = ext.map_nowait(offset - start, stop - offset)
            if runs is None:
                yield ext, None, offset
                return
            for run in runs:
                yield ext, run, start + run.offset
            offset = stop
            i += 1

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"file": self.location.name, "format": self.format}
        if self.descriptor is not None:
            info["cid"] = f"{self.descriptor.cid:08x}" if self.descriptor.cid is not None else None
            if self.descriptor.parent_cid != NO_PARENT:
                info["parent_cid"] = f"{self.descriptor.parent_cid:08x}"
            if self.descriptor.parent_hint:
                info["parent"] = self.descriptor.parent_hint
        info["size"] = self.size
        info["extents"] = [e.describe() for e in self.extents]
        return info


class VirtualDisk(ByteSource):
    """The bytes of a virtual disk as its guest sees them, across the whole chain."""

    def __init__(self, layers: list[Layer], owned: OwnedSources):
        self.layers = layers
        self._owned = owned
        top = layers[0]
        self.name = top.location.name
        self.size = top.size
        self.format = top.format

    def _read(self, offset: int, n: int) -> bytes:
        parts: list[bytes] = []
        self._gather(0, offset, n, parts)
        return b"".join(parts)

    def _gather(self, depth: int, offset: int, n: int, parts: list[bytes]) -> None:
        if depth == len(self.layers):
            parts.append(bytes(n))
            return
        layer = self.layers[depth]
        inside = max(0, min(n, layer.size - offset))
        for ext, run, at in layer.runs(offset, inside):
            if run.kind is Kind.DATA:
                parts.append(ext.read_run(run))
            elif run.kind is Kind.ZERO:
                parts.append(bytes(run.length))
            else:
                self._gather(depth + 1, at, run.length, parts)
        if inside < n:  # a parent smaller than its child: the rest was never written
            parts.append(bytes(n - inside))

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        parts: list[Buffer] = []
        if not self._try_gather(0, offset, n, parts):
            return None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _try_gather(self, depth: int, offset: int, n: int, parts: list[Buffer]) -> bool:
        """``_gather`` from memory only: False as soon as some part would have to wait."""
        if depth == len(self.layers):
            parts.append(zeros(n))
            return True
        layer = self.layers[depth]
        inside = max(0, min(n, layer.size - offset))
        for ext, run, at in layer.runs_nowait(offset, inside):
            if run is None:
                return False
            if run.kind is Kind.DATA:
                data = ext.try_read_run(run)
                if data is None:
                    return False
                parts.append(data)
            elif run.kind is Kind.ZERO:
                parts.append(zeros(run.length))
            elif not self._try_gather(depth + 1, at, run.length, parts):
                return False
        if inside < n:
            parts.append(zeros(n - inside))
        return True

    def spans(self, offset: int = 0, length: int | None = None) -> Iterator[Span]:
        start, end = self._clip(offset, length)
        return coalesce(self._spans(0, start, end - start))

    def _spans(self, depth: int, offset: int, n: int) -> Iterator[Span]:
        if depth == len(self.layers):
            yield Span(offset, n, False)
            return
        layer = self.layers[depth]
        inside = max(0, min(n, layer.size - offset))
        for _ext, run, at in layer.runs(offset, inside, allocation=True):
            if run.kind is Kind.ABSENT:
                yield from self._spans(depth + 1, at, run.length)
            else:
                yield Span(at, run.length, run.kind is Kind.DATA)
        if inside < n:
            yield Span(offset + inside, n - inside, False)

    def direct(self, offset: int, n: int) -> tuple[int, int] | None:
        """Where the range is one run of a flat extent in some layer, that file's bytes."""
        for layer in self.layers:
            if offset < 0 or offset + n > layer.size:
                return None
            runs = list(itertools.islice(layer.runs(offset, n), 2))
            if len(runs) != 1:
                return None
            ext, run, _at = runs[0]
            if run.kind is Kind.ABSENT:
                continue
            if run.kind is Kind.DATA and isinstance(ext, FlatExtent) and ext.file is not None:
                return ext.file.direct(run.loc, run.length)
            return None
        return None

    def describe(self) -> dict[str, object]:
        return {
            "file": self.name,
            "format": self.format,
            "capacity": self.size,
            "chain": [layer.describe() for layer in self.layers],
        }

    def close(self) -> None:
        self._owned.close()


def open_disk(location: Location) -> VirtualDisk:
    """Open a VMDK (any kind, with its whole chain) or a raw image as one virtual disk."""
    owned = OwnedSources()
    try:
        layers = _open_chain(location, owned)
    except BaseException:
        owned.close()
        raise
    return VirtualDisk(layers, owned)


def _open_chain(location: Location, owned: OwnedSources) -> list[Layer]:
    layers: list[Layer] = []
    seen: set[str] = set()
    loc = location
    while True:
        key = os.path.normpath(loc.name)
        if key in seen:
            raise ChainError(f"the delta chain loops back to {loc.name}", source=location.name)
        if len(layers) >= MAX_CHAIN:
            raise ChainError(f"the delta chain is deeper than {MAX_CHAIN}", source=location.name)
        seen.add(key)
        layer = _open_layer(loc, owned)
        if layers:
            child = layers[-1]
            assert child.descriptor is not None
            want = child.descriptor.parent_cid
            if want != NO_PARENT and layer.cid != want:
                got = "none" if layer.cid is None else f"{layer.cid:08x}"
                raise ChainError(
                    f"parent CID mismatch: {child.location.name} expects parentCID {want:08x} "
                    f"but its parent {loc.name} has CID {got}"
                )
        layers.append(layer)
        desc = layer.descriptor
        if desc is None or not desc.has_parent:
            return layers
        if not desc.parent_hint:
            raise ChainError("a delta disk without parentFileNameHint", source=loc.name)
        loc = _parent_location(loc, desc.parent_hint)


def _parent_location(child: Location, hint: str) -> Location:
    """The parent named by a hint.  An absolute path that is not there (or not in the box: an
    ESXi ``/vmfs/volumes/UUID/...`` of a datastore the proxy does not map) is looked up in the
    child's directory, where a copied VM keeps it; if it is not there either, the first error
    (the refusal, or not found) is the one reported."""
    if not hint.startswith("/"):
        return child.sibling(hint)
    try:
        loc = child.sibling(hint)
        loc.open().close()
        return loc
    except (NotFoundError, ConfinementError) as exc:
        first = exc
    beside = child.sibling(os.path.basename(hint))
    try:
        beside.open().close()
    except NotFoundError:
        raise first from None
    return beside


def _open_layer(loc: Location, owned: OwnedSources) -> Layer:
    src = owned.add(loc.open())
    head = src.read_at(0, SECTOR)
    if head[:4] == SPARSE_MAGIC:
        header = read_sparse_header(src)
        text = read_embedded_descriptor(src, header)
        if text is None:  # a bare extent of a split disk: readable on its own
            ext = SparseExtent(src, header.capacity * SECTOR, header)
            return Layer(loc, "sparse extent", None, [ext])
        # An embedded descriptor describes its own file, whatever name its extent line
        # still carries from before a copy or rename (qemu reads it the same way).
        desc = parse_descriptor(text, source=loc.name)
        ext = SparseExtent(src, header.capacity * SECTOR, header)
        return Layer(loc, desc.create_type or "monolithicSparse", desc, [ext])
    if head[:4] == COWD_MAGIC or head[:8] == SESPARSE_MAGIC:
        raise UnsupportedError(
            "this is a delta extent, not a disk: open the descriptor file that names it",
            source=loc.name,
        )
    if looks_like_descriptor(head):
        if src.size > MAX_DESCRIPTOR_FILE:
            raise CorruptError("descriptor file is larger than 1 MiB", source=loc.name)
        desc = parse_descriptor(read_exact(src, 0, src.size, "descriptor"), source=loc.name)
        extents = [_open_extent(loc, line, owned) for line in desc.extents]
        return Layer(loc, desc.create_type or "unknown", desc, extents)
    return Layer(loc, "raw", None, [FlatExtent(src, src.size, 0, "RAW")])


def _open_extent(
    parent: Location,
    line: ExtentLine,
    owned: OwnedSources,
) -> Extent:
    size = line.sectors * SECTOR
    if line.type == "ZERO":
        return ZeroExtent(size)
    assert line.filename is not None
    where = parent.sibling(line.filename)
    if line.access == "NOACCESS":
        return UnreadableExtent(line, where.name, "extent is marked NOACCESS")
    if line.type in ("VMFSRAW", "VMFSPASSTHROUGH"):
        return UnreadableExtent(
            line,
            where.name,
            "physical-mode RDM: the LUN is not readable through a datastore; "
            "back it up from the storage side",
        )
    if line.type == "VMFSRDM":
        try:
            src = owned.add(where.open())
        except (NotFoundError, UnsupportedError):
            return UnreadableExtent(
                line, where.name, "virtual-mode RDM mapping file is not readable from here"
            )
        if src.size < size:
            return UnreadableExtent(
                line, where.name, "virtual-mode RDM: the LUN's data is not reachable from here"
            )
        return FlatExtent(src, size, 0, "VMFSRDM")
    src = owned.add(where.open())
    if line.type in FLAT_TYPES:
        return FlatExtent(src, size, line.offset * SECTOR, line.type)
    if line.type == "SPARSE":
        return SparseExtent(src, size)
    if line.type == "VMFSSPARSE":
        from vcbfs.blocks.vmdk.cowd import CowdExtent

        return CowdExtent(src, size)
    if line.type == "SESPARSE":
        from vcbfs.blocks.vmdk.sesparse import SeSparseExtent

        return SeSparseExtent(src, size)
    raise UnsupportedError(f"extent type {line.type} is not known", source=where.name)
