"""Waiting for vSphere tasks: poll the task's state through the PropertyCollector, bounded.

``task.info`` read through pyvmomi's accessors fails for tasks on snapshots (their
``info.entity`` is not a ManagedEntity) and some servers drop the connection over unset
properties, so only ``info.state``, ``info.error`` and ``info.result`` are read, and only
through the PropertyCollector, which works the same on vCenter, ESXi and the simulator.
"""

from __future__ import annotations

import time
from typing import Any

from vcbfs.errors import VsphereError
from vcbfs.vsphere.session import Session, fault_text

__all__ = ["TaskError", "TaskTimeout", "wait_task"]

POLL_FIRST = 0.1
POLL_MAX = 2.0


class TaskError(VsphereError):
    """A task ended in error; ``fault`` is the vSphere fault it carried (or None)."""

    def __init__(self, message: str, *, fault: Any = None, source: str | None = None):
        self.fault = fault
        super().__init__(message, source=source)


class TaskTimeout(TaskError):
    """The task had not ended when the wait ran out; it goes on in vSphere."""


def wait_task(session: Session, task: Any, *, what: str, timeout: float = 3600.0) -> Any:
    """Wait for ``task`` to finish; its result, or TaskError naming ``what`` and the fault."""
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST
    while True:
        info = session.properties(task, ["info.state", "info.error", "info.result"])
        state = str(info.get("info.state", ""))
        if state == "success":
            return info.get("info.result")
        if state == "error":
            fault = info.get("info.error")
            text = fault_text(fault) if fault is not None else "failed without a reason"
            raise TaskError(f"{what}: {text}", fault=fault, source=session.host)
        if time.monotonic() + delay > deadline:
            raise TaskTimeout(
                f"{what}: still {state or 'pending'} after {timeout:.0f} s; "
                "the task goes on in vSphere",
                source=session.host,
            )
        time.sleep(delay)
        delay = min(POLL_MAX, delay * 1.5)
