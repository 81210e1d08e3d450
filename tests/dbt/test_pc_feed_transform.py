"""The feed precompute's pure steps on small hand-built frames (real Spark): the current policy, active users, the
push/pull split, the candidates' windows and exclusions, the cap with its tie-break, the celebrity lists, the
scoring sample, base scores, post metadata, and a re-run of a batch write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pyspark.testing import assertDataFrameEqual

from jobs.feed_precompute import transform as T

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 10, 10, 12, tzinfo=UTC)
H = timedelta(hours=1)
S = timedelta(seconds=1)
EDGES = "user_id BIGINT, author_id BIGINT, mode STRING"
POSTS = "post_id BIGINT, author_id BIGINT, created_at TIMESTAMP"
IMPRESSIONS = "viewer_id BIGINT, post_id BIGINT, ts TIMESTAMP, hidden BOOLEAN"


def test_batch_id_is_the_as_of_in_utc():
    assert T.batch_id(AS_OF) == "20261010T1200Z"
    assert T.batch_id(datetime(2026, 10, 10, 12)) == "20261010T1200Z"  # naive = UTC
    assert T.batch_id(datetime(2026, 10, 10, 14, 30, tzinfo=timezone(2 * H))) == "20261010T1230Z"


def test_current_policy_is_the_chosen_row_of_the_latest_version_at_or_before_as_of(spark):
    schema = "version STRING, policy STRING, chosen BOOLEAN, threshold BIGINT, as_of TIMESTAMP, computed_at TIMESTAMP"
    day = timedelta(days=1)
    policies = spark.createDataFrame(
        [
            ("v1", "threshold", True, 100, AS_OF - day, AS_OF - day),
            ("v2", "threshold", True, 120, AS_OF, AS_OF),  # exactly as_of: current
            ("v2", "pure_push", False, None, AS_OF, AS_OF),
            ("v3", "threshold", True, 150, AS_OF + day, AS_OF + day),  # computed later: not seen
        ],
        schema,
    )
    want = "policy_version STRING, policy STRING, threshold BIGINT, computed_at TIMESTAMP"
    assertDataFrameEqual(
        T.current_policy(policies, as_of=AS_OF), spark.createDataFrame([("v2", "threshold", 120, AS_OF)], want)
    )
    assert T.current_policy(policies, as_of=AS_OF - 2 * day).count() == 0


def test_author_modes_follow_the_chosen_policy(spark):
    modes = spark.createDataFrame(
        [(1, "push", "pull"), (2, "pull", "pull")], "author_id BIGINT, threshold_mode STRING, per_author_mode STRING"
    )
    want = "author_id BIGINT, mode STRING"
    assertDataFrameEqual(
        T.author_modes(modes, policy="threshold"), spark.createDataFrame([(1, "push"), (2, "pull")], want)
    )
    assertDataFrameEqual(
        T.author_modes(modes, policy="per_author"), spark.createDataFrame([(1, "pull"), (2, "pull")], want)
    )
    assertDataFrameEqual(
        T.author_modes(modes, policy="pure_push"), spark.createDataFrame([(1, "push"), (2, "push")], want)
    )
    with pytest.raises(ValueError, match="unknown fan-out policy 'fastest'"):
        T.author_modes(modes, policy="fastest")


def test_active_users_are_existing_accounts_the_policy_does_not_list_as_inactive(spark):
    users = spark.createDataFrame(
        [(1, AS_OF - H), (2, AS_OF - H), (3, AS_OF)], "user_id BIGINT, created_at TIMESTAMP"
    )  # 3 is created at as_of: not yet an account of this batch
    inactive = spark.createDataFrame([(2,)], "user_id BIGINT")
    assertDataFrameEqual(T.active_users(users, inactive, as_of=AS_OF), spark.createDataFrame([(1,)], "user_id BIGINT"))


def test_follow_edges_split_push_and_pull_for_active_users_only(spark):
    follows = spark.createDataFrame(
        [
            (1, 10, AS_OF - H),  # push author
            (1, 20, AS_OF - H),  # pull author
            (1, 30, AS_OF - H),  # no mode in the policy (newer account): push
            (1, 40, AS_OF),  # followed at as_of: next batch
            (1, 1, AS_OF - H),  # a self-follow never counts
            (2, 10, AS_OF - H),  # 2 is inactive
        ],
        "follower_id BIGINT, followee_id BIGINT, created_at TIMESTAMP",
    )
    active = spark.createDataFrame([(1,)], "user_id BIGINT")
    modes = spark.createDataFrame(
        [(10, "push"), (20, "pull"), (40, "push"), (1, "push")], "author_id BIGINT, mode STRING"
    )
    edges = T.follow_edges(follows, active, modes, as_of=AS_OF)
    assertDataFrameEqual(edges, spark.createDataFrame([(1, 10, "push"), (1, 20, "pull"), (1, 30, "push")], EDGES))
    assertDataFrameEqual(T.pull_authors(edges), spark.createDataFrame([(1, 20)], "user_id BIGINT, author_id BIGINT"))


def test_push_candidates_window_own_posts_seen_and_hidden(spark):
    edges = spark.createDataFrame([(1, 10, "push"), (1, 20, "pull"), (1, 1, "push"), (2, 10, "push")], EDGES)
    lookback = AS_OF - 72 * H
    posts = spark.createDataFrame(
        [
            (100, 10, lookback),  # exactly 72 h old: aged out
            (101, 10, lookback + S),  # just inside
            (102, 10, AS_OF - H),
            (103, 10, AS_OF),  # created at as_of: next batch
            (200, 20, AS_OF - H),  # pull author: never pushed
            (300, 1, AS_OF - H),  # user 1's own post (a self edge must not bring it back)
            (104, 10, AS_OF - 2 * H),
        ],
        POSTS,
    )
    impressions = spark.createDataFrame(
        [
            (1, 102, AS_OF - S, False),  # seen by 1
            (2, 104, AS_OF - S, True),  # hidden by 2
            (2, 101, AS_OF, False),  # shown at as_of: next batch's impression
        ],
        IMPRESSIONS,
    )
    kw = {"as_of": AS_OF, "lookback_hours": 72.0}
    want = "user_id BIGINT, post_id BIGINT, author_id BIGINT, created_at TIMESTAMP"
    seen_excluded = [(1, 101, 10, lookback + S), (1, 104, 10, AS_OF - 2 * H), (2, 101, 10, lookback + S)]
    seen_excluded += [(2, 102, 10, AS_OF - H)]
    assertDataFrameEqual(
        T.push_candidates(edges, posts, impressions, exclude_seen=True, **kw),
        spark.createDataFrame(seen_excluded, want),
    )
    # without exclude_seen, the seen post comes back, the hidden one does not
    assertDataFrameEqual(
        T.push_candidates(edges, posts, impressions, exclude_seen=False, **kw),
        spark.createDataFrame([*seen_excluded, (1, 102, 10, AS_OF - H)], want),
    )


def test_timelines_keep_the_cap_best_with_ties_to_the_newer_post(spark):
    scored = spark.createDataFrame(
        [
            (1, 11, 10, AS_OF - 5 * H, "push", 0.9),
            (1, 12, 10, AS_OF - 3 * H, "push", 0.5),
            (1, 13, 10, AS_OF - 2 * H, "push", 0.5),  # ties with 12, newer: ahead
            (1, 14, 10, AS_OF - 2 * H, "push", 0.5),  # same score and time as 13, larger id: ahead of 13
            (1, 15, 20, AS_OF - H, "pull_sample", 5.0),  # scored for the base score only: never in a timeline
            (2, 11, 10, AS_OF - 5 * H, "push", -1.0),
        ],
        "user_id BIGINT, post_id BIGINT, author_id BIGINT, created_at TIMESTAMP, kind STRING, value_score DOUBLE",
    )
    want = spark.createDataFrame(
        [
            (1, 11, 0.9, 1, 10, AS_OF - 5 * H),
            (1, 14, 0.5, 2, 10, AS_OF - 2 * H),
            (1, 13, 0.5, 3, 10, AS_OF - 2 * H),
            (2, 11, -1.0, 1, 10, AS_OF - 5 * H),
        ],
        "user_id BIGINT, post_id BIGINT, score DOUBLE, rank INT, author_id BIGINT, created_at TIMESTAMP",
    )
    assertDataFrameEqual(T.timelines(scored, cap=3), want)


def test_celebrity_posts_are_the_newest_in_the_window_of_followed_pull_authors(spark):
    pulled = spark.createDataFrame([(1, 20), (2, 20), (1, 30)], "user_id BIGINT, author_id BIGINT")
    posts = spark.createDataFrame(
        [
            (201, 20, AS_OF - 24 * H),  # exactly the window: out
            (202, 20, AS_OF - 3 * H),
            (203, 20, AS_OF - 2 * H),
            (204, 20, AS_OF - H),
            (301, 30, AS_OF - H),
            (302, 30, AS_OF),  # at as_of: next batch
            (401, 40, AS_OF - H),  # 40 is followed by no active user
        ],
        POSTS,
    )
    got = T.celebrity_posts(posts, pulled, as_of=AS_OF, window_hours=24.0, cap=2)
    want = spark.createDataFrame(
        [(20, 204, AS_OF - H), (20, 203, AS_OF - 2 * H), (30, 301, AS_OF - H)],
        "author_id BIGINT, post_id BIGINT, created_at TIMESTAMP",
    )
    assertDataFrameEqual(got, want)


def test_score_sample_is_bounded_and_the_same_on_a_rerun(spark):
    pulled = spark.createDataFrame(
        [(u, 20) for u in range(1, 9)] + [(1, 30)], "user_id BIGINT, author_id BIGINT"
    ).repartition(3)
    first = T.score_sample(pulled, viewers=3)
    counts = {r["author_id"]: r["count"] for r in first.groupBy("author_id").count().collect()}
    assert counts == {20: 3, 30: 1}
    assertDataFrameEqual(first, T.score_sample(pulled.repartition(2), viewers=3))
    assert first.join(pulled, on=["user_id", "author_id"], how="left_anti").count() == 0


def test_scoring_candidates_are_push_rows_and_celebrity_posts_for_the_sample(spark):
    push = spark.createDataFrame(
        [(1, 101, 10, AS_OF - H)], "user_id BIGINT, post_id BIGINT, author_id BIGINT, created_at TIMESTAMP"
    )
    sample = spark.createDataFrame([(1, 20), (2, 20)], "user_id BIGINT, author_id BIGINT")
    celebrity = spark.createDataFrame(
        [(20, 201, AS_OF - 2 * H)], "author_id BIGINT, post_id BIGINT, created_at TIMESTAMP"
    )
    want = spark.createDataFrame(
        [
            (1, 101, 10, AS_OF - H, "push"),
            (1, 201, 20, AS_OF - 2 * H, "pull_sample"),
            (2, 201, 20, AS_OF - 2 * H, "pull_sample"),
        ],
        "user_id BIGINT, post_id BIGINT, author_id BIGINT, created_at TIMESTAMP, kind STRING",
    )
    assertDataFrameEqual(T.scoring_candidates(push, sample, celebrity), want)


def test_base_score_is_the_median_of_feed_scores_else_of_explore_scores(spark):
    feed = spark.createDataFrame(
        [(101, 1.0), (101, 3.0), (101, 10.0), (102, 1.0), (102, 2.0)], "post_id BIGINT, value_score DOUBLE"
    )
    explore = spark.createDataFrame(
        [(1, 101, 50.0), (1, 103, 4.0), (2, 103, 6.0)], "user_id BIGINT, post_id BIGINT, score DOUBLE"
    )
    want = spark.createDataFrame([(101, 3.0), (102, 1.5), (103, 5.0)], "post_id BIGINT, base_score DOUBLE")
    assertDataFrameEqual(T.base_scores(feed, explore), want)


def test_post_meta_counts_likes_and_comments_before_as_of(spark):
    referenced = spark.createDataFrame([(101,), (101,), (102,)], "post_id BIGINT")
    posts = spark.createDataFrame(
        [(101, 10, AS_OF - H, "hi #x", 2), (102, 20, AS_OF - 2 * H, None, 1), (103, 10, AS_OF - H, "no", 1)],
        "post_id BIGINT, author_id BIGINT, created_at TIMESTAMP, caption STRING, media_count INT",
    )
    impressions = spark.createDataFrame(
        [
            (1, 101, AS_OF - S, True, True),
            (2, 101, AS_OF - S, True, False),
            (3, 101, AS_OF, True, True),  # at as_of: not counted
            (1, 103, AS_OF - S, True, True),  # not referenced
        ],
        "viewer_id BIGINT, post_id BIGINT, ts TIMESTAMP, liked BOOLEAN, commented BOOLEAN",
    )
    scores = spark.createDataFrame([(101, 0.5), (102, -0.25)], "post_id BIGINT, base_score DOUBLE")
    want = spark.createDataFrame(
        [(101, 10, AS_OF - H, "hi #x", 2, 2, 1, 0.5), (102, 20, AS_OF - 2 * H, None, 1, 0, 0, -0.25)],
        "post_id BIGINT, author_id BIGINT, created_at TIMESTAMP, caption STRING, media_count INT, like_count BIGINT, "
        "comment_count BIGINT, base_score DOUBLE",
    )
    assertDataFrameEqual(T.post_meta(referenced, posts, impressions, scores, as_of=AS_OF), want)


def test_a_rerun_of_a_batch_write_leaves_the_same_rows_and_other_batches_alone(spark, settings, tmp_path):
    from darkroom.settings import load_settings
    from jobs.feed_precompute.main import TIMELINES, _write, batch_rows

    local = load_settings(state_dir=tmp_path, jars_path=settings.jars_dir, spark=settings.spark.model_dump())
    schema = "user_id BIGINT, post_id BIGINT, score DOUBLE, rank INT, author_id BIGINT, created_at TIMESTAMP"
    earlier = spark.createDataFrame([(9, 900, 1.0, 1, 90, AS_OF - 30 * H)], schema)
    rows = spark.createDataFrame([(1, 101, 0.9, 1, 10, AS_OF - H), (1, 102, 0.1, 2, 10, AS_OF - 2 * H)], schema)
    assert _write(spark, local, TIMELINES, earlier, "20261009T1200Z") == 1
    assert _write(spark, local, TIMELINES, rows, "20261010T1200Z") == 2
    assert _write(spark, local, TIMELINES, rows, "20261010T1200Z") == 2  # the re-run
    assertDataFrameEqual(batch_rows(spark, local, TIMELINES, "20261010T1200Z").drop("batch_id"), rows)
    assertDataFrameEqual(batch_rows(spark, local, TIMELINES, "20261009T1200Z").drop("batch_id"), earlier)
