"""NTFS runlists: decoding mapping pairs and mapping VCNs to LCNs.

A non-resident attribute stores its clusters as a list of runs ("mapping pairs" or "data
runs") at the end of its attribute record.  Each run starts with a header byte whose low
nibble is the size in bytes of the run's length and whose high nibble is the size of a
signed LCN delta, relative to the previous run that had one; a delta size of 0 makes the
run sparse (no clusters on disk, reads as zeros).  A header byte of 0 ends the list.  The
first delta of every attribute record is relative to LCN 0.

Everything here is decoded from untrusted bytes, so every field is checked: field sizes,
fields running past the buffer, zero or huge lengths, LCNs below 0 or past the volume, a
list that does not cover exactly the VCNs its attribute header claims, and absurd run
counts.  Failures are CorruptError naming the byte of the runlist at fault.

A file whose runs span several attribute records (through an $ATTRIBUTE_LIST) is mapped by
one RunMap built from all the pieces in VCN order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vcbfs.errors import CorruptError, OutOfRangeError

__all__ = ["Run", "RunMap", "decode_runlist"]

# VCNs and LCNs are signed 64-bit on disk; nothing may reach past this.
_MAX_CN = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Run:
    """``length`` clusters from ``vcn`` stored at ``lcn`` on the volume, or nowhere (sparse)."""

    vcn: int
    length: int
    lcn: int | None

    @property
    def end(self) -> int:
        """The VCN just after the run."""
        return self.vcn + self.length


def decode_runlist(
    data: bytes | memoryview,
    *,
    first_vcn: int = 0,
    last_vcn: int | None = None,
    cluster_count: int | None = None,
    max_runs: int = 1 << 16,
    source: str | None = None,
    base_offset: int | None = None,
) -> list[Run]:
    """Decode one attribute record's mapping pairs into runs starting at ``first_vcn``.

    ``last_vcn`` is the record's highest VCN: when given, the runs must end exactly after it
    (an empty list is also accepted for ``last_vcn`` of ``first_vcn - 1`` or, at VCN 0, of 0,
    both of which tools write for an empty attribute).  ``cluster_count`` is the volume size:
    no run may reach past it.  The list ends at a 0 header byte or at the end of ``data``.

    Lengths are unsigned, as the Linux-NTFS documentation describes them.  An LCN that comes
    out as exactly -1 is read as sparse, as the Linux drivers do for NTFS 1.2 volumes; any
    other negative LCN is corrupt.  Errors name ``source`` and, if ``base_offset`` (where the
    runlist sits in ``source``) is given, the absolute offset of the run at fault.
    """
    buf = bytes(data)
    size = len(buf)

    def corrupt(pos: int, message: str) -> CorruptError:
        where = f"runlist byte {pos}: " if pos >= 0 else "runlist: "
        offset = None if base_offset is None or pos < 0 else base_offset + pos
        return CorruptError(where + message, source=source, offset=offset)

    if not 0 <= first_vcn <= _MAX_CN:
        raise corrupt(-1, f"first VCN {first_vcn} is out of range")
    if last_vcn is not None and not first_vcn - 1 <= last_vcn <= _MAX_CN:
        raise corrupt(-1, f"last VCN {last_vcn} is impossible with first VCN {first_vcn}")
    lcn_limit = _MAX_CN + 1 if cluster_count is None else cluster_count
    vcn_limit = _MAX_CN + 1 if last_vcn is None else last_vcn + 1

    runs: list[Run] = []
    vcn = first_vcn
    lcn = 0
    pos = 0
    while pos < size:
        header = buf[pos]
        if header == 0:
            break
        len_size = header & 0x0F
        off_size = header >> 4
        if len_size == 0:
            raise corrupt(pos, f"run header {header:#04x} has no length field")
        if len_size > 8 or off_size > 8:
            raise corrupt(pos, f"run header {header:#04x} has a field longer than 8 bytes")
        start = pos + 1
        end = start + len_size + off_size
        if end > size:
            raise corrupt(pos, f"run needs {end - pos} bytes, the runlist ends after {size - pos}")
        if len(runs) >= max_runs:
            raise corrupt(pos, f"more than {max_runs} runs")
        length = int.from_bytes(buf[start : start + len_size], "little")
        if length == 0:
            raise corrupt(pos, "run has length 0")
        if vcn + length > vcn_limit:
            raise corrupt(
                pos,
                f"run of {length} clusters at VCN {vcn} ends past "
                + ("the 63-bit VCN space" if last_vcn is None else f"the last VCN {last_vcn}"),
            )
        run_lcn: int | None = None
        if off_size:
            lcn += int.from_bytes(buf[start + len_size : end], "little", signed=True)
            if lcn < -1:
                raise corrupt(pos, f"run starts at negative LCN {lcn}")
            if lcn >= 0:
                if lcn + length > lcn_limit:
                    limit = "the 63-bit LCN space" if cluster_count is None else "the volume"
                    raise corrupt(
                        pos,
                        f"run of {length} clusters at LCN {lcn} ends past {limit} ({lcn_limit})",
                    )
                run_lcn = lcn
        runs.append(Run(vcn, length, run_lcn))
        vcn += length
        pos = end

    if last_vcn is not None and vcn != last_vcn + 1:
        empty_ok = not runs and (last_vcn == first_vcn - 1 or last_vcn == first_vcn == 0)
        if not empty_ok:
            raise corrupt(
                pos if pos < size else -1,
                f"runs cover VCNs {first_vcn}..{vcn - 1}, the attribute claims "
                f"{first_vcn}..{last_vcn}",
            )
    return runs


class RunMap:
    """The VCN -> LCN map of a whole non-resident attribute, from one or more runlists.

    Runs must be given in VCN order and be contiguous from ``start_vcn``; physically adjacent
    runs (and adjacent sparse runs) are merged.  Lookups take O(log runs).  A VCN or range
    outside the map raises CorruptError (the attribute's sizes claim data that no run maps);
    a negative VCN or count raises OutOfRangeError (a caller's mistake).
    """

    __slots__ = ("_allocated", "_end", "_runs", "_start", "_starts", "source")

    def __init__(self, runs: Iterable[Run], *, start_vcn: int = 0, source: str | None = None):
        self.source = source
        merged: list[Run] = []
        vcn = start_vcn
        for r in runs:
            if r.vcn != vcn:
                raise CorruptError(
                    f"runlist pieces are not contiguous: a run starts at VCN {r.vcn}, "
                    f"expected {vcn}",
                    source=source,
                )
            if r.length <= 0 or (r.lcn is not None and r.lcn < 0):
                raise CorruptError(f"invalid run {r}", source=source)
            vcn += r.length
            if merged:
                p = merged[-1]
                if (p.lcn is None and r.lcn is None) or (
                    p.lcn is not None and r.lcn is not None and p.lcn + p.length == r.lcn
                ):
                    merged[-1] = Run(p.vcn, p.length + r.length, p.lcn)
                    continue
            merged.append(r)
        self._runs = tuple(merged)
        self._starts = [r.vcn for r in merged]
        self._start = start_vcn
        self._end = vcn
        self._allocated = sum(r.length for r in merged if r.lcn is not None)

    @property
    def runs(self) -> tuple[Run, ...]:
        """The merged runs, in VCN order."""
        return self._runs

    @property
    def start_vcn(self) -> int:
        return self._start

    @property
    def end_vcn(self) -> int:
        """The VCN just after the last mapped one."""
        return self._end

    @property
    def total_clusters(self) -> int:
        """How many VCNs the map covers, sparse or not."""
        return self._end - self._start

    @property
    def allocated_clusters(self) -> int:
        """How many of them are stored on disk."""
        return self._allocated

    def _check(self, vcn: int, count: int) -> None:
        if vcn < 0 or count < 0:
            raise OutOfRangeError(f"negative cluster range ({vcn}, {count})", source=self.source)
        if vcn < self._start or vcn + count > self._end:
            raise CorruptError(
                f"VCNs {vcn}..{vcn + max(count, 1) - 1} are not mapped: the runlist covers "
                f"{self._start}..{self._end - 1}",
                source=self.source,
            )

    def lookup(self, vcn: int) -> tuple[int | None, int]:
        """``(lcn or None if sparse, clusters left in that run from vcn)``."""
        self._check(vcn, 1)
        r = self._runs[bisect_right(self._starts, vcn) - 1]
        delta = vcn - r.vcn
        return (None if r.lcn is None else r.lcn + delta), r.length - delta

    def iter_range(self, vcn: int, count: int) -> Iterator[tuple[int, int, int | None]]:
        """Split ``count`` clusters from ``vcn`` into ``(vcn, count, lcn or None)`` by run."""
        self._check(vcn, count)
        return self._iter_range(vcn, count)

    def _iter_range(self, vcn: int, count: int) -> Iterator[tuple[int, int, int | None]]:
        end = vcn + count
        runs = self._runs
        i = bisect_right(self._starts, vcn) - 1
        while vcn < end:
            r = runs[i]
            n = min(r.end, end) - vcn
            yield vcn, n, (None if r.lcn is None else r.lcn + (vcn - r.vcn))
            vcn += n
            i += 1

    def allocated_ranges(
        self, vcn: int | None = None, count: int | None = None
    ) -> Iterator[tuple[int, int]]:
        """``(vcn, count)`` of each stretch stored on disk within the window, holes left out.

        The window defaults to the whole map; stretches are merged across runs, so two
        allocated runs in a row come out as one range.
        """
        start = self._start if vcn is None else vcn
        n = self._end - start if count is None else count
        self._check(start, n)
        return self._allocated_ranges(start, n)

    def _allocated_ranges(self, vcn: int, count: int) -> Iterator[tuple[int, int]]:
        cur: tuple[int, int] | None = None
        for v, n, lcn in self._iter_range(vcn, count):
            if lcn is None:
                continue
            if cur is not None and cur[0] + cur[1] == v:
                cur = (cur[0], cur[1] + n)
                continue
            if cur is not None:
                yield cur
            cur = (v, n)
        if cur is not None:
            yield cur

    def __repr__(self) -> str:
        return (
            f"<RunMap VCNs {self._start}..{self._end - 1}: {len(self._runs)} runs, "
            f"{self._allocated} clusters allocated>"
        )
