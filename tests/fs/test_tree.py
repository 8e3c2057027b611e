"""The tree model without FUSE: what the adapter asks of it, answered directly."""

from __future__ import annotations

import stat
import threading

import pytest

from tests.fs.vmfixture import SYS_FILES, TestVm
from vcbfs.errors import NotFoundError
from vcbfs.fs.tree import ROOT_INO, STREAM_INO, Tree
from vcbfs.ntfs.volume import NtfsVolume
from vcbfs.vm.local import open_local_vm


@pytest.fixture
def tree(test_vm: TestVm):
    tree = Tree(open_local_vm(test_vm.vmx))
    yield tree
    tree.close()


def _walk(tree: Tree, path: str) -> int:
    ino = ROOT_INO
    for part in path.split("/"):
        ino = tree.lookup(ino, part).ino
    return ino


def test_stream_inodes_answer_getattr_and_open(tree: Tree, test_vm: TestVm) -> None:
    data = test_vm.data
    parent = _walk(tree, "letters/F/" + data.streams_file.rsplit("/", 1)[0])
    name = data.streams_file.rsplit("/", 1)[1]
    attr = tree.lookup(parent, f"{name}:{data.large_stream}")
    assert attr.ino & STREAM_INO
    again = tree.getattr(attr.ino)  # the kernel asks again once its cached attributes expire
    assert (
        again == attr and again.size == data.entries[data.streams_file]["streams"]["large"]["size"]
    )
    assert tree.open(attr.ino).size == again.size
    with pytest.raises(NotFoundError):
        tree.getattr(STREAM_INO | 999_999)


def test_listing_the_root_opens_no_volume(tree: Tree) -> None:
    assert [name for name, _ in tree.readdir(ROOT_INO)] == ["digits", "fullvm", "letters"]
    assert tree.image._volumes is None  # nothing past the disks was looked at
    assert [name for name, _ in tree.readdir(tree.lookup(ROOT_INO, "digits").ino)] == ["1", "2"]
    assert tree.image._volumes is not None


def test_digits_read_no_hive_and_letters_keep_their_inodes(test_vm: TestVm) -> None:
    """digits/ needs no drive letters (the guest's SYSTEM hive, tens of MB on a real guest);
    letters/ numbers its views after digits/'s whichever is looked into first."""
    first, second = Tree(open_local_vm(test_vm.vmx)), Tree(open_local_vm(test_vm.vmx))
    try:
        boot = _walk(first, "digits/1/boot.ini")
        assert first.open(boot).read_at(0, 100) == SYS_FILES["boot.ini"]
        assert not first._letters_done
        letters_first = _walk(second, "letters/C/boot.ini")  # the other order
        assert (_walk(first, "letters/C/boot.ini"), _walk(first, "digits/2")) == (
            letters_first,
            _walk(second, "digits/2"),
        )
    finally:
        first.close()
        second.close()


def test_try_open_only_when_nothing_needs_reading(tree: Tree) -> None:
    assert tree.try_open((1 << 40) | 5) is None  # views not built yet: that reads the disks
    ino = _walk(tree, "letters/C/boot.ini")  # the lookup parsed the file's record
    fast = tree.try_open(ino)
    assert fast is not None
    assert fast.read_at(0, 1 << 20) == tree.open(ino).read_at(0, 1 << 20)
    catalog = _walk(tree, "fullvm/catalog")
    assert tree.try_open(catalog) is not None  # a small synthetic file is in memory


def test_a_listing_is_computed_once_and_equals_a_fresh_one(tree: Tree, test_vm: TestVm) -> None:
    """opendir asks for the whole listing each time: it is kept, and stays right."""
    computed: list[int] = []
    real = tree._list

    def counting(ino: int) -> list[tuple[str, object]]:
        computed.append(ino)
        return real(ino)

    tree._list = counting  # type: ignore[method-assign]
    root = _walk(tree, "letters/F")
    first = tree.readdir(root)
    subdirs = [a.ino for _, a in first if stat.S_ISDIR(a.mode)]
    assert subdirs
    got: dict[int, object] = {}
    threads = [
        threading.Thread(target=lambda: got.update({i: tree.readdir(i) for i in subdirs}))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tree.readdir(root) == first
    assert computed.count(root) == 1
    fresh = Tree(open_local_vm(test_vm.vmx))
    try:
        assert _walk(fresh, "letters/F") == root
        assert got == {i: fresh.readdir(i) for i in subdirs}
    finally:
        fresh.close()


@pytest.mark.parametrize("descriptors", [True, False], ids=["descriptors", "none-found"])
def test_every_listed_xattr_has_a_value(
    tree: Tree, descriptors: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """listxattr names only what getxattr can give (an agent copying xattrs reads each one),
    also where a file's security descriptor cannot be found."""
    if not descriptors:
        monkeypatch.setattr(NtfsVolume, "security_descriptor", lambda _self, _record: None)
    stack = [_walk(tree, "letters/C"), _walk(tree, "letters/F")]
    seen = 0
    while stack:
        ino = stack.pop()
        for _name, attr in tree.readdir(ino):
            if stat.S_ISDIR(attr.mode):
                stack.append(attr.ino)
            for xattr in tree.listxattr(attr.ino):
                tree.getxattr(attr.ino, xattr)
                seen += 1
    assert seen > 1000


def test_a_volume_that_cannot_open_is_listed_and_hides_no_other(
    test_vm: TestVm, caplog: pytest.LogCaptureFixture
) -> None:
    # A damaged $MFT record 0 on one volume used to fail the listing of all of digits/.
    from vcbfs.errors import CorruptError

    tree = Tree(open_local_vm(test_vm.vmx))
    try:
        digits = tree.lookup(ROOT_INO, "digits").ino
        names = [name for name, _attr in tree.readdir(digits)]

        def damaged() -> NtfsVolume:
            raise CorruptError("MFT record 0 is damaged", source="data disk")

        fresh = Tree(open_local_vm(test_vm.vmx))
        fresh.image.volumes()[1].ntfs = damaged  # type: ignore[method-assign]
        listing = dict(fresh.readdir(fresh.lookup(ROOT_INO, "digits").ino))
        assert sorted(listing) == sorted(names) == ["1", "2"]
        assert stat.S_ISDIR(listing["2"].mode)
        assert "digits/2 is unreadable" in caplog.text
        assert len(fresh.readdir(listing["1"].ino)) > 0  # the sound volume reads
        with pytest.raises(CorruptError):
            fresh.readdir(listing["2"].ino)  # EIO inside the broken one
        fresh.close()
    finally:
        tree.close()


@pytest.mark.parametrize(
    ("folder", "target", "relative", "shown"),
    [
        ("links", "target.txt", True, "target.txt"),
        ("a/b", "..\\..\\data\\file.txt", True, "../../data/file.txt"),
        ("links", "C:\\Windows\\System32", False, "../../../letters/C/Windows/System32"),
        ("", "D:\\", False, "../../letters/D"),
        # Crafted targets that climbed out of the mount (rsync -L would have archived the
        # proxy's own files): ".." stops at the volume's root, as on Windows.
        ("links", "..\\" * 13 + "etc\\shadow", True, "../etc/shadow"),
        ("links", "C:\\..\\..\\etc", False, "../../../letters/C/etc"),
        ("links", "\\\\server\\share\\x", False, "../server/share/x"),
        ("links", "\\??\\Volume{1234}\\..\\..\\..\\..", False, ".."),
    ],
)
def test_link_targets_never_leave_the_mount(
    folder: str, target: str, relative: bool, shown: str
) -> None:
    import posixpath

    from vcbfs.fs.tree import link_target

    got = link_target("digits/1", folder, target, relative)
    assert got == shown
    inside = posixpath.normpath(posixpath.join("digits/1", folder, got))
    assert not inside.startswith("..") and not posixpath.isabs(got)
