"""
### story_expiry: story media are deleted at TTL + grace (24 h + 1 h)

Runs when new stories are ingested (hourly). Loads new story media into hot volumes, then tombstones the media of
every story created at or before `as_of - 25 h` (the seed's background clean-up: 24 h TTL plus an hour's grace);
a story inside its grace period is never touched. Compaction (in `storage_tiering`) reclaims the space.
`as_of` is the triggering ingest's `data_interval_end`, else this run's own. Re-runs change nothing more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag

from dags._defaults import default_args
from dags._spark import spark_task
from dags.assets import BRONZE_STORIES, MEDIA_LOCATIONS


@dag(
    dag_id="story_expiry",
    schedule=[BRONZE_STORIES],
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "storage", "stories"],
    default_args=default_args(execution_timeout=timedelta(minutes=30)),
)
def story_expiry():
    spark_task("story_expiry", "jobs.storage.main:story_expiry_task", outlets=[MEDIA_LOCATIONS])


story_expiry()
