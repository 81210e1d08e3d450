"""The feature store's pure DataFrame steps: no session, paths, Delta or Redis (``offline`` and ``online`` do those).

The point-in-time join (:func:`point_in_time_join`) gives each event row, per view, the view's latest row with
``feature_ts <= event ts`` and ``event ts - feature_ts <= ttl``, else nulls. It is a sort-merge "as-of" join done
with one window, not an equi-join plus a range condition:

1. the event rows and the view's feature rows are unioned, each keyed by the join keys and stamped with one
   timestamp (the event's time, or the feature row's ``feature_ts``), the event carrying its whole row as a struct;
2. a window partitioned by the join keys, ordered by (timestamp, feature rows before event rows), takes the last
   non-null feature struct up to the current row: for an event that is the latest feature row at or before it
   (a row stamped exactly at the event's time counts as known, the ordering puts it first);
3. the event rows are kept and the found values nulled when older than the TTL.

Why this shape: the cost is one shuffle and one sort per view, linear in (events + feature rows), whatever the
number of snapshots per key; an equi-join on the keys with ``feature_ts <= ts`` first multiplies every event by all
the earlier rows of its key (a year of daily snapshots = 365 rows per impression) before a ``max_by`` throws them
away, and a TTL-bounded range still multiplies by TTL / snapshot interval. Every event row yields exactly one output
row (duplicates included), so the row count is the input's by construction, and nothing crosses keys. Skew: a key
with very many events (a celebrity author) is one window partition, sorted with spilling like any sort.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from feature_store.definitions import FEATURE_AGE, FEATURE_TS, FeatureService, FeatureView

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# The training set's columns around the features: the impression (keys and request context) and the seven labels.
CONTEXT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("viewer_id", "bigint"),
    ("post_id", "bigint"),
    ("author_id", "bigint"),
    ("impressed_at", "timestamp"),
    ("impression_date", "date"),
    ("surface", "string"),
    ("position", "int"),
)
LABEL_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (f"label_{head}", "int") for head in ("like", "comment", "save", "share", "follow", "hide", "dwell")
)
EVENT_TS = "impressed_at"
FEATURE_TS_MICROS = "_feature_ts_us"  # online rows carry feature_ts as epoch microseconds (no time-zone round trip)

_P = "__pit_"  # prefix of the join's working columns
_TS, _SIDE, _EVENT, _FEATURE, _FOUND = (f"{_P}ts", f"{_P}side", f"{_P}event", f"{_P}feature", f"{_P}found")
_MICROS_PER_HOUR = 3_600_000_000


def _c(name: str) -> Column:
    """A column by its exact name (dots and the like taken literally)."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def micros(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def utc(ts: datetime) -> datetime:
    """An aware UTC instant; a naive one is taken as UTC (Spark's session time zone)."""
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)


def feature_rows(source: DataFrame, view: FeatureView) -> DataFrame:
    """The view's rows from its source table: the join keys (renamed from the source keys), ``feature_ts`` (from the
    view's timestamp column) and the features cast to their declared types. Rows without a key or a time are dropped:
    they can never be joined."""
    from pyspark.sql import functions as F

    keys = [_c(s).alias(j) for s, j in zip(view.source_keys, view.join_keys, strict=True)]
    ts = _c(view.timestamp_column).cast("timestamp").alias(FEATURE_TS)
    values = [(F.expr(view.expression(n)) if view.expression(n) else _c(n)).cast(t).alias(n) for n, t in view.features]
    known = F.col(FEATURE_TS).isNotNull()
    for k in view.join_keys:
        known = known & F.col(k).isNotNull()
    return source.select(*keys, ts, *values).where(known).select(*view.join_keys, FEATURE_TS, *view.feature_names)


def point_in_time_join(
    events: DataFrame, features: DataFrame, view: FeatureView, *, timestamp_column: str, ttl: timedelta
) -> DataFrame:
    """``events`` with the view's columns ``<view>__<feature>`` added: per event row, the values of the view's
    latest feature row (from :func:`feature_rows`) with the same join keys, ``feature_ts <= event ts`` and
    ``event ts - feature_ts <= ttl``; null when there is none. One output row per event row, columns kept in order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = view.join_keys
    missing = [c for c in (*keys, timestamp_column) if c not in events.columns]
    if missing:
        raise ValueError(
            f"feature view {view.name}: the entity frame lacks {', '.join(missing)} (has {', '.join(events.columns)})"
        )
    event_struct = F.struct(*[_c(c) for c in events.columns])
    feature_struct = F.struct(F.col(FEATURE_TS), *[_c(n) for n in view.feature_names])
    event_type = events.select(event_struct.alias("e")).schema["e"].dataType
    feature_type = features.select(feature_struct.alias("f")).schema["f"].dataType
    slots = [f"{_P}k{i}" for i in range(len(keys))]

    left = events.select(
        *[_c(k).alias(s) for k, s in zip(keys, slots, strict=True)],
        _c(timestamp_column).cast("timestamp").alias(_TS),
        F.lit(1).alias(_SIDE),
        event_struct.alias(_EVENT),
        F.lit(None).cast(feature_type).alias(_FEATURE),
    )
    right = features.select(
        *[_c(k).cast(events.schema[k].dataType).alias(s) for k, s in zip(keys, slots, strict=True)],
        F.col(FEATURE_TS).alias(_TS),
        F.lit(0).alias(_SIDE),
        F.lit(None).cast(event_type).alias(_EVENT),
        feature_struct.alias(_FEATURE),
    )
    # Feature rows sort before an event at the same instant (known at that instant); ties between feature rows of
    # one key and instant are broken by their values, so a re-run picks the same row.
    upto_now = (
        Window.partitionBy(*slots)
        .orderBy(F.col(_TS).asc_nulls_first(), F.col(_SIDE).asc(), F.col(_FEATURE).asc_nulls_first())
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    joined = (
        left.unionByName(right)
        .select(_TS, _SIDE, _EVENT, F.last(_FEATURE, ignorenulls=True).over(upto_now).alias(_FOUND))
        .where(F.col(_SIDE) == 1)
    )
    age = F.unix_micros(F.col(_TS)) - F.unix_micros(F.col(_FOUND)[FEATURE_TS])
    fresh = age <= F.lit(micros(ttl))
    out = [F.col(_EVENT)[c].alias(c) for c in events.columns]
    out += [F.when(fresh, F.col(_FOUND)[n]).alias(view.output_column(n)) for n in view.feature_names]
    if view.with_feature_age:
        out.append(F.when(fresh, age / _MICROS_PER_HOUR).alias(view.output_column(FEATURE_AGE)))
    return joined.select(*out)


def historical_features(
    events: DataFrame,
    sources: Mapping[str, DataFrame],
    views: Sequence[FeatureView],
    *,
    timestamp_column: str,
    default_ttl: timedelta,
    window: tuple[datetime, datetime] | None = None,
) -> DataFrame:
    """``events`` with every view's columns, one point-in-time join per view; ``sources`` maps a view's name to its
    source table's rows (as read, before :func:`feature_rows`).

    ``window`` = (start, end) when every event has ``start <= ts < end``: feature rows that no event can use (known
    at or after ``end``, or older than ``start`` minus the view's TTL) are dropped before the join's shuffle, so a
    week's training set does not sort a quarter of history."""
    from pyspark.sql import functions as F

    added = [c for v in views for c, _ in v.output_columns()]
    clash = sorted(set(added) & set(events.columns))
    if clash:
        raise ValueError(f"the entity frame already has feature columns {', '.join(clash)}")
    out = events
    for view in views:
        rows = feature_rows(sources[view.name], view)
        if window is not None:
            start, end = utc(window[0]), utc(window[1])
            rows = rows.where(
                (F.col(FEATURE_TS) >= F.lit(start - view.ttl_or(default_ttl))) & (F.col(FEATURE_TS) < F.lit(end))
            )
        out = point_in_time_join(
            out,
            rows,
            view,
            timestamp_column=timestamp_column,
            ttl=view.ttl_or(default_ttl),
        )
    return out


def training_set_columns(service: FeatureService) -> list[tuple[str, str]]:
    """The training set's schema: the impression's columns, the service's features, the seven labels."""
    return [*CONTEXT_COLUMNS, *service.output_columns(), *LABEL_COLUMNS]


def impressions_in_window(labels: DataFrame, *, start: datetime, end: datetime) -> DataFrame:
    """The labelled impressions with ``start <= impressed_at < end`` (pruned by impression_date first)."""
    from pyspark.sql import functions as F

    start, end = utc(start), utc(end)
    last_day = (end - timedelta(microseconds=1)).date()
    return labels.where(
        (F.col("impression_date") >= F.lit(start.date()))
        & (F.col("impression_date") <= F.lit(last_day))
        & (F.col(EVENT_TS) >= F.lit(start))
        & (F.col(EVENT_TS) < F.lit(end))
    ).select(*[c for c, _ in (*CONTEXT_COLUMNS, *LABEL_COLUMNS)])


def training_set_frame(
    labels: DataFrame,
    sources: Mapping[str, DataFrame],
    service: FeatureService,
    *,
    start: datetime,
    end: datetime,
    default_ttl: timedelta,
) -> DataFrame:
    """One row per labelled impression in [start, end): its keys and context, the service's point-in-time features
    as of ``impressed_at``, and its labels, in the order and types of :func:`training_set_columns`."""
    events = impressions_in_window(labels, start=start, end=end)
    joined = historical_features(
        events, sources, service.views, timestamp_column=EVENT_TS, default_ttl=default_ttl, window=(start, end)
    )
    return joined.select(*[_c(n).cast(t).alias(n) for n, t in training_set_columns(service)])


def latest_rows(features: DataFrame, view: FeatureView, *, until: datetime, after: datetime | None = None) -> DataFrame:
    """Per entity, its latest feature row with ``after < feature_ts <= until`` (``after`` None: no lower bound).

    The latest is the max of (feature_ts, values): rows of one key at one instant resolve the same way every run."""
    from pyspark.sql import functions as F

    rows = features.where(F.col(FEATURE_TS) <= F.lit(utc(until)))
    if after is not None:
        rows = rows.where(F.col(FEATURE_TS) > F.lit(utc(after)))
    latest = F.max(F.struct(F.col(FEATURE_TS), *[_c(n) for n in view.feature_names])).alias("latest")
    return (
        rows.groupBy(*view.join_keys)
        .agg(latest)
        .select(
            *view.join_keys,
            F.col("latest")[FEATURE_TS].alias(FEATURE_TS),
            *[F.col("latest")[n].alias(n) for n in view.feature_names],
        )
    )


def fresh_at(latest: DataFrame, *, as_of: datetime, ttl: timedelta) -> DataFrame:
    """The rows of :func:`latest_rows` still within the TTL at ``as_of`` (``as_of - feature_ts <= ttl``)."""
    from pyspark.sql import functions as F

    age = F.unix_micros(F.lit(utc(as_of))) - F.unix_micros(F.col(FEATURE_TS))
    return latest.where(age <= F.lit(micros(ttl)))


def online_rows(latest: DataFrame, view: FeatureView) -> DataFrame:
    """What one online hash is built from: the join keys, feature_ts as epoch microseconds, the features."""
    from pyspark.sql import functions as F

    return latest.select(
        *view.join_keys,
        F.unix_micros(F.col(FEATURE_TS)).alias(FEATURE_TS_MICROS),
        *[_c(n) for n in view.feature_names],
    )


def sample_entities(rows: DataFrame, keys: Iterable[str], n: int) -> DataFrame:
    """``n`` rows spread over the key space, the same ones every run (ordered by a hash of the keys)."""
    from pyspark.sql import functions as F

    keys = list(keys)
    return rows.orderBy(F.xxhash64(*[F.col(k) for k in keys]), *keys).limit(n)
