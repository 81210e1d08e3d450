"""
### story_expiry: story media are deleted at TTL + grace (24 h + 1 h)

Runs when new stories are ingested (hourly). Loads new story media into hot volumes, then tombstones the media of
every story created at or before `as_of - 25 h` (the seed's background clean-up: 24 h TTL plus an hour's grace);
a story inside its grace period is never touched. Compaction (in `storage_tiering`) reclaims the space.
`as_of` is the triggering ingest's `data_interval_end`, else this run's own. Re-runs change nothing more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from dags._defaults import default_args, run_as_of
from dags._spark import task_settings
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
    @task(outlets=[MEDIA_LOCATIONS])
    def story_expiry_task() -> dict:
        from jobs.storage.main import blob_load, story_expiry

        settings = task_settings()
        as_of = run_as_of(get_current_context())
        loaded = blob_load(settings, as_of=as_of)
        return {"loaded": loaded, **story_expiry(settings, as_of)}

    story_expiry_task.override(task_id="story_expiry")()


story_expiry()
