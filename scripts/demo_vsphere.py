"""The demo of scripts/demo: back up a (simulated) vSphere VM's files with vcbfs, step by step.

1. Start vcsim, VMware's vSphere simulator (the test suite's Go launcher over govmomi, built
   once into the test cache), with a strong certificate and one user, and add ``win-demo``: the
   two-disk Windows-like VM of the mount tests (tests/fs/vmfixture.py, built once and cached;
   C: is a small MBR disk with a SYSTEM hive, F: the reference NTFS volume inside a GPT disk),
   added the way tests/vsphere/conftest.py adds it.
2. Set the VCBFS_* environment a backup script would set, and ``vcbfs ls`` the VMs.
3. ``vcbfs mount name:win-demo MNT``: a quiesced snapshot, its disks read over HTTPS.
4. Look at ``letters/C`` and back it up with tar.
5. ``vcbfs umount MNT``, and ask the simulator: the snapshot is gone.
6. The same VM's files read locally, without vSphere (``vcbfs disk info``, ``vcbfs mount VMX``).

Every command is shown as it runs (``$ ...``), with ``$DEMO`` for the demo's temporary folder.
Whatever happens (an error, ^C, SIGTERM), mounts are unmounted, the simulator is stopped (it
removes its datastores) and the temporary folder is removed.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fs.vmfixture import SYS_FILES, build_test_vm  # noqa: E402
from tests.ntfs.ntfsimages import build_ntfs_image, ntfs_cache_dir  # noqa: E402
from tests.vsphere.simulator import (  # noqa: E402
    Vcsim,
    add_vm,
    build_vcsim,
    list_snapshots,
    make_cert,
    managed,
)
from tests.windows.hives import build_system_hive  # noqa: E402

VM_NAME = "win-demo"  # as in tests/vsphere/conftest.py
VM_IP = "10.0.0.42"
VM_HOSTNAME = "win-demo.example.test"
VENV_BIN = ROOT / ".venv" / "bin"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str, *notes: str) -> None:
    say()
    say(f"== {title}")
    for note in notes:
        say(textwrap.fill(note, 96, initial_indent="   ", subsequent_indent="   "))


def hive(mounted: dict[str, bytes]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return build_system_hive(Path(d) / "SYSTEM", mounted).read_bytes()


class Demo:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.mnt = work / "mnt"
        self.mnt.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VCBFS_")}
        self.env["PATH"] = f"{VENV_BIN}:{self.env.get('PATH', '/usr/bin:/bin')}"
        self.env["DEMO"] = str(work)
        self.sim: Vcsim | None = None
        self.vm: Any = None

    # -- running shown commands --

    def sh(self, command: str, check: bool = True) -> int:
        """Show ``command`` and run it with bash, in the demo's environment."""
        say(f"$ {command}")
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            env=self.env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and done.returncode:
            raise RuntimeError(f"failed (exit {done.returncode}): {command}")
        return done.returncode

    def mounted(self) -> bool:
        want = os.path.realpath(self.mnt)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return any(line.split()[4] == want for line in f)

    def unmount_quietly(self) -> None:
        if not self.mounted():
            return
        done = subprocess.run(
            [str(VENV_BIN / "vcbfs"), "umount", str(self.mnt)],
            env=self.env,
            capture_output=True,
            check=False,
        )
        if done.returncode and self.mounted():
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)

    # -- the simulator --

    def our_snapshots(self) -> list[str]:
        assert self.sim is not None and self.vm is not None
        with self.sim.session() as si:
            snaps = list_snapshots(si, managed(si, self.vm.moref))
        return [s.name for s in snaps if s.name.startswith("vcbfs-backup ")]

    def show_snapshots(self) -> None:
        snaps = self.our_snapshots()
        said = ", ".join(f"'{s}'" for s in snaps) if snaps else "none"
        say(f"(asking the simulator) vcbfs snapshots of {VM_NAME}: {said}")

    # -- the steps --

    def run(self) -> None:
        step(
            "1. A vSphere to back up: vcsim with a Windows-like VM",
            "vcsim is VMware's vSphere API simulator (govmomi). It never runs a guest, but it "
            "answers the vSphere API (log-in, inventory, snapshots) and serves datastore files "
            "over HTTPS, which is all vcbfs needs.",
        )
        if not (ntfs_cache_dir() / ".complete").exists():
            say("   building the test VM and the simulator (once, a minute or two; cached in")
            say(f"   {ntfs_cache_dir().parent})")
        source = build_test_vm(build_ntfs_image(ntfs_cache_dir()), hive)
        build_vcsim()  # about a minute the first time; cached
        certfile, keyfile = make_cert(self.work / "tls")
        self.sim = Vcsim(
            username="backup",
            password=secrets.token_urlsafe(12),
            certfile=certfile,
            keyfile=keyfile,
            workdir=self.work / "vcsim",
        )
        self.sim.start()
        with self.sim.session() as si:
            self.vm = add_vm(
                self.sim,
                si,
                VM_NAME,
                [source.sys_vmdk, source.data_vmdk],
                ip=VM_IP,
                hostname=VM_HOSTNAME,
            )
        say(f"   simulator: {self.sim.url} (user 'backup', a self-signed certificate)")
        say(f"   VM {VM_NAME} ({VM_IP}, powered on), {len(self.vm.disks)} disks:")
        for d in self.vm.disks:
            say(f"     {d.file_name:<36} {d.capacity_bytes / (1 << 20):6.0f} MiB")

        pw = self.work / "password"
        pw.write_text(f"{self.sim.password}\n")
        pw.chmod(0o600)
        config = self.work / "config.toml"
        config.write_text("# the demo's settings come from the environment\n")
        settings = {
            "VCBFS_HOST": self.sim.host,
            "VCBFS_PORT": str(self.sim.port),
            "VCBFS_USER": str(self.sim.username),
            "VCBFS_PASSWORD_FILE": "$DEMO/password",
            "VCBFS_THUMBPRINT": self.sim.thumbprint,
            "VCBFS_STATE_DIR": "$DEMO/state",
            "VCBFS_RUN_DIR": "$DEMO/run",
            "VCBFS_CONFIG": "$DEMO/config.toml",
        }
        step(
            "2. Tell vcbfs where vCenter is, as a backup script would",
            "The password comes from a file only its owner can read (mode 600), never from the "
            "command line; the thumbprint pins the server's certificate.",
        )
        say(f"$ DEMO={self.work}")
        for key, value in settings.items():
            shown = value if value.startswith("$") else shlex.quote(value)
            say(f"$ export {key}={shown}")
            self.env[key] = value.replace("$DEMO", str(self.work))
        self.sh("vcbfs ls")

        step(
            "3. Mount the VM",
            "vcbfs logs in, finds the VM, takes a quiesced snapshot tagged as its own, and "
            "serves the snapshot's disks read-only, read over the datastore's HTTPS interface. "
            "The command returns once the mount is serving.",
        )
        started = time.perf_counter()
        self.sh(f"vcbfs mount name:{VM_NAME} $DEMO/mnt")
        self.sh("ls $DEMO/mnt $DEMO/mnt/letters")
        say(f"(mounted and listed in {time.perf_counter() - started:.2f} s)")
        self.show_snapshots()

        step(
            "4. Back up drive C: like any directory",
            "letters/C is the volume the guest calls C: (from its SYSTEM hive); digits/ has "
            "every volume by disk and partition, fullvm/ the VM's own files.",
        )
        self.sh("ls -l $DEMO/mnt/letters/C $DEMO/mnt/letters/C/Users/Public/Documents")
        self.sh("cat $DEMO/mnt/letters/C/boot.ini")
        self.sh("tar cf - -C $DEMO/mnt/letters/C . | wc -c")
        self.sh("tar cf $DEMO/c-drive.tar -C $DEMO/mnt/letters/C .")
        self.sh("tar tvf $DEMO/c-drive.tar | grep -v '/$' | head -5")
        self.sh(
            "tar xOf $DEMO/c-drive.tar ./Users/Public/Documents/report.txt | head -2  "
            "# the backup holds the guest's bytes"
        )
        report = SYS_FILES["Users/Public/Documents/report.txt"]
        tarred = subprocess.run(
            ["tar", "xOf", str(self.work / "c-drive.tar"), "./Users/Public/Documents/report.txt"],
            capture_output=True,
            check=True,
        ).stdout
        if tarred != report:
            raise RuntimeError("report.txt in the archive differs from what the VM was built with")

        step(
            "5. Unmount: vcbfs removes its snapshot",
            "If a mount is ever killed, 'vcbfs cleanup' finds and removes what it left.",
        )
        self.sh("vcbfs umount $DEMO/mnt")
        self.show_snapshots()
        if self.our_snapshots():
            raise RuntimeError("the snapshot is still there after vcbfs umount")

        step(
            "6. The same VM's files, read locally (no vSphere)",
            "vcbfs also reads a VM's files directly: a .vmx, a .vmdk or a raw image.",
        )
        self.env["VM"] = str(source.vmx.parent)
        say(f"$ VM={source.vmx.parent}  # where the demo VM's files were built")
        self.sh("vcbfs disk info $VM/data.vmdk")
        self.sh("vcbfs mount $VM/vm.vmx $DEMO/mnt")
        self.sh("ls $DEMO/mnt/letters/F | head -5")
        self.sh("vcbfs umount $DEMO/mnt")

    def close(self) -> None:
        self.unmount_quietly()
        if self.sim is not None:
            self.sim.stop()


def main() -> int:
    # SIGTERM unwinds like ^C, so that the mount, the simulator and the folder are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    work = Path(tempfile.mkdtemp(prefix="vcbfs-demo-"))
    work.chmod(0o700)
    demo = Demo(work)
    failed = False
    try:
        demo.run()
    except Exception as exc:  # the demo says what failed, then cleans up
        failed = True
        say(f"demo: FAILED: {exc}")
        if demo.sim is not None and demo.sim.stderr_text().strip():
            say("simulator log (last lines):")
            say(textwrap.indent(demo.sim.stderr_text().strip()[-2000:], "  "))
    finally:
        step("7. Clean up: unmount if need be, stop the simulator, remove $DEMO")
        try:
            demo.close()
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        say("done" if not failed else "done (after a failure: see above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
