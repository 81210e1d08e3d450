"""The offline store: point-in-time correct features for any entity frame, and the training sets of a service.

``get_historical_features`` reads each view's source (a mart, or bronze) and joins it as of each row's timestamp
(``transform.point_in_time_join``). ``build_training_set`` does that for the labelled impressions of a window and
writes ``features.training_set_<service>`` (Delta, partitioned by impression_date, ``replaceWhere`` on the window: a
re-run writes the same rows); the ranker reads one Delta version's Parquet files (``training_set_files``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from darkroom import lake
from darkroom.tables import Table, table
from feature_store import transform as T
from feature_store.definitions import FeatureDefinitionError, FeatureService, validate_service
from feature_store.sources import read_source, read_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from darkroom.settings import DarkroomSettings

LABELS_SOURCE = "marts.fct_engagement_labels"


def default_ttl(settings: DarkroomSettings) -> timedelta:
    return timedelta(hours=settings.feature_store.default_ttl_hours)


def get_historical_features(
    spark: SparkSession,
    settings: DarkroomSettings,
    entity_df: DataFrame,
    service: FeatureService,
    timestamp_column: str = T.EVENT_TS,
) -> DataFrame:
    """``entity_df`` (one row per event: the service's join keys and ``timestamp_column``) with a column
    ``<view>__<feature>`` per feature of the service: the value of the view's latest row with
    ``feature_ts <= ts`` and ``ts - feature_ts <= ttl``, else null. Same rows, same order of input columns."""
    validate_service(service)
    sources = {v.name: read_source(spark, settings, v) for v in service.views}
    return T.historical_features(
        entity_df, sources, service.views, timestamp_column=timestamp_column, default_ttl=default_ttl(settings)
    )


def training_set_table(service: FeatureService) -> Table:
    name = f"features.training_set_{service.name}"
    try:
        return table(name)
    except KeyError:
        raise FeatureDefinitionError(
            f"feature service {service.name}: its training-set table {name} is not registered; add it to "
            "darkroom/tables.py with the schema of feature_store.transform.training_set_columns"
        ) from None


@dataclass(frozen=True)
class TrainingSetInfo:
    """What one ``build_training_set`` wrote: the Delta version to read, its rows in the window, the window."""

    service: str
    service_version: int
    table: str
    path: str
    version: int
    rows: int
    start: datetime
    end: datetime

    def files(self) -> list[str]:
        """The Parquet files of this window in this Delta version (see :func:`training_set_files`)."""
        return _files(self.path, self.version, self.start, self.end)


def window_predicate(start: datetime, end: datetime) -> str:
    """The training set rows of [start, end), as a Delta ``replaceWhere``: partitions first, then the exact bound."""
    start, end = T.utc(start), T.utc(end)
    last_day = (end - timedelta(microseconds=1)).date()
    fmt = "%Y-%m-%d %H:%M:%S.%f+00:00"
    return (
        f"impression_date >= DATE'{start.date()}' AND impression_date <= DATE'{last_day}' AND "
        f"impressed_at >= TIMESTAMP'{start.strftime(fmt)}' AND impressed_at < TIMESTAMP'{end.strftime(fmt)}'"
    )


def build_training_set(
    spark: SparkSession, settings: DarkroomSettings, service: FeatureService, start: datetime, end: datetime
) -> TrainingSetInfo:
    """Write the training set of the impressions with ``start <= impressed_at < end`` (the run's data interval).

    Each row: the impression's keys and context, the service's point-in-time features, the seven labels (columns of
    ``transform.training_set_columns``). Replaces exactly that window of ``features.training_set_<service>``."""
    start, end = T.utc(start), T.utc(end)
    if start >= end:
        raise ValueError(f"training set window: start {start.isoformat()} is not before end {end.isoformat()}")
    validate_service(service)
    target = training_set_table(service)
    purpose = f"training set {service.name}"
    needed = [c for c, _ in (*T.CONTEXT_COLUMNS, *T.LABEL_COLUMNS)]
    labels = read_table(spark, settings, LABELS_SOURCE, needed, purpose=purpose)
    sources = {v.name: read_source(spark, settings, v) for v in service.views}
    frame = T.training_set_frame(labels, sources, service, start=start, end=end, default_ttl=default_ttl(settings))
    registered = [f.name for f in target.schema.fields]
    if frame.columns != registered:
        raise FeatureDefinitionError(
            f"{target.qualified_name} is registered (darkroom/tables.py) with columns {registered}, but service "
            f"{service.name} gives {frame.columns}: update the registry's schema (a new service version is a new table)"
        )
    version = lake.replace_where(spark, target, settings, frame, window_predicate(start, end))
    return TrainingSetInfo(
        service=service.name,
        service_version=service.version,
        table=target.qualified_name,
        path=target.uri(settings),
        version=version,
        rows=_rows_written(spark, target, settings, version),
        start=start,
        end=end,
    )


def _rows_written(spark: SparkSession, t: Table, settings: DarkroomSettings, version: int) -> int:
    """Rows of the window the commit ``version`` wrote (its operation metrics; counted from the table if they are
    missing). A window that is not whole days rewrites its days' files: the rows copied from them are not counted."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    history = DeltaTable.forPath(spark, t.uri(settings)).history().where(F.col("version") == version)
    metrics = history.select("operationMetrics").collect()[0][0] or {}
    if "numOutputRows" in metrics:
        return int(metrics["numOutputRows"]) - int(metrics.get("numCopiedRows", 0))
    return spark.read.format("delta").option("versionAsOf", version).load(t.uri(settings)).count()


def training_set_files(
    settings: DarkroomSettings,
    service: FeatureService,
    version: int,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[str]:
    """The Parquet files (absolute paths) of Delta version ``version`` of the service's training set, for pyarrow.

    With a window, only the files of its impression_date partitions (whole days: filter ``impressed_at`` after
    reading when the window is not day-aligned). The files hold every column but the partition column
    impression_date, which is in their path (hive style, ``impression_date=YYYY-MM-DD/``)."""
    return _files(training_set_table(service).uri(settings), version, start, end)


def _files(path: str, version: int, start: datetime | None, end: datetime | None) -> list[str]:
    from deltalake import DeltaTable

    dt = DeltaTable(path, version=version)
    if start is None and end is None:
        return sorted(dt.file_uris())
    days = []
    if start is not None:
        days.append(("impression_date", ">=", T.utc(start).date()))
    if end is not None:
        days.append(("impression_date", "<=", (T.utc(end) - timedelta(microseconds=1)).date()))
    return sorted(dt.file_uris(file_pruning_predicate=days))
