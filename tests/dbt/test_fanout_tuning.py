"""The fan-out tuning job on the tiny world's marts (beside the dbt tests to reuse their built world), with real
Spark, Delta, MLflow (SQLite store) and Redis: the four policies, the tables, the MLflow run, the replay against
the model, a re-run that changes nothing, a bad graph refused, and the DAG run for real."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest

from darkroom.airflow_env import last_dag_run, run_dag_test
from darkroom.settings import load_settings

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def fanout(dbt_world, tmp_path_factory, redis_server):
    state = tmp_path_factory.mktemp("fanout-state")
    shutil.copytree(dbt_world.settings.lake_dir, state / "lake")
    return load_settings(
        state_dir=state,
        jars_path=dbt_world.settings.jars_dir,
        spark=dbt_world.settings.spark.model_dump(),
        world=dbt_world.settings.world.model_dump(),
        redis_url=redis_server.url,
        # 30 s x 5 writes/s: accounts with more than 150 active followers must be pulled (the tiny world's largest
        # has ~320), so the freshness ceiling binds and T* mixes push and pull
        fanout={"read_budget_merges": 20, "fanout_writes_per_second": 5.0},
    )


@pytest.fixture(scope="module")
def tuned(fanout, spark):
    from jobs.fanout_threshold.main import tune

    return tune(fanout, AS_OF, spark)


def _rows(spark, settings, name: str) -> list[tuple]:
    from darkroom import lake
    from darkroom.tables import table

    return sorted(tuple(r) for r in lake.read(spark, table(name), settings).collect())


def test_four_policies_within_the_budgets(tuned, fanout, spark):
    from pyspark.sql import functions as F

    from darkroom import lake
    from darkroom.tables import table

    p = tuned.policies
    assert set(p) == {"pure_push", "pure_pull", "threshold", "per_author"}
    assert not tuned.budgets_conflict
    assert tuned.freshness_ceiling is not None
    assert tuned.read_floor <= tuned.threshold <= tuned.freshness_ceiling
    # T* is the cheapest threshold the budgets allow
    allowed = [r for r in tuned.curve if tuned.read_floor <= r["threshold"] <= tuned.freshness_ceiling]
    assert p["threshold"]["total_cost"] == min(r["total_cost"] for r in allowed)
    assert p["threshold"]["within_read_budget"] and p["threshold"]["fan_in_quantile"] <= 20
    assert p["per_author"]["within_read_budget"]
    assert p["pure_pull"]["writes"] == 0 and p["pure_push"]["merges"] == 0
    assert not p["pure_push"]["within_freshness"] and not p["pure_pull"]["within_read_budget"]
    assert p["threshold"]["within_freshness"] and p["per_author"]["within_freshness"]
    # pure push and pure pull, independently from the mart
    stats = lake.read(spark, table("marts.fct_author_fanout_stats"), fanout)
    row = stats.agg(
        F.sum(F.col("posts_per_day") * F.col("active_followers")).alias("w"),
        F.sum("follower_feed_reads_per_day").alias("r"),
        F.count("*").alias("n"),
    ).first()
    assert p["pure_push"]["writes"] == pytest.approx(row["w"])
    assert p["pure_pull"]["merges"] == pytest.approx(row["r"])
    assert p["pure_push"]["push_authors"] == row["n"] == p["pure_pull"]["pull_authors"]
    assert tuned.per_author_saving == pytest.approx(p["threshold"]["total_cost"] - p["per_author"]["total_cost"])


def test_tables_report_and_mlflow_run(tuned, fanout, spark):
    import mlflow

    from darkroom.tracking import tracking_uri

    policies = _rows(spark, fanout, "fanout.policies")
    assert sorted((r[0], r[1]) for r in policies) == [
        (tuned.version, n) for n in ("per_author", "pure_pull", "pure_push", "threshold")
    ]
    modes = _rows(spark, fanout, "fanout.author_modes")
    assert len(modes) == len({r[1] for r in modes}) > 0
    assert {r[6] for r in modes} == {"push", "pull"}  # threshold_mode: both modes occur on the tiny graph
    assert len(_rows(spark, fanout, "fanout.inactive_users")) == tuned.inactive_users > 0
    for f in ("cost_curve.png", "fan_in.png", "figures.json", "report.html"):
        assert (tuned.report_files["json"].parent / f).stat().st_size > 0
    client = mlflow.MlflowClient(tracking_uri(fanout))
    run = client.get_run(tuned.mlflow_run_id)
    assert run.data.metrics["threshold"] == tuned.threshold
    assert run.data.metrics["per_author.total_cost"] == pytest.approx(tuned.policies["per_author"]["total_cost"])
    assert run.data.params["write_cost"] == "1.0" and run.data.params["read_budget_merges"] == "20"
    assert {a.path for a in client.list_artifacts(tuned.mlflow_run_id)} >= {"cost_curve.png", "fan_in.png"}
    assert client.get_experiment(run.info.experiment_id).name == "fanout_policy"


def test_replay_agrees_with_the_model_within_five_percent(tuned, fanout, spark, redis_url):
    import mlflow

    from darkroom.tracking import tracking_uri
    from jobs.fanout_threshold.main import check_replay, validate_by_replay

    out = validate_by_replay(fanout, AS_OF, spark, redis_url=redis_url, mlflow_run_id=tuned.mlflow_run_id)
    assert set(out) == {"threshold", "pure_push", "pure_pull"}
    check_replay(out)
    assert out["pure_push"]["counts"]["merges"] == 0 and out["pure_push"]["counts"]["writes"] > 0
    assert out["pure_pull"]["counts"]["writes"] == 0 and out["pure_pull"]["counts"]["merges"] > 0
    assert out["threshold"]["counts"]["on_demand_reads"] == 0  # every reader of the day is active by definition
    metrics = mlflow.MlflowClient(tracking_uri(fanout)).get_run(tuned.mlflow_run_id).data.metrics
    assert metrics["replay.threshold.writes_error"] == out["threshold"]["error"]["writes"] <= 0.05


def test_a_rerun_leaves_the_same_rows(tuned, fanout, spark):
    from jobs.fanout_threshold.main import tune

    before = {n: _rows(spark, fanout, n) for n in ("fanout.policies", "fanout.author_modes", "fanout.inactive_users")}
    again = tune(fanout, AS_OF, spark, with_report=False, log_mlflow=False)
    assert again.version == tuned.version and again.threshold == tuned.threshold
    for n, rows in before.items():
        assert _rows(spark, fanout, n) == rows, n


def test_a_graph_with_a_self_follow_is_refused(fanout, spark, tmp_path):
    from darkroom import lake
    from darkroom.tables import table
    from jobs.fanout_threshold.main import FanoutInputError, tune

    bad = load_settings(
        state_dir=tmp_path,
        jars_path=fanout.jars_dir,
        spark=fanout.spark.model_dump(),
        world=fanout.world.model_dump(),
    )
    shutil.copytree(fanout.lake_dir, bad.lake_dir, ignore=shutil.ignore_patterns("fanout"))
    follows = table("bronze.follows")
    one = lake.read(spark, follows, bad).limit(1).collect()[0].asDict()
    loop = {**one, "followee_id": one["follower_id"]}
    spark.createDataFrame([loop], lake.read(spark, follows, bad).schema).write.format("delta").mode("append").save(
        follows.uri(bad)
    )
    with pytest.raises(FanoutInputError) as e:
        tune(bad, AS_OF, spark, with_report=False, log_mlflow=False)
    assert "bronze.follows" in str(
        e.value
    ) and f"self_follow: 1 (e.g. {one['follower_id']}->{one['follower_id']})" in str(e.value)
    assert not (bad.lake_dir / "fanout").exists()  # nothing written


@pytest.mark.heavy  # the suite's end-to-end test runs this DAG on its world and checks the same
def test_the_dag_tunes_and_validates_by_replay(fanout, tuned):
    """replay_validation is spark-submitted (connection spark_default, pool spark) with the run's as-of and the
    tuning's MLflow run id; its results are the replay's figures in that run and in replay.json."""
    import json
    import sqlite3

    import mlflow

    from darkroom.airflow_env import airflow_db_path, task_return_value
    from darkroom.tracking import tracking_uri
    from jobs.fanout_threshold.main import report_dir

    proc = run_dag_test(fanout, "fanout_threshold_tuning", "2026-11-01T00:00:00+00:00")
    assert proc.returncode == 0, proc.stdout[-5000:]
    state, tasks = last_dag_run(fanout, "fanout_threshold_tuning")
    assert state == "success"
    assert tasks == {"day_complete": "success", "fanout_threshold": "success", "replay_validation": "success"}
    run_id = task_return_value(fanout, "fanout_threshold_tuning", "fanout_threshold")["mlflow_run_id"]
    assert run_id != tuned.mlflow_run_id  # the DAG's own tuning run
    submit = [line for line in proc.stdout.splitlines() if "Spark-Submit cmd:" in line]
    assert len(submit) == 1, proc.stdout[-5000:]
    assert f"--master {fanout.spark.master} " in submit[0]
    assert (
        "jobs/fanout_threshold/main.py --as-of 2026-11-01T00:00:00+00:00 --replay-only --mlflow-run-id " + run_id
    ) in submit[0]
    metrics = mlflow.MlflowClient(tracking_uri(fanout)).get_run(run_id).data.metrics
    replay = json.loads((report_dir(fanout, tuned.version) / "replay.json").read_text())
    for name in ("threshold", "pure_push", "pure_pull"):
        for k in ("writes", "merges", "stored_entries"):
            assert metrics[f"replay.{name}.{k}_error"] == pytest.approx(replay[name]["error"][k])
            assert replay[name]["error"][k] <= 0.05
    with sqlite3.connect(airflow_db_path(fanout)) as db:
        assert db.execute("SELECT slots FROM slot_pool WHERE pool = 'spark'").fetchall() == [(1,)]
