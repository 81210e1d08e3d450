"""
### fanout_threshold_tuning: the follower threshold of the hybrid fan-out, from the real graph, once a day

Runs when `fct_author_fanout_stats` and `fct_user_read_activity` are rebuilt, and does the day's work once the
marts cover a whole day (the triggering event's `data_interval_end` is midnight UTC; a manual run or
`airflow dags test fanout_threshold_tuning 2026-11-01` uses its own logical date).

1. **fanout_threshold**: the cost of every threshold T (authors with at most T followers are pushed: one
   timeline write per post and active follower; the others are merged at read time by every feed read of
   their followers; timelines hold at most 800 entries) in one pass over the graph, within two budgets: the
   p99 of pull authors merged per feed read (`fanout.read_budget_merges`) and freshness (a pushed post reaches
   its active followers within 30 s at `fanout.fanout_writes_per_second`). Writes four policies (pure push,
   pure pull, T*, the per-author rule) to `fanout.policies`, each author's mode to `fanout.author_modes`, the
   inactive users to `fanout.inactive_users` (one version per day, replaced on a re-run), a report (cost curve
   and fan-in PNGs) under `<state>/reports/fanout/<version>/`, and an MLflow run in experiment `fanout_policy`.
2. **replay_validation** (`spark-submit jobs/fanout_threshold/main.py --as-of T --replay-only --mlflow-run-id R`,
   connection `spark_default`, pool `spark`): the last day's posts and feed reads replayed through Redis
   (`settings.redis_url`, keys under `replay:`) under T*, pure push and pure pull; writes, merges and stored entries
   counted there must agree with the model within 5%, or the job exits non-zero naming the figure and the task
   fails. The errors go to the tuning's MLflow run (R, from `fanout_threshold`'s XCom) and `replay.json` beside the
   report.

**Outlets**: `fanout.policies`, `fanout.author_modes`, `fanout.inactive_users` (the serving publisher turns them
into `config:fanout`, `user:{id}:pull_authors` and `celebrity:{id}:posts`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from dags._defaults import default_args, run_as_of
from dags._spark import spark_submit_task, spark_task
from dags.assets import (
    FANOUT_AUTHOR_MODES,
    FANOUT_INACTIVE_USERS,
    FANOUT_POLICIES,
    FCT_AUTHOR_FANOUT_STATS,
    FCT_USER_READ_ACTIVITY,
)


@dag(
    dag_id="fanout_threshold_tuning",
    schedule=(FCT_AUTHOR_FANOUT_STATS & FCT_USER_READ_ACTIVITY),
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "feed", "fanout"],
    default_args=default_args(execution_timeout=timedelta(hours=1)),
)
def fanout_threshold_tuning():
    @task.short_circuit
    def day_complete() -> bool:
        """Skips the run unless its as-of is midnight UTC: the policy is tuned once a day, on whole days."""
        return run_as_of(get_current_context()).time() == datetime.min.time()

    tuned = spark_task(
        "fanout_threshold",
        "jobs.fanout_threshold.main:fanout_threshold",
        outlets=[FANOUT_POLICIES, FANOUT_AUTHOR_MODES, FANOUT_INACTIVE_USERS],
        interval_end_extra=True,
    )

    replay_validation = spark_submit_task(
        "replay_validation",
        "jobs.fanout_threshold.main",
        ["--replay-only", "--mlflow-run-id", "{{ ti.xcom_pull(task_ids='fanout_threshold')['mlflow_run_id'] }}"],
    )

    day_complete() >> tuned >> replay_validation


fanout_threshold_tuning()
