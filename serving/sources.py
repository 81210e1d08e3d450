"""Where a batch comes from: the ``serving.*`` Delta tables (Spark, the production path) or in-memory frames (tests,
benchmarks). Both hand the same records (:mod:`serving.payloads`) to the same partition functions
(:mod:`serving.writer`); they differ only in who runs them: Spark's executors, or this process and its forked
writer processes.

A source answers four questions for the publisher: how many keys and rows a family has in the batch (the manifest's
expectation, counted apart from the records), write the family, check every key's size in Redis, and a
deterministic sample of records for the content checksum.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from serving.errors import ServingInputError
from serving.payloads import FAMILIES, MILLIS_COLUMNS, Family
from serving.writer import (
    CheckResult,
    PartitionResult,
    WriteSpec,
    check_partition,
    spark_check_partition,
    spark_write_partition,
    write_partition,
)

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from darkroom.settings import DarkroomSettings

AfterPartition = Callable[[str, int], None]
_HASH_MULT = 0x9E3779B97F4A7C15  # Fibonacci hashing: a stable, well-spread sample order of integer keys


@dataclass(frozen=True)
class FamilyCounts:
    records: int  # distinct keys of the family (rows of a one-row-per-key family)
    rows: int


class BatchSource(Protocol):
    batch_id: str

    def describe(self) -> dict[str, Any]: ...

    def counts(self, family: str) -> FamilyCounts: ...

    def write(self, spec: WriteSpec, after_partition: AfterPartition | None = None) -> PartitionResult: ...

    def check(self, spec: WriteSpec) -> CheckResult: ...

    def sample(self, family: str, n: int) -> list[tuple]: ...

    def close(self) -> None: ...


# --- Spark: the serving.* Delta tables --------------------------------------------------------------------------


def _problem_list_param():
    from pyspark.accumulators import AccumulatorParam

    class ProblemList(AccumulatorParam):
        def zero(self, value):
            return []

        def addInPlace(self, a, b):  # noqa: N802 - pyspark's name
            return (a + b)[:10]

    return ProblemList()


class SparkBatch:
    """One batch of the ``serving.*`` tables, read with Spark; writes run on the executors (``foreachPartition``)."""

    def __init__(self, spark: SparkSession, settings: DarkroomSettings, batch_id: str) -> None:
        self.spark = spark
        self.settings = settings
        self.batch_id = batch_id
        self._records: dict[str, DataFrame] = {}

    def describe(self) -> dict[str, Any]:
        from darkroom.tables import table

        return {
            "source": "delta",
            "tables": {f: table(f"serving.{f}").uri(self.settings) for f in self._records},
        }

    def _table(self, fam: Family) -> DataFrame:
        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        from darkroom.tables import table

        path = table(fam.table).uri(self.settings)
        if not DeltaTable.isDeltaTable(self.spark, path):
            raise ServingInputError(
                f"{fam.table}: no Delta table at {path}; expected batch {self.batch_id} written by its precompute job"
            )
        df = self.spark.read.format("delta").load(path).where(F.col("batch_id") == self.batch_id)
        for column, source in MILLIS_COLUMNS.items():
            if column in fam.columns:
                df = df.withColumn(column, F.expr(f"unix_millis({source})"))
        return df

    def records(self, family: str) -> DataFrame:
        """The family's records as a DataFrame (key, then the record columns), cached for the write and the check."""
        if family not in self._records:
            from pyspark.sql import functions as F

            fam = FAMILIES[family]
            df = self._table(fam)
            if fam.lookup is not None:
                other, on, column = fam.lookup
                found = self._table(FAMILIES[other]).select(on, column)
                df = df.join(found, on=on, how="left")
            if fam.key is None:
                out = df.select(F.lit(0).alias("_key"), *fam.columns)
            elif not fam.grouped:
                out = df.select(fam.key, *fam.columns)
            else:
                rest = [c for c in fam.columns if c not in fam.sort]
                members = F.sort_array(F.collect_list(F.struct(*fam.sort, *rest)), asc=False)
                out = (
                    df.groupBy(fam.key)
                    .agg(members.alias("_m"))
                    .select(fam.key, *[F.col(f"_m.{c}").alias(c) for c in fam.columns])
                )
            self._records[family] = out.persist()
        return self._records[family]

    def counts(self, family: str) -> FamilyCounts:
        """One aggregation over the (then cached) records: keys, and rows (the members of grouped keys)."""
        from pyspark.sql import functions as F

        fam = FAMILIES[family]
        df = self.records(family)
        if fam.grouped:
            row = df.agg(F.count(F.lit(1)).alias("keys"), F.sum(F.size(fam.columns[0])).alias("rows")).first()
        else:
            row = df.agg(F.count_distinct(df.columns[0]).alias("keys"), F.count(F.lit(1)).alias("rows")).first()
        return FamilyCounts(int(row["keys"]), int(row["rows"] or 0))

    def write(self, spec: WriteSpec, after_partition: AfterPartition | None = None) -> PartitionResult:
        sc = self.spark.sparkContext
        written, problems = sc.accumulator(0), sc.accumulator([], _problem_list_param())
        self.records(spec.family).foreachPartition(
            partial(spark_write_partition, spec=spec, written=written, problems=problems)
        )
        if after_partition is not None:  # the driver sees the family's job end, not each partition
            after_partition(spec.family, -1)
        return PartitionResult(records=written.value, problems=list(problems.value))

    def check(self, spec: WriteSpec) -> CheckResult:
        out = CheckResult()
        for part in self.records(spec.family).rdd.mapPartitions(partial(spark_check_partition, spec=spec)).collect():
            out.merge(part)
        return out

    def sample(self, family: str, n: int) -> list[tuple]:
        from pyspark.sql import functions as F

        df = self.records(family)
        return [tuple(r) for r in df.orderBy(F.xxhash64(df.columns[0]), df.columns[0]).limit(n).collect()]

    def close(self) -> None:
        for df in self._records.values():
            df.unpersist()
        self._records.clear()


# --- in memory: pandas frames shaped like the tables ----------------------------------------------------------------


@dataclass
class _Prepared:
    keys: np.ndarray  # one per record
    starts: np.ndarray  # record i's members are rows starts[i]:ends[i] (grouped families)
    ends: np.ndarray
    columns: list[Any]  # per record column: a numpy array (grouped) or a list of Python values
    rows: int


_FORKED: dict[str, Any] = {}  # what forked writer processes inherit: the source and the spec in flight


def _forked_write(part: int) -> PartitionResult:
    source, spec = _FORKED["source"], _FORKED["spec"]
    return write_partition(source.partition(spec.family, part), spec)


def _forked_check(part: int) -> CheckResult:
    source, spec = _FORKED["source"], _FORKED["spec"]
    return check_partition(source.partition(spec.family, part), spec)


class MemoryBatch:
    """A batch given as one pandas DataFrame (or pyarrow Table) per family, with the table's columns (``batch_id``
    optional). ``writers`` > 1 forks that many writer processes, which inherit the prepared arrays; 1 writes from
    this process, partition by partition (the publisher's ``after_partition`` hook runs between them)."""

    def __init__(
        self,
        batch_id: str,
        frames: Mapping[str, Any],
        *,
        writers: int = 1,
        partition_records: int | None = None,
    ) -> None:
        unknown = sorted(set(frames) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown serving families {unknown}; known: {', '.join(FAMILIES)}")
        self.batch_id = batch_id
        self.writers = max(1, writers or os.cpu_count() or 1)
        self.partition_records = partition_records
        tables = {f: _of_batch(_as_pandas(frame), batch_id) for f, frame in frames.items()}
        self._prepared = {f: self._prepare(FAMILIES[f], _with_lookup(f, df, tables)) for f, df in tables.items()}
        self._pool: Any = None

    def describe(self) -> dict[str, Any]:
        return {"source": "memory", "rows": {f: p.rows for f, p in self._prepared.items()}}

    def _prepare(self, fam: Family, df: pd.DataFrame) -> _Prepared:
        import pandas as pd

        for column, source in MILLIS_COLUMNS.items():
            if column in fam.columns:
                ts = pd.to_datetime(df[source], utc=True)
                df = df.assign(**{column: (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)})
        missing = [c for c in ((fam.key,) if fam.key else ()) + fam.columns if c not in df.columns]
        if missing:
            raise ServingInputError(f"{fam.table}: frame lacks columns {missing}; expected the table's columns")
        n = len(df)
        if fam.key is None:
            keys = np.zeros(n, dtype=np.int64)
        elif fam.grouped:
            if not _grouped_in_order(df[fam.key].to_numpy(), df[fam.sort[0]].to_numpy()):
                df = df.sort_values([fam.key, *fam.sort], ascending=[True] + [False] * len(fam.sort), kind="stable")
            keys = df[fam.key].to_numpy()
        else:
            keys = df[fam.key].to_numpy()
        if not fam.grouped:
            columns = [_python_values(df[c]) for c in fam.columns]
            idx = np.arange(n)
            return _Prepared(keys, idx, idx + 1, columns, n)
        bounds = np.flatnonzero(keys[1:] != keys[:-1]) + 1 if n else np.array([], dtype=np.int64)
        starts = np.concatenate([[0], bounds]) if n else np.array([], dtype=np.int64)
        ends = np.concatenate([bounds, [n]]) if n else np.array([], dtype=np.int64)
        columns = [df[c].to_numpy() for c in fam.columns]
        return _Prepared(keys[starts] if n else keys, starts, ends, columns, n)

    def _family(self, family: str) -> _Prepared:
        if family not in self._prepared:  # no frame: an empty family
            empty = np.array([], dtype=np.int64)
            self._prepared[family] = _Prepared(empty, empty, empty, [[] for _ in FAMILIES[family].columns], 0)
        return self._prepared[family]

    def counts(self, family: str) -> FamilyCounts:
        p = self._family(family)
        keys = len(p.keys) if FAMILIES[family].key is None else len(np.unique(p.keys))
        return FamilyCounts(keys, p.rows)

    def record(self, family: str, i: int) -> tuple:
        fam, p = FAMILIES[family], self._family(family)
        key = p.keys[i].item()
        if fam.grouped:
            s, e = p.starts[i], p.ends[i]
            return (key, *[c[s:e].tolist() for c in p.columns])
        return (key, *[c[i] for c in p.columns])

    def parts(self, family: str) -> list[range]:
        n = len(self._family(family).keys)
        size = self.partition_records or max(1, math.ceil(n / (4 * self.writers)))
        return [range(lo, min(n, lo + size)) for lo in range(0, n, size)]

    def partition(self, family: str, part: int) -> Iterator[tuple]:
        for i in self.parts(family)[part]:
            yield self.record(family, i)

    def _map(self, fn, spec: WriteSpec, after_partition: AfterPartition | None):
        parts = range(len(self.parts(spec.family)))
        if self.writers == 1:
            for part in parts:
                _FORKED.update(source=self, spec=spec)
                yield fn(part)
                if after_partition is not None:
                    after_partition(spec.family, part)
            return
        _FORKED.update(source=self, spec=spec)
        if self._pool is None:
            self._pool = multiprocessing.get_context("fork").Pool(self.writers)
        # Forked at pool creation, the workers hold the arrays; the spec in flight goes with each task.
        for part, result in enumerate(self._pool.imap_unordered(partial(_call_with_spec, fn, spec), parts)):
            yield result
            if after_partition is not None:
                after_partition(spec.family, part)

    def write(self, spec: WriteSpec, after_partition: AfterPartition | None = None) -> PartitionResult:
        out = PartitionResult()
        for result in self._map(_forked_write, spec, after_partition):
            out.merge(result)
        return out

    def check(self, spec: WriteSpec) -> CheckResult:
        out = CheckResult()
        for result in self._map(_forked_check, spec, None):
            out.merge(result)
        return out

    def sample(self, family: str, n: int) -> list[tuple]:
        keys = self._family(family).keys.astype(np.uint64)
        order = np.argsort(keys * np.uint64(_HASH_MULT), kind="stable")[:n]
        return [self.record(family, int(i)) for i in order]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        _FORKED.clear()


def _call_with_spec(fn, spec: WriteSpec, part: int):
    _FORKED["spec"] = spec
    return fn(part)


def _with_lookup(family: str, df: pd.DataFrame, frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The family's frame with its lookup column joined from another family's frame (left join; none: nulls)."""
    fam = FAMILIES[family]
    if fam.lookup is None:
        return df
    other, on, column = fam.lookup
    found = frames.get(other)
    if found is None:
        return df.assign(**{column: float("nan")})
    return df.merge(found[[on, column]].drop_duplicates(on), on=on, how="left")


def _grouped_in_order(keys: np.ndarray, first_sort: np.ndarray) -> bool:
    """Rows already by key ascending and, within a key, by the first sort column descending (a table written in
    rank order): no sort needed."""
    if len(keys) < 2:
        return True
    same = keys[1:] == keys[:-1]
    return bool(np.all(keys[1:] >= keys[:-1]) and np.all(~same | (first_sort[1:] <= first_sort[:-1])))


def _of_batch(df: pd.DataFrame, batch_id: str) -> pd.DataFrame:
    return df[df["batch_id"] == batch_id] if "batch_id" in df.columns else df


def _as_pandas(frame: Any) -> pd.DataFrame:
    if hasattr(frame, "to_pandas") and not hasattr(frame, "iloc"):
        return frame.to_pandas()
    return frame


def _python_values(series: pd.Series) -> list[Any]:
    """A column as Python values, nulls (None, NaN, NaT) as None, except float columns, whose NaN stays NaN for
    the builders to refuse by name."""
    if series.dtype.kind == "f":
        return series.tolist()
    values = series.astype(object)
    return values.where(series.notna(), None).tolist()
