"""The story ring's score on a hand-computed tray (real Spark): unseen rings first, then by engagement, and the
expiry 24 hours after the newest live story."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyspark.testing import assertDataFrameEqual

from darkroom.settings import StoryRingWeights
from jobs.story_rings.transform import ring_scores

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 10, 10, 12, tzinfo=UTC)
H = timedelta(hours=1)
SIGNALS = (
    "viewer_id BIGINT, author_id BIGINT, live_stories BIGINT, unseen_stories BIGINT, latest_story_at TIMESTAMP, "
    "has_unseen BOOLEAN, dms_7d BIGINT, profile_visits_7d BIGINT, likes_comments_7d BIGINT, story_views_7d BIGINT, "
    "affinity_score DOUBLE"
)


def test_unseen_rings_come_first_then_engagement(spark):
    signals = spark.createDataFrame(
        [
            # viewer 1's tray: author 2 seen but close (e = 3*1 + 1*0 + 1*2 + 1*0 + 1*1.0 = 6 -> 6/7)
            (1, 2, 2, 0, AS_OF - 2 * H, False, 1, 0, 2, 0, 1.0),
            # author 3 unseen, no engagement at all (e = 0 -> 1 + 0)
            (1, 3, 1, 1, AS_OF - 5 * H, True, 0, 0, 0, 0, 0.0),
            # author 4: one of two live stories unseen (the mart's has_unseen), e = 1*1 + 1*1 + 1.0 = 3 -> 1 + 3/4
            (1, 4, 2, 1, AS_OF - 23 * H, True, 0, 1, 0, 1, 1.0),
            # author 5 seen, no engagement -> 0
            (1, 5, 1, 0, AS_OF - H, False, 0, 0, 0, 0, 0.0),
            # another viewer of author 2, weights other than the default apply per column
            (6, 2, 2, 2, AS_OF - 2 * H, True, 0, 0, 0, 0, 0.5),
        ],
        SIGNALS,
    )
    got = ring_scores(signals, weights=StoryRingWeights())
    want = spark.createDataFrame(
        [
            (1, 2, 6 / 7, False, AS_OF + 22 * H),
            (1, 3, 1.0, True, AS_OF + 19 * H),
            (1, 4, 1.75, True, AS_OF + H),
            (1, 5, 0.0, False, AS_OF + 23 * H),
            (6, 2, 1 + 0.5 / 1.5, True, AS_OF + 22 * H),
        ],
        "viewer_id BIGINT, author_id BIGINT, score DOUBLE, unseen BOOLEAN, expires_at TIMESTAMP",
    )
    assertDataFrameEqual(got, want)
    order = [r["author_id"] for r in got.where("viewer_id = 1").orderBy(got["score"].desc()).collect()]
    assert order == [4, 3, 2, 5]  # both unseen rings before both seen ones, each pair by engagement


def test_weights_change_the_engagement_order_never_the_unseen_first_rule(spark):
    signals = spark.createDataFrame(
        [
            (1, 2, 1, 0, AS_OF - H, False, 1000, 1000, 1000, 1000, 1e6),  # huge engagement, seen
            (1, 3, 1, 1, AS_OF - H, True, 0, 0, 0, 0, 0.0),  # unseen, none
            (1, 4, 1, 1, AS_OF - H, True, 1, 0, 0, 0, 0.0),  # unseen, one DM
            (1, 5, 1, 1, AS_OF - H, True, 0, 0, 3, 0, 0.0),  # unseen, three likes
        ],
        SIGNALS,
    )
    dm_heavy = ring_scores(signals, weights=StoryRingWeights(dms=10.0, likes_comments=1.0)).orderBy("score")
    assert [r["author_id"] for r in dm_heavy.collect()] == [2, 3, 5, 4]
    like_heavy = ring_scores(signals, weights=StoryRingWeights(dms=1.0, likes_comments=10.0)).orderBy("score")
    assert [r["author_id"] for r in like_heavy.collect()] == [2, 3, 4, 5]
