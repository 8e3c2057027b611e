"""Who is running on this machine: process identity from /proc, for ownership checks.

A PID alone is reused; a PID with its start time (and the boot it started in) names one
process.  An exited process that init has not reaped yet (a zombie) counts as finished.  A
host name is shared by proxies cloned from one template; the machine id is not (systemd makes
a new one on a clone's first boot, or ``systemd-machine-id-setup`` after clearing it).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["boot_id", "machine_id", "start_time"]


def boot_id() -> str:
    """This boot's id (empty where /proc does not say)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def machine_id() -> str:
    """This machine's id (/etc/machine-id, else D-Bus's copy); empty where there is none."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return ""


def start_time(pid: int) -> str:
    """A running process's start time in clock ticks since boot; empty if there is no such
    process or it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]
