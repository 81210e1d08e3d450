"""
### ingest: landing files into bronze through their data contracts

Every hour, each input dataset's landing file (or folder of part files) goes through its data contract
(`data_contracts/contracts/<dataset>.yml`) into its Delta table: bronze, or the oracle layer for `oracle`.
One task per dataset, `ingest_<dataset>`; a dataset runs after the datasets its contract references
(`users` before `follows` and `posts`, `posts` before `media` and `impressions`, `impressions` before `oracle`...).
Each task runs `jobs.ingest.main.ingest_dataset` (a Spark task, `dags/_spark.py`: spark-submitted by default).

**What a task does**

- **success**: the file was new; good rows were merged into the table, bad rows went to `quarantine.<dataset>`,
  the file was recorded in `meta.ingest_ledger`. The return value (XCom) is the ingest result: rows, good,
  quarantined per rule, table version, report path. The table's asset (`dags/assets.py`) gets an event.
- **skipped**: no landing data for the dataset, the dataset is not in `params.datasets`, or the ledger already
  holds this exact file (same checksum): nothing changed, so no asset event either. These are decided before any
  Spark starts (`jobs.ingest.main.ingest_precheck`, the ledger read with delta-rs when the lake is local), so an
  hour with nothing new submits no driver.
- **failed**: the file was refused (unreadable, wrong columns or types, a referenced table missing, or more bad
  rows than `ingest.max_bad_fraction`): nothing was written. The error names the file and the reason; the
  report link is in the message when there is one. Retries cannot help until a new file lands.

**Params**

- `landing_dir`: folder holding `<dataset>/` landing data; empty (the default) means the registry's landing
  folder, `<state_dir>/landing/<dataset>`.
- `datasets`: the datasets to ingest (default: all). A dataset left out is skipped; the others still run.

**Reports**: the great-expectations data docs for each validated file are under
`<state_dir>/reports/great_expectations` (the path is in each task's result and log line).

**Run it locally**: `airflow dags test ingest 2026-11-01 -c '{"landing_dir": "/path/to/landing"}'` in the
environment from `darkroom.airflow_env.airflow_env(settings)` (see `dags/README.md`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag

from dags._defaults import default_args
from dags._spark import spark_task
from dags.assets import ASSETS_BY_DATASET

DATASETS = list(ASSETS_BY_DATASET)

# Each dataset's task runs after the datasets its contract references (a test checks this against the contracts).
UPSTREAM: dict[str, list[str]] = {
    "users": [],
    "follows": ["users"],
    "posts": ["users"],
    "stories": ["users"],
    "dm_events": ["users"],
    "feed_reads": ["users"],
    "profile_visits": ["users"],
    "media": ["posts"],
    "impressions": ["users", "posts"],
    "story_views": ["stories", "users"],
    "media_access": ["media"],
    "oracle": ["impressions"],
}


@dag(
    dag_id="ingest",
    schedule="@hourly",
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "ingest", "bronze"],
    default_args=default_args(),
    params={
        "landing_dir": Param(
            "", type="string", description="folder with <dataset>/ landing data; empty: <state_dir>/landing"
        ),
        "datasets": Param(
            DATASETS,
            type="array",
            items={"type": "string", "enum": DATASETS},
            description="datasets to ingest; the others are skipped",
        ),
    },
)
def ingest():
    # A skipped upstream (no new file) must not skip its dependants; a failed one stops them.
    tasks = {
        name: spark_task(
            f"ingest_{name}",
            "jobs.ingest.main:ingest_dataset",
            precheck="jobs.ingest.main:ingest_precheck",  # a skip needs no driver JVM
            op_kwargs={"dataset": name},
            context_kwargs=("params", "run_id"),
            outlets=[ASSETS_BY_DATASET[name]],
            interval_end_extra=True,  # consumers (dbt_build) compute their windows as of this data's interval end
            execution_timeout=timedelta(minutes=45),
            trigger_rule="none_failed",
        )
        for name in DATASETS
    }
    for name, upstream in UPSTREAM.items():
        for up in upstream:
            tasks[up] >> tasks[name]


ingest()
