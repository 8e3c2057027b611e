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

__all__ = ["add_location_options", "location_from_args"]

log = logging.getLogger(__name__)


def add_location_options(parser: argparse.ArgumentParser) -> None:
    """Options for reaching disks over HTTPS (ignored for local paths)."""
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
        from vcbfs.blocks.local import LocalLocation

        return LocalLocation(target)
    from urllib.parse import quote, urlsplit, urlunsplit

    from vcbfs.blocks.cache import CachedLocation
    from vcbfs.blocks.http import HttpLocation, HttpOptions, HttpSession
    from vcbfs.errors import AccessDeniedError

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
    if user and password:
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
        target = urlunsplit(parts._replace(netloc=netloc))
    session = HttpSession(options)
    return CachedLocation(HttpLocation(session, target))
