"""``vcbfs disk``: look at a virtual disk without mounting it (like qemu-img info / virt-cat).

``disk info`` shows the delta chain, the extents, the capacity and the partitions; ``disk cat``
writes the raw bytes of the disk or of one partition to standard output.  When standard output
is a regular file, holes are skipped with ``lseek`` so the copy stays sparse.  ``disk ls`` and
``disk cat FILE`` read the NTFS volume inside.

The readers are imported by the verbs that use them, not at start-up: a ``disk cat`` of a flat
disk is I/O bound, and Python's start-up is part of its time.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vcbfs.cli.common import add_location_options, location_from_args
from vcbfs.errors import NotFoundError, VcbfsError

if TYPE_CHECKING:
    from vcbfs.blocks.partitions import PartitionTable
    from vcbfs.blocks.source import ByteSource
    from vcbfs.ntfs.volume import NtfsVolume

__all__ = ["register"]


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    disk = verbs.add_parser("disk", help="inspect a virtual disk (VMDK or raw image)")
    sub = disk.add_subparsers(dest="disk_verb", metavar="COMMAND", required=True)

    info = sub.add_parser("info", help="chain, extents, capacity and partitions of a disk")
    info.add_argument("path", metavar="PATH", help="a .vmdk, a raw image, or an https URL")
    info.add_argument("--json", action="store_true", help="print JSON")
    add_location_options(info)
    info.set_defaults(run=run_info)

    cat = sub.add_parser(
        "cat", help="write a disk, a partition, or a file inside an NTFS volume to stdout"
    )
    cat.add_argument("path", metavar="PATH", help="a .vmdk, a raw image, or an https URL")
    cat.add_argument(
        "file",
        metavar="FILE[:STREAM]",
        nargs="?",
        help="a file in the NTFS volume (and one of its named streams)",
    )
    cat.add_argument("--partition", type=int, metavar="N", help="only partition N")
    add_location_options(cat)
    cat.set_defaults(run=run_cat)

    ls = sub.add_parser("ls", help="list a directory of an NTFS volume inside a disk")
    ls.add_argument("path", metavar="PATH", help="a .vmdk, a raw image, or an https URL")
    ls.add_argument("dir", metavar="DIR", nargs="?", default="/", help="directory (default /)")
    ls.add_argument("--partition", type=int, metavar="N", help="the volume in partition N")
    ls.add_argument("-l", dest="long", action="store_true", help="sizes, times, attributes")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_location_options(ls)
    ls.set_defaults(run=run_ls)


def run_info(args: argparse.Namespace) -> int:
    import json

    from vcbfs.blocks.partitions import read_partitions
    from vcbfs.blocks.vmdk.disk import VirtualDisk, open_disk

    with open_disk(location_from_args(args.path, args)) as disk:
        assert isinstance(disk, VirtualDisk)
        table = read_partitions(disk)
        info = disk.describe()
        info["partitions"] = _table_info(table)
        if args.json:
            json.dump(info, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(format_info(info))
    return 0


def _partition(disk: ByteSource, number: int) -> ByteSource:
    from vcbfs.blocks.partitions import read_partitions

    table = read_partitions(disk)
    matches = [p for p in table.partitions if p.number == number]
    if not matches:
        numbers = ", ".join(str(p.number) for p in table.partitions) or "none"
        raise NotFoundError(f"no partition {number} (partitions: {numbers})", source=disk.name)
    return matches[0].source(disk)


def _volume(disk: ByteSource, number: int | None) -> NtfsVolume:
    """The NTFS volume in partition ``number``, or the only one there is."""
    from vcbfs.ntfs.volume import NtfsVolume

    if number is not None:
        return NtfsVolume(_partition(disk, number))
    if disk.read_at(3, 8) == b"NTFS    ":  # a bare volume image, no partition table
        return NtfsVolume(disk)
    from vcbfs.blocks.partitions import read_partitions

    table = read_partitions(disk)
    found = []
    for p in table.partitions:
        if not p.supported:
            continue
        if p.source(disk).read_at(3, 8) == b"NTFS    ":
            found.append(p)
    if len(found) != 1:
        numbers = ", ".join(str(p.number) for p in found) or "none"
        raise NotFoundError(
            f"choose a volume with --partition (NTFS partitions: {numbers})", source=disk.name
        )
    return NtfsVolume(found[0].source(disk))


def _open(args: argparse.Namespace) -> ByteSource:
    """The disk at ``args.path``; a local bare NTFS volume opens as itself (no VMDK code)."""
    if not args.path.startswith(("https://", "http://")):
        from vcbfs.blocks.local import LocalSource

        local = LocalSource(args.path)
        if local.read_at(3, 8) == b"NTFS    ":
            return local
        local.close()
    from vcbfs.blocks.vmdk.disk import open_disk

    return open_disk(location_from_args(args.path, args))


def run_cat(args: argparse.Namespace) -> int:
    from vcbfs.blocks.copy import copy_to_fd

    with _open(args) as disk:
        source: ByteSource = disk
        if args.file is not None:
            volume = _volume(disk, args.partition)
            path, stream = _split_stream(args.file)
            try:
                source = volume.open(volume.lookup(path), stream)
                sys.stdout.flush()
                copy_to_fd(source, sys.stdout.fileno())
            except VcbfsError as exc:
                raise exc.about(args.file) from exc
            return 0
        elif args.partition is not None:
            source = _partition(disk, args.partition)
        sys.stdout.flush()
        copy_to_fd(source, sys.stdout.fileno())
    return 0


def _split_stream(spec: str) -> tuple[str, str]:
    """``dir/file.txt:stream`` -> (path, stream); Windows names cannot hold a colon."""
    head, _, last = spec.replace("\\", "/").rpartition("/")
    name, colon, stream = last.partition(":")
    return (f"{head}/{name}" if head else name), (stream if colon else "")


def run_ls(args: argparse.Namespace) -> int:
    import json

    with _open(args) as disk:
        volume = _volume(disk, args.partition)
        number = volume.lookup(args.dir)
        rows = []
        for entry in volume.iterdir(number):
            row: dict[str, Any] = {
                "name": entry.name,
                "record": entry.record,
                "type": "dir" if entry.is_dir else "file",
            }
            if args.long or args.json:
                st = volume.stat(entry.record)
                if st.reparse is not None:
                    row["type"] = st.reparse.kind
                    if st.reparse.target:
                        row["target"] = st.reparse.target
                row.update(
                    size=st.size,
                    allocated=st.allocated,
                    links=st.links,
                    modified=_iso(st.modified),
                    attributes=f"0x{st.attributes:08x}",
                )
                streams = volume.streams(entry.record)
                if streams:
                    row["streams"] = {name: size for name, size in streams}
            rows.append(row)
        if args.json:
            json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
        elif args.long:
            for r in rows:
                link = f" -> {r['target']}" if "target" in r else ""
                sys.stdout.write(
                    f"{r['type']:<14} {r['links']:>3} {r['size']:>14} "
                    f"{r['modified']}  {r['name']}{link}\n"
                )
        else:
            for r in rows:
                sys.stdout.write(r["name"] + ("/" if r["type"] == "dir" else "") + "\n")
    return 0


def _iso(ns: int) -> str:
    """A time as UTC date and time; past year 9999 (NTFS times reach 30828) as seconds."""
    try:
        return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return f"{ns // 10**9} s after 1970"


def _table_info(table: PartitionTable) -> dict[str, Any]:
    info: dict[str, Any] = {"scheme": table.scheme}
    if table.mbr_signature is not None:
        info["mbr_signature"] = f"0x{table.mbr_signature:08x}"
    if table.disk_guid is not None:
        info["disk_guid"] = str(table.disk_guid)
    info["entries"] = [
        {
            "number": p.number,
            "start": p.start,
            "size": p.size,
            "type": p.type,
            "type_name": p.type_name,
            **({"guid": str(p.guid)} if p.guid else {}),
            **({"name": p.name} if p.name else {}),
            **({"bootable": True} if p.bootable else {}),
            **({"logical": True} if p.logical else {}),
            **({"unsupported": p.reason} if not p.supported else {}),
        }
        for p in table.partitions
    ]
    if table.notes:
        info["notes"] = list(table.notes)
    return info


def human(n: int) -> str:
    """Bytes as a short binary size: 512 B, 64.0 MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_info(info: dict[str, Any]) -> str:
    """The human view of ``disk info``."""
    out = [info["file"]]
    chain = info["chain"]
    depth = f" (chain of {len(chain)})" if len(chain) > 1 else ""
    out.append(f"  format     {info['format']}{depth}")
    out.append(f"  capacity   {human(info['capacity'])} ({info['capacity']} bytes)")
    out.append("  chain")
    for i, layer in enumerate(chain):
        line = f"    {i}  {layer['file']}  {layer['format']}"
        if layer.get("cid"):
            line += f"  CID {layer['cid']}"
        if layer.get("parent"):
            line += f"  parent {layer['parent']} (CID {layer.get('parent_cid', '?')})"
        out.append(line)
        for ext in layer["extents"]:
            extra = ""
            if "grain_size" in ext:
                extra += f"  grain {human(ext['grain_size'])}"
            if ext.get("compressed"):
                extra += f"  {ext['compressed']}-compressed"
            if ext.get("offset"):
                extra += f"  at {ext['offset']}"
            if ext.get("unreadable"):
                extra += f"  UNREADABLE: {ext['unreadable']}"
            out.append(f"       {ext['type']:<10} {human(ext['size']):>10}  {ext['file']}{extra}")
    parts = info["partitions"]
    head = f"  partitions ({parts['scheme']}"
    if "mbr_signature" in parts:
        head += f", disk signature {parts['mbr_signature']}"
    if "disk_guid" in parts:
        head += f", disk GUID {parts['disk_guid']}"
    out.append(head + ")")
    for p in parts["entries"]:
        line = (
            f"    {p['number']:>3}  start {p['start']:>14}  size {human(p['size']):>10}"
            f"  {p['type']}  {p['type_name']}"
        )
        for key in ("name", "guid"):
            if p.get(key):
                line += f"  {key} {p[key]}"
        if p.get("unsupported"):
            line += f"  UNSUPPORTED: {p['unsupported']}"
        out.append(line)
    for note in parts.get("notes", []):
        out.append(f"  note: {note}")
    return "\n".join(out) + "\n"
