"""The ``memory_budget`` setting: TOML key, ``VCBFS_MEMORY_BUDGET``, ``--memory-budget``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vcbfs.blocks import budget as budget_module
from vcbfs.blocks.budget import BUDGET, DEFAULT_BUDGET
from vcbfs.cli.main import build_parser
from vcbfs.config import ConfigError, load_settings

MIB = 1 << 20


@pytest.fixture(autouse=True)
def restore_budget() -> Iterator[None]:
    capacity, rank = BUDGET.capacity, BUDGET.rank
    BUDGET.capacity, BUDGET.rank = DEFAULT_BUDGET, 0
    yield
    BUDGET.capacity, BUDGET.rank = capacity, rank


def _settings(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None, **cli: object):  # type: ignore[no-untyped-def]
    config = tmp_path / "config.toml"
    config.write_text(toml)
    return load_settings(cli, env=env or {}, files=[config], backuptools=tmp_path / "none")


def test_default(tmp_path: Path) -> None:
    assert _settings(tmp_path).memory_budget == DEFAULT_BUDGET == 512 * MIB
    assert BUDGET.capacity == DEFAULT_BUDGET


def test_toml_env_and_command_line(tmp_path: Path) -> None:
    s = _settings(tmp_path, 'memory_budget = "1G"\n')
    assert s.memory_budget == 1 << 30 and BUDGET.capacity == 1 << 30
    assert s.origin("memory_budget") == str(tmp_path / "config.toml")
    s = _settings(tmp_path, f"memory_budget = {256 * MIB}\n")
    assert s.memory_budget == 256 * MIB == BUDGET.capacity
    s = _settings(tmp_path, 'memory_budget = "1G"\n', {"VCBFS_MEMORY_BUDGET": "768M"})
    assert s.memory_budget == 768 * MIB == BUDGET.capacity
    assert s.origin("memory_budget") == "environment"


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="memory_budget must be a size such as 512M"):
        _settings(tmp_path, 'memory_budget = "lots"\n')
    with pytest.raises(ConfigError, match="VCBFS_MEMORY_BUDGET must be at least 16 MiB"):
        _settings(tmp_path, env={"VCBFS_MEMORY_BUDGET": "1M"})
    with pytest.raises(ConfigError, match="memory_budget must be a string"):
        _settings(tmp_path, "memory_budget = true\n")


def test_the_command_line_option_wins_over_files_read_after_it(tmp_path: Path) -> None:
    args = build_parser("mount").parse_args(
        ["mount", "--memory-budget", "96M", "vm.vmx", str(tmp_path / "m")]
    )
    assert args.memory_budget == 96 * MIB == BUDGET.capacity
    _settings(tmp_path, 'memory_budget = "1G"\n', {"VCBFS_MEMORY_BUDGET": "2G"})
    assert BUDGET.capacity == 96 * MIB  # the command line outranks both
    disk = build_parser("disk").parse_args(["disk", "ls", "--memory-budget", "1G", "x.vmdk"])
    assert disk.memory_budget == 1 << 30 == BUDGET.capacity


def test_a_bad_command_line_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser("mount").parse_args(["mount", "--memory-budget", "big", "a", "b"])
    assert exc.value.code == 2
    assert "--memory-budget must be a size such as 512M" in capsys.readouterr().err


def test_the_environment_is_read_at_start() -> None:
    import os
    import subprocess
    import sys

    code = "from vcbfs.blocks.budget import BUDGET; print(BUDGET.capacity, BUDGET.rank)"
    env = {**os.environ, "VCBFS_MEMORY_BUDGET": "200M"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [str(200 * MIB), str(budget_module.RANKS["environment"])]


def test_a_local_verb_applies_the_config_files_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``disk`` and a local ``mount`` read no vSphere settings, yet config.toml's budget holds."""
    from vcbfs.cli.main import main

    config = tmp_path / "config.toml"
    config.write_text('memory_budget = "100M"\n')
    monkeypatch.setenv("VCBFS_CONFIG", str(config))
    monkeypatch.delenv("VCBFS_MEMORY_BUDGET", raising=False)
    assert main(["disk", "info", str(tmp_path / "missing.vmdk")]) == 1  # no such disk
    assert "missing.vmdk" in capsys.readouterr().err
    assert BUDGET.capacity == 100 * MIB
    config.write_text('memory_budget = "1K"\n')  # and a bad value is named, as for vSphere verbs
    assert main(["disk", "info", str(tmp_path / "missing.vmdk")]) == 1
    assert "memory_budget" in capsys.readouterr().err
