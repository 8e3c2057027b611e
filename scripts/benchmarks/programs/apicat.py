"""vcbfs's API in a running process, as the mount server uses it: ``python apicat.py IMAGE
FILE TIMEFILE`` imports first, then times opening the volume, the lookup and copying FILE to
stdout, and writes those seconds to TIMEFILE, so that interpreter start and imports are left
out of the figure (``bench ntfs`` and ``bench compressed`` read it back).
"""

import sys
import time

from vcbfs.blocks.copy import copy_to_fd
from vcbfs.blocks.local import LocalSource
from vcbfs.ntfs.volume import NtfsVolume


def main(image: str, rel: str, report: str) -> None:
    start = time.perf_counter()
    volume = NtfsVolume(LocalSource(image))
    copy_to_fd(volume.open(volume.lookup(rel)), 1)
    elapsed = time.perf_counter() - start
    with open(report, "w") as f:
        f.write(repr(elapsed))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
