"""Pure step of the story rings: ``marts.fct_story_ring_signals`` (one row per viewer and followed author with a
live story at as_of) -> the ring's score, unseen flag and expiry.

score = (1 if the viewer has an unseen live story of the author else 0) + e / (1 + e), with the engagement
e = dms x dms_7d + profile_visits x profile_visits_7d + likes_comments x likes_comments_7d
    + story_views x story_views_7d + affinity x affinity_score  (non-negative weights, ``precompute.ring_weights``).
e / (1 + e) lies in [0, 1) and grows with e, so sorting by score descending puts every unseen ring before every
seen one and orders each group by engagement. A ring expires 24 hours after its author's newest live story.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from darkroom.settings import StoryRingWeights

STORY_HOURS = 24  # the seed's story lifetime (the mart's live window is the same 24 hours)
ENGAGEMENT_COLUMNS = {
    "dms": "dms_7d",
    "profile_visits": "profile_visits_7d",
    "likes_comments": "likes_comments_7d",
    "story_views": "story_views_7d",
    "affinity": "affinity_score",
}


def ring_scores(signals: DataFrame, *, weights: StoryRingWeights) -> DataFrame:
    """(viewer_id, author_id, score, unseen, expires_at) for every row of ``signals``; ``unseen`` is the mart's
    ``has_unseen`` (at least one live story of the author the viewer has not viewed before as_of)."""
    w = weights.model_dump()
    engagement = sum(
        (F.lit(float(w[k])) * F.coalesce(F.col(c).cast("double"), F.lit(0.0)) for k, c in ENGAGEMENT_COLUMNS.items()),
        F.lit(0.0),
    )
    return signals.select(
        F.col("viewer_id").cast("bigint").alias("viewer_id"),
        F.col("author_id").cast("bigint").alias("author_id"),
        F.col("has_unseen").alias("unseen"),
        engagement.alias("_engagement"),
        F.col("latest_story_at"),
    ).select(
        "viewer_id",
        "author_id",
        (F.col("unseen").cast("double") + F.col("_engagement") / (F.lit(1.0) + F.col("_engagement"))).alias("score"),
        "unseen",
        (F.col("latest_story_at") + F.expr(f"INTERVAL {STORY_HOURS} HOURS")).alias("expires_at"),
    )
