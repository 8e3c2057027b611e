"""A folder of VMs opened on first use and released when idle: the model, then a real mount."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fs.test_mount import vcbfs
from tests.fs.vmfixture import SYS_FILES, TestVm
from tests.together import together
from vcbfs.errors import VcbfsError
from vcbfs.fs.automount import EPOCH_SHIFT, BusyError, StaleError, VmFolder
from vcbfs.fs.tree import ROOT_INO
from vcbfs.vm.image import VmImage
from vcbfs.vm.local import open_local_vm
from vcbfs.vm.provider import VmEntry, VmProvider


class CountingProvider(VmProvider):
    """Two VMs over the test VM's files; counts opens and closes like snapshots taken/released."""

    def __init__(self, vmx: Path, delay: float = 0.0) -> None:
        self.vmx = vmx
        self.delay = delay
        self.gate = threading.Event()  # open() waits for it (set: no waiting)
        self.gate.set()
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.lock = threading.Lock()

    def list(self) -> list[VmEntry]:
        return [VmEntry("vm-1", "alpha"), VmEntry("vm-2", "beta/slash")]

    def open(self, key: str) -> VmImage:
        with self.lock:
            self.opened.append(key)
        time.sleep(self.delay)  # a snapshot takes a while: concurrent callers must wait
        self.gate.wait()
        image = open_local_vm(self.vmx)
        inner = image.close

        def close() -> None:
            inner()
            with self.lock:
                self.closed.append(key)

        image.close = close  # type: ignore[method-assign]
        return image


@pytest.fixture
def folder(test_vm: TestVm) -> Iterator[tuple[VmFolder, CountingProvider]]:
    provider = CountingProvider(test_vm.vmx, delay=0.2)
    f = VmFolder(provider, idle=30.0)
    try:
        yield f, provider
    finally:
        f.close()


def test_listing_takes_nothing(folder: tuple[VmFolder, CountingProvider]) -> None:
    f, provider = folder
    names = [name for name, _ in f.readdir(ROOT_INO)]
    assert names == ["alpha", "beta%2fslash"]
    for name in names:
        attr = f.lookup(ROOT_INO, name)
        assert f.getattr(attr.ino).ino == attr.ino
    assert provider.opened == []


def test_concurrent_first_lookups_open_once(folder: tuple[VmFolder, CountingProvider]) -> None:
    f, provider = folder
    vm_ino = f.lookup(ROOT_INO, "alpha").ino
    results = together(lambda: f.lookup(vm_ino, "letters").ino, 8)
    assert provider.opened == ["vm-1"]
    assert len(set(results)) == 1 and isinstance(results[0], int) and results[0] >> EPOCH_SHIFT


def _file(f: VmFolder, vm: str, *path: str) -> int:
    ino = f.lookup(ROOT_INO, vm).ino
    for part in path:
        ino = f.lookup(ino, part).ino
    return ino


def test_idle_release_and_a_new_epoch(folder: tuple[VmFolder, CountingProvider]) -> None:
    f, provider = folder
    ino = _file(f, "alpha", "letters", "C", "boot.ini")
    assert f.open(ino).read_at(0, 100) == SYS_FILES["boot.ini"]
    held = f.hold(ino)
    assert f.expire(time.monotonic() + 3600) == []  # an open file keeps it
    with pytest.raises(BusyError):
        f.release("alpha")
    f.unhold(held)
    assert f.expire(time.monotonic() + 1) == []  # not idle long enough yet
    assert f.expire(time.monotonic() + 3600) == ["alpha"]
    assert provider.closed == ["vm-1"]
    with pytest.raises(StaleError) as caught:
        f.getattr(ino)
    assert caught.value.errno == errno.ESTALE
    again = _file(f, "alpha", "letters", "C", "boot.ini")  # a new snapshot, a new epoch
    assert provider.opened == ["vm-1", "vm-1"]
    assert again != ino and again & ((1 << EPOCH_SHIFT) - 1) == ino & ((1 << EPOCH_SHIFT) - 1)


def test_counting_handles_never_waits_for_a_snapshot(test_vm: TestVm) -> None:
    """The event loop counts open handles (hold, unhold): while a thread takes a snapshot of
    the same VM, that must not wait for it, or the whole mount would stall meanwhile."""
    provider = CountingProvider(test_vm.vmx)
    f = VmFolder(provider, idle=30.0)
    try:
        ino = _file(f, "alpha", "letters", "C", "boot.ini")
        old = f.hold(ino)
        assert f.release("alpha", force=True)  # a handle of the old snapshot stays open
        provider.gate.clear()
        vm_dir = f.lookup(ROOT_INO, "alpha").ino
        opening = threading.Thread(target=lambda: f.lookup(vm_dir, "letters"))
        opening.start()
        while provider.opened != ["vm-1", "vm-1"]:  # the second snapshot is being taken
            time.sleep(0.01)
        counting = threading.Thread(target=lambda: (f.unhold(old), f.unhold(f.hold(vm_dir))))
        counting.start()
        counting.join(10)
        done = not counting.is_alive()
        provider.gate.set()
        assert done and opening.is_alive()  # counted while the snapshot was still being taken
        opening.join()
    finally:
        f.close()


def test_release_and_close(folder: tuple[VmFolder, CountingProvider]) -> None:
    f, provider = folder
    assert f.release("alpha") is False  # never opened
    _file(f, "alpha", "digits")
    _file(f, "beta%2fslash", "digits")
    assert f.release("alpha") is True
    assert provider.closed == ["vm-1"]
    with pytest.raises(VcbfsError):
        f.release("nonesuch")
    f.close()
    assert sorted(provider.closed) == ["vm-1", "vm-2"]


# -- a real automount of a folder of VMs -------------------------------------------------------


@pytest.fixture
def automount(test_vm: TestVm, tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "vms"
    mnt.mkdir()
    vcbfs("mount", "--automount", "-o", "idle=1", str(test_vm.vmx.parent), str(mnt))
    try:
        yield mnt
    finally:
        if os.path.ismount(mnt):
            vcbfs("umount", str(mnt))


def test_automount_folder(automount: Path, test_vm: TestVm) -> None:
    name = test_vm.vmx.stem
    assert os.listdir(automount) == [name]
    vm = automount / name
    assert (vm / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
    with (vm / "letters/C/boot.ini").open("rb"):
        busy = vcbfs("release", str(vm), check=False)
        assert busy.returncode == 1 and "open" in busy.stderr
    assert "released" in vcbfs("release", str(vm)).stdout
    assert "was not in use" in vcbfs("release", str(vm)).stdout
    assert sorted(os.listdir(vm)) == ["digits", "fullvm", "letters"]  # opened again
    time.sleep(3)  # idle=1: the expiry task releases it
    assert "was not in use" in vcbfs("release", str(vm)).stdout
    assert (vm / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]


def test_release_needs_an_automount(tmp_path: Path) -> None:
    done = vcbfs("release", str(tmp_path / "vm"), check=False)
    assert done.returncode == 1 and "not a vcbfs automount" in done.stderr


def test_directory_names_are_unique_and_safe() -> None:
    from vcbfs.vm.provider import directory_names

    entries = [
        VmEntry("/a/vm.vmx", "vm"),
        VmEntry("/b/vm.vmx", "vm"),  # same name, same key base name
        VmEntry("vm-7", "VM"),  # the same name in another case
        VmEntry("vm-8", "a/b"),
        VmEntry("vm-9", ".."),
    ]
    names = directory_names(entries)
    assert len(names) == len(entries)
    assert set(names.values()) == set(entries)
    assert "a%2fb" in names and "vm-vm-9" in names
    assert all("/" not in n and n not in (".", "..") for n in names)


def test_control_socket_clients_that_misbehave_never_end_the_mount(
    automount: Path, test_vm: TestVm
) -> None:
    # A client that hung up before its answer ended the whole server (BrokenResourceError).
    import socket

    from vcbfs.cli.mount import control_path

    path = str(control_path(str(automount)))
    name = test_vm.vmx.stem
    for payload in (
        json.dumps({"release": name}).encode() + b"\n",  # then gone before the answer
        b"\xff\xfe garbage \x00\n",
        b"{",  # partial, no newline
        b"x" * (1 << 20),  # 1 MiB
    ):
        for _ in range(20):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                with contextlib.suppress(OSError):
                    s.sendall(payload)
    for _ in range(50):  # connect and hang up at once
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
    assert os.listdir(automount) == [name]  # still serving
    assert (automount / name / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
    assert "released" in vcbfs("release", str(automount / name)).stdout


def test_a_release_that_fails_on_the_network_ends_nothing(
    test_vm: TestVm, caplog: pytest.LogCaptureFixture
) -> None:
    # A reset connection while releasing an idle VM raised out of expire() and ended the
    # whole server (the idle task died with it).
    provider = CountingProvider(test_vm.vmx)
    f = VmFolder(provider, idle=0.01)
    try:
        f.lookup(f.lookup(ROOT_INO, "alpha").ino, "letters")
        tree = f._by_name["alpha"].tree
        assert tree is not None
        real = tree.image.close

        def reset() -> None:
            real()
            raise ConnectionResetError(104, "Connection reset by peer")

        tree.image.close = reset  # type: ignore[method-assign]
        time.sleep(0.05)
        assert f.expire() == ["alpha"]  # detached, and the failure logged, not raised
        assert "alpha: releasing" in caplog.text and "Connection reset" in caplog.text
        f.lookup(f.lookup(ROOT_INO, "alpha").ino, "letters")  # opens again
        assert provider.opened == ["vm-1", "vm-1"]
    finally:
        f.close()
