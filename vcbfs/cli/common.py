"""Options shared by verbs: where a disk lives (a local path or a datastore URL) and how to reach it."""

from __future__ import annotations

import argparse

from vcbfs.blocks.local import LocalLocation
from vcbfs.blocks.source import Location

__all__ = ["add_location_options", "location_from_args"]


def add_location_options(parser: argparse.ArgumentParser) -> None:
    """Options for reaching disks over HTTPS (ignored for local paths)."""


def location_from_args(target: str, args: argparse.Namespace) -> Location:
    """A Location for a local path or an https datastore URL."""
    return LocalLocation(target)
