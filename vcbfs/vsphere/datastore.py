"""Datastore files as Locations: ``[ds] dir/file.vmdk`` → a local path or an HTTPS URL.

Like VCB's transports, the ways to reach a datastore are tried in the order the user gives:
``local`` reads a datastore mounted on the proxy (SAN or NFS: ``--datastore-path DS=/mnt/ds``),
``https`` reads through vCenter/ESXi's ``/folder`` file interface with the session's cookie.
Either way the file opens behind the shared block cache, and a VMDK's parent (which
descriptors often name by an absolute ``/vmfs/volumes/...`` path) is looked up beside it.

Names from the inventory and from the files stay inside the datastore roots the settings name
(``/vmfs/volumes/NAME-or-UUID/...`` maps to the datastore's root) or a directory the user
allows: see ``vcbfs.blocks.confine``.  Over HTTPS the datastore interface confines them itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from pyVmomi import vim

from vcbfs.blocks.cache import CachedLocation
from vcbfs.blocks.confine import Box, ConfinementError
from vcbfs.blocks.http import HttpLocation, HttpOptions, HttpSession
from vcbfs.blocks.local import LocalLocation
from vcbfs.blocks.source import Location
from vcbfs.errors import NotFoundError, UnsupportedError, VcbfsError
from vcbfs.vsphere.session import Session

__all__ = ["Datastores", "parse_ds_path"]

log = logging.getLogger(__name__)
_DS_PATH = re.compile(r"^\[([^\]]+)\]\s*(.*)$")
MAX_SMALL = 16 << 20
# Over HTTPS a round trip costs: read far ahead, in the background (measured in README).
REMOTE_CACHE = {"max_readahead": 16 << 20, "background": True}


def parse_ds_path(text: str) -> tuple[str, str]:
    """``"[ds1] vm/vm.vmdk"`` → ``("ds1", "vm/vm.vmdk")``."""
    m = _DS_PATH.match(text.strip())
    if not m:
        raise NotFoundError(f"not a datastore path: {text!r}")
    return m[1], m[2].lstrip("/")


class Datastores:
    """How this proxy reaches each datastore, and the datacenter each one belongs to."""

    def __init__(
        self,
        session: Session,
        *,
        local: Sequence[tuple[str, str]] = (),
        transports: Sequence[str] = ("local", "https"),
        allow: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self.session = session
        self.local = list(local)
        self.transports = list(transports)
        self.allow = list(allow)
        self._dc: dict[str, str] | None = None
        self._uuids: dict[str, str] = {}  # datastore name -> its VMFS/NFS volume UUID
        self._box: Box | None = None
        options = HttpOptions(
            verify=not session.insecure,
            ca_file=session.ca_file,
            thumbprint=session.thumbprint,
            cookie=session.cookie(),
        )
        self.http = HttpSession(options, renew_cookie=session.fresh_cookie)

    def close(self) -> None:
        self.http.close()

    def _datacenters(self) -> dict[str, str]:
        """Datastore name → the inventory path of its datacenter (``dcPath``).

        Only folders, datacenters and datastores are read: not the (many) VMs and hosts.
        """
        if self._dc is None:
            retrieve = self.session.retrieve
            parents: dict[Any, tuple[str, Any]] = {
                obj: (str(v.get("name", "")), v.get("parent"))
                for obj, v in retrieve(vim.Folder, ["name", "parent"])
            }
            stores = {}
            for obj, v in retrieve(vim.Datastore, ["name", "summary.url"]):
                stores[obj] = str(v.get("name", ""))
                url = str(v.get("summary.url") or "")  # ds:///vmfs/volumes/UUID/
                if "/vmfs/volumes/" in url:
                    uuid = url.split("/vmfs/volumes/", 1)[1].strip("/").split("/")[0]
                    if uuid:
                        self._uuids[stores[obj]] = uuid
            found: dict[str, str] = {}
            for _dc, v in retrieve(vim.Datacenter, ["name", "parent", "datastore"]):
                parts, parent = [str(v.get("name", ""))], v.get("parent")
                for _ in range(64):  # the folders above it, up to the root folder
                    name, above = parents.get(parent, ("", None))
                    if above is None:  # the root folder is not part of the path
                        break
                    parts.append(name)
                    parent = above
                dc_path = "/".join(reversed(parts))
                for ds in v.get("datastore") or ():
                    if stores.get(ds):
                        found.setdefault(stores[ds], dc_path)
            self._dc = found
        return self._dc

    def box(self) -> Box:
        """Where names on locally mounted datastores may lead: their roots (by name, and by
        UUID once the inventory has told them) and the allowed directories."""
        if self._box is None:
            with contextlib.suppress(VcbfsError):  # for the UUIDs: a convenience only
                self._datacenters()
            stores: dict[str, str] = dict(self.local)
            for name, uuid in self._uuids.items():
                if name in stores:
                    stores.setdefault(uuid, stores[name])
            self._box = Box.of(self.allow, stores)
        return self._box

    def location(self, ds_path: str) -> Location:
        """The file at ``[ds] path`` through the first transport that can reach it."""
        ds, path = parse_ds_path(ds_path)
        tried = []
        for transport in self.transports:
            if transport == "local":
                for name, _ in self.local:
                    if name == ds:
                        box = self.box()
                        real = box.datastores[name]
                        candidate = box.resolve(real, path, ds_path)
                        if os.path.commonpath([candidate, real]) != real:
                            raise ConfinementError(
                                f"leads outside datastore {ds}'s root {real}", source=ds_path
                            )
                        if os.path.isfile(candidate):
                            return CachedLocation(LocalLocation(candidate, box, named=False))
                        tried.append(f"local: {candidate} not found")
            elif transport == "https":
                dc = self._datacenters().get(ds)
                if dc is None:
                    tried.append(f"https: datastore {ds!r} not in any datacenter")
                    continue
                host = self.session.host
                netloc = f"[{host}]" if ":" in host else host
                if self.session.port != 443:
                    netloc += f":{self.session.port}"
                url = (
                    f"https://{netloc}/folder/{quote(path)}"
                    f"?dcPath={quote(dc, safe='')}&dsName={quote(ds, safe='')}"
                )
                return CachedLocation(HttpLocation(self.http, url), **REMOTE_CACHE)
        raise UnsupportedError(
            f"no transport reaches this file ({'; '.join(tried) or 'none configured'})",
            source=ds_path,
        )

    def read_small(self, ds_path: str) -> bytes:
        """A whole small file (a .vmx, an .nvram)."""
        source = self.location(ds_path).open()
        try:
            if source.size > MAX_SMALL:
                raise UnsupportedError(f"{source.size} bytes is too big", source=ds_path)
            return source.read_at(0, source.size)
        finally:
            source.close()
