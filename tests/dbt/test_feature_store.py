"""The feature store on the tiny world's real marts: the last day's training set, one impression's viewer features
checked against the dim_user_features row picked here independently, and the online store materialised for that
day and checked against the offline store."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pyspark.sql import functions as F

from feature_store.definitions import RANKER_V1
from feature_store.offline import build_training_set
from feature_store.online import check_consistency, materialize

pytestmark = pytest.mark.integration

VIEWER_FEATURES = [n for n, _ in RANKER_V1.view("viewer").features]


def test_last_day_training_set_and_online_consistency(dbt_world, spark, redis_url):
    s = dbt_world.settings
    end = dbt_world.as_of
    start = end - timedelta(days=1)
    info = build_training_set(spark, s, RANKER_V1, start, end)

    labels = dbt_world.read(spark, "marts.fct_engagement_labels").where(
        (F.col("impressed_at") >= F.lit(start)) & (F.col("impressed_at") < F.lit(end))
    )
    training = spark.read.format("delta").option("versionAsOf", info.version).load(info.path)
    assert info.rows == labels.count() == training.count() > 0
    assert training.select("viewer_id", "post_id", "impressed_at").distinct().count() == info.rows

    # One impression (the smallest key), its viewer's latest snapshot at or before impressed_at chosen here.
    impression = training.orderBy("viewer_id", "post_id", "impressed_at").first()
    users = dbt_world.read(spark, "marts.dim_user_features").where(F.col("user_id") == impression.viewer_id)
    known = (
        users.where(F.col("feature_ts") <= F.lit(impression.impressed_at)).orderBy(F.col("feature_ts").desc()).first()
    )
    assert known is not None and impression.impressed_at - known.feature_ts <= timedelta(hours=48)
    assert {f: impression[f"viewer__{f}"] for f in VIEWER_FEATURES} == {f: known[f] for f in VIEWER_FEATURES}
    # The snapshot of the impression's own day is known only at the next midnight: not used.
    assert known.feature_date < impression.impression_date
    assert users.where(F.col("feature_date") == F.lit(impression.impression_date)).count() == 1

    # The hashtags computed from bronze captions agree with the mart's count wherever the post has a snapshot.
    disagree = training.where(
        F.col("post__hashtag_count").isNotNull() & (F.size("post_hashtags__hashtags") != F.col("post__hashtag_count"))
    )
    assert disagree.count() == 0

    counts = materialize(spark, s, RANKER_V1, start, end, redis_url)
    assert counts["viewer"].written > 0 and counts["post"].written > 0
    for view in RANKER_V1.views:
        report = check_consistency(spark, s, view, end, redis_url, sample=200, since=start)
        assert report.ok and report.sampled == min(200, counts[view.name].entities), report.line()


@pytest.mark.heavy  # the suite's end-to-end test runs this DAG on its world and checks the same
def test_the_dag_materializes_and_checks(dbt_world, redis_url):
    import redis

    from darkroom.airflow_env import last_dag_run, run_dag_test
    from darkroom.settings import load_settings

    base = dbt_world.settings
    s = load_settings(
        state_dir=base.state_dir,
        jars_path=base.jars_dir,
        spark=base.spark.model_dump(),
        world=base.world.model_dump(),
        dbt=base.dbt.model_dump(),
        redis_url=redis_url,
    )
    proc = run_dag_test(s, "feature_materialize", dbt_world.as_of.isoformat())
    assert proc.returncode == 0, proc.stdout[-5000:]
    state, tasks = last_dag_run(s, "feature_materialize")
    assert state == "success" and tasks == {"materialize": "success", "check_consistency": "success"}
    client = redis.Redis.from_url(redis_url)
    viewer_keys = list(client.scan_iter(match=f"{s.feature_store.online_key_prefix}:viewer:*", count=1000))
    assert viewer_keys and b"_feature_ts" in client.hgetall(viewer_keys[0])
