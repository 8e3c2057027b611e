"""A real ``vcbfs mount`` server: no secret in its environment, no core dump, no readable memory,
and a run directory and PID file it trusts only when nobody else could have made them."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fs.vmfixture import SYS_FILES, TestVm
from vcbfs.cli.mount import mount_key
from vcbfs.process import start_time

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, FUSE as root)")
NOBODY = 65534
PASSWORD = "pw-Secret-1234"
COOKIE = 'vmware_soap_session="cookie-Secret-5678"'


def _env(run_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "VCBFS_RUN_DIR": str(run_dir), **extra}


def vcbfs(
    *args: str, env: dict[str, str], prefix: tuple[str, ...] = (), **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "vcbfs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kw,  # type: ignore[call-overload]
    )


def _allow(vm: TestVm) -> tuple[str, ...]:
    """The data disk's middle extent is the shared reference volume, outside the VM's folder."""
    return ("--allow-path", str(vm.data.path.parent))


def _pidfile(run_dir: Path, mnt: Path) -> Path:
    return run_dir / f"mount-{mount_key(str(mnt))}.pid"


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 60
    while start_time(pid):
        assert time.monotonic() < deadline, f"server {pid} still running"
        time.sleep(0.05)


@contextlib.contextmanager
def _mounted(
    vm: TestVm, mnt: Path, env: dict[str, str], prefix: tuple[str, ...] = ()
) -> Iterator[int]:
    """A background ``vcbfs mount``: yields the server's PID; afterwards unmounted and gone."""
    mnt.mkdir(exist_ok=True)
    done = vcbfs("mount", *_allow(vm), str(vm.vmx), str(mnt), env=env, prefix=prefix)
    assert done.returncode == 0, done.stderr
    pid = int(_pidfile(Path(env["VCBFS_RUN_DIR"]), mnt).read_text())
    try:
        yield pid
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        _wait_gone(pid)


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _assert_no_secrets(environ: bytes) -> None:
    assert b"Secret" not in environ
    assert b"VCBFS_PASSWORD=" not in environ and b"VCBFS_SESSION_COOKIE=" not in environ
    assert b"KEEP_ME=yes" in environ  # the rest of the environment is left as it was


def test_the_background_server_keeps_no_secret_in_its_environment(
    test_vm: TestVm, tmp_path: Path
) -> None:
    secrets = {"VCBFS_PASSWORD": PASSWORD, "VCBFS_SESSION_COOKIE": COOKIE, "KEEP_ME": "yes"}
    env = _env(tmp_path / "run", **secrets)
    with _mounted(test_vm, tmp_path / "m", env) as pid:
        assert (tmp_path / "m/letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
        _assert_no_secrets(_environ(pid))  # read as root: the scrub, not the permission
        st = os.lstat(tmp_path / "run")
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700  # made private


def test_the_foreground_server_keeps_no_secret_in_its_environment(
    test_vm: TestVm, tmp_path: Path
) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    env = _env(tmp_path / "run", VCBFS_PASSWORD=PASSWORD, VCBFS_SESSION_COOKIE=COOKIE)
    env["KEEP_ME"] = "yes"
    argv = [
        sys.executable,
        "-m",
        "vcbfs",
        "mount",
        "-f",
        *_allow(test_vm),
        str(test_vm.vmx),
        str(mnt),
    ]
    server = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _assert_no_secrets(_environ(server.pid))
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert not os.path.ismount(mnt)


def _no_ptrace() -> tuple[str, ...]:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    return ("setpriv", "--bounding-set", "-sys_ptrace")


def test_the_server_is_not_dumpable(test_vm: TestVm, tmp_path: Path) -> None:
    """Another process of the same user with the same capabilities cannot read the server's
    memory (PR_SET_DUMPABLE 0); without CAP_SYS_PTRACE on both sides, that is all that differs
    from a dumpable process, which it could read.  And its core size limit is 0."""
    no_ptrace = _no_ptrace()
    reader = [*no_ptrace, sys.executable, "-c", "import sys; open(sys.argv[1], 'rb')"]
    with _mounted(test_vm, tmp_path / "m", _env(tmp_path / "run"), prefix=no_ptrace) as pid:
        done = subprocess.run([*reader, f"/proc/{pid}/mem"], capture_output=True, text=True)
        assert done.returncode != 0 and "PermissionError" in done.stderr
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"^Max core file size +0 +0 ", limits, re.MULTILINE)
    # the same reader on a dumpable process of the same kind: allowed
    sleeper = subprocess.Popen([*no_ptrace, "sleep", "60"])
    try:
        time.sleep(0.2)
        done = subprocess.run([*reader, f"/proc/{sleeper.pid}/mem"], capture_output=True)
        assert done.returncode == 0, done.stderr
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_crashing_server_writes_no_core_file(test_vm: TestVm, tmp_path: Path) -> None:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core files are not written to the working directory here ({pattern})")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    mnt = tmp_path / "m"

    def allow_cores() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    mnt.mkdir()
    argv = [sys.executable, "-m", "vcbfs", "mount", *_allow(test_vm), str(test_vm.vmx), str(mnt)]
    done = subprocess.run(
        argv,
        env=_env(tmp_path / "run"),
        cwd=cwd,
        preexec_fn=allow_cores,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pid = int(_pidfile(tmp_path / "run", mnt).read_text())
    try:
        os.kill(pid, signal.SIGABRT)  # a crash whose default action is a core dump
        _wait_gone(pid)
        assert os.listdir(cwd) == []
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def _refused_mount(vm: TestVm, tmp_path: Path, run_dir: Path) -> str:
    (tmp_path / "m").mkdir(exist_ok=True)
    done = vcbfs("mount", *_allow(vm), str(vm.vmx), str(tmp_path / "m"), env=_env(run_dir))
    assert done.returncode == 1
    assert not os.path.ismount(tmp_path / "m")
    return done.stderr


def _rule() -> str:
    return (
        f"it must be a directory (not a symbolic link) owned by uid {os.geteuid()} "
        "and not writable by group or others"
    )


def test_a_symlinked_run_dir_is_refused(test_vm: TestVm, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "real")
    said = _refused_mount(test_vm, tmp_path, tmp_path / "run")
    assert said == f"vcbfs: {tmp_path}/run: is a symbolic link; {_rule()}\n"
    assert os.listdir(tmp_path / "real") == []


@as_root
def test_a_run_dir_owned_by_another_user_is_refused(test_vm: TestVm, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    os.chown(tmp_path / "run", NOBODY, NOBODY)
    said = _refused_mount(test_vm, tmp_path, tmp_path / "run")
    assert said == f"vcbfs: {tmp_path}/run: is owned by uid {NOBODY}; {_rule()}\n"
    assert os.listdir(tmp_path / "run") == []


def test_a_run_dir_others_can_write_is_refused(test_vm: TestVm, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    os.chmod(tmp_path / "run", 0o777)
    said = _refused_mount(test_vm, tmp_path, tmp_path / "run")
    assert said == f"vcbfs: {tmp_path}/run: is writable by group or others (mode 0777); {_rule()}\n"


def test_a_planted_pid_file_symlink_is_replaced_not_written_through(
    test_vm: TestVm, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    mnt = tmp_path / "m"
    _pidfile(run, mnt).symlink_to(victim)
    with _mounted(test_vm, mnt, _env(run)) as pid:
        assert victim.read_text() == "precious\n"
        assert stat.S_ISREG(os.lstat(_pidfile(run, mnt)).st_mode)
        assert _pidfile(run, mnt).read_text() == str(pid)


def _distrust_umount(test_vm: TestVm, tmp_path: Path, plant: str) -> None:
    """Mount, replace the PID file (pointing at init, which never exits), umount: refused at
    once (the old umount waited a minute for init) while the mount is still taken down."""
    run, mnt = tmp_path / "run", tmp_path / "m"
    with _mounted(test_vm, mnt, _env(run)) as pid:
        pidfile = _pidfile(run, mnt)
        pidfile.unlink()
        if plant == "symlink":
            (tmp_path / "init.pid").write_text("1")
            pidfile.symlink_to(tmp_path / "init.pid")
            why = "is a symbolic link: not trusted"
        else:
            pidfile.write_text("1")
            os.chown(pidfile, NOBODY, NOBODY)
            why = f"is owned by uid {NOBODY}, not 0: not trusted"
        started = time.monotonic()
        done = vcbfs("umount", str(mnt), env=_env(run))
        assert time.monotonic() - started < 30
        assert done.returncode == 1
        assert done.stderr == (
            f"vcbfs: {pidfile}: {why}; unmounted, but not waiting for the server\n"
        )
        assert not os.path.ismount(mnt)
        _wait_gone(pid)  # the real server still ends on its own
        assert os.path.lexists(pidfile)  # left for the admin to look at


def test_umount_does_not_trust_a_symlinked_pid_file(test_vm: TestVm, tmp_path: Path) -> None:
    _distrust_umount(test_vm, tmp_path, "symlink")


@as_root
def test_umount_does_not_trust_a_pid_file_owned_by_another_user(
    test_vm: TestVm, tmp_path: Path
) -> None:
    _distrust_umount(test_vm, tmp_path, "chown")


def test_release_does_not_use_a_symlinked_run_dir(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "real")
    (tmp_path / "m").mkdir()
    done = vcbfs("release", str(tmp_path / "m/VM"), env=_env(tmp_path / "run"))
    assert done.returncode == 1
    assert done.stderr == f"vcbfs: {tmp_path}/run: is a symbolic link; {_rule()}\n"
