"""Process identity from /proc: a running process has a start time; a zombie or a gone one not."""

from __future__ import annotations

import os
import subprocess
import time

from vcbfs.process import boot_id, start_time


def test_running_zombie_and_gone() -> None:
    assert start_time(os.getpid()) and boot_id()
    child = subprocess.Popen(["true"])
    for _ in range(200):  # exited but not waited for: a zombie
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    assert start_time(child.pid) == ""
    child.wait()
    assert start_time(child.pid) == ""  # reaped: no such process
