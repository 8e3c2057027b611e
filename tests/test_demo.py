"""The README's first command: scripts/demo (after its set-up step) runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")


def test_the_demo_mounts_tars_and_leaves_no_snapshot() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/demo_vsphere.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    mounted, released = out.index("== 3. Mount"), out.index("== 5. Unmount")
    assert "vcbfs snapshots of win-demo: 'vcbfs-backup " in out[mounted:released]
    assert "./Users/Public/Documents/report.txt" in out  # tar of letters/C
    assert "vcbfs snapshots of win-demo: none" in out[released:]
    assert out.rstrip().endswith("done")
