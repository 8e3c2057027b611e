"""Directory indexes ($I30): B+ trees of $FILE_NAME keys in $INDEX_ROOT and INDX blocks.

The root node lives in the record's $INDEX_ROOT; larger directories keep further nodes in INDX
blocks of $INDEX_ALLOCATION, each protected by fixups.  An entry with the sub-node flag points
(by VCN) to the node holding the keys that sort before it; the last entry of a node has no key.
Enumeration walks the tree in order; lookup descends by the volume's collation.  Walks are
bounded: a node visited twice is a loop, and depth is limited.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import ByteSource, read_exact
from vcbfs.errors import CorruptError
from vcbfs.ntfs.attributes import MFT_REF_MASK, FileName, parse_file_name
from vcbfs.ntfs.fixup import apply_fixups
from vcbfs.ntfs.names import UpCase

__all__ = ["DirectoryIndex", "IndexEntry"]

ENTRY_SUBNODE = 0x01
ENTRY_LAST = 0x02
MAX_DEPTH = 64
MAX_ENTRIES_PER_NODE = 1 << 14
_NODE = struct.Struct("<IIIB")
_ENTRY = struct.Struct("<QHHH")


# Measured against a deep sys.getsizeof of parsed nodes (tests/blocks/test_budget.py): the
# IndexEntry and its FileName tuple with their ints, and the name (at most 4 bytes a character).
ENTRY_OVERHEAD = 480
NODE_CACHE = 16 << 20  # a directory's own node cache, when the volume gives it none
INDEX_OVERHEAD = 2048  # the DirectoryIndex and its allocation stream (its runs are extra)


class IndexEntry(NamedTuple):
    record: int
    seq: int
    key: FileName | None  # None for the last entry of a node
    subnode: int | None  # VCN of the child node


def weigh_node(node: list[IndexEntry]) -> int:
    """Bytes a parsed index node holds."""
    return 56 + sum(ENTRY_OVERHEAD + (0 if e.key is None else 4 * len(e.key.name)) for e in node)


def parse_node(buf: bytes | bytearray, at: int, source: str, where: str) -> list[IndexEntry]:
    """The entries of an index node whose header starts at ``at`` in ``buf``."""
    if at + 16 > len(buf):
        raise CorruptError(f"{where}: index node header truncated", source=source)
    first, used, _alloc, _flags = _NODE.unpack_from(buf, at)
    pos, end = at + first, at + used
    if first < 16 or end > len(buf) or pos > end:
        raise CorruptError(f"{where}: index node sizes are not valid", source=source)
    out: list[IndexEntry] = []
    while True:
        if pos + 16 > end:
            raise CorruptError(f"{where}: index entries run past the node", source=source)
        ref, length, key_len, flags = _ENTRY.unpack_from(buf, pos)
        if length < 16 or length % 8 or pos + length > end or 16 + key_len > length:
            raise CorruptError(f"{where}: index entry length {length} is not valid", source=source)
        subnode = None
        if flags & ENTRY_SUBNODE:
            if length < 24:
                raise CorruptError(
                    f"{where}: index entry too short for its sub-node", source=source
                )
            subnode = int.from_bytes(buf[pos + length - 8 : pos + length], "little")
        if flags & ENTRY_LAST:
            out.append(IndexEntry(0, 0, None, subnode))
            return out
        key = parse_file_name(bytes(buf[pos + 16 : pos + 16 + key_len]), source)
        out.append(IndexEntry(ref & MFT_REF_MASK, ref >> 48, key, subnode))
        if len(out) > MAX_ENTRIES_PER_NODE:
            raise CorruptError(f"{where}: too many entries in one index node", source=source)
        pos += length


class DirectoryIndex:
    """The $I30 index of one directory."""

    def __init__(
        self,
        root_value: bytes,
        allocation: ByteSource | None,
        block_size: int,
        vcn_size: int,
        upcase: UpCase,
        name: str,
        nodes: LRU[tuple[int, int], list[IndexEntry]] | None = None,
        key: int = 0,
    ):
        """``nodes`` is a cache of parsed nodes, keyed ``(key, vcn)``, that the directories of
        a volume share (so that a directory index dropped from a cache leaves its nodes to
        age out with everything else); by default the index has its own."""
        self.name = name
        self.upcase = upcase
        if len(root_value) < 32:
            raise CorruptError("$INDEX_ROOT is truncated", source=name)
        self.root = parse_node(root_value, 16, name, "$INDEX_ROOT")
        self.allocation = allocation
        self.block_size = block_size
        self.vcn_size = vcn_size
        self._nodes = nodes if nodes is not None else LRU(NODE_CACHE, weigh_node)
        self._key = key
        self.weight = weigh_node(self.root) + len(root_value) + INDEX_OVERHEAD

    def _node(self, vcn: int) -> list[IndexEntry]:
        cached = self._nodes.get((self._key, vcn))
        if cached is not None:
            return cached
        if self.allocation is None:
            raise CorruptError(
                "index entry points to a sub-node but there is no $INDEX_ALLOCATION",
                source=self.name,
            )
        offset = vcn * self.vcn_size
        raw = read_exact(self.allocation, offset, self.block_size, f"index block at VCN {vcn}")
        buf = apply_fixups(raw, b"INDX", self.name, offset)
        if int.from_bytes(buf[16:24], "little") != vcn:
            raise CorruptError(f"index block at VCN {vcn} says it is another", source=self.name)
        node = parse_node(buf, 24, self.name, f"index block at VCN {vcn}")
        self._nodes.put((self._key, vcn), node)
        return node

    def entries(self) -> Iterator[IndexEntry]:
        """Every entry with a key, in collation order, as the nodes are read.

        One generator with an explicit stack: nested generators would pass every entry up
        through each level of the tree.
        """
        seen: set[int] = set()
        # (entries of a node, the entry whose sub-node that is: it comes after them)
        stack: list[tuple[Iterator[IndexEntry], IndexEntry | None]] = [(iter(self.root), None)]
        while stack:
            it, after = stack[-1]
            e = next(it, None)
            if e is None:
                stack.pop()
                if after is not None and after.key is not None:
                    yield after
                continue
            sub = e.subnode
            if sub is not None:
                if len(stack) > MAX_DEPTH:
                    raise CorruptError("index tree is deeper than 64 levels", source=self.name)
                if sub in seen:
                    raise CorruptError(f"index tree loops at VCN {sub}", source=self.name)
                seen.add(sub)
                stack.append((iter(self._node(sub)), e))
            elif e.key is not None:
                yield e

    def find(self, name: str) -> list[IndexEntry]:
        """Entries whose name equals ``name`` ignoring case (by the volume's $UpCase)."""
        target = self.upcase.fold(name)
        out: list[IndexEntry] = []
        seen: set[int] = set()

        def search(node: list[IndexEntry], depth: int) -> None:
            if depth > MAX_DEPTH:
                raise CorruptError("index tree is deeper than 64 levels", source=self.name)
            for e in node:
                c = -1 if e.key is None else _cmp(target, self.upcase.fold(e.key.name))
                if c <= 0 and e.subnode is not None and e.subnode not in seen:
                    seen.add(e.subnode)
                    search(self._node(e.subnode), depth + 1)
                if c == 0 and e.key is not None:
                    out.append(e)
                if c < 0:
                    return

        search(self.root, 0)
        return out


def _cmp(a: bytes, b: bytes) -> int:
    return (a > b) - (a < b)
