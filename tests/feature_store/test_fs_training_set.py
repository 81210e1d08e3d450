"""Training sets from the hand-made lake of conftest.py with real Spark and Delta: the features of each impression
worked out by hand, the window and re-run semantics of the Delta table, its Parquet files, and refusals that name
the source table and column."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from darkroom.tables import table
from feature_store.definitions import RANKER_V1, FeatureService
from feature_store.offline import build_training_set, get_historical_features, training_set_files
from feature_store.sources import FeatureSourceError
from tests.feature_store.conftest import ts

pytestmark = pytest.mark.integration

TRAINING_SET = table("features.training_set_ranker_v1")


def read_training_set(spark, settings, version=None):
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(TRAINING_SET.uri(settings))


@pytest.fixture(scope="module")
def three_days(spark, feature_lake):
    """The training set of 10-10 .. 10-12 (all five impressions), built once for the module."""
    return build_training_set(spark, feature_lake.settings, RANKER_V1, ts(10), ts(13))


def test_one_impression_gets_every_feature_as_of_its_time(spark, feature_lake, three_days):
    """Viewer 1 sees post 100 (author 2) at 10-11 12:00: every value below is read off conftest.py's rows."""
    info = three_days
    assert (info.service, info.service_version, info.table) == ("ranker_v1", 1, "features.training_set_ranker_v1")
    assert (info.start, info.end, info.rows) == (ts(10), ts(13), 5)
    got = read_training_set(spark, feature_lake.settings, info.version)
    [row] = got.where(f"viewer_id = 1 AND post_id = 100 AND impressed_at = '{ts(11, 12).isoformat()}'").collect()
    assert row.asDict() == {
        "viewer_id": 1,
        "post_id": 100,
        "author_id": 2,
        "impressed_at": ts(11, 12).replace(tzinfo=None),
        "impression_date": date(2026, 10, 11),
        "surface": "feed",
        "position": 2,
        # user 1's row of 10-10 (known 10-11 00:00)
        "viewer__account_age_days": 101.0,
        "viewer__followers": 11,
        "viewer__followees": 4,
        "viewer__feed_reads_7d": 5,
        "viewer__impressions_7d": 8,
        "viewer__likes_7d": 3,
        "viewer__like_rate_7d": 0.375,
        # user 2's row of 10-10
        "author__account_age_days": 51.0,
        "author__followers": 205,
        "author__followees": 1,
        "author__posts_7d": 3,
        # post 100's row of 10-10 (its row of 10-11 is known at 10-12 00:00)
        "post__age_hours": 16.0,
        "post__media_count": 2,
        "post__caption_length": 26,
        "post__hashtag_count": 2,
        "post__impressions": 4,
        "post__likes": 1,
        "post__comments": 0,
        "post__saves": 0,
        "post__shares": 0,
        "post__hides": 1,
        "post__like_rate": 0.25,
        "post__author_followers": 205,
        # pair (1, 2)'s row of 10-09, known 10-10 00:00: 36 h before
        "viewer_author__decayed_likes": 2.0,
        "viewer_author__decayed_comments": 1.0,
        "viewer_author__decayed_dms": 0.0,
        "viewer_author__decayed_profile_visits": 0.0,
        "viewer_author__affinity_score": 4.0,
        "viewer_author__feature_age_hours": 36.0,
        "post_hashtags__hashtags": ["#beach", "#sun"],
        "label_like": 0,
        "label_comment": 1,
        "label_save": 0,
        "label_share": 0,
        "label_follow": 0,
        "label_hide": 0,
        "label_dwell": 1,
    }


def test_ties_missing_rows_and_a_post_seen_on_its_first_day(spark, feature_lake, three_days):
    cols = [
        "viewer_id",
        "post_id",
        "impressed_at",
        "viewer__followers",
        "post__impressions",
        "viewer_author__affinity_score",
        "post_hashtags__hashtags",
    ]
    got = read_training_set(spark, feature_lake.settings, three_days.version).select(*cols)
    want = spark.createDataFrame(
        [
            # Post 100 on its creation day: its first row (known 10-11 00:00) counts this very impression, so the
            # post's engagement is null; its hashtags are known from its creation (08:00).
            (1, 100, ts(10, 12), 10, None, 4.0, ["#beach", "#sun"]),
            (1, 100, ts(11, 12), 11, 4, 4.0, ["#beach", "#sun"]),
            # user 2's row of 10-10 is known at 10-11 00:00, the impression's very instant: it is used; post 101
            # has no engagement rows; pair (2, 3) none either
            (2, 101, ts(11), 205, None, None, []),
            # user 3 has no rows
            (3, 100, ts(11, 23, 59, 59), None, 4, None, ["#beach", "#sun"]),
            # pair (1, 3)'s only row is 10 days old at 10-12 01:00 (TTL 30 days); the viewer's row of 10-11 is
            # known at 10-12 00:00
            (1, 101, ts(12, 1), 12, None, 1.0, []),
        ],
        "viewer_id BIGINT, post_id BIGINT, impressed_at TIMESTAMP, viewer__followers BIGINT, "
        "post__impressions BIGINT, viewer_author__affinity_score DOUBLE, post_hashtags__hashtags ARRAY<STRING>",
    )
    assertDataFrameEqual(got, want)


def test_a_rerun_replaces_its_window_only_and_files_give_the_version(spark, feature_lake, three_days):
    s = feature_lake.settings
    before = read_training_set(spark, s, three_days.version)
    again = build_training_set(spark, s, RANKER_V1, ts(11), ts(12))
    assert again.version > three_days.version
    assert again.rows == 3  # 10-11 00:00, 12:00 and 23:59:59; not 10-10 12:00 nor 10-12 01:00
    assertDataFrameEqual(read_training_set(spark, s, again.version), before)
    last = DeltaTable.forPath(spark, TRAINING_SET.uri(s)).history(1).collect()[0]
    assert (last["version"], last["operation"], last["operationParameters"]["mode"]) == (
        again.version,
        "WRITE",
        "Overwrite",
    )
    assert "impressed_at < TIMESTAMP'2026-10-12 00:00:00.000000+00:00'" in last["operationParameters"]["predicate"]

    # A version's files, all of them or a window's partitions, readable by pyarrow.
    files = training_set_files(s, RANKER_V1, again.version)
    assert all(f.endswith(".parquet") for f in files)
    assert sum(pq.read_metadata(f).num_rows for f in files) == 5
    one_day = again.files()
    assert one_day == training_set_files(s, RANKER_V1, again.version, ts(11), ts(12))
    assert all("impression_date=2026-10-11" in f for f in one_day)
    assert sum(pq.read_metadata(f).num_rows for f in one_day) == 3
    assert "label_dwell" in pq.read_schema(one_day[0]).names
    # The version before the re-run keeps its own files for that day (time travel: the ranker reads the version it
    # was given, whatever ran since).
    old_day = training_set_files(s, RANKER_V1, three_days.version, ts(11), ts(12))
    assert set(old_day).isdisjoint(one_day)
    assert sum(pq.read_metadata(f).num_rows for f in old_day) == 3
    # An hour's window (the hourly fine-tune's) rewrites its day's files: only the window's own rows are counted.
    hour = build_training_set(spark, s, RANKER_V1, ts(11, 12), ts(11, 13))
    assert hour.rows == 1  # 10-11 12:00; the day's 00:00 and 23:59:59 are copied, not counted
    assertDataFrameEqual(read_training_set(spark, s, hour.version), before)


def test_a_missing_source_table_is_named(spark, feature_lake):
    ring = replace(RANKER_V1.view("viewer"), name="ring", source="marts.fct_story_ring_signals")
    events = spark.createDataFrame([(1, ts(11))], "viewer_id BIGINT, impressed_at TIMESTAMP")
    with pytest.raises(FeatureSourceError, match="source table marts.fct_story_ring_signals does not exist"):
        get_historical_features(spark, feature_lake.settings, events, FeatureService("t", 1, (ring,)))


def test_a_source_without_a_feature_column_is_refused_naming_table_and_column(spark, feature_lake):
    view = replace(RANKER_V1.view("viewer"), features=(("followers", "bigint"), ("reels_7d", "bigint")))
    events = spark.createDataFrame([(1, ts(11))], "viewer_id BIGINT, impressed_at TIMESTAMP")
    with pytest.raises(
        FeatureSourceError, match="feature view viewer: source table marts.dim_user_features has no column 'reels_7d'"
    ):
        get_historical_features(spark, feature_lake.settings, events, FeatureService("t", 1, (view,)))
    broken = replace(RANKER_V1.view("post_hashtags"), expressions=(("hashtags", "split(title, ' ')"),))
    with pytest.raises(FeatureSourceError, match="feature 'hashtags' = split.* source table bronze.posts.*title"):
        get_historical_features(
            spark, feature_lake.settings, events.withColumn("post_id", F.lit(100)), FeatureService("t", 1, (broken,))
        )


def test_a_window_must_not_be_empty(spark, feature_lake):
    with pytest.raises(ValueError, match="is not before end"):
        build_training_set(spark, feature_lake.settings, RANKER_V1, ts(12), ts(12))
