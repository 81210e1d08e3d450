"""Checks shared by the DAG-level tests and the end-to-end platform test: one definition each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path


def add_a_self_follow(spark, landing: Path) -> None:
    """One follow of a user by themself appended to the landing drop, so ingest's quarantine path runs too."""
    from darkroom.contract_spec import load_contract

    [user] = spark.read.parquet(str(landing / "users")).select("user_id", "created_at").limit(1).collect()
    (
        spark.createDataFrame(
            [(user.user_id, user.user_id, user.created_at)], schema=load_contract("follows").spark_schema()
        )
        .coalesce(1)
        .write.mode("append")
        .parquet(str(landing / "follows"))
    )


def placed_elsewhere_than_uploaded(spark, lake_dir: Path, locations: list[dict]) -> list[tuple]:
    """(media, placed_at, uploaded) of every given catalog row whose ``placed_at`` is not its bronze ``created_at``
    (media and stories; read as epoch microseconds, so the machine's time zone plays no part)."""
    from pyspark.sql import functions as F

    uploaded = {}
    for t, key in (("media", "media_id"), ("stories", "story_id")):
        bronze = spark.read.format("delta").load(str(lake_dir / "bronze" / t))
        for r in bronze.select(key, F.unix_micros("created_at")).collect():
            uploaded[r[0]] = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=r[1])
    return [
        (r["media_id"], r["placed_at"], uploaded[r["media_id"]])
        for r in locations
        if r["placed_at"] != uploaded[r["media_id"]]
    ]


def warm_replication(store):
    """Measured replication of the store's XOR-paired warm volumes (RS(10,4) in the cell plus half of each pair's
    XOR blocks in the third region: about 2.1x)."""
    from blobstore.warm import WarmVolume, XorPair, measure_replication

    warm = [store.warm_volume(r["volume_id"]) for r in store.catalog.rows("volumes") if r["info_json"]]
    pairs = [store.xor_pair(g["xor_group"]) for g in store.catalog.rows("xor_groups")]
    assert all(isinstance(v, WarmVolume) for v in warm) and pairs and all(isinstance(p, XorPair) for p in pairs)
    paired = {p.volume_a for p in pairs} | {p.volume_b for p in pairs}
    return measure_replication([v for v in warm if v.volume_id in paired], pairs)
