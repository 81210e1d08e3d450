"""The feed precompute and the story rings on the tiny world (``champion_world``: the fan-out policy and a tiny
ranker champion as of WORLD_END), spot-checked against what this test computes itself from bronze, the fan-out
tables and the scorer: the timelines hold exactly the eligible push posts, their scores are the scorer's, the pull
side is exactly the followed pull-mode authors, post metadata covers every referenced post, and one viewer's ring
is in unseen-first order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from darkroom import lake
from darkroom.tables import table

pytestmark = pytest.mark.integration


@dataclass
class FeedRun:
    """The ``feed_publish`` DAG's run on ``champion_world``: the tasks' return values (``story_rings`` is
    spark-submitted and returns nothing: its figures are read from ``serving.story_rings``), its log and the Redis it
    published to."""

    feed: SimpleNamespace
    rings: SimpleNamespace
    published: list[dict]
    dag_state: str
    task_states: dict[str, str]
    redis_url: str
    log: str


@pytest.fixture(scope="module")
def feed_run(champion_world, tmp_path_factory, spark):
    """``airflow dags test feed_publish`` as of WORLD_END, publishing to a redis-server of this module's own."""
    from pyspark.sql import functions as F

    from darkroom.airflow_env import last_dag_run, run_dag_test, task_return_value
    from darkroom.redis_server import LocalRedisServer

    with LocalRedisServer(tmp_path_factory.mktemp("feed-publish-redis")) as server:
        s = champion_world.settings.model_copy(update={"redis_url": server.url})
        proc = run_dag_test(s, "feed_publish", champion_world.as_of.isoformat())
        state, tasks = last_dag_run(s, "feed_publish")
        assert proc.returncode == 0 and state == "success", proc.stdout[-4000:]
        feed = SimpleNamespace(**task_return_value(s, "feed_publish", "feed_precompute"))
        row = (
            _batch(spark, champion_world, "story_rings", feed.batch_id)
            .agg(F.count("*"), F.count_distinct("viewer_id"), F.count_if("unseen"))
            .first()
        )
        yield FeedRun(
            feed=feed,
            rings=SimpleNamespace(batch_id=feed.batch_id, rings=row[0], viewers=row[1], unseen=row[2]),
            published=task_return_value(s, "feed_publish", "publish"),
            dag_state=state,
            task_states=tasks,
            redis_url=server.url,
            log=proc.stdout,
        )


@pytest.fixture(scope="module")
def precomputed(feed_run):
    return feed_run.feed, feed_run.rings


def _batch(spark, world, name: str, batch: str):
    from pyspark.sql import functions as F

    return lake.read(spark, table(f"serving.{name}"), world.settings).where(F.col("batch_id") == batch)


def _views(spark, world) -> str:
    """Registers the inputs as temp views for the independent SQL below; returns the policy version."""
    s = world.settings
    for name in ("users", "follows", "posts", "impressions", "stories", "story_views"):
        lake.read(spark, table(f"bronze.{name}"), s).createOrReplaceTempView(f"pc_{name}")
    for name in ("policies", "author_modes", "inactive_users"):
        lake.read(spark, table(f"fanout.{name}"), s).createOrReplaceTempView(f"pc_{name}")
    lake.read(spark, table("marts.fct_story_ring_signals"), s).createOrReplaceTempView("pc_ring_signals")
    return spark.sql("select max(version) from pc_policies").first()[0]


def _sql_time(world) -> str:
    return f"timestamp'{world.as_of.strftime('%Y-%m-%d %H:%M:%S')}'"


def _active_and_modes(spark, world, version: str) -> None:
    now = _sql_time(world)
    spark.sql(
        f"""select user_id from pc_users where created_at < {now}
        except select user_id from pc_inactive_users where version = '{version}'"""
    ).createOrReplaceTempView("pc_active")
    spark.sql(
        f"select author_id, threshold_mode as mode from pc_author_modes where version = '{version}'"
    ).createOrReplaceTempView("pc_modes")


def test_the_batch_uses_the_current_policy_and_the_champion(precomputed, champion_world, spark):
    feed, _ = precomputed
    version = _views(spark, champion_world)
    chosen = spark.sql(f"select * from pc_policies where version = '{version}' and chosen").first()
    assert (feed.policy_version, feed.policy, feed.threshold) == (version, chosen["policy"], chosen["threshold"])
    assert feed.policy == "threshold" and feed.ranker_version == champion_world.champion_version
    config = [r.asDict() for r in _batch(spark, champion_world, "fanout_config", feed.batch_id).collect()]
    assert config == [
        {
            "batch_id": "20261101T0000Z",
            "policy_version": version,
            "policy": "threshold",
            "threshold": chosen["threshold"],
            "computed_at": chosen["computed_at"],
        }
    ]


def test_timelines_are_exactly_the_eligible_push_posts_up_to_the_cap(precomputed, champion_world, spark):
    feed, _ = precomputed
    s, now = champion_world.settings, _sql_time(champion_world)
    _active_and_modes(spark, champion_world, _views(spark, champion_world))
    hours = int(s.precompute.timeline_lookback_hours)
    eligible = spark.sql(
        f"""select f.follower_id as user_id, p.post_id
        from pc_follows f
        join pc_active a on a.user_id = f.follower_id
        join pc_modes m on m.author_id = f.followee_id and m.mode = 'push'
        join pc_posts p on p.author_id = f.followee_id
        where f.created_at < {now} and p.created_at > {now} - interval {hours} hours and p.created_at < {now}
          and p.author_id != f.follower_id
          and not exists (select 1 from pc_impressions i
                          where i.viewer_id = f.follower_id and i.post_id = p.post_id and i.ts < {now})"""
    ).toPandas()
    timelines = _batch(spark, champion_world, "feed_timelines", feed.batch_id).toPandas()
    cap = s.fanout.timeline_cap
    assert len(eligible) > 100 and eligible.groupby("user_id").size().max() <= cap  # the tiny world is under the cap
    assert set(zip(timelines.user_id, timelines.post_id, strict=True)) == set(
        zip(eligible.user_id, eligible.post_id, strict=True)
    )
    assert len(timelines) == len(eligible) == feed.timeline_rows
    # author and creation time went through the scoring pass unchanged
    posts = spark.sql("select post_id, author_id, created_at from pc_posts").toPandas().set_index("post_id")
    assert (timelines.author_id.to_numpy() == posts.loc[timelines.post_id, "author_id"].to_numpy()).all()
    assert (timelines.created_at.to_numpy() == posts.loc[timelines.post_id, "created_at"].to_numpy()).all()
    # ranks 1..n per user, in descending score
    for _, t in timelines.groupby("user_id"):
        t = t.sort_values("rank")
        assert list(t["rank"]) == list(range(1, len(t) + 1))
        assert (np.diff(t["score"].to_numpy()) <= 0).all()


def test_scores_are_the_champion_scorers_own(precomputed, champion_world, spark):
    import mlflow
    from pyspark.sql import functions as F

    from darkroom.tracking import tracking_uri
    from feature_store.definitions import get_service
    from feature_store.offline import get_historical_features
    from ml.ranker.inference import load_registered

    feed, _ = precomputed
    s = champion_world.settings
    rows = (
        _batch(spark, champion_world, "feed_timelines", feed.batch_id)
        .orderBy(F.xxhash64("user_id", "post_id"))
        .limit(6)
        .select(
            F.col("user_id").alias("viewer_id"),
            "post_id",
            "author_id",
            F.lit(champion_world.as_of).cast("timestamp").alias("impressed_at"),
            F.lit("feed").alias("surface"),
            F.lit(0).alias("position"),
            F.col("score").alias("stored_score"),
        )
    )
    data = get_historical_features(spark, s, rows, get_service(s.ranker.feature_service)).toArrow()
    mlflow.set_tracking_uri(tracking_uri(s))
    scorer = load_registered(f"models:/{s.ranker.registered_model}/{champion_world.champion_version}")
    want = scorer.predict_table(data)["value"]
    assert len(want) == 6
    np.testing.assert_allclose(data.column("stored_score").to_numpy(), want, rtol=1e-6, atol=1e-9)


def test_pull_side_is_exactly_the_followed_pull_mode_authors(precomputed, champion_world, spark):
    feed, _ = precomputed
    s, now = champion_world.settings, _sql_time(champion_world)
    _active_and_modes(spark, champion_world, _views(spark, champion_world))
    pulled = spark.sql(
        f"""select f.follower_id as user_id, f.followee_id as author_id
        from pc_follows f
        join pc_active a on a.user_id = f.follower_id
        join pc_modes m on m.author_id = f.followee_id and m.mode = 'pull'
        where f.created_at < {now}"""
    ).collect()
    got = _batch(spark, champion_world, "pull_authors", feed.batch_id).select("user_id", "author_id").collect()
    assert len(pulled) > 0 and sorted(map(tuple, got)) == sorted(map(tuple, pulled))
    hours = int(s.precompute.celebrity_window_hours)
    celebrity = spark.sql(
        f"""select p.author_id, p.post_id, p.created_at from pc_posts p
        where p.created_at > {now} - interval {hours} hours and p.created_at < {now}
          and p.author_id in (select f.followee_id from pc_follows f join pc_active a on a.user_id = f.follower_id
                              join pc_modes m on m.author_id = f.followee_id and m.mode = 'pull'
                              where f.created_at < {now})"""
    ).collect()
    got = _batch(spark, champion_world, "celebrity_posts", feed.batch_id).drop("batch_id").collect()
    assert len(celebrity) > 0 and sorted(map(tuple, got)) == sorted(map(tuple, celebrity))


def test_post_meta_covers_every_referenced_post_with_counts_and_base_scores(precomputed, champion_world, spark):
    feed, _ = precomputed
    now = _sql_time(champion_world)
    _views(spark, champion_world)
    batch = feed.batch_id
    timelines = _batch(spark, champion_world, "feed_timelines", batch).toPandas()
    referenced = set(timelines.post_id)
    referenced |= {r[0] for r in _batch(spark, champion_world, "celebrity_posts", batch).select("post_id").collect()}
    explore = set()
    if lake.exists(spark, table("serving.explore_candidates"), champion_world.settings):
        explore = {r[0] for r in _batch(spark, champion_world, "explore_candidates", batch).select("post_id").collect()}
    meta = _batch(spark, champion_world, "post_meta", batch).toPandas().set_index("post_id")
    assert set(meta.index) == referenced | explore and len(meta) == feed.post_meta_rows
    counts = (
        spark.sql(
            f"""select post_id, count_if(liked) as likes, count_if(commented) as comments from pc_impressions
            where ts < {now} group by post_id"""
        )
        .toPandas()
        .set_index("post_id")
        .reindex(meta.index, fill_value=0)
    )
    assert (meta.like_count == counts.likes).all() and (meta.comment_count == counts.comments).all()
    assert meta.like_count.sum() > 0
    posts = spark.sql("select post_id, author_id, created_at, caption, media_count from pc_posts").toPandas()
    posts = posts.set_index("post_id").loc[meta.index]
    assert (meta.author_id == posts.author_id).all() and (meta.media_count == posts.media_count).all()
    # under the cap every push candidate is in a timeline: a push post's base score is the median of its scores there
    medians = timelines.groupby("post_id")["score"].median()
    np.testing.assert_allclose(meta.loc[medians.index, "base_score"], medians, rtol=1e-9)
    assert meta.base_score.notna().all()


def test_one_viewers_ring_is_unseen_first_then_by_engagement(precomputed, champion_world, spark):
    from pyspark.sql import functions as F

    _, rings = precomputed
    s, now = champion_world.settings, _sql_time(champion_world)
    _views(spark, champion_world)
    stored = _batch(spark, champion_world, "story_rings", rings.batch_id)
    # one ring per row of the mart (viewer, followed author with a live story at as_of)
    signals = spark.table("pc_ring_signals")
    assert stored.count() == signals.count() == rings.rings > 0
    assert sorted(map(tuple, stored.select("viewer_id", "author_id").collect())) == sorted(
        map(tuple, signals.select("viewer_id", "author_id").collect())
    )
    mixed = (
        stored.groupBy("viewer_id")
        .agg(F.count("*").alias("n"), F.count_if("unseen").alias("u"))
        .where((F.col("u") > 0) & (F.col("u") < F.col("n")) & (F.col("n") >= 4))
        .orderBy(F.col("n").desc(), "viewer_id")
        .first()
    )
    viewer = mixed["viewer_id"]
    # from bronze: the followed authors with a story in (as_of - 24 h, as_of), and whether one is not yet viewed
    expected = {
        r["author_id"]: (r["unseen"], r["expires_at"])
        for r in spark.sql(
            f"""select st.author_id,
                   max(case when v.story_id is null then 1 else 0 end) = 1 as unseen,
                   max(st.created_at) + interval 24 hours as expires_at
            from pc_follows f join pc_stories st on st.author_id = f.followee_id
            left join (select distinct story_id from pc_story_views where viewer_id = {viewer} and ts < {now}) v
              on v.story_id = st.story_id
            where f.follower_id = {viewer} and f.created_at < {now}
              and st.created_at > {now} - interval 24 hours and st.created_at < {now}
            group by st.author_id"""
        ).collect()
    }
    ring = stored.where(F.col("viewer_id") == viewer).orderBy(F.col("score").desc()).collect()
    assert {r["author_id"]: (r["unseen"], r["expires_at"]) for r in ring} == expected
    # the order, by hand: unseen first, then the weighted engagement of the mart's signals
    w = s.precompute.ring_weights
    signals = {
        r["author_id"]: w.dms * r["dms_7d"]
        + w.profile_visits * r["profile_visits_7d"]
        + w.likes_comments * r["likes_comments_7d"]
        + w.story_views * r["story_views_7d"]
        + w.affinity * r["affinity_score"]
        for r in spark.sql(f"select * from pc_ring_signals where viewer_id = {viewer}").collect()
    }
    got = [(r["unseen"], signals[r["author_id"]]) for r in ring]
    assert got == sorted(got, key=lambda x: (x[0], x[1]), reverse=True)
    assert [r["unseen"] for r in ring][: mixed["u"]] == [True] * mixed["u"]
    assert ring[0]["score"] >= 1.0 > ring[-1]["score"]
    naive = champion_world.as_of.replace(tzinfo=None)  # Spark returns UTC wall times (the session's zone)
    assert all(naive < r["expires_at"] <= naive + timedelta(hours=24) for r in ring)


# --- the publish: what the DAG left in Redis ------------------------------------------------------------------------


def test_the_dag_publishes_feed_and_stories_whole_and_current(feed_run, champion_world, spark):
    assert feed_run.task_states == {"feed_precompute": "success", "story_rings": "success", "publish": "success"}
    # story_rings ran through spark-submit on spark_default (the settings' master) with the batch's as-of
    [submit] = [line for line in feed_run.log.splitlines() if "Spark-Submit cmd:" in line]
    assert f"--master {champion_world.settings.spark.master} " in submit
    assert f"jobs/story_rings/main.py --as-of {champion_world.as_of.isoformat()}" in submit
    batch = feed_run.feed.batch_id
    by_group = {r["group"]: r for r in feed_run.published}
    assert sorted(by_group) == ["feed", "stories"]
    assert all(r["state"] == "current" and r["batch_id"] == batch for r in by_group.values())
    timelines = _batch(spark, champion_world, "feed_timelines", batch)
    feed = by_group["feed"]["verified"]["feed_timelines"]
    assert (feed["keys"], feed["members"]) == (timelines.select("user_id").distinct().count(), timelines.count())
    rings = by_group["stories"]["verified"]["story_rings"]
    assert rings["keys"] == 2 * feed_run.rings.viewers > 0  # a viewer's ring and its author -> expiry hash
    meta = by_group["feed"]["verified"]["post_meta"]
    assert meta["keys"] == feed_run.feed.post_meta_rows
    import redis

    from serving.publisher import RedisPublisher

    s = champion_world.settings.model_copy(update={"redis_url": feed_run.redis_url})
    with RedisPublisher.from_settings(s) as publisher:
        assert {g: publisher.current_version(g) for g in by_group} == {g: r["version"] for g, r in by_group.items()}
    client = redis.Redis.from_url(feed_run.redis_url)
    assert client.dbsize() > feed["keys"] + meta["keys"]
    client.close()


def test_a_rerun_of_the_published_batch_changes_nothing(feed_run, champion_world, spark):
    import redis

    from serving.publisher import publish_batch

    client = redis.Redis.from_url(feed_run.redis_url)
    before = {k: client.type(k) for k in client.scan_iter(count=10_000)}
    s = champion_world.settings.model_copy(update={"redis_url": feed_run.redis_url})
    again = publish_batch(spark, s, feed_run.feed.batch_id, ["feed", "stories"])
    assert [(r.group, r.state) for r in again] == [("feed", "already_current"), ("stories", "already_current")]
    assert {r.group: r.version for r in again} == {r["group"]: r["version"] for r in feed_run.published}
    assert {k: client.type(k) for k in client.scan_iter(count=10_000)} == before
    client.close()


def test_feed_reads_page_through_the_users_timeline_merged_with_pull_posts(feed_run, champion_world, spark):
    import redis

    from serving.readers import FeedReader, ReaderConfig

    batch = feed_run.feed.batch_id
    timelines = _batch(spark, champion_world, "feed_timelines", batch).toPandas()
    user = int(timelines.groupby("user_id").size().sort_values(kind="stable").index[-1])
    mine = timelines[timelines.user_id == user].sort_values("score", ascending=False)
    mine_pull = _batch(spark, champion_world, "pull_authors", batch).where(f"user_id = {user}")
    pull_authors = {r[0] for r in mine_pull.select("author_id").collect()}
    client = redis.Redis.from_url(feed_run.redis_url)
    reader = FeedReader(client, ReaderConfig.from_settings(champion_world.settings.serving))
    pages, cursor = [], None
    while True:
        page = reader.get_feed(user, cursor=cursor, limit=7)
        pages.append(page)
        if not page.has_more:
            break
        cursor = page.next_cursor
    client.close()
    posts = [p for page in pages for p in page.posts]
    version = {r["group"]: r["version"] for r in feed_run.published}["feed"]
    assert {page.version for page in pages} == {version}
    assert len({p.post_id for p in posts}) == len(posts)  # no duplicates across pages
    assert [p.score for p in posts] == sorted((p.score for p in posts), reverse=True)
    # every timeline entry once, in the timeline's score order, and nothing else from the timeline
    assert sorted(p.post_id for p in posts if p.source == "timeline") == sorted(mine.post_id)
    np.testing.assert_allclose([p.score for p in posts if p.source == "timeline"], mine.score, rtol=1e-12)
    assert {p.author_id for p in posts if p.source == "pull"} <= pull_authors
    assert all(p.author_id is not None and p.created_at_ms is not None for p in posts)
