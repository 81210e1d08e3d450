"""FAISS indexes over item embeddings: build, search, save, and a sweep that picks the fastest accurate setting.

Every index uses the inner-product metric (the two-tower score) and is wrapped in ``faiss.IndexIDMap2``: the item
ids live inside the index, so ``search`` returns item ids (not row numbers) and one file (``save_index``) holds
both vectors and ids. Kinds (``IndexSpec.kind``):

- ``flat``: exhaustive (``IndexFlatIP``), exact;
- ``ivf_flat``: ``nlist`` k-means cells trained on the vectors themselves, ``nprobe`` of them searched;
- ``hnsw``: an HNSW graph with ``M`` links per node, built with ``ef_construction``, searched with ``ef_search``.

The search-time settings (``nprobe``, ``ef_search``) are stored in the index file too. ``sweep`` measures each
setting's build time, queries per second and recall@k against the exact top-k of the same vectors, with
``threads`` FAISS (OpenMP) threads; ``choose`` keeps the fastest with recall >= ``min_recall``. Vectors should
pass ``inference.validate_embeddings`` first (this module does not import torch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ml.two_tower.evaluate import TopK

KINDS: tuple[str, ...] = ("flat", "ivf_flat", "hnsw")


@dataclass(frozen=True)
class IndexSpec:
    """Which index and its settings; only the ones of its kind matter."""

    kind: str = "flat"
    nlist: int = 1024  # ivf_flat: cells
    nprobe: int = 16  # ivf_flat: cells searched per query
    M: int = 32  # hnsw: links per node
    ef_search: int = 64  # hnsw: candidate list length when searching (at least k is used)
    ef_construction: int = 200  # hnsw: candidate list length when building

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {list(KINDS)}, got {self.kind!r}")
        if min(self.nlist, self.nprobe, self.M, self.ef_search, self.ef_construction) < 1:
            raise ValueError(f"index settings must be positive: {self}")
        if self.kind == "ivf_flat" and self.nprobe > self.nlist:
            raise ValueError(f"ivf_flat cannot probe {self.nprobe} of {self.nlist} cells (nprobe <= nlist)")

    def label(self) -> str:
        if self.kind == "ivf_flat":
            return f"ivf_flat(nlist={self.nlist}, nprobe={self.nprobe})"
        if self.kind == "hnsw":
            return f"hnsw(M={self.M}, ef_construction={self.ef_construction}, ef_search={self.ef_search})"
        return "flat"

    def build_key(self) -> tuple:
        """Specs with equal keys share a built index (they differ only in search-time settings)."""
        if self.kind == "ivf_flat":
            return (self.kind, self.nlist)
        if self.kind == "hnsw":
            return (self.kind, self.M, self.ef_construction)
        return (self.kind,)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IndexSpec:
        return cls(**d)


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """FAISS's OpenMP threads set to ``n`` inside the block, restored after."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _matrix(vectors: np.ndarray, what: str) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty (rows, dim) array, got shape {x.shape}")
    return x


def configure(index: faiss.Index, spec: IndexSpec) -> faiss.Index:
    """Apply the spec's search-time settings (``nprobe``, ``ef_search``) to a built or loaded index."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if spec.kind == "ivf_flat":
        inner.nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        inner.hnsw.efSearch = spec.ef_search
    return index


def build_index(vectors: np.ndarray, spec: IndexSpec, ids: np.ndarray | None = None) -> faiss.IndexIDMap2:
    """An inner-product index of ``vectors`` (rows, dim) with ``ids`` (default 0..rows-1, int64, unique)."""
    x = _matrix(vectors, "index vectors")
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"{len(ids)} ids for {n} vectors")
    if len(np.unique(ids)) != n:
        raise ValueError("index ids must be unique (check the table with validate_embeddings)")
    if spec.kind == "ivf_flat" and spec.nlist > n:
        raise ValueError(f"ivf_flat with nlist={spec.nlist} needs at least that many vectors, got {n}")
    factory = {"flat": "Flat", "ivf_flat": f"IVF{spec.nlist},Flat", "hnsw": f"HNSW{spec.M},Flat"}[spec.kind]
    index = faiss.index_factory(d, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = spec.ef_construction
    if spec.kind == "ivf_flat":
        index.train(x)
    index.add_with_ids(x, ids)
    return configure(index, spec)


def exhaustive_index(vectors: np.ndarray, ids: np.ndarray | None = None) -> faiss.IndexIDMap2:
    """An exact (``IndexFlatIP``) index: its ``search`` is the brute-force top-k."""
    return build_index(vectors, IndexSpec("flat"), ids)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> TopK:
    """(queries, k) item ids and inner products, best first; -1 ids and -inf scores where fewer than k exist."""
    q = _matrix(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dimension {q.shape[1]}, the index {index.d}")
    scores, ids = index.search(q, k)
    return TopK(ids, np.where(ids < 0, -np.inf, scores).astype(np.float32))


def search_excluding(index: faiss.Index, queries: np.ndarray, k: int, exclude: Sequence[set] | None) -> TopK:
    """``search`` that never returns an item in the query's ``exclude`` set: it fetches k plus the largest set's
    size (at most every item), drops the excluded ids and keeps the first k; -1 / -inf pad a short row."""
    if exclude is None:
        return search(index, queries, k)
    if len(exclude) != len(queries):
        raise ValueError(f"{len(exclude)} exclusion sets for {len(queries)} queries")
    wide = min(index.ntotal, k + max((len(e) for e in exclude), default=0))
    got = search(index, queries, max(wide, 1))
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for r, skip in enumerate(exclude):
        row_ids, row_scores = got.ids[r], got.scores[r]
        keep = row_ids >= 0
        if skip:
            keep &= ~np.isin(row_ids, np.fromiter(skip, dtype=np.int64, count=len(skip)))
        kept_ids, kept_scores = row_ids[keep][:k], row_scores[keep][:k]
        ids[r, : len(kept_ids)] = kept_ids
        scores[r, : len(kept_scores)] = kept_scores
    return TopK(ids, scores)


def index_ids(index: faiss.IndexIDMap2) -> np.ndarray:
    """The item ids held by an ``IndexIDMap2``, in insertion order."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def save_index(index: faiss.Index, path: Path | str) -> Path:
    """One file with vectors, ids and search settings (``faiss.write_index``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def load_index(path: Path | str) -> faiss.Index:
    return faiss.read_index(str(path))


# --- the sweep --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepPoint:
    """One index setting measured: build time, search speed and recall@k against the exact top-k."""

    spec: IndexSpec
    build_seconds: float
    queries_per_s: float
    recall: float
    k: int
    threads: int

    def metrics(self) -> dict[str, float]:
        return {
            "build_seconds": self.build_seconds,
            "queries_per_s": self.queries_per_s,
            f"recall_at_{self.k}": self.recall,
        }


class NoQualifyingIndexError(ValueError):
    """No swept setting reached the recall floor."""


def default_specs(items: int) -> list[IndexSpec]:
    """Flat; IVF with nlist ~ 4 sqrt(items) (at least 39 vectors per cell) at several nprobe; HNSW at several
    ef_search."""
    nlist = max(1, min(items // 39, int(4 * math.sqrt(items))))
    ivf = [IndexSpec("ivf_flat", nlist=nlist, nprobe=p) for p in (1, 4, 16, 64) if p <= nlist]
    hnsw = [IndexSpec("hnsw", M=32, ef_construction=200, ef_search=e) for e in (16, 32, 64, 128, 256)]
    return [IndexSpec("flat"), *ivf, *hnsw]


def _recall(got: np.ndarray, exact: np.ndarray) -> float:
    per_query = []
    for g, e in zip(got, exact, strict=True):
        want = set(e[e >= 0].tolist())
        if want:
            per_query.append(len(want & set(g.tolist())) / len(want))
    return float(np.mean(per_query)) if per_query else float("nan")


def sweep(
    item_vecs: np.ndarray,
    query_vecs: np.ndarray,
    k: int = 100,
    specs: Sequence[IndexSpec] | None = None,
    threads: int = 1,
    item_ids: np.ndarray | None = None,
) -> list[SweepPoint]:
    """Measure every spec (default ``default_specs``) on these vectors, in order.

    Recall@k is the mean over queries of |index top-k ∩ exact top-k| / |exact top-k|, the exact top-k from a flat
    index of the same vectors. Specs that differ only in search settings share one build (same ``build_seconds``).
    Queries per second: one ``search`` call of all queries, with ``threads`` FAISS threads.
    """
    items = _matrix(item_vecs, "item vectors")
    queries = _matrix(query_vecs, "query vectors")
    specs = default_specs(items.shape[0]) if specs is None else list(specs)
    points: list[SweepPoint] = []
    with faiss_threads(threads):
        exact = search(exhaustive_index(items, item_ids), queries, k).ids
        built: dict[tuple, tuple[faiss.Index, float]] = {}
        for spec in specs:
            if spec.build_key() not in built:
                started = time.perf_counter()
                built[spec.build_key()] = (build_index(items, spec, item_ids), time.perf_counter() - started)
            index, build_seconds = built[spec.build_key()]
            configure(index, spec)
            started = time.perf_counter()
            got = search(index, queries, k).ids
            seconds = time.perf_counter() - started
            points.append(
                SweepPoint(
                    spec=spec,
                    build_seconds=build_seconds,
                    queries_per_s=queries.shape[0] / seconds if seconds > 0 else float("inf"),
                    recall=_recall(got, exact),
                    k=k,
                    threads=threads,
                )
            )
    return points


def choose(points: Sequence[SweepPoint], min_recall: float = 0.95) -> SweepPoint:
    """The fastest point (most queries/s; then the quickest build) with recall >= ``min_recall``."""
    ok = [p for p in points if p.recall >= min_recall]
    if not ok:
        tried = "; ".join(f"{p.spec.label()} recall {p.recall:.3f}" for p in points) or "no points"
        raise NoQualifyingIndexError(f"no index setting reaches recall {min_recall} (tried: {tried})")
    return max(ok, key=lambda p: (p.queries_per_s, -p.build_seconds))
