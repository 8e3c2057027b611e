"""``vcbfs mount`` and ``vcbfs umount``.

``mount`` opens the VM image, mounts it, and returns only once the mount is serving; any error
before that is printed by the command itself with a non-zero exit.  Without ``-f`` the server
runs on in the background (forked, in its own session), with its PID in a run-state file so
that ``umount`` can wait for it to finish: when ``umount`` returns, the server has released
everything.  ``umount`` also cleans up a mount whose server died.

The server keeps no password or session cookie in its environment, cannot dump core, and keeps
its PID file and control socket only in a run directory that is its user's alone; ``umount``
does not act on a PID file that is a symbolic link or someone else's (see ``vcbfs.hygiene``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vcbfs.errors import NotFoundError, VcbfsError

if TYPE_CHECKING:
    from collections.abc import Callable

    from vcbfs.config import Settings
    from vcbfs.fs.automount import VmFolder
    from vcbfs.fs.tree import Tree

__all__ = ["register"]

log = logging.getLogger(__name__)


def _run_dir() -> Path:
    """Where servers record their PIDs and sockets: /run/vcbfs for root, else the user's own
    runtime directory (``$XDG_RUNTIME_DIR/vcbfs``); ``VCBFS_RUN_DIR`` overrides both."""
    if "VCBFS_RUN_DIR" in os.environ:
        return Path(os.environ["VCBFS_RUN_DIR"])
    if os.geteuid() != 0 and os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "vcbfs"
    return Path("/run/vcbfs")


RUN_DIR = _run_dir()
UMOUNT_WAIT = 60.0


class UsageError(VcbfsError, ValueError):
    """A bad option on the command line."""


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from vcbfs.cli.common import add_allow_option
    from vcbfs.cli.vsphere import add_vsphere_options

    m = verbs.add_parser(
        "mount",
        add_help=False,
        usage=(
            "vcbfs mount [options] SOURCE MOUNTPOINT\n"
            "       vcbfs mount --automount [options] [SPEC|FOLDER] MOUNTPOINT"
        ),
        help="mount a VM (local files, or a vSphere VM through a snapshot) as a read-only tree",
        description=(
            "vcbfs mount SOURCE MOUNTPOINT: SOURCE is a .vmx, .vmdk or raw image, or a VM "
            "specifier (name:, ipaddr:, uuid:, moref:, powerstate:, any:) naming vSphere VMs. "
            "vcbfs mount --automount [SPEC|FOLDER] MOUNTPOINT shows every VM as a directory, "
            "snapshotted on first use and released when idle."
        ),
    )
    m.add_argument("targets", nargs="+", metavar="SOURCE MOUNTPOINT", help=argparse.SUPPRESS)
    m.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="allow_other, uid=N, gid=N, umask=NNN, idle=SECONDS (comma-separated)",
    )
    m.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    m.add_argument(
        "--automount", action="store_true", help="a directory per VM, opened on first use"
    )
    m.add_argument(
        "--no-quiesce",
        action="store_true",
        help="take crash-consistent snapshots (no VMware Tools quiescing)",
    )
    m.add_argument(
        "--datastore-path",
        dest="datastore_paths",
        action="append",
        metavar="DS=PATH",
        help="read datastore DS from a local mount at PATH (SAN/NFS); repeatable, in order",
    )
    add_allow_option(m)
    m.add_argument(
        "--request-profile",
        metavar="FILE",
        help="count and time FUSE requests by type, and write the table to FILE as JSON when "
        "the mount ends (for benchmarks; off by default)",
    )
    m.add_argument(
        "--transport",
        dest="transports",
        metavar="LIST",
        help="the transports to try, in order: local,https (the default)",
    )
    add_vsphere_options(m)
    m.set_defaults(run=run_mount)
    u = verbs.add_parser("umount", help="unmount a vcbfs mount (also one whose server died)")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.set_defaults(run=run_umount)


NO_ID = (1 << 32) - 1  # (uid_t)-1: "no owner", not an owner the kernel accepts in a stat


def parse_options(values: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {
        "allow_other": False,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "umask": 0o022,
        "idle": None,
    }
    for item in ",".join(values).split(","):
        key, eq, value = item.strip().partition("=")
        if not key or key in ("ro", "default_permissions"):
            continue
        if key == "allow_other" and not eq:
            opts["allow_other"] = True
        elif key in ("uid", "gid", "umask", "idle") and eq:
            try:
                if key == "umask":
                    opts[key] = int(value, 8) & 0o777
                elif key == "idle":
                    opts[key] = float(value)
                    if not opts[key] > 0:  # type: ignore[operator]
                        raise ValueError(value)
                else:
                    opts[key] = int(value)
                    if not 0 <= opts[key] < NO_ID:  # type: ignore[operator]
                        raise ValueError(value)  # -1 would make every stat fail (EIO)
            except ValueError:
                raise UsageError(f"bad value in mount option {item!r}") from None
        else:
            raise UsageError(f"unknown mount option {item!r}")
    return opts


def mount_key(mountpoint: str) -> str:
    """A short name for a mount point in the run-state directory."""
    import hashlib

    return hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]


def _pidfile(mountpoint: str) -> Path:
    return RUN_DIR / f"mount-{mount_key(mountpoint)}.pid"


def control_path(mountpoint: str) -> Path:
    """The automount server's control socket (``vcbfs release`` talks to it)."""
    return RUN_DIR / f"mount-{mount_key(mountpoint)}.sock"


def _is_spec(text: str) -> bool:
    from vcbfs.vsphere.spec import KINDS

    kind, colon, _ = text.partition(":")
    return bool(colon) and kind.lower() in KINDS and not os.path.exists(text)


def run_mount(args: argparse.Namespace) -> int:
    from vcbfs.hygiene import drop_secret_env, no_core_dumps

    no_core_dumps()  # from before the password is read: a crash writes no core file with it
    opts = parse_options(args.options)
    if len(args.targets) > 2 or (len(args.targets) == 1 and not args.automount):
        raise UsageError("give SOURCE MOUNTPOINT (or --automount [SOURCE] MOUNTPOINT)")
    mountpoint = args.targets[-1]
    source = args.targets[0] if len(args.targets) == 2 else "any:"
    if not os.path.isdir(mountpoint):
        raise NotFoundError("mount point is not a directory", source=mountpoint)
    umask = int(opts["umask"])  # type: ignore[call-overload]
    modes = {"dir_mode": 0o555 & ~umask, "file_mode": 0o444 & ~umask}
    if opts["allow_other"]:
        log.warning(
            "allow_other: every local user can read the guest's files (its SAM and registry "
            "hives included) as far as the mode bits allow (now %03o for files; restrict with "
            "-o umask=077 or uid=/gid=)",
            modes["file_mode"],
        )
    vsphere = _is_spec(source)
    settings = None
    if vsphere:
        from vcbfs.cli.vsphere import settings_from_args

        settings = settings_from_args(args)
        settings.require_host()
        settings.require_password()  # asked here, on the terminal, before going to background
    elif not os.path.exists(source):
        raise NotFoundError(
            "no such file, and not a VM specifier (name:, ipaddr:, ...)", source=source
        )
    idle = opts["idle"] if opts["idle"] is not None else (settings.idle if settings else 300.0)
    # What was needed is read (the password is in settings, to log in again when the session
    # expires): the server's environment, its children's and /proc/PID/environ keep none of it.
    drop_secret_env()
    # The PID file (background) and the control socket (automount) go in a checked run dir.
    run_dir = None
    if not args.foreground:
        run_dir = _open_run_dir("record the server's PID")
    elif args.automount:
        run_dir = _open_run_dir("make the control socket")

    def start(ready: object) -> None:
        from vcbfs.fs.mount import fuse_options, serve

        closers: list[Callable[[], object]] = []
        model: Tree | VmFolder
        if vsphere:
            assert settings is not None
            model = _vsphere_model(args, settings, source, float(idle), modes, closers)
        else:
            allow = args.allow_paths or []
            model = _local_model(source, args.automount, float(idle), modes, allow)
        serve(
            model,
            mountpoint,
            fuse_options(allow_other=bool(opts["allow_other"])),
            uid=int(opts["uid"]),  # type: ignore[call-overload]
            gid=int(opts["gid"]),  # type: ignore[call-overload]
            ready=ready,  # type: ignore[arg-type]
            control=str(control_path(mountpoint)) if args.automount else None,
            cleanup=lambda: [c() for c in reversed(closers)],
            request_profile=(
                os.path.abspath(args.request_profile) if args.request_profile else None
            ),
        )

    if args.foreground:
        try:
            start(None)
        finally:
            if run_dir is not None:
                os.close(run_dir)
        return 0
    assert run_dir is not None
    pidname = _pidfile(mountpoint).name

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
        from vcbfs.hygiene import write_private_file

        try:  # never through a symbolic link planted under the PID file's name
            write_private_file(run_dir, pidname, str(os.getpid()).encode())
        except OSError as exc:
            raise VcbfsError(
                f"cannot record the server's PID there: {exc.strerror} (set VCBFS_RUN_DIR)",
                source=str(RUN_DIR),
            ) from None

        def ready() -> None:
            os.write(w, b"ok")
            os.close(w)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            _log_to_syslog()

        start(ready)
    except BaseException as exc:  # the parent must hear of it
        _tell(w, _reason(exc))
        code = 1
    finally:
        _forget_pid(run_dir, pidname)
        os._exit(code)


def _forget_pid(run_dir: int, name: str) -> None:
    """Remove the PID file if it still names this process (nothing planted in its place)."""
    from vcbfs.hygiene import read_private_file

    with contextlib.suppress(OSError):
        if read_private_file(run_dir, name, where="") == str(os.getpid()).encode():
            os.unlink(name, dir_fd=run_dir)


def _open_run_dir(purpose: str) -> int:
    """The run directory, created (0700) if missing and checked: a real directory owned by this
    user that nobody else can write to (else no PID file or socket in it can be trusted)."""
    from vcbfs.hygiene import UnsafeStateError, private_dir

    try:
        fd = private_dir(RUN_DIR, create=True)
    except UnsafeStateError:
        raise
    except OSError as exc:
        raise VcbfsError(
            f"cannot {purpose} there: {exc.strerror} (set VCBFS_RUN_DIR)", source=str(RUN_DIR)
        ) from None
    assert fd is not None
    return fd


def _read_pid(mountpoint: str) -> int | None:
    """The PID in the mount's PID file; None if there is none (or it is unreadable or not a
    number).  A run directory or PID file that another user could have planted or changed (a
    symbolic link, another owner, group- or other-writable) raises UnsafeStateError."""
    from vcbfs.hygiene import private_dir, read_private_file

    fd = private_dir(RUN_DIR, create=False)
    if fd is None:
        return None
    try:
        data = read_private_file(fd, _pidfile(mountpoint).name, where=str(RUN_DIR))
    finally:
        os.close(fd)
    try:
        return int(data) if data is not None else None
    except ValueError:
        return None


def _log_to_syslog() -> None:
    """A background server has no terminal: its log lines (a corrupt file's EIO) go to syslog."""
    import logging.handlers

    if not os.path.exists("/dev/log"):
        return
    try:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError:
        return
    handler.setFormatter(logging.Formatter("vcbfs[%(process)d]: %(levelname)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def _reason(exc: BaseException) -> str:
    """One line for the caller: a vcbfs error's own description, also from inside trio's
    exception groups, else the exception's type and text."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, VcbfsError):
        return exc.describe()
    return f"{type(exc).__name__}: {exc}"


def _tell(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode())
        os.close(fd)
    except OSError:
        pass  # already told "ok": the parent is gone


def run_umount(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from vcbfs.hygiene import UnsafeStateError, private_dir
    from vcbfs.process import start_time

    mountpoint = args.mountpoint
    untrusted: UnsafeStateError | None = None
    try:  # read before unmounting: the server removes the file as it exits
        pid = _read_pid(mountpoint)
    except UnsafeStateError as exc:
        pid, untrusted = None, exc
    except OSError:
        pid = None
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    done = subprocess.run([tool, "-u", mountpoint], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lazy = subprocess.run(
            [tool, "-u", "-z", mountpoint], capture_output=True, text=True, check=False
        )
        if lazy.returncode != 0:
            raise NotFoundError(done.stderr.strip() or "not mounted", source=mountpoint)
        if "busy" in done.stderr.lower():
            print(
                f"vcbfs: {mountpoint} is in use (open files, or a shell inside): it is detached "
                "now, and the server ends (releasing any snapshot) once they are closed",
                file=sys.stderr,
            )
    if untrusted is not None:
        print(
            f"vcbfs: {untrusted.describe()}; unmounted, but not waiting for the server",
            file=sys.stderr,
        )
        return 1
    if pid is None:
        return 0
    deadline = time.monotonic() + UMOUNT_WAIT
    while time.monotonic() < deadline:
        if not start_time(pid):  # gone, or exited and not yet reaped
            break
        time.sleep(0.05)
    else:
        print(f"vcbfs: the server (pid {pid}) is still finishing", file=sys.stderr)
        return 1
    with contextlib.suppress(OSError):
        fd = private_dir(RUN_DIR, create=False)
        if fd is not None:
            try:
                os.unlink(_pidfile(mountpoint).name, dir_fd=fd)
            finally:
                os.close(fd)
    return 0


def _local_model(
    source: str, automount: bool, idle: float, modes: dict[str, int], allow: list[str]
) -> Tree | VmFolder:
    from vcbfs.fs.automount import VmFolder
    from vcbfs.fs.tree import Tree
    from vcbfs.vm.local import open_local_vm
    from vcbfs.vm.provider import LocalProvider

    now = time.time_ns()
    if automount:
        return VmFolder(LocalProvider([source], allow=allow), idle=idle, now_ns=now, **modes)
    return Tree(open_local_vm(source, allow=allow), now_ns=now, **modes)


def _vsphere_model(
    args: argparse.Namespace,
    settings: Settings,
    spec_text: str,
    idle: float,
    modes: dict[str, int],
    closers: list[Callable[[], object]],
) -> Tree | VmFolder:
    """Connect, clean up after any crash, then snapshot (now, or on first use)."""
    from vcbfs.cli.vsphere import connect
    from vcbfs.fs.automount import VmFolder
    from vcbfs.fs.tree import Tree
    from vcbfs.vsphere.datastore import Datastores
    from vcbfs.vsphere.inventory import NameCache
    from vcbfs.vsphere.provider import VsphereProvider
    from vcbfs.vsphere.snapshots import Journal, cleanup
    from vcbfs.vsphere.spec import parse_spec

    log = logging.getLogger("vcbfs.mount")
    spec = parse_spec(spec_text)
    session = connect(settings)
    closers.append(session.close)
    try:
        journal = Journal(settings.journal_dir)
        for action in cleanup(session, journal):
            log.warning("startup cleanup: %s", action)
        datastores = Datastores(
            session,
            local=[(n, str(p)) for n, p in settings.datastore_paths],
            transports=settings.transports,
            allow=settings.allow_paths,
        )
        provider = VsphereProvider(
            session,
            datastores,
            journal,
            spec,
            cache=NameCache(settings.vm_name_cache),
            quiesce=settings.quiesce,
        )
        now = time.time_ns()
        if args.automount:
            return VmFolder(provider, idle=idle, now_ns=now, **modes)
        vms = provider.vms()
        if not vms:
            raise NotFoundError(f"no VM matches {spec}", source=session.host)
        if len(vms) == 1:
            closers.append(provider.close)
            return Tree(provider.open_vm(vms[0]), now_ns=now, **modes)
        folder = VmFolder(provider, idle=None, now_ns=now, **modes)
        try:
            folder.open_all()
        except BaseException:
            folder.close()
            raise
        return folder
    except BaseException:
        session.close()
        raise
