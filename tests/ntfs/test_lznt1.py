"""The pure-Python LZNT1 decoder, the test oracle of vcbfs.ntfs.compression: spec vectors,
hand-built tokens, round trips and corrupt input."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ntfs.lznt1_compress import (
    chunk,
    compress_chunk,
    compress_unit,
    encode_chunk_body,
    encode_token,
    greedy_tokens,
    split_bits,
)
from tests.ntfs.lznt1_oracle import CHUNK_SIZE, decompress_chunk, decompress_unit
from vcbfs.errors import CorruptError

UNIT = 16 * CHUNK_SIZE  # a 16-cluster unit of 4 KiB clusters


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


# --- vectors from the documentation ----------------------------------------------------------


def test_ms_xca_example() -> None:
    # [MS-XCA] 3.3 "LZNT1": a 142-byte string (terminal NUL included) compressed by Windows'
    # standard engine to 59 bytes; chunk header 0xB038, first reference 0x2000 (U=3: 4
    # displacement bits, displacement 3, length 3).
    text = (
        b"F# F# G A A G F# E D D E F# F# E E F# F# G A A G F# E D D E F# E D D E E F# D E F# "
        b"G F# D E F# G F# E D E A F# F# G A A G F# E D D E F# E D D\0"
    )
    assert len(text) == 142
    stream = bytes.fromhex(
        "38 b0 88 46 23 20 00 20 47 20 41 00 10 a2 47 01 a0 45 20 44 00 08 45 01 50 79 00 c0"
        " 45 20 05 24 13 88 05 b4 02 4a 44 ef 03 58 02 8c 09 16 01 48 45 00 be 00 9e 00 04 01"
        " 18 90 00"
    )
    assert len(stream) == 59
    assert decompress_unit(stream, UNIT) == text
    assert decompress_chunk(stream) == text


def test_linux_ntfs_block_of_spaces() -> None:
    # Linux-NTFS "NTFS Documentation", Concept - Compression: a block of all spaces is the flag
    # byte 00000010, ' ', then FC 0F, i.e. ' ' and (-1, 4095).  With the header for 4 bytes of
    # chunk data (0xB000 | 3) it is one chunk of 4096 spaces.
    assert decompress_unit(bytes.fromhex("03b0 02 20 fc0f"), UNIT) == b" " * 4096


# --- the displacement/length split -----------------------------------------------------------


def test_split_rule_hand_tokens() -> None:
    # After U=16 bytes a reference has 4 displacement and 12 length bits; at U=17 it has 5 and
    # 11.  Both tokens below reach back to the chunk start and copy 3 bytes.
    lit16 = bytes(range(65, 65 + 16))
    # 0xF000: displacement field 15 (<<12) -> 16 back, length field 0 -> 3 bytes.
    body = b"\x00" + lit16[:8] + b"\x00" + lit16[8:] + b"\x01" + (0xF000).to_bytes(2, "little")
    assert decompress_chunk(chunk(body, True)) == lit16 + lit16[:3]
    # 17 literals, then 0x8000: displacement field 16 (<<11) -> 17 back, length 3.
    lit17 = lit16 + b"Q"
    body = b"\x00" + lit17[:8] + b"\x00" + lit17[8:16] + b"\x02" + lit17[16:17] + b"\x00\x80"
    assert decompress_chunk(chunk(body, True)) == lit17 + lit17[:3]
    # Read with the wrong split, 0x8000 at U=16 would mean displacement 9, length 3; check the
    # two positions really decode differently.
    body16 = b"\x00" + lit16[:8] + b"\x00" + lit16[8:] + b"\x01" + b"\x00\x80"
    assert decompress_chunk(chunk(body16, True)) == lit16 + lit16[7:10]


def test_split_rule_matches_the_spec_wording() -> None:
    # The compressor's split follows [MS-XCA]'s wording; pin the table it gives.
    expect = {1: 4, 16: 4, 17: 5, 32: 5, 33: 6, 64: 6, 65: 7, 128: 7, 129: 8, 256: 8, 257: 9}
    expect |= {512: 9, 513: 10, 1024: 10, 1025: 11, 2048: 11, 2049: 12, 4095: 12}
    for u, dbits in expect.items():
        assert split_bits(u) == (dbits, 16 - dbits), u


@pytest.mark.parametrize("p", [2**k + d for k in range(4, 12) for d in (-1, 0, 1)])
def test_longest_and_farthest_reference_at_each_split(p: int) -> None:
    # p distinct-ish literals, then at U=p the farthest reference (back to byte 0) with the
    # longest length the split allows, clipped to the chunk, then one more at the new U.
    rng = _rng(p)
    lits = rng.randbytes(p)
    dbits, lbits = split_bits(p)
    assert p <= 1 << dbits
    length = min((1 << lbits) + 2, CHUNK_SIZE - p - 3)
    tokens: list[int | tuple[int, int]] = [*lits, (p, length)]
    expect = bytearray(lits)
    for i in range(length):
        expect.append(expect[i])
    u = p + length
    if u + 3 <= CHUNK_SIZE:
        d = min(u, 1 << split_bits(u)[0])
        tokens.append((d, 3))
        expect += expect[u - d : u - d + 3]
    out = decompress_chunk(chunk(encode_chunk_body(tokens), True))
    assert out == bytes(expect)


@pytest.mark.parametrize("p", [16, 32, 64, 128, 256, 512, 1024, 2048])
def test_round_trip_matches_across_split_points(p: int) -> None:
    # Random bytes with copies of earlier material placed so the greedy matcher emits long
    # references starting just before, at and just after each split point.
    rng = _rng(p)
    data = bytearray(rng.randbytes(3400))  # random, yet small enough to fit a compressed chunk
    for start in (p - 2, p, p + 1):
        src = rng.randrange(0, start - 4)
        for i in range(40):
            data[start + i] = data[src + i]
    tokens = greedy_tokens(bytes(data))
    refs, u = [], 0
    for t in tokens:
        if isinstance(t, tuple):
            refs.append(u)
            u += t[1]
        else:
            u += 1
    assert any(abs(r - p) <= 2 for r in refs), refs[:20]
    unit = compress_unit(bytes(data), "compressed")
    assert decompress_unit(unit, UNIT) == bytes(data)


def test_overlapping_references() -> None:
    # "abc" then a reference 3 back of length 10: the copy reads what it writes.
    body = encode_chunk_body([*b"abc", (3, 10), (1, 5)])
    assert decompress_chunk(chunk(body, True)) == b"abcabcabcabca" + b"aaaaa"


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        bytes(UNIT),
        (b"abcdefg" * 10000)[:UNIT],
        b"The quick brown fox jumps over the lazy dog. " * 100,
        bytes(_rng(1).choice(b"ab") for _ in range(UNIT)),
        bytes(_rng(2).choice(b"0123456789abcdef") for _ in range(UNIT)),
        _rng(3).randbytes(UNIT),
        _rng(4).randbytes(5000),
        b"x",
    ],
    ids=["zeros", "period7", "text", "2letters", "16letters", "random", "random-short", "1byte"],
)
def test_round_trip(data: bytes) -> None:
    unit = compress_unit(data)
    assert decompress_unit(unit, UNIT) == data
    assert decompress_unit(unit[:-2], UNIT) == data  # no end header: the data's end ends it


def test_random_data_stays_uncompressed_and_repetitive_data_shrinks() -> None:
    rand = _rng(5).randbytes(CHUNK_SIZE)
    assert compress_chunk(rand)[1] & 0x80 == 0
    rep = b"NTFS" * 1024
    c = compress_chunk(rep)
    assert c[1] & 0x80 and len(c) < 100
    assert decompress_chunk(c) == rep


def test_uncompressed_chunk() -> None:
    data = _rng(6).randbytes(CHUNK_SIZE)
    raw = (0x3FFF).to_bytes(2, "little") + data
    assert decompress_chunk(raw) == data
    assert decompress_unit(raw + raw, 2 * CHUNK_SIZE) == data + data


def test_end_of_unit_header_stops_decoding() -> None:
    first = compress_chunk(b"hello " * 600)
    rest = b"\0\0" + compress_chunk(b"never read" * 10) + b"\xff" * 9
    assert decompress_unit(first + rest, UNIT) == b"hello " * 600
    assert decompress_chunk(b"\0\0garbage") == b""


def test_unit_mixing_compressed_and_uncompressed_chunks() -> None:
    rng = _rng(7)
    data = rng.randbytes(CHUNK_SIZE) + b"ab" * 2048 + rng.randbytes(CHUNK_SIZE) + b"zz" * 1000
    modes = ["uncompressed", "compressed", "uncompressed", "compressed"]
    unit = compress_unit(data, modes)
    kinds = []
    pos = 0
    while unit[pos : pos + 2] != b"\0\0":
        h = int.from_bytes(unit[pos : pos + 2], "little")
        kinds.append(bool(h & 0x8000))
        pos += 2 + (h & 0xFFF) + 1
    assert kinds == [False, True, False, True]
    assert decompress_unit(unit, UNIT) == data


def test_short_chunks_are_zero_padded_before_the_next() -> None:
    # A compressed chunk of 100 bytes, an empty one and a short raw one, each followed by
    # another chunk: each chunk stands for its own 4096 bytes of the unit.
    a = compress_chunk(b"a" * 100, "compressed")
    empty = chunk(b"\x00", True)  # one flag byte, no tokens
    short_raw = chunk(b"raw!", False)
    b = compress_chunk(b"b" * 10, "compressed")
    out = decompress_unit(a + empty + short_raw + b, UNIT)
    expect = (b"a" * 100).ljust(8192, b"\0") + b"raw!".ljust(4096, b"\0") + b"b" * 10
    assert out == expect


def test_the_signature_bits_are_ignored() -> None:
    body = encode_chunk_body([*b"xyz", (3, 30)])
    for sig in range(8):
        packed = chunk(body, True, signature=sig)
        plain = chunk(b"plain", False, signature=sig)
        assert decompress_chunk(packed) == b"xyz" * 11
        assert decompress_chunk(plain) == b"plain"
        assert decompress_unit(packed + plain, UNIT) == (b"xyz" * 11).ljust(4096, b"\0") + b"plain"


def test_chunks_past_a_full_unit_are_ignored() -> None:
    unit = compress_unit(b"q" * 8192, end=False) + compress_chunk(b"extra")
    assert decompress_unit(unit, 8192) == b"q" * 8192


def test_memoryview_input() -> None:
    data = b"memoryview " * 500
    assert decompress_unit(memoryview(compress_unit(data)), UNIT) == data


# --- corrupt input ----------------------------------------------------------------------------


def test_truncated_chunk() -> None:
    c = compress_chunk(b"truncate me " * 100)
    with pytest.raises(CorruptError, match="needs"):
        decompress_unit(c[:-1], UNIT)
    with pytest.raises(CorruptError, match="needs"):
        decompress_chunk(c[:-1])
    with pytest.raises(CorruptError, match="header is truncated"):
        decompress_chunk(b"\x10")


def test_truncated_reference() -> None:
    # The chunk ends one byte into a reference's two.
    body = encode_chunk_body([*b"abcd", (4, 8)])[:-1]
    with pytest.raises(CorruptError, match="cut off"):
        decompress_chunk(chunk(body, True))


def test_reference_cut_off_in_a_full_last_group() -> None:
    # The last flag group holds 8 references but the chunk ends one byte short of the 8th;
    # the byte after the chunk (the next header) must not be read as part of it.
    whole = encode_chunk_body([*b"abcdefgh"] + [(1, 3)] * 8)
    assert decompress_chunk(chunk(whole, True)) == b"abcdefgh" + b"h" * 24
    with pytest.raises(CorruptError, match="cut off"):
        decompress_unit(chunk(whole[:-1], True) + b"\0\0", UNIT)


def test_reference_before_the_chunk_start() -> None:
    with pytest.raises(CorruptError, match="reaches 1 bytes back, only 0"):
        decompress_chunk(chunk(b"\x01\x00\x00", True))  # a reference as the first token
    body = b"\x08abc" + (0x3000).to_bytes(2, "little")  # U=3: displacement 4
    with pytest.raises(CorruptError, match="reaches 4 bytes back, only 3"):
        decompress_chunk(chunk(body, True))
    # The same with the chunk going on (the fast path): U=1, displacement 2.
    body = b"\x02B" + (0x1000).to_bytes(2, "little") + b"\x00" * 30
    with pytest.raises(CorruptError, match="reaches 2 bytes back, only 1"):
        decompress_chunk(chunk(body, True))
    # Chunks are independent: the second chunk cannot reach into the first.
    first = compress_chunk(b"A" * CHUNK_SIZE)
    second = chunk(b"\x02B" + (0x1000).to_bytes(2, "little"), True)  # U=1: displacement 2
    with pytest.raises(CorruptError, match="reaches 2 bytes back, only 1"):
        decompress_unit(first + second, UNIT)


def test_chunk_output_past_4096() -> None:
    # ' ' and (-1, 4095) fill the chunk; one more literal or reference overflows it.
    full = b"\x02 " + (0x0FFC).to_bytes(2, "little")
    with pytest.raises(CorruptError, match="literals at byte"):
        decompress_chunk(chunk(full + b"!", True))
    with pytest.raises(CorruptError, match="runs past"):
        decompress_chunk(chunk(b"\x02 " + (0x0FFD).to_bytes(2, "little"), True))
    # The same in the unchecked fast path (the chunk goes on for more than 16 bytes).
    with pytest.raises(CorruptError, match="literals at byte"):
        decompress_chunk(chunk(full + b"\x00" + b"!" * 30, True))
    too_long = b"\x02 " + (0x0FFD).to_bytes(2, "little") + b"\x00" * 30
    with pytest.raises(CorruptError, match="of 4096 bytes at output byte 1 runs past"):
        decompress_chunk(chunk(too_long, True))


def test_unit_output_past_unit_size() -> None:
    unit = compress_unit(b"u" * 8192)
    with pytest.raises(CorruptError, match="past the unit's 6000 bytes"):
        decompress_unit(unit, 6000)
    assert decompress_unit(unit, 8192) == b"u" * 8192
    with pytest.raises(ValueError):
        decompress_unit(unit, 0)


# --- fuzzing ----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_corrupt(data: bytes, unit_size: int) -> bytes | None:
    try:
        out = decompress_unit(data, unit_size)
    except CorruptError:
        return None
    assert len(out) <= unit_size
    return out


@FUZZ
@given(st.binary(max_size=3000), st.sampled_from([4096, 6000, 8192, UNIT]))
def test_fuzz_random_bytes(data: bytes, unit_size: int) -> None:
    _decodes_or_corrupt(data, unit_size)
    with contextlib.suppress(CorruptError):
        assert len(decompress_chunk(data)) <= CHUNK_SIZE


@FUZZ
@given(st.data())
def test_fuzz_compressed_chunks_with_random_bodies(data: st.DataObject) -> None:
    # Valid headers around random bodies reach deep into the token decoder.
    body = data.draw(st.binary(min_size=1, max_size=CHUNK_SIZE))
    tail = data.draw(st.binary(max_size=64))
    _decodes_or_corrupt(chunk(body, True) + tail, data.draw(st.sampled_from([4096, 8192])))


_SAMPLES = [
    compress_unit(b"The quick brown fox jumps over the lazy dog. " * 300),
    compress_unit(bytes(_rng(8).choice(b"abcd") for _ in range(3 * CHUNK_SIZE))),
    compress_unit(_rng(9).randbytes(CHUNK_SIZE) + b"xy" * 3000),
]


@FUZZ
@given(
    st.sampled_from(_SAMPLES),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 1 << 16),
)
def test_fuzz_mutated_valid_units(unit: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    mutated = bytearray(unit)
    for where, value in flips:
        mutated[where % len(mutated)] = value
    _decodes_or_corrupt(bytes(mutated), UNIT)
    _decodes_or_corrupt(bytes(mutated[: cut % (len(mutated) + 1)]), UNIT)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=2 * CHUNK_SIZE), st.sampled_from(["auto", "compressed"]))
def test_fuzz_round_trip(data: bytes, mode: str) -> None:
    if mode == "compressed":
        data = data[: CHUNK_SIZE * 3 // 4]  # incompressible data must still fit a chunk
    assert decompress_unit(compress_unit(data, mode), UNIT) == data


def test_encode_token_guards_itself() -> None:
    # The test encoder refuses references the format cannot hold, so vectors built with it
    # are valid by construction.
    with pytest.raises(AssertionError):
        encode_token(16, 17, 3)
    with pytest.raises(AssertionError):
        encode_token(2049, 10, 19)
    assert encode_token(4000, 4000, 18) == (3999 << 4) | 15
