"""The online store: each entity's latest feature values in Redis, and the check that they match the offline store.

Key and payload (pure builders, :func:`online_key` and :func:`online_payload`): one hash per view and entity,
``<prefix>:<view>:<key values joined by ':'>`` (``fs:viewer:123``, ``fs:viewer_author:123:456``); fields = the
view's features as strings (:func:`format_value`: integers in decimal, floats as Python's shortest round-trip repr,
booleans ``true``/``false``, arrays as compact JSON; a null feature has no field) plus ``_feature_ts``, the row's
``feature_ts`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, fixed width, so it orders as text). Redis keys have no
expiry: the TTL is the reader's to apply from ``_feature_ts`` (the world's clock is not the wall clock).

:func:`materialize` writes, for a window (start, end] (the run's data interval), each entity's latest row with
``feature_ts`` in it, from the Spark executors (``foreachPartition``; one pipeline per partition, flushed every
``feature_store.online_batch_keys`` keys). Each key is replaced whole by a Lua script (DEL + HSET, atomically),
unless Redis already holds a newer ``feature_ts`` for it: a re-run writes the same keys and values, and a backfill
of an old window cannot overwrite newer values. :func:`check_consistency` compares a sample of entities' latest
offline values with Redis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

from feature_store import transform as T
from feature_store.definitions import FeatureDefinitionError, FeatureService, FeatureView, view_problems, views_of
from feature_store.offline import default_ttl
from feature_store.sources import read_source

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from darkroom.settings import DarkroomSettings

FEATURE_TS_FIELD = "_feature_ts"
MAX_MISMATCHES = 10  # mismatching fields listed by a failed check

# KEYS[1] the hash; ARGV[1] the row's _feature_ts, ARGV[2..] field, value, ... Returns 1 if written, 0 if Redis holds
# a newer row. Equal timestamps are rewritten (a re-run, or a re-stated row).
_PUT_LUA = """
local held = redis.call('HGET', KEYS[1], '_feature_ts')
if held and held > ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_feature_ts', ARGV[1], unpack(ARGV, 2))
return 1
"""


# --- pure builders --------------------------------------------------------------------------------------------------


def online_key(prefix: str, view: str, entity_values: Sequence[Any]) -> str:
    """``<prefix>:<view>:<v1>[:<v2>...]``, e.g. ``fs:viewer:123``."""
    if not entity_values:
        raise ValueError(f"online key for view {view}: no entity values")
    if any(v is None for v in entity_values):
        raise ValueError(f"online key for view {view}: a null entity value in {list(entity_values)}")
    return ":".join([prefix, view, *(str(v) for v in entity_values)])


def format_ts_micros(us: int) -> str:
    """Epoch microseconds as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_value(value: Any) -> str | None:
    """A feature value as the string stored online (None for null: no field). The consistency check formats the
    offline value the same way, so floats compare exactly."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, date | Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return json.dumps([_jsonable(v) for v in value], separators=(",", ":"), ensure_ascii=False)
    raise TypeError(f"cannot store a {type(value).__name__} online: {value!r}")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return format_value(value)


def utc_iso(ts: datetime) -> str:
    return T.utc(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def online_payload(features: Mapping[str, Any], feature_ts_micros: int) -> dict[str, str]:
    """The hash of one entity: each non-null feature as a string, and ``_feature_ts``."""
    out = {FEATURE_TS_FIELD: format_ts_micros(feature_ts_micros)}
    for name, value in features.items():
        text = format_value(value)
        if text is not None:
            out[name] = text
    return out


def key_and_payload(row: Mapping[str, Any], *, prefix: str, view: str, keys: Sequence[str], features: Sequence[str]):
    """(key, payload) of a row of ``transform.online_rows``."""
    key = online_key(prefix, view, [row[k] for k in keys])
    return key, online_payload({f: row[f] for f in features}, row[T.FEATURE_TS_MICROS])


# --- materialisation ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaterializedView:
    view: str
    entities: int  # entities with a row in the window
    written: int  # keys (re)written
    kept_newer: int  # keys left alone: Redis held a newer feature_ts


def _write_partition(
    rows: Iterator[Any],
    *,
    redis_url: str,
    prefix: str,
    view: str,
    keys: Sequence[str],
    features: Sequence[str],
    batch: int,
    written,
    kept,
) -> None:
    """Runs on an executor: one connection, one pipeline flushed every ``batch`` keys."""
    import redis

    client = redis.Redis.from_url(redis_url)
    put = client.register_script(_PUT_LUA)
    done = skipped = 0
    try:
        pipe = client.pipeline(transaction=False)
        pending = 0
        for row in rows:
            key, payload = key_and_payload(row.asDict(), prefix=prefix, view=view, keys=keys, features=features)
            args = [payload.pop(FEATURE_TS_FIELD)]
            for field, value in payload.items():
                args += [field, value]
            put(keys=[key], args=args, client=pipe)
            pending += 1
            if pending >= batch:
                replies = pipe.execute()
                done, skipped, pending = done + sum(replies), skipped + len(replies) - sum(replies), 0
        if pending:
            replies = pipe.execute()
            done, skipped = done + sum(replies), skipped + len(replies) - sum(replies)
    finally:
        client.close()
    written.add(done)
    kept.add(skipped)


def materialize(
    spark: SparkSession,
    settings: DarkroomSettings,
    service_or_views: FeatureService | FeatureView | Iterable[FeatureView],
    start: datetime,
    end: datetime,
    redis_url: str | None = None,
) -> dict[str, MaterializedView]:
    """Write each view's entities' latest rows with ``start < feature_ts <= end`` to Redis; counts per view."""
    start, end = T.utc(start), T.utc(end)
    if start >= end:
        raise ValueError(f"materialize window: start {start.isoformat()} is not before end {end.isoformat()}")
    views = views_of(service_or_views)
    problems = [p for v in views for p in view_problems(v)]
    if problems:
        raise FeatureDefinitionError("invalid feature definitions:\n  " + "\n  ".join(problems))
    url = redis_url or settings.redis_url
    sc = spark.sparkContext
    out: dict[str, MaterializedView] = {}
    for view in views:
        features = T.feature_rows(read_source(spark, settings, view), view)
        rows = T.online_rows(T.latest_rows(features, view, until=end, after=start), view)
        written, kept = sc.accumulator(0), sc.accumulator(0)
        rows.foreachPartition(
            partial(
                _write_partition,
                redis_url=url,
                prefix=settings.feature_store.online_key_prefix,
                view=view.name,
                keys=view.join_keys,
                features=view.feature_names,
                batch=settings.feature_store.online_batch_keys,
                written=written,
                kept=kept,
            )
        )
        out[view.name] = MaterializedView(view.name, written.value + kept.value, written.value, kept.value)
    return out


# --- consistency ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    key: str
    field: str  # "*" when the whole key is missing online
    online: str | None
    offline: str | None

    def line(self) -> str:
        return f"{self.key} {self.field}: online {self.online!r}, offline {self.offline!r}"


@dataclass(frozen=True)
class ConsistencyReport:
    view: str
    as_of: datetime
    sampled: int
    matched: int
    mismatched: int  # entities with at least one differing field (or no key)
    mismatches: tuple[Mismatch, ...]  # the first MAX_MISMATCHES differing fields

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def line(self) -> str:
        differ = "" if self.ok else f", {self.mismatched} differ"
        return f"view {self.view} as of {utc_iso(self.as_of)}: {self.matched}/{self.sampled} entities match{differ}"


class FeatureConsistencyError(AssertionError):
    """Online values differ from the offline store; the message names each key, field and both values."""

    def __init__(self, report: ConsistencyReport):
        self.report = report
        lines = "\n  ".join(m.line() for m in report.mismatches)
        super().__init__(f"feature store online/offline mismatch: {report.line()}:\n  {lines}")


def compare_payloads(key: str, online: Mapping[str, str], offline: Mapping[str, str]) -> list[Mismatch]:
    """The fields of one key that differ (a missing key: one ``*`` mismatch)."""
    if not online:
        return [Mismatch(key, "*", None, offline.get(FEATURE_TS_FIELD))]
    return [
        Mismatch(key, f, online.get(f), offline.get(f))
        for f in sorted(set(online) | set(offline))
        if online.get(f) != offline.get(f)
    ]


def check_consistency(
    spark: SparkSession,
    settings: DarkroomSettings,
    view: FeatureView,
    as_of: datetime,
    redis_url: str | None = None,
    sample: int | None = None,
    *,
    since: datetime | None = None,
) -> ConsistencyReport:
    """Compare ``sample`` entities' latest offline row at ``as_of`` with their Redis hash, field by field, after
    the same formatting as the write; raise :class:`FeatureConsistencyError` on any difference.

    The entities are those the online store must hold after materialising every window up to ``as_of``: a latest
    row within the view's TTL at ``as_of`` (with ``since``: a latest row after ``since``, for a store materialised
    from ``since`` on). Sampled by a hash of the keys, so a re-check looks at the same entities."""
    import redis

    as_of = T.utc(as_of)
    problems = view_problems(view)
    if problems:
        raise FeatureDefinitionError("invalid feature definitions:\n  " + "\n  ".join(problems))
    n = sample or settings.feature_store.consistency_sample
    features = T.feature_rows(read_source(spark, settings, view), view)
    latest = T.latest_rows(features, view, until=as_of, after=since)
    if since is None:
        latest = T.fresh_at(latest, as_of=as_of, ttl=view.ttl_or(default_ttl(settings)))
    picked = T.sample_entities(T.online_rows(latest, view), view.join_keys, n).collect()
    prefix = settings.feature_store.online_key_prefix
    expected = [
        key_and_payload(r.asDict(), prefix=prefix, view=view.name, keys=view.join_keys, features=view.feature_names)
        for r in picked
    ]
    client = redis.Redis.from_url(redis_url or settings.redis_url, decode_responses=True)
    try:
        pipe = client.pipeline(transaction=False)
        for key, _ in expected:
            pipe.hgetall(key)
        online = pipe.execute()
    finally:
        client.close()
    mismatches: list[Mismatch] = []
    mismatched = 0
    for (key, offline), held in zip(expected, online, strict=True):
        diff = compare_payloads(key, held, offline)
        if diff:
            mismatched += 1
            mismatches.extend(diff[: MAX_MISMATCHES - len(mismatches)])
    report = ConsistencyReport(
        view=view.name,
        as_of=as_of,
        sampled=len(expected),
        matched=len(expected) - mismatched,
        mismatched=mismatched,
        mismatches=tuple(mismatches),
    )
    if not report.ok:
        raise FeatureConsistencyError(report)
    return report


def materialize_task(settings: DarkroomSettings, *, as_of: datetime) -> dict[str, dict[str, int]]:
    """``feature_materialize.materialize`` (entry point, ``darkroom.spark_task``): the ranker's feature service's
    rows of the day before ``as_of`` written online; entities and written rows per view."""
    from darkroom.spark import get_spark
    from feature_store.definitions import get_service

    service = get_service(settings.ranker.feature_service)
    spark = get_spark(settings, "feature_materialize")
    counts = materialize(spark, settings, service, as_of - timedelta(days=1), as_of)
    return {view: {"entities": c.entities, "written": c.written} for view, c in counts.items()}


def check_consistency_task(settings: DarkroomSettings, *, as_of: datetime) -> dict[str, dict[str, int]]:
    """``feature_materialize.check_consistency``: a sample of each view's online rows against the offline store
    (raises on a mismatch); sampled and matched per view."""
    from darkroom.spark import get_spark
    from feature_store.definitions import get_service

    spark = get_spark(settings, "feature_materialize")
    checked = {}
    for view in get_service(settings.ranker.feature_service).views:
        report = check_consistency(spark, settings, view, as_of, since=as_of - timedelta(days=1))
        checked[view.name] = {"sampled": report.sampled, "matched": report.matched}
    return checked
