"""The ranker's weekly retrain, hourly fine-tune and champion gate on the tiny world: real Spark, Delta, MLflow
(SQLite) and Airflow (``airflow dags test``).

One sequence on a copy of the dbt world's lake, with tiny model dimensions:
1. a deliberately poor weekly model (learning rates of 1e-7, one epoch): the first model, so it becomes champion;
2. ``ranker_weekly`` through Airflow with working learning rates: a better challenger, promoted;
3. the poor model again: a worse challenger, not promoted;
4. ``ranker_hourly`` through Airflow: the champion fine-tuned on the next hour, judged on the champion's holdout.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pandas as pd
import pytest

from darkroom.airflow_env import last_dag_run, run_dag_test
from darkroom.settings import load_settings
from darkroom.tracking import tracking_uri
from tests.model_sizes import RANKER

pytestmark = pytest.mark.integration

WEEK_AS_OF = datetime(2026, 10, 31, tzinfo=UTC)
HOUR_AS_OF = datetime(2026, 10, 31, 1, tzinfo=UTC)
TINY = RANKER | {"epochs": 2}
POOR = TINY | {"epochs": 1, "learning_rate": 1e-7, "embedding_learning_rate": 1e-7}


def _settings(state, base, ranker: dict):
    return load_settings(
        state_dir=state,
        jars_path=base.jars_dir,
        spark=base.spark.model_dump(),
        world=base.world.model_dump(),
        ranker=ranker,
    )


@pytest.fixture(scope="module")
def ranker_world(dbt_world, tmp_path_factory, spark):
    from ml.ranker.pipeline import retrain

    state = tmp_path_factory.mktemp("ranker-state")
    shutil.copytree(dbt_world.settings.lake_dir, state / "lake")
    good = _settings(state, dbt_world.settings, TINY)
    poor = _settings(state, dbt_world.settings, POOR)
    first = retrain(poor, WEEK_AS_OF, spark=spark, with_baselines=False)
    weekly = run_dag_test(good, "ranker_weekly", WEEK_AS_OF.isoformat())
    worse = retrain(poor, WEEK_AS_OF, spark=spark, with_baselines=False)
    hourly = run_dag_test(good, "ranker_hourly", HOUR_AS_OF.isoformat())
    return {"good": good, "first": first, "weekly": weekly, "worse": worse, "hourly": hourly}


def _client(settings):
    from ml.registry import client

    return client(tracking_uri(settings))


def _run_of_version(settings, version: str):
    c = _client(settings)
    return c.get_run(c.get_model_version(settings.ranker.registered_model, version).tags["run_id"])


def test_the_first_model_becomes_champion_and_its_run_is_complete(ranker_world):
    first, settings = ranker_world["first"], ranker_world["good"]
    assert first.decision.promote and "no champion" in first.decision.reason
    assert first.version == "1"
    run = _run_of_version(settings, "1")
    assert run.data.params["ranker.embedding_dim"] == "8" and run.data.params["kind"] == "weekly"
    tags = run.data.tags
    assert tags["feature_service"] == "ranker_v1" and tags["training_set_table"] == "features.training_set_ranker_v1"
    assert int(tags["training_set_version"]) >= 0
    assert tags["holdout_window"] == "2026-10-30T00:00:00+00:00/2026-10-31T00:00:00+00:00"
    c = _client(settings)
    history = c.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [0]  # one epoch (numbered from 0), logged with its step
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"gate.json", "holdout_quality.csv", "training_curves.png", "calibration.png"} <= artifacts
    # the model is logged with a signature naming the feature columns and the seven heads' outputs
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(settings))
    info = mlflow.models.get_model_info(f"models:/{settings.ranker.registered_model}/1")
    inputs = {i.name for i in info.signature.inputs.inputs}
    outputs = {o.name for o in info.signature.outputs.inputs}
    assert {"viewer_id", "post_id", "author_id"} <= inputs and "viewer__followers" in inputs
    assert outputs == {f"p_{h}" for h in ("like", "comment", "save", "share", "follow", "hide", "dwell")} | {
        "value_score"
    }


def test_the_weekly_dag_promotes_a_better_model_with_baselines_and_oracle(ranker_world):
    settings, proc = ranker_world["good"], ranker_world["weekly"]
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert last_dag_run(settings, "ranker_weekly") == ("success", {"week_complete": "success", "retrain": "success"})
    run = _run_of_version(settings, "2")
    assert run.data.tags["gate_promoted"] == "true", run.data.tags["gate_reason"]
    assert run.data.metrics["gate_challenger_value_ne"] < run.data.metrics["gate_champion_value_ne"]
    c = _client(settings)
    local = c.download_artifacts(run.info.run_id, "holdout_quality.csv")
    table = pd.read_csv(local, index_col=0)
    assert {"model", "champion", "logistic", "lightgbm", "oracle"} <= set(table.columns)
    # the trained model ranks likes far better than chance, and the oracle bounds every model
    assert table.loc["auc_like", "model"] > 0.6
    assert table.loc["auc_like", "oracle"] >= table.loc["auc_like", "model"] - 0.02


def test_a_worse_challenger_is_not_promoted(ranker_world):
    from ml import registry as R

    worse, settings = ranker_world["worse"], ranker_world["good"]
    assert not worse.decision.promote
    assert worse.decision.challenger_value_ne > worse.decision.champion_value_ne
    c = _client(settings)
    assert R.alias_version(c, settings.ranker.registered_model, R.CHALLENGER) in {worse.version, "4"}
    run = _run_of_version(settings, worse.version)
    assert run.data.tags["gate_promoted"] == "false" and "not promoted" in run.data.tags["gate_reason"]


def test_the_hourly_dag_fine_tunes_the_champion_on_its_own_holdout(ranker_world):
    settings, proc = ranker_world["good"], ranker_world["hourly"]
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert last_dag_run(settings, "ranker_hourly") == ("success", {"finetune": "success"})
    c = _client(settings)
    versions = sorted(int(v.version) for v in c.search_model_versions(f"name='{settings.ranker.registered_model}'"))
    assert versions == [1, 2, 3, 4]
    tuned, champion = _run_of_version(settings, "4"), _run_of_version(settings, "2")
    # checked, not assumed: the fine-tune's starting weights are the champion's final weights
    assert tuned.data.tags["initial_state_fingerprint"] == champion.data.tags["state_fingerprint"]
    assert tuned.data.tags["started_from"] == "champion version 2" and tuned.data.params["kind"] == "hourly"
    assert tuned.data.tags["holdout_window"] == champion.data.tags["holdout_window"]
    assert tuned.data.tags["training_window"] == "2026-10-31T00:00:00+00:00/2026-10-31T01:00:00+00:00"
    assert tuned.data.tags["gate_promoted"] in {"true", "false"} and tuned.data.tags["gate_reason"]


def test_rollback_and_promotion_by_hand(ranker_world):
    from ml import registry as R
    from ml.ranker.pipeline import promote_version, rollback

    settings = ranker_world["good"]
    c = _client(settings)
    name = settings.ranker.registered_model
    current = R.alias_version(c, name, R.CHAMPION)
    before, after = rollback(settings)
    assert before == current and R.alias_version(c, name, R.CHAMPION) == after != current
    assert promote_version(settings, current) == after
    assert R.alias_version(c, name, R.CHAMPION) == current


def test_the_champion_loads_as_a_pyfunc_and_scores(ranker_world, spark):
    import mlflow

    from feature_store.offline import training_set_files

    settings = ranker_world["good"]
    mlflow.set_tracking_uri(tracking_uri(settings))
    model = mlflow.pyfunc.load_model(f"models:/{settings.ranker.registered_model}@champion")
    import pyarrow.parquet as pq

    from feature_store.definitions import get_service
    from ml.ranker.inference import load_registered, scoring_frame

    files = training_set_files(settings, get_service("ranker_v1"), ranker_world["worse"].training_set_version)
    spec = load_registered(f"models:/{settings.ranker.registered_model}@champion").spec
    rows = scoring_frame(pq.read_table(files[0]).slice(0, 50), spec)
    assert rows.isna().any().any()  # missing features (NaN) go through the signature's checks
    scores = model.predict(rows)
    assert len(scores) == len(rows)
    assert ((scores["p_like"] > 0) & (scores["p_like"] < 1)).all()
    weights = settings.ranker.value_weights
    expected = sum(w * scores[f"p_{h}"] for h, w in weights.items())
    assert (scores["value_score"] - expected).abs().max() < 1e-5
