"""The adapter fuzzer's generators and checks, shared by the hypothesis targets (CI) and
``scripts/fuzz-adapter`` (a long run): see ``tests/fs/test_fuzz_adapter.py`` for what is
checked.

The generators take a ``Chooser``: hypothesis's ``draw`` (``DrawChooser``: shrinking, a
replayable failure) or ``random.Random`` (``RandomChooser``: about ten times as many inputs a
second, for a run of a million).  Both make the same distribution of inputs.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import stat
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol, TypeVar
from unittest import mock

import pyfuse3
import trio

import vcbfs.vm.letters
from tests.fs.fakevolume import (
    DAMAGE,
    NOW,
    Entry,
    FakeImage,
    Name,
    Record,
    VolumeSpec,
    fake_volume_letters,
    root_record,
    spec_from_json,
    spec_to_json,
)
from vcbfs.fs.operations import Operations
from vcbfs.fs.tree import ROOT_INO, STREAM_INO, VIEW_SHIFT, Tree
from vcbfs.ntfs.attributes import FILETIME_EPOCH, NS_DOS
from vcbfs.ntfs.reparse import TAG_DEDUP, TAG_MOUNT_POINT, TAG_SYMLINK, TAG_WOF
from vcbfs.ntfs.volume import ROOT

__all__ = ["TARGETS", "Chooser", "Failure", "RandomChooser", "keep", "load", "run_walk"]

T = TypeVar("T")
U64 = (1 << 64) - 1
RECORD_BITS = (1 << VIEW_SHIFT) - 1
NAME_SHIFT = 48  # bits 48..61 of an inode without STREAM_INO: which name of a link
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
ROOT_CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)
USER_CTX = SimpleNamespace(uid=1000, gid=1000, pid=2, umask=0o022)


class Chooser(Protocol):
    def integer(self, low: int, high: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def binary(self, max_size: int) -> bytes: ...


class RandomChooser:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def binary(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


# -- what the inputs are made of ---------------------------------------------------------------

SPECIAL_UNITS = [
    0x00,  # NUL
    0x2F,  # '/'
    0x2E,  # '.'
    0x3A,  # ':'
    0x5C,  # '\\'
    0x20,
    0x7E,
    0xD800,  # unpaired surrogates (and, side by side, a pair)
    0xDBFF,
    0xDC00,
    0xDFFF,
    0xF000,  # the private-use characters '/', NUL and dots are shown as
    0xF02F,
    0xF02E,
    0x41,  # case: A a, sharp s, dotted and dotless i, sigmas, a ligature that upcases to two
    0x61,
    0xDF,
    0x130,
    0x131,
    0x3A3,
    0x3C2,
    0xFB00,
    0xE9,
    0xC9,
    0xFEFF,
    0xFFFF,
]
FIXED_NAMES = [
    "",
    ".",
    "..",
    "...",
    "a",
    "A",
    "a/b",
    "a\uf02fb",
    "a\0b",
    "a\uf000b",
    "\uf02e",
    "\uf02e\uf02e",
    "\xc0\x80",
    "x:y",
    "X:Y",
    "a:b:c",
    "con",
    "ntfs_acl",
    "ntfs_attrib_be",
    "WofCompressedData",
    "\ud800",
    "\udc00\ud800",
    "\U0001f389",
    "é",
    "É",
    "x~0123456789ab",
]
SIZES = [0, 1, 511, 512, 4096, 65535, 65536, 65537, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63, U64]
TIMES = [
    0,
    1,
    FILETIME_EPOCH - 1,
    FILETIME_EPOCH,
    NOW,
    FILETIME_EPOCH + ((1 << 63) - 1) // 100,  # the last FILETIME a signed ns time holds
    FILETIME_EPOCH + ((1 << 63) - 1) // 100 + 1,
    (1 << 63) - 1,
    1 << 63,
    U64,
]
ATTRIBUTES = [0, 0x1, 0x10, 0x20, 0x400, 0x1000, 0x4000, 0x40000, 0x400000, 0x1400, 0xFFFFFFFF]
RECORDS = [0, 5, 15, 16, (1 << 32) - 1, 1 << 32, RECORD_BITS, 1 << 40, (1 << 48) - 1]
LINK_TARGETS = [
    "",
    "\\",
    "/",
    ".",
    "..",
    "C:",
    "C:\\",
    "C:\\Windows\\System32",
    "C:\\..\\..\\..\\etc\\shadow",
    "D:\\",
    "d:..\\..\\x",
    "1:\\x",
    "é:\\x",
    "ß:\\x",
    ":\\x",
    "\\\\server\\share\\x",
    "\\\\?\\C:\\x",
    "\\??\\C:\\x\\..\\..\\..",
    "\\??\\Volume{12345678-1234-1234-1234-123456789abc}\\..\\..\\..\\..",
    "..\\" * 13 + "etc\\shadow",
    "../../../../../../../../etc/passwd",
    "a\\..\\..\\..\\..\\..\\..\\x",
    "x\0..\\..\\..",
    "..\0\\..\\..",
    "\ud800\\..\\..",
    "a/b\\c",
    "C:\\a\\.\\.\\b\\\\\\c",
]
OTHER_TAGS = [TAG_WOF, TAG_DEDUP, 0x9000001A, 0x80000015, 0x8000001B]


def as_read(name: str) -> str:
    """A name through UTF-16 and back, as the reader decodes it: a surrogate pair joins."""
    return name.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def units_to_str(units: list[int]) -> str:
    return struct.pack(f"<{len(units)}H", *units).decode("utf-16-le", "surrogatepass")


def gen_unit(c: Chooser) -> int:
    kind = c.integer(0, 2)
    if kind == 0:
        return c.choice(SPECIAL_UNITS)
    return c.integer(0x20, 0x7E) if kind == 1 else c.integer(0, 0xFFFF)


def gen_name(c: Chooser) -> str:
    kind = c.integer(0, 3)
    if kind == 0:
        return c.choice(FIXED_NAMES)
    if kind == 1:
        return units_to_str([gen_unit(c) for _ in range(c.integer(0, 10))])
    if kind == 2:  # long: up to the 255 code units a name holds
        return units_to_str([gen_unit(c)] * c.integer(100, 255))
    return as_read(
        c.choice(FIXED_NAMES) + units_to_str([gen_unit(c) for _ in range(c.integer(0, 4))])
    )


def gen_size(c: Chooser) -> int:
    return c.choice(SIZES) if c.integer(0, 1) else c.integer(0, U64)


def gen_time(c: Chooser) -> int:
    return c.choice(TIMES) if c.integer(0, 1) else c.integer(0, U64)


def gen_record(c: Chooser) -> int:
    kind = c.integer(0, 3)
    if kind <= 1:
        return c.integer(16, 40)
    return c.choice(RECORDS) if kind == 2 else c.integer(0, (1 << 48) - 1)


def gen_target(c: Chooser) -> str:
    kind = c.integer(0, 3)
    if kind == 0:
        return c.choice(LINK_TARGETS)
    if kind == 1:
        return gen_name(c)
    parts = [
        gen_name(c) if c.integer(0, 1) else c.choice(["..", ".", "", "C:"])
        for _ in range(c.integer(0, 8))
    ]
    prefix = c.choice(["", "\\", "C:\\", "\\??\\D:\\", "\\\\srv\\", "..\\"])
    return as_read(prefix + c.choice(["\\", "/"]).join(parts))


def link_value(tag: int, substitute: str, printed: str, flags: int) -> bytes:
    """A symlink's or junction's $REPARSE_POINT value."""
    sub = substitute.encode("utf-16-le", "surrogatepass")
    pr = printed.encode("utf-16-le", "surrogatepass")
    head = struct.pack("<HHHH", 0, len(sub), len(sub), len(pr))
    if tag == TAG_SYMLINK:
        head += struct.pack("<I", flags)
    data = head + sub + pr
    return struct.pack("<IHH", tag, len(data) & 0xFFFF, 0) + data


def gen_link(c: Chooser) -> bytes:
    tag = c.choice([TAG_SYMLINK, TAG_SYMLINK, TAG_MOUNT_POINT])
    target = gen_target(c)
    if c.integer(0, 1):
        return link_value(tag, "\\??\\" + target, target, c.integer(0, 1))
    return link_value(tag, c.choice(["\\??\\", ""]) + target, "", c.integer(0, 1))


def gen_reparse(c: Chooser) -> bytes | None:
    kind = c.integer(0, 6)
    if kind == 0:
        return None
    if kind <= 3:
        return gen_link(c)
    if kind == 4:  # a link whose data is cut, or points outside itself
        value = link_value(TAG_SYMLINK, "\\??\\C:\\x", "C:\\x", 0)
        return value[: c.integer(0, len(value))] + c.binary(8)
    if kind == 5:
        tag = c.choice(OTHER_TAGS) if c.integer(0, 1) else c.integer(0, 0xFFFFFFFF)
        data = c.binary(24)
        return struct.pack("<IHH", tag, len(data), 0) + data
    return c.binary(40)


def gen_stream_name(c: Chooser) -> str:
    if c.integer(0, 4) == 0:
        return c.choice(["ntfs_acl", "WofCompressedData", "Zone.Identifier", "x:y"])
    return gen_name(c) or "s"


def gen_file(c: Chooser, is_dir: bool) -> Record:
    """A record with everything but its names."""
    streams: dict[str, int] = {}
    for _ in range(c.integer(0, 3) if c.integer(0, 2) == 0 else 0):
        streams[as_read(gen_stream_name(c))] = gen_size(c)
    attributes = c.choice(ATTRIBUTES) if c.integer(0, 1) else c.integer(0, 0xFFFFFFFF)
    return Record(
        is_dir=is_dir,
        size=gen_size(c),
        allocated=gen_size(c),
        times=[gen_time(c) for _ in range(4)],
        attributes=attributes,
        security_id=c.choice([None, 0, 256, 0xFFFFFFFF]),
        reparse=gen_reparse(c) if c.integer(0, 2) == 0 else None,
        streams=sorted(streams.items()),
        acl=c.choice([None, b"", b"\x01\x00\x04\x80" + bytes(16)]),
        damaged=[c.choice(DAMAGE) for _ in range(c.integer(1, 2))] if c.integer(0, 6) == 0 else [],
    )


def index_entries(c: Chooser, records: dict[int, Record], dirs: list[int]) -> None:
    """Each name as an entry in its parent's index (a key maybe stale), and crafted entries:
    a name for any record in any directory (missing, a metafile, past what an inode holds, a
    directory listed a second time, a link where none of its names is)."""
    for number, rec in records.items():
        for n in rec.names:
            parent = records.get(n.parent)
            if parent is None or not parent.is_dir or number == ROOT:
                continue
            if c.integer(0, 4) == 0:
                entry = Entry(
                    n.name,
                    number,
                    n.namespace,
                    bool(c.integer(0, 1)),
                    gen_size(c),
                    gen_size(c),
                    [gen_time(c) for _ in range(4)],
                )
            else:
                entry = Entry(
                    n.name,
                    number,
                    n.namespace,
                    rec.is_dir,
                    rec.size,
                    rec.allocated,
                    list(rec.times),
                )
            parent.index.append(entry)
    for _ in range(c.integer(0, 3)):
        where = records[c.choice(dirs)]
        record = c.choice(sorted(records)) if c.integer(0, 1) else gen_record(c)
        where.index.append(
            Entry(
                gen_name(c),
                record,
                c.integer(0, 3),
                bool(c.integer(0, 1)),
                gen_size(c),
                gen_size(c),
                [gen_time(c) for _ in range(4)],
            )
        )


def gen_volume(c: Chooser, letters: list[str], max_records: int = 10) -> VolumeSpec:
    records: dict[int, Record] = {ROOT: root_record()}
    dirs = [ROOT]
    for _ in range(c.integer(0, max_records)):
        number = gen_record(c)
        if number in records:
            continue
        rec = gen_file(c, bool(c.integer(0, 1)))
        parent = c.choice(dirs)
        rec.names.append(Name(parent, gen_name(c), c.choice([0, 1, 1, 3])))
        if c.integer(0, 3) == 0:  # a DOS alias
            rec.names.append(Name(parent, gen_name(c), NS_DOS))
        for _ in range(c.integer(1, 2) if c.integer(0, 3) == 0 else 0):
            # hard links: anywhere, even under a record that is no directory here
            where = c.choice(dirs) if c.integer(0, 2) else gen_record(c)
            rec.names.append(Name(where, gen_name(c), c.choice([0, 1, 3])))
        records[number] = rec
        if rec.is_dir:
            dirs.append(number)
    index_entries(c, records, dirs)
    return VolumeSpec(records, letters)


def gen_image(c: Chooser) -> list[VolumeSpec]:
    """Target ``walk``: one or two volumes of anything."""
    kind = c.integer(0, 2)
    if kind == 0:
        return [gen_volume(c, ["C"])]
    if kind == 1:
        return [gen_volume(c, ["C"]), gen_volume(c, ["D"])]
    return [gen_volume(c, ["C", "E"], 6), gen_volume(c, [], 6)]


def gen_names(c: Chooser) -> list[VolumeSpec]:
    """Target ``names``: one directory of up to 24 names, to meet each other (case, escapes,
    surrogates, '.', '..', cut stream names), some of them links."""
    root = root_record()
    records = {ROOT: root}
    for i in range(c.integer(0, 24)):
        number = 16 + i
        name = gen_name(c)
        ns = c.choice([0, 1, 3])
        rec = Record(is_dir=bool(c.integer(0, 3) == 0), names=[Name(ROOT, name, ns)])
        if c.integer(0, 3) == 0:
            rec.reparse = link_value(TAG_SYMLINK, gen_target(c), gen_target(c), c.integer(0, 1))
        if c.integer(0, 3) == 0:
            rec.streams = [(as_read(gen_stream_name(c)), c.choice([10, 1 << 17]))]
        records[number] = rec
        root.index.append(Entry(name, number, ns, rec.is_dir))
    return [VolumeSpec(records, ["C"])]


def gen_links(c: Chooser) -> list[VolumeSpec]:
    """Target ``links``: nested directories with links at every depth, hard links to them
    from other depths, and directories listed (crafted) where their names do not put them."""
    records: dict[int, Record] = {ROOT: root_record()}
    dirs = [ROOT]
    number = 16
    for _ in range(c.integer(1, 8)):
        parent = c.choice(dirs)
        name = gen_name(c) if c.integer(0, 3) == 0 else f"d{number}"
        records[number] = Record(is_dir=True, names=[Name(parent, name, 1)])
        dirs.append(number)
        number += 1
    for _ in range(c.integer(1, 6)):
        first = gen_name(c) if c.integer(0, 3) == 0 else f"l{number}"
        names = [Name(c.choice(dirs), first, c.choice([0, 1]))]
        for _ in range(c.integer(0, 2)):
            names.append(Name(c.choice(dirs), f"h{number}.{len(names)}", 1))
        records[number] = Record(names=names, reparse=gen_link(c))
        number += 1
    index_entries(c, records, dirs)
    return [VolumeSpec(records, ["C"]), VolumeSpec({ROOT: root_record()}, ["D"])]


TARGETS: dict[str, Callable[[Chooser], list[VolumeSpec]]] = {
    "walk": gen_image,
    "names": gen_names,
    "links": gen_links,
}

# -- driving the adapter ---------------------------------------------------------------------


class InlineOperations(Operations):
    """The adapter with its worker-thread hop taken out: the fuzzer checks answers, not
    threads, and a hop costs more than the rest of a request."""

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class Token:
    """A readdir token: takes ``room`` entries, as the kernel's buffer does."""

    def __init__(self, room: int):
        self.room = room
        self.got: list[tuple[bytes, Any, int]] = []


def reply(token: Token, name: bytes, attr: Any, next_id: int) -> bool:
    if token.room <= 0:
        return False
    token.got.append((name, attr, next_id))
    token.room -= 1
    return True


async def call(handler: Callable[..., Any], *args: Any) -> Any:
    """A handler's answer, or the FUSEError it raised (anything else fails the test)."""
    try:
        return await handler(*args)
    except pyfuse3.FUSEError as exc:
        return exc


class Failure(AssertionError):
    pass


def check(cond: object, what: str) -> None:
    if not cond:
        raise Failure(what)


class Walk:
    """Walks the whole mount through the handlers, checking every answer."""

    def __init__(self, ops: Operations, specs: list[VolumeSpec], rng: random.Random):
        self.ops = ops
        self.specs = specs
        self.rng = rng
        self.views: dict[int, tuple[bytes, VolumeSpec]] = {}  # key -> (path, its volume)
        self.inodes: dict[int, tuple[int, int]] = {}  # inode -> (view key, record)
        self.listed_dirs: list[int] = []
        self.handles: list[int] = []

    async def listing(self, ino: int) -> list[tuple[bytes, Any]] | pyfuse3.FUSEError:
        fh = await call(self.ops.opendir, ino, ROOT_CTX)
        if isinstance(fh, pyfuse3.FUSEError):
            return fh
        got: list[tuple[bytes, Any]] = []
        start = 0
        while True:  # in chunks of any size, as the kernel's buffer fills
            token = Token(self.rng.choice([1, 2, 3, 1000]))
            answer = await call(self.ops.readdir, fh, start, token)
            check(answer is None, f"readdir of inode {ino} failed: {answer!r}")
            if not token.got:
                break
            for name, attr, next_id in token.got:
                check(next_id == start + 1, "readdir offsets are not consecutive")
                got.append((name, attr))
                start = next_id
        again = Token(1)
        await self.ops.readdir(fh, len(got) + self.rng.choice([0, 5, 1 << 40]), again)
        check(not again.got, "readdir past the end gave entries")
        check(await call(self.ops.releasedir, fh) is None, "releasedir failed")
        return got

    async def run(self) -> None:
        root = await self.listing(ROOT_INO)
        assert not isinstance(root, pyfuse3.FUSEError)
        check(sorted(n for n, _ in root) == [b"digits", b"fullvm", b"letters"], "root listing")
        for top in (b"digits", b"letters"):
            ino = next(a.st_ino for n, a in root if n == top)
            views = await self.listing(ino)
            check(not isinstance(views, pyfuse3.FUSEError), f"{top!r} failed: {views}")
            assert not isinstance(views, pyfuse3.FUSEError)
            for name, attr in views:
                key = attr.st_ino >> VIEW_SHIFT
                check(key and key not in self.views, f"view {top!r}/{name!r} has key {key}")
                self.views[key] = (top + b"/" + name, self.view_spec(top, name))
                await self.walk(attr.st_ino, [top, name], key)
        await self.random_requests()

    def view_spec(self, top: bytes, name: bytes) -> VolumeSpec:
        if top == b"digits":
            return self.specs[int(name) - 1]
        return next(s for s in self.specs if name.decode() in s.letters)

    async def walk(self, root: int, root_path: list[bytes], key: int) -> None:
        stack = [(root, root_path)]
        seen = {root}
        while stack and len(seen) < 64:
            ino, path = stack.pop()
            self.listed_dirs.append(ino)
            listing = await self.listing(ino)
            if isinstance(listing, pyfuse3.FUSEError):
                # A directory itself unreadable (its index is damaged) is EIO, never more.
                check(listing.errno == errno.EIO, f"opendir {path}: {listing}")
                continue
            raw = [n for n, _ in listing]
            check(len(set(raw)) == len(raw), f"{path}: a name is listed twice: {raw}")
            for name, attr in listing:
                await self.entry(ino, path, key, name, attr)
                if stat.S_ISDIR(attr.st_mode) and attr.st_ino not in seen:
                    seen.add(attr.st_ino)
                    stack.append((attr.st_ino, [*path, name]))

    async def entry(self, parent: int, path: list[bytes], key: int, name: bytes, a: Any) -> None:
        where = b"/".join([*path, name])
        check(name not in (b"", b".", b".."), f"{where!r}: a name the kernel cannot take")
        check(b"/" not in name and b"\0" not in name, f"{where!r}: '/' or NUL in a name")
        check(len(name) <= 1024, f"{where!r}: longer than FUSE takes")
        ino = a.st_ino
        check(ino >> VIEW_SHIFT & 0xFF == key, f"{where!r}: inode {ino:#x} is not of its view")
        ident = (key, ino & RECORD_BITS)
        check(self.inodes.setdefault(ino, ident) == ident, f"{where!r}: inode {ino:#x} aliases")
        found = await call(self.ops.lookup, parent, name, ROOT_CTX)
        if isinstance(found, pyfuse3.FUSEError):
            check(found.errno == errno.EIO, f"{where!r} is listed but lookup gives {found}")
            got = await call(self.ops.getattr, ino, ROOT_CTX)
            check(isinstance(got, pyfuse3.FUSEError), f"{where!r}: lookup EIO, getattr works")
        else:
            check(found.st_ino == ino, f"{where!r} looks up to {found.st_ino:#x}, not {ino:#x}")
            got = await call(self.ops.getattr, ino, ROOT_CTX)
            check(
                isinstance(got, pyfuse3.FUSEError) or got.st_ino == ino,
                f"{where!r}: getattr gives another inode",
            )
        if stat.S_ISLNK(a.st_mode):
            await self.link(path, name, a)
        await self.xattrs(where, ino)
        if stat.S_ISREG(a.st_mode):
            await self.read(ino, a.st_size)

    async def link(self, path: list[bytes], name: bytes, a: Any) -> None:
        target = await call(self.ops.readlink, a.st_ino, ROOT_CTX)
        where = b"/".join([*path, name])
        if isinstance(target, pyfuse3.FUSEError):
            check(target.errno == errno.EIO, f"readlink {where!r}: {target}")
            return
        check(isinstance(target, bytes) and target, f"readlink {where!r}: {target!r}")
        check(len(target) == a.st_size, f"{where!r}: size {a.st_size} but target {target!r}")
        check(b"\0" not in target and not target.startswith(b"/"), f"{where!r} -> {target!r}")
        parts = target.split(b"/")
        ups = 0
        while ups < len(parts) and parts[ups] == b"..":
            ups += 1
        rest = parts[ups:]
        # '..' only leads: the rest goes down by names (which may be links, each inside).
        check(b".." not in rest, f"{where!r} -> {target!r}: '..' after a name")
        check(ups <= len(path), f"{where!r} -> {target!r} leaves the mount")

    async def xattrs(self, where: bytes, ino: int) -> None:
        for ctx in (ROOT_CTX, USER_CTX):
            listed = await call(self.ops.listxattr, ino, ctx)
            if isinstance(listed, pyfuse3.FUSEError):
                check(listed.errno == errno.EIO, f"listxattr {where!r}: {listed}")
                continue
            check(sum(len(n) + 1 for n in listed) <= 65536, f"{where!r}: xattr list too long")
            check(len(set(listed)) == len(listed), f"{where!r}: an xattr listed twice")
            for xname in listed:
                check(0 < len(xname) <= 255 and b"\0" not in xname, f"{where!r}: xattr {xname!r}")
                value = await call(self.ops.getxattr, ino, xname, ctx)
                if isinstance(value, pyfuse3.FUSEError):
                    check(value.errno == errno.EIO, f"{where!r}: listed {xname!r} gives {value}")
                else:
                    check(len(value) <= 65536, f"{where!r}: {xname!r} is {len(value)} bytes")
        other = self.rng.choice([b"user.", b"user.\xff", b"trusted.x", b"user.ntfs_acl\0", b""])
        await call(self.ops.getxattr, ino, other, ROOT_CTX)

    async def read(self, ino: int, size: int) -> None:
        info = await call(self.ops.open, ino, os.O_RDONLY, ROOT_CTX)
        if isinstance(info, pyfuse3.FUSEError):
            return
        for off in (0, max(size - 1, 0), self.rng.choice([1 << 32, (1 << 63) - 1, U64])):
            data = await call(self.ops.read, info.fh, off, self.rng.choice([0, 1, 4096, 1 << 17]))
            check(isinstance(data, pyfuse3.FUSEError | bytes | bytearray | memoryview), "read")
        check(await call(self.ops.open, ino, os.O_RDWR, ROOT_CTX) is not None, "open for writing")
        await call(self.ops.release, info.fh)

    async def random_requests(self) -> None:
        """Requests no listing led to: made-up inodes, names and handles."""
        known = list(self.inodes) or [ROOT_INO]
        rng = self.rng
        for _ in range(8):
            ino = rng.choice(
                [
                    0,
                    ROOT_INO,
                    rng.choice(known),
                    rng.choice(known) ^ (1 << rng.randrange(64)),
                    rng.getrandbits(64),
                    STREAM_INO | rng.getrandbits(62),
                    (rng.randrange(1, 4) << VIEW_SHIFT) | rng.getrandbits(40),
                    (rng.randrange(1, 1 << 14) << NAME_SHIFT) | rng.choice(known),
                ]
            )
            name = rng.choice(
                [
                    b".",
                    b"..",
                    b"",
                    b"\xff\xfe",
                    b"\xed\xa0\x80",
                    b"\xef\x80\xaf",
                    b"a" * 300,
                    b"\xc0\xaf",
                    rng.randbytes(rng.randrange(12)),
                ]
            )
            parent = rng.choice([*self.listed_dirs, ino])
            await call(self.ops.getattr, ino, ROOT_CTX)
            await call(self.ops.lookup, parent, name, ROOT_CTX)
            await call(self.ops.readlink, ino, ROOT_CTX)
            await call(self.ops.listxattr, ino, USER_CTX)
            await call(self.ops.getxattr, ino, name, ROOT_CTX)
            fh = await call(self.ops.opendir, ino, ROOT_CTX)
            if not isinstance(fh, pyfuse3.FUSEError):
                await call(self.ops.readdir, fh, rng.choice([0, 1, 1 << 40]), Token(2))
                await call(self.ops.releasedir, fh)
            info = await call(self.ops.open, ino, os.O_RDONLY, ROOT_CTX)
            if not isinstance(info, pyfuse3.FUSEError):
                await call(self.ops.read, info.fh, rng.getrandbits(64), rng.randrange(1 << 17))
                await call(self.ops.release, info.fh)
            bad = rng.getrandbits(32)
            await call(self.ops.read, bad, 0, 10)
            await call(self.ops.readdir, bad, 0, Token(1))
            await call(self.ops.release, bad)
            await call(self.ops.releasedir, bad)
        await call(self.ops.statfs, ROOT_CTX)


def run_walk(specs: list[VolumeSpec], seed: int, ops_class: type[Operations] | None = None) -> None:
    """One fuzz execution: the mount over ``specs``, walked and checked (``Failure`` if an
    answer is wrong; any other exception escaped a handler)."""
    tree = Tree(FakeImage(specs), now_ns=1)  # type: ignore[arg-type]
    ops = (ops_class or InlineOperations)(tree)

    async def main() -> None:
        await Walk(ops, specs, random.Random(seed)).run()

    logging.disable(logging.CRITICAL)  # the tree logs every unreadable entry: thousands here
    try:
        with (
            mock.patch.object(vcbfs.vm.letters, "volume_letters", fake_volume_letters),
            mock.patch.object(pyfuse3, "readdir_reply", reply),
        ):
            trio.run(main)
    finally:
        logging.disable(logging.NOTSET)


def keep(specs: list[VolumeSpec], seed: int, name: str) -> Path:
    """Save a failing input as a regression, replayed by tests/fs/test_fuzz_adapter.py."""
    REGRESSIONS.mkdir(exist_ok=True)
    path = REGRESSIONS / f"{name}.json"
    path.write_text(f'{{"seed": {seed}, "specs": {spec_to_json(specs)}}}\n')
    return path


def load(path: Path) -> tuple[list[VolumeSpec], int]:
    """A kept input: (specs, seed)."""
    import json

    kept = json.loads(path.read_text())
    return spec_from_json(json.dumps(kept["specs"])), kept["seed"]
