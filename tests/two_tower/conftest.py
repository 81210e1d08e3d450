"""Two-tower tests: faiss loaded before torch, one thread each (the machine is shared), tiny synthetic data."""

from __future__ import annotations

import faiss  # must precede torch in the process
import numpy as np
import pytest
import torch

from ml.two_tower.features import TwoTowerBatch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    before_torch, before_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before_torch)
    faiss.omp_set_num_threads(before_faiss)


def group_pairs(rows: int = 2048, *, users: int = 64, items: int = 64, groups: int = 4, seed: int = 0) -> TwoTowerBatch:
    """A learnable task: user u belongs to group u % groups and engages only with posts of its group (post p is in
    group p % groups); its history holds 3 other posts of the group. Post p's author is p // 4. Dense features:
    2 per user and 1 per post, noise."""
    rng = np.random.default_rng(seed)
    per_group = items // groups
    user = rng.integers(0, users, rows)
    group = user % groups
    item = group + groups * rng.integers(0, per_group, rows)
    history = group[:, None] + groups * rng.integers(0, per_group, (rows, 3))
    return TwoTowerBatch(
        user_ids=user.astype(np.int64) + 1_000,
        user_dense=rng.normal(size=(rows, 2)).astype(np.float32),
        history_values=history.reshape(-1).astype(np.int64),
        history_offsets=np.arange(0, 3 * rows, 3, dtype=np.int64),
        item_ids=item.astype(np.int64),
        author_ids=(item // 4).astype(np.int64) + 500,
        item_dense=rng.normal(size=(rows, 1)).astype(np.float32),
    )


@pytest.fixture(scope="session")
def pairs() -> TwoTowerBatch:
    """2048 (user, post) pairs of the group task."""
    return group_pairs()
