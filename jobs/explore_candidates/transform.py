"""Pure steps of the Explore candidates: what a user must not be shown, and the per-user cuts.

A neighbour row is (user_id, post_id, retrieval_score) from the ANN index. ``exclude_known`` removes the user's own
posts, posts of authors the user follows (Explore is for discovery: the feed already carries them) and posts the user
was shown in the last ``seen_days``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

NEIGHBOUR_COLUMNS = ("user_id", "post_id", "retrieval_score")


def exclude_known(
    neighbours: DataFrame,
    posts: DataFrame,
    follows: DataFrame,
    impressions: DataFrame,
    *,
    as_of: datetime,
    seen_days: int,
) -> DataFrame:
    """``neighbours`` with author_id, without own posts, followed authors' posts (follows before ``as_of``) and posts
    impressed to the user in [as_of - seen_days, as_of). A post missing from ``posts`` is dropped."""
    followed = follows.where(F.col("created_at") < F.lit(as_of)).select(
        F.col("follower_id").alias("user_id"), F.col("followee_id").alias("author_id")
    )
    seen = (
        impressions.where((F.col("ts") >= F.lit(as_of - timedelta(days=seen_days))) & (F.col("ts") < F.lit(as_of)))
        .select(F.col("viewer_id").alias("user_id"), "post_id")
        .distinct()
    )
    return (
        neighbours.select(*NEIGHBOUR_COLUMNS)
        .join(posts.select("post_id", "author_id"), on="post_id", how="inner")
        .where(F.col("author_id") != F.col("user_id"))
        .join(followed, on=["user_id", "author_id"], how="left_anti")
        .join(seen, on=["user_id", "post_id"], how="left_anti")
        .select("user_id", "post_id", "author_id", "retrieval_score")
    )


def top_per_user(df: DataFrame, k: int, *order) -> DataFrame:
    """The first ``k`` rows of each user by ``order`` (then post_id, for a deterministic cut), with ``rank`` 1..k."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    w = Window.partitionBy("user_id").orderBy(*order, F.col("post_id"))
    return df.withColumn("rank", F.row_number().over(w)).where(F.col("rank") <= k)
