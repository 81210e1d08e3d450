"""
### dbt_build: bronze -> staging -> intermediate -> marts, tested

Runs the dbt project (`dbt/`) with `dbt build`: every model, its unit tests and its data tests, in lineage order,
on darkroom's Spark with Delta (`darkroom.dbt_runner.build`, a Spark task: spark-submitted by default, its
driver starting its session with dbt's catalog and running dbt on it). Scheduled on the bronze assets: a run starts when
any bronze table got new data, and each mart's asset (`dags/assets.py`) gets an event when the build passes.

**The run's as-of.** Every window in the marts (reads in the last 7 days, access rates over 1/7/30/90 days,
live stories, decay) ends at the run's *as-of*, never at the wall clock: the latest `data_interval_end` among
the bronze asset events that triggered the run (the ingest DAG puts it in each event), else this run's own
data interval end (a manual run or `airflow dags test dbt_build 2026-11-01`), else its logical date.

**What the task does**

- **success**: all models built and all tests passed; the return value (XCom) is the summary: as-of, counts
  per node type and status, elapsed seconds. dbt's own per-model lines are in the task log.
- **failed**: a model errored or a test failed. The error lists every failed node by name and dbt's message
  (for a failing data test, its failing-row count); nodes downstream of it were skipped and their marts keep
  their previous version (Delta: a failed statement writes nothing). Retries help with transient failures
  (a lost executor); a failing test needs its data fixed.

Incremental models re-state the last `dbt.lookback_days` days (settings), so a retried or re-run interval
produces the same rows.

**Params**

- `select`: a dbt selection (`marts`, `+dim_media_tiering`...); empty: the whole project.
- `exclude`: a dbt exclusion applied after `select` (`staging`: leave the staging views and their tests alone,
  when bronze has not changed since the build that tested them); empty: nothing excluded.
- `full_refresh`: rebuild incremental models from scratch (same rows as incremental runs, more time).

**Why one task, not one per model (astronomer-cosmos)**: with dbt-spark's `session` method each Airflow task
would start its own Spark JVM (about 20 s here, for models that take 1-5 s), and the catalog's embedded
metastore allows one process at a time. One task keeps one session for the whole build; the task log and the
returned summary name every model and test.

**Run it by hand**: `darkroom dbt build [--select ...] [--as-of ...]` does the same outside Airflow.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetAny, Param, dag

from dags._defaults import default_args
from dags._spark import spark_task
from dags.assets import ASSETS_BY_DATASET, MART_ASSETS

BRONZE_ASSETS = [a for a in ASSETS_BY_DATASET.values() if a.name.startswith("bronze.")]


@dag(
    dag_id="dbt_build",
    schedule=AssetAny(*BRONZE_ASSETS),
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "dbt", "marts"],
    default_args=default_args(),
    params={
        "select": Param("", type="string", description="dbt selection; empty: the whole project"),
        "exclude": Param("", type="string", description="dbt exclusion after select; empty: nothing excluded"),
        "full_refresh": Param(False, type="boolean", description="rebuild incremental models from scratch"),
    },
)
def dbt_build():
    spark_task(
        "build",
        "darkroom.dbt_runner:build",
        context_kwargs=("params",),
        outlets=list(MART_ASSETS.values()),
        interval_end_extra=True,
        dbt_session=True,
        execution_timeout=timedelta(hours=2),
    )


dbt_build()
