"""Pure steps of the feed precompute: who gets a timeline, its candidates, the pull side and the post metadata.

Time windows are open at both ends, ``as_of - window < t < as_of`` (``recent``): an event stamped exactly as_of
belongs to the next batch (the data interval [start, end) ends at as_of, as in the marts), one stamped exactly a
window before as_of has aged out. Follows count when made before as_of. A user is *active* when the account was
created before as_of and the fan-out policy does not list it in ``fanout.inactive_users``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from darkroom.tables import batch_id, utc  # noqa: F401  (batch_id re-exported: the batch of a run)
from jobs.fanout_threshold.transform import PULL, PUSH

# A policy name of fanout.policies -> its column of fanout.author_modes (or the mode every author has).
MODE_COLUMN = {"threshold": "threshold_mode", "per_author": "per_author_mode"}
CONSTANT_MODE = {"pure_push": PUSH, "pure_pull": PULL}
PUSH_KIND, PULL_SAMPLE_KIND = "push", "pull_sample"  # why a candidate was scored (scoring_candidates' ``kind``)


def recent(column: str, *, as_of: datetime, hours: float) -> Column:
    """``as_of - hours < column < as_of``."""
    as_of = utc(as_of)
    return (F.col(column) > F.lit(as_of - timedelta(hours=hours))) & (F.col(column) < F.lit(as_of))


def current_policy(policies: DataFrame, *, as_of: datetime) -> DataFrame:
    """The chosen policy of the latest ``fanout.policies`` version computed as of ``as_of`` or earlier:
    (policy_version, policy, threshold, computed_at), one row, or none when there is no such version."""
    return (
        policies.where(F.col("chosen") & (F.col("as_of") <= F.lit(utc(as_of))))
        .orderBy(F.col("as_of").desc(), F.col("version").desc())
        .limit(1)
        .select(
            F.col("version").alias("policy_version"),
            F.col("policy"),
            F.col("threshold").cast("bigint").alias("threshold"),
            F.col("computed_at"),
        )
    )


def author_modes(modes: DataFrame, *, policy: str) -> DataFrame:
    """(author_id, mode) under ``policy``: the policy's column of ``fanout.author_modes`` (one version's rows)."""
    if policy in CONSTANT_MODE:
        mode = F.lit(CONSTANT_MODE[policy])
    elif policy in MODE_COLUMN:
        mode = F.col(MODE_COLUMN[policy])
    else:
        raise ValueError(f"unknown fan-out policy {policy!r}; known: {', '.join([*MODE_COLUMN, *CONSTANT_MODE])}")
    return modes.select(F.col("author_id").cast("bigint").alias("author_id"), mode.alias("mode"))


def active_users(users: DataFrame, inactive: DataFrame, *, as_of: datetime) -> DataFrame:
    """user_id of the accounts created before ``as_of`` that ``inactive`` (the policy's inactive users) omits."""
    return (
        users.where(F.col("created_at") < F.lit(utc(as_of)))
        .select(F.col("user_id").cast("bigint").alias("user_id"))
        .join(inactive.select(F.col("user_id").cast("bigint").alias("user_id")), on="user_id", how="left_anti")
        .select("user_id")
    )


def follow_edges(follows: DataFrame, active: DataFrame, modes: DataFrame, *, as_of: datetime) -> DataFrame:
    """(user_id, author_id, mode): the follows active users made before ``as_of`` (never a self-follow), with the
    followee's mode; an author the policy has no row for (an account newer than the policy) is pushed."""
    return (
        follows.where((F.col("created_at") < F.lit(utc(as_of))) & (F.col("follower_id") != F.col("followee_id")))
        .select(F.col("follower_id").alias("user_id"), F.col("followee_id").alias("author_id"))
        .distinct()
        .join(active.select("user_id"), on="user_id", how="left_semi")
        .join(modes.select("author_id", "mode"), on="author_id", how="left")
        .select("user_id", "author_id", F.coalesce(F.col("mode"), F.lit(PUSH)).alias("mode"))
    )


def push_candidates(
    edges: DataFrame,
    posts: DataFrame,
    impressions: DataFrame,
    *,
    as_of: datetime,
    lookback_hours: float,
    exclude_seen: bool,
) -> DataFrame:
    """(user_id, post_id, author_id, created_at): posts of the user's followed push-mode authors created in the
    lookback window, never the user's own, without the posts the user hid before ``as_of`` and, with
    ``exclude_seen``, without any post the user was shown (impressed) before ``as_of``."""
    fresh = posts.where(recent("created_at", as_of=as_of, hours=lookback_hours)).select(
        "post_id", "author_id", "created_at"
    )
    shown = impressions.where(F.col("ts") < F.lit(utc(as_of)))
    if not exclude_seen:
        shown = shown.where(F.coalesce(F.col("hidden"), F.lit(False)))
    shown = shown.select(F.col("viewer_id").alias("user_id"), "post_id").distinct()
    return (
        edges.where(F.col("mode") == PUSH)
        .select("user_id", "author_id")
        .join(fresh, on="author_id", how="inner")
        .where(F.col("author_id") != F.col("user_id"))
        .join(shown, on=["user_id", "post_id"], how="left_anti")
        .select("user_id", "post_id", "author_id", "created_at")
    )


def pull_authors(edges: DataFrame) -> DataFrame:
    """(user_id, author_id): the pull-mode authors each active user follows (merged at read time)."""
    return edges.where(F.col("mode") == PULL).select("user_id", "author_id")


def celebrity_posts(
    posts: DataFrame, pulled: DataFrame, *, as_of: datetime, window_hours: float, cap: int
) -> DataFrame:
    """(author_id, post_id, created_at): the newest ``cap`` posts created in the window of each pull-mode author
    an active user follows (nobody else merges its list); ties by the larger post_id."""
    newest = Window.partitionBy("author_id").orderBy(F.col("created_at").desc(), F.col("post_id").desc())
    return (
        posts.where(recent("created_at", as_of=as_of, hours=window_hours))
        .select("author_id", "post_id", "created_at")
        .join(pulled.select("author_id").distinct(), on="author_id", how="left_semi")
        .withColumn("_n", F.row_number().over(newest))
        .where(F.col("_n") <= cap)
        .select("author_id", "post_id", "created_at")
    )


def score_sample(pulled: DataFrame, *, viewers: int) -> DataFrame:
    """(user_id, author_id): up to ``viewers`` active followers of each pull-mode author, a fixed sample (the
    smallest xxhash64 of the pair, then user_id), so a re-run scores the same viewers."""
    order = Window.partitionBy("author_id").orderBy(F.xxhash64("author_id", "user_id"), F.col("user_id"))
    return (
        pulled.select("user_id", "author_id")
        .withColumn("_n", F.row_number().over(order))
        .where(F.col("_n") <= viewers)
        .select("user_id", "author_id")
    )


def scoring_candidates(push: DataFrame, sample: DataFrame, celebrity: DataFrame) -> DataFrame:
    """(user_id, post_id, author_id, created_at, kind): the push candidates (kind ``push``) and every celebrity
    post for each of its author's sampled viewers (kind ``pull_sample``), scored in one pass."""
    pull = sample.join(celebrity, on="author_id", how="inner").select(
        "user_id", "post_id", "author_id", "created_at", F.lit(PULL_SAMPLE_KIND).alias("kind")
    )
    return (
        push.select("user_id", "post_id", "author_id", "created_at", F.lit(PUSH_KIND).alias("kind"))
        .unionByName(pull)
        .select("user_id", "post_id", "author_id", "created_at", "kind")
    )


def timelines(scored: DataFrame, *, cap: int) -> DataFrame:
    """(user_id, post_id, score, rank, author_id, created_at): each user's ``cap`` best push candidates by value
    score, rank 1 first; ties go to the newer post (created_at, then the larger post_id)."""
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    best = Window.partitionBy("user_id").orderBy(
        F.col("value_score").desc(), F.col("created_at").desc(), F.col("post_id").desc()
    )
    return (
        scored.where(F.col("kind") == PUSH_KIND)
        .withColumn("rank", F.row_number().over(best))
        .where(F.col("rank") <= cap)
        .select(
            "user_id",
            "post_id",
            F.col("value_score").cast("double").alias("score"),
            F.col("rank").cast("int").alias("rank"),
            "author_id",
            "created_at",
        )
    )


def base_scores(feed_scores: DataFrame, explore_scores: DataFrame) -> DataFrame:
    """(post_id, base_score): the median of a post's feed value scores (``value_score``) over the viewers it was
    scored for; a post scored only for Explore takes the median of its Explore scores (``score``)."""
    feed = feed_scores.groupBy("post_id").agg(F.median("value_score").alias("feed_score"))
    explore = explore_scores.groupBy("post_id").agg(F.median("score").alias("explore_score"))
    return feed.join(explore, on="post_id", how="full").select(
        "post_id", F.coalesce(F.col("feed_score"), F.col("explore_score")).cast("double").alias("base_score")
    )


def post_meta(
    referenced: DataFrame, posts: DataFrame, impressions: DataFrame, scores: DataFrame, *, as_of: datetime
) -> DataFrame:
    """(post_id, author_id, created_at, caption, media_count, like_count, comment_count, base_score) of every
    post in ``referenced`` (post_id, duplicates allowed): likes and comments are the impressions before ``as_of``
    that were liked / commented (as ``dim_post_features`` counts them), base_score from ``scores``."""
    counts = (
        impressions.where(F.col("ts") < F.lit(utc(as_of)))
        .groupBy("post_id")
        .agg(
            F.count_if(F.coalesce(F.col("liked"), F.lit(False))).alias("like_count"),
            F.count_if(F.coalesce(F.col("commented"), F.lit(False))).alias("comment_count"),
        )
    )
    return (
        referenced.select("post_id")
        .distinct()
        .join(posts.select("post_id", "author_id", "created_at", "caption", "media_count"), on="post_id", how="inner")
        .join(counts, on="post_id", how="left")
        .join(scores.select("post_id", "base_score"), on="post_id", how="left")
        .select(
            "post_id",
            "author_id",
            "created_at",
            "caption",
            "media_count",
            F.coalesce(F.col("like_count"), F.lit(0)).cast("bigint").alias("like_count"),
            F.coalesce(F.col("comment_count"), F.lit(0)).cast("bigint").alias("comment_count"),
            "base_score",
        )
    )
