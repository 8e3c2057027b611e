"""Options shared by verbs: where a disk lives (a path or a datastore URL), how to reach it.

Secrets never come from the command line: a datastore session cookie is read from
``VCBFS_SESSION_COOKIE``, HTTP basic credentials from ``VCBFS_USER`` / ``VCBFS_PASSWORD``.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vcbfs.blocks.source import Location

__all__ = [
    "add_allow_option",
    "add_location_options",
    "add_memory_option",
    "location_from_args",
]

log = logging.getLogger(__name__)


ALLOW_HELP = (
    "also read files that a .vmx or descriptor names under DIR (by default only files beside "
    "the one given, or in a configured datastore); repeatable"
)


MEMORY_HELP = (
    "bytes all caches of the process may hold together, such as 512M or 2G (default %s; "
    "also VCBFS_MEMORY_BUDGET or memory_budget in config.toml)"
)


class _MemoryBudget(argparse.Action):
    """Parse the size and apply it to the process-wide budget at once, ranked above the
    environment and config files, which are read later (and only by some verbs)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        from vcbfs.blocks.budget import configure, parse_size

        try:
            size = parse_size(values)
        except ValueError as exc:
            parser.error(f"{option_string} {exc}")
        configure(size, "command line")
        setattr(namespace, self.dest, size)


def add_memory_option(parser: argparse.ArgumentParser) -> None:
    """``--memory-budget SIZE``: the process-wide cache budget (vcbfs.blocks.budget)."""
    from vcbfs.blocks.budget import DEFAULT_BUDGET, format_size

    parser.add_argument(
        "--memory-budget",
        dest="memory_budget",
        action=_MemoryBudget,
        metavar="SIZE",
        help=MEMORY_HELP % format_size(DEFAULT_BUDGET),
    )


def add_allow_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-path DIR``: widen where names inside VM files may lead; and, since every verb
    that reads VM files takes it, ``--memory-budget SIZE``."""
    parser.add_argument(
        "--allow-path", dest="allow_paths", action="append", metavar="DIR", help=ALLOW_HELP
    )
    add_memory_option(parser)


def add_location_options(parser: argparse.ArgumentParser) -> None:
    """Options for reaching disks over HTTPS (ignored for local paths), and ``--allow-path``."""
    add_allow_option(parser)
    group = parser.add_argument_group("datastore over HTTPS")
    group.add_argument(
        "--thumbprint",
        metavar="SHA256",
        help="accept only a server certificate with this SHA-256 fingerprint",
    )
    group.add_argument("--ca-file", metavar="FILE", help="trust the CA certificates in FILE")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server certificate (not recommended)",
    )


def location_from_args(target: str, args: argparse.Namespace) -> Location:
    """A Location for a local path, or for an http(s) URL read through a shared cache."""
    if not target.startswith(("https://", "http://")):
        from vcbfs.blocks.confine import Box
        from vcbfs.blocks.local import LocalLocation

        return LocalLocation(target, Box.around(target, allow=args.allow_paths or ()))
    from urllib.parse import quote, urlsplit, urlunsplit

    from vcbfs.blocks.cache import CachedLocation
    from vcbfs.blocks.http import HttpLocation, HttpOptions, HttpSession
    from vcbfs.errors import AccessDeniedError
    from vcbfs.hygiene import drop_secret_env

    parts = urlsplit(target)
    if parts.password is not None:
        raise AccessDeniedError(
            "a password in the URL would be visible to other users: "
            "set VCBFS_USER and VCBFS_PASSWORD instead",
            source=target.replace(f":{parts.password}@", ":***@"),
        )
    if args.insecure:
        log.warning("TLS certificate verification is off (--insecure)")
    options = HttpOptions(
        verify=not args.insecure,
        ca_file=args.ca_file,
        thumbprint=args.thumbprint,
        cookie=os.environ.get("VCBFS_SESSION_COOKIE") or None,
    )
    user, password = os.environ.get("VCBFS_USER"), os.environ.get("VCBFS_PASSWORD")
    drop_secret_env()  # read: no child, and no reader of /proc/PID/environ, gets them now
    if user and password:
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
        target = urlunsplit(parts._replace(netloc=netloc))
    session = HttpSession(options)
    return CachedLocation(HttpLocation(session, target))
