"""``two_tower_examples``: the two-tower model's training pairs and the inputs its towers are run on.

    python -m jobs.two_tower_examples.main --as-of 2026-10-31T00:00:00

``build_examples`` writes ``features.two_tower_examples`` for [start, end): each explicit engagement of the window
(``marts.fct_engagement_labels``), the user's earlier engaged posts, and each tower's point-in-time features (the
feature services ``two_tower_user_v1`` and ``two_tower_item_v1``, as of the engagement). The window's days are
replaced (``replaceWhere``): a re-run writes the same rows.

The other entry points build what the towers read at a given instant, with the same columns as a training row:
``user_inputs`` (a user's history and features as of ``as_of``), ``item_inputs`` (the live posts and their
features as of ``as_of``) and ``holdout_inputs`` (the time holdout's queries, relevant posts and exclusions).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from darkroom import lake
from darkroom.settings import DarkroomSettings, load_settings
from darkroom.tables import table, utc
from jobs.two_tower_examples import transform as T
from ml.two_tower.pipeline import RetrievalHoldout

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

APP_NAME = "two_tower_examples"
EXAMPLES = table("features.two_tower_examples")
LABELS = "marts.fct_engagement_labels"


@dataclass(frozen=True)
class ExamplesInfo:
    """What ``build_examples`` wrote: the Delta version to read, the window and its rows."""

    path: str
    version: int
    start: datetime
    end: datetime
    rows: int

    def files(self, start: datetime | None = None, end: datetime | None = None) -> list[str]:
        """The Parquet files of this version whose engaged_date lies in [start, end) (whole days; default the
        window). ``engaged_date`` itself is in the path, not in the files."""
        from deltalake import DeltaTable

        start, end = start or self.start, end or self.end
        days = [
            ("engaged_date", ">=", start.date()),
            ("engaged_date", "<=", (end - timedelta(microseconds=1)).date()),
        ]
        return sorted(DeltaTable(self.path, version=self.version).file_uris(file_pruning_predicate=days))


def _engagements(spark: SparkSession, settings: DarkroomSettings, start: datetime, end: datetime) -> DataFrame:
    from feature_store.sources import read_table

    cols = ["viewer_id", "post_id", "author_id", "impressed_at", "impression_date", *T.ENGAGEMENT_LABELS]
    labels = read_table(spark, settings, LABELS, cols, purpose="two-tower examples")
    return T.engagements(labels, start=start, end=end)


def _with_features(spark: SparkSession, settings: DarkroomSettings, df: DataFrame, ts: str) -> DataFrame:
    """``df`` with the user tower's features (when it has user_id) and the item tower's (when it has post_id and
    author_id), point in time at column ``ts``."""
    from pyspark.sql import functions as F

    from feature_store.definitions import TWO_TOWER_ITEM_V1, TWO_TOWER_USER_V1
    from feature_store.offline import get_historical_features

    out = df
    if "user_id" in df.columns:
        out = get_historical_features(
            spark, settings, out.withColumn("viewer_id", F.col("user_id")), TWO_TOWER_USER_V1, ts
        ).drop("viewer_id")
    if "post_id" in df.columns:
        out = get_historical_features(spark, settings, out, TWO_TOWER_ITEM_V1, ts)
    return out


def build_examples(spark: SparkSession, settings: DarkroomSettings, start: datetime, end: datetime) -> ExamplesInfo:
    """Write the training pairs of the engagements with ``start <= engaged_at < end`` (whole days)."""
    from pyspark.sql import functions as F

    start, end = utc(start), utc(end)
    if start >= end:
        raise ValueError(f"two-tower examples: start {start.isoformat()} is not before end {end.isoformat()}")
    cfg = settings.two_tower
    lookback = timedelta(days=cfg.history_lookback_days)
    engaged = _engagements(spark, settings, start - lookback, end)
    pairs = T.with_history(engaged, start=start, end=end, history_len=cfg.history_len, lookback=lookback)
    frame = _with_features(spark, settings, pairs, "engaged_at").withColumn(
        "engaged_date", F.to_date(F.col("engaged_at"))
    )
    registered = [f.name for f in EXAMPLES.schema.fields]
    if sorted(frame.columns) != sorted(registered):
        raise ValueError(
            f"{EXAMPLES.qualified_name} is registered (darkroom/tables.py) with columns {registered}, but the "
            f"two-tower feature services give {frame.columns}: update the registry's schema"
        )
    fmt = "%Y-%m-%d %H:%M:%S.%f+00:00"
    where = (
        f"engaged_date >= DATE'{start.date()}' AND engaged_date <= DATE'{(end - timedelta(microseconds=1)).date()}' "
        f"AND engaged_at >= TIMESTAMP'{start.strftime(fmt)}' AND engaged_at < TIMESTAMP'{end.strftime(fmt)}'"
    )
    version = lake.replace_where(spark, EXAMPLES, settings, frame, where)
    rows = (
        spark.read.format("delta")
        .option("versionAsOf", version)
        .load(EXAMPLES.uri(settings))
        .where((F.col("engaged_at") >= F.lit(start)) & (F.col("engaged_at") < F.lit(end)))
        .count()
    )
    return ExamplesInfo(path=EXAMPLES.uri(settings), version=version, start=start, end=end, rows=rows)


def user_inputs(spark: SparkSession, settings: DarkroomSettings, users: DataFrame, as_of: datetime) -> DataFrame:
    """``users`` (a user_id column) with the user tower's inputs as of ``as_of``: history_post_ids (empty when the
    user engaged with nothing recently) and the viewer features."""
    from pyspark.sql import functions as F

    as_of, cfg = utc(as_of), settings.two_tower
    lookback = timedelta(days=cfg.history_lookback_days)
    history = T.history_as_of(
        _engagements(spark, settings, as_of - lookback, as_of),
        as_of=as_of,
        history_len=cfg.history_len,
        lookback=lookback,
    )
    base = (
        users.select("user_id")
        .distinct()
        .join(history, on="user_id", how="left")
        .select(
            "user_id",
            F.coalesce(F.col("history_post_ids"), F.array().cast("array<bigint>")).alias("history_post_ids"),
            F.lit(as_of).alias("_as_of"),
        )
    )
    return _with_features(spark, settings, base, "_as_of").drop("_as_of")


def item_inputs(
    spark: SparkSession, settings: DarkroomSettings, as_of: datetime, *, created_before: datetime | None = None
) -> DataFrame:
    """The posts created in [as_of - live_post_days, created_before or as_of) with the item tower's features as of
    ``as_of`` (a post created later has none yet: its dense inputs are missing, its ids are known)."""
    from pyspark.sql import functions as F

    from feature_store.sources import read_table

    as_of = utc(as_of)
    until = utc(created_before) if created_before else as_of
    posts = read_table(spark, settings, "bronze.posts", ["post_id", "author_id", "created_at"], purpose="the index")
    live = T.live_posts(posts, since=as_of - timedelta(days=settings.two_tower.live_post_days), until=until)
    return _with_features(spark, settings, live.withColumn("_as_of", F.lit(as_of)), "_as_of").drop("_as_of")


def holdout_inputs(
    spark: SparkSession, settings: DarkroomSettings, start: datetime, end: datetime, *, max_users: int, seed: int
) -> RetrievalHoldout:
    """The queries (users who engaged in [start, end), at most ``max_users`` by a seeded hash), their relevant
    posts and exclusions, and the catalogue the model retrieves from."""
    from pyspark.sql import functions as F

    from feature_store.sources import read_table

    start, end = utc(start), utc(end)
    engaged = _engagements(spark, settings, start, end)
    users = engaged.select("user_id").distinct()
    total = users.count()
    if total == 0:
        raise ValueError(f"the two-tower holdout [{start.isoformat()}, {end.isoformat()}) has no engagement")
    if total > max_users:
        users = users.orderBy(F.xxhash64(F.col("user_id"), F.lit(seed)), "user_id").limit(max_users)
    queries = user_inputs(spark, settings, users, start).orderBy("user_id")
    posts = read_table(spark, settings, "bronze.posts", ["post_id", "author_id", "created_at"], purpose="holdout")
    history = queries.select("user_id", "history_post_ids")
    truth = T.holdout_truth(engaged.join(users, on="user_id", how="inner"), history, posts).orderBy("user_id")
    q = queries.toArrow()
    t = truth.toArrow()
    if q.column("user_id").to_pylist() != t.column("user_id").to_pylist():
        raise AssertionError("holdout queries and truth disagree on the users")  # both ordered by user_id
    catalogue = item_inputs(spark, settings, start, created_before=end).orderBy("post_id").toArrow()
    return RetrievalHoldout(
        start=start,
        end=end,
        queries=q,
        relevant=[set(r) for r in t.column("relevant").to_pylist()],
        exclude=[set(e) for e in t.column("exclude").to_pylist()],
        catalogue=catalogue,
    )


def day_floor(ts: datetime) -> datetime:
    ts = utc(ts)
    return datetime(ts.year, ts.month, ts.day, tzinfo=UTC)


def train_weekly(settings: DarkroomSettings, as_of: datetime, *, spark: SparkSession, progress=print):
    """The weekly two-tower run as of ``as_of``'s midnight: the examples of the last ``train_days`` whole days,
    the last ``holdout_days`` held out, then ``ml.two_tower.pipeline.train_weekly``."""
    from ml.two_tower import pipeline

    cfg = settings.two_tower
    end = day_floor(as_of)
    start, holdout_start = end - timedelta(days=cfg.train_days), end - timedelta(days=cfg.holdout_days)
    if holdout_start <= start:
        raise ValueError(f"two_tower: holdout_days {cfg.holdout_days} leaves no training days of {cfg.train_days}")
    t0 = time.perf_counter()
    info = build_examples(spark, settings, start, end)
    progress(
        f"two-tower: {info.rows:,} pairs for [{start:%Y-%m-%d}, {end:%Y-%m-%d}) in {time.perf_counter() - t0:.0f}s "
        f"({EXAMPLES.qualified_name} v{info.version})"
    )
    holdout = holdout_inputs(spark, settings, holdout_start, end, max_users=cfg.eval_max_users, seed=cfg.seed)
    progress(
        f"two-tower: holdout [{holdout_start:%Y-%m-%d}, {end:%Y-%m-%d}): {holdout.queries.num_rows:,} users, "
        f"{holdout.catalogue.num_rows:,} catalogue posts"
    )
    tags = {
        "examples_table": EXAMPLES.qualified_name,
        "examples_version": str(info.version),
        "training_window": f"{start.isoformat()}/{holdout_start.isoformat()}",
    }
    return pipeline.train_weekly(
        settings, end, train_files=info.files(start, holdout_start), holdout=holdout, tags=tags, progress=progress
    )


def train(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``two_tower_weekly.train`` (entry point, ``darkroom.spark_task``): ``train_weekly``'s summary."""
    from darkroom.spark import get_spark

    return train_weekly(settings, as_of, spark=get_spark(settings, "two_tower")).summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.two_tower_examples.main", description=__doc__)
    parser.add_argument("--as-of", required=True, type=datetime.fromisoformat, help="the window's end (UTC)")
    parser.add_argument("--days", type=int, default=None, help="window length (default two_tower.train_days)")
    args = parser.parse_args(argv)
    from darkroom.spark import get_spark

    settings = load_settings()
    end = utc(args.as_of)
    start = end - timedelta(days=args.days or settings.two_tower.train_days)
    info = build_examples(get_spark(settings, APP_NAME), settings, start, end)
    window = f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M})"
    print(f"{EXAMPLES.qualified_name}: {info.rows:,} pairs for {window}, version {info.version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
