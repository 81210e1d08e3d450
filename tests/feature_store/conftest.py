"""A tiny hand-made lake for the feature store: the four marts and bronze posts, a few rows each, in a state folder
of its own. Every value is written out here, so the tests' expectations can be worked out by hand from this file.

Users 1, 2, 3 (3 has no rows); posts 100 (author 2, created 2026-10-10 08:00) and 101 (author 3, 2026-10-01).
Snapshot rows are daily: the row of day d is known at d + 1 00:00 (its feature_ts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest

from darkroom.settings import DarkroomSettings, load_settings
from darkroom.tables import table


def ts(day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    """An instant of October 2026, UTC."""
    return datetime(2026, 10, day, hour, minute, second, micro, tzinfo=UTC)


def known_at(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


USERS_DDL = (
    "user_id BIGINT, feature_date DATE, feature_ts TIMESTAMP, region STRING, is_private BOOLEAN, "
    "account_age_days DOUBLE, followers BIGINT, followees BIGINT, posts_7d BIGINT, feed_reads_7d BIGINT, "
    "impressions_7d BIGINT, likes_7d BIGINT, like_rate_7d DOUBLE"
)
# (user, day, account_age_days, followers, followees, posts_7d, feed_reads_7d, impressions_7d, likes_7d, like_rate_7d)
USER_DAYS = [
    (1, 9, 100.0, 10, 4, 0, 3, 4, 1, 0.25),
    (1, 10, 101.0, 11, 4, 0, 5, 8, 3, 0.375),
    (1, 11, 102.0, 12, 5, 1, 6, 10, 3, 0.3),
    (2, 9, 50.0, 200, 1, 2, 1, 0, 0, 0.0),
    (2, 10, 51.0, 205, 1, 3, 1, 0, 0, 0.0),
]

POSTS_DDL = (
    "post_id BIGINT, feature_date DATE, feature_ts TIMESTAMP, author_id BIGINT, age_hours DOUBLE, media_count INT, "
    "caption_length INT, hashtag_count INT, impressions BIGINT, likes BIGINT, comments BIGINT, saves BIGINT, "
    "shares BIGINT, hides BIGINT, like_rate DOUBLE, author_followers BIGINT"
)
# (post, day, author, age_hours, media, caption_length, hashtags, impressions, likes, comments, saves, shares, hides,
#  like_rate, author_followers)
POST_DAYS = [
    (100, 10, 2, 16.0, 2, 26, 2, 4, 1, 0, 0, 0, 1, 0.25, 205),
    (100, 11, 2, 40.0, 2, 26, 2, 10, 5, 1, 1, 0, 1, 0.5, 205),
]

AFFINITY_DDL = (
    "viewer_id BIGINT, author_id BIGINT, affinity_date DATE, feature_ts TIMESTAMP, likes BIGINT, comments BIGINT, "
    "dms BIGINT, profile_visits BIGINT, decayed_likes DOUBLE, decayed_comments DOUBLE, decayed_dms DOUBLE, "
    "decayed_profile_visits DOUBLE, affinity_score DOUBLE"
)
# (viewer, author, day, likes, comments, dms, visits, decayed likes, comments, dms, visits, score)
AFFINITY_DAYS = [
    (1, 2, 9, 2, 1, 0, 0, 2.0, 1.0, 0.0, 0.0, 4.0),
    (1, 3, 1, 1, 0, 0, 0, 1.0, 0.0, 0.0, 0.0, 1.0),
]

BRONZE_POSTS_DDL = "post_id BIGINT, author_id BIGINT, created_at TIMESTAMP, caption STRING, media_count INT"
BRONZE_POSTS = [
    (100, 2, ts(10, 8), "sunny #beach day  #sun # #", 2),
    (101, 3, ts(1, 9), None, 1),
]

LABELS_DDL = (
    "viewer_id BIGINT, post_id BIGINT, author_id BIGINT, impressed_at TIMESTAMP, impression_date DATE, "
    "surface STRING, position INT, dwell_ms INT, label_like INT, label_comment INT, label_save INT, label_share INT, "
    "label_follow INT, label_hide INT, label_dwell INT"
)
# Impressions: (viewer, post, author, impressed_at, surface, position, dwell_ms, like, comment, save, share, follow,
# hide, dwell)
IMPRESSIONS = [
    (1, 100, 2, ts(10, 12), "feed", 0, 3000, 1, 0, 0, 0, 0, 0, 0),
    (1, 100, 2, ts(11, 12), "feed", 2, 12000, 0, 1, 0, 0, 0, 0, 1),
    (2, 101, 3, ts(11, 0), "explore", 5, 500, 0, 0, 0, 0, 0, 1, 0),
    (3, 100, 2, ts(11, 23, 59, 59), "feed", 1, 0, 0, 0, 0, 0, 1, 0, 0),
    (1, 101, 3, ts(12, 1), "feed", 0, 100, 0, 0, 0, 0, 0, 0, 0),
]


@dataclass
class FeatureLake:
    settings: DarkroomSettings

    def write(self, spark, qualified_name: str, rows: list[tuple], ddl: str) -> None:
        spark.createDataFrame(rows, ddl).write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(
            table(qualified_name).uri(self.settings)
        )


def user_rows() -> list[tuple]:
    out = []
    for uid, day, age, *values in USER_DAYS:
        d = date(2026, 10, day)
        out.append((uid, d, known_at(d), "eu", False, age, *values))
    return out


def post_rows() -> list[tuple]:
    return [(pid, date(2026, 10, day), known_at(date(2026, 10, day)), *rest) for pid, day, *rest in POST_DAYS]


def affinity_rows() -> list[tuple]:
    out = []
    for viewer, author, day, *values in AFFINITY_DAYS:
        d = date(2026, 10, day)
        out.append((viewer, author, d, known_at(d), *values))
    return out


def label_rows() -> list[tuple]:
    return [(v, p, a, when, when.date(), *rest) for v, p, a, when, *rest in IMPRESSIONS]


@pytest.fixture(scope="session")
def fs_settings(settings, tmp_path_factory) -> DarkroomSettings:
    return load_settings(
        state_dir=tmp_path_factory.mktemp("feature-store-state"),
        jars_path=settings.jars_dir,
        spark=settings.spark.model_dump(),
        world=settings.world.model_dump(),
    )


@pytest.fixture(scope="session")
def feature_lake(spark, fs_settings) -> FeatureLake:
    lake = FeatureLake(fs_settings)
    lake.write(spark, "marts.dim_user_features", user_rows(), USERS_DDL)
    lake.write(spark, "marts.dim_post_features", post_rows(), POSTS_DDL)
    lake.write(spark, "marts.fct_viewer_author_affinity", affinity_rows(), AFFINITY_DDL)
    lake.write(spark, "marts.fct_engagement_labels", label_rows(), LABELS_DDL)
    lake.write(spark, "bronze.posts", BRONZE_POSTS, BRONZE_POSTS_DDL)
    return lake
