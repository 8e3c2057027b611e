"""vcbfs's side of ``bench ntfs``'s tree walk: ``python walker.py IMAGE DIR`` reads every file's
unnamed data under DIR through vcbfs's NTFS API (lookup, iterdir, stat, open, read_at in 1 MiB
pieces), a file with several names once, reparse points not followed; prints ``FILES BYTES``.

It runs as its own process (its start-up and imports are in the time); ``bench ntfs --profile``
runs it under cProfile.
"""

import sys

from vcbfs.blocks.local import LocalSource
from vcbfs.ntfs.volume import NtfsVolume

CHUNK = 1 << 20


def main(image: str, top: str) -> None:
    volume = NtfsVolume(LocalSource(image))
    seen: set[int] = set()
    files = nbytes = 0
    stack = [volume.lookup(top)]
    while stack:
        for entry in volume.iterdir(stack.pop()):
            if entry.record in seen:
                continue
            seen.add(entry.record)
            st = volume.stat(entry.record)
            if st.reparse is not None:
                continue
            if st.is_dir:
                stack.append(entry.record)
                continue
            data = volume.open(entry.record)
            size = data.size
            for offset in range(0, size, CHUNK):
                nbytes += len(data.read_at(offset, min(CHUNK, size - offset)))
            files += 1
    print(files, nbytes)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
