"""The module's shapes, the value score against hand numbers, and the pure state-dict helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.settings import RankerSettings
from ml.ranker.model import (
    MultiTaskRanker,
    RankerArch,
    load_weights,
    state_dict_diff,
    state_fingerprint,
    strip_ddp_prefix,
    value_score,
)

ARCH = RankerArch(
    id_buckets=(50, 60, 70),
    multi_buckets=(20,),
    dense_inputs=6,
    embedding_dim=4,
    dense_hidden=(8,),
    num_experts=3,
    expert_hidden=(16, 8),
    tower_hidden=(4,),
)
SEED_WEIGHTS = RankerSettings().value_weights


def inputs(batch=5):
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randint(0, b, (batch,), generator=g) for b in ARCH.id_buckets], dim=1)
    values = torch.randint(0, 20, (7,), generator=g)
    offsets = torch.tensor([0, 2, 2, 5, 6])  # row 1 has an empty bag
    return ids, torch.randn(batch, 6, generator=g), [values], [offsets]


def test_forward_gives_one_logit_per_head_and_sparse_embedding_gradients():
    model = MultiTaskRanker(ARCH)
    logits = model(*inputs())
    assert logits.shape == (5, 7)
    logits.sum().backward()
    assert all(p.grad.is_sparse for p in model.embedding_parameters())
    assert all(not p.grad.is_sparse for p in model.dense_parameters() if p.grad is not None)
    n_emb = sum(p.numel() for p in model.embedding_parameters())
    assert n_emb == (50 + 60 + 70 + 20) * 4
    dense = MultiTaskRanker(RankerArch(**{**ARCH.__dict__, "sparse": False}))
    dense(*inputs()).sum().backward()
    assert not any(p.grad.is_sparse for p in dense.embedding_parameters())


def test_arch_round_trips_through_a_dict():
    assert RankerArch.from_dict(ARCH.to_dict()) == ARCH


def test_value_score_by_hand():
    # like .5, comment .1, save .2, share 0, follow .1, hide .05, dwell .4 with the seed's weights (dwell 1):
    # .5 + 2 x .1 + 3 x .2 + 3 x 0 + 5 x .1 - 10 x .05 + 1 x .4 = .5 + .2 + .6 + 0 + .5 - .5 + .4 = 1.7
    row = [0.5, 0.1, 0.2, 0.0, 0.1, 0.05, 0.4]
    hide_only = [0, 0, 0, 0, 0, 1.0, 0]  # -10
    np.testing.assert_allclose(value_score(np.array([row, hide_only]), SEED_WEIGHTS), [1.7, -10.0])
    t = value_score(torch.tensor([row], dtype=torch.float64), SEED_WEIGHTS)
    assert isinstance(t, torch.Tensor) and t.item() == pytest.approx(1.7)
    heads = ("like", "comment", "save", "share", "follow", "hide", "dwell")
    by_head = {h: np.array([p]) for h, p in zip(heads, row, strict=True)}
    assert value_score(by_head, {**SEED_WEIGHTS, "dwell": 2.0})[0] == pytest.approx(2.1)  # dwell's weight is a setting
    with pytest.raises(ValueError, match="exactly"):
        value_score(np.array([row]), {"like": 1.0})


def test_value_weights_setting_needs_the_seven_heads():
    with pytest.raises(ValueError, match="value_weights needs exactly"):
        RankerSettings(value_weights={"like": 1.0})


def test_state_dict_helpers():
    a = MultiTaskRanker(ARCH).state_dict()
    wrapped = {f"module.{k}": v.clone() for k, v in a.items()}
    assert state_dict_diff(strip_ddp_prefix(wrapped), a) == []
    assert state_fingerprint(strip_ddp_prefix(wrapped)) == state_fingerprint(a)
    b = {k: v.clone() for k, v in a.items()}
    b["gates.bias"] += 1e-3
    assert state_dict_diff(a, b) == ["gates.bias"] and state_dict_diff(a, b, atol=1e-2) == []
    assert state_fingerprint(a) != state_fingerprint(b)
    del b["gates.weight"]
    assert "gates.weight" in state_dict_diff(a, b)


def test_load_weights_names_what_does_not_fit():
    model = MultiTaskRanker(ARCH)
    other = MultiTaskRanker(RankerArch(**{**ARCH.__dict__, "id_buckets": (50, 60, 99)}))
    with pytest.raises(ValueError, match=r"id_tables.2.weight: \(99, 4\) vs the model's \(70, 4\)"):
        load_weights(model, other.state_dict())
    load_weights(model, {f"module.{k}": v for k, v in MultiTaskRanker(ARCH).state_dict().items()})
