"""Secrets leave the environment everywhere it can be read; run-state files are never trusted
through a symbolic link or from another owner.  Each check runs in a real process: the
environment tests in a child Python (the test runner's own environment stays untouched)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vcbfs.hygiene import (
    UnsafeStateError,
    drop_secret_env,
    private_dir,
    read_private_file,
    write_private_file,
)

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")

# Run in a child started with the secrets in its environment; prints what each reader sees.
CHILD = r"""
import ctypes, json, os, subprocess
os.environ["VCBFS_SESSION_COOKIE"] = "set-again-later"  # a putenv()'d copy on the heap too
from vcbfs.hygiene import drop_secret_env
drop_secret_env()
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
print(json.dumps({
    "proc": open("/proc/self/environ", "rb").read().decode(errors="replace"),
    "os": sorted(k for k in os.environ if k.startswith(("VCBFS_", "KEEP"))),
    "getenv": [n for n in ("VCBFS_PASSWORD", "VCBFS_SESSION_COOKIE") if libc.getenv(n.encode())],
    "child": subprocess.run(["env"], capture_output=True, text=True).stdout,
}))
"""


def test_secrets_leave_os_environ_the_c_environ_children_and_proc() -> None:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).parents[1]),
        "VCBFS_PASSWORD": "pw-Secret-1",
        "VCBFS_SESSION_COOKIE": "vmware_soap_session=cookie-Secret-2",
        "VCBFS_PASSWORD_FILE": "/not/a/secret",  # a path, and not VCBFS_PASSWORD
        "KEEP": "me",
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    seen = json.loads(done.stdout)
    for where in ("proc", "child"):
        assert "Secret" not in seen[where] and "set-again-later" not in seen[where], where
        assert "VCBFS_PASSWORD=" not in seen[where] and "VCBFS_SESSION_COOKIE" not in seen[where]
        assert "KEEP=me" in seen[where] and "VCBFS_PASSWORD_FILE=/not/a/secret" in seen[where]
    assert seen["os"] == ["KEEP", "VCBFS_PASSWORD_FILE"]
    assert seen["getenv"] == []


def test_dropping_twice_or_with_nothing_set_is_harmless() -> None:
    before = dict(os.environ)
    drop_secret_env(("VCBFS_TEST_NEVER_SET",))
    drop_secret_env(("VCBFS_TEST_NEVER_SET",))
    assert dict(os.environ) == before


def test_a_missing_run_dir_is_made_private(tmp_path: Path) -> None:
    fd = private_dir(tmp_path / "a/run", create=True)
    assert fd is not None
    os.close(fd)
    st = os.lstat(tmp_path / "a/run")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert private_dir(tmp_path / "missing", create=False) is None


def test_a_symlinked_run_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for create in (True, False):
        with pytest.raises(UnsafeStateError) as info:
            private_dir(tmp_path / "link", create=create)
        assert str(info.value) == (
            f"{tmp_path}/link: is a symbolic link; it must be a directory (not a symbolic link) "
            f"owned by uid {os.geteuid()} and not writable by group or others"
        )


def test_a_writable_run_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    os.chmod(tmp_path / "run", 0o1777)
    with pytest.raises(UnsafeStateError, match=r"writable by group or others \(mode 1777\)"):
        private_dir(tmp_path / "run", create=True)


@as_root
def test_a_run_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    os.chown(tmp_path / "run", NOBODY, NOBODY)
    with pytest.raises(UnsafeStateError, match=f"run: is owned by uid {NOBODY}; it must be"):
        private_dir(tmp_path / "run", create=True)


def _run_dir(tmp_path: Path) -> int:
    fd = private_dir(tmp_path / "run", create=True)
    assert fd is not None
    return fd


def test_a_state_file_replaces_a_planted_symlink_without_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    fd = _run_dir(tmp_path)
    try:
        (tmp_path / "run/x.pid").symlink_to(victim)
        write_private_file(fd, "x.pid", b"1234")
        assert victim.read_text() == "precious"
        st = os.lstat(tmp_path / "run/x.pid")
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert read_private_file(fd, "x.pid", where="run") == b"1234"
        assert sorted(os.listdir(tmp_path / "run")) == ["x.pid"]
        assert read_private_file(fd, "missing.pid", where="run") is None
    finally:
        os.close(fd)


def test_untrusted_state_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "one").write_text("1")
    fd = _run_dir(tmp_path)
    run = tmp_path / "run"
    try:
        (run / "link.pid").symlink_to(tmp_path / "one")
        os.mkfifo(run / "fifo.pid")  # would block a plain open
        (run / "shared.pid").write_text("1")
        os.chmod(run / "shared.pid", 0o666)
        cases = {
            "link.pid": "is a symbolic link: not trusted",
            "fifo.pid": "is not a regular file: not trusted",
            "shared.pid": "is writable by group or others (mode 0666): not trusted",
        }
        if os.geteuid() == 0:
            (run / "theirs.pid").write_text("1")
            os.chown(run / "theirs.pid", NOBODY, NOBODY)
            cases["theirs.pid"] = f"is owned by uid {NOBODY}, not 0: not trusted"
        for name, why in cases.items():
            with pytest.raises(UnsafeStateError) as info:
                read_private_file(fd, name, where=str(run))
            assert str(info.value) == f"{run}/{name}: {why}"
    finally:
        os.close(fd)
