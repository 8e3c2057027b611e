"""WOF streams in memory: every algorithm and size, 8-byte tables, raw chunks, corruption.

The streams are made by wimlib's compressors (``wofpack``), the decoders are libfwnt's: two
independent implementations.  Whole volumes with WOF files are tested in test_fidelity.py.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.memsource import MemorySource
from tests.ntfs.wofpack import ALGORITHMS, Compressor, assemble, pack
from vcbfs.errors import CorruptError, UnavailableError
from vcbfs.ntfs.wof import WofStream, parse_wof

SIZES = (0, 1, 4095, 4096, 4097, 32769, 200_000)


def _content(size: int, seed: int) -> bytes:
    """Text with x86-like call instructions (E8 + a 32-bit offset) and a random stretch."""
    rng = random.Random(seed)
    words = [b"kernel32", b"\xe8\x10\x20\x00\x00", b"mov eax, ", b"0x7ffe", b"\n", b"ret"]
    body = b" ".join(rng.choice(words) for _ in range(size // 4 + 1))
    cut = size // 3
    return (body[:cut] + rng.randbytes(size // 6) + body)[:size]


def _stream(data: bytes, algorithm: str) -> WofStream:
    return WofStream(MemorySource(pack(data, algorithm)), len(data), ALGORITHMS[algorithm][0], "f")


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("size", SIZES)
def test_reads_back_at_any_offset(algorithm: str, size: int) -> None:
    data = _content(size, size)
    wof = _stream(data, algorithm)
    wof.check_table()
    assert wof.size == size and wof.read_at(0, size + 100) == data
    rng = random.Random(size)
    for _ in range(40):
        off, n = rng.randrange(size + 2), rng.randrange(3 * ALGORITHMS[algorithm][2])
        assert wof.read_at(off, n) == data[off : off + n]
        assert wof.try_read_at(off, n) in (None, data[off : off + n])


def test_incompressible_chunks_are_stored_raw() -> None:
    data = random.Random(1).randbytes(3 * 4096 + 10)
    stream = pack(data, "XPRESS4K")
    table = 3 * 4
    assert stream[table:] == data  # every chunk raw: the stream is the data after the table
    assert _stream(data, "XPRESS4K").read_at(0, len(data)) == data


def test_a_file_of_4_gib_has_8_byte_table_entries() -> None:
    size = (4 << 30) + 12345
    comp = Compressor("LZX")
    zero = comp.chunk_bytes(bytes(32768))
    head, tail = _content(32768, 1), _content(size % 32768, 2)
    count = -(-size // 32768)
    chunks = [comp.chunk_bytes(head)] + [zero] * (count - 2) + [comp.chunk_bytes(tail)]
    stream = assemble(chunks, size)
    assert len(stream) > (count - 1) * 8
    wof = WofStream(MemorySource(stream), size, 1, "big")
    assert wof.entry == 8
    assert wof.read_at(0, 32768) == head
    assert wof.read_at(size - len(tail) - 5, 100) == (bytes(5) + tail)[:100]
    assert wof.read_at(size - 50, 100) == tail[-50:]
    assert wof.read_at(3 << 30, 70000) == bytes(70000)


def _corrupt_chunk(data: bytes, algorithm: str, chunk: int) -> bytes:
    stream = bytearray(pack(data, algorithm))
    count = -(-len(data) // ALGORITHMS[algorithm][2])
    table = (count - 1) * 4
    ends = struct.unpack_from(f"<{count - 1}I", stream)
    start = table + (ends[chunk - 1] if chunk else 0)
    for i in range(start, table + ends[chunk]):
        stream[i] ^= 0x5A
    return bytes(stream)


@pytest.mark.parametrize("algorithm", ["XPRESS4K", "LZX"])
def test_a_damaged_chunk_fails_that_chunk_and_its_neighbours_read(algorithm: str) -> None:
    data = _content(200_000, 7)
    chunk = ALGORITHMS[algorithm][2]
    wof = WofStream(MemorySource(_corrupt_chunk(data, algorithm, 2)), len(data),
                    ALGORITHMS[algorithm][0], "dir/file.dll")  # fmt: skip
    with pytest.raises(CorruptError, match=f"dir/file.dll: {algorithm} chunk 2"):
        wof.read_at(0, len(data))
    assert wof.read_at(0, 2 * chunk) == data[: 2 * chunk]
    assert wof.read_at(3 * chunk, 1000) == data[3 * chunk : 3 * chunk + 1000]


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda t: t.__setitem__(1, t[0] - 1), "chunk 1 of"),  # decreasing
        (lambda t: t.__setitem__(2, 1 << 31), "chunk 2 of"),  # past the stream's end
        (lambda t: t.__setitem__(0, 0), "chunk 0 of"),  # an empty chunk
    ],
)
def test_a_damaged_chunk_table_is_an_error_naming_the_chunk(damage: object, match: str) -> None:
    data = _content(8 * 4096, 3)
    stream = bytearray(pack(data, "XPRESS4K"))
    table = list(struct.unpack_from("<7I", stream))
    damage(table)  # type: ignore[operator]
    struct.pack_into("<7I", stream, 0, *table)
    wof = WofStream(MemorySource(bytes(stream)), len(data), 0, "f")
    with pytest.raises(CorruptError, match=match):
        wof.read_at(0, len(data))
    with pytest.raises(CorruptError, match=match):
        wof.check_table()  # what opening the file does
    assert wof.read_at(6 * 4096, 100) == data[6 * 4096 : 6 * 4096 + 100]


def test_a_stream_shorter_than_its_table_is_refused() -> None:
    with pytest.raises(CorruptError, match="chunk table"):
        WofStream(MemorySource(b"\0" * 10), 10 * 4096, 0, "f")
    with pytest.raises(CorruptError, match="chunk table"):
        WofStream(MemorySource(b""), 100, 0, "f")


def test_reparse_data() -> None:
    assert parse_wof(struct.pack("<IIII", 1, 2, 1, 1)).algorithm_name == "LZX"
    with pytest.raises(UnavailableError, match="WIM-backed"):
        parse_wof(struct.pack("<IIIIQ", 1, 1, 1, 0, 0) + bytes(20))
    with pytest.raises(UnavailableError, match="algorithm 9"):
        parse_wof(struct.pack("<IIII", 1, 2, 1, 9))
    with pytest.raises(UnavailableError, match="provider 7"):
        parse_wof(struct.pack("<II", 1, 7))
    with pytest.raises(CorruptError):
        parse_wof(b"\1\0\0\0")


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(ALGORITHMS)),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_fuzz_damaged_streams_fail_only_with_corrupt_error(
    algorithm: str, flips: list[tuple[int, int]]
) -> None:
    data = _content(40_000, 5)
    stream = bytearray(pack(data, algorithm))
    for where, value in flips:
        stream[where % len(stream)] = value
    wof = WofStream(MemorySource(bytes(stream)), len(data), ALGORITHMS[algorithm][0], "f")
    chunk = ALGORITHMS[algorithm][2]
    for off in range(0, len(data), chunk):
        try:
            got = wof.read_at(off, chunk)
        except CorruptError:
            continue
        assert len(got) == min(chunk, len(data) - off)
