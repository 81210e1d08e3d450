"""The blob store test world (see ``crash_driver``) built once per session, one folder per stage; tests copy one.

- ``hot_world``: media 1-40 in 5 hot volumes.
- ``warm_world``: then media 1-30 rewritten to 4 warm volumes (2 XOR pairs).
- ``cold_world``: then 11 media archived to 2 cold packs (5 from warm, 6 from hot).

Each is a whole state dir (blob files and the Delta catalog), built by the same job calls the crash tests run, so
its catalog snapshot and files are also the end state of an uninterrupted run of the stage's job.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_driver import MEDIA_IDS, PUT_AS_OF, open_store, put, run_job


@pytest.fixture(scope="session")
def hot_world(tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("world") / "hot"
    put(open_store(state), MEDIA_IDS, PUT_AS_OF)
    return state


@pytest.fixture(scope="session")
def warm_world(hot_world, tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("world") / "warm"
    shutil.copytree(hot_world, state)
    run_job("rewrite", state)
    return state


@pytest.fixture(scope="session")
def cold_world(warm_world, tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("world") / "cold"
    shutil.copytree(warm_world, state)
    run_job("archive", state)
    return state


@pytest.fixture
def copy_world(tmp_path) -> Callable[[Path], Path]:
    """A private copy of a world's state dir, for a test to change."""

    def copy(world: Path) -> Path:
        state = tmp_path / "state"
        shutil.copytree(world, state)
        return state

    return copy
