"""The two-tower model's training examples: explicit engagements with the user's engagement history before each.

Pure transforms over ``marts.fct_engagement_labels`` (no session, paths or Delta here). A positive is an impression
the viewer liked, commented on, saved or shared (``ENGAGEMENT_LABELS``); a long dwell alone is not one. Each
positive in the run's window carries ``history_post_ids``: the user's last ``history_len`` engaged posts strictly
before it (oldest first), from up to ``lookback`` before the window's start, never the row's own post. Impressions of
one feed read share their timestamp, so "before" is strict: two posts engaged in the same read are not each other's
history (at serving time neither is known when the read starts).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

ENGAGEMENT_LABELS: tuple[str, ...] = ("label_like", "label_comment", "label_save", "label_share")
EXAMPLE_COLUMNS: tuple[str, ...] = ("user_id", "post_id", "author_id", "engaged_at", "history_post_ids")


def _micros(c: Column) -> Column:
    return F.unix_micros(c)


def engagements(labels: DataFrame, *, start: datetime, end: datetime) -> DataFrame:
    """The explicit engagements with ``start <= impressed_at < end``: user_id, post_id, author_id, engaged_at.

    One row per (user, post, instant): the mart has one row per impression, and a post engaged in several ways at
    one impression is one positive."""
    engaged = F.lit(False)
    for label in ENGAGEMENT_LABELS:
        engaged = engaged | (F.col(label) == 1)
    return (
        labels.where(
            (F.col("impression_date") >= F.lit(start.date()))
            & (F.col("impression_date") <= F.lit((end - timedelta(microseconds=1)).date()))
            & (F.col("impressed_at") >= F.lit(start))
            & (F.col("impressed_at") < F.lit(end))
            & engaged
        )
        .select(
            F.col("viewer_id").alias("user_id"),
            "post_id",
            "author_id",
            F.col("impressed_at").alias("engaged_at"),
        )
        .dropDuplicates(["user_id", "post_id", "engaged_at"])
    )


def with_history(
    engaged: DataFrame, *, start: datetime, end: datetime, history_len: int, lookback: timedelta
) -> DataFrame:
    """The engagements of [start, end) with ``history_post_ids`` (EXAMPLE_COLUMNS).

    ``engaged`` must cover [start - lookback, end) (``engagements`` of that range): the earlier rows are history
    only. The history is the user's engaged posts with ``engaged_at`` in [own engaged_at - lookback, own engaged_at),
    the latest ``history_len`` of them, oldest first (ties by post id), the row's own post left out.
    """
    if history_len < 1:
        raise ValueError(f"history_len must be at least 1, got {history_len}")
    lookback_us = int(lookback.total_seconds() * 1_000_000)
    if lookback_us < 1:
        raise ValueError(f"lookback must be positive, got {lookback}")
    earlier = Window.partitionBy("user_id").orderBy(_micros(F.col("engaged_at"))).rangeBetween(-lookback_us, -1)
    past = F.collect_list(F.struct(_micros(F.col("engaged_at")).alias("t"), F.col("post_id").alias("p"))).over(earlier)
    ordered = F.array_sort(past)  # by (t, p): oldest first
    others = F.filter(ordered, lambda s: s["p"] != F.col("post_id"))
    latest = F.slice(others, F.greatest(F.size(others) - history_len + 1, F.lit(1)), history_len)
    return (
        engaged.select("user_id", "post_id", "author_id", "engaged_at", latest.alias("_latest"))
        .where((F.col("engaged_at") >= F.lit(start)) & (F.col("engaged_at") < F.lit(end)))
        .select(
            "user_id",
            "post_id",
            "author_id",
            "engaged_at",
            F.transform("_latest", lambda s: s["p"]).alias("history_post_ids"),
        )
    )


def history_as_of(engaged: DataFrame, *, as_of: datetime, history_len: int, lookback: timedelta) -> DataFrame:
    """Each user's engagement history as the user tower sees it at ``as_of``: user_id, history_post_ids.

    The latest ``history_len`` engaged posts with ``engaged_at`` in [as_of - lookback, as_of), oldest first (ties
    by post id), the same order ``with_history`` gives a training row. Users without one are absent."""
    if history_len < 1:
        raise ValueError(f"history_len must be at least 1, got {history_len}")
    recent = engaged.where((F.col("engaged_at") >= F.lit(as_of - lookback)) & (F.col("engaged_at") < F.lit(as_of)))
    ordered = F.array_sort(
        F.collect_list(F.struct(_micros(F.col("engaged_at")).alias("t"), F.col("post_id").alias("p")))
    )
    latest = F.slice(ordered, F.greatest(F.size(ordered) - history_len + 1, F.lit(1)), history_len)
    return recent.groupBy("user_id").agg(F.transform(latest, lambda s: s["p"]).alias("history_post_ids"))


def live_posts(posts: DataFrame, *, since: datetime, until: datetime) -> DataFrame:
    """The posts an index built at ``until`` holds: created in [since, until); post_id, author_id."""
    return posts.where((F.col("created_at") >= F.lit(since)) & (F.col("created_at") < F.lit(until))).select(
        "post_id", "author_id"
    )


def holdout_truth(engaged: DataFrame, history: DataFrame, posts: DataFrame) -> DataFrame:
    """Per holdout user: ``relevant`` (posts engaged in the holdout) and ``exclude`` (their own posts and the posts
    already in their history: retrieval is not asked to find what the user engaged with before)."""
    relevant = engaged.groupBy("user_id").agg(F.array_sort(F.collect_set("post_id")).alias("relevant"))
    own = posts.groupBy(F.col("author_id").alias("user_id")).agg(F.collect_set("post_id").alias("_own"))
    return (
        relevant.join(history, on="user_id", how="left")
        .join(own, on="user_id", how="left")
        .select(
            "user_id",
            "relevant",
            F.array_sort(
                F.array_union(
                    F.coalesce(F.col("_own"), F.array().cast("array<bigint>")),
                    F.coalesce(F.col("history_post_ids"), F.array().cast("array<bigint>")),
                )
            ).alias("exclude"),
        )
    )
