"""FAISS indexes against brute force, saving and loading, and the sweep and its choice."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ml.two_tower.evaluate import exact_top_k
from ml.two_tower.index import (
    IndexSpec,
    NoQualifyingIndexError,
    SweepPoint,
    build_index,
    choose,
    exhaustive_index,
    index_ids,
    load_index,
    save_index,
    search,
    search_excluding,
    sweep,
)


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


ITEMS = unit(300, 8, 0)
IDS = np.arange(300, dtype=np.int64) * 3 + 5
QUERIES = unit(20, 8, 1)


def test_exhaustive_index_returns_the_brute_force_top_k():
    got = search(exhaustive_index(ITEMS, IDS), QUERIES, 10)
    exact = exact_top_k(QUERIES, ITEMS, IDS, 10)
    np.testing.assert_array_equal(got.ids, exact.ids)
    np.testing.assert_allclose(got.scores, exact.scores, rtol=1e-5)


def test_ivf_probing_every_cell_is_exact_and_hnsw_returns_known_ids():
    exact = exact_top_k(QUERIES, ITEMS, IDS, 10).ids
    ivf = build_index(ITEMS, IndexSpec("ivf_flat", nlist=8, nprobe=8), IDS)
    np.testing.assert_array_equal(search(ivf, QUERIES, 10).ids, exact)
    hnsw = search(build_index(ITEMS, IndexSpec("hnsw", M=8, ef_search=64), IDS), QUERIES, 10).ids
    assert set(hnsw.ravel().tolist()) <= set(IDS.tolist())
    assert np.mean([len(set(h) & set(e)) / 10 for h, e in zip(hnsw.tolist(), exact.tolist(), strict=True)]) > 0.9


def test_fewer_items_than_k_pads_with_minus_one():
    got = search(exhaustive_index(ITEMS[:3], IDS[:3]), QUERIES[:2], 5)
    assert (got.ids[:, 3:] == -1).all() and np.isneginf(got.scores[:, 3:]).all()
    assert set(got.ids[:, :3].ravel().tolist()) == {5, 8, 11}


def test_save_and_load_keep_ids_and_search_settings(tmp_path):
    spec = IndexSpec("ivf_flat", nlist=16, nprobe=3)
    index = build_index(ITEMS, spec, IDS)
    before = search(index, QUERIES, 10)
    loaded = load_index(save_index(index, tmp_path / "sub" / "items.faiss"))
    assert isinstance(loaded, faiss.IndexIDMap2)
    assert faiss.downcast_index(loaded.index).nprobe == 3
    np.testing.assert_array_equal(index_ids(loaded), IDS)
    after = search(loaded, QUERIES, 10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)


def test_specs_and_builds_refuse_bad_settings():
    with pytest.raises(ValueError, match="index kind must be one of"):
        IndexSpec("ivf_pq")
    with pytest.raises(ValueError, match="cannot probe 9 of 4 cells"):
        IndexSpec("ivf_flat", nlist=4, nprobe=9)
    with pytest.raises(ValueError, match="nlist=400 needs at least that many vectors, got 300"):
        build_index(ITEMS, IndexSpec("ivf_flat", nlist=400, nprobe=1))
    with pytest.raises(ValueError, match="index ids must be unique"):
        build_index(ITEMS[:3], IndexSpec(), np.array([1, 2, 1]))


def point(kind: str, qps: float, recall: float, build: float = 1.0, **settings) -> SweepPoint:
    return SweepPoint(IndexSpec(kind, **settings), build, qps, recall, k=100, threads=1)


def test_choose_picks_the_fastest_point_that_reaches_the_recall():
    points = [
        point("flat", 1_000, 1.0),
        point("ivf_flat", 50_000, 0.90, nlist=64, nprobe=1),  # fastest, but below the floor
        point("ivf_flat", 20_000, 0.96, nlist=64, nprobe=8),
        point("hnsw", 30_000, 0.97, build=5.0, ef_search=32),
        point("hnsw", 30_000, 0.99, build=3.0, ef_search=64, ef_construction=100),  # as fast, built sooner
    ]
    assert choose(points, 0.95) is points[4]
    assert choose(points, 0.80) is points[1]
    assert choose(points, 1.0) is points[0]
    with pytest.raises(NoQualifyingIndexError, match=r"no index setting reaches recall 0.99 .*ivf_flat\(nlist=64"):
        choose(points[1:4], 0.99)


def test_a_small_real_sweep():
    items, queries = unit(2_000, 16, 2), unit(50, 16, 3)
    specs = [
        IndexSpec("flat"),
        IndexSpec("ivf_flat", nlist=32, nprobe=1),
        IndexSpec("ivf_flat", nlist=32, nprobe=32),
        IndexSpec("hnsw", M=16, ef_construction=40, ef_search=16),
        IndexSpec("hnsw", M=16, ef_construction=40, ef_search=128),
    ]
    threads_before = faiss.omp_get_max_threads()
    points = sweep(items, queries, k=10, specs=specs, threads=1)
    assert faiss.omp_get_max_threads() == threads_before
    assert [p.spec for p in points] == specs
    assert all(p.k == 10 and p.threads == 1 and p.queries_per_s > 0 and p.build_seconds > 0 for p in points)
    recall = [p.recall for p in points]
    assert recall[0] == 1.0 and recall[2] == 1.0  # exhaustive, and IVF probing every cell
    assert recall[1] < 0.9  # one cell of 32 misses most neighbours of random vectors
    assert recall[4] >= recall[3]
    assert points[1].build_seconds == points[2].build_seconds  # one build, two search settings
    best = choose(points, 0.99)
    assert best.recall >= 0.99
    assert best.queries_per_s == max(p.queries_per_s for p in points if p.recall >= 0.99)


def test_search_excluding_matches_exact_search_with_the_same_exclusions():
    queries = unit(5, 8, 3)
    ids = np.arange(1000, 1300, dtype=np.int64)
    index = exhaustive_index(ITEMS, ids)
    exclude = [set(), {1000, 1001}, set(ids[:250].tolist()), {999_999}, set(ids.tolist())]
    got = search_excluding(index, queries, 10, exclude)
    want = exact_top_k(queries, ITEMS, ids, 10, exclude)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.scores[:4], want.scores[:4], rtol=1e-5)
    for row, skip in zip(got.ids, exclude, strict=True):
        assert not (set(row.tolist()) & skip)
    assert (got.ids[4] == -1).all() and np.isneginf(got.scores[4]).all()  # everything excluded: padded
    with pytest.raises(ValueError, match="2 exclusion sets for 5 queries"):
        search_excluding(index, queries, 10, [set(), set()])
