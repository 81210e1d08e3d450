"""The storage jobs: thin entry points that read what they need with Spark and move bytes with ``blobstore``.

One function per job, named like its Airflow task and Spark app: ``blob_load``, ``ec_rewrite``, ``cold_archive``,
``story_expiry``, ``compaction``, ``blob_scrub``, ``blob_fsck``. The byte moves, their intents and crash safety
live in :mod:`blobstore.tiering` and :mod:`blobstore.maintenance`; these functions pick the media (from the tier
plan, from bronze) and distribute per-volume work over Spark (one task per volume).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from blobstore.content import media_bytes, stored_size
from blobstore.maintenance import compact, expire_stories, fsck, scrub
from blobstore.store import Blob, BlobStore, writer_lock
from blobstore.tiering import Runner, archive_to_cold, local_runner, promote_to_hot, resume_pending, rewrite_to_warm
from darkroom.settings import DarkroomSettings
from darkroom.tables import utc

log = logging.getLogger(__name__)

# Stories carry no size in bronze: their media is 200 KB - 2 MB before size_scale, seeded by the story id.
STORY_BYTES_MIN, STORY_BYTES_SPAN = 200_000, 1_800_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def spark_runner(spark) -> Runner:
    """Per-volume work as Spark tasks: one partition, so one task, per volume."""

    def run(fn, items):
        if not items:
            return []
        return spark.sparkContext.parallelize(list(items), len(items)).map(fn).collect()

    return run


def _progress(label: str, every: float = 10.0):
    start = last = time.monotonic()
    count = 0

    def tick(n: int = 1) -> None:
        nonlocal last, count
        count += n
        now = time.monotonic()
        if now - last >= every:
            last = now
            rate = count / (now - start)
            print(f"[{label}] {count:,} done, {rate:,.0f}/s", flush=True)

    return tick


def story_size(story_id: int, scale: float) -> int:
    return stored_size(STORY_BYTES_MIN + (story_id * 2654435761) % STORY_BYTES_SPAN, scale)


def blob_load(settings: DarkroomSettings, *, as_of: datetime | None = None, spark=None) -> dict:
    """Materialises bronze's media and stories (bytes from their seeds, size x ``blob.size_scale``) in hot volumes.

    Blobs already in the catalog are skipped, so a re-run (or a run after more ingest) stores only what is new.
    Only what was uploaded before ``as_of`` (default: the newest ``created_at``) is stored; a blob's catalog
    ``placed_at`` is its upload time (``created_at``), not this run's as-of, so the tier age dbt derives from it is
    the same whether the day's build ran before or after this load.
    """
    from pyspark.sql import functions as F

    from darkroom import lake
    from darkroom.spark import get_spark
    from darkroom.tables import table

    spark = spark or get_spark(settings, "blob_load")
    store = BlobStore(settings)
    store.catalog.ensure()
    media = lake.read(spark, table("bronze.media"), settings).select(
        F.col("media_id").alias("id"), F.lit("media").alias("kind"), "bytes", "content_seed", "created_at"
    )
    stories = lake.read(spark, table("bronze.stories"), settings).select(
        F.col("story_id").alias("id"),
        F.lit("story").alias("kind"),
        F.lit(None).cast("long").alias("bytes"),
        F.col("story_id").alias("content_seed"),
        "created_at",
    )
    if as_of is not None:
        media = media.where(F.col("created_at") < F.lit(as_of))
        stories = stories.where(F.col("created_at") < F.lit(as_of))
    # The upload time as epoch microseconds: a collected timestamp would come back naive in the local time zone.
    rows = media.unionByName(stories).orderBy("created_at", "id").withColumn("uploaded_us", F.unix_micros("created_at"))
    newest = rows.agg(F.max("created_at")).collect()[0][0]
    if newest is None:
        return {"written": 0}
    as_of = utc(as_of or newest)
    scale = settings.blob.size_scale
    tick = _progress("blob_load")

    def blobs() -> Iterator[Blob]:
        for r in rows.toLocalIterator(prefetchPartitions=True):
            size = stored_size(r["bytes"], scale) if r["kind"] == "media" else story_size(r["id"], scale)
            tick()
            yield Blob(
                r["id"],
                r["kind"],
                media_bytes(r["content_seed"], size),
                placed_at=EPOCH + timedelta(microseconds=r["uploaded_us"]),
            )

    t0 = time.monotonic()
    with writer_lock(settings.blob_root, job="blob_load"):
        written = store.put_hot(blobs(), as_of=as_of)
        store.catalog.sync_placement()
    out = {"written": written, "seconds": round(time.monotonic() - t0, 1), "as_of": as_of.isoformat()}
    log.info("blob_load: %s", out)
    return out


def _plan_ids(spark, settings: DarkroomSettings, plan_date: date, action: str) -> list[int]:
    from pyspark.sql import functions as F

    from jobs.tiering_plan.main import read_plan

    plan = read_plan(spark, settings, plan_date).where(F.col("action") == action).select("media_id")
    return [r[0] for r in plan.collect()]


def ec_rewrite(settings: DarkroomSettings, plan_date: date, *, spark=None, runner: Runner | None = None) -> dict:
    """The plan's hot -> warm moves (f4 rewrite, one Spark task per new volume) and warm -> hot promotions."""
    from darkroom.spark import get_spark
    from jobs.tiering_plan import transform as T

    spark = spark or get_spark(settings, "ec_rewrite")
    store = BlobStore(settings)
    store.catalog.ensure()
    as_of = _plan_as_of(plan_date)
    demote = _plan_ids(spark, settings, plan_date, T.DEMOTE_WARM)
    promote = _plan_ids(spark, settings, plan_date, T.PROMOTE_HOT)
    run = runner or spark_runner(spark)
    with writer_lock(settings.blob_root, job="ec_rewrite"):
        resumed = resume_pending(store, runner=run)
        warm = rewrite_to_warm(store, demote, as_of=as_of, run=plan_date.isoformat(), runner=run)
        promoted = promote_to_hot(store, promote, as_of=as_of)
    return {"resumed": resumed, "warm": warm, "promoted": promoted}


def cold_archive(settings: DarkroomSettings, plan_date: date, *, spark=None) -> dict:
    from darkroom.spark import get_spark
    from jobs.tiering_plan import transform as T

    spark = spark or get_spark(settings, "cold_archive")
    store = BlobStore(settings)
    store.catalog.ensure()
    ids = _plan_ids(spark, settings, plan_date, T.ARCHIVE_COLD)
    with writer_lock(settings.blob_root, job="cold_archive"):
        return archive_to_cold(store, ids, as_of=_plan_as_of(plan_date), run=plan_date.isoformat())


def _plan_as_of(plan_date: date) -> datetime:
    """A plan of day D is made as of D+1 00:00 UTC; its moves carry that time."""
    from datetime import timedelta

    return datetime.combine(plan_date + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


def story_expiry(settings: DarkroomSettings, as_of: datetime, *, spark=None) -> dict:
    from pyspark.sql import functions as F

    from darkroom import lake
    from darkroom.spark import get_spark
    from darkroom.tables import table

    spark = spark or get_spark(settings, "story_expiry")
    store = BlobStore(settings)
    store.catalog.ensure()
    rows = (
        lake.read(spark, table("bronze.stories"), settings)
        .where(F.col("created_at") < F.lit(as_of))
        .select("story_id", "created_at")
        .collect()
    )
    with writer_lock(settings.blob_root, job="story_expiry"):
        return expire_stories(store, [(r[0], utc(r[1])) for r in rows], as_of=utc(as_of))


def compaction(settings: DarkroomSettings, as_of: datetime) -> dict:
    store = BlobStore(settings)
    store.catalog.ensure()
    with writer_lock(settings.blob_root, job="compaction"):
        return compact(store, as_of=utc(as_of))


def blob_scrub(settings: DarkroomSettings, as_of: datetime, *, mb_per_s: float | None = None) -> dict:
    store = BlobStore(settings)
    store.catalog.ensure()
    tick = _progress("blob_scrub")
    with writer_lock(settings.blob_root, job="blob_scrub"):
        return scrub(store, as_of=utc(as_of), mb_per_s=mb_per_s, progress=lambda kind, unit: tick()).as_dict()


def blob_fsck(settings: DarkroomSettings, *, fix_temp: bool = False) -> list[str]:
    store = BlobStore(settings)
    store.catalog.ensure()
    if fix_temp:
        with writer_lock(settings.blob_root, job="blob_fsck"):
            pass  # taking the lock removes the temp files of killed writes
    return [d.line() for d in fsck(store)]


def apply_plan(settings: DarkroomSettings, as_of: datetime, *, spark=None) -> dict:
    """What ``darkroom tiering apply`` and the DAG do after the plan: validate, rewrite, archive, compact, fsck."""
    from darkroom.spark import get_spark
    from jobs.tiering_plan.main import plan_date_of, validate_plan

    spark = spark or get_spark(settings, "storage_tiering")
    plan_date = plan_date_of(as_of)
    t0 = time.monotonic()

    def step(name: str, result):
        print(f"[tiering apply {plan_date}] {name} done at +{time.monotonic() - t0:.0f}s: {result}", flush=True)
        return result

    planned = step("validate_plan", validate_plan(spark, settings, plan_date))
    out = {"plan_date": plan_date.isoformat(), "planned": planned}
    out["ec_rewrite"] = step("ec_rewrite", ec_rewrite(settings, plan_date, spark=spark))
    out["cold_archive"] = step("cold_archive", cold_archive(settings, plan_date, spark=spark))
    out["compaction"] = step("compaction", compaction(settings, as_of))
    out["fsck"] = step("blob_fsck", blob_fsck(settings))
    if out["fsck"]:
        n = len(out["fsck"])
        raise RuntimeError(f"blob fsck after the moves of {plan_date}: {n} differences: {out['fsck'][:5]}")
    return out


__all__ = [
    "apply_plan",
    "blob_fsck",
    "blob_load",
    "blob_scrub",
    "cold_archive",
    "compaction",
    "ec_rewrite",
    "local_runner",
    "story_expiry",
]


# --- entry points of the DAGs' tasks (darkroom.spark_task): the run's as-of in, the task's XCom out -----------------


def ec_rewrite_task(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``storage_tiering.ec_rewrite``: the moves to warm of the plan for the day before ``as_of``."""
    from jobs.tiering_plan.main import plan_date_of

    return ec_rewrite(settings, plan_date_of(as_of))


def cold_archive_task(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``storage_tiering.cold_archive``: the moves to cold of the plan for the day before ``as_of``."""
    from jobs.tiering_plan.main import plan_date_of

    return cold_archive(settings, plan_date_of(as_of))


def blob_fsck_task(settings: DarkroomSettings, *, as_of: datetime) -> int:
    """``storage_tiering.blob_fsck``: the catalog against the files; any difference fails the task."""
    differences = blob_fsck(settings)
    if differences:
        raise RuntimeError(f"blob fsck: {len(differences)} differences, e.g. {differences[:5]}")
    return 0


def blob_scrub_task(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``blob_scrub``: every replica and block read and checked, what can be repaired repaired, then fsck; an
    unrepairable blob or an fsck difference fails the task. Returns the scrub's report."""
    report = blob_scrub(settings, as_of)
    if report["unrepairable"]:
        raise RuntimeError(f"blob scrub: unrepairable: {report['unrepairable']}")
    blob_fsck_task(settings, as_of=as_of)
    return report


def story_expiry_task(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``story_expiry``: new stories (and media) stored hot, then stories past their 24 hours deleted."""
    loaded = blob_load(settings, as_of=as_of)
    return {"loaded": loaded, **story_expiry(settings, as_of)}
