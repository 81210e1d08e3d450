"""``feed_precompute``: the feed's serving tables for one batch (the run's data-interval end ``as_of``).

    python -m jobs.feed_precompute.main --as-of 2026-11-01T00:00:00

The fan-out policy is the latest ``fanout.policies`` version computed as of ``as_of`` or earlier (its chosen
policy, with that version's ``fanout.author_modes`` and ``fanout.inactive_users``); none is an error naming the
table. Then, for the active users (accounts created before as_of, not inactive under the policy):

- ``serving.feed_timelines``: the push candidates (posts of followed push-mode authors younger than
  ``precompute.timeline_lookback_hours``, never the user's own, minus hidden and, with ``precompute.exclude_seen``,
  already impressed posts) scored by ``ranker@champion`` (feed surface, features as of as_of), the
  ``fanout.timeline_cap`` best per user by value score;
- ``serving.pull_authors``: each user's followed pull-mode authors;
- ``serving.celebrity_posts``: the posts of those pull-mode authors younger than ``precompute.celebrity_window_hours``
  (the newest ``precompute.celebrity_posts_cap`` each);
- ``serving.post_meta``: every post the timelines, the celebrity lists and (when the batch has them)
  ``serving.explore_candidates`` reference, with likes and comments before as_of and ``base_score``, the median
  value score over the viewers the post was scored for (a celebrity post is scored for up to
  ``precompute.base_score_viewers`` of its author's active followers, a fixed sample);
- ``serving.fanout_config``: the policy's version, name, threshold and computed_at, written last (its row for the
  batch says the batch is complete).

Every table replaces its batch (``replaceWhere batch_id = …``): a re-run of a batch leaves the same rows.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from darkroom import lake
from darkroom.settings import DarkroomSettings, load_settings
from darkroom.tables import PARTITION_COLUMN, Table, table
from jobs.feed_precompute import transform as T
from jobs.ranker_scoring.score import resolve_model, score_candidates

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

APP_NAME = "feed_precompute"
TIMELINES = table("serving.feed_timelines")
CELEBRITY_POSTS = table("serving.celebrity_posts")
PULL_AUTHORS = table("serving.pull_authors")
POST_META = table("serving.post_meta")
FANOUT_CONFIG = table("serving.fanout_config")
EXPLORE_CANDIDATES = table("serving.explore_candidates")
POLICIES = table("fanout.policies")
AUTHOR_MODES = table("fanout.author_modes")
INACTIVE_USERS = table("fanout.inactive_users")


class FanoutPolicyMissing(LookupError):
    """There is no fan-out policy (or its author modes) computed as of the batch or earlier."""


@dataclass(frozen=True)
class FeedPrecomputeInfo:
    batch_id: str
    policy_version: str
    policy: str
    threshold: int | None
    ranker_version: str
    active_users: int
    scored_candidates: int
    timeline_users: int
    timeline_rows: int
    pull_author_rows: int
    celebrity_posts: int
    post_meta_rows: int
    seconds: float

    def line(self) -> str:
        return (
            f"feed precompute {self.batch_id}: policy {self.policy} {self.policy_version} (T = {self.threshold}), "
            f"ranker version {self.ranker_version}; {self.active_users:,} active users, "
            f"{self.scored_candidates:,} candidates scored; {self.timeline_rows:,} timeline entries for "
            f"{self.timeline_users:,} users, {self.pull_author_rows:,} pull-author edges, "
            f"{self.celebrity_posts:,} celebrity posts, {self.post_meta_rows:,} post hashes in {self.seconds:.0f}s"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def read_policy(spark: SparkSession, settings: DarkroomSettings, as_of: datetime) -> tuple[dict, DataFrame, DataFrame]:
    """(the current policy's row, its author modes, its inactive users): the latest version as of ``as_of``."""
    from pyspark.sql import functions as F

    if not lake.exists(spark, POLICIES, settings):
        raise FanoutPolicyMissing(
            f"{POLICIES.qualified_name} does not exist (no Delta table at {POLICIES.path(settings)}): run "
            "`darkroom fanout tune` first"
        )
    row = T.current_policy(lake.read(spark, POLICIES, settings), as_of=as_of).first()
    if row is None:
        raise FanoutPolicyMissing(
            f"{POLICIES.qualified_name} has no chosen policy computed as of {as_of.isoformat()} or earlier: run "
            "`darkroom fanout tune` for this as_of first"
        )
    version = row["policy_version"]
    modes = lake.read(spark, AUTHOR_MODES, settings).where(F.col("version") == version)
    if modes.limit(1).count() == 0:
        raise FanoutPolicyMissing(f"{AUTHOR_MODES.qualified_name} has no rows of policy version {version}")
    inactive = lake.read(spark, INACTIVE_USERS, settings).where(F.col("version") == version)
    return row.asDict(), modes, inactive


def _bronze(spark: SparkSession, settings: DarkroomSettings, name: str, since: date | None = None) -> DataFrame:
    """A bronze table; with ``since``, only its ``dt`` partitions from that day on when it has them (pruning only:
    the transforms apply the exact windows)."""
    from pyspark.sql import functions as F

    t = table(f"bronze.{name}")
    df = lake.read(spark, t, settings)
    return df.where(F.col(PARTITION_COLUMN) >= F.lit(since)) if since and PARTITION_COLUMN in t.partition_by else df


def _write(spark: SparkSession, settings: DarkroomSettings, t: Table, df: DataFrame, batch: str) -> int:
    """Replace the batch of ``t`` with ``df``; returns the batch's rows in the table."""
    from pyspark.sql import functions as F

    lake.replace_where(spark, t, settings, df.withColumn("batch_id", F.lit(batch)), f"batch_id = '{batch}'")
    return batch_rows(spark, settings, t, batch).count()


def batch_rows(spark: SparkSession, settings: DarkroomSettings, t: Table, batch: str) -> DataFrame:
    from pyspark.sql import functions as F

    return lake.read(spark, t, settings).where(F.col("batch_id") == batch)


def explore_scores(spark: SparkSession, settings: DarkroomSettings, batch: str) -> DataFrame:
    """(user_id, post_id, score) of the batch's Explore candidates; empty when that job has not run for it."""
    if lake.exists(spark, EXPLORE_CANDIDATES, settings):
        return batch_rows(spark, settings, EXPLORE_CANDIDATES, batch).select("user_id", "post_id", "score")
    return spark.createDataFrame([], "user_id bigint, post_id bigint, score double")


def precompute(
    settings: DarkroomSettings, as_of: datetime, spark: SparkSession | None = None, *, progress=print
) -> FeedPrecomputeInfo:
    """Write the batch of ``as_of`` to the five feed tables (see the module doc); idempotent per batch."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from darkroom.spark import get_spark

    started = time.perf_counter()
    as_of, cfg = T.utc(as_of), settings.precompute
    batch = T.batch_id(as_of)
    model = resolve_model(settings)  # fails before any work when there is no champion
    spark = spark or get_spark(settings, APP_NAME)
    policy, modes_raw, inactive = read_policy(spark, settings, as_of)
    progress(
        f"[feed {batch}] policy {policy['policy']} version {policy['policy_version']} (T = {policy['threshold']}), "
        f"ranker {model.uri}"
    )

    window = timedelta(hours=max(cfg.timeline_lookback_hours, cfg.celebrity_window_hours))
    posts = _bronze(spark, settings, "posts", since=(as_of - window).date())
    # an impression of a candidate comes after the post, so after the lookback's start
    impressions = _bronze(
        spark, settings, "impressions", since=(as_of - timedelta(hours=cfg.timeline_lookback_hours)).date()
    )
    active = T.active_users(_bronze(spark, settings, "users"), inactive, as_of=as_of).persist()
    modes = T.author_modes(modes_raw, policy=policy["policy"])
    edges = T.follow_edges(_bronze(spark, settings, "follows"), active, modes, as_of=as_of).persist()
    pulled = T.pull_authors(edges)
    celebrity = T.celebrity_posts(
        posts, pulled, as_of=as_of, window_hours=cfg.celebrity_window_hours, cap=cfg.celebrity_posts_cap
    ).persist()
    push = T.push_candidates(
        edges,
        posts,
        impressions,
        as_of=as_of,
        lookback_hours=cfg.timeline_lookback_hours,
        exclude_seen=cfg.exclude_seen,
    )
    sample = T.score_sample(pulled, viewers=cfg.base_score_viewers)
    candidates = T.scoring_candidates(push, sample, celebrity)
    scored = score_candidates(spark, settings, candidates, as_of=as_of, surface="feed", model_uri=model.uri).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    n_scored = scored.count()
    progress(f"[feed {batch}] {n_scored:,} candidates scored (push and the celebrity posts' sampled viewers)")

    n_timelines = _write(spark, settings, TIMELINES, T.timelines(scored, cap=settings.fanout.timeline_cap), batch)
    n_pull = _write(spark, settings, PULL_AUTHORS, pulled, batch)
    n_celebrity = _write(spark, settings, CELEBRITY_POSTS, celebrity, batch)
    progress(
        f"[feed {batch}] {n_timelines:,} timeline entries, {n_pull:,} pull authors, {n_celebrity:,} celebrity posts"
    )

    explore = explore_scores(spark, settings, batch)
    referenced = (
        batch_rows(spark, settings, TIMELINES, batch)
        .select("post_id")
        .unionByName(batch_rows(spark, settings, CELEBRITY_POSTS, batch).select("post_id"))
        .unionByName(explore.select("post_id"))
        .distinct()
        .persist()
    )
    all_posts = _bronze(spark, settings, "posts")
    oldest = all_posts.join(referenced, on="post_id", how="left_semi").agg(F.min("created_at")).first()[0]
    counted = _bronze(spark, settings, "impressions", since=oldest.date() if oldest else as_of.date())
    scores = T.base_scores(scored.select("post_id", "value_score"), explore)
    n_meta = _write(spark, settings, POST_META, T.post_meta(referenced, all_posts, counted, scores, as_of=as_of), batch)
    config = T.current_policy(lake.read(spark, POLICIES, settings), as_of=as_of)
    _write(spark, settings, FANOUT_CONFIG, config, batch)

    written = batch_rows(spark, settings, TIMELINES, batch)
    info = FeedPrecomputeInfo(
        batch_id=batch,
        policy_version=policy["policy_version"],
        policy=policy["policy"],
        threshold=policy["threshold"],
        ranker_version=model.version,
        active_users=active.count(),
        scored_candidates=n_scored,
        timeline_users=written.select("user_id").distinct().count(),
        timeline_rows=n_timelines,
        pull_author_rows=n_pull,
        celebrity_posts=n_celebrity,
        post_meta_rows=n_meta,
        seconds=time.perf_counter() - started,
    )
    for df in (active, edges, celebrity, scored, referenced):
        df.unpersist()
    progress(info.line())
    return info


def feed_precompute(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``feed_publish.feed_precompute`` (entry point, ``darkroom.spark_task``): the batch of ``as_of``; returns its
    figures."""
    return asdict(precompute(settings, as_of))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.feed_precompute.main", description=__doc__)
    parser.add_argument("--as-of", required=True, type=datetime.fromisoformat, help="the batch's instant (UTC)")
    args = parser.parse_args(argv)
    precompute(load_settings(), args.as_of)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
