"""The two-tower training examples with real Spark: which impressions are positives, and the strict, bounded,
ordered engagement history before each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyspark.testing import assertDataFrameEqual

from jobs.two_tower_examples import transform as T

pytestmark = pytest.mark.integration

LABELS = (
    "viewer_id BIGINT, post_id BIGINT, author_id BIGINT, impressed_at TIMESTAMP, impression_date DATE, "
    "label_like INT, label_comment INT, label_save INT, label_share INT, label_dwell INT"
)


def t(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 10, day, hour, minute, tzinfo=UTC)


def row(viewer, post, when, *, like=0, comment=0, save=0, share=0, dwell=0, author=None):
    return (viewer, post, author or post * 10, when, when.date(), like, comment, save, share, dwell)


def test_positives_are_explicit_engagements_in_the_window_once_each(spark):
    labels = spark.createDataFrame(
        [
            row(1, 100, t(10, 9), like=1, save=1),  # two labels, one positive
            row(1, 101, t(10, 9), dwell=1),  # a long dwell alone is not a positive
            row(1, 102, t(10, 9)),  # shown, nothing done
            row(2, 100, t(10, 23, 59), share=1),
            row(2, 103, t(11), comment=1),  # the window's end: outside
            row(2, 104, t(9, 23, 59), like=1),  # before the window
        ],
        LABELS,
    )
    got = T.engagements(labels, start=t(10), end=t(11))
    want = spark.createDataFrame(
        [(1, 100, 1000, t(10, 9)), (2, 100, 1000, t(10, 23, 59))],
        "user_id BIGINT, post_id BIGINT, author_id BIGINT, engaged_at TIMESTAMP",
    )
    assertDataFrameEqual(got, want)


def test_history_is_strictly_earlier_bounded_ordered_and_never_the_own_post(spark):
    engaged = spark.createDataFrame(
        [
            (1, 50, 500, t(1)),  # older than the 7-day lookback of every window row: never history
            (1, 60, 600, t(8, 12)),  # before the window: history only
            (1, 61, 610, t(9, 8)),
            (1, 62, 620, t(9, 8)),  # same instant as 61: ordered by post id
            (1, 70, 700, t(10, 9)),  # in the window
            (1, 71, 710, t(10, 9)),  # same read as 70: not each other's history
            (1, 61, 610, t(10, 18)),  # 61 again: its own earlier engagement is left out
            (2, 80, 800, t(10, 1)),  # another user: an empty history
        ],
        "user_id BIGINT, post_id BIGINT, author_id BIGINT, engaged_at TIMESTAMP",
    )
    got = T.with_history(engaged, start=t(10), end=t(11), history_len=3, lookback=timedelta(days=7))
    want = spark.createDataFrame(
        [
            (1, 70, 700, t(10, 9), [60, 61, 62]),
            (1, 71, 710, t(10, 9), [60, 61, 62]),
            # the last three of 60, 61, 62, 70, 71 other than 61 itself: 62, 70, 71
            (1, 61, 610, t(10, 18), [62, 70, 71]),
            (2, 80, 800, t(10, 1), []),
        ],
        "user_id BIGINT, post_id BIGINT, author_id BIGINT, engaged_at TIMESTAMP, history_post_ids ARRAY<BIGINT>",
    )
    assertDataFrameEqual(got, want)
    assert tuple(got.columns) == T.EXAMPLE_COLUMNS


def test_history_settings_are_checked(spark):
    engaged = spark.createDataFrame([], "user_id BIGINT, post_id BIGINT, author_id BIGINT, engaged_at TIMESTAMP")
    with pytest.raises(ValueError, match="history_len must be at least 1, got 0"):
        T.with_history(engaged, start=t(10), end=t(11), history_len=0, lookback=timedelta(days=1))
    with pytest.raises(ValueError, match="lookback must be positive"):
        T.with_history(engaged, start=t(10), end=t(11), history_len=5, lookback=timedelta(0))


ENGAGED = "user_id BIGINT, post_id BIGINT, author_id BIGINT, engaged_at TIMESTAMP"


def test_history_as_of_is_the_latest_engagements_before_the_instant_oldest_first(spark):
    engaged = spark.createDataFrame(
        [
            (1, 50, 500, t(1)),  # outside the 7-day lookback
            (1, 60, 600, t(8, 12)),
            (1, 62, 620, t(9, 8)),
            (1, 61, 610, t(9, 8)),  # same instant as 62: by post id
            (1, 70, 700, t(10, 9)),
            (1, 71, 710, t(11)),  # at the instant: not yet history
            (2, 80, 800, t(11, 1)),  # only after: user 2 has no history
        ],
        ENGAGED,
    )
    got = T.history_as_of(engaged, as_of=t(11), history_len=3, lookback=timedelta(days=7))
    want = spark.createDataFrame([(1, [61, 62, 70])], "user_id BIGINT, history_post_ids ARRAY<BIGINT>")
    assertDataFrameEqual(got, want)
    with pytest.raises(ValueError, match="history_len must be at least 1"):
        T.history_as_of(engaged, as_of=t(11), history_len=0, lookback=timedelta(days=7))


def test_holdout_truth_excludes_own_posts_and_the_history(spark):
    engaged = spark.createDataFrame([(1, 70, 700, t(10, 9)), (1, 71, 710, t(10, 10)), (2, 70, 700, t(10, 11))], ENGAGED)
    history = spark.createDataFrame([(1, [60, 61]), (2, [])], "user_id BIGINT, history_post_ids ARRAY<BIGINT>")
    posts = spark.createDataFrame([(90, 1), (91, 1), (70, 7), (71, 7)], "post_id BIGINT, author_id BIGINT")
    got = T.holdout_truth(engaged, history, posts)
    want = spark.createDataFrame(
        [(1, [70, 71], [60, 61, 90, 91]), (2, [70], [])],
        "user_id BIGINT, relevant ARRAY<BIGINT>, exclude ARRAY<BIGINT>",
    )
    assertDataFrameEqual(got, want)


def test_live_posts_are_those_created_in_the_window(spark):
    posts = spark.createDataFrame(
        [(1, 5, t(1)), (2, 5, t(2)), (3, 6, t(9, 23)), (4, 6, t(10))],
        "post_id BIGINT, author_id BIGINT, created_at TIMESTAMP",
    )
    got = T.live_posts(posts, since=t(2), until=t(10))
    assertDataFrameEqual(got, spark.createDataFrame([(2, 5), (3, 6)], "post_id BIGINT, author_id BIGINT"))
