"""Load on a real automount: a VM whose snapshot takes long delays only its own readers.

A server process mounts a folder of 8 VMs (the test VM's files, each opened as a snapshot
would be); opening the last one waits until the test lets it go, as a slow quiesce would.
Twenty readers wait on that VM (more than the 16 shared worker threads) while 64 readers
read through the other seven: every one of them must finish while the slow VM is still
opening.  Their latencies are printed (the suite asserts no timing; ``scripts/bench`` does).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.fs.vmfixture import SYS_FILES, TestVm

SERVER = """
import sys, time
from pathlib import Path
from vcbfs.fs.automount import VmFolder
from vcbfs.fs.mount import fuse_options, serve
from vcbfs.vm.local import open_local_vm
from vcbfs.vm.provider import VmEntry, VmProvider

vmx, mnt, gate = sys.argv[1], sys.argv[2], Path(sys.argv[3])


class Provider(VmProvider):
    def list(self):
        return [VmEntry(f"vm-{i}", f"vm{i}") for i in range(1, 9)]

    def open(self, key):
        if key == "vm-8":
            print("slow snapshot started", flush=True)
            while not gate.exists():  # a quiesce that takes as long as the test wants
                time.sleep(0.01)
        return open_local_vm(vmx)


def ready():
    print("ready", flush=True)


serve(VmFolder(Provider(), idle=None), mnt, fuse_options(), ready=ready)
"""


def _reader(path: Path, latencies: list[float], errors: list[BaseException]) -> None:
    try:
        for _ in range(20):
            start = time.perf_counter()
            data = path.read_bytes()
            latencies.append(time.perf_counter() - start)
            assert data == SYS_FILES["boot.ini"]
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_a_slow_snapshot_delays_only_its_own_vm(test_vm: TestVm, tmp_path: Path) -> None:
    mnt, gate = tmp_path / "m", tmp_path / "gate"
    mnt.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(test_vm.vmx), str(mnt), str(gate)],
        stdout=subprocess.PIPE,
        text=True,
    )
    waiting: list[threading.Thread] = []
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        for i in range(1, 8):  # the seven quick VMs are open
            assert sorted(os.listdir(mnt / f"vm{i}")) == ["digits", "fullvm", "letters"]
        slow_done: list[str] = []
        for n in range(20):  # more waiters on the slow VM than there are shared workers
            t = threading.Thread(
                target=lambda n=n: slow_done.append(str(os.listdir(mnt / "vm8"))), daemon=True
            )
            t.start()
            waiting.append(t)
        assert server.stdout.readline() == "slow snapshot started\n"
        latencies: list[float] = []
        errors: list[BaseException] = []
        readers = [
            threading.Thread(
                target=_reader,
                args=(mnt / f"vm{1 + n % 7}" / "letters/C/boot.ini", latencies, errors),
                daemon=True,
            )
            for n in range(64)
        ]
        for t in readers:
            t.start()
        deadline = time.monotonic() + 120  # for all of them: a hold-up fails in minutes
        for t in readers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in readers), "readers of open VMs were held up"
        assert not errors, errors[:3]
        assert not slow_done, "the slow VM opened before it was let go"  # still opening
        p99 = statistics.quantiles(latencies, n=100)[98]
        print(
            f"64 readers x 20 reads: p50 {statistics.median(latencies) * 1e3:.1f} ms, "
            f"p99 {p99 * 1e3:.1f} ms, with 20 requests waiting on a slow snapshot"
        )
        gate.touch()
        deadline = time.monotonic() + 60
        for t in waiting:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        assert len(slow_done) == 20
    finally:
        gate.touch()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
        try:
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            if server.stdout is not None:
                server.stdout.close()
