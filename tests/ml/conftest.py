"""A small synthetic training set shaped like the feature store's: the labels follow known probabilities (the oracle).

Each head's logit is a bias plus the viewer-author affinity, the post's like rate, a hidden per-viewer taste (only
learnable through the viewer id) and a bonus for the hashtag ``cats``; so a model that learns anything beats 0.5
AUC by a wide margin, and the oracle's AUC is the best any model can do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from darkroom.settings import RankerSettings
from ml.ranker.features import HEADS

START = datetime(2026, 10, 20, tzinfo=UTC)
# Per head: bias, affinity, like rate, viewer taste, cats bonus.
COEF = {
    "like": (-1.0, 1.5, 1.0, 1.5, 1.0),
    "comment": (-2.0, 1.0, 0.5, 1.0, 0.5),
    "save": (-2.0, 0.5, 1.5, 1.0, 0.0),
    "share": (-2.0, 0.8, 0.8, 0.5, 1.0),
    "follow": (-2.5, 1.0, 0.0, 1.0, 0.0),
    "hide": (-2.0, -1.5, -0.5, -1.0, -1.0),
    "dwell": (-0.5, 0.5, 1.5, 0.5, 0.5),
}
TAGS = ["cats", "dogs", "food", "travel", "art", "sea"]


def synthetic_frame(rows: int, *, days: int = 3, seed: int = 0, viewers: int = 200) -> tuple[pa.Table, pd.DataFrame]:
    """(training-set table, oracle frame with viewer_id, post_id, ts, p_<head>)."""
    rng = np.random.default_rng(seed)
    viewer = rng.integers(0, viewers, rows)
    taste = np.random.default_rng(1234).normal(0, 1, viewers)[viewer]
    author = rng.integers(0, 50, rows)
    post = rng.permutation(rows) + 10_000  # every impression a different post: keys are unique
    ts_us = (rng.uniform(0, days * 86_400, rows) * 1e6).astype(np.int64)
    ts_us += int(START.timestamp() * 1e6)
    affinity = rng.normal(0, 1, rows)
    like_rate = rng.normal(0, 1, rows)
    followers = rng.lognormal(5, 2, rows).astype(np.int64)
    n_tags = rng.integers(0, 4, rows)
    tags = [list(rng.choice(TAGS, k, replace=False)) for k in n_tags]
    cats = np.array([("cats" in t) for t in tags], dtype=np.float64)
    aff_missing = rng.uniform(size=rows) < 0.1
    probs, labels = {}, {}
    for h in HEADS:
        b, wa, wl, wt, wc = COEF[h]
        logit = b + wa * affinity + wl * like_rate + wt * taste + wc * cats
        probs[h] = 1 / (1 + np.exp(-logit))
        labels[h] = (rng.uniform(size=rows) < probs[h]).astype(np.int32)
    ts = pa.array(ts_us, pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "viewer_id": pa.array(viewer + 1_000_000, pa.int64()),
            "post_id": pa.array(post, pa.int64()),
            "author_id": pa.array(author + 5_000, pa.int64()),
            "impressed_at": ts,
            "impression_date": pc_date(ts_us),
            **{f"label_{h}": pa.array(labels[h], pa.int32()) for h in HEADS},
            "viewer__follower_count": pa.array(followers, pa.int64()),
            "viewer_author__affinity": pa.array(
                np.where(aff_missing, np.nan, affinity), pa.float64(), from_pandas=True
            ),
            "post__like_rate": pa.array(like_rate, pa.float64()),
            "author__noise": pa.array(rng.normal(0, 1, rows), pa.float64()),
            "post_hashtags__hashtags": pa.array(
                [t if t or i % 2 else None for i, t in enumerate(tags)], pa.list_(pa.string())
            ),
        }
    )
    oracle = pd.DataFrame(
        {
            "viewer_id": viewer + 1_000_000,
            "post_id": post,
            "ts": pd.to_datetime(ts_us, unit="us", utc=True),
            **{f"p_{h}": probs[h] for h in HEADS},
        }
    )
    return table, oracle


def pc_date(ts_us: np.ndarray) -> pa.Array:
    return pa.array((ts_us // 86_400_000_000).astype(np.int32), pa.int32()).cast(pa.date32())


def write_files(table: pa.Table, folder: Path, *, files: int = 2, row_group_size: int = 500) -> list[str]:
    """The table in time order, split into ``files`` Parquet files of several row groups each."""
    folder.mkdir(parents=True, exist_ok=True)
    table = table.sort_by("impressed_at")
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    paths = []
    for i in range(files):
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), path, row_group_size=row_group_size)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """3 days x 3000 rows in 3 files: (files, oracle frame)."""
    table, oracle = synthetic_frame(9_000, days=3, seed=0)
    return write_files(table, tmp_path_factory.mktemp("trainset"), files=3, row_group_size=1_000), oracle


@pytest.fixture(scope="session")
def tiny_cfg() -> RankerSettings:
    """Tiny dimensions, a few steps per epoch; frozen, so one instance serves every test."""
    return RankerSettings(
        id_buckets=1024,
        multi_buckets=64,
        embedding_dim=8,
        dense_hidden=[16],
        num_experts=2,
        expert_hidden=[32, 16],
        tower_hidden=[8],
        batch_size=256,
        epochs=3,
        learning_rate=3e-3,
        embedding_learning_rate=3e-2,
        shuffle_buffer_rows=2_048,
        torch_threads=1,
        baseline_max_rows=20_000,
        lgbm_rounds=40,
        logreg_hash_buckets=4096,
    )


@pytest.fixture(scope="session")
def split(dataset):
    """(train, holdout): the first two days and the last."""
    from ml.ranker.data import time_holdout

    files, _ = dataset
    return time_holdout(files)


@pytest.fixture(scope="session")
def trained(split, tiny_cfg):
    """(cfg, fitted spec, TrainResult, the EpochStats on_epoch saw): 3 epochs on the training days."""
    from ml.ranker.train import prepare_spec, train

    train_src, holdout = split
    spec = prepare_spec(train_src, tiny_cfg)
    seen = []
    result = train(train_src, spec, tiny_cfg, eval_files=holdout, on_epoch=seen.append)
    return tiny_cfg, spec, result, seen
