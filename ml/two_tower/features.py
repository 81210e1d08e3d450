"""What the two towers read, and how Arrow rows become model inputs (pure: numpy and pyarrow, no torch).

A training table has one row per (user, engaged post) pair; the expected columns (names set by ``TwoTowerColumns``,
defaults shown):

- ``user_id`` (integer): the user, hashed into one embedding table;
- ``history_post_ids`` (list of integers): the posts the user engaged with recently, *before* this row's
  engagement (the row's own post must not be in it); pooled by a mean embedding bag; a null or empty list pools to
  zeros, a null element is dropped;
- ``user_dense`` columns (numbers): the user's dense features;
- ``post_id`` (integer): the engaged post (the positive item), hashed into the item tower's id table;
- ``author_id`` (integer): the post's author, hashed into the item tower's author table;
- ``item_dense`` columns (numbers): the post's dense features.

A user table for ``encode_users`` needs only the user columns, an item table for ``encode_items`` only the item ones.

Ids are hashed with ``ml.ranker.features.hash_ids`` (splitmix64) salted by their *role* (``user_id``, ``post_id``,
``author_id``, ``history_post_ids``), not by the table's column name, so a renamed column hashes the same way.
Dense values become ``sign(x) log1p(|x|)`` clipped to +-10, with a missing value (null, NaN, infinite) as 0; there
are no fitted statistics.

Item popularity for the log-Q correction is an ``ItemCounts`` (sorted unique ids and their counts in the training
data); ``item_log_q`` turns it into log sampling probabilities.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml.ranker.features import (
    DENSE_CLIP,
    FeatureSchemaError,
    column_salt,
    dense_matrix,
    hash_ids,
    schema_problems,
    signed_log1p,
)

USER_SALT = column_salt("user_id")
ITEM_SALT = column_salt("post_id")
AUTHOR_SALT = column_salt("author_id")
HISTORY_SALT = column_salt("history_post_ids")


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _is_int_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)


@dataclass(frozen=True)
class TwoTowerColumns:
    """The table's column names for each input (saved with the encoder)."""

    user_id: str = "user_id"
    history: str = "history_post_ids"
    user_dense: tuple[str, ...] = ()
    item_id: str = "post_id"
    author_id: str = "author_id"
    item_dense: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [*self.user_columns(), *self.item_columns()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"a column has two roles in the two-tower columns: {dup}")

    def user_columns(self) -> list[str]:
        return [self.user_id, self.history, *self.user_dense]

    def item_columns(self) -> list[str]:
        return [self.item_id, self.author_id, *self.item_dense]

    def problems(self, schema: pa.Schema, *, users: bool = True, items: bool = True) -> dict[str, str]:
        """Column -> what is wrong with it (missing or mistyped); empty when the schema fits."""
        expected: list[tuple[str, str, Any]] = []
        if users:
            expected += [(self.user_id, "an integer id", pa.types.is_integer)]
            expected += [(self.history, "a list of integer post ids", _is_int_list)]
            expected += [(c, "a number", _is_number) for c in self.user_dense]
        if items:
            expected += [(self.item_id, "an integer id", pa.types.is_integer)]
            expected += [(self.author_id, "an integer id", pa.types.is_integer)]
            expected += [(c, "a number", _is_number) for c in self.item_dense]
        return schema_problems(schema, expected)

    def validate(self, schema: pa.Schema, *, users: bool = True, items: bool = True, where: str = "") -> None:
        """Raise ``FeatureSchemaError`` naming every missing or mistyped column."""
        bad = self.problems(schema, users=users, items=items)
        if bad:
            raise FeatureSchemaError(bad, where)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TwoTowerColumns:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# --- rows as numpy arrays ---------------------------------------------------------------------------------------------
def _take_bags(values: np.ndarray, offsets: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bags of the given rows, in that order, as (values, offsets)."""
    ends = np.append(offsets[1:], len(values)) if len(offsets) else offsets
    starts, stops = offsets[indices], ends[indices]
    lengths = stops - starts
    new_offsets = np.zeros(len(indices), dtype=np.int64)
    np.cumsum(lengths[:-1], out=new_offsets[1:])
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64), new_offsets
    # For every output value: its source position = its row's start + its rank inside the row.
    rank = np.arange(lengths.sum()) - np.repeat(new_offsets, lengths)
    return values[np.repeat(starts, lengths) + rank], new_offsets


def _check_bags(values: np.ndarray, offsets: np.ndarray, rows: int) -> None:
    if offsets.shape != (rows,):
        raise ValueError(f"history offsets have shape {offsets.shape}, expected ({rows},): one start per row")
    if rows and (offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] > len(values)):
        raise ValueError("history offsets must start at 0, never decrease and stay within the history values")


@dataclass(frozen=True, eq=False)
class UserRows:
    """Raw user inputs: ids, dense features, and each row's history as (values, offsets) like an embedding bag."""

    ids: np.ndarray  # (n,) int64 user ids
    dense: np.ndarray  # (n, user dense) float32
    history_values: np.ndarray  # (m,) int64 post ids
    history_offsets: np.ndarray  # (n,) int64: where row i's history starts in history_values

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.dense.ndim != 2 or self.dense.shape[0] != n:
            raise ValueError(f"user dense features have shape {self.dense.shape}, expected ({n}, columns)")
        _check_bags(self.history_values, self.history_offsets, n)

    @property
    def rows(self) -> int:
        return len(self.ids)

    def take(self, indices: np.ndarray) -> UserRows:
        values, offsets = _take_bags(self.history_values, self.history_offsets, indices)
        return UserRows(self.ids[indices], self.dense[indices], values, offsets)

    def model_inputs(self, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Hashed, in ``UserTower.forward``'s argument order: (user buckets, dense, history buckets, offsets)."""
        return (
            hash_ids(self.ids, buckets, USER_SALT),
            np.ascontiguousarray(self.dense, dtype=np.float32),
            hash_ids(self.history_values, buckets, HISTORY_SALT),
            np.array(self.history_offsets, dtype=np.int64),
        )


@dataclass(frozen=True, eq=False)
class ItemRows:
    """Raw item inputs: post ids, author ids, dense features."""

    ids: np.ndarray  # (n,) int64 post ids
    author_ids: np.ndarray  # (n,) int64
    dense: np.ndarray  # (n, item dense) float32

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.author_ids.shape != (n,):
            raise ValueError(f"author ids have shape {self.author_ids.shape}, expected ({n},)")
        if self.dense.ndim != 2 or self.dense.shape[0] != n:
            raise ValueError(f"item dense features have shape {self.dense.shape}, expected ({n}, columns)")

    @property
    def rows(self) -> int:
        return len(self.ids)

    def take(self, indices: np.ndarray) -> ItemRows:
        return ItemRows(self.ids[indices], self.author_ids[indices], self.dense[indices])

    def model_inputs(self, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hashed, in ``ItemTower.forward``'s argument order: (post buckets, author buckets, dense)."""
        return (
            hash_ids(self.ids, buckets, ITEM_SALT),
            hash_ids(self.author_ids, buckets, AUTHOR_SALT),
            np.ascontiguousarray(self.dense, dtype=np.float32),
        )


@dataclass(frozen=True, eq=False)
class TwoTowerBatch:
    """(user, engaged post) pairs as raw numpy arrays; row i's post is user i's positive."""

    user_ids: np.ndarray  # (n,) int64
    user_dense: np.ndarray  # (n, user dense) float32
    history_values: np.ndarray  # (m,) int64 post ids
    history_offsets: np.ndarray  # (n,) int64
    item_ids: np.ndarray  # (n,) int64 post ids
    author_ids: np.ndarray  # (n,) int64
    item_dense: np.ndarray  # (n, item dense) float32

    def __post_init__(self) -> None:
        if self.item_ids.shape != self.user_ids.shape:
            raise ValueError(f"{len(self.user_ids)} user ids but {len(self.item_ids)} item ids: one pair per row")
        _ = (self.users, self.items)  # building the halves checks their shapes

    @property
    def rows(self) -> int:
        return len(self.user_ids)

    @property
    def users(self) -> UserRows:
        return UserRows(self.user_ids, self.user_dense, self.history_values, self.history_offsets)

    @property
    def items(self) -> ItemRows:
        return ItemRows(self.item_ids, self.author_ids, self.item_dense)

    @classmethod
    def of(cls, users: UserRows, items: ItemRows) -> TwoTowerBatch:
        return cls(
            users.ids,
            users.dense,
            users.history_values,
            users.history_offsets,
            items.ids,
            items.author_ids,
            items.dense,
        )

    def take(self, indices: np.ndarray) -> TwoTowerBatch:
        indices = np.asarray(indices, dtype=np.int64)
        return TwoTowerBatch.of(self.users.take(indices), self.items.take(indices))

    def slice(self, start: int, stop: int) -> TwoTowerBatch:
        return self.take(np.arange(start, min(stop, self.rows)))


# --- from Arrow -------------------------------------------------------------------------------------------------------
def _ids(data: pa.Table | pa.RecordBatch, column: str) -> np.ndarray:
    col = data.column(column)
    if col.null_count:
        raise ValueError(f"column {column!r} has {col.null_count} null id(s); every row needs an id")
    return np.array(col.to_numpy(zero_copy_only=False), dtype=np.int64)  # a writable copy (torch.from_numpy)


def dense_values(data: pa.Table | pa.RecordBatch, columns: Sequence[str]) -> np.ndarray:
    """float32 (rows x columns): ``sign(x) log1p(|x|)`` clipped to +-10, missing (null, NaN, infinite) as 0."""
    x = signed_log1p(dense_matrix(data, columns))
    return np.clip(np.where(np.isfinite(x), x, 0.0), -DENSE_CLIP, DENSE_CLIP).astype(np.float32)


def id_lists(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list<integer> column as (values, offsets); a null list is empty, null elements are dropped."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    flat = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = ~np.asarray(flat.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = np.asarray(pc.fill_null(flat, 0).to_numpy(zero_copy_only=False), dtype=np.int64)[valid]
    counts = np.bincount(parents[valid], minlength=n).astype(np.int64)
    offsets = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    return values, offsets


def user_rows(data: pa.Table | pa.RecordBatch, columns: TwoTowerColumns, *, where: str = "user table") -> UserRows:
    """The user columns of Arrow rows (checked first: ``FeatureSchemaError`` names a missing/mistyped column)."""
    columns.validate(data.schema, items=False, where=where)
    values, offsets = id_lists(data.column(columns.history))
    return UserRows(_ids(data, columns.user_id), dense_values(data, columns.user_dense), values, offsets)


def item_rows(data: pa.Table | pa.RecordBatch, columns: TwoTowerColumns, *, where: str = "item table") -> ItemRows:
    """The item columns of Arrow rows (checked first, like ``user_rows``)."""
    columns.validate(data.schema, users=False, where=where)
    return ItemRows(_ids(data, columns.item_id), _ids(data, columns.author_id), dense_values(data, columns.item_dense))


def batch_from_table(
    data: pa.Table | pa.RecordBatch, columns: TwoTowerColumns, *, where: str = "training table"
) -> TwoTowerBatch:
    """A training table (one row per user and engaged post; see the module docstring) as a ``TwoTowerBatch``."""
    columns.validate(data.schema, where=where)
    return TwoTowerBatch.of(user_rows(data, columns, where=where), item_rows(data, columns, where=where))


# --- item popularity --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ItemCounts:
    """How often each item appears in the training data: sorted unique ids and their counts."""

    ids: np.ndarray  # (k,) int64, sorted, unique
    counts: np.ndarray  # (k,) int64, > 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemCounts):
            return NotImplemented
        return np.array_equal(self.ids, other.ids) and np.array_equal(self.counts, other.counts)

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.ids.shape != self.counts.shape:
            raise ValueError(f"{len(self.ids)} item ids but {len(self.counts)} counts")
        if len(self.ids) > 1 and np.any(np.diff(self.ids) <= 0):
            raise ValueError("item count ids must be sorted and unique (build them with item_counts)")

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def count(self, item_ids: np.ndarray) -> np.ndarray:
        """Each id's count (0 for an id never seen)."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if not len(self.ids):
            return np.zeros(len(item_ids), dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, item_ids), 0, len(self.ids) - 1)
        return np.where(self.ids[pos] == item_ids, self.counts[pos], 0)

    def merge(self, other: ItemCounts) -> ItemCounts:
        """The counts of both (e.g. accumulated over streamed batches)."""
        ids = np.concatenate([self.ids, other.ids])
        counts = np.concatenate([self.counts, other.counts])
        uniq, inverse = np.unique(ids, return_inverse=True)
        return ItemCounts(uniq, np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64))

    @classmethod
    def from_mapping(cls, counts: Mapping[int, int]) -> ItemCounts:
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        values = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        order = np.argsort(ids)
        return cls(ids[order], values[order])


def item_counts(item_ids: np.ndarray | Iterable[np.ndarray]) -> ItemCounts:
    """Count item ids: one array, or an iterable of arrays (streamed batches)."""
    if isinstance(item_ids, np.ndarray):
        ids, counts = np.unique(item_ids.astype(np.int64, copy=False), return_counts=True)
        return ItemCounts(ids, counts.astype(np.int64))
    out = ItemCounts(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    for part in item_ids:
        out = out.merge(item_counts(np.asarray(part)))
    return out


def item_log_q(item_ids: np.ndarray, counts: ItemCounts) -> np.ndarray:
    """log q_j per item: log(count_j / total count), float32 (Yi et al. 2019's sampling-probability estimate).

    q_j is proportional to the probability that item j lands in a batch; the constant factor (the batch size)
    cancels in the softmax, so the frequency itself is enough. An id never counted gets count 1 (the rarest
    possible), so it is never -inf.
    """
    total = counts.total
    if total <= 0:
        raise ValueError("item counts are empty: count the training data's item ids first (item_counts)")
    c = np.maximum(counts.count(item_ids), 1).astype(np.float64)
    return (np.log(c) - np.log(float(total))).astype(np.float32)
