r"""Registry hives read from a guest's NTFS volume, parsed by regipy behind typed errors.

The guest's drive letters are stored in its SYSTEM hive (``HKLM\SYSTEM\MountedDevices``), a file
on the Windows volume.  This module reads that file through the NTFS reader, bounded in size, and
wraps regipy (the hive parser vcbfs depends on) so that the rest of vcbfs sees plain values and
vcbfs errors only: a damaged hive raises ``CorruptError`` (or ``UnsupportedError``), a missing key
``NotFoundError``, and no regipy, construct or struct exception ever escapes.

regipy 6.5 facts this wrapper relies on (measured):

* ``RegistryHive`` takes a path only: it ``open()``\s it and reads the whole file into a
  ``BytesIO``; there is no way to hand it bytes or a file object.  The hive is given to it as a
  Linux ``memfd`` named by ``/proc/self/fd/N`` (nothing is written to disk, nothing is left behind),
  or, where that is not available, as a private ``NamedTemporaryFile`` deleted right after.
  ``open_system_hive`` copies the file from the volume into that memfd in pieces, so regipy's
  copy is the only one this process holds (the audit found a 512 MiB hive held three times:
  the joined read, the caller's bytes and regipy's), and counts it against the memory budget.
* ``iter_values()`` defaults to ``trim_values=True``, which turns REG_BINARY data into a hex
  string cut to ``MAX_LEN`` characters.  We ask for ``trim_values=False`` (raw ``bytes``) and still
  convert a hex string back to bytes should one come through.
* On damaged input it raises its own exceptions, but also construct's ``ConstError`` and
  ``StreamError``, ``struct.error`` and ``UnicodeDecodeError``.  Some damage it does not report
  at all: a subkey list with an unknown signature reads as empty (so ``get_key`` says the key
  does not exist), and a bad value record is logged and silently ends the value list.  It does
  not check the base block checksum, and it takes the first cell of the first hive bin as the
  root key, ignoring the header's root offset.  So the base block is checked here first, keys
  are walked here comparing each key's subkey count with its list, every call into regipy maps
  any exception to ``CorruptError``, and a short value list is recorded in ``Hive.notes``.
* A ``RegistryHive`` seeks one shared stream, so it is not thread-safe: ``Hive`` holds a lock.

Transaction logs (``SYSTEM.LOG1``/``.LOG2``) are not applied.  A hive copied from a running
system may be "dirty" (sequence numbers differ, or a bad checksum); ``Hive.dirty`` says so, and
the caller can note that recent changes may be missing.  MountedDevices rarely changes, so the
primary file is still the best answer available.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from regipy.registry import RegistryHive

from vcbfs.blocks.budget import BUDGET, Budget
from vcbfs.blocks.source import ByteSource
from vcbfs.errors import (
    CorruptError,
    NotADirectory,
    NotFoundError,
    ReadError,
    UnsupportedError,
    VcbfsError,
)

if TYPE_CHECKING:
    from vcbfs.ntfs.volume import NtfsVolume

__all__ = [
    "MAX_HIVE_SIZE",
    "SYSTEM_HIVE_PATH",
    "Hive",
    "HiveHeader",
    "RegValue",
    "mounted_devices",
    "open_system_hive",
    "open_volume_file",
    "parse_header",
    "read_system_hive",
    "read_volume_file",
]

SYSTEM_HIVE_PATH = "Windows/System32/config/SYSTEM"
"""Where the SYSTEM hive lives on the Windows volume (the NTFS lookup ignores case)."""

MAX_HIVE_SIZE = 512 << 20
"""Largest hive read: real SYSTEM hives are tens of MB; anything this big is not one."""

BASE_BLOCK_SIZE = 4096
HBIN_HEADER_SIZE = 32
ROOT_CELL_OFFSET = HBIN_HEADER_SIZE
"""Where every hive writer puts the root key: the first cell of the first hive bin."""
HEADER_BYTES = BASE_BLOCK_SIZE + HBIN_HEADER_SIZE  # what parse_header looks at

_BASE_BLOCK = struct.Struct("<4sIIQIIIIII")
_READ_CHUNK = 4 << 20
_MAX_MESSAGE = 200
_BINARY_TYPES = frozenset(
    {
        "REG_NONE",
        "REG_BINARY",
        "REG_RESOURCE_LIST",
        "REG_FULL_RESOURCE_DESCRIPTOR",
        "REG_RESOURCE_REQUIREMENTS_LIST",
    }
)


# --- reading the file ----------------------------------------------------------------------


def read_volume_file(volume: NtfsVolume, path: str, max_size: int) -> bytes | None:
    """The unnamed data of the file at ``path`` on ``volume``, or None if there is no such file.

    A file larger than ``max_size`` raises ``UnsupportedError``; a data stream that reads short
    raises ``CorruptError``.  Errors of the NTFS reader (corrupt records) pass through, typed.
    """
    try:
        source = volume.open(volume.lookup(path))
    except (NotFoundError, NotADirectory):
        return None
    size = source.size
    if size > max_size:
        raise UnsupportedError(
            f"{path} is {size} bytes, more than the {max_size}-byte limit", source=volume.name
        )
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = source.read_at(offset, min(_READ_CHUNK, size - offset))
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    if offset != size:
        raise CorruptError(
            f"{path} is {size} bytes but its data ends after {offset}", source=volume.name
        )
    return b"".join(chunks)


def read_system_hive(volume: NtfsVolume, max_size: int = MAX_HIVE_SIZE) -> bytes | None:
    """The bytes of ``Windows/System32/config/SYSTEM`` on ``volume``; None if it has none."""
    return read_volume_file(volume, SYSTEM_HIVE_PATH, max_size)


def open_volume_file(volume: NtfsVolume, path: str, max_size: int) -> ByteSource | None:
    """The unnamed data of the file at ``path`` as a source (None if there is no such file);
    ``UnsupportedError`` if it is larger than ``max_size``."""
    try:
        source = volume.open(volume.lookup(path))
    except (NotFoundError, NotADirectory):
        return None
    if source.size > max_size:
        raise UnsupportedError(
            f"{path} is {source.size} bytes, more than the {max_size}-byte limit",
            source=volume.name,
        )
    return source


@contextlib.contextmanager
def open_system_hive(
    volume: NtfsVolume, max_size: int = MAX_HIVE_SIZE, budget: Budget = BUDGET
) -> Iterator[Hive | None]:
    """The SYSTEM hive of ``volume``, parsed (None if it has none), while the block runs.

    The hive is held once: its bytes go from the volume to a memfd in 4 MiB pieces, and regipy
    reads them from there into the one copy it keeps.  That copy is reserved against the
    process-wide memory budget for as long as the block runs (twice its size while regipy
    reads it, the memfd beside it), so the caches shrink to make room; a hive larger than
    half the budget raises ``OverBudgetError``."""
    source = open_volume_file(volume, SYSTEM_HIVE_PATH, max_size)
    if source is None:
        yield None
        return
    size = source.size
    what = f"the SYSTEM hive of {volume.name} (twice its {size} bytes while it is parsed)"
    with budget.reserve(2 * size, what) as held:
        hive = Hive.from_source(source, "SYSTEM")
        held.release(size)  # the memfd is gone: only regipy's copy is left
        try:
            yield hive
        finally:
            hive.close()


# --- the base block ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HiveHeader:
    """What the base block (the first 4 KiB of a hive) says, checked for sanity."""

    primary_sequence: int
    secondary_sequence: int
    major: int
    minor: int
    root_offset: int
    bins_size: int
    checksum_ok: bool
    file_name: str

    @property
    def dirty(self) -> bool:
        """True if the hive was not written out cleanly (its logs hold changes not in it)."""
        return self.primary_sequence != self.secondary_sequence or not self.checksum_ok


def _checksum(block: bytes) -> int:
    value = 0
    for (dword,) in struct.iter_unpack("<I", block[:508]):
        value ^= dword
    return value


def parse_header(data: bytes, name: str = "hive", size: int | None = None) -> HiveHeader:
    """Check the base block and the first hive bin of a primary hive file.

    ``data`` is the file, or its first ``HEADER_BYTES`` when ``size`` gives the file's size.
    Raises ``CorruptError`` for a file that is not a hive or is cut short, and
    ``UnsupportedError`` for a hive version or file type vcbfs does not read.
    """
    need = BASE_BLOCK_SIZE + HBIN_HEADER_SIZE
    size = len(data) if size is None else size
    if min(size, len(data)) < need:
        raise CorruptError(
            f"registry hive is truncated: {size} bytes, a hive has at least {need}",
            source=name,
        )
    sig, seq1, seq2, _ts, major, minor, ftype, _fmt, root, bins_size = _BASE_BLOCK.unpack_from(data)
    if sig != b"regf":
        raise CorruptError("not a registry hive (no 'regf' signature)", source=name, offset=0)
    if major != 1:
        raise UnsupportedError(
            f"registry hive format {major}.{minor} is not supported", source=name
        )
    if ftype != 0:
        raise UnsupportedError(
            f"file type {ftype} is a transaction log, not a primary hive", source=name
        )
    if bins_size == 0 or bins_size % 4096:
        raise CorruptError(f"bad hive bins data size {bins_size}", source=name, offset=40)
    if BASE_BLOCK_SIZE + bins_size > size:
        raise CorruptError(
            f"registry hive is truncated: its header says {BASE_BLOCK_SIZE + bins_size} bytes, "
            f"the file has {size}",
            source=name,
        )
    if data[BASE_BLOCK_SIZE : BASE_BLOCK_SIZE + 4] != b"hbin":
        raise CorruptError("no hive bin after the base block", source=name, offset=BASE_BLOCK_SIZE)
    if root != ROOT_CELL_OFFSET:
        raise UnsupportedError(
            f"root key cell at offset {root:#x}, not the first cell of the first hive bin",
            source=name,
        )
    stored = struct.unpack_from("<I", data, 508)[0]
    computed = _checksum(data)
    # Windows never stores 0 or 0xFFFFFFFF: it writes 1 and 0xFFFFFFFE instead.
    windows = {0: 1, 0xFFFFFFFF: 0xFFFFFFFE}.get(computed, computed)
    raw_name = data[48:112].decode("utf-16-le", errors="replace")
    return HiveHeader(
        primary_sequence=seq1,
        secondary_sequence=seq2,
        major=major,
        minor=minor,
        root_offset=root,
        bins_size=bins_size,
        checksum_ok=stored in (computed, windows),
        file_name=raw_name.split("\0", 1)[0],
    )


# --- regipy behind typed errors ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegValue:
    """One registry value: its name, type name (``"REG_BINARY"``, ...) and decoded data.

    ``data`` is ``bytes`` for the binary types, ``str`` for REG_SZ / REG_EXPAND_SZ, ``int`` for
    REG_DWORD / REG_QWORD and ``list[str]`` for REG_MULTI_SZ, as regipy decodes them.
    """

    name: str
    type: str
    data: Any


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _private_path(data: bytes) -> contextlib.AbstractContextManager[str]:
    """A path naming a private copy of ``data``, gone when the block ends."""
    return _private_copy(lambda write: write(data))


def _private_path_from(source: ByteSource) -> contextlib.AbstractContextManager[str]:
    """A path naming a private copy of ``source``'s bytes, copied in pieces (never whole in
    this process), gone when the block ends."""
    return _private_copy(lambda write: _copy(source, write))


@contextlib.contextmanager
def _private_copy(fill: Callable[[Callable[[bytes], object]], None]) -> Iterator[str]:
    """A memfd (else a 0600 temporary file) that ``fill`` writes through the function it is
    given; its path for the block's time."""
    fd = -1
    with contextlib.suppress(AttributeError, OSError):
        if os.path.isdir("/proc/self/fd"):
            fd = os.memfd_create("vcbfs-hive", os.MFD_CLOEXEC)
    if fd >= 0:
        try:
            fill(lambda chunk: _write_all(fd, chunk))
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="vcbfs-hive-") as f:  # mode 0600, O_EXCL
        fill(f.write)
        f.flush()
        yield f.name


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy(source: ByteSource, write: Any) -> None:
    offset, size = 0, source.size
    while offset < size:
        chunk = source.read_at(offset, min(_READ_CHUNK, size - offset))
        if not chunk:
            break
        write(chunk)
        offset += len(chunk)
    if offset != size:
        raise CorruptError(
            f"the hive is {size} bytes but its data ends after {offset}", source=source.name
        )


def _key_parts(path: str) -> list[str]:
    return [p for p in path.replace("/", "\\").split("\\") if p]


class Hive:
    """A parsed registry hive: values and subkeys of its keys, by path from the hive's root.

    Paths are relative to the hive (``"MountedDevices"``, ``"ControlSet001\\Control"``), with
    ``\\`` or ``/`` separators; names are matched ignoring case, as Windows does.  Keys are
    walked here, one level at a time, rather than with regipy's ``get_key``, because regipy
    reads a damaged subkey list as an empty one: a key whose list holds fewer subkeys than the
    key node counts is reported as corrupt, not as missing.  A value list that ends early (regipy
    stops at the first bad value record) keeps the values read before it, and ``notes`` says so.
    """

    def __init__(self, data: bytes | None, name: str = "hive", *, _source: Any = None):
        self.name = name
        if _source is None:
            assert data is not None
            self.header = parse_header(data, name)
            opened = _private_path(data)
        else:  # from_source: the header is checked, the bytes are not in this process
            self.header = _source[1]
            opened = _private_path_from(_source[0])
        self.notes: list[str] = []
        self._lock = threading.Lock()
        try:
            with opened as path:
                self._reg: Any = RegistryHive(path)
        except VcbfsError:
            raise
        except OSError as exc:
            raise ReadError(f"cannot hand the hive to regipy: {_short(exc)}", source=name) from exc
        except Exception as exc:
            raise CorruptError(f"registry hive is corrupt: {_short(exc)}", source=name) from exc

    @classmethod
    def from_source(cls, source: ByteSource, name: str = "hive") -> Hive:
        """The hive in ``source`` (a file on a volume), held once: by regipy."""
        head = source.read_at(0, min(source.size, HEADER_BYTES))
        header = parse_header(head, name, size=source.size)
        return cls(None, name, _source=(source, header))

    def close(self) -> None:
        """Let go of regipy's copy of the hive (later calls raise CorruptError)."""
        with self._lock:
            self._reg = None

    @property
    def dirty(self) -> bool:
        return self.header.dirty

    @contextlib.contextmanager
    def _guard(self, key: str) -> Iterator[None]:
        """Serialise regipy calls and turn whatever they raise into vcbfs errors."""
        with self._lock:
            try:
                yield
            except VcbfsError:
                raise
            except Exception as exc:
                raise CorruptError(
                    f"registry key {key} is corrupt: {_short(exc)}", source=self.name
                ) from exc

    def _children(self, nk: Any, path: str) -> list[Any]:
        """The subkey nodes of ``nk``, all of them or CorruptError."""
        count = nk.subkey_count
        subs = list(nk.iter_subkeys() or ()) if count else []
        if len(subs) != count:
            raise CorruptError(
                f"registry key {path} is corrupt: it counts {count} subkeys but its subkey "
                f"list holds {len(subs)}",
                source=self.name,
            )
        return subs

    def _key(self, parts: list[str]) -> Any:
        nk = self._reg.root
        for depth, part in enumerate(parts):
            here = "\\" + "\\".join(parts[:depth])
            want = part.upper()
            found = [s for s in self._children(nk, here) if s.name.upper() == want]
            if not found:
                there = "\\" + "\\".join(parts[: depth + 1])
                raise NotFoundError(f"no registry key {there}", source=self.name)
            nk = found[0]
        return nk

    def values(self, key: str) -> dict[str, RegValue]:
        """The values of ``key`` by name (``"(default)"`` for the unnamed one)."""
        parts = _key_parts(key)
        path = "\\" + "\\".join(parts)
        out: dict[str, RegValue] = {}
        with self._guard(path):
            nk = self._key(parts)
            read = 0
            for v in nk.iter_values(trim_values=False):
                read += 1
                data = v.value
                if v.value_type in _BINARY_TYPES and isinstance(data, str):
                    data = bytes.fromhex(data)  # a ValueError becomes CorruptError
                out[v.name] = RegValue(v.name, str(v.value_type), data)
            if read < nk.values_count:
                self.notes.append(
                    f"registry key {path} counts {nk.values_count} values but only {read} "
                    "could be read"
                )
        return out

    def binary_values(self, key: str) -> dict[str, bytes]:
        """The values of ``key`` whose data is binary, as bytes; other types are left out."""
        return {n: v.data for n, v in self.values(key).items() if isinstance(v.data, bytes)}

    def subkeys(self, key: str) -> list[str]:
        """The names of the subkeys of ``key``, in hive order."""
        parts = _key_parts(key)
        path = "\\" + "\\".join(parts)
        with self._guard(path):
            return [sub.name for sub in self._children(self._key(parts), path)]


def mounted_devices(hive: Hive | bytes) -> dict[str, bytes]:
    r"""The binary values of ``MountedDevices`` (``\DosDevices\C:`` -> 12 or 24 bytes, ...).

    ``hive`` is a parsed ``Hive`` or the bytes of a SYSTEM hive.  Raises ``NotFoundError`` when the
    hive has no MountedDevices key and ``CorruptError`` when the hive is damaged.
    """
    if not isinstance(hive, Hive):
        hive = Hive(hive, "SYSTEM")
    return hive.binary_values("MountedDevices")
