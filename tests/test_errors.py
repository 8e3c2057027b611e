"""Every vcbfs error is also the builtin it resembles and carries one errno."""

from __future__ import annotations

import errno

import pytest

from vcbfs import errors


@pytest.mark.parametrize(
    ("cls", "builtin", "code"),
    [
        (errors.CorruptError, ValueError, errno.EIO),
        (errors.ChainError, ValueError, errno.EIO),
        (errors.UnsupportedError, NotImplementedError, errno.EOPNOTSUPP),
        (errors.NotFoundError, FileNotFoundError, errno.ENOENT),
        (errors.AccessDeniedError, PermissionError, errno.EACCES),
        (errors.ReadError, OSError, errno.EIO),
        (errors.UnavailableError, OSError, errno.EIO),
        (errors.OutOfRangeError, ValueError, errno.EINVAL),
    ],
)
def test_inheritance_and_errno(cls: type[errors.VcbfsError], builtin: type, code: int) -> None:
    exc = cls("broken", source="disk.vmdk", offset=0x200)
    assert isinstance(exc, errors.VcbfsError)
    assert isinstance(exc, builtin)
    assert exc.errno == code
    assert str(exc) == "disk.vmdk: at offset 0x200: broken"


def test_message_leaves_out_what_is_unknown() -> None:
    assert str(errors.CorruptError("bad")) == "bad"
    assert str(errors.CorruptError("bad", source="x")) == "x: bad"
