"""The point-in-time join on hand-made rows with real Spark: a value is used only from its feature_ts on (never a
row written after the event, which a latest-by-key join would take), within the TTL, ties count as known, events
without a value get nulls, and every event row comes out once (duplicates included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from feature_store.definitions import (
    AUTHOR,
    HASHTAGS_SQL,
    POST,
    VIEWER,
    FeatureService,
    FeatureView,
)
from feature_store.transform import feature_rows, historical_features, point_in_time_join

pytestmark = pytest.mark.integration

TTL = timedelta(hours=48)
EVENTS_DDL = "event_id INT, viewer_id BIGINT, impressed_at TIMESTAMP"
USERS_DDL = "user_id BIGINT, feature_ts TIMESTAMP, followers BIGINT"

FOLLOWERS = FeatureView(
    name="viewer",
    entities=(VIEWER,),
    source="marts.dim_user_features",
    source_keys=("user_id",),
    features=(("followers", "bigint"),),
    ttl=TTL,
)


def ts(day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 10, day, hour, minute, second, micro, tzinfo=UTC)


def join(spark, events: list[tuple], users: list[tuple]):
    ev = spark.createDataFrame(events, EVENTS_DDL)
    src = spark.createDataFrame(users, USERS_DDL)
    return point_in_time_join(ev, feature_rows(src, FOLLOWERS), FOLLOWERS, timestamp_column="impressed_at", ttl=TTL)


def expected(spark, rows: list[tuple]):
    return spark.createDataFrame(rows, EVENTS_DDL + ", viewer__followers BIGINT")


def test_a_row_written_after_the_impression_is_not_used_though_a_latest_by_key_join_takes_it(spark):
    # User 1's row of 10-10 (followers 11, counting that day's follows) is known at 10-11 00:00: after the
    # impression at 10-10 12:00, which must see the row of 10-09 (followers 10, known at 10-10 00:00).
    users = [(1, ts(10), 10), (1, ts(11), 11)]
    events = [(1, 1, ts(10, 12))]

    ours = join(spark, events, users)
    assertDataFrameEqual(ours, expected(spark, [(1, 1, ts(10, 12), 10)]))

    src = spark.createDataFrame(users, USERS_DDL)
    latest = src.groupBy("user_id").agg(F.max_by("followers", "feature_ts").alias("viewer__followers"))
    leaky = (
        spark.createDataFrame(events, EVENTS_DDL)
        .join(latest, F.col("viewer_id") == F.col("user_id"), how="left")
        .drop("user_id")
    )
    assertDataFrameEqual(leaky, expected(spark, [(1, 1, ts(10, 12), 11)]))  # the leak: a value from the future


def test_a_value_is_known_from_its_feature_ts_on(spark):
    users = [(1, ts(10), 10), (1, ts(11), 11)]
    events = [
        (1, 1, ts(10, 23, 59, 59, 999999)),  # a microsecond before the second row
        (2, 1, ts(11)),  # exactly at its feature_ts: known
        (3, 1, ts(9, 12)),  # before any row
    ]
    got = join(spark, events, users)
    assertDataFrameEqual(
        got, expected(spark, [(1, 1, ts(10, 23, 59, 59, 999999), 10), (2, 1, ts(11), 11), (3, 1, ts(9, 12), None)])
    )


def test_a_value_older_than_the_ttl_is_null(spark):
    users = [(1, ts(10), 10), (2, ts(1), 7)]
    events = [
        (1, 1, ts(12)),  # exactly 48 h old: still valid
        (2, 1, ts(12, 0, 0, 0, 1)),  # 48 h and 1 us: expired
        (3, 2, ts(5)),  # 4 days old
    ]
    got = join(spark, events, users)
    assertDataFrameEqual(
        got, expected(spark, [(1, 1, ts(12), 10), (2, 1, ts(12, 0, 0, 0, 1), None), (3, 2, ts(5), None)])
    )


def test_every_event_row_comes_out_once_with_its_columns_in_order(spark):
    users = [(1, ts(10), 10), (1, ts(11), 11), (2, ts(10, 6), 3)]
    events = [
        (1, 1, ts(10, 12)),
        (1, 1, ts(10, 12)),  # an exact duplicate stays a duplicate
        (2, 1, ts(10, 12)),
        (3, 9, ts(10, 12)),  # a viewer without any feature row
        (4, None, ts(10, 12)),  # no key
        (5, 2, None),  # no time
    ]
    got = join(spark, events, users)
    assert got.columns == ["event_id", "viewer_id", "impressed_at", "viewer__followers"]
    assert got.count() == 6
    assertDataFrameEqual(
        got,
        expected(
            spark,
            [
                (1, 1, ts(10, 12), 10),
                (1, 1, ts(10, 12), 10),
                (2, 1, ts(10, 12), 10),
                (3, 9, ts(10, 12), None),
                (4, None, ts(10, 12), None),
                (5, 2, None, None),
            ],
        ),
    )


def test_several_views_and_entities_in_one_frame(spark):
    """Viewer and author from the same user rows, a viewer x author pair with its feature age, a post's hashtags
    computed from bronze captions: each joined on its own keys and as of the impression."""
    user_src = spark.createDataFrame(
        [(1, ts(10), 10), (2, ts(10), 200), (2, ts(11), 205)], "user_id BIGINT, feature_ts TIMESTAMP, followers BIGINT"
    )
    pair_src = spark.createDataFrame(
        [(1, 2, ts(9), 4.0), (1, 2, ts(12), 9.5), (2, 1, ts(10), 1.0)],
        "viewer_id BIGINT, author_id BIGINT, feature_ts TIMESTAMP, affinity_score DOUBLE",
    )
    posts_src = spark.createDataFrame(
        [(100, ts(10, 8), "sunny #beach day  #sun # #"), (101, ts(11, 9), None), (102, ts(11, 13), "#late")],
        "post_id BIGINT, created_at TIMESTAMP, caption STRING",
    )
    user = dict(source="marts.dim_user_features", source_keys=("user_id",), features=(("followers", "bigint"),))
    views = (
        FeatureView(name="viewer", entities=(VIEWER,), **user),
        FeatureView(name="author", entities=(AUTHOR,), **user),
        FeatureView(
            name="viewer_author",
            entities=(VIEWER, AUTHOR),
            source="marts.fct_viewer_author_affinity",
            source_keys=("viewer_id", "author_id"),
            features=(("affinity_score", "double"),),
            ttl=timedelta(days=30),
            with_feature_age=True,
        ),
        FeatureView(
            name="post_hashtags",
            entities=(POST,),
            source="bronze.posts",
            source_keys=("post_id",),
            timestamp_column="created_at",
            features=(("hashtags", "array<string>"),),
            expressions=(("hashtags", HASHTAGS_SQL),),
            ttl=timedelta(days=3650),
        ),
    )
    service = FeatureService("test", 1, views)
    events = spark.createDataFrame(
        [
            (1, 2, 100, ts(11, 12)),
            (2, 1, 101, ts(11, 12)),
            (1, 2, 102, ts(11, 12)),  # post 102 is created later that day
        ],
        "viewer_id BIGINT, author_id BIGINT, post_id BIGINT, impressed_at TIMESTAMP",
    )
    sources = {"viewer": user_src, "author": user_src, "viewer_author": pair_src, "post_hashtags": posts_src}
    got = historical_features(events, sources, service.views, timestamp_column="impressed_at", default_ttl=TTL)

    want = spark.createDataFrame(
        [
            # viewer 1 (row of 10-10), author 2 (row of 11: 205), pair (1, 2) from 10-09: 60 h old
            (1, 2, 100, ts(11, 12), 10, 205, 4.0, 60.0, ["#beach", "#sun"]),
            # viewer 2 (205), author 1 (10), pair (2, 1) from 10-10: 36 h old; no caption: no hashtags
            (2, 1, 101, ts(11, 12), 205, 10, 1.0, 36.0, []),
            (1, 2, 102, ts(11, 12), 10, 205, 4.0, 60.0, None),
        ],
        "viewer_id BIGINT, author_id BIGINT, post_id BIGINT, impressed_at TIMESTAMP, viewer__followers BIGINT, "
        "author__followers BIGINT, viewer_author__affinity_score DOUBLE, viewer_author__feature_age_hours DOUBLE, "
        "post_hashtags__hashtags ARRAY<STRING>",
    )
    assertDataFrameEqual(got, want)


def test_feature_columns_must_not_exist_in_the_entity_frame(spark):
    events = spark.createDataFrame([(1, 1, ts(10), 5)], EVENTS_DDL + ", viewer__followers BIGINT")
    src = spark.createDataFrame([(1, ts(10), 10)], USERS_DDL)
    with pytest.raises(ValueError, match="already has feature columns viewer__followers"):
        historical_features(events, {"viewer": src}, (FOLLOWERS,), timestamp_column="impressed_at", default_ttl=TTL)


def test_the_entity_frame_needs_the_join_keys(spark):
    events = spark.createDataFrame([(1, ts(10))], "event_id INT, impressed_at TIMESTAMP")
    src = spark.createDataFrame([(1, ts(10), 10)], USERS_DDL)
    with pytest.raises(ValueError, match="feature view viewer: the entity frame lacks viewer_id"):
        point_in_time_join(events, feature_rows(src, FOLLOWERS), FOLLOWERS, timestamp_column="impressed_at", ttl=TTL)
