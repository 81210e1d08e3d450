"""Recall@K and NDCG@K against hand numbers, the popularity baseline, and exact top-K with exclusions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.two_tower.evaluate import exact_top_k, ndcg_at_k, popularity_baseline, recall_at_k
from ml.two_tower.features import item_counts

RETRIEVED = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
RELEVANT = [{2, 4, 99}, set(), {9}]  # user 1 has nothing relevant: skipped


def test_recall_by_hand():
    # user 0: hits at ranks 2 and 4 of 3 relevant -> @2 1/3, @4 2/3; user 2: hit at rank 1 of 1 -> 1 and 1.
    scores = recall_at_k(RETRIEVED, RELEVANT, [1, 2, 4])
    assert scores.values == pytest.approx({1: (0 + 1) / 2, 2: (1 / 3 + 1) / 2, 4: (2 / 3 + 1) / 2})
    assert (scores.users, scores.skipped) == (2, 1)
    assert scores.metrics("recall") == pytest.approx({"recall_at_1": 0.5, "recall_at_2": 2 / 3, "recall_at_4": 5 / 6})


def test_ndcg_by_hand():
    # user 0 @2: DCG = 1/log2(3) = 0.63093; ideal over min(3, 2) = 2 ranks: 1 + 0.63093 -> 0.38685.
    # user 0 @4: DCG = 1/log2(3) + 1/log2(5) = 1.06161; ideal over 3 ranks: 1 + 0.63093 + 0.5 -> 0.49819.
    # user 2: relevant item first -> 1 at every k.
    scores = ndcg_at_k(RETRIEVED, RELEVANT, [2, 4])
    assert scores.values[2] == pytest.approx((0.38685 + 1) / 2, abs=1e-5)
    assert scores.values[4] == pytest.approx((0.49819 + 1) / 2, abs=1e-5)
    assert (scores.users, scores.skipped) == (2, 1)
    perfect = ndcg_at_k(np.array([[7, 8, 1]]), [{7, 8}], [3])
    assert perfect.values[3] == pytest.approx(1.0)
    late = ndcg_at_k(np.array([[1, 7, 2]]), [{7}], [3])  # one relevant item at rank 2: (1/log2 3) / 1
    assert late.values[3] == pytest.approx(1 / math.log2(3))


def test_a_repeated_item_counts_once_and_padding_never_hits():
    assert recall_at_k(np.array([[2, 2, 3]]), [{2, 3}], [2, 3]).values == {2: 0.5, 3: 1.0}
    assert recall_at_k(np.array([[5, -1, -1]]), [{5, 6}], [3]).values == {3: 0.5}


def test_no_relevant_user_at_all_and_bad_ks():
    scores = recall_at_k(RETRIEVED[:2], [set(), set()], [2])
    assert scores.users == 0 and scores.skipped == 2 and math.isnan(scores.values[2])
    with pytest.raises(ValueError, match=r"every k must be in \[1, 4\]"):
        recall_at_k(RETRIEVED, RELEVANT, [5])
    with pytest.raises(ValueError, match="expected"):
        ndcg_at_k(RETRIEVED, RELEVANT[:2], [2])


def test_popularity_baseline():
    counts = item_counts(np.array([10] * 5 + [11] * 7 + [12] * 7 + [13]))
    assert popularity_baseline(counts, 3, n_users=2).tolist() == [[11, 12, 10], [11, 12, 10]]  # tie: smaller id
    assert popularity_baseline({10: 5, 11: 7}, 3).tolist() == [[11, 10, -1]]
    assert popularity_baseline(counts, 3, exclude=[{11}, set(), {10, 11, 12}]).tolist() == [
        [12, 10, 13],
        [11, 12, 10],
        [13, -1, -1],
    ]


ITEM_IDS = np.array([100, 101, 102, 103])
ITEM_VECS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], dtype=np.float32)


def test_exact_top_k_by_hand_and_with_exclusions():
    users = np.array([[1.0, 0.5], [0.0, -1.0]], dtype=np.float32)
    # user 0 scores: 100 -> 1, 101 -> .5, 102 -> 1.5, 103 -> -1; user 1: 0, -1, -1, 0.
    top = exact_top_k(users, ITEM_VECS, ITEM_IDS, 3)
    assert top.ids.tolist() == [[102, 100, 101], [100, 103, 101]]  # equal scores: the earlier item first
    np.testing.assert_allclose(top.scores, [[1.5, 1.0, 0.5], [0.0, 0.0, -1.0]])
    excluded = exact_top_k(users, ITEM_VECS, ITEM_IDS, 3, exclude=[{102, 555}, {100}])
    assert excluded.ids.tolist() == [[100, 101, 103], [103, 101, 102]]
    almost_all = exact_top_k(users, ITEM_VECS, ITEM_IDS, 3, exclude=[{100, 101, 102}, set()])
    assert almost_all.ids[0].tolist() == [103, -1, -1] and np.isneginf(almost_all.scores[0, 1:]).all()
    wide = exact_top_k(users[:1], ITEM_VECS, ITEM_IDS, 6)  # more slots than items
    assert wide.ids.tolist() == [[102, 100, 101, 103, -1, -1]]


def test_exact_top_k_chunks_agree_with_a_full_sort():
    rng = np.random.default_rng(3)
    users, items = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    ids = rng.permutation(1000)[:50]
    exclude = [set(rng.choice(ids, 5, replace=False).tolist()) for _ in range(37)]
    top = exact_top_k(users, items, ids, 10, exclude, chunk_rows=4)
    for u in range(37):
        scores = items @ users[u]
        ranked = [i for i in ids[np.argsort(-scores, kind="stable")].tolist() if i not in exclude[u]]
        assert top.ids[u].tolist() == ranked[:10]
        assert not set(top.ids[u].tolist()) & exclude[u]


def test_the_gate_promotes_only_a_real_gain_or_a_first_model():
    from ml.two_tower.pipeline import gate

    assert gate(0.30, None, k=100, margin=0.0) == (True, "no champion yet (recall@100 0.3000)")
    promote, reason = gate(0.31, 0.30, k=100, margin=0.005)
    assert promote and "beats the champion's 0.3000 by 0.0100" in reason
    promote, reason = gate(0.303, 0.30, k=100, margin=0.005)
    assert not promote and "gain 0.0030 <= margin 0.005" in reason
    assert gate(0.30, 0.30, k=100, margin=0.0)[0] is False  # a tie is not a win
    assert gate(float("nan"), None, k=100, margin=0.0)[0] is False
