"""The storage_tiering DAG on the tiny world's marts (it lives beside the dbt tests to reuse their built world):
a real `airflow dags test` run moves bytes hot -> warm -> cold, and running the same day again leaves the catalog
and every file exactly as they were."""

from __future__ import annotations

import collections
import hashlib
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from pyspark.sql import functions as F

from blobstore.store import BlobStore
from blobstore.warm import WarmVolume, XorPair, measure_replication
from darkroom.airflow_env import last_dag_run, run_dag_test
from darkroom.settings import load_settings

DAY = "2026-11-01T00:00:00+00:00"


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
    uploaded = {}
    for t, key in (("media", "media_id"), ("stories", "story_id")):
        bronze = spark.read.format("delta").load(str(storage.lake_dir / "bronze" / t))
        for r in bronze.select(key, F.unix_micros("created_at")).collect():
            uploaded[r[0]] = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=r[1])
    hot = [r for r in locations if r["tier"] == "hot"]
    wrong = [
        (r["media_id"], r["placed_at"], uploaded[r["media_id"]])
        for r in hot
        if r["placed_at"] != uploaded[r["media_id"]]
    ]
    assert hot and not wrong, wrong[:5]
    # Warm data costs about 2.1x: 14/10 in the cell plus half of each XOR pair's blocks in the third region.
    warm = [store.warm_volume(r["volume_id"]) for r in store.catalog.rows("volumes") if r["info_json"]]
    pairs = [store.xor_pair(g["xor_group"]) for g in store.catalog.rows("xor_groups")]
    assert all(isinstance(v, WarmVolume) for v in warm) and all(isinstance(p, XorPair) for p in pairs)
    paired = {p.volume_a for p in pairs} | {p.volume_b for p in pairs}
    replication = measure_replication([v for v in warm if v.volume_id in paired], pairs)
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
