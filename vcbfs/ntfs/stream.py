"""An attribute's value as a byte source: resident, non-resident, sparse or LZNT1-compressed.

A non-resident attribute may be split over several attribute records (extents listed in an
$ATTRIBUTE_LIST); their runlists join into one VCN -> LCN map.  Holes (sparse runs) and the
bytes past the initialized size read as zeros.  A compressed attribute is read one compression
unit (16 clusters) at a time: a unit whose clusters are all allocated is stored plain, one with
none allocated is zeros, anything in between holds LZNT1 chunks.  Decompressed units are kept in
a small LRU, so a reader going through a file in small steps inflates each unit once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from vcbfs.blocks.budget import weigh_bytes
from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import Buffer, ByteSource, Span, assemble, coalesce, zeros
from vcbfs.errors import CorruptError, UnsupportedError
from vcbfs.ntfs.attributes import Attribute
from vcbfs.ntfs.compression import lznt1_unit
from vcbfs.ntfs.runlist import RunMap, decode_runlist

__all__ = ["AttributeStream", "ResidentStream", "open_stream"]

UNIT_CACHE_BYTES = 4 << 20
COMPRESSION_UNIT = 4  # log2 of the clusters per unit: the only value Windows writes or reads


class ResidentStream(ByteSource):
    """A value stored inside the MFT record."""

    def __init__(self, value: bytes, name: str):
        self.value = value
        self.size = len(value)
        self.name = name

    def _read(self, offset: int, n: int) -> bytes:
        return self.value[offset : offset + n]

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        return self.value[offset : offset + n]


class AttributeStream(ByteSource):
    """A non-resident attribute (all its extents) read from the volume."""

    def __init__(
        self,
        volume: ByteSource,
        cluster_size: int,
        extents: Sequence[Attribute],
        name: str,
        cluster_count: int | None = None,
        partial: bool = False,
    ):
        first = extents[0]
        self.volume = volume
        self.cluster_size = cs = cluster_size
        self.name = name
        runs = []
        for ext in sorted(extents, key=lambda a: a.start_vcn):
            runs.extend(
                decode_runlist(
                    ext.runlist,
                    first_vcn=ext.start_vcn,
                    last_vcn=ext.last_vcn,
                    cluster_count=cluster_count,
                    source=name,
                )
            )
        self.map = RunMap(runs, start_vcn=0, source=name)
        mapped = self.map.end_vcn * cs
        self.size = first.data_size
        self.initialized = first.initialized_size
        if self.size > mapped:
            if not partial:
                raise CorruptError(
                    f"data size {self.size} is larger than the {mapped} bytes its runs map",
                    source=name,
                )
            self.size = mapped  # the $MFT bootstrap: what the first extent maps, no more
        self.unit = 0
        if first.compressed and first.compression_unit:
            if first.compression_unit != COMPRESSION_UNIT:
                raise UnsupportedError(
                    f"compression unit of {1 << first.compression_unit} clusters "
                    f"(NTFS uses {1 << COMPRESSION_UNIT})",
                    source=name,
                )
            self.unit = (1 << first.compression_unit) * cs
            self._units: LRU[int, bytes] = LRU(UNIT_CACHE_BYTES, weigh_bytes)
        elif first.compressed:
            raise UnsupportedError("compressed attribute without a compression unit", source=name)

    def _read(self, offset: int, n: int) -> bytes:
        end = offset + n
        valid = min(end, self.initialized)
        if valid <= offset:
            return bytes(n)
        data = self._read_units(offset, valid) if self.unit else self._read_plain(offset, valid)
        if valid < end:
            data += bytes(end - valid)
        return data

    def _try_read(self, offset: int, n: int) -> Buffer | None:
        end = offset + n
        valid = min(end, self.initialized)
        if valid <= offset:
            return zeros(n)
        data = self._try_units(offset, valid) if self.unit else self._try_plain(offset, valid)
        if data is None:
            return None
        if valid < end:
            return b"".join((data, zeros(end - valid)))
        return data

    def _try_plain(self, offset: int, end: int) -> Buffer | None:
        """``_read_plain`` from holes and data at hand; None if some run would have to wait."""
        return self._plain(offset, end, wait=False)

    def _try_units(self, offset: int, end: int) -> Buffer | None:
        """``_read_units`` when every unit it needs is already in the unit cache."""
        return self._units_at(offset, end, wait=False)

    def _read_plain(self, offset: int, end: int) -> bytes:
        data = self._plain(offset, end, wait=True)
        assert data is not None
        return bytes(data)

    def _plain(self, offset: int, end: int, *, wait: bool) -> Buffer | None:
        """The bytes of the runs (holes as zeros); without ``wait``, None if a run is not at
        hand or lies past the volume's end (``read_at`` then waits, or reports it)."""
        cs = self.cluster_size
        first = offset // cs
        count = (end - 1) // cs - first + 1
        parts: list[Buffer] = []
        for _vcn, length, lcn in self.map.iter_range(first, count):
            nbytes = length * cs
            if lcn is None:
                parts.append(zeros(nbytes))
                continue
            at = lcn * cs
            chunk = self.volume.read_at(at, nbytes) if wait else self.volume.try_read_at(at, nbytes)
            if chunk is None or len(chunk) != nbytes:
                if not wait:
                    return None
                raise CorruptError(
                    f"run at cluster {lcn} lies past the volume's end", source=self.name
                )
            parts.append(chunk)
        return assemble(parts, offset - first * cs, end - offset)

    def _read_units(self, offset: int, end: int) -> bytes:
        data = self._units_at(offset, end, wait=True)
        assert data is not None
        return bytes(data)

    def _units_at(self, offset: int, end: int, *, wait: bool) -> Buffer | None:
        """The decompressed units' bytes; without ``wait``, None unless all are cached."""
        unit = self.unit
        first = offset // unit
        parts: list[Buffer] = []
        for u in range(first, (end - 1) // unit + 1):
            data = self._unit(u) if wait else self._units.get(u)
            if data is None:
                return None
            parts.append(data)
        return assemble(parts, offset - first * unit, end - offset)

    def _unit(self, u: int) -> bytes:
        cached = self._units.get(u)
        if cached is not None:
            return cached
        cs, unit = self.cluster_size, self.unit
        per = unit // cs
        vcn = u * per
        count = min(per, self.map.end_vcn - vcn)
        pieces = list(self.map.iter_range(vcn, count)) if count > 0 else []
        allocated = sum(length for _v, length, lcn in pieces if lcn is not None)
        if allocated == 0:
            data = bytes(unit)
        else:
            raw = b"".join(
                bytes(length * cs) if lcn is None else self.volume.read_at(lcn * cs, length * cs)
                for _v, length, lcn in pieces
            )
            if allocated >= per:
                data = raw  # stored uncompressed
            else:
                stored = raw[: allocated * cs]  # compressed data precedes the unit's holes
                data = lznt1_unit(stored, unit, f"{self.name}: compression unit {u}")
        self._units.put(u, data)
        return data

    def spans(self, offset: int = 0, length: int | None = None) -> Iterator[Span]:
        start, end = self._clip(offset, length)
        cs = self.cluster_size
        # A compressed unit with any cluster stored is data throughout (its unstored clusters
        # are where the compression saved room); only a unit with none stored is a hole.
        grain = self.unit or cs
        pieces = []
        pos = start
        for vcn, count in self.map.allocated_ranges():
            lo = vcn * cs // grain * grain
            hi = -(-(vcn + count) * cs // grain) * grain
            a, b = max(lo, start, pos), min(hi, end, self.initialized)
            if b <= a:
                continue
            if a > pos:
                pieces.append(Span(pos, a - pos, False))
            pieces.append(Span(a, b - a, True))
            pos = b
        if pos < end:
            pieces.append(Span(pos, end - pos, False))
        return coalesce(pieces)


def open_stream(
    volume: ByteSource,
    cluster_size: int,
    extents: Sequence[Attribute],
    name: str,
    cluster_count: int | None = None,
) -> ByteSource:
    """The value of an attribute given all its attribute records."""
    if not extents:
        raise CorruptError("attribute has no records", source=name)
    if extents[0].resident:
        if len(extents) != 1:
            raise CorruptError("resident attribute split over several records", source=name)
        return ResidentStream(extents[0].value, name)
    if any(e.resident for e in extents):
        raise CorruptError("attribute mixes resident and non-resident records", source=name)
    return AttributeStream(volume, cluster_size, extents, name, cluster_count)
