"""Streaming Parquet: shards cover every row once, windows cut exactly, shuffles are seeded, statistics stream."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.ranker.data import (
    ParquetSource,
    count_rows,
    fit_dense_stats,
    iter_batches,
    iter_tables,
    plan,
    read_columns,
    shard_plan,
    time_holdout,
    timestamps_us,
)
from ml.ranker.features import FeatureSchemaError, FeatureSpec


def post_ids(files, *, rank, world_size, batch_size=300, shuffle_buffer=0, epoch=0):
    pieces = plan(files)
    sizes = shard_plan(pieces, world_size, batch_size).batch_sizes(rank)
    tables = list(
        iter_tables(
            files,
            ["post_id"],
            batch_sizes=sizes,
            rank=rank,
            world_size=world_size,
            shuffle_buffer=shuffle_buffer,
            epoch=epoch,
            pieces=pieces,
        )
    )
    assert [t.num_rows for t in tables] == sizes
    return [i for t in tables for i in t.column("post_id").to_pylist()]


@pytest.mark.parametrize("shuffle_buffer", [0, 700])
def test_two_ranks_use_every_row_exactly_once_in_equal_steps(dataset, shuffle_buffer):
    files, _ = dataset
    everything = pq.ParquetDataset(files).read(columns=["post_id"]).column("post_id").to_pylist()
    r0 = post_ids(files, rank=0, world_size=2, shuffle_buffer=shuffle_buffer)
    r1 = post_ids(files, rank=1, world_size=2, shuffle_buffer=shuffle_buffer)
    assert Counter(r0 + r1) == Counter(everything) and len(everything) == 9_000
    assert len(r0) == len(r1) == 4_500
    plan_ = shard_plan(plan(files), 2, 300)
    assert plan_.steps == 15 and plan_.batch_sizes(0) == [300] * 15


def test_shards_of_a_window_that_cuts_row_groups(dataset):
    files, _ = dataset
    train, holdout = time_holdout(files)
    assert holdout.start == datetime(2026, 10, 22, tzinfo=UTC) and train.end == holdout.start
    table = pq.ParquetDataset(files).read(columns=["post_id", "impressed_at"])
    ts = timestamps_us(table.column("impressed_at"))
    cut = int(holdout.start.timestamp() * 1_000_000)
    expected_holdout = set(np.asarray(table.column("post_id"))[ts >= cut].tolist())
    assert any(p.filtered for p in plan(holdout)), "the day boundary should fall inside a row group"
    for world in (1, 2, 3):
        got = [i for r in range(world) for i in post_ids(holdout, rank=r, world_size=world, batch_size=128)]
        assert len(got) == len(set(got)) and set(got) == expected_holdout
    assert count_rows(train) + count_rows(holdout) == 9_000


def test_batches_over_ranks_have_equal_steps_and_add_up(dataset, tiny_cfg):
    files, _ = dataset
    train, _ = time_holdout(files)
    spec = FeatureSpec.from_schema(pq.read_schema(files[0]), id_buckets=64, multi_buckets=16).with_stats(
        [0.0] * 4, [1.0] * 4
    )
    rows = {r: [b.rows for b in iter_batches(train, spec, batch_size=256, rank=r, world_size=2)] for r in (0, 1)}
    assert len(rows[0]) == len(rows[1]) and sum(rows[0]) + sum(rows[1]) == count_rows(train)
    assert max(rows[0] + rows[1]) - min(rows[0] + rows[1]) <= 1
    b = next(iter_batches(train, spec, batch_size=256))
    assert b.ids.shape == (b.rows, 3) and b.dense.shape == (b.rows, 8) and b.labels.shape == (b.rows, 7)
    assert len(b.bag_offsets) == 1 and b.bag_offsets[0].shape == (b.rows,)


def test_shuffle_is_seeded_per_epoch(dataset):
    files, _ = dataset
    e0 = post_ids(files, rank=0, world_size=1, shuffle_buffer=2_000, epoch=0)
    assert e0 == post_ids(files, rank=0, world_size=1, shuffle_buffer=2_000, epoch=0)
    e1 = post_ids(files, rank=0, world_size=1, shuffle_buffer=2_000, epoch=1)
    assert e1 != e0 and sorted(e1) == sorted(e0)
    assert post_ids(files, rank=0, world_size=1) == read_columns(files, ["post_id"]).column("post_id").to_pylist()


def write(tmp_path, name, table, **kw):
    path = tmp_path / name
    pq.write_table(table, path, **kw)
    return str(path)


def test_windows_on_int96_timestamps_without_statistics(tmp_path):
    ts = pa.array([datetime(2026, 1, d, 12, tzinfo=UTC) for d in (1, 1, 2, 2, 3)], pa.timestamp("us", tz="UTC"))
    table = pa.table({"post_id": pa.array(range(5), pa.int64()), "impressed_at": ts})
    spark_like = write(tmp_path, "int96.parquet", table, use_deprecated_int96_timestamps=True, row_group_size=2)
    with_stats = write(tmp_path, "int64.parquet", table, row_group_size=2)
    for f in (spark_like, with_stats):
        train, holdout = time_holdout([f])
        assert read_columns(holdout, ["post_id"]).column("post_id").to_pylist() == [4]
        assert read_columns(train, ["post_id"]).column("post_id").to_pylist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="nothing is left to train on"):
        time_holdout([with_stats], holdout_days=3)


def test_too_few_rows_for_the_processes(tmp_path):
    f = write(tmp_path, "one.parquet", pa.table({"post_id": pa.array([1], pa.int64())}))
    with pytest.raises(ValueError, match="1 row"):
        shard_plan(plan([f]), 2, 10)


def dense_spec(*columns):
    return FeatureSpec(id_columns=("viewer_id",), multi_columns=(), dense_columns=columns, label_columns=LABELS)


LABELS = tuple(f"label_{h}" for h in ("like", "comment", "save", "share", "follow", "hide", "dwell"))


def dense_table(values, other=None):
    n = len(values)
    return pa.table(
        {
            "viewer_id": pa.array(range(n), pa.int64()),
            "post__x": pa.array(values, pa.float64()),
            "post__y": pa.array(other if other is not None else [1.0] * n, pa.float64()),
            **{c: pa.array([0] * n, pa.int32()) for c in LABELS},
        }
    )


def test_dense_statistics_stream_over_files(tmp_path):
    # post__x over two files: 0, e-1, null, e^3-1 -> signed log1p 0, 1, 3 (the null skipped): mean 4/3,
    # variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 3 = (16 + 1 + 25) / 27 = 14/9 -> std 1.247219.
    # post__y is constant: std 0 is replaced by 1.
    f1 = write(tmp_path, "a.parquet", dense_table([0.0, math.e - 1]))
    f2 = write(tmp_path, "b.parquet", dense_table([None, math.e**3 - 1]))
    spec = fit_dense_stats([f1, f2], dense_spec("post__x", "post__y"))
    assert spec.dense_mean[0] == pytest.approx(4 / 3) and spec.dense_std[0] == pytest.approx(1.247219, abs=1e-6)
    assert spec.dense_mean[1] == pytest.approx(math.log(2)) and spec.dense_std[1] == 1.0


def test_statistics_refuse_a_column_without_any_value(tmp_path):
    f = write(tmp_path, "a.parquet", dense_table([1.0, 2.0], other=[None, None]))
    with pytest.raises(FeatureSchemaError, match="'post__y' has no value in any row"):
        fit_dense_stats([f], dense_spec("post__x", "post__y"))


def test_a_single_path_is_refused():
    with pytest.raises(TypeError, match="list of Parquet files"):
        plan("/some/file.parquet")
    with pytest.raises(ValueError, match="at least one file"):
        ParquetSource(())
