"""The two-tower's weekly DAG on the tiny world: real Spark, Delta, MLflow (SQLite), FAISS and Airflow
(``airflow dags test two_tower_weekly``).

On a copy of ``champion_world`` (the dbt world with a fan-out policy and a tiny ranker as ``ranker@champion``):
1. a deliberately poor two-tower (learning rates of 1e-7) trained directly: the first model, so it is champion;
2. ``two_tower_weekly`` through Airflow with working learning rates: train (beats the champion's recall@K on the
   same holdout, promoted), embed (Spark), index (FAISS, an MLflow run), explore_candidates (ranker@champion),
   publish_explore (to a redis-server of this module's own).
The checks compare with values computed here from the bronze tables.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pyspark.sql import functions as F

from darkroom.airflow_env import last_dag_run, run_dag_test, task_return_value
from darkroom.redis_server import LocalRedisServer
from darkroom.settings import load_settings
from darkroom.tables import table
from darkroom.tracking import tracking_uri
from tests.model_sizes import TWO_TOWER

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
BATCH = "20261101T0000Z"
TT = TWO_TOWER
POOR = TT | {"learning_rate": 1e-7, "embedding_learning_rate": 1e-7}


def _settings(state, base, two_tower: dict, redis_url: str | None = None):
    return load_settings(
        state_dir=state,
        **({"redis_url": redis_url} if redis_url else {}),
        jars_path=base.jars_dir,
        spark=base.spark.model_dump(),
        world=base.world.model_dump(),
        ranker=base.ranker.model_dump(),
        two_tower=two_tower,
    )


@pytest.fixture(scope="module")
def tt_world(champion_world, tmp_path_factory, spark):
    from jobs.two_tower_examples.main import train_weekly

    base = champion_world.settings
    state = tmp_path_factory.mktemp("two-tower-state")
    shutil.copytree(base.lake_dir, state / "lake")
    shutil.copytree(base.mlflow_dir, state / "mlflow")  # the ranker champion (artifacts stay where they were logged)
    with LocalRedisServer(tmp_path_factory.mktemp("two-tower-redis")) as server:
        good, poor = _settings(state, base, TT, server.url), _settings(state, base, POOR)
        first = train_weekly(poor, AS_OF, spark=spark, progress=lambda *_: None)
        dag = run_dag_test(good, "two_tower_weekly", AS_OF.isoformat())
        yield {"good": good, "first": first, "dag": dag}


def _client(settings):
    from ml.registry import client

    return client(tracking_uri(settings))


def _read(spark, settings, name: str):
    return spark.read.format("delta").load(table(name).uri(settings))


def test_the_dag_trains_a_better_model_and_promotes_it(tt_world):
    s = tt_world["good"]
    assert tt_world["first"].promoted and tt_world["first"].version == "1"
    tasks = ("week_complete", "train", "embed", "index", "explore_candidates", "publish_explore")
    assert last_dag_run(s, "two_tower_weekly") == ("success", dict.fromkeys(tasks, "success")), tt_world["dag"].stdout[
        -3000:
    ]
    c = _client(s)
    name = s.two_tower.registered_model
    assert str(c.get_model_version_by_alias(name, "champion").version) == "2"
    version = c.get_model_version(name, "2")
    mlrun = c.get_run(version.tags["run_id"])
    m = mlrun.data.metrics
    # the challenger and the champion on the same holdout, the index and the popularity baseline beside them
    assert m["holdout_model_exact_recall_at_100"] > m["holdout_champion_exact_recall_at_100"]
    for retriever in ("model_exact", "model_index", "popularity", "champion_exact"):
        for k in (10, 50, 100):
            assert 0.0 <= m[f"holdout_{retriever}_recall_at_{k}"] <= 1.0
            assert 0.0 <= m[f"holdout_{retriever}_ndcg_at_{k}"] <= 1.0
        assert m[f"holdout_{retriever}_recall_at_10"] <= m[f"holdout_{retriever}_recall_at_100"]
    # the index keeps the model's recall within the floor of exact search
    assert m["index_recall_at_100"] >= s.two_tower.index_min_recall
    assert m["holdout_model_index_recall_at_100"] >= 0.9 * m["holdout_model_exact_recall_at_100"]
    assert mlrun.data.tags["gate_promoted"] == "true"
    assert "beats the champion's" in mlrun.data.tags["gate_reason"]
    artifacts = {a.path for a in c.list_artifacts(mlrun.info.run_id)}
    assert {"holdout_quality.csv", "index_sweep.png", "index_sweep.json", "training_curve.png"} <= artifacts
    curve = c.get_metric_history(mlrun.info.run_id, "sweep_queries_per_s")
    assert len(curve) >= 3  # flat, IVF and HNSW points
    spec = json.loads(version.tags["index_spec"])
    assert spec["kind"] in ("flat", "ivf_flat", "hnsw")


def test_embeddings_cover_the_live_posts_and_active_users_and_match_the_model(tt_world, spark):
    import pyarrow as pa

    from jobs.two_tower_examples.main import user_inputs
    from ml.two_tower.pipeline import load_encoder

    s = tt_world["good"]
    posts = _read(spark, s, "bronze.posts")
    live = posts.where(
        (F.col("created_at") >= F.lit(AS_OF - timedelta(days=s.two_tower.live_post_days)))
        & (F.col("created_at") < F.lit(AS_OF))
    )
    reads = _read(spark, s, "bronze.feed_reads")
    active = reads.where((F.col("ts") >= F.lit(AS_OF - timedelta(days=7))) & (F.col("ts") < F.lit(AS_OF)))
    items = _read(spark, s, "serving.item_embeddings").where(F.col("batch_id") == BATCH)
    users = _read(spark, s, "serving.user_embeddings").where(F.col("batch_id") == BATCH)
    assert sorted(r[0] for r in items.select("post_id").collect()) == sorted(
        r[0] for r in live.select("post_id").collect()
    )
    assert sorted(r[0] for r in users.select("user_id").collect()) == sorted(
        r[0] for r in active.select("user_id").distinct().collect()
    )
    assert {r[0] for r in items.select("model_version").distinct().collect()} == {"2"}
    # a few users' embeddings from Spark equal the registered model's on the driver
    sample = users.orderBy("user_id").limit(5).collect()
    inputs = user_inputs(spark, s, spark.createDataFrame([(r.user_id,) for r in sample], "user_id BIGINT"), AS_OF)
    table_ = pa.Table.from_pandas(inputs.orderBy("user_id").toPandas(), preserve_index=False)
    want = load_encoder("models:/two_tower/2").encode_users(table_)
    got = np.array([r.embedding for r in sample], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got.shape == (5, TT["output_dim"])


def test_the_index_is_an_mlflow_artifact_of_the_model_version(tt_world):
    from ml.two_tower.index import index_ids, load_index
    from ml.two_tower.pipeline import index_path

    s = tt_world["good"]
    c = _client(s)
    version = c.get_model_version(s.two_tower.registered_model, "2")
    run = c.get_run(version.tags["index_run_id"])
    assert run.data.tags["model_version"] == "2" and run.data.tags["batch_id"] == BATCH
    assert {a.path for a in c.list_artifacts(run.info.run_id, "index")} == {"index/items.faiss", "index/meta.json"}
    index = load_index(index_path(s, BATCH))
    assert index.ntotal == int(run.data.params["items"])
    assert len(set(index_ids(index).tolist())) == index.ntotal


def test_explore_candidates_honour_the_exclusions_and_the_ranker_order(tt_world, spark):
    s = tt_world["good"]
    cand = _read(spark, s, "serving.explore_candidates").where(F.col("batch_id") == BATCH)
    rows = cand.collect()
    assert rows, "no Explore candidates were written"
    posts = {r.post_id: r.author_id for r in _read(spark, s, "bronze.posts").collect()}
    follows = {
        (r.follower_id, r.followee_id)
        for r in _read(spark, s, "bronze.follows").where(F.col("created_at") < F.lit(AS_OF)).collect()
    }
    seen_since = AS_OF - timedelta(days=s.two_tower.seen_days)
    seen = {
        (r.viewer_id, r.post_id)
        for r in _read(spark, s, "bronze.impressions")
        .where((F.col("ts") >= F.lit(seen_since)) & (F.col("ts") < F.lit(AS_OF)))
        .select("viewer_id", "post_id")
        .collect()
    }
    by_user: dict[int, list] = {}
    for r in rows:
        author = posts[r.post_id]
        assert author != r.user_id, r
        assert (r.user_id, author) not in follows, r
        assert (r.user_id, r.post_id) not in seen, r
        assert r.model_version == "two_tower/2+ranker/" + r.model_version.rsplit("/", 1)[1]
        by_user.setdefault(r.user_id, []).append(r)
    for user_rows in by_user.values():
        user_rows.sort(key=lambda r: r.rank)
        assert [r.rank for r in user_rows] == list(range(1, len(user_rows) + 1))
        assert len(user_rows) <= TT["explore_size"]
        scores = [r.score for r in user_rows]
        assert scores == sorted(scores, reverse=True)
        assert len({r.post_id for r in user_rows}) == len(user_rows)


def test_the_explore_group_is_published_and_read_back(tt_world, spark):
    import redis

    from serving.readers import ExploreReader, ReaderConfig

    s = tt_world["good"]
    [published] = task_return_value(s, "two_tower_weekly", "publish_explore")
    assert (published["group"], published["state"], published["batch_id"]) == ("explore", "current", BATCH)
    stored = _read(spark, s, "serving.explore_candidates").where(F.col("batch_id") == BATCH).toPandas()
    users = _read(spark, s, "serving.user_embeddings").where(F.col("batch_id") == BATCH).toPandas()
    verified = published["verified"]
    assert verified["explore_candidates"]["keys"] == stored.user_id.nunique() > 0
    assert verified["explore_candidates"]["members"] == len(stored)
    assert verified["user_embeddings"]["keys"] == len(users)
    client = redis.Redis.from_url(s.redis_url)
    reader = ExploreReader(client, ReaderConfig.from_settings(s.serving))
    user = int(stored.groupby("user_id").size().sort_values(kind="stable").index[-1])
    page = reader.get_explore(user, limit=10)
    want = stored[stored.user_id == user].sort_values("score", ascending=False).head(10)
    assert page.version == published["version"]
    assert sorted(p.post_id for p in page.posts) == sorted(want.post_id)
    np.testing.assert_allclose([p.score for p in page.posts], want.score, rtol=1e-12)
    row = users.iloc[0]
    np.testing.assert_array_equal(reader.user_embedding(int(row.user_id)), np.asarray(row.embedding, dtype="<f4"))
    client.close()
