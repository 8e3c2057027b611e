"""``vcbfs mount`` and ``vcbfs umount``.

``mount`` opens the VM image, mounts it, and returns only once the mount is serving; any error
before that is printed by the command itself with a non-zero exit.  Without ``-f`` the server
runs on in the background (forked, in its own session), with its PID in a run-state file so
that ``umount`` can wait for it to finish: when ``umount`` returns, the server has released
everything.  ``umount`` also cleans up a mount whose server died.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vcbfs.errors import NotFoundError, VcbfsError

__all__ = ["register"]

RUN_DIR = Path(os.environ.get("VCBFS_RUN_DIR", "/run/vcbfs"))
UMOUNT_WAIT = 60.0


class UsageError(VcbfsError, ValueError):
    """A bad option on the command line."""


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = verbs.add_parser("mount", help="mount a VM's disks as a read-only tree")
    m.add_argument("source", metavar="SOURCE", help="a .vmx, a .vmdk or a raw disk image")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    m.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="allow_other, uid=N, gid=N, umask=NNN (comma-separated)",
    )
    m.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    m.set_defaults(run=run_mount)
    u = verbs.add_parser("umount", help="unmount a vcbfs mount (also one whose server died)")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.set_defaults(run=run_umount)


def parse_options(values: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {
        "allow_other": False,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "umask": 0o022,
    }
    for item in ",".join(values).split(","):
        key, eq, value = item.strip().partition("=")
        if not key or key in ("ro", "default_permissions"):
            continue
        if key == "allow_other" and not eq:
            opts["allow_other"] = True
        elif key in ("uid", "gid", "umask") and eq:
            try:
                opts[key] = int(value, 8) & 0o777 if key == "umask" else int(value)
            except ValueError:
                raise UsageError(f"bad value in mount option {item!r}") from None
        else:
            raise UsageError(f"unknown mount option {item!r}")
    return opts


def _pidfile(mountpoint: str) -> Path:
    import hashlib

    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return RUN_DIR / f"mount-{key}.pid"


def run_mount(args: argparse.Namespace) -> int:
    from vcbfs.fs.mount import fuse_options, serve
    from vcbfs.fs.tree import Tree
    from vcbfs.vm.local import open_local_vm

    opts = parse_options(args.options)
    mountpoint = args.mountpoint
    if not os.path.isdir(mountpoint):
        raise NotFoundError("mount point is not a directory", source=mountpoint)
    umask = int(opts["umask"])  # type: ignore[call-overload]

    def start(ready: object) -> None:
        image = open_local_vm(args.source)
        tree = Tree(image, now_ns=time.time_ns(), dir_mode=0o555 & ~umask, file_mode=0o444 & ~umask)
        serve(
            tree,
            mountpoint,
            fuse_options(allow_other=bool(opts["allow_other"])),
            uid=int(opts["uid"]),
            gid=int(opts["gid"]),
            ready=ready,
        )  # type: ignore[arg-type]

    if args.foreground:
        start(None)
        return 0

    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            answer = pipe.read().decode(errors="replace")
        if answer == "ok":
            return 0
        os.waitpid(pid, 0)
        print(f"vcbfs: {answer or 'the mount server died while starting'}", file=sys.stderr)
        return 1

    os.close(r)
    os.setsid()
    code = 0
    try:

        def ready() -> None:
            RUN_DIR.mkdir(parents=True, exist_ok=True)
            _pidfile(mountpoint).write_text(str(os.getpid()))
            os.write(w, b"ok")
            os.close(w)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            _log_to_syslog()

        start(ready)
    except VcbfsError as exc:
        _tell(w, exc.describe())
        code = 1
    except BaseException as exc:  # the parent must hear of it; the traceback goes to the log
        _tell(w, f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        _pidfile(mountpoint).unlink(missing_ok=True)
        os._exit(code)


def _log_to_syslog() -> None:
    """A background server has no terminal: its log lines (a corrupt file's EIO) go to syslog."""
    import logging
    import logging.handlers

    if not os.path.exists("/dev/log"):
        return
    try:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError:
        return
    handler.setFormatter(logging.Formatter("vcbfs[%(process)d]: %(levelname)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def _tell(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode())
        os.close(fd)
    except OSError:
        pass  # already told "ok": the parent is gone


def run_umount(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    mountpoint = args.mountpoint
    pidfile = _pidfile(mountpoint)
    try:  # read before unmounting: the server removes the file as it exits
        pid: int | None = int(pidfile.read_text())
    except (OSError, ValueError):
        pid = None
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    done = subprocess.run([tool, "-u", mountpoint], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lazy = subprocess.run(
            [tool, "-u", "-z", mountpoint], capture_output=True, text=True, check=False
        )
        if lazy.returncode != 0:
            raise NotFoundError(done.stderr.strip() or "not mounted", source=mountpoint)
    if pid is None:
        return 0
    deadline = time.monotonic() + UMOUNT_WAIT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        print(f"vcbfs: the server (pid {pid}) is still finishing", file=sys.stderr)
        return 1
    pidfile.unlink(missing_ok=True)
    return 0
