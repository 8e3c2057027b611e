"""The entry point: each verb parses with only its own group; the full parser for the rest."""

from __future__ import annotations

import pytest

from vcbfs.cli.main import VERBS, build_parser, main


def _verbs(parser: object) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "verb")  # type: ignore[attr-defined]
    return set(sub.choices)


def test_only_the_verbs_group_is_built() -> None:
    assert _verbs(build_parser("disk")) == {"disk"}
    assert _verbs(build_parser("umount")) == {"mount", "umount"}
    assert _verbs(build_parser(None)) == set(VERBS)


def test_options_before_the_verb_use_the_whole_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--debug", "release", "--help"])
    assert done.value.code == 0
    assert "MOUNTPOINT/VM" in capsys.readouterr().out


def test_an_unknown_verb_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["backup"])
    err = capsys.readouterr().err
    assert all(verb in err for verb in VERBS)
