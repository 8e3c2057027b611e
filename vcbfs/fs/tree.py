"""The mounted tree as plain Python: inodes, attributes, directories, data and xattrs.

No pyfuse3 here: ``operations.py`` adapts this model to FUSE, and tests drive it directly.

    /fullvm/    the .vmx (disk names rewritten), .nvram, a catalog, and each disk as a
                monolithicFlat descriptor plus its raw ``-flat.vmdk`` data
    /digits/N/  every NTFS volume, numbered in disk and partition order
    /letters/X/ the same volumes under the guest's drive letters

Inode numbers are stable across mounts: fixed small numbers for the synthetic directories and
files, and ``(view << 40) | MFT record`` inside a volume, where each view (a ``digits/N`` or a
``letters/X`` directory) has its own number in a fixed order.  The tree of a snapshot never
changes, so nothing here is ever invalidated.

Named streams (alternate data streams) are xattrs ``user.<stream>`` when they fit one (a value
of at most 64 KiB, a name of at most 255 bytes, a list of at most 64 KiB: the kernel's limits).
Any other stream is listed beside its file as ``<file>:<stream>``, a regular file of its own,
so that an agent backing up the directory meets it; every stream can be opened by that name.
Nothing is listed that the kernel would then refuse to read.

Windows metadata is kept under the names ntfs-3g uses, in the ``user`` namespace so that
``tar --xattrs`` and rsync keep them: ``user.ntfs_attrib_be`` (FILE_ATTRIBUTE_* bits,
big-endian), ``user.ntfs_acl`` (the security descriptor), ``user.ntfs_times`` (creation,
write, access, change: four little-endian FILETIMEs) and ``user.ntfs_reparse_data`` (raw
reparse data).  The kernel allows ``user.*`` only on regular files and directories, so a
link's metadata is under ``trusted.*`` instead, listed to root only (the one who may read it).
A WOF file is shown as its content: its WofCompressedData stream and reparse data are not
listed (``<file>:WofCompressedData`` still opens).
"""

from __future__ import annotations

import itertools
import logging
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from vcbfs.blocks.lru import LRU
from vcbfs.blocks.source import ByteSource
from vcbfs.errors import CorruptError, NotADirectory, NotFoundError, VcbfsError
from vcbfs.fs.names import encode_path
from vcbfs.ntfs.attributes import FILETIME_EPOCH, NS_DOS, FileName, filetime_ns
from vcbfs.ntfs.volume import ROOT as NTFS_ROOT
from vcbfs.ntfs.volume import DirEntry, NtfsStat, NtfsVolume
from vcbfs.vm.image import VmImage, Volume
from vcbfs.vm.streams import XATTR_SIZE_MAX, beside_name, is_cut, stream_forms

__all__ = ["Attr", "Tree", "weigh_listing"]

log = logging.getLogger(__name__)

ROOT_INO = 1
VIEW_SHIFT = 40
STREAM_INO = 1 << 62  # a named stream: (stream index + 1) << STREAM_SHIFT | its file's inode
STREAM_SHIFT = 48
STREAM_LIMIT = (1 << (62 - STREAM_SHIFT)) - 1  # streams of one file that get an inode
# A link's second and further names: (name index) << NAME_SHIFT | its record's inode.  Each
# place a link is listed gets its own inode, since its target is relative to that place.
NAME_SHIFT = STREAM_SHIFT
NAME_LIMIT = STREAM_LIMIT
RECORD_MASK = (1 << VIEW_SHIFT) - 1  # a record past this has no inode: it is refused
MAX_VIEWS = 256  # view keys fit 8 bits: a tree's inodes stay below 2**48
LISTING_CACHE = 64 << 20  # listings kept with their attributes, in bytes
REPORTED_CACHE = 1 << 20  # inodes whose error was logged (an entry each: about 100 bytes)
# Measured against a deep sys.getsizeof of real listings (tests/blocks/test_budget.py): the
# (name, Attr) tuple, the Attr with its ints and the name (at most 4 bytes a character).
LISTING_ENTRY = 340


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    size: int
    blocks: int  # 512-byte units
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


def weigh_listing(listing: list[tuple[str, Attr]]) -> int:
    """Bytes a listing holds."""
    return 56 + sum(LISTING_ENTRY + 4 * len(name) for name, _attr in listing)


class _Synthetic:
    """A directory or file made up by vcbfs (not inside a volume)."""

    def __init__(
        self,
        ino: int,
        name: str,
        *,
        data: bytes | None = None,
        source: Callable[[], ByteSource] | None = None,
        size: int = 0,
    ) -> None:
        self.ino = ino
        self.name = name
        self.data = data
        self.source = source
        self.size = len(data) if data is not None else size
        self.children: dict[str, int] | None = None if data is not None or source else {}

    @property
    def is_dir(self) -> bool:
        return self.children is not None


@dataclass(frozen=True, slots=True)
class _View:
    key: int
    path: str  # "digits/1", "letters/C"
    volume: Volume


class Tree:
    """The whole mounted tree of one VM image."""

    def __init__(
        self, image: VmImage, *, now_ns: int = 0, dir_mode: int = 0o555, file_mode: int = 0o444
    ) -> None:
        self.image = image
        self.now_ns = now_ns
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self._lock = threading.Lock()
        self._nodes: dict[int, _Synthetic] = {}
        self._views: dict[int, _View] | None = None
        self._letters_done = False  # letters/ reads the guest's SYSTEM hive: only when asked
        self._synthetic = itertools.count(ROOT_INO + 1)  # below 1 << VIEW_SHIFT: never a view's
        root = self._add(ROOT_INO, "")
        for name in ("fullvm", "digits", "letters"):
            self._link(root, self._add(self._next_ino(), name))
        self._fullvm_done = False
        self._reported: LRU[int, bool] = LRU(REPORTED_CACHE, lambda _v: 100)
        self._listings: LRU[int, list[tuple[str, Attr]]] = LRU(LISTING_CACHE, weigh_listing)

    # -- synthetic nodes -----------------------------------------------------------------

    def _add(self, ino: int, name: str, **kw: object) -> _Synthetic:
        node = _Synthetic(ino, name, **kw)  # type: ignore[arg-type]
        self._nodes[ino] = node
        return node

    def _link(self, parent: _Synthetic, child: _Synthetic) -> None:
        assert parent.children is not None
        parent.children[child.name] = child.ino

    def _dir(self, name: str) -> _Synthetic:
        root = self._nodes[ROOT_INO]
        assert root.children is not None
        return self._nodes[root.children[name]]

    def _ensure(self, ino: int) -> None:
        """Fill fullvm/, digits/ and letters/ the first time any of them is looked into."""
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        with self._lock:
            if node.name == "fullvm" and not self._fullvm_done:
                self._build_fullvm(node)
                self._fullvm_done = True
            elif node.name == "digits" and self._views is None:
                self._build_views()
            elif node.name == "letters" and not self._letters_done:
                self._build_letters()

    def _next_ino(self) -> int:
        return next(self._synthetic)

    def _build_fullvm(self, fullvm: _Synthetic) -> None:
        from vcbfs.vm.catalog import catalog_text, flat_descriptor, rewrite_vmx

        image = self.image
        for name, data in sorted(image.files.items()):
            if name.lower().endswith(".vmx"):
                data = rewrite_vmx(data, image)
            self._link(fullvm, self._add(self._next_ino(), name, data=data))
        self._link(
            fullvm, self._add(self._next_ino(), "catalog", data=catalog_text(image).encode())
        )
        for disk in image.disks:
            desc = flat_descriptor(disk)
            self._link(fullvm, self._add(self._next_ino(), f"{disk.name}.vmdk", data=desc))
            self._link(
                fullvm,
                self._add(
                    self._next_ino(),
                    f"{disk.name}-flat.vmdk",
                    source=(lambda d=disk: d.source),
                    size=disk.source.size,
                ),
            )

    def _build_views(self) -> None:
        """digits/: a view per volume, keys 1..N in disk and partition order."""
        views: dict[int, _View] = {}
        digits = self._dir("digits")
        for vol in self.image.volumes():
            if not self._add_view(views, digits, str(vol.number), f"digits/{vol.number}", vol):
                break
        self._views = views  # whole: readers outside the lock never see part of it

    def _build_letters(self) -> None:
        """letters/: views keyed after digits/'s, in letter order, so inode numbers are the
        same on every mount whichever of the two is looked into first."""
        from vcbfs.vm.letters import volume_letters

        if self._views is None:
            self._build_views()
        assert self._views is not None
        letters = self._dir("letters")
        for letter, vol in sorted(volume_letters(self.image).items()):
            if not self._add_view(self._views, letters, letter, f"letters/{letter}", vol):
                break
        self._letters_done = True

    def _add_view(
        self, views: dict[int, _View], parent: _Synthetic, name: str, path: str, vol: Volume
    ) -> bool:
        key = len(views) + 1
        if key >= MAX_VIEWS:
            self.image.note(f"more than {MAX_VIEWS - 1} views: {path} is not shown")
            return False
        views[key] = _View(key, path, vol)
        self._link(parent, self._add((key << VIEW_SHIFT) | NTFS_ROOT, name))
        return True

    def close(self) -> None:
        """Close the image (for a vSphere VM: release its snapshot)."""
        self.image.close()

    def hold(self, ino: int) -> object:
        """An open file or directory: nothing to count in a single VM's tree."""
        return None

    def unhold(self, token: object) -> None:
        pass

    def _view(self, ino: int) -> tuple[_View, int] | None:
        key = ino >> VIEW_SHIFT
        if not key:
            return None
        views = self._views
        if views is None or (key not in views and not self._letters_done):
            with self._lock:  # an inode of a view not built yet (known from an earlier mount)
                if not self._letters_done:
                    self._build_letters()
            views = self._views
        assert views is not None
        view = views.get(key)
        if view is None:
            raise NotFoundError(f"no inode {ino}")
        return view, ino & ((1 << VIEW_SHIFT) - 1)

    # -- the interface the FUSE adapter uses ---------------------------------------------

    def getattr(self, ino: int) -> Attr:
        if ino & STREAM_INO:
            view, record, stream = self._stream_key(ino)
            return self._stream_attr(view, record, stream)
        found = self._in_volume(ino)
        if found is not None:
            view, record, name = found
            return self._ntfs_attr(view, view.volume.ntfs(), record, ino, name)
        node = self._nodes.get(ino)
        if node is None:
            raise NotFoundError(f"no inode {ino}")
        if node.is_dir:
            return Attr(
                ino,
                stat.S_IFDIR | self.dir_mode,
                2,
                0,
                0,
                self.now_ns,
                self.now_ns,
                self.now_ns,
            )
        return Attr(
            ino,
            stat.S_IFREG | self.file_mode,
            1,
            node.size,
            (node.size + 511) // 512,
            self.now_ns,
            self.now_ns,
            self.now_ns,
        )

    def _in_volume(self, ino: int) -> tuple[_View, int, int] | None:
        """(view, record, which name of a link) of an inode inside a volume (not a stream's),
        or None for one of vcbfs's own."""
        name = ino >> NAME_SHIFT
        if name > NAME_LIMIT:
            raise NotFoundError(f"no inode {ino}")
        found = self._view(ino & ((1 << NAME_SHIFT) - 1))
        if found is None:
            if name:
                raise NotFoundError(f"no inode {ino}")
            return None
        return found[0], found[1], name

    def _ntfs_attr(
        self, view: _View, vol: NtfsVolume, record: int, ino: int, name: int = 0
    ) -> Attr:
        st = _stat(vol, record)
        if st.reparse is not None and st.reparse.is_link:
            size = len(self._link_target(view, record, name))
            mode, nlink = stat.S_IFLNK | 0o777, 1
        elif name:
            raise NotFoundError(f"no inode {ino}: record {record} is no link")
        elif st.is_dir:
            mode, nlink, size = stat.S_IFDIR | self.dir_mode, 2, 0
        else:
            mode, nlink, size = stat.S_IFREG | self.file_mode, st.links, st.size
        return Attr(
            ino,
            mode,
            nlink,
            size,
            (st.allocated + 511) // 512,
            st.accessed,
            st.modified,
            st.changed,
        )

    def lookup(self, parent: int, name: str) -> Attr:
        self._ensure(parent)
        found = self._view(parent)
        if found is None:
            node = self._nodes.get(parent)
            if node is None:
                raise NotFoundError(f"no inode {parent}")
            if not node.is_dir:
                raise NotADirectory(f"inode {parent} is not a directory")
            assert node.children is not None
            ino = node.children.get(name)
            if ino is None:
                raise NotFoundError(f"no {name!r}")
            return self.getattr(ino)
        view, record = found
        attr = self._find(view, view.volume.ntfs(), record, name)
        if attr is not None:
            return attr
        if is_cut(name):
            # A stream listed under a shortened name (see vm/streams.py): as listed.
            for listed, attr in self._listing(parent):
                if listed == name and attr.ino & STREAM_INO:
                    return attr
        raise NotFoundError(f"no {name!r} in directory record {record}")

    def _find(self, view: _View, vol: NtfsVolume, parent: int, name: str) -> Attr | None:
        """An entry of a volume directory by name (as Windows finds it: an exact match first,
        else one that differs in case), else a stream ``FILE:STREAM`` of an entry named
        exactly FILE (at the first colon that gives one: a POSIX-namespace name may hold a
        colon itself); None if neither is there, or the entry is one a listing leaves out."""
        try:
            entry = vol.child(parent, name)
        except NotFoundError:
            pass
        else:
            try:
                return self._entry_attr(view, vol, parent, entry.name, entry.record)
            except NotFoundError as exc:
                # The index names it, so it is listed: its record being gone is damage (EIO).
                raise CorruptError(
                    f"{view.path}: {entry.name!r} in directory record {parent} names record "
                    f"{entry.record}, which cannot be read: {exc.describe()}",
                    source=vol.name,
                ) from None
        at = name.find(":")
        while at >= 0:
            base, stream = name[:at], name[at + 1 :]
            try:
                entry = vol.child(parent, base)
            except NotFoundError:
                entry = None
            if entry is not None and entry.name == base and entry.record <= RECORD_MASK:
                try:
                    return self._stream_attr(view, entry.record, stream)
                except NotFoundError:
                    pass
            at = name.find(":", at + 1)
        return None

    def _entry_attr(
        self, view: _View, vol: NtfsVolume, parent: int, name: str, record: int
    ) -> Attr | None:
        """The attributes of the entry ``name`` of directory ``parent`` for ``record``, or None
        where the entry is refused (left out of the listing, not found by name):

        - a record number past what an inode holds (2**40: no volume has that many records):
          its inode would be another view's;
        - a directory listed where its own (first) name does not put it, which only a crafted
          index does: the kernel would reach it at another depth than its links' targets are
          made for, and they could climb out of the mount;
        - a link listed in a directory where none of its names is.

        A link with several names (hard links) gets an inode for each, so that each place has
        its own target, made for that place.
        """
        if record > RECORD_MASK:
            return None
        ino = (view.key << VIEW_SHIFT) | record
        st = vol.stat(record)
        if st.reparse is not None and st.reparse.is_link:
            index = self._name_index(vol, record, parent, name)
            if index is None or index > NAME_LIMIT:
                return None
            return self._ntfs_attr(view, vol, record, ino | index << NAME_SHIFT, index)
        if st.is_dir and not self._placed(vol, record, parent):
            return None
        return self._ntfs_attr(view, vol, record, ino)

    def _names(self, vol: NtfsVolume, record: int) -> list[FileName]:
        """A record's names other than DOS aliases: the first is where its path goes."""
        return [n for n in vol.names(record) if n.namespace != NS_DOS]

    def _name_index(self, vol: NtfsVolume, record: int, parent: int, name: str) -> int | None:
        """Which of a record's names the entry ``name`` in directory ``parent`` is."""
        names = self._names(vol, record)
        for i, n in enumerate(names):
            if n.parent == parent and n.name == name:
                return i
        for i, n in enumerate(names):
            if n.parent == parent:
                return i
        return None

    def _placed(self, vol: NtfsVolume, record: int, parent: int) -> bool:
        """Whether a directory listed in ``parent`` is where its path (``_path_parts``) says.
        One whose names cannot be read is: no link below it can then be read either."""
        try:
            names = self._names(vol, record)
        except VcbfsError:
            return True
        return not names or names[0].parent == parent

    def _stream_key(self, ino: int) -> tuple[_View, int, str]:
        """The view, file record and stream name of a stream's inode."""
        index = (ino & ~STREAM_INO) >> STREAM_SHIFT
        found = self._view(ino & ((1 << STREAM_SHIFT) - 1))
        if found is None or not index:
            raise NotFoundError(f"no inode {ino}")
        view, record = found
        streams = view.volume.ntfs().streams(record)
        if index > len(streams):
            raise NotFoundError(f"no inode {ino}")
        return view, record, streams[index - 1][0]

    def _stream_attr(self, view: _View, record: int, stream: str) -> Attr:
        """A ``file:stream`` name: a regular file with an inode derived from its file's."""
        vol = view.volume.ntfs()
        sizes = dict(vol.streams(record))  # sorted by name: the index is stable
        if stream not in sizes:
            raise NotFoundError(f"no stream {stream!r}")
        index = list(sizes).index(stream) + 1
        if index > STREAM_LIMIT:
            raise NotFoundError(f"stream {stream!r} is past the {STREAM_LIMIT} a file can show")
        size = sizes[stream]
        st = vol.stat(record)
        return Attr(
            STREAM_INO | index << STREAM_SHIFT | view.key << VIEW_SHIFT | record,
            stat.S_IFREG | self.file_mode,
            1 if st.is_dir else st.links,  # a hard-linked file's streams are shared too
            size,
            (size + 511) // 512,
            st.accessed,
            st.modified,
            st.changed,
        )

    def readdir(self, ino: int) -> list[tuple[str, Attr]]:
        """Entries in a fixed, sorted order (offsets index into it)."""
        self._ensure(ino)
        found = self._view(ino)
        if found is None:
            node = self._nodes.get(ino)
            if node is None or not node.is_dir:
                raise NotADirectory(f"inode {ino} is not a directory")
            assert node.children is not None
            children = sorted(node.children.items())
            return [(name, self._child_attr(child)) for name, child in children]
        return self._listing(ino)

    def _child_attr(self, ino: int) -> Attr:
        """An entry of a synthetic directory.  A volume whose file system cannot be opened (a
        damaged $MFT) is still listed, as a directory that gives EIO inside, so that one bad
        volume never hides the others."""
        try:
            return self.getattr(ino)
        except VcbfsError as exc:
            if ino >> VIEW_SHIFT == 0:
                raise
            log.error("%s is unreadable (looking inside gives EIO): %s", self.describe(ino), exc)
            t = self.now_ns
            return Attr(ino, stat.S_IFDIR | self.dir_mode, 2, 0, 0, t, t, t)

    def _listing(self, ino: int) -> list[tuple[str, Attr]]:
        """A volume directory's entries with their attributes, kept (bounded) once computed:
        every opendir asks again, and ``ls`` before a backup lists each directory twice."""
        listing = self._listings.get(ino)
        if listing is None:
            listing = self._list(ino)
            self._listings.put(ino, listing)
        return listing

    def _list(self, ino: int) -> list[tuple[str, Attr]]:
        found = self._view(ino)
        if found is None:
            raise NotADirectory(f"inode {ino} is not a volume directory")
        view, record = found
        vol = view.volume.ntfs()
        listing = []
        streams: list[tuple[int, str, int]] = []  # (after entry i, its name, its record)
        names: set[str] = set()
        base = view.key << VIEW_SHIFT
        try:
            entries = list(vol.iterdir(record))
        except (NotFoundError, NotADirectory) as exc:  # listed (unreadable) by its parent
            raise CorruptError(f"directory record {record} cannot be read: {exc}") from None
        for entry in entries:
            if entry.name in names:
                # A damaged index can hold a name twice: a lookup finds only the first.
                self._refuse(view, record, entry, "the index has that name before")
                continue
            names.add(entry.name)
            child = base | entry.record
            try:
                attr = self._entry_attr(view, vol, record, entry.name, entry.record)
                if attr is None:
                    self._refuse(view, record, entry, "the index entry is not valid")
                    continue
                listing.append((entry.name, attr))
                if vol.stat(entry.record).has_streams:
                    streams.append((len(listing), entry.name, entry.record))
            except VcbfsError as exc:
                if entry.is_dir and not self._placed(vol, entry.record, record):
                    self._refuse(view, record, entry, "the index entry is not valid")
                    continue
                # Listed all the same, so that a backup meets the file and reports its EIO
                # rather than silently going without it.
                placed = self._unreadable_ino(vol, record, entry, child)
                if placed is None:
                    self._refuse(view, record, entry, "the index entry is not valid")
                    continue
                log.error(
                    "%s: %r in directory record %d is unreadable (reading it gives EIO): %s",
                    view.path,
                    entry.name,
                    record,
                    exc.describe(),
                )
                listing.append((entry.name, self._indexed_attr(entry, *placed)))
        if streams:
            listing = self._with_streams(view, vol, record, listing, streams)
        return listing

    def _unreadable_ino(
        self, vol: NtfsVolume, parent: int, entry: DirEntry, ino: int
    ) -> tuple[int, bool] | None:
        """The inode an entry whose attributes cannot be read is listed with, and whether it
        is a link.  A link's is the one of its name in this directory, as a lookup gives, so
        that its getattr and readlink fail alike, or give a target made for this place (never
        for another of its names, which could lie at another depth); None for a link none of
        whose names is here."""
        try:
            st = vol.stat(entry.record)
            if st.reparse is None or not st.reparse.is_link:
                return ino, False
            index = self._name_index(vol, entry.record, parent, entry.name)
        except VcbfsError:
            return ino, False  # its getattr meets the same damage
        if index is None or index > NAME_LIMIT:
            return None
        return ino | index << NAME_SHIFT, True

    def _refuse(self, view: _View, record: int, entry: DirEntry, why: str) -> None:
        log.error(
            "%s: %r (record %d) in directory record %d is not listed: %s",
            view.path,
            entry.name,
            entry.record,
            record,
            why,
        )

    def _with_streams(
        self,
        view: _View,
        vol: NtfsVolume,
        parent: int,
        listing: list[tuple[str, Attr]],
        streams: list[tuple[int, str, int]],
    ) -> list[tuple[str, Attr]]:
        """The listing with each file's large streams right after it, as ``file:stream``.

        A stream is listed only under a name that looks up to it: not where an entry of the
        directory has that name (in any case), nor where another stream was listed so first.
        """
        taken = {name for name, _attr in listing}
        out: list[tuple[str, Attr]] = []
        done = 0
        for after, name, record in streams:
            out += listing[done:after]
            done = after
            try:
                beside = stream_forms(vol, record)[1]
                for stream in beside:
                    shown = beside_name(name, stream)
                    attr = self._stream_attr(view, record, stream)
                    found = self._find(view, vol, parent, shown)
                    whole = shown == f"{name}:{stream}"  # else cut: found through the listing
                    if shown in taken or found != (attr if whole else None):
                        log.error(
                            "%s: stream %r of %r is not listed: the directory has another "
                            "entry of that name",
                            view.path,
                            stream,
                            name,
                        )
                        continue
                    out.append((shown, attr))
                    taken.add(shown)
            except VcbfsError as exc:
                log.error("%s: the streams of %r are unreadable: %s", view.path, name, exc)
        out += listing[done:]
        return out

    def _indexed_attr(self, entry: DirEntry, ino: int, link: bool = False) -> Attr:
        """What the directory's index says of an entry whose own record cannot be read."""
        fn = entry.indexed
        if link:  # a link's target could not be made: never a directory to walk into
            mode, nlink, size, blocks = stat.S_IFLNK | 0o777, 1, 0, 0
        elif entry.is_dir:
            mode, nlink, size, blocks = stat.S_IFDIR | self.dir_mode, 2, 0, 0
        else:
            mode, nlink = stat.S_IFREG | self.file_mode, 1
            size, blocks = fn.data_size, (fn.allocated_size + 511) // 512
        return Attr(
            ino,
            mode,
            nlink,
            size,
            blocks,
            filetime_ns(fn.accessed),
            filetime_ns(fn.modified),
            filetime_ns(fn.changed),
        )

    def open(self, ino: int) -> ByteSource:
        if ino & STREAM_INO:
            view, record, stream = self._stream_key(ino)
            return view.volume.ntfs().open(record, stream)
        found = self._view(ino)
        if found is None:
            node = self._nodes.get(ino)
            if node is None or node.is_dir:
                raise NotFoundError(f"inode {ino} is not a file")
            if node.source is not None:
                return node.source()
            from vcbfs.ntfs.stream import ResidentStream

            return ResidentStream(node.data or b"", node.name)
        view, record = found
        try:
            return view.volume.ntfs().open(record)
        except NotFoundError as exc:
            raise CorruptError(f"record {record} cannot be read: {exc}") from None

    def report(self, ino: int, exc: VcbfsError, where: str = "") -> None:
        """Log, once per file, that it cannot be read and why, naming its path in the mount
        (after ``where``); the error is marked reported, so it is not logged again."""
        exc.reported = True
        if self._reported.get(ino):
            return
        self._reported.put(ino, True)
        log.error("%s%s: cannot be read: %s", where, self.describe(ino), exc)

    def describe(self, ino: int) -> str:
        """The path of an inode in the mount, as well as it can be told."""
        try:
            if ino & STREAM_INO:
                view, record, stream = self._stream_key(ino)
                suffix = f":{stream}"
            else:
                found = self._in_volume(ino)
                if found is None:
                    node = self._nodes.get(ino)
                    return node.name if node is not None else f"inode {ino}"
                view, record, name = found
                if record == NTFS_ROOT:
                    return view.path
                suffix = ""
                if name:
                    vol = view.volume.ntfs()
                    link = self._names(vol, record)[name]
                    inside = [*self._path_parts(vol, link.parent), link.name]
                    return "/".join([view.path, *inside])
            inside = self._path_parts(view.volume.ntfs(), record)
            return "/".join([view.path, *inside]) + suffix
        except VcbfsError:
            return f"inode {ino}"

    def try_open(self, ino: int) -> ByteSource | None:
        """``open`` when it needs no disk read (a parsed record, a small synthetic file).

        Never builds anything: a view not built yet, or a volume not open yet, is None.
        """
        if ino & STREAM_INO:
            return None
        key = ino >> VIEW_SHIFT
        if not key:
            node = self._nodes.get(ino)
            return self.open(ino) if node is not None and node.data is not None else None
        view = self._views.get(key) if self._views is not None else None
        vol = view.volume.ntfs_if_open() if view is not None else None
        return None if vol is None else vol.try_open(ino & ((1 << VIEW_SHIFT) - 1))

    def readlink(self, ino: int) -> bytes:
        """A link's target as the kernel is given it: a relative path of listed names."""
        found = self._in_volume(ino)
        if found is None:
            raise NotFoundError(f"inode {ino} is not a link")
        view, record, name = found
        return self._link_target(view, record, name)

    def _link_target(self, view: _View, record: int, name: int = 0) -> bytes:
        """The target of a link's name number ``name``, relative to the directory that name
        is in, so that it stays inside the mount (see ``link_parts``)."""
        vol: NtfsVolume = view.volume.ntfs()
        reparse = vol.stat(record).reparse
        if reparse is None or not reparse.target:
            raise NotFoundError(f"record {record} is not a link")
        names = self._names(vol, record)
        if name >= len(names):
            raise NotFoundError(f"record {record} has no name {name}")
        folder = self._path_parts(vol, names[name].parent) if names else []
        ups, down = link_parts(view.path.split("/"), folder, reparse.target, reparse.relative)
        return encode_path(ups, down)

    def _path_parts(self, vol: NtfsVolume, record: int) -> list[str]:
        """The names from the volume's root down to ``record``, by each record's first name
        (which is where a listing shows a directory: see ``_placed``)."""
        parts = []
        for _ in range(1024):
            if record == NTFS_ROOT:
                break
            names = self._names(vol, record)
            if not names:
                break
            parts.append(names[0].name)
            record = names[0].parent
        return parts[::-1]

    def _stream_xattrs(self, ino: int) -> dict[str, bytes]:
        """A stream entry listed under a shortened name carries its whole name,
        ``FILE:STREAM``, as ``user.ntfs_stream_name`` (one of the file's names)."""
        view, record, stream = self._stream_key(ino)
        names = [n for n in view.volume.ntfs().names(record) if n.namespace != NS_DOS]
        if not names:
            return {}
        full = f"{names[0].name}:{stream}"
        if beside_name(names[0].name, stream) == full:
            return {}
        return {"user.ntfs_stream_name": full.encode("utf-8", "surrogatepass")}

    def listxattr(self, ino: int, *, privileged: bool = True) -> list[str]:
        """The xattrs ``getxattr`` gives; a link's (``trusted.*``) only to a ``privileged``
        caller, the only one the kernel lets read them."""
        return sorted(self._xattrs(ino, values=False, privileged=privileged))

    def getxattr(self, ino: int, name: str) -> bytes:
        values = self._xattrs(ino, values=True, only=name)
        if name not in values:
            raise NotFoundError(f"no xattr {name!r}")
        return values[name]

    def _xattrs(
        self, ino: int, *, values: bool, only: str | None = None, privileged: bool = True
    ) -> dict[str, bytes]:
        if ino & STREAM_INO:
            return self._stream_xattrs(ino)
        found = self._in_volume(ino)
        if found is None:
            return {}
        view, record, _name = found
        vol = view.volume.ntfs()
        st = _stat(vol, record)
        link = st.reparse is not None and st.reparse.is_link
        if link and not privileged:
            return {}
        ns = "trusted." if link else "user."
        out: dict[str, bytes] = {}

        def want(name: str) -> bool:
            return only is None or only == name

        for stream in stream_forms(vol, record)[0]:
            name = f"user.{stream}"
            if want(name):
                stream_data = vol.open(record, stream) if values else None
                out[name] = stream_data.read_at(0, XATTR_SIZE_MAX) if stream_data else b""
        if want(f"{ns}ntfs_attrib_be"):
            out[f"{ns}ntfs_attrib_be"] = struct.pack(">I", st.attributes)
        if want(f"{ns}ntfs_times"):
            out[f"{ns}ntfs_times"] = _ntfs_times(st)
        if want(f"{ns}ntfs_acl"):  # listed only where getxattr has a value to give
            sd = vol.security_descriptor(record)
            if sd is not None:
                out[f"{ns}ntfs_acl"] = sd if values else b""
        name = f"{ns}ntfs_reparse_data"
        if st.reparse is not None and not vol.is_wof(record) and want(name):
            out[name] = (vol.reparse_data(record) or b"") if values else b""
        return out


def link_parts(
    view: list[str], folder: list[str], target: str, relative: bool
) -> tuple[int, list[str]]:
    """Where a link in ``folder`` (names from the root of the volume at ``view``, e.g.
    ``["digits", "1"]``) points: how many '..' from its folder, then which names down.

    Windows resolves a link on its own volume and never climbs above a volume's root
    (``C:\\..\\..`` is ``C:\\``), so ``..`` past the root stays there, as it does here: a
    crafted ``..\\..(x13)\\etc\\shadow`` ends at the volume's ``etc/shadow``, not the proxy's.
    ``X:\\...`` goes to ``letters/X/...``.  Any other absolute target (a UNC path, a volume
    GUID path) is taken under the volume's root, where it is normally dangling.  The '..'
    climb at most to the mount's root from the folder; the names are names (never '.' or
    '..'), each as the directory lists it once encoded (a name may hold '/').
    """
    target = target.replace("\\", "/")
    if relative:
        root, start = view, folder
    elif len(target) >= 2 and target[1] == ":" and target[0].isalpha():
        root, start, target = ["letters", target[0].upper()], [], target[2:]
    else:
        root, start = view, []
    parts = list(start)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()  # at the root, ".." stays at the root
        else:
            parts.append(part)
    there, here = [*root, *parts], [*view, *folder]
    common = 0
    while common < min(len(there), len(here)) and there[common] == here[common]:
        common += 1
    return len(here) - common, there[common:]


def link_target(view: str, folder: str, target: str, relative: bool) -> str:
    """``link_parts`` for a view and folder given as '/'-separated paths, as a path."""
    ups, down = link_parts(view.split("/"), [p for p in folder.split("/") if p], target, relative)
    return "/".join([".."] * ups + down) or "."


def _stat(vol: NtfsVolume, record: int) -> NtfsStat:
    """The stat of a record some directory names: one that is not there is damage (EIO,
    never ENOENT, which an agent takes for a file deleted while it ran, and skips)."""
    try:
        return vol.stat(record)
    except NotFoundError as exc:
        raise CorruptError(f"record {record} cannot be read: {exc}") from None


def _ntfs_times(st: NtfsStat) -> bytes:
    """Creation, write, access and change time as four little-endian FILETIMEs (ntfs-3g's
    ``ntfs_times``)."""
    return struct.pack(
        "<4Q",
        *(t // 100 + FILETIME_EPOCH for t in (st.created, st.modified, st.accessed, st.changed)),
    )
