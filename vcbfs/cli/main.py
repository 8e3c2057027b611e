"""The ``vcbfs`` entry point: parse the verb, run it, turn errors into one clear line.

Every failure a user can cause or meet (a missing file, a corrupt disk, a refused server) is a
VcbfsError and prints as ``vcbfs: <file>: at offset 0x..: <what was wrong>`` with a non-zero exit;
``--debug`` adds the traceback.  Anything else is a bug and always shows its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence

from vcbfs import __version__
from vcbfs.cli import disk, mount, vsphere
from vcbfs.errors import VcbfsError

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


VERBS = {
    "disk": disk,
    "mount": mount,
    "umount": mount,
    "ls": vsphere,
    "cleanup": vsphere,
    "release": vsphere,
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; given the verb, only that verb's group (building all costs ~10 ms)."""
    parser = argparse.ArgumentParser(
        prog="vcbfs",
        description="File-level backup of VMware virtual machines, as a read-only file system.",
    )
    parser.add_argument("--version", action="version", version=f"vcbfs {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    groups = [VERBS[verb]] if verb in VERBS else list(dict.fromkeys(VERBS.values()))
    for group in groups:
        group.register(verbs)
    return parser


def _verb(argv: Sequence[str]) -> str | None:
    """The verb, when it is the first word (options before it need the whole parser)."""
    return argv[0] if argv and argv[0] in VERBS else None


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parse_args``, with options allowed between a verb's positionals.

    argparse fills a verb's positionals from the first run of words only, so
    ``disk cat PATH --partition 1 FILE`` left FILE "unrecognized".  Words it leaves over go to
    the positionals it left empty, in order; anything else is still an error.
    (``parse_intermixed_args`` would do this, but it refuses parsers with subcommands.)
    """
    # --debug belongs to vcbfs itself, but may come after the verb too.
    argv = [w for w in argv if w == "--debug"] + [w for w in argv if w != "--debug"]
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    leaf = parser
    while True:
        sub = next((a for a in leaf._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            break
        leaf = sub.choices[getattr(args, sub.dest)]
    empty = [
        a
        for a in leaf._actions
        if not a.option_strings and a.nargs == "?" and getattr(args, a.dest) == a.default
    ]
    words = [w for w in extra if not w.startswith("-") or w == "-"]
    if len(words) != len(extra) or len(words) > len(empty):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    for action, word in zip(empty, words, strict=False):
        setattr(args, action.dest, word)
    return args


def _settings_budget(args: argparse.Namespace) -> None:
    """Apply ``memory_budget`` from config.toml (or the environment) for every verb that reads
    VM files: the vSphere verbs read all settings, but a local disk's would not, and the
    budget bounds them all.  The same files, ranks and checks as the vSphere verbs."""
    from vcbfs.config import load_settings

    load_settings({"config": getattr(args, "config", None)})


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_verb(argv))
    args = parse(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="vcbfs: %(levelname)s: %(message)s",
    )
    try:
        if hasattr(args, "memory_budget"):
            _settings_budget(args)
        return int(args.run(args) or 0)
    except VcbfsError as exc:
        if args.debug:
            logging.exception("failed")
        print(f"vcbfs: {exc.describe()}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`vcbfs disk cat | head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 128 + 2
    except OSError as exc:
        if args.debug:
            logging.exception("failed")
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"vcbfs: {where}{exc.strerror or errno.errorcode.get(exc.errno or 0, exc)}",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
