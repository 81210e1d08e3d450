"""The feature spec: inference from a schema, refusals naming the column, stable hashing, the dense transform."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from ml.ranker.features import (
    LABEL_COLUMNS,
    FeatureSchemaError,
    FeatureSpec,
    column_salt,
    encode,
    hash_ids,
    hash_string_lists,
    hash_strings,
    transform_dense,
)

E1 = math.e - 1  # signed log1p(e - 1) = 1


def schema(**overrides: pa.DataType) -> pa.Schema:
    fields = {
        "viewer_id": pa.int64(),
        "post_id": pa.int64(),
        "author_id": pa.int64(),
        "impressed_at": pa.timestamp("us", tz="UTC"),
        **{c: pa.int32() for c in LABEL_COLUMNS},
        "viewer__follower_count": pa.int64(),
        "post__like_rate": pa.float64(),
        "post_hashtags__hashtags": pa.list_(pa.string()),
        **overrides,
    }
    return pa.schema([(k, v) for k, v in fields.items() if v is not None])


def test_from_schema_infers_dense_and_multi_columns_sorted():
    spec = FeatureSpec.from_schema(schema(viewer_author__affinity=pa.float32(), author__is_verified=pa.bool_()))
    assert spec.id_columns == ("viewer_id", "author_id", "post_id")
    assert spec.dense_columns == (
        "author__is_verified",
        "post__like_rate",
        "viewer__follower_count",
        "viewer_author__affinity",
    )
    assert spec.multi_columns == ("post_hashtags__hashtags",)
    assert spec.dense_inputs == 8 and not spec.fitted


def test_from_schema_refuses_a_feature_column_of_another_type():
    with pytest.raises(FeatureSchemaError, match="'viewer__country' is string") as e:
        FeatureSpec.from_schema(schema(viewer__country=pa.string()))
    assert e.value.columns == ("viewer__country",)
    assert FeatureSpec.from_schema(schema(viewer__country=pa.string()), exclude=["viewer__country"])


def test_validate_names_a_missing_and_a_corrupt_column():
    spec = FeatureSpec.from_schema(schema())
    with pytest.raises(FeatureSchemaError) as e:
        spec.validate(schema(post__like_rate=pa.string(), viewer__follower_count=None), where="part-0.parquet")
    assert set(e.value.columns) == {"post__like_rate", "viewer__follower_count"}
    msg = str(e.value)
    assert msg.startswith("part-0.parquet: ")
    assert "'viewer__follower_count' is missing (expected a number)" in msg
    assert "'post__like_rate' is string, expected a number" in msg
    with pytest.raises(FeatureSchemaError, match="'label_hide' is missing"):
        spec.validate(schema(label_hide=None))
    spec.validate(schema(label_hide=None), labels=False)  # scoring needs no labels
    with pytest.raises(FeatureSchemaError, match="'viewer_id' is double, expected an integer id"):
        spec.validate(schema(viewer_id=pa.float64()))


def test_spec_round_trips_through_a_dict():
    spec = FeatureSpec.from_schema(schema(), id_buckets=100).with_stats([1.0, 2.0], [0.5, 3.0])
    assert FeatureSpec.from_dict(spec.to_dict()) == spec and spec.fitted


def test_id_hash_is_splitmix64():
    # splitmix64 seeded with 0 returns 0xE220A8397B1DCDAF first: our hash of 0 with salt 1 is that output.
    assert hash_ids(np.array([0]), 1 << 62, salt=1)[0] == 0xE220A8397B1DCDAF % (1 << 62)
    h = hash_ids(np.arange(10_000), 97, salt=column_salt("viewer_id"))
    assert h.min() >= 0 and h.max() < 97 and len(np.unique(h)) == 97
    assert not np.array_equal(h, hash_ids(np.arange(10_000), 97, salt=column_salt("author_id")))


def test_hashing_is_stable_across_processes():
    code = (
        "import numpy as np; from ml.ranker.features import hash_ids, hash_strings, column_salt as s; "
        "print(hash_ids(np.array([1, 2, 3]), 1000, s('viewer_id')).tolist(), "
        "hash_strings(['cats', 'dogs'], 1000, s('post_hashtags__hashtags')).tolist())"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout
        for seed in ("1", "2")
    }
    here = (
        f"{hash_ids(np.array([1, 2, 3]), 1000, column_salt('viewer_id')).tolist()} "
        f"{hash_strings(['cats', 'dogs'], 1000, column_salt('post_hashtags__hashtags')).tolist()}\n"
    )
    assert runs == {here}


def test_string_lists_become_bags_with_offsets():
    col = pa.array([["cats", "dogs"], None, [], ["cats"]], pa.list_(pa.string()))
    values, offsets = hash_string_lists(col, 50, salt=3)
    assert offsets.tolist() == [0, 2, 2, 2]  # a null and an empty list are empty bags
    cats, dogs = hash_strings(["cats", "dogs"], 50, salt=3)
    assert values.tolist() == [cats, dogs, cats]


def test_dense_transform_by_hand():
    # signed log1p: e-1 -> 1, -(e-1) -> -1, 0 -> 0; standardised with mean 0.5, std 0.25:
    # 1 -> 2, -1 -> -6, 0 -> -2; missing (NaN, inf) -> 0 with indicator 1; 1e30 -> log1p ~ 69 -> 274 -> clipped 10.
    raw = np.array([[E1], [-E1], [0.0], [np.nan], [np.inf], [1e30]])
    out = transform_dense(raw, [0.5], [0.25])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [2, -6, -2, 0, 0, 10], atol=1e-6)
    assert out[:, 1].tolist() == [0, 0, 0, 1, 1, 0]


def test_encode_a_table():
    spec = FeatureSpec(
        id_columns=("viewer_id",),
        multi_columns=("post_hashtags__hashtags",),
        dense_columns=("post__like_rate",),
        id_buckets=1000,
        multi_buckets=50,
    ).with_stats([0.0], [1.0])
    table = pa.table(
        {
            "viewer_id": pa.array([7, 8], pa.int64()),
            "post_hashtags__hashtags": pa.array([["a"], None], pa.list_(pa.string())),
            "post__like_rate": pa.array([E1, None], pa.float64()),
            **{c: pa.array([1, 0], pa.int32()) for c in LABEL_COLUMNS},
        }
    )
    enc = encode(table, spec)
    assert enc.ids[:, 0].tolist() == hash_ids(np.array([7, 8]), 1000, column_salt("viewer_id")).tolist()
    np.testing.assert_allclose(enc.dense, [[1, 0], [0, 1]], atol=1e-6)
    assert enc.bags[0][1].tolist() == [0, 1] and enc.labels.shape == (2, 7) and enc.labels[:, 0].tolist() == [1, 0]
    with pytest.raises(ValueError, match="no dense statistics"):
        encode(table, FeatureSpec(("viewer_id",), (), ("post__like_rate",)))


def test_context_features_come_from_the_rows_surface_and_position():
    spec = FeatureSpec.from_schema(schema(surface=pa.string(), position=pa.int32()))
    assert "context__explore" in spec.dense_columns and "context__position" in spec.dense_columns
    # What a row must carry: the source columns, once each, not the derived names.
    cols = spec.feature_columns(labels=False)
    assert {"surface", "position"} <= set(cols) and not any(c.startswith("context__") for c in cols)
    spec = spec.with_stats([0.0] * len(spec.dense_columns), [1.0] * len(spec.dense_columns))
    rows = pa.table(
        {
            "viewer_id": [1, 2, 3],
            "post_id": [4, 5, 6],
            "author_id": [7, 8, 9],
            "viewer__follower_count": [0, 0, 0],
            "post__like_rate": [0.0, 0.0, 0.0],
            "post_hashtags__hashtags": pa.array([[], [], []], pa.list_(pa.string())),
            "surface": ["feed", "explore", None],
            "position": pa.array([0, 3, None], pa.int32()),
        }
    )
    enc = encode(rows, spec, labels=False)
    k = len(spec.dense_columns)
    explore, position = spec.dense_columns.index("context__explore"), spec.dense_columns.index("context__position")
    assert enc.dense[:, explore].tolist() == pytest.approx([0.0, math.log(2), 0.0])  # signed log1p of 0, 1, missing
    assert enc.dense[:, position].tolist() == pytest.approx([0.0, math.log(4), 0.0])
    assert enc.dense[:, k + explore].tolist() == [0.0, 0.0, 1.0]  # a missing surface is flagged, not "feed"
    assert enc.dense[:, k + position].tolist() == [0.0, 0.0, 1.0]


def test_context_source_of_the_wrong_type_is_refused_by_its_column_name():
    spec = FeatureSpec.from_schema(schema(surface=pa.string(), position=pa.int32()))
    with pytest.raises(FeatureSchemaError) as e:
        spec.validate(schema(surface=pa.int64(), position=None), where="part-3.parquet")
    assert set(e.value.columns) == {"surface", "position"}
    assert "'surface' is int64, expected a string (feed or explore)" in str(e.value)
    assert "'position' is missing (expected a number (the slot, 0 = top))" in str(e.value)
    assert "context__explore" not in FeatureSpec.from_schema(schema(surface=pa.string()), context=False).dense_columns
