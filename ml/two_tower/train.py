"""Training the two towers: in-batch negatives with the log-Q correction, SparseAdam for the id tables.

Each batch holds (user, engaged post) pairs; every other row's post is a negative for a user. The logits are

    logits_ij = u_i . v_j / temperature - log q_j

where q_j is item j's probability of being in a batch, estimated from its frequency in the training data
(``features.item_log_q``). Popular items are in-batch negatives more often than their share of the catalogue; the
correction stops the model from learning to push them down for it (Yi et al., RecSys 2019, "Sampling-Bias-Corrected
Neural Modeling for Large Corpus Item Recommendations"). An accidental hit, the same post in two rows of a batch,
is not a negative for the other row: its logit is masked to -inf. The loss is the mean over rows of the softmax
cross-entropy with the row's own post as the target.

``train`` takes the training pairs as one in-memory ``TwoTowerBatch`` (shuffled and cut into batches every epoch),
a list of batches (replayed in order), or a function ``epoch -> batches`` (streaming, e.g. ``parquet_batches``).
The id tables get SparseAdam at ``embedding_learning_rate``, the MLPs Adam at ``learning_rate``. MLflow logging is
the caller's: ``TwoTowerEpoch.metrics()`` per epoch (``on_epoch``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from ml.ranker.data import Files, as_source, iter_tables, plan, shard_plan
from ml.ranker.train import default_threads, torch_threads
from ml.two_tower.features import (
    ItemCounts,
    TwoTowerBatch,
    TwoTowerColumns,
    batch_from_table,
    item_counts,
    item_log_q,
)
from ml.two_tower.model import TwoTower, TwoTowerArch

__all__ = [
    "ItemCounts",
    "TwoTowerBatch",
    "TwoTowerConfig",
    "TwoTowerEpoch",
    "TwoTowerTrainResult",
    "arch_for",
    "batch_from_table",
    "check_files",
    "in_batch_softmax_loss",
    "item_counts",
    "item_log_q",
    "parquet_batches",
    "parquet_item_counts",
    "train",
]

log = logging.getLogger(__name__)

TrainingData = TwoTowerBatch | Sequence[TwoTowerBatch] | Callable[[int], Iterable[TwoTowerBatch]]


@dataclass(frozen=True)
class TwoTowerConfig:
    """The two-tower settings (the project's pydantic settings wrap this)."""

    embedding_dim: int = 64
    output_dim: int = 128
    hidden: tuple[int, ...] = (256,)
    temperature: float = 0.05
    batch_size: int = 1024
    epochs: int = 1
    learning_rate: float = 1e-3
    embedding_learning_rate: float = 1e-2
    id_buckets: int = 1 << 20
    seed: int = 0
    normalize: bool = True  # L2-normalise both towers' outputs
    log_q_correction: bool = True  # subtract log q_j from the logits
    torch_threads: int = 0  # intra-op threads; 0 = the machine's share less one (ml.ranker.train.default_threads)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.batch_size < 2:
            raise ValueError(f"in-batch negatives need batch_size >= 2, got {self.batch_size}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")

    def to_dict(self) -> dict[str, Any]:
        """Flat, for ``mlflow.log_params``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def arch_for(cfg: TwoTowerConfig, *, user_dense: int = 0, item_dense: int = 0) -> TwoTowerArch:
    """The architecture the settings describe, for data with these many dense features per tower."""
    return TwoTowerArch(
        user_dense=user_dense,
        item_dense=item_dense,
        id_buckets=cfg.id_buckets,
        embedding_dim=cfg.embedding_dim,
        hidden=tuple(cfg.hidden),
        output_dim=cfg.output_dim,
        normalize=cfg.normalize,
        sparse=True,
    )


# --- the loss ---------------------------------------------------------------------------------------------------------
def in_batch_softmax_loss(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    log_q: torch.Tensor | None,
    item_ids: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Mean over rows i of -log softmax_j(u_i . v_j / temperature - log q_j) at j = i.

    ``log_q`` (batch,): log sampling probability of each row's item (None: no correction). ``item_ids`` (batch,):
    the rows' raw item ids; a column j != i with the same id as row i's item is masked out of row i's softmax
    (None: no masking).
    """
    n = user_emb.shape[0]
    if user_emb.ndim != 2 or item_emb.shape != user_emb.shape:
        raise ValueError(f"user and item embeddings must both be (batch, dim), got {user_emb.shape}, {item_emb.shape}")
    logits = user_emb @ item_emb.T / temperature
    if log_q is not None:
        if log_q.shape != (n,):
            raise ValueError(f"log_q has shape {tuple(log_q.shape)}, expected ({n},)")
        logits = logits - log_q.to(logits.dtype).unsqueeze(0)
    if item_ids is not None:
        if item_ids.shape != (n,):
            raise ValueError(f"item_ids has shape {tuple(item_ids.shape)}, expected ({n},)")
        hits = item_ids.unsqueeze(1) == item_ids.unsqueeze(0)
        hits.fill_diagonal_(False)
        logits = logits.masked_fill(hits, float("-inf"))
    return F.cross_entropy(logits, torch.arange(n, device=logits.device))


# --- data -------------------------------------------------------------------------------------------------------------
def check_files(files: Files, columns: TwoTowerColumns) -> None:
    """Every file's schema has the training columns (footers only); ``FeatureSchemaError`` names file and column."""
    for f in as_source(files).files:
        columns.validate(pq.read_schema(f), where=f)


def parquet_batches(
    files: Files,
    columns: TwoTowerColumns,
    *,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int = 0,
) -> Iterator[TwoTowerBatch]:
    """One epoch of training batches streamed from Parquet files (``ml.ranker.data``: row groups read one at a
    time, rows spread evenly over ``ceil(rows / batch_size)`` batches, seeded shuffling per (seed, epoch))."""
    src = as_source(files)
    check_files(src, columns)
    pieces = plan(src)
    sizes = shard_plan(pieces, 1, batch_size).batch_sizes(0)
    tables = iter_tables(
        src,
        [*columns.user_columns(), *columns.item_columns()],
        batch_sizes=sizes,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        epoch=epoch,
        pieces=pieces,
    )
    for t in tables:
        yield batch_from_table(t, columns)


def parquet_item_counts(files: Files, columns: TwoTowerColumns) -> ItemCounts:
    """The item id column's counts over every file (streamed, one column): the log-Q correction's input."""
    return item_counts(
        np.asarray(t.column(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        for t in iter_tables(files, [columns.item_id])
    )


def _epoch_batches(data: TrainingData, batch_size: int, seed: int, epoch: int) -> Iterable[TwoTowerBatch]:
    if isinstance(data, TwoTowerBatch):
        order = np.random.default_rng([seed, epoch]).permutation(data.rows)
        steps = max(1, -(-data.rows // batch_size))
        return (data.take(idx) for idx in np.array_split(order, steps))  # sizes differ by at most one row
    if callable(data):
        return data(epoch)
    return data


def _counts_for(data: TrainingData, given: ItemCounts | None) -> ItemCounts:
    if given is not None:
        return given
    if isinstance(data, TwoTowerBatch):
        return item_counts(data.item_ids)
    if callable(data):
        raise ValueError(
            "streamed training data needs item_counts for the log-Q correction "
            "(parquet_item_counts(files, columns)), or log_q_correction=False"
        )
    return item_counts(b.item_ids for b in data)


# --- the loop ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TwoTowerEpoch:
    """One epoch: the mean training loss per example and the speed."""

    epoch: int
    loss: float
    examples: int
    steps: int
    seconds: float
    examples_per_s: float

    def metrics(self) -> dict[str, float]:
        """Flat name -> value, e.g. for ``mlflow.log_metrics(stats.metrics(), step=stats.epoch)``."""
        return {"train_loss": self.loss, "examples_per_s": self.examples_per_s, "epoch_seconds": self.seconds}


@dataclass
class TwoTowerTrainResult:
    """A trained two-tower model and how the training went."""

    model: TwoTower
    arch: TwoTowerArch
    history: list[TwoTowerEpoch]
    seconds: float  # training epochs only
    examples: int  # over all epochs
    item_counts: ItemCounts | None  # what the log-Q correction used (None without it)

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("nan")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()


def _optimizers(model: TwoTower, cfg: TwoTowerConfig) -> list[torch.optim.Optimizer]:
    emb, dense = model.embedding_parameters(), model.dense_parameters()
    if not model.arch.sparse:
        return [
            torch.optim.Adam(
                [{"params": emb, "lr": cfg.embedding_learning_rate}, {"params": dense}], lr=cfg.learning_rate
            )
        ]
    return [torch.optim.SparseAdam(emb, lr=cfg.embedding_learning_rate), torch.optim.Adam(dense, lr=cfg.learning_rate)]


def _check_arch(arch: TwoTowerArch, cfg: TwoTowerConfig) -> None:
    wanted = arch_for(cfg, user_dense=arch.user_dense, item_dense=arch.item_dense)
    differ = [
        f"{k}: arch {getattr(arch, k)} vs settings {getattr(wanted, k)}"
        for k in ("id_buckets", "embedding_dim", "hidden", "output_dim", "normalize")
        if getattr(arch, k) != getattr(wanted, k)
    ]
    if differ:
        raise ValueError("the architecture does not match the settings (build it with arch_for): " + "; ".join(differ))


def _check_batch(batch: TwoTowerBatch, arch: TwoTowerArch) -> None:
    u, i = batch.user_dense.shape[1], batch.item_dense.shape[1]
    if (u, i) != (arch.user_dense, arch.item_dense):
        raise ValueError(
            f"the batch has {u} user and {i} item dense feature(s); the architecture expects "
            f"{arch.user_dense} and {arch.item_dense}"
        )


def _tensors(batch: TwoTowerBatch, buckets: int) -> list[torch.Tensor]:
    arrays = (*batch.users.model_inputs(buckets), *batch.items.model_inputs(buckets))
    return [torch.from_numpy(a) for a in arrays]


def train(
    data: TrainingData,
    arch: TwoTowerArch,
    cfg: TwoTowerConfig,
    *,
    item_counts: ItemCounts | None = None,
    on_epoch: Callable[[TwoTowerEpoch], None] | None = None,
    on_steps: Callable[[int, float], None] | None = None,
    steps_per_report: int = 100,
) -> TwoTowerTrainResult:
    """Train a two-tower model in this process.

    ``data``: one ``TwoTowerBatch`` holding every training pair (shuffled per epoch with ``cfg.seed``, cut into
    ``ceil(rows / batch_size)`` batches), a list of batches (replayed as given each epoch), or ``epoch -> batches``
    (e.g. ``lambda e: parquet_batches(files, columns, batch_size=cfg.batch_size, seed=cfg.seed, epoch=e)``).
    ``arch`` must agree with ``cfg`` on the shape (``arch_for``) and with the data on the dense feature counts.
    ``item_counts``: the training data's item frequencies for the log-Q correction; counted from in-memory data
    when omitted, required for streamed data (``parquet_item_counts``).
    ``on_steps(step, mean_loss)``: called every ``steps_per_report`` steps (counted over all epochs) with the mean
    loss per example of those steps: the training curve.
    """
    if steps_per_report < 1:
        raise ValueError(f"steps_per_report must be at least 1, got {steps_per_report}")
    _check_arch(arch, cfg)
    counts = _counts_for(data, item_counts) if cfg.log_q_correction else None
    with torch_threads(cfg.torch_threads or default_threads(1)):
        torch.manual_seed(cfg.seed)
        model = TwoTower(arch)
        optimizers = _optimizers(model, cfg)
        history: list[TwoTowerEpoch] = []
        total_seconds, total_examples, global_step = 0.0, 0, 0
        window_loss, window_rows = 0.0, 0
        for epoch in range(cfg.epochs):
            model.train()
            loss_sum, rows, steps, started = 0.0, 0, 0, time.perf_counter()
            for batch in _epoch_batches(data, cfg.batch_size, cfg.seed, epoch):
                if batch.rows < 2:
                    continue  # no negatives: nothing to learn
                _check_batch(batch, arch)
                u, v = model(*_tensors(batch, arch.id_buckets))
                log_q = torch.from_numpy(item_log_q(batch.item_ids, counts)) if counts is not None else None
                loss = in_batch_softmax_loss(u, v, log_q, torch.from_numpy(batch.item_ids), cfg.temperature)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the training loss is {loss.item()} at epoch {epoch} step {steps}")
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in optimizers:
                    opt.step()
                batch_loss = float(loss.detach()) * batch.rows
                loss_sum += batch_loss
                rows += batch.rows
                steps += 1
                global_step += 1
                window_loss, window_rows = window_loss + batch_loss, window_rows + batch.rows
                if on_steps is not None and global_step % steps_per_report == 0:
                    on_steps(global_step, window_loss / window_rows)
                    window_loss, window_rows = 0.0, 0
            if rows == 0:
                raise ValueError(f"epoch {epoch} had no batch of two or more rows to train on")
            seconds = time.perf_counter() - started
            stats = TwoTowerEpoch(
                epoch=epoch,
                loss=loss_sum / rows,
                examples=rows,
                steps=steps,
                seconds=seconds,
                examples_per_s=rows / seconds if seconds > 0 else float("nan"),
            )
            log.info("epoch %d: loss %.4f, %d examples, %.0f examples/s", epoch, stats.loss, rows, stats.examples_per_s)
            history.append(stats)
            total_seconds += seconds
            total_examples += rows
            if on_epoch is not None:
                on_epoch(stats)
    return TwoTowerTrainResult(model.eval(), arch, history, total_seconds, total_examples, counts)
