"""Two-tower retrieval: training examples/s (sparse against dense Adam) and the FAISS index sweep against exact search.

Measured here (issue 7):
- the quality table (full only): the weekly run exactly as ``darkroom two-tower train`` runs it, on the ``medium``
  world of ``bench/dbt_build`` (its bronze and marts, linked read-only into ``<state>/bench/retrieval``; run that
  bench first): recall@K and NDCG@K on the held-out last day for exact search over the model's embeddings, the
  chosen ANN index and the popularity baseline; then the champion's embeddings of the live posts and active users
  (Spark) and the batch's index, with their times;
- training: the two towers at the settings' shape (id tables of 2^20 x 64: user, history, post, author) on
  synthetic (user, engaged post) pairs with Zipf-distributed posts, one epoch with SparseAdam on the id tables and
  one with dense Adam on fewer rows (dense Adam updates every row of every table each step);
- the index: ``items`` synthetic low-rank 64-d vectors (rank 16 plus noise), 1,000 queries drawn the same way; the
  exact top-100 by a flat inner-product index, then IVF-Flat (nlist ~ 4 sqrt(items), nprobe 8-256) and HNSW
  (M 32, efConstruction 40, efSearch 64-512) on one FAISS thread: build seconds, queries/s and recall@100 against
  exact; the chosen setting is the fastest with recall@100 >= 0.95.

``ratio``: queries/s of the chosen index over queries/s of exact (flat) search, same vectors, same thread count.
``--quick``: 100k items and 20k training pairs.
"""

from __future__ import annotations

import json
import time

import faiss  # noqa: F401  (before torch)
import numpy as np

from darkroom.settings import DarkroomSettings

DIM = 64
RANK = 16
QUERIES = 1_000
K = 100
MIN_RECALL = 0.95


def _low_rank(rng: np.random.Generator, n: int, basis: np.ndarray) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        out[lo:hi] = rng.standard_normal((hi - lo, RANK), dtype=np.float32) @ basis
        out[lo:hi] += 0.1 * rng.standard_normal((hi - lo, DIM), dtype=np.float32)
    return out


def _index(items: int, progress) -> dict:
    from ml.two_tower.index import IndexSpec, choose, sweep

    rng = np.random.default_rng(11)
    basis = rng.standard_normal((RANK, DIM), dtype=np.float32)
    vecs = _low_rank(rng, items, basis)
    queries = _low_rank(rng, QUERIES, basis)
    nlist = int(4 * np.sqrt(items))
    specs = [
        IndexSpec("flat"),
        *[IndexSpec("ivf_flat", nlist=nlist, nprobe=p) for p in (8, 32, 128, 256)],
        *[IndexSpec("hnsw", M=32, ef_construction=40, ef_search=e) for e in (64, 128, 256, 512)],
    ]
    progress(f"index sweep: {items:,} items x {DIM}, {QUERIES:,} queries, {len(specs)} settings, 1 thread")
    t0 = time.perf_counter()
    points = sweep(vecs, queries, k=K, specs=specs, threads=1)
    for p in points:
        progress(
            f"  {p.spec.label()}: build {p.build_seconds:.1f}s, {p.queries_per_s:,.0f} queries/s, "
            f"recall@{K} {p.recall:.4f}"
        )
    chosen = choose(points, MIN_RECALL)
    exact = next(p for p in points if p.spec.kind == "flat")
    return {
        "items": items,
        "dim": DIM,
        "queries": QUERIES,
        "k": K,
        "min_recall": MIN_RECALL,
        "sweep_seconds": round(time.perf_counter() - t0, 1),
        "curve": [
            {
                "index": p.spec.label(),
                "build_seconds": round(p.build_seconds, 2),
                "queries_per_s": round(p.queries_per_s, 1),
                f"recall_at_{K}": round(p.recall, 4),
            }
            for p in points
        ],
        "chosen": chosen.spec.label(),
        "chosen_queries_per_s": round(chosen.queries_per_s, 1),
        "chosen_recall": round(chosen.recall, 4),
        "exact_queries_per_s": round(exact.queries_per_s, 1),
        "speedup": round(chosen.queries_per_s / exact.queries_per_s, 2),
    }


def _pairs(rows: int, seed: int):
    from ml.two_tower.features import TwoTowerBatch

    rng = np.random.default_rng(seed)
    posts = (rng.zipf(1.2, rows) % 2_000_000).astype(np.int64)
    lengths = rng.integers(0, 20, rows)
    offsets = np.zeros(rows, dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return TwoTowerBatch(
        user_ids=rng.integers(0, 5_000_000, rows).astype(np.int64),
        user_dense=rng.standard_normal((rows, 4), dtype=np.float32),
        history_values=(rng.zipf(1.2, int(lengths.sum())) % 2_000_000).astype(np.int64),
        history_offsets=offsets,
        item_ids=posts,
        author_ids=posts // 7,
        item_dense=rng.standard_normal((rows, 4), dtype=np.float32),
    )


def _train(rows: int, dense_rows: int, progress) -> dict:
    from dataclasses import replace

    from ml.two_tower.train import TwoTowerConfig, arch_for, train

    cfg = TwoTowerConfig(embedding_dim=64, id_buckets=1 << 20)
    arch = arch_for(cfg, user_dense=4, item_dense=4)
    out = {}
    for name, a, n in (("sparse", arch, rows), ("dense_adam", replace(arch, sparse=False), dense_rows)):
        result = train(_pairs(n, seed=3), a, cfg)
        params = sum(p.numel() for p in result.model.parameters())
        out[name] = {
            "examples": result.examples,
            "seconds": round(result.seconds, 2),
            "examples_per_s": round(result.examples_per_s),
            "parameters": params,
        }
        progress(f"training ({name}): {result.examples:,} pairs at {result.examples_per_s:,.0f}/s, {params:,} params")
    out["sparse_over_dense"] = round(out["sparse"]["examples_per_s"] / out["dense_adam"]["examples_per_s"], 1)
    return out


WORLD_TABLES = (
    "bronze/posts",
    "bronze/follows",
    "bronze/feed_reads",
    "bronze/impressions",
    "marts/fct_engagement_labels",
    "marts/dim_user_features",
    "marts/dim_post_features",
)


def _quality(settings: DarkroomSettings, progress) -> dict:
    """The weekly run, the embeddings and the index on the medium world of bench/dbt_build."""
    import shutil
    from dataclasses import asdict
    from datetime import UTC, datetime

    from darkroom.spark import get_spark
    from jobs.two_tower_embeddings.main import embed, index_batch
    from jobs.two_tower_examples.main import train_weekly

    source = settings.state_dir / "bench" / "dbt_build"
    marker = json.loads((source / "bronze.json").read_text()) if (source / "bronze.json").exists() else None
    missing = [t for t in WORLD_TABLES if not (source / "lake" / t / "_delta_log").is_dir()]
    if marker is None or missing:
        return {"skipped": f"no medium world in {source} (missing {missing}): run `darkroom bench dbt_build` first"}
    work = settings.state_dir / "bench" / "retrieval"
    if work.exists():
        shutil.rmtree(work)  # a fresh registry and examples table: the run is the first model, as in production
    for t in WORLD_TABLES:
        (work / "lake" / t).parent.mkdir(parents=True, exist_ok=True)
        (work / "lake" / t).symlink_to((source / "lake" / t).resolve(), target_is_directory=True)
    st = settings.model_copy(update={"state_dir": work, "jars_path": settings.jars_dir})
    spark = get_spark(st, "bench_retrieval")
    as_of = datetime.fromisoformat(marker["end"]).astimezone(UTC)
    t0 = time.perf_counter()
    result = train_weekly(st, as_of, spark=spark, progress=progress)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = embed(spark, st, as_of)
    embed_s = time.perf_counter() - t0
    progress(f"embeddings: {emb.items:,} posts and {emb.users:,} users in {embed_s:.0f}s")
    t0 = time.perf_counter()
    built = index_batch(spark, st, as_of, progress=progress)
    index_s = time.perf_counter() - t0
    return {
        "world": marker | {"as_of": as_of.isoformat()},
        "run": result.summary() | {"seconds": round(train_s, 1), "examples_per_s": round(result.examples_per_s)},
        "train_pairs": result.train_rows,
        "holdout_users": result.holdout_users,
        "catalogue_posts": result.catalogue_items,
        "table": {name: {k: round(v, 4) for k, v in m.items()} for name, m in result.quality.items()},
        "chosen_index_on_holdout": result.chosen_index,
        "sweep_on_holdout": result.sweep,
        "embeddings": asdict(emb) | {"seconds": round(embed_s, 1)},
        "batch_index": {
            "spec": built.spec,
            "items": built.items,
            "recall": built.recall,
            "queries_per_s": round(built.queries_per_s),
            "seconds": round(index_s, 1),
            "path": str(built.path),
        },
    }


def run(settings: DarkroomSettings, *, quick: bool) -> dict:
    def progress(message: str) -> None:
        print(f"[bench retrieval] {message}", flush=True)

    items, rows, dense_rows = (100_000, 20_000, 2_048) if quick else (1_000_000, 200_000, 8_192)
    training = _train(rows, dense_rows, progress)
    index = _index(items, progress)
    return {
        "ratio": index["speedup"],
        "ratio_of": f"queries/s of the fastest index with recall@{K} >= {MIN_RECALL} ({index['chosen']}) over exact "
        f"(flat) search, {index['items']:,} x {DIM} vectors, 1 FAISS thread, same run",
        "index": index,
        "training": training,
        "quality": {"skipped": "--quick: no world"} if quick else _quality(settings, progress),
        "params": {"items": items, "training_rows": rows, "dense_adam_rows": dense_rows, "quick": quick},
    }
