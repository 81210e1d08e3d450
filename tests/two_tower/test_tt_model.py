"""The towers' shapes, normalisation, independence and sparse gradients."""

from __future__ import annotations

import faiss  # noqa: F401  (before torch)
import pytest
import torch

from ml.two_tower.model import TwoTower, TwoTowerArch

ARCH = TwoTowerArch(user_dense=3, item_dense=2, id_buckets=50, embedding_dim=4, hidden=(8,), output_dim=6)


def inputs(batch: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, 50, (batch,), generator=g),  # user buckets
        torch.randn(batch, 3, generator=g),  # user dense
        torch.randint(0, 50, (7,), generator=g),  # history values
        torch.tensor([0, 2, 2, 5, 6]),  # history offsets: row 1 has an empty history
        torch.randint(0, 50, (batch,), generator=g),  # post buckets
        torch.randint(0, 50, (batch,), generator=g),  # author buckets
        torch.randn(batch, 2, generator=g),  # item dense
    ]


def test_towers_give_unit_vectors_of_the_output_dimension():
    torch.manual_seed(0)
    u, v = TwoTower(ARCH)(*inputs())
    assert u.shape == v.shape == (5, 6)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(TwoTower.score(u, v), (u * v).sum(dim=1))


def test_without_normalisation_the_norms_are_free():
    torch.manual_seed(0)
    u, v = TwoTower(TwoTowerArch(**{**ARCH.__dict__, "normalize": False}))(*inputs())
    assert u.shape == v.shape == (5, 6)
    assert not torch.allclose(u.norm(dim=1), torch.ones(5), atol=1e-3)
    assert not torch.allclose(v.norm(dim=1), torch.ones(5), atol=1e-3)


def test_each_tower_reads_only_its_own_inputs():
    torch.manual_seed(0)
    model = TwoTower(ARCH).eval()
    x = inputs()
    u, v = model(*x)
    y = list(x)
    y[4], y[5], y[6] = (x[4] + 1) % 50, (x[5] + 1) % 50, x[6] + 1.0  # other items
    u2, v2 = model(*y)
    assert torch.equal(u, u2) and not torch.allclose(v, v2)
    z = list(x)
    z[1] = x[1] + 1.0  # other user dense features
    u3, v3 = model(*z)
    assert torch.equal(v, v3) and not torch.allclose(u, u3)


def test_dense_inputs_are_optional():
    torch.manual_seed(0)
    arch = TwoTowerArch(id_buckets=50, embedding_dim=4, hidden=(8,), output_dim=6)
    x = inputs()
    x[1], x[6] = torch.zeros(5, 0), torch.zeros(5, 0)
    u, v = TwoTower(arch)(*x)
    assert u.shape == v.shape == (5, 6)


def test_id_tables_have_sparse_gradients_and_the_rest_dense():
    torch.manual_seed(0)
    model = TwoTower(ARCH)
    u, v = model(*inputs())
    (u * v).sum().backward()
    emb, dense = model.embedding_parameters(), model.dense_parameters()
    assert len(emb) == 4 and sum(p.numel() for p in emb) == 4 * 50 * 4
    assert all(p.grad.is_sparse for p in emb)
    assert all(not p.grad.is_sparse for p in dense)
    assert {id(p) for p in emb} | {id(p) for p in dense} == {id(p) for p in model.parameters()}
    dense_model = TwoTower(TwoTowerArch(**{**ARCH.__dict__, "sparse": False}))
    u, v = dense_model(*inputs())
    (u * v).sum().backward()
    assert not any(p.grad.is_sparse for p in dense_model.embedding_parameters())


def test_arch_round_trips_through_a_dict_and_refuses_empty_layers():
    assert TwoTowerArch.from_dict(ARCH.to_dict()) == ARCH
    with pytest.raises(ValueError, match="positive size"):
        TwoTowerArch(hidden=(0,))
