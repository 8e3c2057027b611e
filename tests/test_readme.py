"""Every command line the README shows, run for real (issue 12, deliverable 8).

The README's usages are found by reading it, not copied here: every line of its code blocks
that runs ``vcbfs``, ``.venv/...`` or ``scripts/...``, and every inline code span of the same
kinds, or an option (``--...``, ``-o ...``), a VM specifier (``name:web01``) or a datastore URL.
Each found text must be in exactly one of the tables below, and every table entry must still be
in the README, so that a usage added to the README with no test here fails
``test_every_readme_usage_is_run_or_excused``:

- ``RUN``: run against the test fixtures (the two-disk test VM of tests/fs, the NTFS images of
  tests/ntfs, the vcsim simulator of tests/vsphere), each ``[...]`` once with every optional
  part and once with none, placeholders (``PATH``, ``N``, ``SPEC``, ...) filled in per case: it
  must exit 0 and print what the README says it prints.  A mount is made for real, its tree
  checked, then unmounted.
- ``COVERED``: an inline span that is part of a code-block usage that ``RUN`` runs (``vcbfs
  mount``, ``--no-quiesce``).
- ``PARSED``: benchmarks, too slow to run here; their parser accepts them.
- ``FILES``: a span naming a file of the repository; it must exist.
- ``EXCUSED``: what a test cannot do, with the reason.

Whatever is run, a usage must never be an argparse error (exit 2, "usage:").
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fs.conftest import test_vm  # noqa: F401  (fixtures of tests/fs and tests/vsphere)
from tests.fs.vmfixture import SYS_FILES, TestVm
from tests.images import link_into
from tests.vsphere.conftest import (  # noqa: F401
    DEMO_HOSTNAME,
    DEMO_IP,
    DEMO_VM,
    VsphereVm,
    vcsim,
    vsphere_vm,
)
from tests.vsphere.simulator import Vcsim, add_vm, list_snapshots, managed
from vcbfs.vsphere.spec import KINDS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MIB = 1 << 20
OURS = re.compile(r"^vcbfs-backup (\S+) [0-9a-f]{32}$")  # `vcbfs-backup <proxy host> <id>`

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")


# -- finding the usages ------------------------------------------------------------------------

FENCE = re.compile(r"^```(\S*)\s*$")
SPAN = re.compile(r"`([^`\n]+)`")
BLOCK_COMMAND = re.compile(r"^(vcbfs|\.venv/\S+|scripts/\S*[^/\s])(\s|$)")
INLINE_USAGE = re.compile(
    r"^(vcbfs(\s|$)|\.venv(/|$)|scripts/|-|https?://|(" + "|".join(KINDS) + r"):)"
)


@dataclass(frozen=True)
class Usage:
    text: str  # as written, without its comment
    lineno: int
    inline: bool


def find_usages(readme: str | None = None) -> list[Usage]:
    """Every usage the README shows, in order (a text shown twice is found twice)."""
    text = README.read_text(encoding="utf-8") if readme is None else readme
    found: list[Usage] = []
    fence: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            fence = None if fence is not None else m.group(1)
            continue
        if fence is None:
            for span in SPAN.findall(line):
                if INLINE_USAGE.match(span):
                    found.append(Usage(span, lineno, inline=True))
            continue
        command = re.sub(r"\s+#.*$", "", line).strip()
        if fence == "sh" and command and not command.startswith("#"):
            # A shell block holds only commands we know how to run.
            assert BLOCK_COMMAND.match(command), f"README.md:{lineno}: not a usage: {line!r}"
        # Any other block too (not the layout block's `vcbfs/cli/` or `scripts/   setup, ...`)
        if BLOCK_COMMAND.match(command):
            found.append(Usage(re.sub(r"\s+", " ", command), lineno, inline=False))
    return found


def test_the_finder_reads_blocks_and_spans() -> None:
    sample = (
        "Run `vcbfs ls` or `--json`, not `tar cf`.\n```sh\nvcbfs x A  # a comment\n"
        "          # more comment\n```\n```toml\nhost = 1\n```\n```\nscripts/   a folder\n"
        "vcbfs/cli/  the command line\nvcbfs y B\n```\n"
    )
    assert find_usages(sample) == [
        Usage("vcbfs ls", 1, True),
        Usage("--json", 1, True),
        Usage("vcbfs x A", 3, False),
        Usage("vcbfs y B", 12, False),
    ]
    with pytest.raises(AssertionError, match="not a usage"):
        find_usages("```sh\nsudo vcbfs ls\n```\n")


# -- filling in and running a usage ----------------------------------------------------------

PLACEHOLDER = re.compile(r"(?<![\w-])[A-Z][A-Z0-9_]*(?!\w)")


def variants(text: str) -> list[str]:
    """The usage with every optional ``[...]`` part, and with none (once if they are equal)."""
    full = text.replace("[", "").replace("]", "")
    bare = text
    while (shorter := re.sub(r"\s*\[[^\[\]]*\]", "", bare)) != bare:
        bare = shorter
    return [full] if full == bare else [full, bare]


def fill(text: str, values: dict[str, str]) -> list[str]:
    """The words of ``text`` with placeholders (upper-case words) or whole words replaced."""

    def one(m: re.Match[str]) -> str:
        if m.group() not in values:
            raise AssertionError(f"no value for {m.group()} in the README's {text!r}")
        return values[m.group()]

    return [values[w] if w in values else PLACEHOLDER.sub(one, w) for w in shlex.split(text)]


def argv_of(words: list[str]) -> list[str]:
    """How a README command is started here: ``vcbfs`` is this interpreter's ``-m vcbfs``."""
    if words[0] == "vcbfs":
        return [sys.executable, "-m", "vcbfs", *words[1:]]
    return [str(ROOT / words[0]), *words[1:]]


def run(
    words: list[str],
    env: dict[str, str],
    *,
    stdout: Any = subprocess.PIPE,
    ok: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        argv_of(words),
        stdout=stdout,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=timeout,
        check=False,
    )
    shown = shlex.join(words)
    assert done.returncode != 2 and b"usage:" not in done.stderr, (
        f"{shown}: the command line is refused: {done.stderr.decode(errors='replace')}"
    )
    if ok:
        assert done.returncode == 0, f"{shown}: {done.stderr.decode(errors='replace')}"
    return done


def base_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without VCBFS_ settings; run state and config in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VCBFS_")}
    config = tmp_path / "config.toml"
    config.write_text("# the tests' settings come from the environment\n")
    return {
        **env,
        "HOME": str(tmp_path),
        "VCBFS_RUN_DIR": str(tmp_path / "run"),
        "VCBFS_STATE_DIR": str(tmp_path / "state"),
        "VCBFS_CONFIG": str(config),
    }


class Ctx:
    """What a case needs: fixtures, asked for only when used (vcsim starts only for vSphere)."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.request = request
        self.tmp = tmp_path
        self.env = base_env(tmp_path)
        self._n = 0

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    @property
    def vm(self) -> TestVm:
        return self.fixture("test_vm")

    @property
    def vcsim(self) -> Vcsim:
        return self.fixture("vcsim")

    @property
    def vsphere(self) -> VsphereVm:
        return self.fixture("vsphere_vm")

    def vsphere_env(self) -> dict[str, str]:
        """The environment a backup script would set: host, user, password file, pinned cert."""
        sim = self.vcsim
        pw = self.tmp / "password"
        pw.write_text(f"{sim.password}\n")
        pw.chmod(0o600)
        return {
            **self.env,
            "VCBFS_HOST": sim.host,
            "VCBFS_PORT": str(sim.port),
            "VCBFS_USER": str(sim.username),
            "VCBFS_PASSWORD_FILE": str(pw),
            "VCBFS_THUMBPRINT": sim.thumbprint,
        }

    def mountpoint(self) -> Path:
        self._n += 1
        path = self.tmp / f"mnt{self._n}"
        path.mkdir()
        return path


@contextlib.contextmanager
def mounted(words: list[str], env: dict[str, str], mnt: Path) -> Iterator[None]:
    """``vcbfs mount ...`` (returning once it serves), then ``vcbfs umount``, also on failure."""
    try:
        run(words, env)
        assert os.path.ismount(mnt)
        yield
    finally:
        if os.path.ismount(mnt):
            run(["vcbfs", "umount", str(mnt)], env, ok=False)


def umount(mnt: Path, env: dict[str, str]) -> None:
    run(["vcbfs", "umount", str(mnt)], env)
    assert not os.path.ismount(mnt)


def check_tree(root: Path, vmx_name: str | None = None) -> None:
    """The README's tree: fullvm/ (VM.vmx, VM.nvram, catalog, NAME.vmdk + NAME-flat.vmdk),
    digits/1/ ..., letters/C/; the test VM's two disks, C: on disk 0, F: on disk 1."""
    assert sorted(os.listdir(root)) == ["digits", "fullvm", "letters"]
    full = sorted(os.listdir(root / "fullvm"))
    vmx = [n for n in full if n.endswith(".vmx")]
    assert len(vmx) == 1 and "catalog" in full, full
    assert vmx_name is None or vmx == [vmx_name]
    assert any(n.endswith(".nvram") for n in full), full
    disks = [n for n in full if n.endswith(".vmdk") and not n.endswith("-flat.vmdk")]
    assert len(disks) == 2 and all(d[: -len(".vmdk")] + "-flat.vmdk" in full for d in disks)
    assert "scsi0:0" in (root / "fullvm" / vmx[0]).read_text()
    assert sorted(os.listdir(root / "digits")) == ["1", "2"]
    assert sorted(os.listdir(root / "letters")) == ["C", "F"]
    for rel, data in SYS_FILES.items():
        assert (root / "letters/C" / rel).read_bytes() == data
    assert (root / "digits/1/boot.ini").read_bytes() == SYS_FILES["boot.ini"]  # C: is volume 1


def ours(sim: Vcsim, moref: str) -> list[str]:
    """The names of vcbfs's own snapshots of a VM."""
    with sim.session() as si:
        snaps = list_snapshots(si, managed(si, moref))
    return [s.name for s in snaps if OURS.match(s.name)]


# -- `vcbfs disk` ------------------------------------------------------------------------------


def case_disk_info(ctx: Ctx, text: str) -> None:
    vm = ctx.vm
    full, bare = variants(text)
    info = json.loads(run(fill(full, {"PATH": str(vm.data_vmdk)}), ctx.env).stdout)
    # chain, extents, capacity, partitions
    assert info["capacity"] == (2048 + vm.data.path.stat().st_size // 512 + 2048) * 512
    assert [e["type"] for e in info["chain"][0]["extents"]] == ["FLAT"] * 3
    parts = info["partitions"]
    assert parts["scheme"] == "gpt" and [p["number"] for p in parts["entries"]] == [1]
    human = run(fill(bare, {"PATH": str(vm.sys_vmdk)}), ctx.env).stdout.decode()
    assert "monolithicSparse" in human and f"({25 * MIB} bytes)" in human
    assert "partitions (mbr, disk signature 0x5ec0ffee)" in human and "chain" in human


def case_disk_cat(ctx: Ctx, text: str) -> None:
    """Raw bytes of the disk or of partition N; to a regular file (the sparse copy)."""
    vm = ctx.vm
    full, bare = variants(text)
    volume = vm.sys_volume.read_bytes()
    out = ctx.tmp / "part.raw"
    with out.open("wb") as f:
        run(fill(full, {"PATH": str(vm.sys_vmdk), "N": "1"}), ctx.env, stdout=f)
    assert out.read_bytes() == volume
    whole = run(fill(bare, {"PATH": str(vm.sys_vmdk)}), ctx.env).stdout
    assert len(whole) == 25 * MIB and whole[MIB:] == volume
    assert whole[510:512] == b"\x55\xaa"  # the MBR


def case_disk_ls(ctx: Ctx, text: str) -> None:
    vm = ctx.vm
    full, bare = variants(text)
    values = {"PATH": str(vm.sys_vmdk), "DIR": "Users/Public", "N": "1"}
    rows = json.loads(run(fill(full, values), ctx.env).stdout)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"Documents", "target.txt"}
    assert by_name["Documents"]["type"] == "dir"
    assert by_name["target.txt"]["size"] == len(SYS_FILES["Users/Public/target.txt"])
    listing = run(fill(bare, {"PATH": str(vm.sys_vmdk)}), ctx.env).stdout.decode().split("\n")
    assert {"boot.ini", "Users/", "Windows/"} <= set(listing)
    # -l alone: the long form, as the usage allows the options in any combination
    long = run(fill(full.replace(" --json", ""), values), ctx.env).stdout.decode()
    assert re.search(r"^file +1 +20 \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  target\.txt$", long, re.M)


def case_disk_cat_file(ctx: Ctx, text: str) -> None:
    """A file, or a named stream, of the NTFS volume; the option between PATH and FILE."""
    vm = ctx.vm
    full, bare = variants(text)
    entry = vm.data.entries[vm.data.streams_file]
    stream = "small"
    values = {"PATH": str(vm.data_vmdk), "N": "1", "FILE": vm.data.streams_file, "STREAM": stream}
    got = run(fill(full, values), ctx.env).stdout
    assert hashlib.sha256(got).hexdigest() == entry["streams"][stream]["sha256"]
    report = "Users/Public/Documents/report.txt"
    got = run(fill(bare, {"PATH": str(vm.sys_vmdk), "FILE": report}), ctx.env).stdout
    assert got == SYS_FILES[report]
    # "Paths use / or \ and are matched without regard to case"
    odd = run(fill(bare, {"PATH": str(vm.sys_vmdk), "FILE": "USERS\\public\\TARGET.txt"}), ctx.env)
    assert odd.stdout == SYS_FILES["Users/Public/target.txt"]


def case_disk_cat_delta(ctx: Ctx, text: str) -> None:
    """`vcbfs disk cat vm-000002.vmdk`: a delta brings its chain; the disk as qemu reads it."""
    top = ctx.fixture("vmdk_images")["chain-sparse"]
    info = json.loads(run(["vcbfs", "disk", "info", str(top), "--json"], ctx.env).stdout)
    assert len(info["chain"]) == 3
    out = ctx.tmp / "delta.raw"
    with out.open("wb") as f:
        run(fill(text, {"vm-000002.vmdk": str(top)}), ctx.env, stdout=f)
    ref = top.parent / "ref.raw"
    assert out.stat().st_size == ref.stat().st_size
    assert _same_file(out, ref)


def _same_file(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def _unreadable(ctx: Ctx) -> dict[str, str]:
    """Files of the fidelity volume that must give an error: a stub, an EFS file, damaged WOF."""
    image = ctx.fixture("fidelity_image")
    picks: dict[str, str] = {}
    for rel, entry in sorted(image.entries.items()):
        if entry.get("expect") != "eio":
            continue
        kind = entry.get("kind", "")
        if kind in ("stub", "efs") or rel.startswith("wof/corrupt/"):
            picks.setdefault(kind if kind in ("stub", "efs") else "wof", rel)
    assert set(picks) == {"stub", "efs", "wof"}, picks
    return picks


def case_disk_cat_unreadable(ctx: Ctx, text: str) -> None:
    """`vcbfs disk cat PATH FILE` of a stub, an EFS file or a damaged WOF file writes nothing
    and exits 1 with `vcbfs: FILE (where): why`."""
    image = ctx.fixture("fidelity_image")
    for rel in _unreadable(ctx).values():
        done = run(fill(text, {"PATH": str(image.path), "FILE": rel}), ctx.env, ok=False)
        err = done.stderr.decode()
        assert done.returncode == 1 and done.stdout == b"", (rel, err)
        assert re.fullmatch(rf"vcbfs: {re.escape(rel)} \(.+\): .+\n", err), err
    plain = image.bench["plain"]
    done = run(fill(text, {"PATH": str(image.path), "FILE": plain}), ctx.env)
    assert hashlib.sha256(done.stdout).hexdigest() == image.entries[plain]["sha256"]


def case_debug(ctx: Ctx, text: str) -> None:
    """`--debug` adds the traceback to the one-line error."""
    image = ctx.fixture("fidelity_image")
    rel = _unreadable(ctx)["stub"]
    words = ["vcbfs", "disk", "cat", str(image.path), rel]
    plain = run(words, ctx.env, ok=False)
    assert plain.returncode == 1 and b"Traceback" not in plain.stderr
    debug = run([*words, *fill(text, {})], ctx.env, ok=False)
    assert debug.returncode == 1 and b"Traceback" in debug.stderr
    assert debug.stderr.rstrip().endswith(plain.stderr.rstrip())


# -- the mount of a local VM -----------------------------------------------------------------


def case_mount_local(ctx: Ctx, text: str) -> None:
    """`vcbfs mount SOURCE MOUNTPOINT [-o ...] [-f]`: a .vmx and a .vmdk; -f in the foreground."""
    vm = ctx.vm
    full, bare = variants(text)
    mnt = ctx.mountpoint()
    with mounted(fill(bare, {"SOURCE": str(vm.vmx), "MOUNTPOINT": str(mnt)}), ctx.env, mnt):
        check_tree(mnt, "vm.vmx")
        assert (mnt / "fullvm/vm.nvram").read_bytes() == (vm.vmx.parent / "vm.nvram").read_bytes()
        st = os.stat(mnt / "letters/C/boot.ini")
        assert st.st_mode & 0o777 == 0o444
        with pytest.raises(OSError, match="Read-only file system"):
            (mnt / "letters/C/new.txt").write_bytes(b"x")
    assert not os.path.ismount(mnt)

    # A .vmdk alone: one disk, digits/ only where there are no letters for it
    with mounted(fill(bare, {"SOURCE": str(vm.sys_vmdk), "MOUNTPOINT": str(mnt)}), ctx.env, mnt):
        assert (mnt / "digits/1/boot.ini").read_bytes() == SYS_FILES["boot.ini"]

    # Every option, and -f: the command stays until the mount ends
    values = {"SOURCE": str(vm.vmx), "MOUNTPOINT": str(mnt), "N": "0", "NNN": "077", "S": "60"}
    words = fill(full, values)
    assert "-f" in words and "allow_other,uid=0,gid=0,umask=077,idle=60" in words
    log = ctx.tmp / "foreground.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(argv_of(words), stdout=err, stderr=err, env=ctx.env)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the foreground mount did not start"
            time.sleep(0.05)
        check_tree(mnt, "vm.vmx")
        st = os.stat(mnt / "letters/C/boot.ini")
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o400, 0, 0)
        assert os.stat(mnt / "letters/C/Users").st_mode & 0o777 == 0o500
        assert proc.poll() is None  # still serving, in the foreground
        umount(mnt, ctx.env)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    said = log.read_text()
    assert "allow_other: every local user can read the guest's files" in said  # "says so"


def case_automount_folder(ctx: Ctx, text: str) -> None:
    """SOURCE "with `--automount`, a folder of such VMs": a directory per .vmx found there."""
    vm = ctx.vm
    mnt = ctx.mountpoint()
    (option,) = fill(text, {})
    with mounted(["vcbfs", "mount", option, str(vm.vmx.parent), str(mnt)], ctx.env, mnt):
        assert os.listdir(mnt) == [vm.vmx.stem]
        check_tree(mnt / vm.vmx.stem, "vm.vmx")
        release = ["vcbfs", "release", str(mnt / vm.vmx.stem)]
        assert run(release, ctx.env).stdout.decode() == f"{vm.vmx.stem}: released\n"
        umount(mnt, ctx.env)


def case_umount(ctx: Ctx, text: str) -> None:
    vm = ctx.vm
    mnt = ctx.mountpoint()
    with mounted(["vcbfs", "mount", str(vm.vmx), str(mnt)], ctx.env, mnt):
        assert (mnt / "letters/C/boot.ini").exists()
        run(fill(text, {"MOUNTPOINT": str(mnt)}), ctx.env)
        assert not os.path.ismount(mnt) and os.listdir(mnt) == []
    assert list((ctx.tmp / "run").glob("mount-*.pid")) == []  # the server has finished


# -- vSphere ---------------------------------------------------------------------------------


def case_ls(ctx: Ctx, text: str) -> None:
    """moref, name, uuid, ipaddr, power state."""
    env, vm = ctx.vsphere_env(), ctx.vsphere.vm
    full, bare = variants(text)
    found = json.loads(run(fill(full, {"SPEC": f"name:{DEMO_VM}"}), env).stdout)
    assert [(v["moref"], v["name"], v["uuid"], v["ipaddr"], v["power"]) for v in found] == [
        (vm.moref, DEMO_VM, vm.uuid, DEMO_IP, "on")
    ]
    table = run(fill(bare, {}), env).stdout.decode().splitlines()
    assert table[0].split() == ["MOREF", "NAME", "UUID", "IPADDR", "POWER"]
    assert [vm.moref, DEMO_VM, vm.uuid, DEMO_IP, "on"] in [r.split() for r in table]


def case_mount_spec(ctx: Ctx, text: str) -> None:
    """A quiesced (or crash-consistent) snapshot, mounted; umount releases it."""
    env, vm = ctx.vsphere_env(), ctx.vsphere.vm
    for words in (
        fill(v, {"SPEC": f"name:{DEMO_VM}", "MOUNTPOINT": "MNT"}) for v in variants(text)
    ):
        mnt = ctx.mountpoint()
        words = [str(mnt) if w == "MNT" else w for w in words]
        with mounted(words, env, mnt):
            check_tree(mnt)
            snaps = ours(ctx.vcsim, vm.moref)
            assert len(snaps) == 1
            m = OURS.match(snaps[0])
            assert m and m.group(1) == socket.gethostname()
            umount(mnt, env)
        assert ours(ctx.vcsim, vm.moref) == []


def case_mount_name_vm(ctx: Ctx, text: str) -> None:
    """`vcbfs mount name:VM` (the benchmark's mount to the first `ls letters/C`)."""
    env, vm = ctx.vsphere_env(), ctx.vsphere.vm
    mnt = ctx.mountpoint()
    with mounted([*fill(text, {"VM": DEMO_VM}), str(mnt)], env, mnt):
        assert "boot.ini" in os.listdir(mnt / "letters/C")
        assert len(ours(ctx.vcsim, vm.moref)) == 1
    assert ours(ctx.vcsim, vm.moref) == []


def case_automount(ctx: Ctx, text: str) -> None:
    """A directory per VM; listing takes nothing, the first lookup inside takes the snapshot,
    released after idle seconds."""
    env, vm = ctx.vsphere_env(), ctx.vsphere.vm
    full, bare = variants(text)
    mnt = ctx.mountpoint()
    values = {"SPEC": f"name:{DEMO_VM}", "MOUNTPOINT": str(mnt), "SECONDS": "1"}
    with mounted(fill(full, values), env, mnt):
        assert os.listdir(mnt) == [DEMO_VM]
        assert ours(ctx.vcsim, vm.moref) == []
        assert (mnt / DEMO_VM / "letters/C/boot.ini").read_bytes() == SYS_FILES["boot.ini"]
        assert len(ours(ctx.vcsim, vm.moref)) == 1
        deadline = time.monotonic() + 30
        while ours(ctx.vcsim, vm.moref):  # idle=1: released soon after
            assert time.monotonic() < deadline, "not released when idle"
            time.sleep(0.1)
        umount(mnt, env)
    with mounted(fill(bare, {"MOUNTPOINT": str(mnt)}), env, mnt):  # every VM
        names = os.listdir(mnt)
        assert DEMO_VM in names and len(names) > 1
        check_tree(mnt / DEMO_VM)
        umount(mnt, env)
    assert ours(ctx.vcsim, vm.moref) == []


def case_release(ctx: Ctx, text: str) -> None:
    env, vm = ctx.vsphere_env(), ctx.vsphere.vm
    full, bare = variants(text)
    mnt = ctx.mountpoint()
    boot = mnt / DEMO_VM / "letters/C/boot.ini"
    with mounted(["vcbfs", "mount", "--automount", f"name:{DEMO_VM}", str(mnt)], env, mnt):
        values = {"MOUNTPOINT": str(mnt), "VM": DEMO_VM}
        assert boot.read_bytes() == SYS_FILES["boot.ini"]
        assert len(ours(ctx.vcsim, vm.moref)) == 1
        said = run(fill(bare, values), env).stdout.decode()
        assert said == f"{DEMO_VM}: released\n" and ours(ctx.vcsim, vm.moref) == []
        with boot.open("rb") as held:  # a file open inside: only --force releases
            assert held.read() == SYS_FILES["boot.ini"]
            refused = run(fill(bare, values), env, ok=False)
            assert refused.returncode == 1 and len(ours(ctx.vcsim, vm.moref)) == 1
            said = run(fill(full, values), env).stdout.decode()
            assert said == f"{DEMO_VM}: released\n"
        assert ours(ctx.vcsim, vm.moref) == []
        umount(mnt, env)


def case_cleanup(ctx: Ctx, text: str) -> None:
    """Snapshots a crashed vcbfs left behind: --dry-run names them, cleanup releases them."""
    env, sim = ctx.vsphere_env(), ctx.vcsim
    with sim.session() as si:
        victim = add_vm(sim, si, "readme-crash", [ctx.vsphere.source.sys_vmdk], ip="10.0.0.78")
    full, bare = variants(text)
    mnt = ctx.mountpoint()
    run(["vcbfs", "mount", "name:readme-crash", str(mnt)], env)
    (pid_file,) = (ctx.tmp / "run").glob("mount-*.pid")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    time.sleep(0.5)
    run(["vcbfs", "umount", str(mnt)], env)
    assert len(ours(sim, victim.moref)) == 1  # the crash left it
    dry = run(fill(full, {}), env).stdout.decode()
    assert "would release" in dry and "readme-crash" in dry
    assert len(ours(sim, victim.moref)) == 1
    done = run(fill(bare, {}), env).stdout.decode()
    assert "released" in done and ours(sim, victim.moref) == []
    assert run(fill(bare, {}), env).stdout.decode() == "nothing to release\n"


def case_specifiers(ctx: Ctx, text: str) -> None:
    """Each of VCB's specifiers as the README writes it, with the demo VM's values."""
    env, vm = ctx.vsphere_env(), ctx.vsphere.vm
    kind = text.partition(":")[0]
    values = {
        "name:web01": [f"name:{DEMO_VM}"],
        "ipaddr:10.0.0.5": [f"ipaddr:{DEMO_IP}", f"ipaddr:{DEMO_HOSTNAME}"],  # or a DNS name
        "ipaddr:": [f"ipaddr:{DEMO_IP}"],
        "uuid:...": [f"uuid:{vm.uuid.upper()}", f"uuid:{vm.instance_uuid}"],  # any case
        "moref:vm-42": [f"moref:{vm.moref}"],
        "powerstate:on|off|suspended": ["powerstate:on", "powerstate:off", "powerstate:suspended"],
    }.get(text, [text])
    for spec in values:
        found = json.loads(run(["vcbfs", "ls", "-s", spec, "--json"], env).stdout)
        names = [v["name"] for v in found]
        if kind == "none":
            assert names == []
        elif spec in ("powerstate:off", "powerstate:suspended"):
            assert DEMO_VM not in names
        elif kind in ("any", "powerstate"):
            assert DEMO_VM in names
        else:
            assert names == [DEMO_VM], spec


def case_pin_thumbprint(ctx: Ctx, text: str) -> None:
    """An untrusted certificate's error shows its SHA-256, to be pinned with --thumbprint."""
    env = {k: v for k, v in ctx.vsphere_env().items() if k != "VCBFS_THUMBPRINT"}
    assert ctx.vsphere.vm.name == DEMO_VM  # in the simulator
    refused = run(["vcbfs", "ls"], env, ok=False)
    assert refused.returncode == 1
    shown = re.search(r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}", refused.stderr.decode())
    assert shown and shown.group() == ctx.vcsim.thumbprint, refused.stderr
    pinned = run(["vcbfs", "ls", *fill(text, {}), shown.group(), "-s", f"name:{DEMO_VM}"], env)
    assert DEMO_VM in pinned.stdout.decode()


def case_transports(ctx: Ctx, text: str) -> None:
    """`--transport local,https` (the default: with no datastore path, https reads the disks);
    `--datastore-path DS=/mnt/ds`, the SAN/NFS route, alone with `--transport local`."""
    env, vm = ctx.vsphere_env(), ctx.vsphere.vm
    path = ctx.vcsim.datastore_dir(vm.datastore)
    options = fill(text, {"DS=/mnt/ds": f"{vm.datastore}={path}"})
    if text.startswith("--datastore-path"):
        options += ["--transport", "local"]
    mnt = ctx.mountpoint()
    with mounted(["vcbfs", "mount", *options, f"name:{DEMO_VM}", str(mnt)], env, mnt):
        check_tree(mnt)


def readme_toml() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^```toml\n(.*?)^```", text, re.S | re.M)
    assert m, "the README's config.toml example"
    return m.group(1)


def case_config(ctx: Ctx, text: str) -> None:
    """`--config FILE` with the README's own config.toml, its values pointed at the simulator."""
    sim, vm = ctx.vcsim, ctx.vsphere.vm
    env = {k: v for k, v in ctx.vsphere_env().items() if not k.startswith("VCBFS_")}
    env["VCBFS_RUN_DIR"] = ctx.env["VCBFS_RUN_DIR"]
    ours_ = {
        "host": sim.host,
        "user": sim.username,
        "password_file": str(ctx.tmp / "password"),
        "thumbprint": sim.thumbprint,
        "state_dir": str(ctx.tmp / "state-from-toml"),
    }
    lines = []
    for line in readme_toml().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in ours_:
            line = f"{key} = {json.dumps(ours_.pop(key))}"
        lines.append(line)
    assert not ours_, f"the README's config.toml no longer sets {sorted(ours_)}"
    config = ctx.tmp / "readme-config.toml"
    config.write_text(f"port = {sim.port}\n" + "\n".join(lines) + "\n")
    assert tomllib.loads(config.read_text())["datastores"]  # the [datastores] table kept
    found = run(["vcbfs", "ls", *fill(text, {"FILE": str(config)}), "--json"], env).stdout
    assert vm.moref in [v["moref"] for v in json.loads(found)]
    assert (ctx.tmp / "state-from-toml/vmnames.json").exists()  # state_dir taken from it


@contextlib.contextmanager
def _cookie(sim: Vcsim) -> Iterator[str]:
    """A live vSphere session's cookie, ``vmware_soap_session="..."``."""
    with sim.session() as si:
        yield str(si._stub.cookie).split(";", 1)[0]


def case_datastore_url(ctx: Ctx, text: str) -> None:
    """`disk` over a datastore URL, with the session cookie from VCBFS_SESSION_COOKIE and each
    of the TLS options the README gives for it."""
    sim, vm = ctx.vcsim, ctx.vsphere.vm
    values = {
        "HOST": f"{sim.host}:{sim.port}",
        "DIR": vm.vmdir,
        "FILE": "sys",
        "DC": sim.datacenter,
        "DS": vm.datastore,
        "SHA256": sim.thumbprint,
    }
    assert sim.certfile is not None
    tls = {
        "--thumbprint SHA256": fill("--thumbprint SHA256", values),
        "--ca-file FILE": ["--ca-file", str(sim.certfile)],
        "--insecure": ["--insecure"],
    }
    if text.startswith("https://"):
        (url,) = fill(text, values)
        assert url == sim.folder_url(f"{vm.vmdir}/sys.vmdk", vm.datastore)
        options = tls["--thumbprint SHA256"]
    else:
        url, options = sim.folder_url(f"{vm.vmdir}/sys.vmdk", vm.datastore), tls[text]
    with _cookie(sim) as cookie:
        env = {**ctx.env, "VCBFS_SESSION_COOKIE": cookie}
        refused = run(["vcbfs", "disk", "info", url], env, ok=False)
        assert refused.returncode == 1 and "certificate" in refused.stderr.decode()
        info = json.loads(run(["vcbfs", "disk", "info", url, *options, "--json"], env).stdout)
        assert info["capacity"] == 25 * MIB and info["format"] == "monolithicSparse"
        report = "Users/Public/Documents/report.txt"
        got = run(["vcbfs", "disk", "cat", url, *options, report], env)
        assert got.stdout == SYS_FILES[report]
        if text == "--insecure":
            assert "verification is off" in got.stderr.decode()
    # (vcsim's /folder does not ask for the cookie; tests/cli checks that it is sent)


# -- the entry points and the scripts ---------------------------------------------------------


def case_venv_entry(ctx: Ctx, text: str) -> None:
    """`.venv/bin/vcbfs` or `.venv/bin/python -m vcbfs`: the command after set-up."""
    words = shlex.split(text)
    exe = ROOT / words[0]
    assert exe.exists(), f"{exe}: run scripts/setup"
    done = subprocess.run(
        [str(exe), *words[1:], "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("vcbfs ")


def case_allow_path(ctx: Ctx, text: str) -> None:
    """A descriptor naming a volume outside its folder is refused with the rule, and read once
    that folder is allowed."""
    vm = ctx.vm
    images, here = ctx.tmp / "images", ctx.tmp / "vm"
    images.mkdir()
    here.mkdir()
    volume = link_into(vm.sys_volume, images, "sys-volume.img")
    sectors = volume.stat().st_size // 512
    desc = here / "disk.vmdk"
    desc.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW {sectors} FLAT "{volume}" 0\n'
    )
    refused = run(["vcbfs", "disk", "cat", str(desc)], ctx.env, ok=False)
    assert refused.returncode == 1 and b"--allow-path" in refused.stderr, refused.stderr
    got = run(["vcbfs", "disk", "cat", str(desc), *fill(text, {"DIR": str(images)})], ctx.env)
    assert got.stdout == vm.sys_volume.read_bytes()


def case_memory_budget(ctx: Ctx, text: str) -> None:
    """A disk verb reads the same under the smallest budget; one below it is refused."""
    vm = ctx.vm
    words = ["vcbfs", "disk", "cat", str(vm.sys_vmdk), "--partition", "1"]
    got = run([*words, *fill(text, {"SIZE": "16M"})], ctx.env)
    assert got.stdout == vm.sys_volume.read_bytes()
    small = subprocess.run(
        argv_of([*words, *fill(text, {"SIZE": "1M"})]), env=ctx.env, capture_output=True
    )
    assert small.returncode == 2 and b"must be at least 16 MiB" in small.stderr, small.stderr


RUN: dict[str, Callable[[Ctx, str], None]] = {
    # code blocks: "Looking inside a disk"
    "vcbfs disk info PATH [--json]": case_disk_info,
    "vcbfs disk cat PATH [--partition N]": case_disk_cat,
    "vcbfs disk ls PATH [DIR] [--partition N] [-l] [--json]": case_disk_ls,
    "vcbfs disk cat PATH [--partition N] FILE[:STREAM]": case_disk_cat_file,
    # code blocks: "Backing up vSphere VMs"
    "vcbfs ls [-s SPEC] [--json]": case_ls,
    "vcbfs mount SPEC MOUNTPOINT [--no-quiesce]": case_mount_spec,
    "vcbfs mount --automount [SPEC] MOUNTPOINT [-o idle=SECONDS]": case_automount,
    "vcbfs release MOUNTPOINT/VM [--force]": case_release,
    "vcbfs cleanup [--dry-run]": case_cleanup,
    "vcbfs umount MOUNTPOINT": case_umount,  # shown twice (vSphere and "The mount")
    # code blocks: "The mount"
    "vcbfs mount SOURCE MOUNTPOINT [-o allow_other,uid=N,gid=N,umask=NNN,idle=S] [-f]": (
        case_mount_local
    ),
    # inline
    ".venv/bin/vcbfs": case_venv_entry,
    ".venv/bin/python -m vcbfs": case_venv_entry,
    "vcbfs disk cat vm-000002.vmdk": case_disk_cat_delta,
    "vcbfs disk cat PATH FILE": case_disk_cat_unreadable,
    "--debug": case_debug,
    "vcbfs mount name:VM": case_mount_name_vm,
    "name:web01": case_specifiers,
    "ipaddr:10.0.0.5": case_specifiers,
    "uuid:...": case_specifiers,
    "moref:vm-42": case_specifiers,
    "powerstate:on|off|suspended": case_specifiers,
    "powerstate:on": case_specifiers,  # "like vcbSnapAll"
    "ipaddr:": case_specifiers,  # "so `ipaddr:` still finds a VM that is powered off"
    "any:": case_specifiers,
    "none:": case_specifiers,
    "--automount": case_automount_folder,  # vSphere's is the code block's; also a folder
    "--thumbprint": case_pin_thumbprint,
    "--transport local,https": case_transports,
    "--datastore-path DS=/mnt/ds": case_transports,
    "--config FILE": case_config,
    "https://HOST/folder/DIR/FILE.vmdk?dcPath=DC&dsName=DS": case_datastore_url,
    "--thumbprint SHA256": case_datastore_url,
    "--ca-file FILE": case_datastore_url,
    "--insecure": case_datastore_url,
    "--allow-path DIR": case_allow_path,  # "Security and faults"
    "--memory-budget SIZE": case_memory_budget,
}

#: inline span -> the code-block usage (run above) it is a part of
COVERED = {
    "vcbfs cleanup": "vcbfs cleanup [--dry-run]",
    "vcbfs disk": "vcbfs disk info PATH [--json]",
    "vcbfs disk cat": "vcbfs disk cat PATH [--partition N]",
    "vcbfs ls": "vcbfs ls [-s SPEC] [--json]",
    "vcbfs mount": "vcbfs mount SPEC MOUNTPOINT [--no-quiesce]",
    "vcbfs release": "vcbfs release MOUNTPOINT/VM [--force]",
    "vcbfs umount": "vcbfs umount MOUNTPOINT",
    "--no-quiesce": "vcbfs mount SPEC MOUNTPOINT [--no-quiesce]",
    "-f": "vcbfs mount SOURCE MOUNTPOINT [-o allow_other,uid=N,gid=N,umask=NNN,idle=S] [-f]",
    "-o allow_other": (
        "vcbfs mount SOURCE MOUNTPOINT [-o allow_other,uid=N,gid=N,umask=NNN,idle=S] [-f]"
    ),
    "-o umask=077": (
        "vcbfs mount SOURCE MOUNTPOINT [-o allow_other,uid=N,gid=N,umask=NNN,idle=S] [-f]"
    ),
}

#: benchmarks: parsed by scripts/benchmarks' own parser (scripts/bench runs it), not run
PARSED = {
    "scripts/bench disk": "reads 1 GiB disks five ways with the page cache dropped: minutes",
    "scripts/bench ntfs": "times whole commands over the 512 MiB volume, cache dropped: minutes",
    "scripts/bench mount": "mounts vcbfs and ntfs-3g side by side, tar of 512 MiB: minutes",
    "scripts/bench mount --repeat 5": "as scripts/bench mount, five times over",
    "scripts/bench compressed": "20 MiB four ways through two mounts, best of 5: minutes",
    "scripts/bench requests": "starts three FUSE servers and times thousands of opens",
    "scripts/bench vsphere": "a 512 MiB disk over vcsim's HTTPS, fresh mount per run: minutes",
    "scripts/bench corpus": "mounts seven servers side by side over a guest-shaped corpus",
    "scripts/bench corpus --repeat 3": "seven sides over a 114,000-entry volume: half an hour",
    "scripts/bench corpus --corpus million": "as scripts/bench corpus, on 1,000,000 files",
    "scripts/bench corpus --json FILE": "as scripts/bench corpus, results also as JSON",
}

#: a span naming a file of this repository (must exist)
FILES = {
    ".venv": "the virtualenv set-up makes",
    "scripts/setup": "run by scripts/demo and scripts/test (apt-get, pip); not run here",
    "scripts/systemd/vcbfs-automount.service": "its commands: tests/vsphere/test_vsphere.py",
    "scripts/autofs/auto.vcbfs": "run as autofs would: tests/vsphere/test_vsphere.py",
    "scripts/autofs/mount.vcbfs": "run as mount(8) would: tests/vsphere/test_vsphere.py",
}

#: what a test cannot run, and why
EXCUSED = {
    "scripts/demo": (
        "installs system packages first (scripts/setup: apt-get); tests/test_demo.py runs what "
        "it then runs, scripts/demo_vsphere.py, end to end"
    ),
    "scripts/test": "runs the whole test suite, this test included",
    "-t vcbfs": (
        "mount(8)'s option: needs /sbin/mount.vcbfs installed system-wide; tests/vsphere runs "
        "scripts/autofs/mount.vcbfs as mount(8) would"
    ),
    "--delete": "rsync's option (a mirror an empty mount would wipe), not vcbfs's",
    "--json": "scripts/benchmarks' option, on every benchmark: tests/test_bench.py uses it",
    "--request-profile FILE": (
        "tests/fs/test_mount.py mounts with it and checks the JSON it writes at unmount"
    ),
    "scripts/bench tables FILE.json": (
        "tests/test_bench.py runs it on the JSON of a real run of scripts/bench corpus (mini)"
    ),
}


def test_every_readme_usage_is_run_or_excused() -> None:
    found = find_usages()
    texts = {u.text for u in found}
    tables = {"RUN": RUN, "COVERED": COVERED, "PARSED": PARSED, "FILES": FILES}
    tables["EXCUSED"] = EXCUSED
    claimed = [k for table in tables.values() for k in table]
    assert len(claimed) == len(set(claimed)), "a usage in two tables"
    unmapped = sorted((u.lineno, u.text) for u in found if u.text not in claimed)
    assert not unmapped, f"README usages with no test here (add each to a table): {unmapped}"
    stale = sorted(set(claimed) - texts)
    assert not stale, f"no longer in the README (remove from the tables): {stale}"
    counts = {name: sum(u.text in table for u in found) for name, table in tables.items()}
    assert sum(counts.values()) == len(found), counts
    blocks = [u for u in found if not u.inline]
    assert len(blocks) >= 14, blocks  # the four code blocks of commands were read
    assert all(u.text in RUN or u.text in EXCUSED for u in blocks)
    for span, block in COVERED.items():
        words, full = shlex.split(span), shlex.split(variants(block)[0])
        if span.startswith("vcbfs"):
            assert full[: len(words)] == words, (span, block)
        else:
            assert words[0] in full, (span, block)
            if len(words) == 2:  # -o KEY=VALUE: the key among the block's -o items
                items = full[full.index(words[0]) + 1].split(",")
                assert words[1].split("=")[0] in [i.split("=")[0] for i in items], (span, block)
    for rel in FILES:
        assert (ROOT / rel).exists(), rel


DUMMY = {"N": "1", "NNN": "077", "S": "5", "SECONDS": "5"}


def _dummies(text: str) -> dict[str, str]:
    return {w: DUMMY.get(w, w.lower()) for w in PLACEHOLDER.findall(text)}


@pytest.mark.parametrize("text", sorted(t for t in RUN if t.startswith("vcbfs ")))
def test_usage_parses(text: str) -> None:
    """Every form of every vcbfs usage is accepted by the parser (never exit 2)."""
    from vcbfs.cli.main import _verb, build_parser, parse

    for form in variants(text):
        argv = fill(form, _dummies(form))[1:]
        try:
            args = parse(build_parser(_verb(argv)), argv)
        except SystemExit as exc:
            raise AssertionError(f"{form!r} as {argv}: exit {exc.code}") from None
        assert callable(args.run)


@pytest.mark.parametrize("text", sorted(PARSED))
def test_benchmark_usage_parses(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # the package scripts/benchmarks
    cli = importlib.import_module("benchmarks.cli")
    ran: list[Any] = []
    for module in cli.BENCHMARKS:
        name = module.NAME
        monkeypatch.setattr(module, "run_bench", lambda args, n=name: ran.append((n, args)) or 0)
    words = shlex.split(text)
    assert words[0] == "scripts/bench" and (ROOT / words[0]).is_file()
    assert cli.main(words[1:]) == 0
    assert [name for name, _ in ran] == [words[1]]
    if "--repeat" in words:
        assert ran[0][1].repeat == int(words[words.index("--repeat") + 1])


@pytest.mark.parametrize("text", sorted(RUN))
def test_usage_runs(text: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    RUN[text](Ctx(request, tmp_path), text)
