"""The blob store's test world, and a driver that runs one storage job on it (in a child process the crash tests kill).

The world: 40 media of 3-12 KB put in hot volumes of 64 KiB (5 volumes, 3 replicas each); the rewrite moves media
1-30 to 4 warm volumes (RS(10,4), 8 KiB segments) in three regions, which form 2 XOR pairs; the archival packs 5 of
those warm media and 6 hot ones into 2 cold packs, and media 37-40 stay hot. Every time is a constant, so two runs
write the same bytes. Jobs (:data:`JOBS`): ``rewrite`` (from the hot world), ``archive`` (from the warm world), and
from the cold world a later ``put_hot`` of media 41-56, a ``restore`` of 2 cold media and a hot ``compact``.

Run as ``python tests/blobstore/crash_driver.py <job> <state_dir>`` with ``DARKROOM_CRASH_AT=<point>[#n]`` set: the
job dies by SIGKILL at that point (return code -9). Jobs run as ``jobs.storage.main`` runs them, inside the writer
lock, which removes temp files of killed writes first. Tests import :func:`run_job` to re-run a job in-process.
"""

from __future__ import annotations

import hashlib
import sys
from datetime import UTC, datetime
from pathlib import Path

from blobstore.content import media_bytes
from blobstore.maintenance import compact
from blobstore.store import Blob, BlobStore, writer_lock
from blobstore.tiering import archive_to_cold, rewrite_to_warm
from darkroom.settings import load_settings

BLOB = {"volume_bytes": 64 * 1024, "ec_segment_bytes": 8192}
PUT_AS_OF = datetime(2026, 10, 1, tzinfo=UTC)
WARM_AS_OF, WARM_RUN = datetime(2026, 11, 1, tzinfo=UTC), "2026-11-01"
COLD_AS_OF, COLD_RUN = datetime(2026, 11, 2, tzinfo=UTC), "2026-11-02"
MORE_AS_OF = datetime(2026, 11, 3, tzinfo=UTC)
RESTORE_AS_OF = datetime(2026, 11, 4, tzinfo=UTC)
COMPACT_AS_OF = datetime(2026, 11, 5, tzinfo=UTC)

MEDIA_IDS = list(range(1, 41))
WARM_IDS = list(range(1, 31))
COLD_IDS = [*range(21, 26), *range(31, 37)]  # 5 warm, 6 hot; 37-40 stay hot
MORE_IDS = list(range(41, 57))  # a later put_hot: fills a new volume, seals it, opens another
RESTORE_IDS = [22, 31]  # cold media, archived from warm and from hot; the open hot volume is full


def media_size(media_id: int) -> int:
    return 3000 + (media_id * 7919) % 9000


def original(media_id: int) -> bytes:
    """The media's bytes as first stored (its id is its content seed)."""
    return media_bytes(media_id, media_size(media_id))


def settings_for(state_dir: Path):
    return load_settings(state_dir=state_dir, blob=BLOB)


def open_store(state_dir: Path) -> BlobStore:
    store = BlobStore(settings_for(state_dir))
    store.catalog.ensure()
    return store


def put(store: BlobStore, ids: list[int], as_of: datetime) -> int:
    return store.put_hot([Blob(i, "media", original(i)) for i in ids], as_of=as_of)


JOBS = {
    "put_hot": lambda store: put(store, MORE_IDS, MORE_AS_OF),
    "rewrite": lambda store: rewrite_to_warm(store, WARM_IDS, as_of=WARM_AS_OF, run=WARM_RUN),
    "archive": lambda store: archive_to_cold(store, COLD_IDS, as_of=COLD_AS_OF, run=COLD_RUN),
    "restore": lambda store: store.restore(RESTORE_IDS, as_of=RESTORE_AS_OF),
    "compact": lambda store: compact(store, as_of=COMPACT_AS_OF),  # volumes 1-4: only dead needles; 5 (open): 60%
}


def run_job(job: str, state_dir: Path) -> object:
    store = open_store(state_dir)
    with writer_lock(store.settings.blob_root, job=job):
        return JOBS[job](store)


def file_hashes(store: BlobStore) -> dict[str, str]:
    """Every file of the blob store (temp files aside) and the sha256 of its bytes."""
    return {key: hashlib.sha256(store.fs.path(key).read_bytes()).hexdigest() for key in sorted(store.fs.list())}


def end_state(store: BlobStore) -> tuple[dict, dict[str, str]]:
    """What two runs must agree on: every catalog row and every file's bytes."""
    return store.catalog.snapshot(), file_hashes(store)


if __name__ == "__main__":
    print(run_job(sys.argv[1], Path(sys.argv[2])))
