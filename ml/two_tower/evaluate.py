"""Offline retrieval metrics, the popularity baseline and exact (brute-force) top-K (pure numpy: no torch, no faiss).

``retrieved`` is (users, K) item ids, best first; -1 marks an empty slot (fewer than K candidates). ``relevant`` is
one set of item ids per user (e.g. the posts each user engaged with in the holdout).

- recall@k = |top-k ∩ relevant| / |relevant|;
- NDCG@k with binary relevance: DCG = sum over ranks r = 1..k of rel_r / log2(r + 1), divided by the ideal DCG
  (the first min(|relevant|, k) ranks all relevant);

both averaged over the users with at least one relevant item; the others are skipped and counted
(``RetrievalScores.skipped``). An item repeated within a user's list counts once (its first rank).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ml.two_tower.features import ItemCounts

EXACT_CHUNK_ROWS = 1024  # users scored at once by exact_top_k (chunk x items float32 scores in memory)


@dataclass(frozen=True)
class RetrievalScores:
    """A metric at each k, averaged over ``users`` users; ``skipped`` users had no relevant item."""

    values: dict[int, float]
    users: int
    skipped: int

    def metrics(self, name: str) -> dict[str, float]:
        """Flat, e.g. ``{"recall_at_10": ...}`` for ``mlflow.log_metrics``."""
        return {f"{name}_at_{k}": v for k, v in self.values.items()}


class TopK(NamedTuple):
    """(users, k) item ids (-1 = no item) and their scores (-inf there), best first."""

    ids: np.ndarray
    scores: np.ndarray


def _hits(retrieved: np.ndarray, relevant: Sequence[set], ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray, int]:
    """(hit matrix (kept users, max k) of 0/1, |relevant| per kept user, skipped users)."""
    retrieved = np.asarray(retrieved)
    if retrieved.ndim != 2 or retrieved.shape[0] != len(relevant):
        raise ValueError(f"retrieved is {retrieved.shape}, expected ({len(relevant)} users, K)")
    ks = list(ks)
    if not ks or min(ks) < 1 or max(ks) > retrieved.shape[1]:
        raise ValueError(f"every k must be in [1, {retrieved.shape[1]}] (the retrieved width), got {ks}")
    width = max(ks)
    hits, sizes, skipped = [], [], 0
    for row, rel in zip(retrieved[:, :width], relevant, strict=True):
        if not rel:
            skipped += 1
            continue
        seen: set = set()
        h = np.zeros(width)
        for r, item in enumerate(row.tolist()):
            if item in rel and item not in seen:
                h[r] = 1.0
            seen.add(item)
        hits.append(h)
        sizes.append(len(rel))
    return np.array(hits).reshape(-1, width), np.array(sizes, dtype=np.float64), skipped


def recall_at_k(retrieved: np.ndarray, relevant: Sequence[set], ks: Sequence[int]) -> RetrievalScores:
    """Mean recall@k over users with a relevant item: relevant items in the top k / relevant items."""
    hits, sizes, skipped = _hits(retrieved, relevant, ks)
    users = len(sizes)
    values = {k: float((hits[:, :k].sum(axis=1) / sizes).mean()) if users else float("nan") for k in ks}
    return RetrievalScores(values, users, skipped)


def ndcg_at_k(retrieved: np.ndarray, relevant: Sequence[set], ks: Sequence[int]) -> RetrievalScores:
    """Mean NDCG@k (binary relevance, log2 discount, ideal DCG over min(|relevant|, k) ranks)."""
    hits, sizes, skipped = _hits(retrieved, relevant, ks)
    users = len(sizes)
    discount = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    ideal_cum = np.cumsum(discount)
    values = {}
    for k in ks:
        dcg = hits[:, :k] @ discount[:k]
        idcg = ideal_cum[np.minimum(sizes, k).astype(int) - 1]
        values[k] = float((dcg / idcg).mean()) if users else float("nan")
    return RetrievalScores(values, users, skipped)


def popularity_baseline(
    train_item_counts: ItemCounts | Mapping[int, int],
    k: int,
    *,
    n_users: int = 1,
    exclude: Sequence[set] | None = None,
) -> np.ndarray:
    """(users, k) ids: the k most frequent training items for every user (ties: smaller id first), -1 padded.

    With ``exclude`` (one set per user, e.g. what each already engaged with) each user gets the most frequent items
    outside their set, and there are ``len(exclude)`` users; else ``n_users`` identical rows.
    """
    counts = (
        train_item_counts if isinstance(train_item_counts, ItemCounts) else ItemCounts.from_mapping(train_item_counts)
    )
    order = np.lexsort((counts.ids, -counts.counts))  # most frequent first, then smaller id
    ranked = counts.ids[order]
    if exclude is None:
        row = np.full(k, -1, dtype=np.int64)
        row[: min(k, len(ranked))] = ranked[:k]
        return np.tile(row, (n_users, 1))
    out = np.full((len(exclude), k), -1, dtype=np.int64)
    for u, skip in enumerate(exclude):
        # Only the first k + |skip| ranked items can make a user's top k.
        head = ranked[: k + len(skip)]
        kept = head[~np.isin(head, np.fromiter(skip, dtype=np.int64, count=len(skip)))] if skip else head
        out[u, : min(k, len(kept))] = kept[:k]
    return out


def exact_top_k(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    item_ids: np.ndarray,
    k: int,
    exclude: Sequence[set] | None = None,
    *,
    chunk_rows: int = EXACT_CHUNK_ROWS,
) -> TopK:
    """Brute-force top-k items by inner product per user, never returning an item in that user's ``exclude`` set.

    Scored ``chunk_rows`` users at a time. Equal scores rank the item listed first higher. A user left with fewer than k
    candidates gets -1 ids (and -inf scores) in the remaining slots.
    """
    user_vecs = np.asarray(user_vecs, dtype=np.float32)
    item_vecs = np.asarray(item_vecs, dtype=np.float32)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if user_vecs.ndim != 2 or item_vecs.ndim != 2 or user_vecs.shape[1] != item_vecs.shape[1]:
        raise ValueError(
            f"user and item vectors must be 2-d of one dimension, got {user_vecs.shape}, {item_vecs.shape}"
        )
    if item_ids.shape != (item_vecs.shape[0],):
        raise ValueError(f"{len(item_ids)} item ids for {item_vecs.shape[0]} item vectors")
    if exclude is not None and len(exclude) != user_vecs.shape[0]:
        raise ValueError(f"{len(exclude)} exclusion sets for {user_vecs.shape[0]} users")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    position = {int(i): j for j, i in enumerate(item_ids.tolist())} if exclude is not None else {}
    ids = np.full((n_users, k), -1, dtype=np.int64)
    scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    take = min(k, n_items)
    for lo in range(0, n_users, chunk_rows):
        hi = min(lo + chunk_rows, n_users)
        s = user_vecs[lo:hi] @ item_vecs.T
        if exclude is not None:
            for r, skip in enumerate(exclude[lo:hi]):
                cols = [position[i] for i in skip if i in position]
                s[r, cols] = -np.inf
        if take < n_items:
            top = np.argpartition(-s, take - 1, axis=1)[:, :take]
            # Rows with a tie at the k-th place: argpartition picks among the tied items arbitrarily; take the
            # earliest ones instead (a stable sort of those rows only).
            kth = np.take_along_axis(s, top, axis=1).min(axis=1)
            for r in np.flatnonzero((s >= kth[:, None]).sum(axis=1) > take):
                top[r] = np.argsort(-s[r], kind="stable")[:take]
        else:
            top = np.tile(np.arange(n_items), (hi - lo, 1))
        top_scores = np.take_along_axis(s, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)  # best score first, then the earlier item
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        ids[lo:hi, :take] = np.where(np.isneginf(top_scores), -1, item_ids[top])
        scores[lo:hi, :take] = top_scores
    return TopK(ids, scores)
