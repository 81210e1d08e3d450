"""Delta Lake access for registry tables: create with the registered schema, read, merge on the key, describe.

Only entry points (``jobs/*/main.py``, the CLI) call these; transforms never see a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from darkroom.tables import PARTITION_COLUMN, Table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from darkroom.settings import DarkroomSettings


def exists(spark: SparkSession, t: Table, settings: DarkroomSettings) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, t.uri(settings))


def ensure_table(spark: SparkSession, t: Table, settings: DarkroomSettings):
    """Create the Delta table if it is missing (idempotent); event tables get ``dt`` generated from event time."""
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark).location(t.uri(settings)).addColumns(t.schema)
    if t.event_time:
        builder = builder.addColumn(PARTITION_COLUMN, "DATE", generatedAlwaysAs=f"CAST({t.event_time} AS DATE)")
    if t.partition_by:
        builder = builder.partitionedBy(*t.partition_by)
    builder = builder.property("delta.appendOnly", "false")
    return builder.execute()


def read(spark: SparkSession, t: Table, settings: DarkroomSettings) -> DataFrame:
    if not exists(spark, t, settings):
        raise FileNotFoundError(f"table {t.qualified_name} does not exist yet at {t.path(settings)}")
    return spark.read.format("delta").load(t.uri(settings))


def replace_where(spark: SparkSession, t: Table, settings: DarkroomSettings, df: DataFrame, where: str) -> int:
    """Replace the rows of ``t`` matching ``where`` (its partition, its version) with ``df`` cast to the registered
    schema, in one Delta commit: a re-run writes the same rows. Returns the table version."""
    from pyspark.sql import functions as F

    ensure_table(spark, t, settings)
    cols = [F.col(f.name).cast(f.dataType).alias(f.name) for f in t.schema.fields]
    df.select(*cols).write.format("delta").mode("overwrite").option("replaceWhere", where).save(t.uri(settings))
    return current_version(spark, t, settings)


class StaleTableError(ValueError):
    """An as-of table (a mart rebuilt whole for one as_of) is not as of the run's as_of."""


def read_as_of(
    spark: SparkSession, t: Table, settings: DarkroomSettings, as_of: datetime, *, purpose: str
) -> DataFrame:
    """A table with an ``as_of`` column, refused unless every row is as of ``as_of`` (to the microsecond, UTC):
    a job must not decide today on yesterday's mart. ``purpose`` names the consumer in the error."""
    from datetime import UTC

    from pyspark.sql import functions as F

    df = read(spark, t, settings)
    aware = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    want = aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    seen = sorted(
        r[0] for r in df.select(F.date_format("as_of", "yyyy-MM-dd HH:mm:ss.SSSSSS")).distinct().limit(3).collect()
    )
    if seen != [want]:
        what = f"as of {', '.join(seen)}" if seen else "empty"
        raise StaleTableError(f"{t.qualified_name} is {what}, {purpose} is as of {want}: build it for this as_of first")
    return df


def with_partition_column(df: DataFrame, t: Table) -> DataFrame:
    from pyspark.sql import functions as F

    return df.withColumn(PARTITION_COLUMN, F.to_date(F.col(t.event_time))) if t.event_time else df


def merge_on_key(spark: SparkSession, t: Table, settings: DarkroomSettings, source: DataFrame) -> int:
    """Upsert ``source`` (unique on the key) into ``t``; rows whose values are unchanged are left alone.

    Returns the table version after the write. Re-running with the same source leaves the data unchanged.
    """

    target = ensure_table(spark, t, settings)
    source = with_partition_column(source, t)
    if target.detail().collect()[0]["numFiles"] == 0:
        # Nothing to match against: an append writes exactly what the MERGE would, without its join.
        source.write.format("delta").mode("append").save(t.uri(settings))
        return current_version(spark, t, settings)
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in t.key)
    if t.partition_by and t.event_time in t.key:
        # Lets Delta prune partitions: the key's event time decides its partition.
        on = f"t.`{PARTITION_COLUMN}` = s.`{PARTITION_COLUMN}` AND " + on
    changed = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in source.columns if c not in t.key) or "false"
    (
        target.alias("t")
        .merge(source.alias("s"), on)
        .whenMatchedUpdateAll(condition=changed)
        .whenNotMatchedInsertAll()
        .execute()
    )
    return current_version(spark, t, settings)


def current_version(spark: SparkSession, t: Table, settings: DarkroomSettings) -> int:
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, t.uri(settings)).history(1).collect()[0]["version"])


@dataclass(frozen=True)
class TableInfo:
    table: Table
    rows: int | None
    version: int | None
    last_write: datetime | None
    last_operation: str | None


def describe(spark: SparkSession, t: Table, settings: DarkroomSettings) -> TableInfo:
    from delta.tables import DeltaTable

    if not exists(spark, t, settings):
        return TableInfo(t, None, None, None, None)
    dt = DeltaTable.forPath(spark, t.uri(settings))
    last = dt.history(1).collect()[0]
    return TableInfo(t, dt.toDF().count(), int(last["version"]), last["timestamp"], last["operation"])
