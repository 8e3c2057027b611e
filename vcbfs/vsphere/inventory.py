"""Finding VMs: one PropertyCollector call, VCB's search specifiers, the VM name cache.

VCB named VMs with ``name:``, ``ipaddr:`` (an IP or DNS name), ``uuid:`` (BIOS or instance UUID),
``moref:``, ``powerstate:on|off|suspended``, ``any:`` and ``none:``; vcbfs accepts the same.  A
powered-off VM has no guest IP, so every IP seen is remembered in the VM name cache
(``VMNAMECACHE``) and ``ipaddr:`` still finds the VM later.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyVmomi import vim

from vcbfs.errors import NotFoundError
from vcbfs.vsphere.session import Session
from vcbfs.vsphere.spec import Spec

__all__ = ["NameCache", "VmInfo", "as_json", "find_vms", "list_vms", "select"]

log = logging.getLogger(__name__)

PROPS = (
    "name",
    "config.uuid",
    "config.instanceUuid",
    "config.template",
    "runtime.powerState",
    "guest.ipAddress",
    "guest.hostName",
    "guest.net",
    "summary.config.vmPathName",
)
POWER = {"poweredOn": "on", "poweredOff": "off", "suspended": "suspended"}


@dataclass(frozen=True)
class VmInfo:
    """What identifies a VM and what ``vcbfs ls`` prints; ``ref`` is the pyvmomi object."""

    moref: str
    name: str
    uuid: str
    instance_uuid: str
    ipaddr: str
    hostname: str
    power: str  # on, off, suspended
    template: bool
    vmx_path: str  # "[datastore] dir/name.vmx"
    ips: tuple[str, ...] = ()
    ref: Any = field(default=None, compare=False, repr=False)

    def summary(self) -> dict[str, str]:
        return {
            "moref": self.moref,
            "name": self.name,
            "uuid": self.uuid,
            "instance_uuid": self.instance_uuid,
            "ipaddr": self.ipaddr,
            "hostname": self.hostname,
            "power": self.power,
        }


def _ips(values: dict[str, Any]) -> tuple[str, ...]:
    found = [values.get("guest.ipAddress") or ""]
    for nic in values.get("guest.net") or ():
        found.extend(nic.ipAddress or ())
    return tuple(dict.fromkeys(ip for ip in found if ip))


def list_vms(session: Session, *, templates: bool = False) -> list[VmInfo]:
    """Every VM (templates left out unless asked), in name order, from one paged retrieval."""
    vms = []
    for obj, v in session.retrieve(vim.VirtualMachine, PROPS):
        template = bool(v.get("config.template"))
        if template and not templates:
            continue
        ips = _ips(v)
        vms.append(
            VmInfo(
                moref=obj._moId,
                name=str(v.get("name", obj._moId)),
                uuid=str(v.get("config.uuid") or "").lower(),
                instance_uuid=str(v.get("config.instanceUuid") or "").lower(),
                ipaddr=ips[0] if ips else "",
                hostname=str(v.get("guest.hostName") or ""),
                power=POWER.get(str(v.get("runtime.powerState")), "unknown"),
                template=template,
                vmx_path=str(v.get("summary.config.vmPathName") or ""),
                ips=ips,
                ref=obj,
            )
        )
    vms.sort(key=lambda vm: (vm.name.lower(), vm.moref))
    return vms


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _resolve(name: str) -> set[str]:
    try:
        return {ai[4][0] for ai in socket.getaddrinfo(name, None)}
    except OSError:
        return set()


def select(vms: Iterable[VmInfo], spec: Spec, cache: NameCache | None = None) -> list[VmInfo]:
    """The VMs ``spec`` names, in inventory order (empty for ``none:``)."""
    vms = list(vms)
    kind, value = spec.kind, spec.value
    if kind == "any":
        return vms
    if kind == "none":
        return []
    if kind == "powerstate":
        return [vm for vm in vms if vm.power == value.lower()]
    if kind == "moref":
        return [vm for vm in vms if vm.moref == value]
    if kind == "uuid":
        u = value.lower()
        return [vm for vm in vms if u in (vm.uuid, vm.instance_uuid)]
    if kind == "name":
        exact = [vm for vm in vms if vm.name == value]
        return exact or [vm for vm in vms if vm.name.lower() == value.lower()]
    # ipaddr: an IP, or a DNS name matched against guest host names, then resolved.
    wanted = {value} if _is_ip(value) else set()
    if not wanted:
        named = [vm for vm in vms if vm.hostname and vm.hostname.lower() == value.lower()]
        if named:
            return named
        wanted = _resolve(value)
    live = [vm for vm in vms if wanted & set(vm.ips)]
    if live or cache is None:
        return live
    known = cache.morefs_for(wanted, value)
    return [vm for vm in vms if vm.moref in known]


class NameCache:
    """VMNAMECACHE: each VM's last seen IPs and host name, so ``ipaddr:`` finds powered-off VMs.

    A JSON file replaced atomically; an unreadable cache is ignored (it is only a cache).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
            vms = data.get("vms", {})
            return vms if isinstance(vms, dict) else {}
        except (OSError, ValueError, AttributeError):
            return {}

    def update(self, vms: Iterable[VmInfo]) -> None:
        """Remember the IPs and host names of the VMs that have them now."""
        known = self.load()
        changed = False
        for vm in vms:
            if not vm.ips and not vm.hostname:
                continue
            entry = {
                "name": vm.name,
                "uuid": vm.uuid,
                "ips": list(vm.ips),
                "hostname": vm.hostname,
            }
            old = known.get(vm.moref, {})
            if {k: old.get(k) for k in entry} != entry:
                known[vm.moref] = {**entry, "seen": int(time.time())}
                changed = True
        if changed:
            self._write(known)

    def morefs_for(self, ips: set[str], name: str) -> set[str]:
        out = set()
        for moref, entry in self.load().items():
            if ips & set(entry.get("ips") or ()) or (
                str(entry.get("hostname") or "").lower() == name.lower()
            ):
                out.add(moref)
        return out

    def _write(self, vms: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".vmnames.")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "vms": vms}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the VM name cache %s: %s", self.path, exc)
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)


def find_vms(
    session: Session, spec: Spec, cache: NameCache | None = None, *, require: bool = True
) -> list[VmInfo]:
    """The VMs matching ``spec`` now (the cache updated on the way); none is an error if asked."""
    vms = list_vms(session)
    if cache is not None:
        cache.update(vms)
    found = select(vms, spec, cache)
    if require and not found and spec.kind != "none":
        raise NotFoundError(f"no VM matches {spec}", source=session.host)
    return found


def as_json(vms: Iterable[VmInfo]) -> str:
    return json.dumps([vm.summary() for vm in vms], indent=1)
