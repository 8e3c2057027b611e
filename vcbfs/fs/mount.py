"""Serving a tree at a mount point: the trio main loop, signals, readahead, a clean unmount.

``serve`` mounts, tells its caller the mount is ready, answers requests until the mount is
unmounted (``vcbfs umount``, ``fusermount3 -u``) or SIGINT/SIGTERM arrives, and always unmounts
and closes the image on the way out.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import pyfuse3
import trio

from vcbfs.fs.operations import Operations
from vcbfs.fs.tree import Tree

__all__ = ["fuse_options", "serve"]

log = logging.getLogger(__name__)
READ_AHEAD_KB = 1024


def fuse_options(*, allow_other: bool = False, fsname: str = "vcbfs") -> set[str]:
    opts = set(pyfuse3.default_options)
    opts.discard("default_permissions")
    opts |= {"ro", "default_permissions", f"fsname={fsname}", "subtype=vcbfs"}
    if allow_other:
        opts.add("allow_other")
    return opts


def raise_readahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> None:
    """Let the kernel ask for 1 MiB at a time (measured: 2-3x the throughput of 128 KiB)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(kb))
    except OSError as exc:
        log.debug("could not raise readahead: %s", exc)


async def _watch_signals(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("signal %s: unmounting", signal.Signals(sig).name)
            cancel.cancel()
            return


def serve(
    tree: Tree,
    mountpoint: str,
    options: set[str],
    *,
    uid: int = 0,
    gid: int = 0,
    ready: Callable[[], None] | None = None,
) -> None:
    """Mount ``tree`` at ``mountpoint`` and serve it until unmounted or signalled.

    ``ready`` is called once requests are being answered: touching the mount point before
    that (even ``stat``) would wait on this very process.
    """
    ops = Operations(tree, uid=uid, gid=gid)
    pyfuse3.init(ops, mountpoint, options)
    unmounted = False
    try:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_signals, nursery.cancel_scope)
                nursery.start_soon(_when_serving, mountpoint, ready)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()

        trio.run(main)
        unmounted = True
    finally:
        pyfuse3.close(unmount=True)
        tree.image.close()
        log.info("unmounted %s (%s)", mountpoint, "clean" if unmounted else "after an error")


async def _when_serving(mountpoint: str, ready: Callable[[], None] | None) -> None:
    await trio.to_thread.run_sync(raise_readahead, mountpoint)  # a stat: answered by main()
    if ready is not None:
        ready()
