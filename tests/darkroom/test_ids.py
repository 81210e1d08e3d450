"""The seed's instagram_id: layout, ordering, shard routing, and the Spark column form agrees with the scalar one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkroom import ids

MS = st.integers(min_value=ids.EPOCH_MS, max_value=ids.EPOCH_MS + ids.MAX_MS)
SHARD = st.integers(min_value=0, max_value=ids.N_SHARDS - 1)
SEQ = st.integers(min_value=0, max_value=ids.MAX_SEQ)


def test_layout_matches_the_seed_function():
    # The seed's PL/pgSQL: (now_millis - epoch) << 23 | shard_id << 10 | seq_id
    unix_ms, shard, seq = 1_387_263_000_000, 1341, 7
    assert ids.encode(unix_ms, shard, seq) == ((unix_ms - 1314220021721) << 23) | (shard << 10) | seq
    assert ids.encode(ids.EPOCH_MS, 0, 0) == 0


@given(MS, SHARD, SEQ)
def test_decode_inverts_encode(ms, shard, seq):
    assert ids.decode(ids.encode(ms, shard, seq)) == (ms, shard, seq)


@given(MS, MS, SHARD, SHARD, SEQ, SEQ)
def test_ids_sort_by_time_first(ms1, ms2, sh1, sh2, q1, q2):
    a, b = ids.encode(ms1, sh1, q1), ids.encode(ms2, sh2, q2)
    if ms1 < ms2:
        assert a < b
    if ms1 == ms2 and sh1 == sh2:
        assert (a < b) == (q1 < q2)


def test_objects_route_to_their_owners_shard():
    user_id = ids.encode(1_500_000_000_000, 4321, 5)
    post_id = ids.encode(1_600_000_000_000, ids.shard_for_user(user_id), 99)
    assert ids.shard_of(post_id) == ids.shard_of(user_id) == 4321
    assert ids.shard_for_user(user_id, n_logical_shards=2000) == 4321 % 2000


@pytest.mark.parametrize(
    "args, field",
    [
        ((ids.EPOCH_MS - 1, 0, 0), "timestamp"),
        ((ids.EPOCH_MS, ids.N_SHARDS, 0), "shard"),
        ((ids.EPOCH_MS, 0, ids.MAX_SEQ + 1), "sequence"),
    ],
)
def test_out_of_range_fields_are_refused_by_name(args, field):
    with pytest.raises(ValueError, match=field):
        ids.encode(*args)


def test_spark_columns_agree_with_scalars(spark):
    from pyspark.sql import functions as F

    rows = [(1_400_000_000_123, 17, 1000), (1_700_000_000_000, 8191, 1023), (ids.EPOCH_MS, 0, 0)]
    df = spark.createDataFrame(rows, "ms long, shard long, seq long")
    got = (
        df.select(ids.encode_col(F.col("ms"), F.col("shard"), F.col("seq")).alias("id"))
        .select("id", ids.shard_col(F.col("id")).alias("shard"), ids.ms_col(F.col("id")).alias("ms"))
        .collect()
    )
    assert [(r.id, r.shard, r.ms) for r in got] == [(ids.encode(*r), r[1], r[0]) for r in rows]
