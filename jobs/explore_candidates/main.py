"""``explore_candidates``: per active user, the Explore posts the two-tower retrieves and the ranker orders.

    python -m jobs.explore_candidates.main --as-of 2026-11-01T00:00:00

Reads the batch's user embeddings (``serving.user_embeddings``) and its FAISS index (built by
``jobs.two_tower_embeddings.main.index_batch``), and in Spark (``mapInPandas``, the index loaded once per Python
worker) fetches each user's ``two_tower.retrieve_k`` nearest posts. Then ``transform.exclude_known`` drops own
posts, followed authors' posts and posts seen in the last ``seen_days``; the ``score_k`` best by retrieval score
are scored by ``ranker@champion`` (the explore surface, features as of ``as_of``), and the ``explore_size`` best by
value score go to ``serving.explore_candidates`` (the batch replaced).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from darkroom import lake
from darkroom.settings import DarkroomSettings, load_settings
from darkroom.tables import table
from jobs.explore_candidates import transform as T
from jobs.two_tower_embeddings.main import USER_EMBEDDINGS
from jobs.two_tower_embeddings.transform import batch_id
from jobs.two_tower_examples.main import utc

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

APP_NAME = "explore_candidates"
CANDIDATES = table("serving.explore_candidates")
_INDEXES: dict[str, object] = {}  # index path -> FAISS index, per Python worker


def _index(path: str):
    if path not in _INDEXES:
        from ml.two_tower.index import load_index

        _INDEXES[path] = load_index(path)
    return _INDEXES[path]


def neighbours_partition(index_path: str, k: int):
    """The ``mapInPandas`` function: (user_id, embedding) in, (user_id, post_id, retrieval_score) out."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import numpy as np
        import pandas as pd

        from ml.two_tower.index import search

        index = _index(index_path)
        for frame in frames:
            if frame.empty:
                continue
            queries = np.stack(frame["embedding"].to_list()).astype(np.float32)
            top = search(index, queries, min(k, index.ntotal))
            users = np.repeat(frame["user_id"].to_numpy(), top.ids.shape[1])
            ids, scores = top.ids.ravel(), top.scores.ravel()
            keep = ids >= 0
            yield pd.DataFrame({"user_id": users[keep], "post_id": ids[keep], "retrieval_score": scores[keep]})

    return run


@dataclass(frozen=True)
class CandidatesInfo:
    batch_id: str
    users: int
    rows: int
    two_tower_version: str
    ranker_version: str


def candidates(spark: SparkSession, settings: DarkroomSettings, as_of: datetime) -> CandidatesInfo:
    from pyspark.sql import functions as F

    from feature_store.sources import read_table
    from jobs.ranker_scoring.score import resolve_model, score_candidates

    as_of, cfg = utc(as_of), settings.two_tower
    batch = batch_id(as_of)
    from ml.two_tower.pipeline import index_path

    path = index_path(settings, batch)
    if not path.exists():
        raise FileNotFoundError(f"explore candidates: no index for batch {batch} at {path} (run the index task first)")
    meta = json.loads((Path(path).parent / "meta.json").read_text())
    users = lake.read(spark, USER_EMBEDDINGS, settings).where(F.col("batch_id") == batch)
    schema = "user_id bigint, post_id bigint, retrieval_score float"
    near = users.select("user_id", "embedding").mapInPandas(neighbours_partition(str(path), cfg.retrieve_k), schema)
    posts = read_table(spark, settings, "bronze.posts", ["post_id", "author_id"], purpose="explore candidates")
    follows = read_table(
        spark, settings, "bronze.follows", ["follower_id", "followee_id", "created_at"], purpose="explore candidates"
    )
    impressions = read_table(
        spark, settings, "bronze.impressions", ["viewer_id", "post_id", "ts"], purpose="explore candidates"
    )
    kept = T.exclude_known(near, posts, follows, impressions, as_of=as_of, seen_days=cfg.seen_days)
    shortlist = T.top_per_user(kept, cfg.score_k, F.col("retrieval_score").desc()).drop("rank")
    ranker = resolve_model(settings)  # once: every partition scores with this version
    scored = score_candidates(spark, settings, shortlist, as_of=as_of, surface="explore", model_uri=ranker.uri)
    best = T.top_per_user(scored, cfg.explore_size, F.col("value_score").desc(), F.col("retrieval_score").desc())
    out = best.select(
        F.lit(batch).alias("batch_id"),
        "user_id",
        "post_id",
        F.col("value_score").cast("double").alias("score"),
        "rank",
        F.col("retrieval_score").cast("double").alias("retrieval_score"),
        F.lit(f"two_tower/{meta['model_version']}+ranker/{ranker.version}").alias("model_version"),
    )
    lake.replace_where(spark, CANDIDATES, settings, out, f"batch_id = '{batch}'")
    written = lake.read(spark, CANDIDATES, settings).where(F.col("batch_id") == batch)
    n_users = written.select("user_id").distinct().count()
    return CandidatesInfo(batch, n_users, written.count(), str(meta["model_version"]), ranker.version)


def explore_candidates(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``two_tower_weekly.explore_candidates`` (entry point, ``darkroom.spark_task``): the batch's candidates."""
    from dataclasses import asdict

    from darkroom.spark import get_spark

    return asdict(candidates(get_spark(settings, "explore_candidates"), settings, as_of))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.explore_candidates.main", description=__doc__)
    parser.add_argument("--as-of", required=True, type=datetime.fromisoformat, help="the batch's instant (UTC)")
    args = parser.parse_args(argv)
    from darkroom.spark import get_spark

    settings = load_settings()
    info = candidates(get_spark(settings, APP_NAME), settings, args.as_of)
    print(f"batch {info.batch_id}: {info.rows:,} candidates for {info.users:,} users")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
