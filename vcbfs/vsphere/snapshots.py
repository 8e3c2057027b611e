"""Backup snapshots: taken safely, released always, never leaked, never someone else's.

Every snapshot vcbfs takes is

- **journaled**: an entry naming the VM, the snapshot's unique name and the owning process is
  written (and fsynced) in the state directory *before* the snapshot is requested, and removed
  only after the snapshot is gone, so a crash at any point leaves a trace;
- **tagged**: its name is ``vcbfs-backup <proxy> <id>`` and its description says who took it:
  the machine id, the boot id, the PID and that process's start time, so even with a lost
  journal vcbfs can tell its own snapshots from a user's, or from another proxy's that has the
  same host name (proxies cloned from one template do).

``cleanup`` releases what a journal entry of a dead process names, and snapshots tagged by this
machine that no live process owns.  It never touches a snapshot without vcbfs's tag, another
machine's, or one a running vcbfs holds.  A PID alone proves nothing (it is reused): an owner
is alive only if a process with that PID and that start time runs in this boot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyVmomi import vim, vmodl

from vcbfs.errors import VsphereError
from vcbfs.process import boot_id, machine_id, start_time
from vcbfs.vsphere.inventory import VmInfo
from vcbfs.vsphere.session import Session, fault_text
from vcbfs.vsphere.tasks import TaskError, TaskTimeout, wait_task

__all__ = [
    "Journal",
    "JournalEntry",
    "QuiesceError",
    "Snapshot",
    "cleanup",
    "describe",
    "release",
    "tag_fields",
    "take",
]

log = logging.getLogger(__name__)

PREFIX = "vcbfs-backup"
NAME_RE = re.compile(rf"^{PREFIX} (\S+) ([0-9a-f]{{32}})$")
CREATE_TIMEOUT = 3600.0
CANCEL_GRACE = 300.0  # after CREATE_TIMEOUT: how long a cancelled create may take to end
REMOVE_TIMEOUT = 6 * 3600.0  # consolidating a big delta takes long
MAX_TREE = 10_000


class QuiesceError(VsphereError):
    """The guest could not be quiesced (VMware Tools, VSS); the message names the VM."""


def proxy_name() -> str:
    """This proxy's name in snapshot tags: the host name, without spaces."""
    return re.sub(r"\s+", "_", socket.gethostname()) or "proxy"


# -- the journal -------------------------------------------------------------------------------


@dataclass
class JournalEntry:
    id: str
    proxy: str
    server: str  # the vCenter/ESXi host the snapshot was taken through
    vm_moref: str
    vm_uuid: str
    vm_name: str
    snapshot_name: str
    snapshot_moref: str = ""  # known once the snapshot exists
    pid: int = 0
    started: str = ""  # the owner's start time, so a reused PID is not taken for it
    boot: str = ""
    created: float = 0.0
    machine: str = ""  # the machine id of the proxy that took it (empty: an older vcbfs)

    def alive(self) -> bool:
        """Whether the process that took the snapshot is still running (and may hold it)."""
        return (
            self.pid > 0
            and self.boot == boot_id()
            and bool(self.started)
            and start_time(self.pid) == self.started
        )

    def here(self) -> bool:
        """Whether this machine wrote the entry (a state directory copied from a template
        holds another machine's entries: they are not this machine's to clean up)."""
        return not self.machine or self.machine == machine_id()


class Journal:
    """One JSON file per snapshot in ``<state dir>/journal``; written durably, removed last."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    def _path(self, entry_id: str) -> Path:
        return self.dir / f"{entry_id}.json"

    def write(self, entry: JournalEntry) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.dir / f".{entry.id}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(entry), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(entry.id))
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise VsphereError(
                f"cannot write the snapshot journal (no snapshot was taken): {exc}",
                source=str(self.dir),
            ) from None

    def remove(self, entry_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(entry_id).unlink()

    def entries(self) -> list[JournalEntry]:
        out = []
        if not self.dir.is_dir():
            return out
        for path in sorted(self.dir.glob("*.json")):
            try:
                out.append(JournalEntry(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("%s: unreadable journal entry left alone: %s", path, exc)
        return out


# -- taking and releasing ----------------------------------------------------------------------


@dataclass
class Snapshot:
    """A snapshot vcbfs took and must release."""

    ref: Any  # vim.vm.Snapshot
    vm: VmInfo
    entry: JournalEntry

    @property
    def moref(self) -> str:
        return str(self.ref._moId)


def _walk(trees: Any) -> Iterator[Any]:
    stack = list(trees or ())
    for _ in range(MAX_TREE):
        if not stack:
            return
        node = stack.pop()
        yield node
        stack.extend(node.childSnapshotList or ())


def snapshot_list(session: Session, vm_ref: Any) -> list[Any]:
    """Every snapshot of a VM as VirtualMachineSnapshotTree nodes (no children lists needed)."""
    values = session.properties(vm_ref, ["snapshot"])
    info = values.get("snapshot")
    return list(_walk(info.rootSnapshotList)) if info is not None else []


def take(
    session: Session,
    vm: VmInfo,
    journal: Journal,
    *,
    quiesce: bool = True,
    timeout: float = CREATE_TIMEOUT,
    grace: float = CANCEL_GRACE,
) -> Snapshot:
    """A tagged, journaled snapshot of ``vm`` (memory off; quiesced unless told not to).

    A create still running after ``timeout`` seconds is cancelled; what it makes within
    ``grace`` more seconds is removed at once, and after that it is left to ``cleanup``.
    """
    entry_id = uuid.uuid4().hex
    proxy = proxy_name()
    pid = os.getpid()
    entry = JournalEntry(
        id=entry_id,
        proxy=proxy,
        server=session.host,
        vm_moref=vm.moref,
        vm_uuid=vm.uuid,
        vm_name=vm.name,
        snapshot_name=f"{PREFIX} {proxy} {entry_id}",
        pid=pid,
        started=start_time(pid),
        boot=boot_id(),
        created=time.time(),
        machine=machine_id(),
    )
    journal.write(entry)  # before the request: a crash from here on leaves a trace
    description = describe(entry)
    what = f"snapshot of VM {vm.name!r} ({vm.moref})"

    def create() -> Any:
        return session.call_once(
            vm.ref.CreateSnapshot_Task,
            name=entry.snapshot_name,
            description=description,
            memory=False,
            quiesce=quiesce,
        )

    task = None
    try:
        try:
            task = create()
        except VsphereError as exc:
            made = _after_lost_create(session, vm, entry, journal, exc, timeout)
            if made is not None:
                ref = made
            else:  # it never reached vSphere: once more, on a fresh connection
                try:
                    task = create()
                except VsphereError as again:
                    _disown(entry, journal)
                    raise VsphereError(
                        f"{what}: {again.describe()}; if vSphere made it anyway, "
                        "`vcbfs cleanup` removes it",
                        source=session.host,
                    ) from None
        if task is not None:
            ref = wait_task(session, task, what=what, timeout=timeout)
    except TaskTimeout:
        outcome = _abandon(session, vm, entry, journal, task, grace)
        raise TaskTimeout(
            f"{what}: not taken after {timeout:.0f} s; {outcome}", source=session.host
        ) from None
    except (TaskError, vmodl.MethodFault) as exc:
        _forget_failed(session, vm, entry, journal)
        fault = exc.fault if isinstance(exc, TaskError) else exc
        if quiesce and _is_quiesce_fault(fault):
            raise QuiesceError(
                f"cannot quiesce VM {vm.name!r} ({vm.moref}) for a snapshot: "
                f"{fault_text(fault)}; fix VMware Tools/VSS in the guest, or take a "
                "crash-consistent snapshot with --no-quiesce",
                source=session.host,
            ) from None
        if isinstance(exc, TaskError):
            raise
        raise VsphereError(f"{what}: {fault_text(exc)}", source=session.host) from None
    entry.snapshot_moref = str(ref._moId)
    journal.write(entry)
    log.info("took %s of %s", entry.snapshot_name, vm.name)
    return Snapshot(ref, vm, entry)


def _after_lost_create(
    session: Session,
    vm: VmInfo,
    entry: JournalEntry,
    journal: Journal,
    exc: VsphereError,
    timeout: float,
    poll: float = 1.0,
) -> Any:
    """The connection was lost while CreateSnapshot was sent: vSphere may have made the
    snapshot, be making it, or never have seen the request.  The snapshot of this entry's
    name once no create runs on the VM, or None if there is none (the request can be sent
    again).  Where that cannot be found out, the entry is disowned (so that ``cleanup`` takes
    a snapshot made later) and the error goes up."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            for node in snapshot_list(session, vm.ref):
                if node.name == entry.snapshot_name:
                    log.info("%s of %s was made; its answer was lost", node.name, vm.name)
                    return node.snapshot
            if not create_running(session, vm.ref):
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(poll)
    except VsphereError as again:
        exc = again
    _disown(entry, journal)
    raise VsphereError(
        f"snapshot of VM {vm.name!r} ({vm.moref}): {exc.describe()}; if vSphere made it "
        "anyway, `vcbfs cleanup` removes it",
        source=session.host,
    ) from None


def _disown(entry: JournalEntry, journal: Journal) -> None:
    """Leave the entry's snapshot, should it exist, to ``cleanup``: no process owns it."""
    entry.pid, entry.started = 0, ""
    journal.write(entry)


def create_running(session: Session, vm_ref: Any) -> bool:
    """Whether a CreateSnapshot task is queued or running on the VM (anyone's): from the VM's
    recent tasks, and the task manager's (vcsim keeps only those)."""
    tasks = {}
    for owner in (vm_ref, session.content.taskManager):
        for task in session.properties(owner, ["recentTask"]).get("recentTask") or ():
            tasks[task._moId] = task
    props = ["info.descriptionId", "info.state", "info.entity"]
    for _task, info in session.properties_of(tasks.values(), props):
        entity = info.get("info.entity")
        if (
            entity is not None
            and entity._moId == vm_ref._moId
            and str(info.get("info.descriptionId", "")).endswith(".createSnapshot")
            and str(info.get("info.state")) in ("queued", "running")
        ):
            return True
    return False


def describe(entry: JournalEntry) -> str:
    """A snapshot's description: for the administrator, and the owner's tag for ``cleanup``."""
    owner = f"id {entry.id}, machine {entry.machine or '-'}, boot {entry.boot or '-'}"
    owner += f", pid {entry.pid}, started {entry.started or '-'}"
    return (
        f"Taken by vcbfs on backup proxy {entry.proxy} ({owner}) for a file-level backup; "
        "vcbfs removes it when the backup ends. Do not revert to it."
    )


_TAG_FIELD = re.compile(r"\b(id|machine|boot|pid|started) ([0-9a-f-]{1,64})\b")


def tag_fields(description: str) -> dict[str, str]:
    """The owner's fields a description written by ``describe`` holds (those present)."""
    fields: dict[str, str] = {}
    for key, value in _TAG_FIELD.findall(description[:4096]):
        fields.setdefault(key, value)
    return fields


def _is_quiesce_fault(fault: Any) -> bool:
    if isinstance(fault, vim.fault.ApplicationQuiesceFault | vim.fault.GuestOperationsFault):
        return True
    return "quiesc" in fault_text(fault).lower() if fault is not None else False


def _abandon(
    session: Session, vm: VmInfo, entry: JournalEntry, journal: Journal, task: Any, grace: float
) -> str:
    """After a create timed out: cancel it, and remove the snapshot should it still be made.

    If the task is still running after ``grace`` seconds, its journal entry is disowned (no
    owning process) so that the next ``vcbfs cleanup`` removes the snapshot once it exists,
    even while this process runs on (a standing automount).  Says what became of it.
    """
    try:
        session.call(task.CancelTask)
    except vmodl.MethodFault as exc:
        log.info("cannot cancel the snapshot task on %s: %s", vm.name, fault_text(exc))
    what = f"the cancelled snapshot of VM {vm.name!r} ({vm.moref})"
    try:
        ref = wait_task(session, task, what=what, timeout=grace)
    except TaskTimeout:
        outcome = "the task still runs in vSphere; `vcbfs cleanup` removes its snapshot once made"
    except (TaskError, vmodl.MethodFault):
        _forget_failed(session, vm, entry, journal)
        return "the task was cancelled"
    else:
        try:
            _remove(session, ref, vm.name)
        except VsphereError as exc:
            outcome = f"it was made late and could not be removed ({exc}); `vcbfs cleanup` retries"
        else:
            journal.remove(entry.id)
            return "it was made late, and has been removed"
    _disown(entry, journal)  # owned by no process: cleanup may release it
    return outcome


def _forget_failed(session: Session, vm: VmInfo, entry: JournalEntry, journal: Journal) -> None:
    """After a failed create: remove a half-made snapshot of ours, if any, then the entry."""
    try:
        for node in snapshot_list(session, vm.ref):
            if node.name == entry.snapshot_name:
                _remove(session, node.snapshot, vm.name)
    except VsphereError as exc:
        log.warning("a failed snapshot of %s may remain: %s (vcbfs cleanup retries)", vm.name, exc)
        return
    journal.remove(entry.id)


def _remove(session: Session, ref: Any, vm_name: str) -> None:
    try:
        task = session.call(ref.RemoveSnapshot_Task, removeChildren=False, consolidate=True)
        wait_task(
            session, task, what=f"removing snapshot of VM {vm_name!r}", timeout=REMOVE_TIMEOUT
        )
    except vmodl.fault.ManagedObjectNotFound:
        return  # already gone: what we wanted
    except vmodl.MethodFault as exc:
        raise VsphereError(
            f"removing snapshot of VM {vm_name!r}: {fault_text(exc)}", source=session.host
        ) from None


def consolidation_needed(session: Session, vm_ref: Any) -> bool:
    try:
        return bool(
            session.properties(vm_ref, ["runtime.consolidationNeeded"]).get(
                "runtime.consolidationNeeded"
            )
        )
    except vmodl.MethodFault:
        return False


def release(session: Session, snap: Snapshot, journal: Journal) -> list[str]:
    """Remove the snapshot, then its journal entry; warnings for the administrator."""
    _remove(session, snap.ref, snap.vm.name)
    journal.remove(snap.entry.id)
    log.info("released %s of %s", snap.entry.snapshot_name, snap.vm.name)
    if consolidation_needed(session, snap.vm.ref):
        msg = (
            f"VM {snap.vm.name!r} ({snap.vm.moref}) needs disk consolidation after its snapshot "
            "was removed: consolidate it in vSphere"
        )
        log.warning("%s", msg)
        return [msg]
    return []


# -- cleanup after a crash ---------------------------------------------------------------------


def _owner_running(fields: dict[str, str]) -> bool:
    """Whether the vcbfs process a snapshot's tag names still runs: its PID, in this boot,
    with the start time it had when it took the snapshot (a reused PID has another)."""
    pid = fields.get("pid", "")
    if not pid.isdigit() or int(pid) <= 0:
        return False
    if fields.get("boot") != boot_id() or not fields.get("started", "").isdigit():
        return False
    return start_time(int(pid)) == fields["started"]


def _create_running_on(session: Session, vms: dict[str, Any], entry: JournalEntry) -> bool:
    vm = vms.get(entry.vm_moref)
    if vm is None:
        return False
    try:
        return create_running(session, vm[0])
    except VsphereError:
        return True  # cannot tell: keep the entry rather than lose track of a snapshot


@dataclass
class Action:
    """One thing cleanup did (or, in a dry run, would do)."""

    vm: str
    snapshot: str
    why: str
    done: bool = False
    error: str = ""
    kept: bool = False  # looked like ours, but cannot be proven so: left for the administrator

    def __str__(self) -> str:
        if self.error:
            state = "error: " + self.error
        elif self.kept:
            state = "left alone"
        else:
            state = "released" if self.done else "would release"
        return f"{self.vm}: {self.snapshot}: {state} ({self.why})"


def cleanup(session: Session, journal: Journal, *, dry_run: bool = False) -> list[Action]:
    """Release the snapshots vcbfs took here and nobody holds; keep everything else.

    "Here" is this machine: a journal entry it wrote, or a tag with this host name *and* this
    machine id.  A tag with this host name but no machine id (written by an older vcbfs) cannot
    be told from a clone's, so it is left alone and reported."""
    proxy, machine = proxy_name(), machine_id()
    live = set()
    stale: dict[str, JournalEntry] = {}
    for entry in journal.entries():
        if entry.alive() or not entry.here():
            live.add(entry.snapshot_name)  # held, or another machine's (a copied state dir)
        elif entry.server == session.host:
            stale[entry.snapshot_name] = entry
    actions: list[Action] = []
    vms = {
        obj._moId: (obj, v) for obj, v in session.retrieve(vim.VirtualMachine, ["name", "snapshot"])
    }
    found: set[str] = set()
    for moref, (ref, values) in vms.items():
        info = values.get("snapshot")
        if info is None:
            continue
        name = str(values.get("name", moref))
        for node in _walk(info.rootSnapshotList):
            m = NAME_RE.match(node.name or "")
            if not m or m[1] != proxy or node.name in live:
                continue  # not ours, another proxy's, or held by a running vcbfs
            if m[2] not in (node.description or ""):
                continue  # the name alone could be a user's copy: the id must be in both
            found.add(node.name)
            entry = stale.get(node.name)
            if entry is None:
                fields = tag_fields(node.description or "")
                if machine and fields.get("machine", machine) != machine:
                    continue  # another machine's with the same host name (a clone)
                if _owner_running(fields):
                    continue  # journaled elsewhere (another state directory) by a live vcbfs
                if machine and "machine" not in fields:
                    why = (
                        "tagged with this host name but no machine id (an older vcbfs), so it "
                        "may be another proxy's; remove it by hand if no other proxy is so named"
                    )
                    actions.append(Action(f"{name} ({moref})", node.name, why, kept=True))
                    continue
            why = (
                "its vcbfs process is gone" if entry else "tagged by this machine, no journal entry"
            )
            action = Action(f"{name} ({moref})", node.name, why)
            actions.append(action)
            if dry_run:
                continue
            try:
                _remove(session, node.snapshot, name)
                action.done = True
                if entry:
                    journal.remove(entry.id)
                if consolidation_needed(session, ref):
                    action.why += "; the VM needs disk consolidation"
            except VsphereError as exc:
                action.error = str(exc)
    for snap_name, entry in stale.items():
        if snap_name in found:
            continue
        if _create_running_on(session, vms, entry):
            # Its create may still make the snapshot: the entry stays for the next cleanup.
            actions.append(
                Action(
                    f"{entry.vm_name} ({entry.vm_moref})",
                    snap_name,
                    "a snapshot is still being created on this VM; run cleanup again later",
                    kept=True,
                )
            )
            continue
        # The snapshot is gone (or was never made): the entry only needs removing.
        actions.append(
            Action(
                f"{entry.vm_name} ({entry.vm_moref})",
                snap_name,
                "snapshot already gone; journal entry removed",
                done=not dry_run,
            )
        )
        if not dry_run:
            journal.remove(entry.id)
    return actions
