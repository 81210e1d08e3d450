"""What the ranker reads from a training set, and how a row becomes model inputs (pure: no files, no torch).

A training set has key columns, seven 0/1 label columns and feature columns named ``<view>__<feature>``:
numbers (a missing value is null) and lists of strings (``post_hashtags__hashtags``). ``FeatureSpec`` names the
columns the model uses and carries the dense columns' statistics, so it is saved with the model and the same
transform runs at training, evaluation and serving time.

Inputs:
- id columns (``viewer_id``, ``author_id``, ``post_id``): hashed into ``id_buckets`` rows of one embedding table each;
- multi-valued columns (lists of strings): each string hashed into ``multi_buckets`` rows, pooled per row by an
  embedding bag (an empty or null list pools to zeros);
- request context (``context__explore`` from ``surface``, ``context__position`` from ``position``): what the feed knows
  when it asks for a score, read from the row itself rather than the feature store; dense columns like the others
  (at serving time a candidate not yet placed has position 0);
- dense columns: ``sign(x) * log1p(|x|)``, standardised with the training set's mean and standard deviation, clipped
  to +-10; a missing value (null, NaN or infinite) becomes 0 (the mean) and sets the column's missing indicator, so
  the model gets ``2 x dense columns`` inputs and can tell "missing" from "average".

Hashing is stable across processes, machines and runs (never Python's ``hash()``): ids go through a splitmix64 mix
salted by the column name, strings through BLAKE2b keyed by the column name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADS: tuple[str, ...] = ("like", "comment", "save", "share", "follow", "hide", "dwell")
LABEL_COLUMNS: tuple[str, ...] = tuple(f"label_{h}" for h in HEADS)
DEFAULT_ID_COLUMNS: tuple[str, ...] = ("viewer_id", "author_id", "post_id")
TIME_COLUMN = "impressed_at"
KEY_COLUMNS: tuple[str, ...] = ("viewer_id", "post_id", TIME_COLUMN)
FEATURE_SEPARATOR = "__"
DENSE_CLIP = 10.0
# Dense context features -> (the row's column they come from, what that column must be).
CONTEXT_FEATURES: dict[str, tuple[str, str]] = {
    "context__explore": ("surface", "a string (feed or explore)"),
    "context__position": ("position", "a number (the slot, 0 = top)"),
}

_MASK64 = (1 << 64) - 1


class FeatureSchemaError(ValueError):
    """A training or scoring set lacks a column the spec needs, or has one of the wrong type.

    ``columns`` names every offending column; the message says what is wrong with each.
    """

    def __init__(self, problems: Mapping[str, str], where: str = "") -> None:
        self.columns = tuple(problems)
        self.problems = dict(problems)
        lines = "; ".join(f"column {c!r} {p}" for c, p in problems.items())
        super().__init__(f"{where + ': ' if where else ''}{lines}")


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _is_string_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
    )


def _context_type_ok(feature: str, t: pa.DataType) -> bool:
    if feature == "context__explore":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)
    return _is_number(t)


def source_column(column: str) -> str:
    """The row's column a model input is read from: a context feature's source, else the column itself."""
    return CONTEXT_FEATURES[column][0] if column in CONTEXT_FEATURES else column


def context_feature(data: pa.Table | pa.RecordBatch, feature: str) -> pa.Array | pa.ChunkedArray:
    """A context feature's raw values (float64, null = missing) from its source column."""
    col = data.column(source_column(feature))
    if feature == "context__explore":
        return pc.cast(pc.equal(pc.cast(col, pa.string()), "explore"), pa.float64())
    return pc.cast(col, pa.float64())


def schema_problems(schema: pa.Schema, expected: Sequence[tuple[str, str, Any]]) -> dict[str, str]:
    """Column -> what is wrong with it, for (column, what it must be, type predicate) triples; empty when all fit."""
    out: dict[str, str] = {}
    for name, what, ok in expected:
        idx = schema.get_field_index(name)
        if idx < 0:
            out[name] = f"is missing (expected {what})"
        elif not ok(schema.field(idx).type):
            out[name] = f"is {schema.field(idx).type}, expected {what}"
    return out


@dataclass(frozen=True)
class FeatureSpec:
    """The columns the ranker uses, their hashing and the dense columns' statistics (empty until fitted)."""

    id_columns: tuple[str, ...]
    multi_columns: tuple[str, ...]
    dense_columns: tuple[str, ...]
    label_columns: tuple[str, ...] = LABEL_COLUMNS
    id_buckets: int = 1 << 20
    multi_buckets: int = 1 << 16
    dense_mean: tuple[float, ...] = field(default=())
    dense_std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        names = [*self.id_columns, *self.multi_columns, *self.dense_columns, *self.label_columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"a column has two roles in the feature spec: {dup}")
        if len(self.label_columns) != len(HEADS):
            raise ValueError(f"expected {len(HEADS)} label columns ({', '.join(HEADS)}), got {self.label_columns}")
        if self.dense_mean and not (len(self.dense_mean) == len(self.dense_std) == len(self.dense_columns)):
            raise ValueError("dense statistics do not match the dense columns")

    @classmethod
    def from_schema(
        cls,
        schema: pa.Schema,
        *,
        id_columns: Sequence[str] = DEFAULT_ID_COLUMNS,
        label_columns: Sequence[str] = LABEL_COLUMNS,
        id_buckets: int = 1 << 20,
        multi_buckets: int = 1 << 16,
        exclude: Sequence[str] = (),
        context: bool = True,
    ) -> FeatureSpec:
        """Every ``<view>__<feature>`` column: numbers are dense features, lists of strings multi-valued ones.

        With ``context``, every context feature (``CONTEXT_FEATURES``) whose source column the schema has.

        A ``<view>__<feature>`` column of any other type (a string, a timestamp, ...) is refused with its name,
        unless listed in ``exclude``; the id and label columns are checked by ``validate``.
        """
        dense, multi, bad = [], [], {}
        for f in schema:
            if FEATURE_SEPARATOR not in f.name or f.name in exclude:
                continue
            if f.name in id_columns or f.name in label_columns:
                continue
            if _is_number(f.type):
                dense.append(f.name)
            elif _is_string_list(f.type):
                multi.append(f.name)
            else:
                bad[f.name] = (
                    f"is {f.type}, expected a number or a list of strings (feature columns are <view>__<name>)"
                )
        if bad:
            raise FeatureSchemaError(bad, "training set")
        if context:
            dense += [f for f, (src, _) in CONTEXT_FEATURES.items() if src in schema.names and f not in exclude]
        spec = cls(
            id_columns=tuple(id_columns),
            multi_columns=tuple(sorted(multi)),
            dense_columns=tuple(sorted(dense)),
            label_columns=tuple(label_columns),
            id_buckets=id_buckets,
            multi_buckets=multi_buckets,
        )
        spec.validate(schema, where="training set")
        return spec

    # --- checks ---------------------------------------------------------------------------------------------------
    def problems(self, schema: pa.Schema, *, labels: bool = True) -> dict[str, str]:
        """Column -> what is wrong with it (missing or mistyped); empty when the schema fits the spec."""
        expected: list[tuple[str, str, Any]] = [
            *[(c, "an integer id", pa.types.is_integer) for c in self.id_columns],
            *[(c, "a list of strings", _is_string_list) for c in self.multi_columns],
            *[(c, "a number", _is_number) for c in self.dense_columns if c not in CONTEXT_FEATURES],
            *[
                (CONTEXT_FEATURES[c][0], CONTEXT_FEATURES[c][1], lambda t, c=c: _context_type_ok(c, t))
                for c in self.dense_columns
                if c in CONTEXT_FEATURES
            ],
        ]
        if labels:
            expected += [
                (c, "a 0/1 label (integer or boolean)", lambda t: pa.types.is_integer(t) or pa.types.is_boolean(t))
                for c in self.label_columns
            ]
        return schema_problems(schema, expected)

    def validate(self, schema: pa.Schema, *, labels: bool = True, where: str = "") -> None:
        """Raise ``FeatureSchemaError`` naming every missing or mistyped column."""
        bad = self.problems(schema, labels=labels)
        if bad:
            raise FeatureSchemaError(bad, where)

    # --- shape ----------------------------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return len(self.dense_mean) == len(self.dense_columns) and (bool(self.dense_mean) or not self.dense_columns)

    @property
    def dense_inputs(self) -> int:
        """Model inputs from the dense columns: a standardised value and a missing indicator each."""
        return 2 * len(self.dense_columns)

    @property
    def heads(self) -> tuple[str, ...]:
        return HEADS

    def dense_sources(self) -> list[str]:
        """The row's columns the dense inputs are read from (a context feature's source column, once)."""
        return list(dict.fromkeys(source_column(c) for c in self.dense_columns))

    def feature_columns(self, *, labels: bool = True) -> list[str]:
        """The row's columns the model reads (what a scoring request must carry), labels last."""
        cols = [*self.id_columns, *self.multi_columns, *self.dense_sources()]
        return cols + list(self.label_columns) if labels else cols

    def with_stats(self, mean: Sequence[float], std: Sequence[float]) -> FeatureSpec:
        return replace(self, dense_mean=tuple(float(m) for m in mean), dense_std=tuple(float(s) for s in std))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; saved with the model."""
        return {
            "id_columns": list(self.id_columns),
            "multi_columns": list(self.multi_columns),
            "dense_columns": list(self.dense_columns),
            "label_columns": list(self.label_columns),
            "id_buckets": self.id_buckets,
            "multi_buckets": self.multi_buckets,
            "dense_mean": list(self.dense_mean),
            "dense_std": list(self.dense_std),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            id_columns=tuple(d["id_columns"]),
            multi_columns=tuple(d["multi_columns"]),
            dense_columns=tuple(d["dense_columns"]),
            label_columns=tuple(d["label_columns"]),
            id_buckets=int(d["id_buckets"]),
            multi_buckets=int(d["multi_buckets"]),
            dense_mean=tuple(float(x) for x in d["dense_mean"]),
            dense_std=tuple(float(x) for x in d["dense_std"]),
        )


# --- hashing ----------------------------------------------------------------------------------------------------------
def column_salt(column: str) -> int:
    """A stable 64-bit salt per column name (so two id columns never share a collision pattern)."""
    return int.from_bytes(hashlib.blake2b(column.encode(), digest_size=8).digest(), "little")


def hash_ids(values: np.ndarray, buckets: int, salt: int = 0) -> np.ndarray:
    """splitmix64(value + salt) mod buckets, vectorised; int64 in [0, buckets)."""
    z = np.asarray(values).astype(np.int64, copy=False).view(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64((salt * 0x9E3779B97F4A7C15) & _MASK64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(buckets)).astype(np.int64)


@lru_cache(maxsize=1 << 20)
def _string_hash64(value: str, salt: int) -> int:
    key = salt.to_bytes(8, "little")
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8, key=key).digest(), "little")


def hash_strings(values: Sequence[str], buckets: int, salt: int = 0) -> np.ndarray:
    """BLAKE2b-64 keyed by the salt, mod buckets; int64 in [0, buckets). Repeated strings are hashed once."""
    return np.fromiter((_string_hash64(v, salt) % buckets for v in values), dtype=np.int64, count=len(values))


def hash_string_lists(column: pa.Array | pa.ChunkedArray, buckets: int, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A list<string> column as an embedding bag's (values, offsets): offsets[i] is where row i's values start.

    A null list is an empty bag; a null string inside a list hashes like the empty string.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    flat = pc.fill_null(pc.list_flatten(arr), "")
    if len(flat) == 0:
        return np.zeros(0, dtype=np.int64), offsets
    encoded = pc.dictionary_encode(flat)
    table = hash_strings(encoded.dictionary.to_pylist(), buckets, salt)
    return table[encoded.indices.to_numpy(zero_copy_only=False)], offsets


# --- encoding ---------------------------------------------------------------------------------------------------------
def dense_matrix(data: pa.Table | pa.RecordBatch, columns: Sequence[str]) -> np.ndarray:
    """The raw dense columns as float64 (rows x columns); null -> NaN. Context features come from their source."""
    out = np.empty((data.num_rows, len(columns)), dtype=np.float64)
    for j, c in enumerate(columns):
        col = context_feature(data, c) if c in CONTEXT_FEATURES else pc.cast(data.column(c), pa.float64())
        out[:, j] = col.to_numpy(zero_copy_only=False) if col.null_count == 0 else _with_nan(col)
    return out


def _with_nan(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(col, float("nan")).to_numpy(zero_copy_only=False)


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def transform_dense(raw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Raw values (rows x columns, NaN = missing) -> float32 [standardised values | missing indicators]."""
    missing = ~np.isfinite(raw)
    with np.errstate(invalid="ignore"):
        z = (signed_log1p(raw) - np.asarray(mean)) / np.asarray(std)
    z = np.clip(np.where(missing, 0.0, z), -DENSE_CLIP, DENSE_CLIP)
    return np.concatenate([z, missing], axis=1).astype(np.float32)


@dataclass(frozen=True)
class EncodedRows:
    """Model inputs of some rows as numpy arrays (torch-free, so baselines and serving can use them too)."""

    ids: np.ndarray  # rows x id columns, int64 bucket numbers
    bags: tuple[tuple[np.ndarray, np.ndarray], ...]  # per multi column: (values, offsets)
    dense: np.ndarray  # rows x dense_inputs, float32
    labels: np.ndarray | None  # rows x heads, float32

    @property
    def rows(self) -> int:
        return self.ids.shape[0]


def encode(data: pa.Table | pa.RecordBatch, spec: FeatureSpec, *, labels: bool = True) -> EncodedRows:
    """Arrow rows -> model inputs. The spec must be fitted (dense statistics known)."""
    if not spec.fitted:
        raise ValueError("the feature spec has no dense statistics yet: fit them on the training set first")
    n = data.num_rows
    ids = np.empty((n, len(spec.id_columns)), dtype=np.int64)
    for j, c in enumerate(spec.id_columns):
        raw = pc.fill_null(data.column(c), 0).to_numpy(zero_copy_only=False)
        ids[:, j] = hash_ids(raw, spec.id_buckets, column_salt(c))
    bags = tuple(hash_string_lists(data.column(c), spec.multi_buckets, column_salt(c)) for c in spec.multi_columns)
    dense = transform_dense(dense_matrix(data, spec.dense_columns), spec.dense_mean, spec.dense_std)
    y = None
    if labels:
        y = np.empty((n, len(spec.label_columns)), dtype=np.float32)
        for j, c in enumerate(spec.label_columns):
            y[:, j] = pc.fill_null(pc.cast(data.column(c), pa.float32()), 0.0).to_numpy(zero_copy_only=False)
    return EncodedRows(ids=ids, bags=bags, dense=dense, labels=y)
