"""
### blob_scrub: read every byte of the blob store, weekly, and repair what is lost or corrupt

Reads every hot replica, warm block, XOR block and cold pack copy at `blob.scrub_mb_per_s`, checks every checksum,
and repairs: a hot replica from the others, warm blocks from any 10 of 14 (or from the XOR partner when a whole
cell is lost), XOR blocks from their two volumes, a pack copy from the other region. The task's return value
(XCom) is the report: what was found, what was repaired; anything unrepairable fails the task, and the volume is
marked `lost` in the catalog. Then `blob fsck` compares the catalog with the files.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag

from dags._defaults import default_args
from dags._spark import spark_task
from dags.assets import MEDIA_LOCATIONS


@dag(
    dag_id="blob_scrub",
    schedule="@weekly",
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "storage", "scrub"],
    default_args=default_args(execution_timeout=timedelta(hours=6)),
)
def blob_scrub():
    spark_task("blob_scrub", "jobs.storage.main:blob_scrub_task", outlets=[MEDIA_LOCATIONS])


blob_scrub()
