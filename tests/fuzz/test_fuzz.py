"""The fuzz targets under Hypothesis, on a CI budget, and every saved crash replayed.

Each target gets its seeds (real structures, see ``seeds``) edited by ``mutate`` (fields set
to values near 2**63 and 2**64, bytes flipped, cut, repeated) and plain random bytes.  The
budget is small (the profile below: a few seconds for all targets together); the big one runs
outside CI with ``scripts/fuzz``, which finds what this cannot in the time.  Inputs that once
crashed a target live in ``regressions/<target>/`` and are replayed here on every run, with the
seeds: a fix that comes undone fails at once.  Hypothesis is derandomized and keeps no
database, so every run tries the same inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import mutate
from tests.fuzz.targets import TARGETS, Target, corpus_dir, regressions_dir

settings.register_profile(
    "fuzz-ci",
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz-ci")
#: Targets that cost milliseconds an input (a whole volume, regipy) get fewer examples.
SLOW = {"ntfs_volume": 100, "hive": 150, "vmdk_disk": 200, "index_node": 200}


@pytest.fixture(autouse=True)
def _quiet_regipy() -> Iterator[None]:
    """regipy logs every damaged cell it meets; thousands of lines say nothing here."""
    logger = logging.getLogger("regipy")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def _inputs(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("*.bin"))] if folder.is_dir() else []


def test_every_target_has_seeds() -> None:
    assert set(TARGETS) == {p.name for p in (Path(__file__).parent / "corpus").iterdir()
                            if p.is_dir()}  # fmt: skip
    for name in TARGETS:
        assert _inputs(corpus_dir(name)), name


SAVED = [
    pytest.param(name, path, id=f"{name}/{path.name}")
    for name in TARGETS
    for folder in (corpus_dir(name), regressions_dir(name))
    if folder.is_dir()
    for path in sorted(folder.glob("*.bin"))
]


@pytest.mark.parametrize(("name", "path"), SAVED)
def test_saved_input(name: str, path: Path) -> None:
    """Every seed parses and every input that once crashed its target no longer does."""
    TARGETS[name](path.read_bytes())


EDITS = st.lists(
    st.tuples(
        st.sampled_from(mutate.OPS),
        st.integers(0, 1 << 20),
        st.integers(0, (1 << 21) - 1) | st.integers(0, (1 << 64) - 1),
    ),
    min_size=1,
    max_size=6,
)


def _fuzz(name: str, target: Target) -> None:
    seeds = _inputs(corpus_dir(name)) + _inputs(regressions_dir(name))

    examples = SLOW.get(name, FUZZ.max_examples)

    @settings(FUZZ, max_examples=examples)
    @given(which=st.integers(0, len(seeds) - 1), edits=EDITS)
    def edited(which: int, edits: list[mutate.Edit]) -> None:
        target(mutate.apply(seeds[which], edits))

    @settings(FUZZ, max_examples=examples // 2)
    @given(data=st.binary(max_size=4096))
    def noise(data: bytes) -> None:
        target(data)

    edited()
    noise()


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name: str) -> None:
    """Edited seeds and random bytes: the target returns or raises a vcbfs error, no other."""
    _fuzz(name, TARGETS[name])
