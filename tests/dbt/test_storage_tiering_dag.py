"""The storage_tiering DAG on the tiny world's marts (it lives beside the dbt tests to reuse their built world):
a real `airflow dags test` run moves bytes hot -> warm -> cold, and running the same day again leaves the catalog
and every file exactly as they were."""

from __future__ import annotations

import collections
import hashlib
import shutil

import pytest

from blobstore.store import BlobStore
from darkroom.airflow_env import last_dag_run, run_dag_test
from darkroom.settings import load_settings
from tests.platform_checks import placed_elsewhere_than_uploaded, warm_replication

DAY = "2026-11-01T00:00:00+00:00"
# Heavy: the suite's end-to-end test (tests/e2e/test_platform.py) runs this DAG on its world and checks the same.
pytestmark = [pytest.mark.integration, pytest.mark.heavy]


def _files(settings) -> dict[str, str]:
    root = settings.blob_root
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".writer.lock"
    }


def _tier_decisions(spark, settings) -> list[tuple]:
    df = spark.read.format("delta").load(str(settings.lake_dir / "blob_catalog" / "tier_decisions"))
    return sorted(tuple(r) for r in df.collect())


@pytest.fixture(scope="module")
def storage(dbt_world, tmp_path_factory):
    state = tmp_path_factory.mktemp("storage-state")
    shutil.copytree(dbt_world.settings.lake_dir, state / "lake")
    return load_settings(
        state_dir=state,
        jars_path=dbt_world.settings.jars_dir,
        spark=dbt_world.settings.spark.model_dump(),
        world=dbt_world.settings.world.model_dump(),
        blob={"volume_bytes": 1 << 20},
    )


def test_storage_tiering_moves_bytes_and_a_rerun_changes_nothing(storage, spark):
    proc = run_dag_test(storage, "storage_tiering", DAY)
    assert proc.returncode == 0, proc.stdout[-5000:]
    state, tasks = last_dag_run(storage, "storage_tiering")
    assert state == "success", tasks
    assert set(tasks.values()) == {"success"}
    assert sorted(tasks) == sorted(
        [
            "day_complete",
            "blob_load",
            "tiering_plan",
            "validate_plan",
            "ec_rewrite",
            "cold_archive",
            "compaction",
            "blob_fsck",
        ]
    )

    store = BlobStore(storage)
    locations = store.catalog.rows("media_locations")
    tiers = collections.Counter((r["kind"], r["tier"]) for r in locations)
    assert tiers[("media", "warm")] > 0 and tiers[("media", "hot")] > 0 and tiers[("media", "cold")] > 0
    # The plan's decisions are what happened: each media sits in its planned target tier.
    planned = {r[0]: r[3] for r in _tier_decisions(spark, storage)}
    assert {r["media_id"]: r["tier"] for r in locations if r["kind"] == "media"} == planned
    # meta.media_placement (what dbt reads back) follows the catalog: each media's latest placement is where it is,
    # and a moved media keeps its upload's placement before it (the history dbt reads as of a day).
    placement = spark.read.format("delta").load(str(storage.lake_dir / "meta" / "media_placement")).collect()
    assert {m: tier for m, (tier, _) in store.catalog.current_placement().items()} == planned
    history = collections.Counter(r["media_id"] for r in placement)
    moved = [m for m, tier in planned.items() if tier != "hot"]
    assert moved and all(history[m] == 2 for m in moved)
    # A blob still where blob_load put it is placed at its upload time, not at the run's as-of: the tier age dbt
    # derives from placed_at must not depend on whether the day's build ran before or after the load.
    hot = [r for r in locations if r["tier"] == "hot"]
    wrong = placed_elsewhere_than_uploaded(spark, storage.lake_dir, hot)
    assert hot and not wrong, wrong[:5]
    # Warm data costs about 2.1x: 14/10 in the cell plus half of each XOR pair's blocks in the third region.
    replication = warm_replication(store)
    assert 1.95 < replication.effective < 2.25, replication
    # Every media reads back with its catalog checksum, from wherever it is.
    for r in locations[:: max(1, len(locations) // 200)]:
        if r["tier"] != "deleted":
            store.get(r["media_id"], restore=False)

    before = (store.catalog.snapshot(), _files(storage), _tier_decisions(spark, storage))
    proc = run_dag_test(storage, "storage_tiering", DAY)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert last_dag_run(storage, "storage_tiering")[0] == "success"
    after = (BlobStore(storage).catalog.snapshot(), _files(storage), _tier_decisions(spark, storage))
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert after[2] == before[2]
