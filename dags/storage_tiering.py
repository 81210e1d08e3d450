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

Every step after `day_complete` is a Spark task (`dags/_spark.py`): spark-submitted on the `spark_default`
connection by default, its return value (figures, counts) the task's XCom.

A run killed anywhere (a lost worker, a SIGKILL) is finished by its retry: each move keeps a durable intent
(`<blobs>/_intents/`) and resumes it. Storage jobs take the blob store's writer lock, one at a time.

**Outlets**: `blob_catalog.tier_decisions`, `blob_catalog.media_locations`, `meta.media_placement` (which the
next `dbt_build` reads as each media's current tier).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from dags._defaults import default_args, run_as_of
from dags._spark import spark_task
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

    blob_load = spark_task("blob_load", "jobs.storage.main:blob_load")
    tiering_plan = spark_task("tiering_plan", "jobs.tiering_plan.main:tiering_plan", outlets=[TIER_DECISIONS])
    validate_plan = spark_task("validate_plan", "jobs.tiering_plan.main:validate_plan_task")
    moved = [MEDIA_LOCATIONS, MEDIA_PLACEMENT]
    ec_rewrite = spark_task("ec_rewrite", "jobs.storage.main:ec_rewrite_task", outlets=moved)
    cold_archive = spark_task("cold_archive", "jobs.storage.main:cold_archive_task", outlets=moved)
    compaction = spark_task("compaction", "jobs.storage.main:compaction")
    blob_fsck = spark_task("blob_fsck", "jobs.storage.main:blob_fsck_task")

    (
        day_complete()
        >> blob_load
        >> tiering_plan
        >> validate_plan
        >> ec_rewrite
        >> cold_archive
        >> compaction
        >> blob_fsck
    )


storage_tiering()
