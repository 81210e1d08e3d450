"""Streaming a training set's Parquet files into batches, never collecting it to one process.

A ``ParquetSource`` is a list of Parquet files and an optional time window ``[start, end)`` on a timestamp column
(the time-based holdout and the fine-tune's last hour are windows on the same files, whatever their layout).
``plan()`` lists the row groups and how many of their rows the window keeps, from the footers' statistics or, when
a footer has none (Spark's INT96 timestamps), by reading that one column.

Sharding for distributed training: the kept rows, in plan order, are cut into ``world_size`` contiguous ranges
whose sizes differ by at most one row, so every example is used exactly once per epoch across ranks and each rank
reads about 1/world_size of the data. Every rank takes the same number of steps (DDP needs that): the steps are
``ceil(largest range / batch_size)`` and each rank spreads its rows evenly over them.

Shuffling: each epoch a rank visits its row groups in a seeded random order and permutes blocks of
``shuffle_buffer`` rows (with the remainder carried into the next block), seeded by (seed, epoch, rank).
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from os import fspath
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ml.ranker.features import TIME_COLUMN, FeatureSchemaError, FeatureSpec, dense_matrix, encode, signed_log1p

READ_ROWS = 16_384  # rows per Parquet read (a record batch), independent of the training batch size


@dataclass(frozen=True)
class ParquetSource:
    """Parquet files, optionally restricted to rows with ``start <= time_column < end`` (UTC)."""

    files: tuple[str, ...]
    start: datetime | None = None
    end: datetime | None = None
    time_column: str = TIME_COLUMN

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("a Parquet source needs at least one file")

    @property
    def windowed(self) -> bool:
        return self.start is not None or self.end is not None

    def window(self, start: datetime | None = None, end: datetime | None = None) -> ParquetSource:
        return ParquetSource(self.files, start, end, self.time_column)

    def describe(self) -> str:
        span = f" [{self.start or '-inf'}, {self.end or '+inf'})" if self.windowed else ""
        return f"{len(self.files)} Parquet file(s){span}"


Files = Sequence[str | Path] | ParquetSource


def as_source(files: Files) -> ParquetSource:
    if isinstance(files, ParquetSource):
        return files
    if isinstance(files, str | Path):
        raise TypeError("pass a list of Parquet files, not one path")
    return ParquetSource(tuple(fspath(f) for f in files))


# --- time -------------------------------------------------------------------------------------------------------------
def _micros(dt: datetime) -> int:
    """Epoch microseconds of any datetime, a naive one read as UTC (plain integer arithmetic: Airflow hands out
    pendulum datetimes, whose differences do not divide by a ``timedelta``)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


def timestamps_us(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A timestamp (or date) column as int64 microseconds since the epoch, UTC (naive = UTC)."""
    t = col.type
    if pa.types.is_date(t):
        col = pc.cast(col, pa.timestamp("us"), safe=False)
    elif not pa.types.is_timestamp(t):
        raise TypeError(f"expected a timestamp, got {t}")
    else:
        col = pc.cast(col, pa.timestamp("us", tz=t.tz), safe=False)
    return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)


def time_bounds(files: Files) -> tuple[datetime, datetime]:
    """The earliest and latest value of the source's time column (streamed, one column)."""
    src = as_source(files)
    lo, hi = None, None
    for f in src.files:
        pf = pq.ParquetFile(f)
        _check_time_column(pf, src.time_column, f)
        for batch in pf.iter_batches(batch_size=READ_ROWS * 8, columns=[src.time_column]):
            ts = timestamps_us(batch.column(0).drop_null())
            if len(ts):
                lo = ts.min() if lo is None else min(lo, ts.min())
                hi = ts.max() if hi is None else max(hi, ts.max())
    if lo is None:
        raise ValueError(f"{src.describe()} has no rows with a {src.time_column}")
    return _from_micros(lo), _from_micros(hi)


def time_holdout(files: Files, *, holdout_days: int = 1) -> tuple[ParquetSource, ParquetSource]:
    """(train, holdout): the last ``holdout_days`` calendar days (UTC) of the data, and every day before them."""
    src = as_source(files)
    first, last = time_bounds(src)
    boundary = datetime(last.year, last.month, last.day, tzinfo=UTC) - timedelta(days=holdout_days - 1)
    if first >= boundary:
        raise ValueError(
            f"{src.describe()} spans {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}: nothing is left to train on "
            f"before the last {holdout_days} day(s)"
        )
    return src.window(src.start, boundary), src.window(boundary, src.end)


def last_window(files: Files, *, duration: timedelta = timedelta(hours=1)) -> ParquetSource:
    """The rows of the last ``duration`` before the latest timestamp (the fine-tune's last hour)."""
    src = as_source(files)
    _, last = time_bounds(src)
    return src.window(last - duration + timedelta(microseconds=1), None)


def _check_time_column(pf: pq.ParquetFile, column: str, file: str) -> None:
    schema = pf.schema_arrow
    idx = schema.get_field_index(column)
    if idx < 0:
        raise FeatureSchemaError({column: "is missing (expected the time of the impression)"}, file)
    t = schema.field(idx).type
    if not (pa.types.is_timestamp(t) or pa.types.is_date(t)):
        raise FeatureSchemaError({column: f"is {t}, expected a timestamp"}, file)


# --- plan and shards --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """One row group of one file and how many of its rows the source's window keeps."""

    file: str
    row_group: int
    rows: int
    filtered: bool  # the window cuts through this row group, so its rows are filtered on read


def _row_group_range_us(pf: pq.ParquetFile, rg: int, column: str) -> tuple[int, int] | None:
    """The row group's min and max time from its footer statistics, when the footer has them (INT64 only)."""
    md = pf.metadata.row_group(rg)
    names = [md.column(i).path_in_schema for i in range(md.num_columns)]
    if column not in names:
        return None
    meta = md.column(names.index(column))
    stats = meta.statistics
    if stats is None or not stats.has_min_max or meta.physical_type != "INT64" or stats.null_count:
        return None
    t = pf.schema_arrow.field(column).type
    if not pa.types.is_timestamp(t):
        return None
    per_us = {"s": 1e-6, "ms": 1e-3, "us": 1, "ns": 1e3}[t.unit]
    lo, hi = stats.min_raw, stats.max_raw
    return (math.floor(lo / per_us), math.ceil(hi / per_us)) if per_us != 1 else (lo, hi)


def plan(files: Files) -> list[Piece]:
    """Every row group with rows in the source's window, in file order."""
    src = as_source(files)
    lo = _micros(src.start) if src.start is not None else None
    hi = _micros(src.end) if src.end is not None else None
    pieces = []
    for f in src.files:
        pf = pq.ParquetFile(f)
        if src.windowed:
            _check_time_column(pf, src.time_column, f)
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if n == 0:
                continue
            if not src.windowed:
                pieces.append(Piece(f, rg, n, False))
                continue
            span = _row_group_range_us(pf, rg, src.time_column)
            if span is not None and _inside(span[0], lo, hi) and _inside(span[1], lo, hi):
                pieces.append(Piece(f, rg, n, False))
            elif span is not None and ((hi is not None and span[0] >= hi) or (lo is not None and span[1] < lo)):
                continue
            else:
                ts = timestamps_us(pf.read_row_group(rg, columns=[src.time_column]).column(0))
                kept = int(_window_mask(ts, lo, hi).sum())
                if kept:
                    pieces.append(Piece(f, rg, kept, kept != n))
    return pieces


def _inside(t: int, lo: int | None, hi: int | None) -> bool:
    return (lo is None or t >= lo) and (hi is None or t < hi)


def _window_mask(ts: np.ndarray, lo: int | None, hi: int | None) -> np.ndarray:
    mask = np.ones(len(ts), dtype=bool)
    if lo is not None:
        mask &= ts >= lo
    if hi is not None:
        mask &= ts < hi
    return mask


@dataclass(frozen=True)
class ShardPlan:
    """Rows per rank and the steps every rank takes in an epoch."""

    rows: int
    world_size: int
    batch_size: int

    def bounds(self, rank: int) -> tuple[int, int]:
        """The rank's contiguous range [lo, hi) of the source's kept rows."""
        return rank * self.rows // self.world_size, (rank + 1) * self.rows // self.world_size

    @property
    def steps(self) -> int:
        smallest, largest = self.rows // self.world_size, -(-self.rows // self.world_size)
        return min(max(1, -(-largest // self.batch_size)), smallest)

    def batch_sizes(self, rank: int) -> list[int]:
        lo, hi = self.bounds(rank)
        base, extra = divmod(hi - lo, self.steps)
        return [base + 1] * extra + [base] * (self.steps - extra)


def shard_plan(pieces: Sequence[Piece], world_size: int, batch_size: int) -> ShardPlan:
    rows = sum(p.rows for p in pieces)
    if rows < world_size:
        raise ValueError(f"{rows} row(s) cannot be shared by {world_size} training processes")
    return ShardPlan(rows=rows, world_size=world_size, batch_size=batch_size)


def _read_piece(
    src: ParquetSource, piece: Piece, columns: list[str], lo: int, hi: int, lo_us: int | None, hi_us: int | None
) -> Iterator[pa.Table]:
    """Rows [lo, hi) of the piece's kept rows, as tables of at most READ_ROWS rows."""
    pf = pq.ParquetFile(piece.file)
    read_cols = columns + ([src.time_column] if piece.filtered and src.time_column not in columns else [])
    seen = 0
    for batch in pf.iter_batches(batch_size=READ_ROWS, row_groups=[piece.row_group], columns=read_cols):
        table = pa.Table.from_batches([batch])
        if piece.filtered:
            mask = _window_mask(timestamps_us(table.column(src.time_column)), lo_us, hi_us)
            table = table.filter(pa.array(mask))
        a, b = max(lo - seen, 0), min(hi - seen, table.num_rows)
        seen += table.num_rows
        if b > a:
            yield table.select(columns).slice(a, b - a)
        if seen >= hi:
            return


def iter_tables(
    files: Files,
    columns: Sequence[str],
    *,
    batch_sizes: Sequence[int] | None = None,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 0,
    seed: int = 0,
    epoch: int = 0,
    pieces: Sequence[Piece] | None = None,
) -> Iterator[pa.Table]:
    """The rank's rows as Arrow tables of the given sizes (default: the file's read batches as they come).

    With ``batch_sizes`` (from ``ShardPlan.batch_sizes``, adding up to the rank's rows) the tables have exactly those
    sizes.
    """
    src = as_source(files)
    pieces = list(plan(src) if pieces is None else pieces)
    cols = list(columns)
    shards = shard_plan(pieces, world_size, 1)
    lo, hi = shards.bounds(rank)
    lo_us = _micros(src.start) if src.start is not None else None
    hi_us = _micros(src.end) if src.end is not None else None
    # The rank's part of each piece, in plan coordinates.
    mine: list[tuple[Piece, int, int]] = []
    offset = 0
    for p in pieces:
        a, b = max(lo, offset), min(hi, offset + p.rows)
        if b > a:
            mine.append((p, a - offset, b - offset))
        offset += p.rows
    rng = np.random.default_rng([seed, epoch, rank])
    if shuffle_buffer > 0:
        mine = [mine[i] for i in rng.permutation(len(mine))]
    chunks = (t for p, a, b in mine for t in _read_piece(src, p, cols, a, b, lo_us, hi_us))
    if batch_sizes is None and shuffle_buffer <= 0:
        yield from chunks
        return
    yield from _rebatch(chunks, batch_sizes, shuffle_buffer, rng)


def _rebatch(
    chunks: Iterator[pa.Table], sizes: Sequence[int] | None, shuffle_buffer: int, rng: np.random.Generator
) -> Iterator[pa.Table]:
    """Cut a stream of tables into the given sizes, permuting blocks of ``shuffle_buffer`` rows when asked."""
    pending: pa.Table | None = None
    exhausted = False
    sizes_iter = iter(sizes) if sizes is not None else None
    while True:
        want = next(sizes_iter, None) if sizes_iter is not None else READ_ROWS
        if want is None:
            return
        if pending is None or pending.num_rows < want:
            target = max(want, shuffle_buffer)
            parts = [pending] if pending is not None and pending.num_rows else []
            have = pending.num_rows if pending is not None else 0
            while have < target and not exhausted:
                t = next(chunks, None)
                if t is None:
                    exhausted = True
                else:
                    parts.append(t)
                    have += t.num_rows
            if not parts:
                if sizes_iter is not None and want > 0:
                    raise RuntimeError("the data ran out before the planned batches (files changed while reading?)")
                return
            pending = pa.concat_tables(parts).combine_chunks()
            if shuffle_buffer > 0:
                pending = pending.take(pa.array(rng.permutation(pending.num_rows)))
        out_rows = min(want, pending.num_rows)
        yield pending.slice(0, out_rows)
        pending = pending.slice(out_rows)
        if sizes_iter is None and exhausted and pending.num_rows == 0:
            return


# --- tensors ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """One training or scoring batch as tensors, in the model's argument order (``model(*batch.inputs)``)."""

    ids: torch.Tensor  # rows x id columns, int64
    dense: torch.Tensor  # rows x dense inputs, float32
    bag_values: tuple[torch.Tensor, ...]
    bag_offsets: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None  # rows x heads, float32

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        return self.ids, self.dense, list(self.bag_values), list(self.bag_offsets)


def to_batch(data: pa.Table, spec: FeatureSpec, *, labels: bool = True) -> Batch:
    enc = encode(data, spec, labels=labels)
    return Batch(
        ids=torch.from_numpy(enc.ids),
        dense=torch.from_numpy(enc.dense),
        bag_values=tuple(torch.from_numpy(v) for v, _ in enc.bags),
        bag_offsets=tuple(torch.from_numpy(o) for _, o in enc.bags),
        labels=torch.from_numpy(enc.labels) if enc.labels is not None else None,
    )


def iter_batches(
    files: Files,
    spec: FeatureSpec,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 0,
    seed: int = 0,
    epoch: int = 0,
    labels: bool = True,
    pieces: Sequence[Piece] | None = None,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """The rank's batches for one epoch: ``ShardPlan.steps`` of them, about ``batch_size`` rows each.

    Reading and encoding run in a background thread (``prefetch`` batches ahead) while the caller trains.
    """
    src = as_source(files)
    pieces = list(plan(src) if pieces is None else pieces)
    sizes = shard_plan(pieces, world_size, batch_size).batch_sizes(rank)
    tables = iter_tables(
        src,
        spec.feature_columns(labels=labels),
        batch_sizes=sizes,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        epoch=epoch,
        pieces=pieces,
    )
    batches = (to_batch(t, spec, labels=labels) for t in tables)
    yield from (_prefetched(batches, prefetch) if prefetch > 0 else batches)


_DONE = object()


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """Run an iterator in a daemon thread, ``depth`` items ahead; its exceptions re-raise in the caller."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)

    thread = threading.Thread(target=produce, daemon=True, name="ranker-batches")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# --- whole-source helpers ---------------------------------------------------------------------------------------------
def check_files(files: Files, spec: FeatureSpec, *, labels: bool = True) -> None:
    """Every file's schema fits the spec (footers only); raise ``FeatureSchemaError`` naming the file and columns."""
    src = as_source(files)
    for f in src.files:
        spec.validate(pq.read_schema(f), labels=labels, where=f)


def read_columns(files: Files, columns: Sequence[str]) -> pa.Table:
    """A few columns of every kept row, in plan order (the order ``predict`` returns); e.g. keys and labels."""
    tables = list(iter_tables(files, columns))
    if not tables:
        raise ValueError(f"{as_source(files).describe()} has no rows")
    return pa.concat_tables(tables)


def fit_dense_stats(files: Files, spec: FeatureSpec) -> FeatureSpec:
    """The spec with the dense columns' mean and standard deviation (after signed log1p), in one streaming pass.

    A dense column without a single finite value in the whole training set is refused with its name: it is a broken
    join or a corrupt column, not a feature.
    """
    src = as_source(files)
    check_files(src, spec)
    k = len(spec.dense_columns)
    n, s, ss = np.zeros(k), np.zeros(k), np.zeros(k)
    for t in iter_tables(src, spec.dense_sources()):
        x = signed_log1p(dense_matrix(t, spec.dense_columns))
        ok = np.isfinite(x)
        x = np.where(ok, x, 0.0)
        n += ok.sum(axis=0)
        s += x.sum(axis=0)
        ss += (x * x).sum(axis=0)
    empty = {
        c: "has no value in any row of the training set" for c, m in zip(spec.dense_columns, n, strict=True) if m == 0
    }
    if empty:
        raise FeatureSchemaError(empty, src.describe())
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    return spec.with_stats(mean, np.where(std > 1e-6, std, 1.0))


def count_rows(files: Files) -> int:
    return sum(p.rows for p in plan(files))


def chunked(files: Files, columns: Iterable[str], *, rows: int = READ_ROWS * 4) -> Iterator[pa.Table]:
    """Every kept row in plan order, in tables of about ``rows`` rows (for scoring and the baselines)."""
    src = as_source(files)
    pieces = plan(src)
    total = sum(p.rows for p in pieces)
    sizes = [rows] * (total // rows) + ([total % rows] if total % rows else [])
    yield from iter_tables(src, list(columns), batch_sizes=sizes, pieces=pieces)
