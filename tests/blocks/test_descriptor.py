"""Descriptor parsing: every shape real tools write, and clear errors for broken text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcbfs.blocks.vmdk.descriptor import (
    NO_PARENT,
    ExtentLine,
    looks_like_descriptor,
    parse_descriptor,
)
from vcbfs.errors import CorruptError

ESXI = b"""# Disk DescriptorFile\r
version=1\r
encoding="UTF-8"\r
CID=7a3c1f20\r
parentCID=ffffffff\r
isNativeSnapshot="no"\r
createType="vmfs"\r
\r
# Extent description\r
RW 83886080 VMFS "Windows Server 2019-flat.vmdk"\r
\r
# The Disk Data Base\r
#DDB\r
\r
ddb.adapterType = "lsilogic"\r
ddb.uuid = "60 00 C2 9a 1b"\r
"""


def test_esxi_descriptor_with_spaces_and_crlf() -> None:
    d = parse_descriptor(ESXI)
    assert d.create_type == "vmfs"
    assert d.cid == 0x7A3C1F20
    assert d.parent_cid == NO_PARENT and not d.has_parent
    assert d.extents == [ExtentLine("RW", 83886080, "VMFS", "Windows Server 2019-flat.vmdk", 0)]
    assert d.ddb["adapterType"] == "lsilogic"
    assert d.sectors == 83886080


def test_qemu_padding_and_all_extent_shapes() -> None:
    text = (
        b"# Disk DescriptorFile\nversion=1\nCID=00000001\nparentCID=0000abcd\n"
        b'createType="twoGbMaxExtentSparse"\nparentFileNameHint="../base disk.vmdk"\n'
        b'RW 100 SPARSE "a-s001.vmdk"\nRDONLY 50 FLAT "b.bin" 7\nRW 10 ZERO\n'
        b'NOACCESS 8 VMFSRAW "rdm-rdmp.vmdk"\n' + b"\0" * 700
    )
    d = parse_descriptor(text)
    assert d.parent_cid == 0xABCD and d.parent_hint == "../base disk.vmdk" and d.has_parent
    assert [e.type for e in d.extents] == ["SPARSE", "FLAT", "ZERO", "VMFSRAW"]
    assert d.extents[1] == ExtentLine("RDONLY", 50, "FLAT", "b.bin", 7)
    assert d.extents[2].filename is None
    assert looks_like_descriptor(text)
    assert not looks_like_descriptor(b"KDMV\x01\0\0\0" + bytes(504))
    assert not looks_like_descriptor(bytes(512))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b"version=1\n", "no extents"),
        (b'RW x FLAT "a"\n', "not a number"),
        (b'RW 0 FLAT "a"\n', "out of range"),
        (b"RW 10 FLAT\n", "needs a file name"),
        (b'RW 10 FLAT "a\n', "unterminated"),
        (b'XX 10 FLAT "a"\n', "not understood"),
        (b'RW 10 FLAT "a" z\n', "offset is not a number"),
        (b'CID=zz\nRW 10 FLAT "a"\n', "not hexadecimal"),
        (b'RW 10 FLAT "a"\n\0garbage', "NUL"),
        (b"x" * (2 << 20), "larger than"),
    ],
)
def test_broken_descriptors(text: bytes, why: str) -> None:
    with pytest.raises(CorruptError, match=why):
        parse_descriptor(text, source="d.vmdk")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_only_typed_errors(blob: bytes) -> None:
    try:
        d = parse_descriptor(ESXI[:200] + blob)
    except CorruptError:
        return
    assert d.extents
