"""The multi-task ranker as an ``nn.Module`` (an MMoE), the value score, and pure state-dict helpers.

Inputs: one embedding table per hashed id column, one embedding bag per multi-valued column (hashtags), and an MLP
over the dense inputs; their concatenation feeds ``num_experts`` shared experts. Each head has a softmax gate over
the experts and a tower ending in one logit (Ma et al. 2018, "Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts"). Experts and towers are stacked into batched matrix products, so their count
costs little. ``sparse=True`` gives the embedding tables sparse gradients (rows of the batch only), for SparseAdam
or Adagrad; the loss and the optimisers live in ``train.py``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.ranker.features import HEADS

DDP_PREFIX = "module."


@dataclass(frozen=True)
class RankerArch:
    """The ranker's shape: everything needed to rebuild it before loading a state dict (saved with the model)."""

    id_buckets: tuple[int, ...]
    multi_buckets: tuple[int, ...]
    dense_inputs: int
    embedding_dim: int = 32
    dense_hidden: tuple[int, ...] = (64,)
    num_experts: int = 4
    expert_hidden: tuple[int, ...] = (128, 64)
    tower_hidden: tuple[int, ...] = (32,)
    num_tasks: int = len(HEADS)
    bag_mode: str = "mean"
    sparse: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankerArch:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class _StackedLinear(nn.Module):
    """``groups`` independent linear layers applied at once: (batch, groups, in) -> (batch, groups, out)."""

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation, per group
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bgi,gio->bgo", x, self.weight) + self.bias


def _stacked_mlp(groups: int, in_features: int, widths: Sequence[int], *, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers.append(_StackedLinear(groups, in_features, w))
        if i < len(widths) - 1 or last_activation:
            layers.append(nn.ReLU())
        in_features = w
    return nn.Sequential(*layers)


class MultiTaskRanker(nn.Module):
    """MMoE over hashed ids, hashtag bags and dense features; ``forward`` returns one logit per head."""

    def __init__(self, arch: RankerArch) -> None:
        super().__init__()
        self.arch = arch
        d = arch.embedding_dim
        self.id_tables = nn.ModuleList(nn.EmbeddingBag(b, d, mode="sum", sparse=arch.sparse) for b in arch.id_buckets)
        self.bag_tables = nn.ModuleList(
            nn.EmbeddingBag(b, d, mode=arch.bag_mode, sparse=arch.sparse) for b in arch.multi_buckets
        )
        for table in [*self.id_tables, *self.bag_tables]:
            nn.init.normal_(table.weight, std=1.0 / math.sqrt(d))
        dense_layers: list[nn.Module] = []
        width = arch.dense_inputs
        for w in arch.dense_hidden if arch.dense_inputs else ():
            dense_layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        self.dense_mlp = nn.Sequential(*dense_layers)
        shared = d * (len(arch.id_buckets) + len(arch.multi_buckets)) + (width if arch.dense_inputs else 0)
        if shared == 0:
            raise ValueError("the ranker needs at least one id, multi-valued or dense input")
        self.shared_width = shared
        self.experts = _stacked_mlp(arch.num_experts, shared, arch.expert_hidden, last_activation=True)
        self.gates = nn.Linear(shared, arch.num_tasks * arch.num_experts)
        self.towers = _stacked_mlp(
            arch.num_tasks, arch.expert_hidden[-1], [*arch.tower_hidden, 1], last_activation=False
        )

    def forward(
        self,
        ids: torch.Tensor,
        dense: torch.Tensor,
        bag_values: Sequence[torch.Tensor] = (),
        bag_offsets: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """ids (batch, id columns) int64, dense (batch, dense inputs), (values, offsets) per bag -> (batch, heads)."""
        parts = [table(ids[:, j : j + 1]) for j, table in enumerate(self.id_tables)]
        parts += [table(v, o) for table, v, o in zip(self.bag_tables, bag_values, bag_offsets, strict=True)]
        if self.arch.dense_inputs:
            parts.append(self.dense_mlp(dense))
        x = torch.cat(parts, dim=1)
        batch = x.shape[0]
        experts = self.experts(x.unsqueeze(1).expand(batch, self.arch.num_experts, self.shared_width))
        gates = torch.softmax(self.gates(x).view(batch, self.arch.num_tasks, self.arch.num_experts), dim=-1)
        mixed = torch.bmm(gates, experts)  # (batch, tasks, expert width)
        return self.towers(mixed).squeeze(-1)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (sparse gradients when ``arch.sparse``): for SparseAdam or Adagrad."""
        return [t.weight for t in [*self.id_tables, *self.bag_tables]]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Everything else: for Adam."""
        emb = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in emb]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the value score --------------------------------------------------------------------------------------------------
def value_score(
    probs: Mapping[str, Any] | np.ndarray | torch.Tensor, weights: Mapping[str, float]
) -> np.ndarray | torch.Tensor:
    """Sum over the seven heads of weight x predicted probability (the seed's feed value).

    ``probs`` is either head -> probabilities or a (rows, 7) array/tensor with the heads in ``HEADS`` order;
    ``weights`` must name exactly the seven heads (``settings.ranker.value_weights``).
    """
    if set(weights) != set(HEADS):
        raise ValueError(f"value weights need exactly {list(HEADS)}, got {sorted(weights)}")
    w = [float(weights[h]) for h in HEADS]
    if isinstance(probs, Mapping):
        missing = [h for h in HEADS if h not in probs]
        if missing:
            raise ValueError(f"probabilities are missing head(s) {missing}")
        cols = [probs[h] for h in HEADS]
        if all(isinstance(c, torch.Tensor) for c in cols):
            return sum(wi * c for wi, c in zip(w, cols, strict=True))
        return sum(wi * np.asarray(c, dtype=np.float64) for wi, c in zip(w, cols, strict=True))
    if probs.shape[-1] != len(HEADS):
        raise ValueError(f"expected {len(HEADS)} columns of probabilities ({', '.join(HEADS)}), got {probs.shape[-1]}")
    if isinstance(probs, torch.Tensor):
        return probs @ torch.tensor(w, dtype=probs.dtype, device=probs.device)
    return np.asarray(probs, dtype=np.float64) @ np.asarray(w)


# --- state dicts (pure) -----------------------------------------------------------------------------------------------
def strip_ddp_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DistributedDataParallel wrapper's state dict with its ``module.`` prefix removed (others unchanged)."""
    return {k.removeprefix(DDP_PREFIX): v for k, v in state.items()}


def state_dict_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *, atol: float = 0.0) -> list[str]:
    """Keys whose tensors differ (beyond ``atol``), or that only one side has; empty means the same weights."""
    out = sorted(set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        x, y = a[k].detach().cpu(), b[k].detach().cpu()
        if x.shape != y.shape or x.dtype != y.dtype:
            out.append(k)
        elif atol == 0.0 and not torch.equal(x, y):
            out.append(k)
        elif atol > 0.0 and not torch.allclose(x.double(), y.double(), atol=atol, rtol=0.0):
            out.append(k)
    return sorted(out)


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A BLAKE2b digest of every tensor's name, dtype, shape and bytes: equal digests mean equal weights."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(state[k].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_weights(model: MultiTaskRanker, state: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict (a DDP one too); a shape or key mismatch names the keys and both shapes."""
    state = strip_ddp_prefix(state)
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs the model's {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or extra or shapes:
        raise ValueError(
            "initial weights do not fit this ranker's shape (same settings as the model they come from?): "
            + "; ".join(
                filter(None, [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "", *shapes])
            )
        )
    model.load_state_dict(state, strict=True)
