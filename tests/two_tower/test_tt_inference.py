"""State-dict conversions, the encoder (hashing, batching, save/load) and the embedding-table gate."""

from __future__ import annotations

import faiss  # noqa: F401  (before torch)
import numpy as np
import pyarrow as pa
import pytest
import torch

from ml.ranker.features import FeatureSchemaError
from ml.ranker.model import state_dict_diff
from ml.two_tower.features import TwoTowerColumns, item_rows, user_rows
from ml.two_tower.inference import (
    EmbeddingTableError,
    TwoTowerEncoder,
    build_tower,
    merge_tower_states,
    tower_state_dict,
    validate_embeddings,
)
from ml.two_tower.model import TwoTower, TwoTowerArch

ARCH = TwoTowerArch(user_dense=1, item_dense=2, id_buckets=64, embedding_dim=4, hidden=(8,), output_dim=5)
COLUMNS = TwoTowerColumns(user_dense=("user__age",), item_dense=("post__likes", "post__age"))


def model(seed: int = 0) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower(ARCH).eval()


def users_table() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([3, 1, 4, 1, 5], pa.int64()),
            "history_post_ids": pa.array([[9, 2], [], None, [6], [5, 3, 5]], pa.list_(pa.int64())),
            "user__age": pa.array([20.0, 31.0, None, 44.0, 18.0]),
        }
    )


def items_table() -> pa.Table:
    return pa.table(
        {
            "post_id": pa.array([100, 101, 102], pa.int64()),
            "author_id": pa.array([7, 7, 8], pa.int64()),
            "post__likes": pa.array([0, 12, 400], pa.int64()),
            "post__age": pa.array([1.5, 0.0, 30.0]),
        }
    )


def test_split_then_merge_gives_back_the_full_state():
    full = model().state_dict()
    user, item = tower_state_dict(full, "user"), tower_state_dict(full, "item")
    assert set(user) == {"user_table.weight", "history_table.weight", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                         "mlp.2.bias"}  # fmt: skip
    assert set(item) == {"item_table.weight", "author_table.weight", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                         "mlp.2.bias"}  # fmt: skip
    assert not torch.equal(user["mlp.0.weight"], item["mlp.0.weight"][:, : user["mlp.0.weight"].shape[1]])
    merged = merge_tower_states(user, item)
    assert list(merged) == list(full) and state_dict_diff(merged, full) == []
    ddp = {f"module.{k}": v for k, v in full.items()}  # a DistributedDataParallel state dict
    assert state_dict_diff(tower_state_dict(ddp, "item"), item) == []


def test_a_fresh_tower_loaded_from_its_state_embeds_like_the_full_model():
    trained = model(seed=0)
    users = user_rows(users_table(), COLUMNS).model_inputs(ARCH.id_buckets)
    items = item_rows(items_table(), COLUMNS).model_inputs(ARCH.id_buckets)
    u_in, i_in = [torch.from_numpy(a) for a in users], [torch.from_numpy(a) for a in items]
    torch.manual_seed(1)  # fresh towers start from other weights
    assert not torch.allclose(build_tower(ARCH, "user")(*u_in), trained.user_embedding(*u_in))
    with torch.no_grad():
        user = build_tower(ARCH, "user", tower_state_dict(trained.state_dict(), "user"))
        item = build_tower(ARCH, "item", tower_state_dict(trained.state_dict(), "item"))
        assert torch.equal(user(*u_in), trained.user_embedding(*u_in))
        assert torch.equal(item(*i_in), trained.item_embedding(*i_in))
        rebuilt = TwoTower(ARCH)
        rebuilt.load_state_dict(merge_tower_states(user.state_dict(), item.state_dict()))
        assert torch.equal(rebuilt.eval().user_embedding(*u_in), trained.user_embedding(*u_in))


def test_state_helpers_refuse_what_does_not_fit():
    full = model().state_dict()
    with pytest.raises(ValueError, match="tower must be one of"):
        tower_state_dict(full, "author")
    with pytest.raises(ValueError, match="no 'user' tower weights"):
        tower_state_dict(tower_state_dict(full, "item"), "user")
    with pytest.raises(ValueError, match="looks like a full model's"):
        merge_tower_states(full, tower_state_dict(full, "item"))
    with pytest.raises(RuntimeError, match="history_table.weight"):
        build_tower(ARCH, "user", tower_state_dict(full, "item"))


def test_encoder_hashes_batches_and_round_trips_through_files(tmp_path):
    encoder = TwoTowerEncoder(model(), ARCH, COLUMNS, batch_rows=2)  # 5 users in 3 chunks
    u = encoder.encode_users(users_table())
    v = encoder.encode_items(items_table())
    assert u.dtype == v.dtype == np.float32 and u.shape == (5, 5) and v.shape == (3, 5)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-5)
    # The same user (id 1) with other histories and features embeds differently; one chunk equals three.
    assert not np.allclose(u[1], u[3])
    whole = TwoTowerEncoder(encoder.model, ARCH, COLUMNS).encode_users(users_table())
    np.testing.assert_allclose(whole, u, rtol=0, atol=1e-6)  # equal up to float rounding (matmul blocking)
    with torch.no_grad():
        direct = encoder.model.item_embedding(
            *[torch.from_numpy(a) for a in item_rows(items_table(), COLUMNS).model_inputs(64)]
        )
    np.testing.assert_allclose(direct.numpy(), v, rtol=0, atol=1e-6)
    loaded = TwoTowerEncoder.load(encoder.save(tmp_path / "encoder"))
    assert loaded.arch == ARCH and loaded.columns == COLUMNS
    np.testing.assert_array_equal(loaded.encode_users(users_table()), whole)  # same weights, same batching: exact
    np.testing.assert_array_equal(loaded.encode_items(items_table()), direct.numpy())


def test_encoder_names_a_missing_column():
    encoder = TwoTowerEncoder(model(), ARCH, COLUMNS)
    with pytest.raises(FeatureSchemaError, match="user table: column 'user__age' is missing"):
        encoder.encode_users(users_table().drop_columns(["user__age"]))
    with pytest.raises(FeatureSchemaError, match="column 'post__likes' is string, expected a number"):
        encoder.encode_items(items_table().set_column(2, "post__likes", pa.array(["a", "b", "c"])))


# --- the embedding-table gate -----------------------------------------------------------------------------------------
IDS = np.array([10, 11, 12, 13])


def vectors(n: int = 4, dim: int = 3) -> np.ndarray:
    return np.arange(n * dim, dtype=np.float32).reshape(n, dim)


def test_a_good_table_passes_as_float32():
    out = validate_embeddings(IDS, vectors().astype(np.float64), 3, "items")
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_array_equal(out, vectors())
    ragged_ok = validate_embeddings(["a", "b"], [[1.0, 2.0], np.array([3.0, 4.0])], 2, "users")
    np.testing.assert_array_equal(ragged_ok, [[1, 2], [3, 4]])


def test_wrong_dimension_is_refused_naming_table_row_and_expectation():
    with pytest.raises(EmbeddingTableError, match=r"'items' row 0 \(id 10\): has 3 values, expected dimension 4") as e:
        validate_embeddings(IDS, vectors(), 4, "items")
    assert (e.value.table, e.value.row, e.value.id) == ("items", 0, 10)
    ragged = [[0.0, 1.0], [2.0, 3.0], [4.0], [5.0, 6.0]]
    with pytest.raises(EmbeddingTableError, match=r"'users' row 2 \(id 'c'\): has 1 values, expected dimension 2"):
        validate_embeddings(np.array(["a", "b", "c", "d"]), ragged, 2, "users")


def test_non_finite_values_are_refused_naming_the_row():
    bad = vectors()
    bad[1, 2] = np.nan
    bad[3, 0] = np.inf
    with pytest.raises(EmbeddingTableError, match=r"'items' row 1 \(id 11\): has nan at position 2.*2 of 4 rows") as e:
        validate_embeddings(IDS, bad, 3, "items")
    assert e.value.row == 1 and e.value.id == 11
    bad[1, 2] = 0.0
    with pytest.raises(EmbeddingTableError, match=r"row 3 \(id 13\): has inf at position 0"):
        validate_embeddings(IDS, bad, 3, "items")


def test_duplicate_ids_are_refused_naming_both_rows():
    with pytest.raises(EmbeddingTableError, match=r"'items' row 3 \(id 11\): repeats the id of row 1") as e:
        validate_embeddings(np.array([10, 11, 12, 11]), vectors(), 3, "items")
    assert e.value.row == 3 and e.value.id == 11


def test_mismatched_lengths_and_empty_tables_are_refused():
    with pytest.raises(EmbeddingTableError, match=r"'items': 4 ids but 3 vectors; expected one vector per id"):
        validate_embeddings(IDS, vectors(3), 3, "items")
    with pytest.raises(EmbeddingTableError, match="'items': has no rows"):
        validate_embeddings(np.array([], dtype=np.int64), np.zeros((0, 3)), 3, "items")
