"""``generate``: write the seeded synthetic world as one Parquet folder per landing dataset.

    python -m jobs.generate.main --scale tiny --seed 7 [--days 21] [--out DIR] [--only users,follows]

The world ends at ``settings.world.end``; ``days`` of event logs end there. Output goes to the registry's landing
paths (``table("landing.<name>").path(settings)``) unless ``out_dir`` is given, in which case to ``out_dir/<name>``.
Each folder is overwritten. The internal frames that several datasets derive from (follow edges, posts, media,
stories, impressions) are persisted for the run and released at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC
from pathlib import Path

from darkroom.settings import DarkroomSettings, load_settings
from darkroom.spark import get_spark
from darkroom.tables import table
from jobs.generate import transform as T

APP_NAME = "generate"
DATASETS: tuple[str, ...] = (
    "users",
    "follows",
    "posts",
    "media",
    "media_access",
    "feed_reads",
    "impressions",
    "oracle",
    "stories",
    "story_views",
    "profile_visits",
    "dm_events",
)
# What each dataset is derived from (internal frames), so a partial run builds only what it needs.
_NEEDS: dict[str, set[str]] = {
    "follows": {"edges"},
    "posts": {"posts"},
    "media": {"media"},
    "media_access": {"media"},
    "impressions": {"edges", "posts", "impressions"},
    "oracle": {"edges", "posts", "impressions"},
    "stories": {"stories"},
    "story_views": {"edges", "stories"},
    "profile_visits": {"edges"},
    "dm_events": {"edges"},
}


# Set for the run and restored after: cached frames are read a few times only, so compressing them costs more than
# it saves; timestamps are written as standard INT64 microseconds rather than legacy INT96.
_SESSION_CONF = {
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def _persist(df):
    from pyspark import StorageLevel

    return df.persist(StorageLevel.MEMORY_AND_DISK)


def generate(
    settings: DarkroomSettings,
    *,
    scale: str,
    seed: int,
    days: int | None,
    out_dir: Path | None,
    spark=None,
    datasets: Iterable[str] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, int]:
    """Generate the world and return rows written per dataset (in write order); ``datasets`` limits what is written."""
    wanted = tuple(DATASETS if datasets is None else datasets)
    unknown = sorted(set(wanted) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}")
    world = T.make_world(scale, seed, days, settings.world.end)
    spark = spark or get_spark(settings, APP_NAME)
    needs = set().union(*[_NEEDS.get(d, set()) for d in wanted])

    def path(name: str) -> Path:
        return Path(out_dir) / name if out_dir is not None else table(f"landing.{name}").path(settings)

    counts: dict[str, int] = {}
    started = time.perf_counter()
    print(
        f"generate: scale={scale} seed={seed} days={world.days} users={world.n:,} "
        f"window {_iso(world.start_ms)} .. {_iso(world.end_ms)}",
        flush=True,
    )

    def write(name: str, build: Callable[[], object]) -> None:
        if name not in wanted:
            return
        t0 = time.perf_counter()
        target = path(name)
        # Ids are high-cardinality: dictionary pages cost time and save little.
        build().write.mode("overwrite").option("parquet.enable.dictionary", "false").parquet(str(target))
        rows = _parquet_rows(target)
        secs = time.perf_counter() - t0
        counts[name] = rows
        if timings is not None:
            timings[name] = secs
        print(f"  {name:<15} {rows:>12,} rows {secs:7.1f}s {rows / max(secs, 1e-9):>12,.0f} rows/s", flush=True)

    n_parts = max(spark.sparkContext.defaultParallelism, world.n // 50_000)
    users_df = T.users_frame(spark.range(0, world.n, numPartitions=n_parts).withColumnRenamed("id", "idx"), world=world)
    cached = []

    def keep(df):
        cached.append(_persist(df))
        return cached[-1]

    saved_conf = {k: spark.conf.get(k, None) for k in _SESSION_CONF}
    for k, v in _SESSION_CONF.items():
        spark.conf.set(k, v)
    try:
        write("users", lambda: T.users(users_df))
        edges = keep(T.follow_edges(users_df, world=world)) if "edges" in needs else None
        write("follows", lambda: T.follows(edges, world=world))
        posts_df = keep(T.posts_frame(users_df, world=world)) if needs & {"posts", "media"} else None
        write("posts", lambda: T.posts(posts_df))
        media_df = keep(T.media_frame(posts_df, world=world)) if "media" in needs else None
        write("media", lambda: T.media(media_df))
        write("media_access", lambda: T.media_access(media_df, world=world))
        write("feed_reads", lambda: T.feed_reads(users_df, world=world))
        if "impressions" in needs:
            reads = keep(T.logged_reads(users_df, world=world))
            imp_df = keep(T.impressions_frame(reads, users_df, edges, posts_df, world=world))
        write("impressions", lambda: T.impressions(imp_df))
        write("oracle", lambda: T.oracle(imp_df))
        stories_df = keep(T.stories_frame(users_df, world=world)) if "stories" in needs else None
        write("stories", lambda: T.stories(stories_df, world=world))
        write("story_views", lambda: T.story_views(edges, stories_df, world=world))
        write("profile_visits", lambda: T.profile_visits(edges, world=world))
        write("dm_events", lambda: T.dm_events(edges, world=world))
    finally:
        for df in cached:
            df.unpersist()
        for k, v in saved_conf.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)
    total = sum(counts.values())
    secs = time.perf_counter() - started
    print(f"generate: {total:,} rows in {secs:.1f}s ({total / max(secs, 1e-9):,.0f} rows/s)", flush=True)
    return counts


def _parquet_rows(path: Path) -> int:
    """Rows written, from the Parquet footers (no Spark job)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(Path(path).glob("*.parquet")))


def _iso(ms: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.generate.main", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="settings YAML (else DARKROOM_CONFIG / local)")
    parser.add_argument("--scale", choices=sorted(T.SCALES), default=None, help="default: settings world.scale")
    parser.add_argument("--seed", type=int, default=None, help="default: settings world.seed")
    parser.add_argument("--days", type=int, default=None, help="default: settings world.days, else the scale's")
    parser.add_argument("--out", type=Path, default=None, help="folder for <dataset>/ (default: landing paths)")
    parser.add_argument("--only", default=None, help="comma-separated datasets to write (default: all)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    w = settings.world
    generate(
        settings,
        scale=args.scale or w.scale,
        seed=w.seed if args.seed is None else args.seed,
        days=w.days if args.days is None else args.days,
        out_dir=args.out,
        datasets=args.only.split(",") if args.only else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
