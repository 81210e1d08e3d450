"""The Explore candidates' exclusions and per-user cuts with real Spark."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs.explore_candidates import transform as T
from jobs.two_tower_embeddings.transform import active_users, batch_id

pytestmark = pytest.mark.integration


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 10, day, hour, tzinfo=UTC)


def test_own_posts_followed_authors_and_seen_posts_are_excluded(spark):
    neighbours = spark.createDataFrame(
        [
            (1, 100, 0.9),  # user 1's own post
            (1, 200, 0.8),  # by author 2, whom user 1 follows
            (1, 300, 0.7),  # by author 3, followed only after as_of: kept
            (1, 400, 0.6),  # seen yesterday
            (1, 500, 0.5),  # seen 40 days ago: beyond seen_days, kept
            (1, 600, 0.4),  # unknown post: dropped
            (2, 100, 0.3),  # user 1's post for user 2: kept
            (2, 400, 0.2),  # user 1 saw it, user 2 did not: kept
        ],
        "user_id BIGINT, post_id BIGINT, retrieval_score DOUBLE",
    )
    posts = spark.createDataFrame(
        [(100, 1), (200, 2), (300, 3), (400, 4), (500, 5)], "post_id BIGINT, author_id BIGINT"
    )
    follows = spark.createDataFrame(
        [(1, 2, t(1)), (1, 3, t(20, 1))], "follower_id BIGINT, followee_id BIGINT, created_at TIMESTAMP"
    )
    impressions = spark.createDataFrame(
        [(1, 400, t(19)), (1, 500, datetime(2026, 9, 10, tzinfo=UTC))],
        "viewer_id BIGINT, post_id BIGINT, ts TIMESTAMP",
    )
    got = T.exclude_known(neighbours, posts, follows, impressions, as_of=t(20), seen_days=28)
    want = spark.createDataFrame(
        [(1, 300, 3, 0.7), (1, 500, 5, 0.5), (2, 100, 1, 0.3), (2, 400, 4, 0.2)],
        "user_id BIGINT, post_id BIGINT, author_id BIGINT, retrieval_score DOUBLE",
    )
    assertDataFrameEqual(got, want)


def test_top_per_user_cuts_each_user_with_ties_broken_by_post_id(spark):
    rows = spark.createDataFrame(
        [(1, 10, 0.5), (1, 11, 0.9), (1, 12, 0.5), (1, 13, 0.1), (2, 20, 0.2)],
        "user_id BIGINT, post_id BIGINT, value_score DOUBLE",
    )
    got = T.top_per_user(rows, 3, F.col("value_score").desc())
    want = spark.createDataFrame(
        [(1, 11, 0.9, 1), (1, 10, 0.5, 2), (1, 12, 0.5, 3), (2, 20, 0.2, 1)],
        "user_id BIGINT, post_id BIGINT, value_score DOUBLE, rank INT",
    )
    assertDataFrameEqual(got, want)
    with pytest.raises(ValueError, match="k must be at least 1"):
        T.top_per_user(rows, 0, F.col("value_score").desc())


def test_active_users_read_the_feed_in_the_window_and_the_batch_id(spark):
    reads = spark.createDataFrame(
        [(1, t(19)), (1, t(19, 5)), (2, t(12, 23)), (3, t(20))], "user_id BIGINT, ts TIMESTAMP"
    )
    got = active_users(reads, as_of=t(20), days=7)
    assertDataFrameEqual(got, spark.createDataFrame([(1,)], "user_id BIGINT"))
    assert batch_id(datetime(2026, 11, 1, 13, 5, tzinfo=UTC)) == "20261101T1305Z"
