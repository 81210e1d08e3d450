"""
### ranker_weekly: a fresh multi-task feed ranker every week, promoted only when it wins

Runs when `fct_engagement_labels` is rebuilt, once a week (the run whose as-of is Monday 00:00 UTC; a manual run
or `airflow dags test ranker_weekly 2026-11-02` uses its own logical date).

**retrain** (`darkroom ranker retrain`): the point-in-time training set of the last `ranker.train_days` days
(feature service `ranker.feature_service`, written to `features.training_set_<service>`), an MMoE with seven heads
(like, comment, save, share, follow, hide, dwell > 10 s) trained on all days but the last, evaluated on the last
day against logistic regression, LightGBM and the world's oracle. One MLflow run in experiment `ranker` (params,
per-epoch metrics, the per-head table, training curves, calibration plots, the model with signature), a new
registered version as `@challenger`, and the gate: `@champion` moves only when the value-weighted normalized
entropy beats the champion's by `ranker.gate.margin` on the same holdout and no head regresses beyond
`ranker.gate.head_tolerance`. The decision and its numbers are on the run (`gate.json`, tags `gate_*`).

Runs in pool `ranker_training` (one slot), shared with `ranker_hourly`: a fine-tune never runs over a retrain.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from dags._defaults import default_args
from dags._defaults import week_complete as is_week_complete
from dags._spark import spark_task
from dags.assets import FCT_ENGAGEMENT_LABELS, RANKER_CHAMPION


@dag(
    dag_id="ranker_weekly",
    schedule=FCT_ENGAGEMENT_LABELS,
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "ml", "ranker"],
    default_args=default_args(execution_timeout=timedelta(hours=3)),
)
def ranker_weekly():
    @task.short_circuit
    def week_complete() -> bool:
        """Skips the run unless its as-of is Monday 00:00 UTC (or the run was started by hand)."""
        return is_week_complete(get_current_context())

    retrain = spark_task(
        "retrain", "ml.ranker.pipeline:retrain_task", pool="ranker_training", outlets=[RANKER_CHAMPION]
    )

    week_complete() >> retrain


ranker_weekly()
