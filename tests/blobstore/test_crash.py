"""Crash safety of the byte moves: a job killed by SIGKILL at a named point, then re-run, ends where an uninterrupted
run ends.

Each case copies a prepared world (``conftest``), runs the job in a child process (``crash_driver``) with
``DARKROOM_CRASH_AT`` set, and asserts the child died by SIGKILL (so the point was reached). A temp file like the one a
write killed half-way leaves is planted too. Then the job is re-run in-process, as a retried task would be, and:
every media reads back with its original bytes, ``fsck`` finds nothing (no orphan file or needle, no temp file, no
pending intent), and the catalog snapshot and every file's bytes equal those of an uninterrupted run on the same
world. Points are named ``<job>.<step>`` between steps and ``warm.*``, ``cold.*``, ``hot.*`` inside them (per block,
per pack copy, per replica, per index file); ``#n`` kills at the n-th time a point is reached.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from crash_driver import MEDIA_IDS, MORE_IDS, WARM_RUN, end_state, open_store, original, run_job

from blobstore.maintenance import fsck
from blobstore.store import writer_lock
from blobstore.tiering import resume_pending

DRIVER = Path(__file__).with_name("crash_driver.py")

REWRITE_POINTS = [
    "ec_rewrite.intent_saved",
    "warm.block_written#20",  # volume 1 verified; 6 of volume 2's blocks durable, others may be mid-write
    "ec_rewrite.blocks_written",
    "ec_rewrite.volume_committed#3",
    "ec_rewrite.locations_committed#2",
    "ec_rewrite.placement_synced",
    "warm.xor_block_written#9",
    "ec_rewrite.xor_committed",  # the group recorded, its volumes not yet
    "ec_rewrite.xor_written",
    "ec_rewrite.released#3",  # 3 of the 4 hot volumes' needles tombstoned, the 3rd one's index not checkpointed
    "hot.replica_appended#5",  # volume 2's tombstones on 2 of its 3 replicas
    "hot.index_written#2",  # 2 of 3 replicas' index files checkpointed after the release
    "ec_rewrite.volumes_released",
]
ARCHIVE_POINTS = [
    "cold_archive.intent_saved",
    "cold.pack_file_written",  # the first copy's pack file, without its sidecar
    "cold.copy_written",  # between the two copies of pack 1
    "cold_archive.pack_written",
    "cold_archive.pack_committed#2",
    "cold_archive.locations_committed",
    "cold_archive.released",
    "hot.replica_appended#2",  # the tombstones on 2 of the 3 replicas
    "cold_archive.hot_released",
]
# The same recovery protects the other writers: a later put_hot, a restore from cold, compaction.
OTHER_CASES = [
    ("put_hot", "hot.appended"),  # a volume filled and sealed, the next created, nothing recorded
    ("put_hot", "hot.locations_recorded"),  # media rows written, volume rows not
    ("restore", "hot.appended"),  # the open volume sealed, a new one holds the restored needles
    ("compact", "compact.open_volume_sealed"),  # the open volume sealed in the catalog only
    ("compact", "compact.volume_compacted#2"),
    ("compact", "hot.compact_renamed"),  # one replica at the new generation, two at the old
]
CASES = [("rewrite", p) for p in REWRITE_POINTS] + [("archive", p) for p in ARCHIVE_POINTS] + OTHER_CASES


@pytest.fixture(scope="module")
def worlds(hot_world, warm_world, cold_world, tmp_path_factory) -> dict[str, tuple[Path, tuple]]:
    """Per job: the world it starts from and the end state of an uninterrupted run of it there."""
    out = {
        "rewrite": (hot_world, end_state(open_store(warm_world))),
        "archive": (warm_world, end_state(open_store(cold_world))),
    }
    for job in ("put_hot", "restore", "compact"):
        state = tmp_path_factory.mktemp("world") / job
        shutil.copytree(cold_world, state)
        run_job(job, state)
        out[job] = (cold_world, end_state(open_store(state)))
    return out


def crash(job: str, state: Path, point: str) -> None:
    """Runs the job in a child process killed at ``point``; fails unless it died by SIGKILL."""
    env = {**os.environ, "DARKROOM_CRASH_AT": point}
    child = subprocess.run(
        [sys.executable, str(DRIVER), job, str(state)], env=env, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, f"{job} did not die at {point}: rc {child.returncode}\n{child.stderr}"


def plant_torn_write(state: Path) -> Path:
    """A temp file as ``LocalFS.write`` leaves it when killed before its rename (half of some file's bytes)."""
    store = open_store(state)
    key = next(iter(store.fs.list()))
    path = store.fs.path(key)
    tmp = path.with_name(f".{path.name}.tmp-999999")
    tmp.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return tmp


def assert_recovered(state: Path, want: tuple, media_ids: list[int]) -> None:
    store = open_store(state)
    assert [d.line() for d in fsck(store)] == []
    for media_id in media_ids:
        assert store.get(media_id, restore=False) == original(media_id), f"media {media_id}"
    snapshot, files = end_state(store)
    assert sorted(files) == sorted(want[1]), "a different set of files than an uninterrupted run"
    assert files == want[1], "files whose bytes differ from an uninterrupted run"
    assert snapshot == want[0]


@pytest.mark.parametrize(("job", "point"), CASES, ids=[f"{job}:{point}" for job, point in CASES])
def test_killed_job_rerun_ends_like_an_uninterrupted_run(job, point, worlds, copy_world):
    start, want = worlds[job]
    state = copy_world(start)
    crash(job, state, point)
    torn = plant_torn_write(state)
    left = {d.kind for d in fsck(open_store(state))}
    assert "temp_file" in left
    if job in ("rewrite", "archive"):
        assert "intent_pending" in left  # the durable record the re-run resumes from

    run_job(job, state)

    assert not torn.exists()
    assert_recovered(state, want, MEDIA_IDS + (MORE_IDS if job == "put_hot" else []))


def test_crash_points_cover_both_moves_inside_and_between_steps():
    names = {p.partition("#")[0] for p in REWRITE_POINTS + ARCHIVE_POINTS}
    assert len(names) >= 20
    assert {n.partition(".")[0] for n in names} == {"ec_rewrite", "cold_archive", "warm", "cold", "hot"}


def test_resume_pending_finishes_a_killed_move_and_the_job_rerun_is_a_no_op(worlds, copy_world):
    start, want = worlds["rewrite"]
    state = copy_world(start)
    crash("rewrite", state, "warm.block_written#20")
    store = open_store(state)

    with writer_lock(store.settings.blob_root, job="ec_rewrite"):  # as jobs.storage.main resumes
        assert resume_pending(store) == [f"ec_rewrite/{WARM_RUN}"]
    assert_recovered(state, want, MEDIA_IDS)

    assert run_job("rewrite", state)["media"] == 0
    assert end_state(open_store(state)) == want


def test_a_rerun_killed_again_still_ends_like_an_uninterrupted_run(worlds, copy_world):
    start, want = worlds["rewrite"]
    state = copy_world(start)
    crash("rewrite", state, "warm.xor_block_written#3")
    crash("rewrite", state, "hot.replica_appended#2")

    run_job("rewrite", state)

    assert_recovered(state, want, MEDIA_IDS)
