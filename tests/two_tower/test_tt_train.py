"""The in-batch softmax loss against hand numbers, item popularity, batches from Arrow, and a smoke training run."""

from __future__ import annotations

import math

import faiss  # noqa: F401  (before torch)
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ml.ranker.features import FeatureSchemaError, column_salt, hash_ids
from ml.two_tower.evaluate import exact_top_k
from ml.two_tower.features import ItemCounts, TwoTowerColumns, batch_from_table, item_counts, item_log_q
from ml.two_tower.train import (
    TwoTowerConfig,
    arch_for,
    in_batch_softmax_loss,
    parquet_batches,
    parquet_item_counts,
    train,
)

# Three rows; rows 0 and 2 engaged with the same post (id 7): an accidental hit for each other.
U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
V = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
IDS = torch.tensor([7, 8, 7])
LOG_Q = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.5)], dtype=torch.float64)
E2 = math.exp(2.0)


def test_loss_by_hand_with_log_q_and_an_accidental_hit():
    # u.v: row 0 [1, 0, 1], row 1 [0, 1, 0], row 2 [1, 1, 1]; / 0.5 -> [2, 0, 2], [0, 2, 0], [2, 2, 2];
    # - log q = + [ln 2, ln 4, ln 2]: exp(logits) row 0 [2e^2, 4, (2e^2 masked)], row 1 [2, 4e^2, 2],
    # row 2 [(2e^2 masked), 4e^2, 2e^2].
    # row 0: -log(2e^2 / (2e^2 + 4)) = log(1 + 2/e^2)
    # row 1: -log(4e^2 / (2 + 4e^2 + 2)) = log(1 + 1/e^2)
    # row 2: -log(2e^2 / (4e^2 + 2e^2)) = log 3
    # = (0.23955 + 0.12693 + 1.09861) / 3
    expected = (math.log(1 + 2 / E2) + math.log(1 + 1 / E2) + math.log(3)) / 3
    loss = in_batch_softmax_loss(U, V, LOG_Q, IDS, temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert loss.item() == pytest.approx(0.48836, abs=1e-5)


def test_loss_by_hand_without_mask_or_correction():
    # Unmasked, uncorrected: exp(logits) row 0 [e^2, 1, e^2] -> log(2 + e^-2); row 1 [1, e^2, 1] -> log(1 + 2e^-2);
    # row 2 [e^2, e^2, e^2] -> log 3.
    expected = (math.log(2 + 1 / E2) + math.log(1 + 2 / E2) + math.log(3)) / 3
    assert in_batch_softmax_loss(U, V, None, None, 0.5).item() == pytest.approx(expected, rel=1e-12)
    # The mask alone: row 0 loses its e^2 column -> log(1 + e^-2); row 2 loses column 0 -> log 2.
    masked = (math.log(1 + 1 / E2) + math.log(1 + 2 / E2) + math.log(2)) / 3
    assert in_batch_softmax_loss(U, V, None, IDS, 0.5).item() == pytest.approx(masked, rel=1e-12)


def test_masked_loss_has_finite_gradients_and_checks_shapes():
    u, v = U.clone().requires_grad_(), V.clone().requires_grad_()
    in_batch_softmax_loss(u, v, LOG_Q, IDS, 0.5).backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(v.grad).all()
    with pytest.raises(ValueError, match=r"log_q has shape \(2,\), expected \(3,\)"):
        in_batch_softmax_loss(U, V, LOG_Q[:2], IDS, 0.5)


def test_item_log_q_is_the_log_training_frequency():
    counts = item_counts(np.array([5, 9, 5, 5, 2, 9, 5, 5]))  # 5 x5, 9 x2, 2 x1 of 8
    assert counts.ids.tolist() == [2, 5, 9] and counts.counts.tolist() == [1, 5, 2]
    np.testing.assert_allclose(
        item_log_q(np.array([5, 9, 2, 404]), counts), np.log([5 / 8, 2 / 8, 1 / 8, 1 / 8]), rtol=1e-6
    )  # an unseen id (404) counts as 1
    streamed = item_counts([np.array([5, 9, 5]), np.array([5, 5, 2, 9, 5])])
    assert streamed == counts and streamed != item_counts(np.array([5, 9]))
    assert ItemCounts.from_mapping({9: 2, 2: 1, 5: 5}).count(np.array([9, 3])).tolist() == [2, 0]


COLUMNS = TwoTowerColumns(user_dense=("user__follower_count",), item_dense=("post__like_rate",))


def training_table() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 2, 3], pa.int64()),
            "history_post_ids": pa.array([[10, 11], None, [12, None, 13]], pa.list_(pa.int64())),
            "user__follower_count": pa.array([0.0, None, float(math.e - 1)], pa.float64()),
            "post_id": pa.array([20, 21, 20], pa.int64()),
            "author_id": pa.array([5, 6, 5], pa.int32()),
            "post__like_rate": pa.array([-(math.e - 1), 1e300, float("nan")], pa.float64()),
        }
    )


def test_batch_from_table_hashes_by_role_and_pools_history():
    batch = batch_from_table(training_table(), COLUMNS)
    # A null history is empty; a null element is dropped.
    assert batch.history_values.tolist() == [10, 11, 12, 13]
    assert batch.history_offsets.tolist() == [0, 2, 2]
    # sign(x) log1p(|x|), missing -> 0, clipped to +-10.
    np.testing.assert_allclose(batch.user_dense[:, 0], [0.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(batch.item_dense[:, 0], [-1.0, 10.0, 0.0], atol=1e-6)
    users, dense, history, offsets = batch.users.model_inputs(1000)
    assert users.tolist() == hash_ids(np.array([1, 2, 3]), 1000, column_salt("user_id")).tolist()
    assert history.tolist() == hash_ids(np.array([10, 11, 12, 13]), 1000, column_salt("history_post_ids")).tolist()
    posts, authors, _ = batch.items.model_inputs(1000)
    assert posts.tolist() == hash_ids(np.array([20, 21, 20]), 1000, column_salt("post_id")).tolist()
    assert authors.tolist() == hash_ids(np.array([5, 6, 5]), 1000, column_salt("author_id")).tolist()
    reordered = batch.take(np.array([2, 0]))
    assert reordered.history_values.tolist() == [12, 13, 10, 11] and reordered.history_offsets.tolist() == [0, 2]
    assert reordered.user_ids.tolist() == [3, 1] and reordered.item_ids.tolist() == [20, 20]


def test_batch_from_table_names_a_missing_or_mistyped_column():
    table = training_table().drop_columns(["author_id"])
    with pytest.raises(FeatureSchemaError, match="'author_id' is missing"):
        batch_from_table(table, COLUMNS)
    table = training_table().set_column(1, "history_post_ids", pa.array([["a"], [], []], pa.list_(pa.string())))
    with pytest.raises(
        FeatureSchemaError, match="'history_post_ids' is list<item: string>, expected a list of integer"
    ):
        batch_from_table(table, COLUMNS)


TINY = TwoTowerConfig(
    embedding_dim=8,
    output_dim=8,
    hidden=(16,),
    temperature=0.1,
    batch_size=128,
    epochs=4,
    learning_rate=1e-2,
    embedding_learning_rate=5e-2,
    id_buckets=256,
    torch_threads=1,
)


def test_training_learns_the_group_task(pairs):
    seen = []
    result = train(pairs, arch_for(TINY, user_dense=2, item_dense=1), TINY, on_epoch=seen.append)
    losses = [e.loss for e in result.history]
    assert seen == result.history and len(losses) == 4
    assert all(e.examples == pairs.rows and e.steps == 16 for e in result.history)
    assert result.examples == 4 * pairs.rows and result.examples_per_s > 0
    assert losses[-1] < losses[0] - 0.5, losses
    # The top 8 posts of each user should mostly be of the user's group (chance: 1/4).
    model = result.model
    with torch.no_grad():
        users = model.user_embedding(*[torch.from_numpy(a) for a in pairs.users.model_inputs(256)]).numpy()
        catalogue = np.arange(64)
        items = pairs.items.take(np.unique(pairs.item_ids, return_index=True)[1])
        assert items.ids.tolist() == catalogue.tolist()
        item_vecs = model.item_embedding(*[torch.from_numpy(a) for a in items.model_inputs(256)]).numpy()
    top = exact_top_k(users[:200], item_vecs, catalogue, 8).ids
    same_group = (top % 4) == ((pairs.user_ids[:200] - 1_000) % 4)[:, None]
    assert same_group.mean() > 0.8


def test_training_is_seeded(pairs):
    few = TwoTowerConfig(**{**TINY.__dict__, "epochs": 1})
    arch = arch_for(few, user_dense=2, item_dense=1)
    a = train(pairs.slice(0, 256), arch, few).model.state_dict()
    b = train(pairs.slice(0, 256), arch, few).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_streamed_parquet_training(tmp_path, pairs):
    part = pairs.slice(0, 300)
    table = pa.table(
        {
            "user_id": part.user_ids,
            "history_post_ids": pa.ListArray.from_arrays(
                np.append(part.history_offsets, len(part.history_values)).astype(np.int32), part.history_values
            ),
            "user__a": part.user_dense[:, 0],
            "user__b": part.user_dense[:, 1],
            "post_id": part.item_ids,
            "author_id": part.author_ids,
            "post__c": part.item_dense[:, 0],
        }
    )
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    pq.write_table(table.slice(0, 120), files[0], row_group_size=50)
    pq.write_table(table.slice(120), files[1], row_group_size=50)
    columns = TwoTowerColumns(user_dense=("user__a", "user__b"), item_dense=("post__c",))
    counts = parquet_item_counts(files, columns)
    assert counts == item_counts(part.item_ids) and counts.total == 300
    cfg = TwoTowerConfig(**{**TINY.__dict__, "epochs": 2})
    arch = arch_for(cfg, user_dense=2, item_dense=1)

    def epoch_batches(epoch):
        return parquet_batches(files, columns, batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch)

    result = train(epoch_batches, arch, cfg, item_counts=counts)
    assert [(e.examples, e.steps) for e in result.history] == [(300, 3), (300, 3)]
    assert result.item_counts is counts
    with pytest.raises(ValueError, match="parquet_item_counts"):
        train(epoch_batches, arch, cfg)


def test_train_refuses_an_arch_that_contradicts_the_settings_or_the_data(pairs):
    arch = arch_for(TINY, user_dense=2, item_dense=1)
    with pytest.raises(ValueError, match="embedding_dim: arch 8 vs settings 4"):
        train(pairs, arch, TwoTowerConfig(**{**TINY.__dict__, "embedding_dim": 4}))
    with pytest.raises(ValueError, match="the batch has 2 user and 1 item dense feature"):
        train(pairs, arch_for(TINY, user_dense=3, item_dense=1), TINY)
