"""vcbfs against vcsim, end to end: find VMs, mount through a snapshot, never leak one."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests.fs.vmfixture import SYS_FILES
from tests.together import together
from tests.vsphere.conftest import DEMO_HOSTNAME, DEMO_IP, DEMO_VM, VsphereVm
from tests.vsphere.simulator import (
    CONSOLIDATION_KEY,
    QUIESCE_FAULT_KEY,
    Vcsim,
    add_vm,
    create_snapshot,
    destroy_vm,
    find_all,
    list_snapshots,
    managed,
    properties,
    wait_task,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
OURS = re.compile(r"^vcbfs-backup \S+ [0-9a-f]{32}$")  # vcbfs's tag (not a look-alike)


@pytest.fixture
def env(vcsim: Vcsim, tmp_path: Path) -> dict[str, str]:
    """The environment a backup script would set: host, user, password file, pinned cert."""
    pw = tmp_path / "password"
    pw.write_text(f"{vcsim.password}\n")
    pw.chmod(0o600)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VCBFS_HOST": vcsim.host,
        "VCBFS_PORT": str(vcsim.port),
        "VCBFS_USER": str(vcsim.username),
        "VCBFS_PASSWORD_FILE": str(pw),
        "VCBFS_THUMBPRINT": vcsim.thumbprint,
        "VCBFS_STATE_DIR": str(tmp_path / "state"),
        "VCBFS_RUN_DIR": str(tmp_path / "run"),
        "VCBFS_CONFIG": str(_empty_config(tmp_path)),
    }


def vcbfs_password(env: dict[str, str]) -> str:
    return Path(env["VCBFS_PASSWORD_FILE"]).read_text().strip()


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("# the tests' settings come from the environment\n")
    return path


def vcbfs(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "vcbfs", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode:
        raise AssertionError(f"vcbfs {' '.join(args)} failed: {done.stderr}")
    return done


def _ours(vcsim: Vcsim, moref: str) -> list[str]:
    from tests.vsphere.simulator import managed

    with vcsim.session() as si:
        snaps = list_snapshots(si, managed(si, moref))
    return [s.name for s in snaps if OURS.match(s.name)]


def _all_snapshots(vcsim: Vcsim, moref: str) -> list[str]:
    from tests.vsphere.simulator import managed

    with vcsim.session() as si:
        return [s.name for s in list_snapshots(si, managed(si, moref))]


def _hooked_vm(vcsim: Vcsim, vsphere_vm: VsphereVm, name: str, hook: str) -> Any:
    """A VM on the demo disk whose extraConfig turns on one of the launcher's test hooks."""
    with vcsim.session() as si:
        return add_vm(vcsim, si, name, [vsphere_vm.source.sys_vmdk], extra={hook: "true"})


def _crash(env: dict[str, str], mnt: Path) -> None:
    """kill -9 the only mount's server, then clean the dead mount (its snapshot stays)."""
    pids = list(Path(env["VCBFS_RUN_DIR"]).glob("mount-*.pid"))
    assert len(pids) == 1
    os.kill(int(pids[0].read_text()), signal.SIGKILL)
    time.sleep(0.5)
    vcbfs(env, "umount", str(mnt))


@pytest.fixture
def mnt(tmp_path: Path, env: dict[str, str]) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        yield path
    finally:
        if os.path.ismount(path):
            vcbfs(env, "umount", str(path), check=False)


# -- finding VMs -----------------------------------------------------------------------------


def test_ls_and_specifiers(env: dict[str, str], vsphere_vm: VsphereVm) -> None:
    vm = vsphere_vm.vm
    every = json.loads(vcbfs(env, "ls", "--json").stdout)
    assert DEMO_VM in [v["name"] for v in every] and len(every) > 1
    for spec in (
        f"name:{DEMO_VM}",
        f"ipaddr:{DEMO_IP}",
        f"ipaddr:{DEMO_HOSTNAME.upper()}",
        f"uuid:{vm.uuid.upper()}",
        f"uuid:{vm.instance_uuid}",
        f"moref:{vm.moref}",
    ):
        found = json.loads(vcbfs(env, "ls", "-s", spec, "--json").stdout)
        assert [v["moref"] for v in found] == [vm.moref], spec
        assert found[0]["ipaddr"] == DEMO_IP and found[0]["power"] == "on"
    assert json.loads(vcbfs(env, "ls", "-s", "none:", "--json").stdout) == []
    on = json.loads(vcbfs(env, "ls", "-s", "powerstate:on", "--json").stdout)
    assert vm.moref in [v["moref"] for v in on]
    table = vcbfs(env, "ls", "-s", f"name:{DEMO_VM}").stdout
    assert vm.moref in table and DEMO_IP in table
    bad = vcbfs(env, "ls", "-s", "colour:red", check=False)
    assert bad.returncode == 1 and "bad VM specifier" in bad.stderr


def test_a_powered_off_vm_is_found_by_the_ip_it_last_had(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm
) -> None:
    """A powered-off VM reports no IP: the VM name cache (VMNAMECACHE) still knows it."""
    with vcsim.session() as si:
        vm = add_vm(vcsim, si, "sleeper", [vsphere_vm.source.sys_vmdk], ip="10.0.0.99")
    try:
        vcbfs(env, "ls")  # sees the IP, and remembers it
        with vcsim.session() as si:
            ref = managed(si, vm.moref)
            wait_task(si, ref.PowerOffVM_Task())
            # the simulator keeps what it was told; vSphere forgets a stopped guest's IP
            forget = vim.option.OptionValue(key="SET.guest.ipAddress", value="")
            wait_task(si, ref.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[forget])))
            assert not properties(si, ref, ["guest.ipAddress"]).get("guest.ipAddress")
        found = json.loads(vcbfs(env, "ls", "-s", "ipaddr:10.0.0.99", "--json").stdout)
        assert [(v["moref"], v["power"]) for v in found] == [(vm.moref, "off")]
    finally:
        with vcsim.session() as si:
            destroy_vm(si, vm.moref)


def test_host_and_user_from_the_command_line(env: dict[str, str], vsphere_vm: VsphereVm) -> None:
    """-h/--host and -u/--user win over the environment (later sources win)."""
    wrong = {**env, "VCBFS_HOST": "nowhere.invalid", "VCBFS_USER": "nobody"}
    assert vcbfs(wrong, "ls", check=False).returncode == 1
    host, user = env["VCBFS_HOST"], env["VCBFS_USER"]
    for args in (("-h", host, "-u", user), ("--host", host, "--user", user)):
        found = json.loads(vcbfs(wrong, "ls", *args, "-s", f"name:{DEMO_VM}", "--json").stdout)
        assert [v["moref"] for v in found] == [vsphere_vm.vm.moref]


def test_name_cache_finds_a_vm_by_its_last_ip(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm
) -> None:
    vcbfs(env, "ls")  # sees the IP and remembers it
    cache = json.loads((Path(env["VCBFS_STATE_DIR"]) / "vmnames.json").read_text())
    assert DEMO_IP in cache["vms"][vsphere_vm.vm.moref]["ips"]


# -- mounting through a snapshot ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["name", "ipaddr", "uuid", "moref"])
def test_mount_by_specifier(
    kind: str, env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    vm = vsphere_vm.vm
    spec = {
        "name": f"name:{DEMO_VM}",
        "ipaddr": f"ipaddr:{DEMO_IP}",
        "uuid": f"uuid:{vm.uuid}",
        "moref": f"moref:{vm.moref}",
    }[kind]
    vcbfs(env, "mount", spec, str(mnt))
    assert sorted(os.listdir(mnt)) == ["digits", "fullvm", "letters"]
    assert sorted(os.listdir(mnt / "letters")) == ["C", "F"]
    for rel, data in SYS_FILES.items():
        assert (mnt / "letters/C" / rel).read_bytes() == data
    fullvm = sorted(os.listdir(mnt / "fullvm"))
    assert "catalog" in fullvm and any(n.endswith(".vmx") for n in fullvm)
    assert len(_ours(vcsim, vm.moref)) == 1  # the snapshot exists while mounted
    journal = Path(env["VCBFS_STATE_DIR"]) / "journal"
    assert len(list(journal.glob("*.json"))) == 1
    vcbfs(env, "umount", str(mnt))
    assert _ours(vcsim, vm.moref) == []  # and is gone after unmount
    assert list(journal.glob("*.json")) == []


def test_a_specifier_matching_no_vm_mounts_nothing(
    env: dict[str, str], vsphere_vm: VsphereVm, mnt: Path
) -> None:
    for spec in ("none:", "name:no-such-vm"):
        done = vcbfs(env, "mount", spec, str(mnt), check=False)
        assert done.returncode == 1 and "no VM matches" in done.stderr, done.stderr
        assert not os.path.ismount(mnt)


def test_data_volume_matches_the_fixture(
    env: dict[str, str], vsphere_vm: VsphereVm, mnt: Path
) -> None:
    """The GPT data disk, read over the datastore HTTPS transport, against ntfs-3g's manifest."""
    import hashlib

    vcbfs(env, "mount", f"name:{DEMO_VM}", str(mnt))
    entries = vsphere_vm.source.data.manifest["entries"]
    checked = 0
    for rel, entry in sorted(entries.items()):
        if entry.get("type") != "file" or entry.get("size", 0) > 4 << 20:
            continue
        data = (mnt / "letters/F" / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        checked += 1
        if checked >= 200:
            break
    assert checked > 20


def test_local_datastore_path(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    """The SAN/NFS route: the datastore's directory read as a local path."""
    ds = vsphere_vm.vm.datastore
    path = vcsim.datastore_dir(ds)
    vcbfs(
        env,
        "mount",
        "--transport",
        "local",
        "--datastore-path",
        f"{ds}={path}",
        f"name:{DEMO_VM}",
        str(mnt),
    )
    assert (mnt / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]


# -- never leaked, never someone else's --------------------------------------------------------


def test_kill_9_then_cleanup_removes_only_ours(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    with vcsim.session() as si:
        vm = add_vm(vcsim, si, "crash-victim", [vsphere_vm.source.sys_vmdk], ip="10.0.0.77")
        create_snapshot(si, vm.moref, "before patching", "the administrator's own snapshot")
    vcbfs(env, "mount", "name:crash-victim", str(mnt))
    assert len(_ours(vcsim, vm.moref)) == 1
    _crash(env, mnt)
    assert len(_ours(vcsim, vm.moref)) == 1  # the crash leaked it ...
    dry = vcbfs(env, "cleanup", "--dry-run").stdout
    assert "would release" in dry and "crash-victim" in dry
    assert len(_ours(vcsim, vm.moref)) == 1
    done = vcbfs(env, "cleanup").stdout
    assert "released" in done
    assert _ours(vcsim, vm.moref) == []  # ... and cleanup released it
    assert _all_snapshots(vcsim, vm.moref) == ["before patching"]
    assert "nothing to release" in vcbfs(env, "cleanup").stdout


UNSHARE = ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc"]


class _Clone:
    """Another proxy cloned from this one's template: the same host name, its own machine id,
    PIDs, mounts and state directory (namespaces of its own, as a separate machine has)."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        root.mkdir()
        self.machine_id = root / "machine-id"
        self.machine_id.write_text(uuid.uuid4().hex + "\n")
        self.env = {
            **env,
            "VCBFS_STATE_DIR": str(root / "state"),
            "VCBFS_RUN_DIR": str(root / "run"),
        }
        self.mnt = root / "mnt"
        self.mnt.mkdir()

    def _script(self, *args: str) -> list[str]:
        cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "vcbfs", *args])
        return ["sh", "-c", f"mount --bind {self.machine_id} /etc/machine-id && exec {cmd}"]

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """``vcbfs ARGS`` as the clone's first process (killing it ends the clone)."""
        return subprocess.Popen(
            [*UNSHARE, *self._script(*args)], env=self.env, stdin=subprocess.DEVNULL
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``vcbfs ARGS`` in a fresh clone (as after a reboot of it)."""
        return self._checked([*UNSHARE, *self._script(*args)])

    def enter(self, clone: subprocess.Popen[bytes], *args: str) -> subprocess.CompletedProcess[str]:
        """``vcbfs ARGS`` inside the running clone (its machine id, PIDs and mounts)."""
        init = Path(f"/proc/{clone.pid}/task/{clone.pid}/children").read_text().split()[0]
        # -r -w: the target's root and directory (the same on a machine; in a chroot, the
        # mount namespace alone would land at the host's root)
        nsenter = ["nsenter", "-t", init, "-m", "-u", "-p", "-r", "-w"]
        return self._checked([*nsenter, sys.executable, "-m", "vcbfs", *args])

    def _checked(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        return done


def test_two_proxies_with_one_host_name_spare_each_other(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path, tmp_path: Path
) -> None:
    """A proxy and its clone (same host name, another machine id, PID space and state
    directory) each mount a VM: neither's cleanup takes the other's snapshot, held or leaked;
    the clone's own cleanup takes its leaked one."""
    with vcsim.session() as si:
        other = add_vm(vcsim, si, "clone-vm", [vsphere_vm.source.sys_vmdk], ip="10.0.0.78")
    vcbfs(env, "mount", f"name:{DEMO_VM}", str(mnt))  # this proxy's snapshot, held
    ours = _ours(vcsim, vsphere_vm.vm.moref)
    clone = _Clone(env, tmp_path / "clone")
    server = clone.start("mount", "-f", "name:clone-vm", str(clone.mnt))
    try:
        deadline = time.monotonic() + 60
        while len(_ours(vcsim, other.moref)) != 1:
            assert server.poll() is None and time.monotonic() < deadline, "the clone's mount"
            time.sleep(0.2)
        theirs = _ours(vcsim, other.moref)
        assert "nothing to release" in clone.enter(server, "cleanup").stdout
        assert "nothing to release" in vcbfs(env, "cleanup").stdout
        assert _ours(vcsim, vsphere_vm.vm.moref) == ours and _ours(vcsim, other.moref) == theirs
    finally:
        server.kill()  # the clone crashes: its mount namespace, FUSE mount and PIDs go with it
        server.wait()
    assert "nothing to release" in vcbfs(env, "cleanup").stdout  # not ours, though leaked
    assert _ours(vcsim, other.moref) == theirs
    assert "released" in clone.run("cleanup").stdout  # the clone, rebooted, cleans up
    assert _ours(vcsim, other.moref) == [] and _ours(vcsim, vsphere_vm.vm.moref) == ours
    assert (mnt / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]


def test_cleanup_leaves_a_running_mount_alone(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    vcbfs(env, "mount", f"name:{DEMO_VM}", str(mnt))
    assert "nothing to release" in vcbfs(env, "cleanup").stdout
    assert len(_ours(vcsim, vsphere_vm.vm.moref)) == 1
    assert (mnt / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]


def test_sigterm_releases(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    vcbfs(env, "mount", f"name:{DEMO_VM}", str(mnt))
    pid = int(next(Path(env["VCBFS_RUN_DIR"]).glob("mount-*.pid")).read_text())
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not os.path.ismount(mnt) and not _ours(vcsim, vsphere_vm.vm.moref):
            break
        time.sleep(0.05)
    assert not os.path.ismount(mnt)
    assert _ours(vcsim, vsphere_vm.vm.moref) == []


def test_quiesce_fault_is_a_clear_error(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    vm = _hooked_vm(vcsim, vsphere_vm, "no-vss", QUIESCE_FAULT_KEY)
    failed = vcbfs(env, "mount", "name:no-vss", str(mnt), check=False)
    assert failed.returncode == 1
    assert f"cannot quiesce VM 'no-vss' ({vm.moref})" in failed.stderr
    assert "Failed to quiesce the virtual machine" in failed.stderr  # vSphere's own words
    assert "--no-quiesce" in failed.stderr
    assert not os.path.ismount(mnt)
    assert _all_snapshots(vcsim, vm.moref) == []
    assert list((Path(env["VCBFS_STATE_DIR"]) / "journal").glob("*.json")) == []
    vcbfs(env, "mount", "--no-quiesce", "name:no-vss", str(mnt))
    assert (mnt / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]


def test_a_vm_needing_consolidation_is_reported(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    """After its snapshot is released, by the mount or by cleanup, the administrator hears of it."""
    vm = _hooked_vm(vcsim, vsphere_vm, "unmerged", CONSOLIDATION_KEY)
    server = subprocess.Popen(
        [sys.executable, "-m", "vcbfs", "mount", "-f", "name:unmerged", str(mnt)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(400):
            if os.path.ismount(mnt) or server.poll() is not None:
                break
            time.sleep(0.05)
        assert (mnt / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
        vcbfs(env, "umount", str(mnt))
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0
    assert f"VM 'unmerged' ({vm.moref}) needs disk consolidation" in stderr
    assert _ours(vcsim, vm.moref) == []

    vcbfs(env, "mount", "name:unmerged", str(mnt))
    _crash(env, mnt)
    done = vcbfs(env, "cleanup").stdout
    assert "unmerged" in done and "needs disk consolidation" in done
    assert _ours(vcsim, vm.moref) == []


# -- trust and credentials ---------------------------------------------------------------------


def test_bad_password(env: dict[str, str], tmp_path: Path, vsphere_vm: VsphereVm) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    done = vcbfs({**env, "VCBFS_PASSWORD_FILE": str(wrong)}, "ls", check=False)
    assert done.returncode == 1
    assert "wrong user name or password" in done.stderr
    assert "not-the-password" not in done.stderr
    debug = vcbfs({**env, "VCBFS_PASSWORD_FILE": str(wrong)}, "--debug", "ls", check=False)
    assert debug.returncode == 1 and "not-the-password" not in debug.stderr + debug.stdout
    right = vcbfs(env, "--debug", "ls")
    assert str(vcbfs_password(env)) not in right.stderr + right.stdout


def test_certificate_refused_unless_pinned(env: dict[str, str], vcsim: Vcsim) -> None:
    unpinned = {k: v for k, v in env.items() if k != "VCBFS_THUMBPRINT"}
    done = vcbfs(unpinned, "ls", check=False)
    assert done.returncode == 1
    assert "not trusted" in done.stderr and vcsim.thumbprint.upper() in done.stderr.upper()
    assert vcbfs(unpinned, "ls", "--thumbprint", vcsim.thumbprint).returncode == 0
    wrong = "00" * 32
    done = vcbfs(unpinned, "ls", "--thumbprint", wrong, check=False)
    assert done.returncode == 1 and "pinned" in done.stderr
    insecure = vcbfs(unpinned, "ls", "--insecure")
    assert "verification" in insecure.stderr and "off" in insecure.stderr


# -- automount -----------------------------------------------------------------------------------


def test_automount_one_snapshot_for_8_readers_released_when_idle(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    moref = vsphere_vm.vm.moref
    vcbfs(env, "mount", "--automount", "-o", "idle=2", f"name:{DEMO_VM}", str(mnt))
    assert os.listdir(mnt) == [DEMO_VM]
    os.stat(mnt / DEMO_VM)
    assert _ours(vcsim, moref) == []  # listing and stat take nothing
    results = together((mnt / DEMO_VM / "letters/C/boot.ini").read_bytes, 8)
    assert results == [SYS_FILES["boot.ini"]] * 8
    assert len(_ours(vcsim, moref)) == 1  # one snapshot for all eight
    for _ in range(100):  # idle=2: released within a few seconds
        if not _ours(vcsim, moref):
            break
        time.sleep(0.1)
    assert _ours(vcsim, moref) == []
    assert (mnt / DEMO_VM / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
    assert len(_ours(vcsim, moref)) == 1  # used again: a new snapshot
    assert "released" in vcbfs(env, "release", str(mnt / DEMO_VM)).stdout
    assert _ours(vcsim, moref) == []
    assert (mnt / DEMO_VM / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
    assert len(_ours(vcsim, moref)) == 1
    vcbfs(env, "umount", str(mnt))  # unmounting releases what is open
    assert _ours(vcsim, moref) == []


def test_spec_naming_several_vms_mounts_a_folder(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    with vcsim.session() as si:
        add_vm(vcsim, si, "twin-a", [vsphere_vm.source.sys_vmdk], ip="10.9.0.1")
        add_vm(vcsim, si, "twin-b", [vsphere_vm.source.sys_vmdk], ip="10.9.0.2")
    vcbfs(env, "mount", "ipaddr:10.9.0.1", str(mnt))  # one VM: its tree at the mount point
    assert sorted(os.listdir(mnt)) == ["digits", "fullvm", "letters"]
    vcbfs(env, "umount", str(mnt))
    # A name matching two VMs would be ambiguous; powerstate:on takes every running VM.
    vcbfs(env, "mount", "powerstate:on", str(mnt), timeout=300)
    names = os.listdir(mnt)
    assert {"twin-a", "twin-b", DEMO_VM} <= set(names)
    assert (mnt / "twin-b/letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
    vcbfs(env, "umount", str(mnt))
    with vcsim.session() as si:
        morefs = list(find_all(si, vim.VirtualMachine, ["name"]))
    assert {m: _ours(vcsim, m) for m in morefs if _ours(vcsim, m)} == {}


# -- autofs and systemd ------------------------------------------------------------------------

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_autofs_program_map_and_mount_helper(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    entry = subprocess.run(
        [SCRIPTS / "autofs/auto.vcbfs", DEMO_VM], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert entry == f'-fstype=vcbfs,ro,nosuid,nodev ":name={DEMO_VM}"'
    refused = subprocess.run([SCRIPTS / "autofs/auto.vcbfs", "../etc"], check=False)
    assert refused.returncode != 0
    # What mount(8) runs for that entry: mount.vcbfs DEVICE DIR -o OPTIONS.
    subprocess.run(
        [SCRIPTS / "autofs/mount.vcbfs", f"name={DEMO_VM}", str(mnt), "-o", "ro,nosuid,nodev"],
        env={**env, "VCBFS": f"{sys.executable} -m vcbfs"},
        check=True,
        timeout=120,
    )
    assert (mnt / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
    assert len(_ours(vcsim, vsphere_vm.vm.moref)) == 1
    vcbfs(env, "umount", str(mnt))  # what autofs does after its timeout
    assert _ours(vcsim, vsphere_vm.vm.moref) == []


def test_systemd_unit_names_real_commands() -> None:
    """Each command of the unit parses as vcbfs's own command line would parse it."""
    from vcbfs.cli.main import build_parser

    unit = (SCRIPTS / "systemd/vcbfs-automount.service").read_text()
    commands = [
        line.split("=", 1)[1].split()
        for line in unit.splitlines()
        if line.startswith(("ExecStart=", "ExecStartPre=", "ExecStop="))
    ]
    assert [c[0] for c in commands] == ["/usr/local/bin/vcbfs"] * 3
    parsed = [build_parser(c[1]).parse_args(c[1:]) for c in commands]
    assert [a.verb for a in parsed] == ["cleanup", "mount", "umount"]
    mount = parsed[1]
    assert mount.automount and mount.foreground and mount.targets == ["any:", "/vcb"]
    assert parsed[2].mountpoint == "/vcb"


def test_the_next_mount_cleans_up_after_a_crash(
    env: dict[str, str], vcsim: Vcsim, vsphere_vm: VsphereVm, mnt: Path
) -> None:
    with vcsim.session() as si:
        vm = add_vm(vcsim, si, "crash-again", [vsphere_vm.source.sys_vmdk])
    vcbfs(env, "mount", "name:crash-again", str(mnt))
    pid = int(next(Path(env["VCBFS_RUN_DIR"]).glob("mount-*.pid")).read_text())
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    vcbfs(env, "umount", str(mnt))
    assert len(_ours(vcsim, vm.moref)) == 1
    done = vcbfs(env, "mount", f"name:{DEMO_VM}", str(mnt))  # a start after the crash
    assert "startup cleanup" in done.stderr and "crash-again" in done.stderr
    assert _ours(vcsim, vm.moref) == []
    assert len(_ours(vcsim, vsphere_vm.vm.moref)) == 1


def test_delta_chains_over_the_datastore(
    env: dict[str, str], vcsim: Vcsim, vmdk_images: dict[str, Path], mnt: Path
) -> None:
    """ESXi snapshot chains (COWD and SEsparse over a vmfs flat base, names with spaces) read
    through the datastore's HTTPS interface give the generator's reference bytes."""
    import hashlib

    chains = [vmdk_images["esx-cowd-chain"], vmdk_images["esx-sesparse"]]
    with vcsim.session() as si:
        vm = add_vm(vcsim, si, "chains", chains)
    assert len(vm.disks) == 2 and all(len(d.files) >= 3 for d in vm.disks)  # parents came too
    vcbfs(env, "mount", "name:chains", str(mnt))
    flats = sorted(n for n in os.listdir(mnt / "fullvm") if n.endswith("-flat.vmdk"))
    assert len(flats) == 2
    got = sorted(hashlib.sha256((mnt / "fullvm" / n).read_bytes()).hexdigest() for n in flats)
    want = sorted(hashlib.sha256((c.parent / "ref.raw").read_bytes()).hexdigest() for c in chains)
    assert got == want
