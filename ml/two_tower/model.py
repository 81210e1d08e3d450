"""The two-tower retrieval model as an ``nn.Module``: a user tower and an item tower whose dot product is the score.

User tower: the hashed user id's embedding, the mean of the embeddings of the user's recently engaged posts (an
``EmbeddingBag(mode="mean")``; an empty history pools to zeros) and the user's dense features, concatenated and
fed to an MLP ending in ``output_dim`` values. Item tower: the hashed post id's and author id's embeddings and the
post's dense features, through an MLP of the same shape. With ``normalize`` both outputs are L2-normalised, so the
score is a cosine similarity (the training loss divides it by a temperature). The towers share no weights: the
item tower runs in batch over the whole catalogue, the user tower per request, and each can be loaded alone
(``inference.tower_state_dict``). ``sparse=True`` gives the embedding tables sparse gradients for SparseAdam; the
loss and the optimisers live in ``train.py``, the hashing in ``features.py``.

(Yi et al. 2019, "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations".)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TOWERS: tuple[str, ...] = ("user", "item")  # the towers' attribute names: the prefixes of their state-dict keys


@dataclass(frozen=True)
class TwoTowerArch:
    """The model's shape: everything needed to rebuild it before loading a state dict (saved with the model)."""

    user_dense: int = 0  # user dense features
    item_dense: int = 0  # item dense features
    id_buckets: int = 1 << 20  # rows of each hashed id table (user, history, post, author)
    embedding_dim: int = 64
    hidden: tuple[int, ...] = (256,)
    output_dim: int = 128
    normalize: bool = True
    sparse: bool = True

    def __post_init__(self) -> None:
        if min(self.id_buckets, self.embedding_dim, self.output_dim) < 1 or any(w < 1 for w in self.hidden):
            raise ValueError(f"every table and layer needs a positive size: {self}")
        if min(self.user_dense, self.item_dense) < 0:
            raise ValueError(f"dense input counts cannot be negative: {self}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TwoTowerArch:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in hidden:
        layers += [nn.Linear(in_features, w), nn.ReLU()]
        in_features = w
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def _init_tables(*tables: nn.Module, dim: int) -> None:
    for t in tables:
        nn.init.normal_(t.weight, std=1.0 / math.sqrt(dim))


class _Tower(nn.Module):
    arch: TwoTowerArch

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x)
        return F.normalize(out, dim=1) if self.arch.normalize else out

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The id tables (sparse gradients when ``arch.sparse``): for SparseAdam."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Everything else: for Adam."""
        emb = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in emb]


class UserTower(_Tower):
    """User id + pooled history + user dense features -> (batch, output_dim)."""

    def __init__(self, arch: TwoTowerArch) -> None:
        super().__init__()
        self.arch = arch
        d = arch.embedding_dim
        self.user_table = nn.Embedding(arch.id_buckets, d, sparse=arch.sparse)
        self.history_table = nn.EmbeddingBag(arch.id_buckets, d, mode="mean", sparse=arch.sparse)
        _init_tables(self.user_table, self.history_table, dim=d)
        self.mlp = _mlp(2 * d + arch.user_dense, arch.hidden, arch.output_dim)

    def forward(
        self,
        user_ids: torch.Tensor,
        dense: torch.Tensor,
        history_values: torch.Tensor,
        history_offsets: torch.Tensor,
    ) -> torch.Tensor:
        """user_ids (batch,) int64 buckets, dense (batch, user_dense), history (values, offsets) -> embeddings."""
        parts = [self.user_table(user_ids), self.history_table(history_values, history_offsets)]
        if self.arch.user_dense:
            parts.append(dense)
        return self._finish(torch.cat(parts, dim=1))


class ItemTower(_Tower):
    """Post id + author id + item dense features -> (batch, output_dim)."""

    def __init__(self, arch: TwoTowerArch) -> None:
        super().__init__()
        self.arch = arch
        d = arch.embedding_dim
        self.item_table = nn.Embedding(arch.id_buckets, d, sparse=arch.sparse)
        self.author_table = nn.Embedding(arch.id_buckets, d, sparse=arch.sparse)
        _init_tables(self.item_table, self.author_table, dim=d)
        self.mlp = _mlp(2 * d + arch.item_dense, arch.hidden, arch.output_dim)

    def forward(self, item_ids: torch.Tensor, author_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """item_ids, author_ids (batch,) int64 buckets, dense (batch, item_dense) -> embeddings."""
        parts = [self.item_table(item_ids), self.author_table(author_ids)]
        if self.arch.item_dense:
            parts.append(dense)
        return self._finish(torch.cat(parts, dim=1))


class TwoTower(nn.Module):
    """The two towers; ``forward`` returns (user embeddings, item embeddings), row i of each a (user, item) pair."""

    def __init__(self, arch: TwoTowerArch) -> None:
        super().__init__()
        self.arch = arch
        self.user = UserTower(arch)
        self.item = ItemTower(arch)

    def user_embedding(
        self,
        user_ids: torch.Tensor,
        dense: torch.Tensor,
        history_values: torch.Tensor,
        history_offsets: torch.Tensor,
    ) -> torch.Tensor:
        return self.user(user_ids, dense, history_values, history_offsets)

    def item_embedding(self, item_ids: torch.Tensor, author_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.item(item_ids, author_ids, dense)

    def forward(
        self,
        user_ids: torch.Tensor,
        user_dense: torch.Tensor,
        history_values: torch.Tensor,
        history_offsets: torch.Tensor,
        item_ids: torch.Tensor,
        author_ids: torch.Tensor,
        item_dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.user_embedding(user_ids, user_dense, history_values, history_offsets),
            self.item_embedding(item_ids, author_ids, item_dense),
        )

    @staticmethod
    def score(user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """The retrieval score of aligned rows: their dot product, (batch,)."""
        return (user_emb * item_emb).sum(dim=-1)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Both towers' id tables (sparse gradients when ``arch.sparse``): for SparseAdam."""
        return [*self.user.embedding_parameters(), *self.item.embedding_parameters()]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Both MLPs: for Adam."""
        return [*self.user.dense_parameters(), *self.item.dense_parameters()]
