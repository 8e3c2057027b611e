"""NTFS runlists: mapping-pairs vectors, limits, corrupt input, and the VCN -> LCN map."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcbfs.errors import CorruptError, OutOfRangeError
from vcbfs.ntfs.runlist import Run, RunMap, decode_runlist

H = bytes.fromhex


def encode_runs(runs: list[tuple[int, int | None]]) -> bytes:
    """Mapping pairs for ``(length, lcn or None)`` runs: minimal fields, 0-terminated."""
    out = bytearray()
    prev = 0
    for length, lcn in runs:
        len_field = length.to_bytes(max(1, (length.bit_length() + 7) // 8), "little")
        off_field = b""
        if lcn is not None:
            delta = lcn - prev
            size = 1
            while not -(1 << (8 * size - 1)) <= delta < 1 << (8 * size - 1):
                size += 1
            off_field = delta.to_bytes(size, "little", signed=True)
            prev = lcn
        out.append(len(off_field) << 4 | len(len_field))
        out += len_field + off_field
    return bytes(out + b"\0")


def spans(runs: list[Run]) -> list[tuple[int, int | None]]:
    return [(r.length, r.lcn) for r in runs]


# --- vectors from the Linux-NTFS "NTFS Documentation", Concept - Data Runs -------------------


@pytest.mark.parametrize(
    ("hexdata", "expect"),
    [
        # Example 1 - normal, unfragmented file.
        ("21 18 34 56 00", [(0x18, 0x5634)]),
        # Example 2 - normal, fragmented file.
        (
            "31 38 73 25 34 32 14 01 E5 11 02 31 42 AA 00 03 00",
            [(0x38, 0x342573), (0x114, 0x363758), (0x42, 0x393802)],
        ),
        # Example 3 - scrambled file: the third run has a negative delta (E0 = -0x20).
        ("11 30 60 21 10 00 01 11 20 E0 00", [(0x30, 0x60), (0x10, 0x160), (0x20, 0x140)]),
        # Example 4 - sparse file: the sparse run leaves the LCN at 0x20 for the next delta.
        ("11 30 20 01 60 11 10 30 00", [(0x30, 0x20), (0x60, None), (0x10, 0x50)]),
        # Example 5 - compressed file: runs padded to 16-cluster units by sparse runs.
        (
            "11 08 40 01 08 11 10 08 11 0C 10 01 04 00",
            [(8, 0x40), (8, None), (0x10, 0x48), (0x0C, 0x58), (4, None)],
        ),
        # The worked example under "Layout" (no terminator: the buffer's end ends it).
        (
            "21 14 00 01 11 10 18 11 05 15 01 27 11 20 05",
            [(0x14, 0x100), (0x10, 0x118), (5, 0x12D), (0x27, None), (0x20, 0x132)],
        ),
        # "data runs": a 2-byte negative delta (DBC8 = -0x2438).
        (
            "21 20 ED 05 22 48 07 48 22 21 28 C8 DB",
            [(0x20, 0x5ED), (0x748, 0x2835), (0x28, 0x3FD)],
        ),
        # "data runs": the sparse example, 9 clusters, 7 sparse, 7 more after the first.
        ("21 09 F5 47 01 07 11 07 09", [(9, 0x47F5), (7, None), (7, 0x47FE)]),
    ],
)
def test_documented_examples(hexdata: str, expect: list[tuple[int, int | None]]) -> None:
    runs = decode_runlist(H(hexdata))
    assert spans(runs) == expect
    vcn = 0
    for r in runs:
        assert r.vcn == vcn
        vcn = r.end
    total = sum(n for n, _ in expect)
    assert decode_runlist(H(hexdata), last_vcn=total - 1) == runs
    assert decode_runlist(memoryview(H(hexdata))) == runs


def test_fields_of_every_size() -> None:
    # Lengths and deltas of 1..8 bytes, each holding the largest value its size allows, and
    # the delta going back down by as much.
    for size in range(1, 9):
        big = (1 << (8 * size - 1)) - 1
        data = (
            bytes([size << 4 | 1, 1])
            + big.to_bytes(size, "little")
            + bytes([size << 4 | size])
            + big.to_bytes(size, "little")
            + (-big).to_bytes(size, "little", signed=True)
        )
        assert spans(decode_runlist(data)) == [(1, big), (big, 0)]


def test_length_is_unsigned() -> None:
    # A 1-byte length of 0x80 is 128 clusters (the documentation calls lengths unsigned).
    assert spans(decode_runlist(H("11 80 10"))) == [(128, 0x10)]


def test_first_vcn_of_a_later_extent() -> None:
    # The runlist of a second attribute record starts at its lowest VCN; LCNs restart at 0.
    runs = decode_runlist(H("11 10 40 00"), first_vcn=0x30, last_vcn=0x3F)
    assert runs == [Run(0x30, 0x10, 0x40)]


def test_bytes_after_the_terminator_are_ignored() -> None:
    assert spans(decode_runlist(H("11 05 10 00 FF FF FF"))) == [(5, 0x10)]
    assert decode_runlist(b"") == []
    assert decode_runlist(b"\0\x11") == []


def test_legacy_lcn_minus_one_is_sparse() -> None:
    # Linux and ntfs-3g accept an LCN of exactly -1 (NTFS 1.2 holes) and reject lower ones.
    runs = decode_runlist(H("11 04 FF 11 04 03"))
    assert spans(runs) == [(4, None), (4, 2)]


# --- limits and corrupt input ----------------------------------------------------------------


def test_last_vcn_must_match_exactly() -> None:
    data = H("11 10 20 01 10 00")  # 0x20 clusters
    assert len(decode_runlist(data, last_vcn=0x1F)) == 2
    with pytest.raises(CorruptError, match=r"cover VCNs 0\.\.31, the attribute claims 0\.\.32"):
        decode_runlist(data, last_vcn=0x20)
    with pytest.raises(CorruptError, match="past the last VCN 30"):
        decode_runlist(data, last_vcn=0x1E)
    with pytest.raises(CorruptError, match="past the last VCN 15"):
        decode_runlist(data, last_vcn=0x0F)  # caught at the run, not after the loop
    with pytest.raises(CorruptError, match="last VCN 8 is impossible with first VCN 10"):
        decode_runlist(data, first_vcn=10, last_vcn=8)
    with pytest.raises(CorruptError, match="first VCN -1 is out of range"):
        decode_runlist(data, first_vcn=-1)


def test_empty_runlists() -> None:
    assert decode_runlist(b"\0", last_vcn=-1) == []
    assert decode_runlist(b"\0", last_vcn=0) == []  # some tools write 0 for an empty attribute
    assert decode_runlist(b"\0", first_vcn=16, last_vcn=15) == []
    with pytest.raises(CorruptError):
        decode_runlist(b"\0", first_vcn=16, last_vcn=16)
    with pytest.raises(CorruptError):
        decode_runlist(b"\0", last_vcn=5)


def test_cluster_count_bounds_every_run() -> None:
    data = H("21 10 F0 00 00")  # 16 clusters at 0xF0: up to 0x100
    assert len(decode_runlist(data, cluster_count=0x100)) == 1
    with pytest.raises(CorruptError, match="ends past the volume"):
        decode_runlist(data, cluster_count=0xFF)
    # Sparse runs take no clusters: they are never out of the volume.
    assert len(decode_runlist(H("04 00 00 00 10 00"), cluster_count=1)) == 1


@pytest.mark.parametrize(
    ("hexdata", "message"),
    [
        ("10 05", "has no length field"),
        ("11 00 05", "has length 0"),
        ("12 00 00 05", "has length 0"),
        ("19 05", "longer than 8 bytes"),
        ("91 05", "longer than 8 bytes"),
        ("11 05", "needs 3 bytes, the runlist ends after 2"),
        ("21 05 10", "needs 4 bytes"),
        ("31", "needs 5 bytes, the runlist ends after 1"),
        ("11 05 FB", "negative LCN -5"),
        ("11 05 10 11 05 EE", "negative LCN -2"),
        ("11 05 FE", "negative LCN -2"),
        ("08 FF FF FF FF FF FF FF FF", "63-bit VCN space"),
        ("81 02 FF FF FF FF FF FF FF 7F", "63-bit LCN space"),
    ],
)
def test_corrupt_runlists(hexdata: str, message: str) -> None:
    with pytest.raises(CorruptError, match=message):
        decode_runlist(H(hexdata))


def test_vcn_overflow_from_a_high_first_vcn() -> None:
    with pytest.raises(CorruptError, match="63-bit VCN space"):
        decode_runlist(H("11 02 10"), first_vcn=(1 << 63) - 1)
    assert decode_runlist(H("11 01 10"), first_vcn=(1 << 63) - 1)[0].vcn == (1 << 63) - 1


def test_too_many_runs() -> None:
    data = encode_runs([(1, i * 2) for i in range(1, 6)])
    assert len(decode_runlist(data, max_runs=5)) == 5
    with pytest.raises(CorruptError, match="more than 4 runs"):
        decode_runlist(data, max_runs=4)


def test_errors_name_the_source_and_offset() -> None:
    with pytest.raises(CorruptError) as info:
        decode_runlist(H("11 05 10 11 00 01"), source="$MFT#5", base_offset=0x1040)
    err = info.value
    assert err.source == "$MFT#5"
    assert err.offset == 0x1043
    assert "runlist byte 3" in str(err)
    with pytest.raises(CorruptError) as info:
        decode_runlist(H("11 00 01"))
    assert info.value.offset is None


# --- RunMap ----------------------------------------------------------------------------------


def test_runmap_lookup_and_totals() -> None:
    m = RunMap(decode_runlist(H("11 30 20 01 60 11 10 30 00")))  # documentation example 4
    assert m.total_clusters == 0xA0
    assert m.allocated_clusters == 0x40
    assert m.lookup(0) == (0x20, 0x30)
    assert m.lookup(0x2F) == (0x4F, 1)
    assert m.lookup(0x30) == (None, 0x60)
    assert m.lookup(0x8F) == (None, 1)
    assert m.lookup(0x90) == (0x50, 0x10)
    assert m.lookup(0x9F) == (0x5F, 1)
    with pytest.raises(CorruptError, match="not mapped"):
        m.lookup(0xA0)
    with pytest.raises(OutOfRangeError):
        m.lookup(-1)


def test_runmap_iter_range_splits_by_run() -> None:
    m = RunMap(decode_runlist(H("11 30 20 01 60 11 10 30 00")))
    assert list(m.iter_range(0x2E, 0x64)) == [(0x2E, 2, 0x4E), (0x30, 0x60, None), (0x90, 2, 0x50)]
    assert list(m.iter_range(0x40, 4)) == [(0x40, 4, None)]
    assert list(m.iter_range(0xA0, 0)) == []
    with pytest.raises(CorruptError, match="not mapped"):
        m.iter_range(0x90, 0x11)  # raised at the call, before any piece
    with pytest.raises(OutOfRangeError):
        m.iter_range(0, -1)


def test_runmap_joins_extents_and_merges_neighbours() -> None:
    # Two attribute records: VCNs 0..0x1F and 0x20..0x3F; the second continues the first run
    # on disk, so the map holds one run.  Adjacent sparse runs merge too.
    first = decode_runlist(H("11 20 40 00"), last_vcn=0x1F)
    second = decode_runlist(H("11 10 60 01 08 01 08 00"), first_vcn=0x20, last_vcn=0x3F)
    m = RunMap(first + second)
    assert m.runs == (Run(0, 0x30, 0x40), Run(0x30, 0x10, None))
    assert m.lookup(0x25) == (0x65, 0x0B)
    assert list(m.iter_range(0x1E, 4)) == [(0x1E, 4, 0x5E)]


def test_runmap_rejects_gaps_and_overlaps() -> None:
    with pytest.raises(CorruptError, match="starts at VCN 12, expected 10"):
        RunMap([Run(0, 10, 5), Run(12, 3, 40)])
    with pytest.raises(CorruptError, match="starts at VCN 8, expected 10"):
        RunMap([Run(0, 10, 5), Run(8, 3, 40)])
    with pytest.raises(CorruptError, match="starts at VCN 4, expected 0"):
        RunMap([Run(4, 10, 5)])
    with pytest.raises(CorruptError, match="invalid run"):
        RunMap([Run(0, 0, 5)])
    with pytest.raises(CorruptError, match="invalid run"):
        RunMap([Run(0, 3, -2)])
    assert RunMap([Run(4, 10, 5)], start_vcn=4).lookup(4) == (5, 10)


def test_runmap_allocated_ranges() -> None:
    runs = [Run(0, 4, 100), Run(4, 4, 300), Run(8, 8, None), Run(16, 2, 7), Run(18, 6, None)]
    m = RunMap(runs)
    assert list(m.allocated_ranges()) == [(0, 8), (16, 2)]
    assert list(m.allocated_ranges(2, 15)) == [(2, 6), (16, 1)]
    assert list(m.allocated_ranges(8, 8)) == []
    with pytest.raises(CorruptError):
        m.allocated_ranges(20, 10)
    empty = RunMap([])
    assert empty.total_clusters == 0
    assert list(empty.allocated_ranges()) == []
    assert "0 clusters allocated" in repr(empty)


# --- properties ------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

run_lists = st.lists(
    st.tuples(
        st.integers(1, 1 << 40),
        st.one_of(st.none(), st.integers(0, 1 << 44)),
    ),
    max_size=30,
)


@FUZZ
@given(run_lists, st.integers(0, 1 << 20))
def test_round_trip(runs: list[tuple[int, int | None]], first_vcn: int) -> None:
    data = encode_runs(runs)
    total = sum(n for n, _ in runs)
    got = decode_runlist(
        data,
        first_vcn=first_vcn,
        last_vcn=first_vcn + total - 1,
        cluster_count=(1 << 44) + (1 << 40),
    )
    assert spans(got) == runs
    assert [r.vcn for r in got] == [
        first_vcn + sum(n for n, _ in runs[:i]) for i in range(len(runs))
    ]


@FUZZ
@given(st.binary(max_size=200), st.integers(1, 40), st.one_of(st.none(), st.integers(0, 1 << 40)))
def test_fuzz_random_bytes(data: bytes, max_runs: int, cluster_count: int | None) -> None:
    try:
        runs = decode_runlist(data, max_runs=max_runs, cluster_count=cluster_count)
    except CorruptError:
        return
    assert len(runs) <= max_runs
    vcn = 0
    for r in runs:
        assert r.vcn == vcn and r.length > 0
        assert r.lcn is None or r.lcn >= 0
        if r.lcn is not None and cluster_count is not None:
            assert r.lcn + r.length <= cluster_count
        vcn = r.end
    RunMap(runs)  # anything decoded builds a map


@FUZZ
@given(run_lists, st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4))
def test_fuzz_mutated_runlists(
    runs: list[tuple[int, int | None]], flips: list[tuple[int, int]]
) -> None:
    data = bytearray(encode_runs(runs))
    for where, value in flips:
        data[where % len(data)] = value
    total = sum(n for n, _ in runs)
    try:
        got = decode_runlist(bytes(data), last_vcn=total - 1 if runs else None)
    except CorruptError:
        return
    if runs:  # exact coverage, or the empty list accepted for a last VCN of 0
        assert sum(r.length for r in got) == total or (not got and total == 1)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(1, 50), st.one_of(st.none(), st.integers(0, 500))),
        min_size=1,
        max_size=12,
    ),
    st.data(),
)
def test_runmap_agrees_with_a_cluster_by_cluster_map(
    runs: list[tuple[int, int | None]], data: st.DataObject
) -> None:
    flat: list[int | None] = []
    objs = []
    for length, lcn in runs:
        objs.append(Run(len(flat), length, lcn))
        flat += [None if lcn is None else lcn + i for i in range(length)]
    m = RunMap(objs)
    assert m.total_clusters == len(flat)
    assert m.allocated_clusters == sum(x is not None for x in flat)
    vcn = data.draw(st.integers(0, len(flat) - 1))
    count = data.draw(st.integers(0, len(flat) - vcn))
    pieces = list(m.iter_range(vcn, count))
    got: list[int | None] = []
    at = vcn
    for v, n, lcn in pieces:
        assert v == at and n > 0
        at += n
        got += [None if lcn is None else lcn + i for i in range(n)]
    assert got == flat[vcn : vcn + count]
    for a, b in itertools.pairwise(pieces):  # pieces are maximal
        assert not (a[2] is None and b[2] is None)
        assert a[2] is None or b[2] is None or a[2] + a[1] != b[2]
    lcn, left = m.lookup(vcn)
    assert lcn == flat[vcn] and 1 <= left <= len(flat) - vcn
    ranges = list(m.allocated_ranges(vcn, count))
    covered = {v + i for v, n in ranges for i in range(n)}
    assert covered == {v for v in range(vcn, vcn + count) if flat[v] is not None}
