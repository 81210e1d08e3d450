"""
### ranker_hourly: the champion fine-tuned on the last hour, promoted only when it wins

Runs when `fct_engagement_labels` is updated (hourly ingest, then dbt), and by the hour.

**finetune** (`darkroom ranker finetune`): loads `models:/ranker@champion`, trains it on the point-in-time training
set of the last `ranker.finetune_hours` of impressions with the learning rates scaled by
`ranker.finetune_lr_scale`, and evaluates it on the champion's own holdout (the same rows, read back from the
training set's Delta version by time travel). One MLflow run (tag `started_from` names the champion version), a
new registered version as `@challenger`, and the same gate as the weekly run.

Runs in pool `ranker_training` (one slot), shared with `ranker_weekly`: it never runs over a retrain. Without a
champion yet (before the first weekly run) the task fails saying so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag

from dags._defaults import default_args
from dags._spark import spark_task
from dags.assets import FCT_ENGAGEMENT_LABELS, RANKER_CHAMPION


@dag(
    dag_id="ranker_hourly",
    schedule=FCT_ENGAGEMENT_LABELS,
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "ml", "ranker"],
    default_args=default_args(execution_timeout=timedelta(minutes=50)),
)
def ranker_hourly():
    spark_task("finetune", "ml.ranker.pipeline:finetune_task", pool="ranker_training", outlets=[RANKER_CHAMPION])


ranker_hourly()
