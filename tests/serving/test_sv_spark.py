"""The production path: batches in the serving.* Delta tables, published with Spark (writes and checks on the
executors), read back by the readers; an unfollow across two batches; refusals, named, from the driver and from
the executors.

The lake is written once for the module (Delta writes are most of the cost): batch 1, batch 2 (user 1 unfollowed
author 9), batch 3 (a NaN score)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from darkroom.settings import load_settings
from darkroom.tables import table
from serving.errors import ServingInputError
from serving.publisher import publish_batch
from tests.serving.conftest import BATCH, DIM, batch, frames, readers, whole_feed

ARROW_TYPES = {
    "StringType()": pa.string(),
    "LongType()": pa.int64(),
    "IntegerType()": pa.int32(),
    "DoubleType()": pa.float64(),
    "BooleanType()": pa.bool_(),
    "TimestampType()": pa.timestamp("us", tz="UTC"),
    "ArrayType(FloatType(), True)": pa.list_(pa.float32()),
}


def write_batches(settings, batches: list[dict[str, pd.DataFrame]]) -> None:
    """Each family's rows of every batch into its serving table, partitioned by batch_id, in the table's schema.
    Written with delta-rs (a Spark write per table would be most of the module's time); Spark reads them."""
    for family in batches[0]:
        t = table(f"serving.{family}")
        schema = pa.schema([pa.field(f.name, ARROW_TYPES[str(f.dataType)], f.nullable) for f in t.schema.fields])
        frame = pd.concat([b[family] for b in batches], ignore_index=True)
        columns = [pa.array(frame[f.name].tolist(), f.type) for f in schema]  # a NaN stays NaN, not null
        write_deltalake(t.uri(settings), pa.Table.from_arrays(columns, schema=schema), partition_by=["batch_id"])


def world(batch_id: str, follows_9: bool):
    """Users 1 and 2; user 1 follows pull-mode author 9 in the first batch and unfollows it in the second."""
    return frames(
        batch_id,
        timelines={1: [(101, 5.0), (102, 1.0)], 2: [(201, 2.0)]},
        pull={1: [9], 2: [9]} if follows_9 else {2: [9]},
        celebrity={9: [(901, 1), (902, 30)]},
        base_scores={901: 3.0, 902: 9.0},
        rings={1: [(5, 1.0, False, 4.0), (6, 0.5, True, 4.0)]},
        explore={1: [(501, 0.9), (502, 0.1)]},
        user_vectors={1: [1.0, 2.0, 3.0, 4.0]},
        item_vectors={501: [0.5] * DIM, 502: [0.25] * DIM},
    )


@pytest.fixture(scope="module")
def lake(settings, tmp_path_factory):
    lake_settings = load_settings(
        state_dir=tmp_path_factory.mktemp("serving-lake"),
        jars_path=settings.jars_dir,
        spark=settings.spark.model_dump(),
        two_tower={"output_dim": DIM},
    )
    nan = world(batch(120), follows_9=True)
    nan["feed_timelines"].loc[1, "score"] = float("nan")
    write_batches(lake_settings, [world(BATCH, True), world(batch(60), False), nan])
    return lake_settings


def test_publish_every_group_from_delta(spark, lake, redis_url, client):
    settings = lake.model_copy(update={"redis_url": redis_url})
    results = publish_batch(spark, settings, BATCH)
    assert [(r.group, r.version, r.state) for r in results] == [
        ("feed", f"{BATCH}.1", "current"),
        ("stories", f"{BATCH}.1", "current"),
        ("explore", f"{BATCH}.1", "current"),
    ]
    assert results[0].verified["feed_timelines"]["members"] == 3
    assert (results[1].verified["story_rings"]["keys"], results[1].verified["story_rings"]["members"]) == (2, 4)
    feed, stories, explore = readers(client, settings)
    assert whole_feed(feed, 1)[0] == [101, 901, 102]  # 902 is 30 h old: outside the window
    assert [(e.author_id, e.has_unseen) for e in stories.get_ring(1).ring] == [(6, True), (5, False)]
    assert [p.post_id for p in explore.get_explore(1).posts] == [501, 502]
    assert explore.user_embedding(1).tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.heavy
def test_an_unfollow_from_delta(spark, lake, redis_url, client):
    settings = lake.model_copy(update={"redis_url": redis_url})
    publish_batch(spark, settings, BATCH, ["feed"])
    feed, _, _ = readers(client, settings)
    assert whole_feed(feed, 1)[0] == [101, 901, 102]
    [feed_result] = publish_batch(spark, settings, batch(60), ["feed"])
    assert feed_result.previous == f"{BATCH}.1" and feed_result.expired == [f"{BATCH}.1"]
    assert whole_feed(feed, 1)[0] == [101, 102]
    assert whole_feed(feed, 2)[0] == [901, 201]
    [again] = publish_batch(spark, settings, batch(60), ["feed"])
    assert again.state == "already_current"


def test_refusals_name_the_table_and_key(spark, lake, tmp_path, redis_url, client):
    settings = lake.model_copy(update={"redis_url": redis_url})
    with pytest.raises(ServingInputError, match=r"serving.feed_timelines: key sv:feed:20261101T0200Z.1:timeline:\{1\}: "
                       r"score of member 102 is nan; expected a finite number"):  # fmt: skip
        publish_batch(spark, settings, batch(120), ["feed"])
    assert client.get("sv:{feed}:current") is None
    assert client.hget("sv:{feed}:manifest:20261101T0200Z.1", "state") == b"failed"
    with pytest.raises(ServingInputError, match=r"serving.story_rings: no rows for batch_id 20261101T0300Z"):
        publish_batch(spark, settings, batch(180), ["stories"])
    empty = load_settings(state_dir=tmp_path, redis_url=redis_url)
    with pytest.raises(ServingInputError, match=r"serving.feed_timelines: no Delta table at \S+feed_timelines"):
        publish_batch(spark, empty, BATCH, ["feed"])
