"""vSphere verbs and options: ``vcbfs ls``, ``vcbfs cleanup``, ``vcbfs release``.

Connection settings come from config files, the environment and these options (in that order;
see ``vcbfs.config``).  ``-h`` is the host, as in VCB's tools, so help is ``--help`` only.
The password never comes from the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from vcbfs.errors import NotFoundError, VcbfsError

if TYPE_CHECKING:
    from vcbfs.config import Settings
    from vcbfs.vsphere.session import Session

__all__ = ["add_vsphere_options", "connect", "register"]


def add_vsphere_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--help", action="help", help="show this help and exit")
    g = parser.add_argument_group("vCenter / ESXi (also from config.toml, backuptools.conf, env)")
    g.add_argument("-h", "--host", metavar="HOST", help="vCenter or ESXi host name")
    g.add_argument("--port", type=int, metavar="PORT", help="HTTPS port (443)")
    g.add_argument("-u", "--user", metavar="USER", help="user name")
    g.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from FILE (mode 600); else VCBFS_PASSWORD(_FILE) or a prompt",
    )
    g.add_argument(
        "--thumbprint", metavar="SHA256", help="trust exactly the certificate with this SHA-256"
    )
    g.add_argument("--ca-file", metavar="FILE", help="trust the CA certificates in FILE")
    g.add_argument(
        "--insecure", action="store_true", default=None, help="do not verify TLS (not advised)"
    )
    g.add_argument("--config", metavar="FILE", help="a config.toml to read instead of the usual")
    g.add_argument("--backuptools", metavar="FILE", help="a VCB backuptools.conf to read")
    g.add_argument("--state-dir", metavar="DIR", help="where the snapshot journal is kept")


def settings_from_args(args: argparse.Namespace) -> Settings:
    from vcbfs.config import load_settings
    from vcbfs.hygiene import drop_secret_env

    cli = {
        "host": args.host,
        "port": args.port,
        "user": args.user,
        "password_file": args.password_file,
        "thumbprint": args.thumbprint,
        "ca_file": args.ca_file,
        "insecure": args.insecure,
        "config": args.config,
        "backuptools": args.backuptools,
        "state_dir": args.state_dir,
    }
    for key in ("datastore_paths", "allow_paths", "transports", "idle"):
        cli[key] = getattr(args, key, None)
    if getattr(args, "no_quiesce", False):
        cli["quiesce"] = False
    settings = load_settings(cli)
    drop_secret_env()  # the password is in settings now: no child or /proc reader gets it
    return settings


def connect(settings: Settings) -> Session:
    from vcbfs.vsphere.session import Session

    host = settings.require_host()
    password = settings.require_password()
    return Session(
        host,
        settings.user or "",
        password.reveal(),
        port=settings.port,
        thumbprint=settings.thumbprint,
        insecure=settings.insecure,
        ca_file=settings.ca_file,
    )


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ls = verbs.add_parser("ls", add_help=False, help="list VMs (moref, name, uuid, ip, power)")
    ls.add_argument("-s", "--spec", default="any:", metavar="SPEC", help="which VMs (any:)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_vsphere_options(ls)
    ls.set_defaults(run=run_ls)

    c = verbs.add_parser(
        "cleanup", add_help=False, help="release snapshots a crashed vcbfs left behind"
    )
    c.add_argument("--dry-run", action="store_true", help="only say what would be released")
    add_vsphere_options(c)
    c.set_defaults(run=run_cleanup)

    r = verbs.add_parser("release", help="release one automounted VM's snapshot now")
    r.add_argument("path", metavar="MOUNTPOINT/VM")
    r.add_argument("--force", action="store_true", help="even with files open inside")
    r.set_defaults(run=run_release)


def run_ls(args: argparse.Namespace) -> int:
    from vcbfs.vsphere.inventory import NameCache, as_json, find_vms
    from vcbfs.vsphere.spec import parse_spec

    spec = parse_spec(args.spec)
    settings = settings_from_args(args)
    with connect(settings) as session:
        vms = find_vms(session, spec, NameCache(settings.vm_name_cache), require=False)
    if args.json:
        print(as_json(vms))
        return 0
    rows = [("MOREF", "NAME", "UUID", "IPADDR", "POWER")]
    rows += [(vm.moref, vm.name, vm.uuid, vm.ipaddr or "-", vm.power) for vm in vms]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4])
    return 0


def run_cleanup(args: argparse.Namespace) -> int:
    from vcbfs.vsphere.snapshots import Journal, cleanup

    settings = settings_from_args(args)
    with connect(settings) as session:
        actions = cleanup(session, Journal(settings.journal_dir), dry_run=args.dry_run)
    for action in actions:
        print(action)
    if not actions:
        print("nothing to release")
    return 1 if any(a.error for a in actions) else 0


def run_release(args: argparse.Namespace) -> int:
    import json
    import socket

    path = os.path.abspath(args.path.rstrip("/"))
    mountpoint, name = os.path.dirname(path), os.path.basename(path)
    from vcbfs.cli.mount import RUN_DIR, control_path
    from vcbfs.hygiene import UnsafeStateError, private_dir

    try:  # only a socket in a directory nobody else could have put it in
        run_dir = private_dir(RUN_DIR, create=False)
    except UnsafeStateError:
        raise
    except OSError:
        run_dir = None  # connecting says what is wrong
    if run_dir is not None:
        os.close(run_dir)

    sock_path = str(control_path(mountpoint))
    request = json.dumps({"release": name, "force": args.force}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)  # a full backlog: a hung server answers no one
            s.connect(sock_path)
            s.settimeout(600)  # a release waits for vSphere to remove the snapshot
            s.sendall(request)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise NotFoundError(
            "not a vcbfs automount (no control socket)", source=mountpoint
        ) from None
    except OSError as exc:
        raise VcbfsError(f"cannot reach the mount's server: {exc}", source=mountpoint) from None
    answer = json.loads(data or b"{}")
    if "error" in answer:
        print(f"vcbfs: {answer['error']}", file=sys.stderr)
        return 1
    print(f"{name}: {'released' if answer.get('released') else 'was not in use'}")
    return 0
