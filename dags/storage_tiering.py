"""
### storage_tiering: photo blobs move hot -> warm -> cold by the seed's policy, once a day

Runs when `dim_media_tiering` is rebuilt, and does the day's work once the marts cover a whole day (the
triggering event's `data_interval_end` is midnight UTC; a manual run or `airflow dags test storage_tiering
2026-11-01` uses its own logical date). Every step can be re-run and ends in the same files and catalog rows.

1. **blob_load**: media and stories that bronze has and the blob store does not yet are written to hot
   (Haystack) volumes, 3 replicas on 3 racks.
2. **tiering_plan**: every media's target tier from `dim_media_tiering` (last 7 days hot; > 10 reads/day stays
   hot; < 1 read/week -> warm; no read for 90 days -> cold; hysteresis), written to
   `blob_catalog.tier_decisions` with a reason per media and a dry-run report (bytes per tier before/after,
   effective replication, cost) under `<state>/reports/tiering/<day>/`.
3. **validate_plan**: the plan against its contract (known media, allowed transitions, one row per media);
   a broken plan fails here, before any byte moves, naming the media.
4. **ec_rewrite**: media chosen for warm are packed into new volumes, RS(10,4)-encoded into 14 blocks on 14
   racks, verified, committed, XOR-paired across regions, and only then their hot needles are tombstoned.
   One Spark task per new volume. Warm media read hot again are promoted back.
5. **cold_archive**: media chosen for cold are packed (zstd) into two regions, verified, committed, released.
6. **compaction**: sealed hot volumes with enough tombstones are rewritten without them.
7. **blob_fsck**: the catalog against the files; any difference fails the run.

A run killed anywhere (a lost worker, a SIGKILL) is finished by its retry: each move keeps a durable intent
(`<blobs>/_intents/`) and resumes it. Storage jobs take the blob store's writer lock, one at a time.

**Outlets**: `blob_catalog.tier_decisions`, `blob_catalog.media_locations`, `meta.media_placement` (which the
next `dbt_build` reads as each media's current tier).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from dags._defaults import default_args, run_as_of
from dags._spark import task_settings
from dags.assets import DIM_MEDIA_TIERING, MEDIA_LOCATIONS, MEDIA_PLACEMENT, TIER_DECISIONS


@dag(
    dag_id="storage_tiering",
    schedule=[DIM_MEDIA_TIERING],
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "storage", "tiering"],
    default_args=default_args(execution_timeout=timedelta(hours=2)),
)
def storage_tiering():
    @task.short_circuit
    def day_complete() -> bool:
        """Skips the run unless its as-of is midnight UTC: the day's marts are complete, tiering runs once a day."""
        as_of = run_as_of(get_current_context())
        return as_of.time() == datetime.min.time()

    @task
    def blob_load() -> dict:
        from jobs.storage.main import blob_load as run

        return run(task_settings(), as_of=run_as_of(get_current_context()))

    @task(outlets=[TIER_DECISIONS])
    def tiering_plan() -> dict:
        from jobs.tiering_plan.main import plan

        return plan(task_settings(), run_as_of(get_current_context())).figures

    @task
    def validate_plan() -> int:
        from darkroom.spark import get_spark
        from jobs.tiering_plan.main import plan_date_of
        from jobs.tiering_plan.main import validate_plan as validate

        settings = task_settings()
        return validate(get_spark(settings, "validate_plan"), settings, plan_date_of(run_as_of(get_current_context())))

    @task(outlets=[MEDIA_LOCATIONS, MEDIA_PLACEMENT])
    def ec_rewrite() -> dict:
        from jobs.storage.main import ec_rewrite as run
        from jobs.tiering_plan.main import plan_date_of

        return run(task_settings(), plan_date_of(run_as_of(get_current_context())))

    @task(outlets=[MEDIA_LOCATIONS, MEDIA_PLACEMENT])
    def cold_archive() -> dict:
        from jobs.storage.main import cold_archive as run
        from jobs.tiering_plan.main import plan_date_of

        return run(task_settings(), plan_date_of(run_as_of(get_current_context())))

    @task
    def compaction() -> dict:
        from jobs.storage.main import compaction as run

        return run(task_settings(), run_as_of(get_current_context()))

    @task
    def blob_fsck() -> int:
        from jobs.storage.main import blob_fsck as run

        differences = run(task_settings())
        if differences:
            raise RuntimeError(f"blob fsck: {len(differences)} differences, e.g. {differences[:5]}")
        return 0

    (
        day_complete()
        >> blob_load()
        >> tiering_plan()
        >> validate_plan()
        >> ec_rewrite()
        >> cold_archive()
        >> compaction()
        >> blob_fsck()
    )


storage_tiering()
