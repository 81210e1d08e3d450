"""Training the ranker: one process (``train``) or several through pyspark's TorchDistributor (``train_distributed``).

Both paths run the same loop (``_fit``): the loss is the sum over the seven heads of the mean binary cross-entropy;
the embedding tables get sparse gradients and SparseAdam (or Adagrad), the dense parameters Adam; with
``embedding_optimizer = "dense_adam"`` everything is dense Adam (the slow reference). Distributed training wraps
the model in DistributedDataParallel on the gloo backend, which all-reduces sparse gradients too (gloo implements
sparse all-reduce; NCCL does not), so both paths use the same optimisers. Each rank reads its own contiguous
1/world_size of the rows (``data.py``); every rank takes the same number of steps.

``train`` returns a ``TrainResult`` with the model, its architecture and feature spec (both needed to rebuild it),
the per-epoch history and the fingerprint of the weights it started from; ``on_epoch`` is called after every
epoch with that epoch's ``EpochStats`` (on rank 0 only when distributed). MLflow logging is the caller's.

Fine-tuning: ``train(..., init_state=champion_state, cfg=finetune_settings(cfg))`` on the last hour's rows
(``data.last_window``) with the champion's feature spec; ``TrainResult.initial_fingerprint`` equals
``state_fingerprint(champion_state)`` when training started from those weights.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from ml.metrics import head_metrics
from ml.ranker.data import (
    Files,
    ParquetSource,
    as_source,
    check_files,
    fit_dense_stats,
    iter_batches,
    plan,
    read_columns,
    shard_plan,
)
from ml.ranker.features import HEADS, FeatureSpec
from ml.ranker.model import (
    MultiTaskRanker,
    RankerArch,
    load_weights,
    parameter_count,
    state_fingerprint,
    strip_ddp_prefix,
)

if TYPE_CHECKING:
    from darkroom.settings import RankerSettings

log = logging.getLogger(__name__)

PREDICT_BATCH = 8192


@dataclass(frozen=True)
class EpochStats:
    """One epoch over every rank: the mean training loss per example (summed over heads), per head, and speed."""

    epoch: int
    loss: float
    head_loss: dict[str, float]
    examples: int
    steps: int
    seconds: float
    data_seconds: float  # of which waiting for batches (rank 0)
    examples_per_s: float
    holdout: dict[str, dict[str, float]] | None = None  # head -> auc, ne, calibration, log_loss (with eval_files)

    def metrics(self) -> dict[str, float]:
        """Flat name -> value, e.g. for ``mlflow.log_metrics(stats.metrics(), step=stats.epoch)``."""
        out = {"train_loss": self.loss, "examples_per_s": self.examples_per_s, "epoch_seconds": self.seconds}
        out |= {f"train_loss_{h}": v for h, v in self.head_loss.items()}
        for h, ms in (self.holdout or {}).items():
            out |= {f"holdout_{m}_{h}": v for m, v in ms.items() if np.isfinite(v)}
        return out


@dataclass
class TrainResult:
    """A trained ranker and how the training went."""

    model: MultiTaskRanker
    spec: FeatureSpec
    arch: RankerArch
    history: list[EpochStats]
    seconds: float  # training epochs only (holdout evaluation excluded)
    examples: int  # over all epochs and ranks
    world_size: int
    initial_fingerprint: str  # state_fingerprint of the weights before the first step
    holdout_probs: dict[str, np.ndarray] | None = None  # head -> the last epoch's holdout predictions (eval_files)
    parameters: int = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = parameter_count(self.model)

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("nan")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def config(self) -> dict[str, Any]:
        """What rebuilds the model besides its weights: ``build_model(RankerArch.from_dict(c["arch"]))``."""
        return {"arch": self.arch.to_dict(), "spec": self.spec.to_dict(), "heads": list(HEADS)}


# --- set-up -----------------------------------------------------------------------------------------------------------
def prepare_spec(files: Files, cfg: RankerSettings, *, exclude: Sequence[str] = ()) -> FeatureSpec:
    """Infer the spec from the first file's schema, check every file against it, fit the dense statistics.

    Raises ``FeatureSchemaError`` naming the file and column when a column is missing or of the wrong type.
    """
    src = as_source(files)
    spec = FeatureSpec.from_schema(
        pq.read_schema(src.files[0]),
        id_columns=cfg.id_columns,
        id_buckets=cfg.id_buckets,
        multi_buckets=cfg.multi_buckets,
        exclude=exclude,
    )
    return fit_dense_stats(src, spec)


def arch_for(spec: FeatureSpec, cfg: RankerSettings) -> RankerArch:
    return RankerArch(
        id_buckets=(spec.id_buckets,) * len(spec.id_columns),
        multi_buckets=(spec.multi_buckets,) * len(spec.multi_columns),
        dense_inputs=spec.dense_inputs,
        embedding_dim=cfg.embedding_dim,
        dense_hidden=tuple(cfg.dense_hidden),
        num_experts=cfg.num_experts,
        expert_hidden=tuple(cfg.expert_hidden),
        tower_hidden=tuple(cfg.tower_hidden),
        num_tasks=len(HEADS),
        bag_mode=cfg.bag_mode,
        sparse=cfg.embedding_optimizer != "dense_adam",
    )


def build_model(arch: RankerArch, state: Mapping[str, torch.Tensor] | None = None) -> MultiTaskRanker:
    model = MultiTaskRanker(arch)
    if state is not None:
        load_weights(model, state)
    return model.eval()


def finetune_settings(cfg: RankerSettings) -> RankerSettings:
    """The settings of a fine-tune: both learning rates x ``finetune_lr_scale``, ``finetune_epochs`` epochs."""
    return cfg.model_copy(
        update={
            "learning_rate": cfg.learning_rate * cfg.finetune_lr_scale,
            "embedding_learning_rate": cfg.embedding_learning_rate * cfg.finetune_lr_scale,
            "epochs": cfg.finetune_epochs,
        }
    )


def _optimizers(model: MultiTaskRanker, cfg: RankerSettings) -> list[torch.optim.Optimizer]:
    emb, dense = model.embedding_parameters(), model.dense_parameters()
    if cfg.embedding_optimizer == "dense_adam":
        return [
            torch.optim.Adam(
                [{"params": emb, "lr": cfg.embedding_learning_rate}, {"params": dense}], lr=cfg.learning_rate
            )
        ]
    sparse: torch.optim.Optimizer = (
        torch.optim.SparseAdam(emb, lr=cfg.embedding_learning_rate)
        if cfg.embedding_optimizer == "sparse_adam"
        else torch.optim.Adagrad(emb, lr=cfg.embedding_learning_rate)
    )
    return [sparse, torch.optim.Adam(dense, lr=cfg.learning_rate)]


def default_threads(processes: int = 1) -> int:
    """Intra-op threads per training process: its share of the cores less one for the batch-reading thread.

    Oversubscribing hurts badly: on a busy 2-core machine two intra-op threads made a step 4x slower than one.
    """
    share = (os.cpu_count() or 1) // max(processes, 1)
    return max(1, share - 1)


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the loop shared by both paths ------------------------------------------------------------------------------------
def _fit(
    source: ParquetSource,
    spec: FeatureSpec,
    cfg: RankerSettings,
    arch: RankerArch,
    *,
    rank: int,
    world_size: int,
    init_state: Mapping[str, torch.Tensor] | None,
    eval_source: ParquetSource | None,
    on_epoch: Callable[[EpochStats], None] | None,
) -> tuple[MultiTaskRanker, list[EpochStats], str, float, int, dict[str, np.ndarray] | None]:
    """(model, history on rank 0, starting fingerprint, training seconds, examples over all ranks, the last epoch's
    holdout predictions on rank 0)."""
    distributed = world_size > 1
    torch.manual_seed(cfg.seed)
    model = MultiTaskRanker(arch)
    if init_state is not None:
        load_weights(model, init_state)
    fingerprint = state_fingerprint(model.state_dict())
    net: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)  # broadcasts rank 0's weights; all-reduces (sparse) gradients
    optimizers = _optimizers(model, cfg)
    pieces = plan(source)
    steps = shard_plan(pieces, world_size, cfg.batch_size).steps
    eval_labels = _labels(eval_source, spec) if eval_source is not None and rank == 0 else None
    history: list[EpochStats] = []
    total_seconds, total_examples = 0.0, 0
    holdout_probs: dict[str, np.ndarray] | None = None
    for epoch in range(cfg.epochs):
        net.train()
        head_sum = torch.zeros(len(HEADS), dtype=torch.float64)
        rows, waited, started = 0, 0.0, time.perf_counter()
        batches = iter_batches(
            source,
            spec,
            batch_size=cfg.batch_size,
            rank=rank,
            world_size=world_size,
            shuffle_buffer=cfg.shuffle_buffer_rows,
            seed=cfg.seed,
            epoch=epoch,
            pieces=pieces,
        )
        for step in range(steps):
            t = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - t
            logits = net(*batch.inputs)
            per_head = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none").mean(dim=0)
            loss = per_head.sum()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss is {loss.item()} at epoch {epoch} step {step}")
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            head_sum += per_head.detach().double() * batch.rows
            rows += batch.rows
        batches.close()
        seconds = time.perf_counter() - started
        totals = torch.cat([head_sum, torch.tensor([float(rows)], dtype=torch.float64)])
        if distributed:
            import torch.distributed as dist

            dist.all_reduce(totals)
            slowest = torch.tensor([seconds], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            seconds = float(slowest.item())
        examples = int(totals[-1].item())
        total_seconds += seconds
        total_examples += examples
        if rank != 0:
            continue
        head_loss = {h: float(v) / examples for h, v in zip(HEADS, totals[:-1].tolist(), strict=True)}
        holdout = None
        if eval_source is not None:
            holdout_probs = predict(model, eval_source, spec)
            holdout = {h: head_metrics(eval_labels[h], holdout_probs[h]) for h in HEADS}
        stats = EpochStats(
            epoch=epoch,
            loss=sum(head_loss.values()),
            head_loss=head_loss,
            examples=examples,
            steps=steps,
            seconds=seconds,
            data_seconds=waited,
            examples_per_s=examples / seconds if seconds > 0 else float("nan"),
            holdout=holdout,
        )
        log.info("epoch %d: loss %.4f, %d examples, %.0f examples/s", epoch, stats.loss, examples, stats.examples_per_s)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return model.eval(), history, fingerprint, total_seconds, total_examples, holdout_probs


def _labels(source: ParquetSource, spec: FeatureSpec) -> dict[str, np.ndarray]:
    t = read_columns(source, spec.label_columns)
    return {
        h: t.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        for h, c in zip(HEADS, spec.label_columns, strict=True)
    }


# --- entry points -----------------------------------------------------------------------------------------------------
def train(
    files: Files,
    spec: FeatureSpec,
    cfg: RankerSettings,
    *,
    init_state: Mapping[str, torch.Tensor] | None = None,
    eval_files: Files | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train the ranker in this process on ``files`` (a list of Parquet files or a windowed ``ParquetSource``).

    ``spec`` must be fitted (``prepare_spec``, or the champion's spec when fine-tuning); every file is checked
    against it before the first step. ``init_state`` starts from those weights instead of a seeded initialisation.
    ``eval_files``: per-epoch holdout metrics in ``EpochStats.holdout``.
    """
    source, eval_source = _checked(files, spec, eval_files)
    arch = arch_for(spec, cfg)
    with torch_threads(cfg.torch_threads or default_threads(1)):
        model, history, fingerprint, seconds, examples, holdout_probs = _fit(
            source,
            spec,
            cfg,
            arch,
            rank=0,
            world_size=1,
            init_state=init_state,
            eval_source=eval_source,
            on_epoch=on_epoch,
        )
    return TrainResult(model, spec, arch, history, seconds, examples, 1, fingerprint, holdout_probs)


def _checked(files: Files, spec: FeatureSpec, eval_files: Files | None) -> tuple[ParquetSource, ParquetSource | None]:
    if not spec.fitted:
        raise ValueError("the feature spec has no dense statistics: build it with prepare_spec(train files, cfg)")
    source = as_source(files)
    check_files(source, spec)
    eval_source = as_source(eval_files) if eval_files is not None else None
    if eval_source is not None:
        check_files(eval_source, spec)
    return source, eval_source


def _distributed_worker(
    source: ParquetSource,
    spec: FeatureSpec,
    cfg: RankerSettings,
    arch: RankerArch,
    init_state: Mapping[str, torch.Tensor] | None,
    eval_source: ParquetSource | None,
    on_epoch: Callable[[EpochStats], None] | None,
) -> dict[str, Any] | None:
    """One TorchDistributor process: gloo process group from torchrun's environment, the shared loop, rank 0 reports."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.set_num_threads(cfg.torch_threads or default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        model, history, fingerprint, seconds, examples, holdout_probs = _fit(
            source,
            spec,
            cfg,
            arch,
            rank=rank,
            world_size=world,
            init_state=init_state,
            eval_source=eval_source,
            on_epoch=on_epoch,
        )
        replicas: list[str | None] = [None] * world
        dist.all_gather_object(replicas, state_fingerprint(model.state_dict()))
        if len(set(replicas)) != 1:
            raise RuntimeError(f"the ranks' weights diverged after training: {replicas}")
        # TorchDistributor has every process write its return value to the same file, and the last one to finish
        # wins: so every rank returns the same thing (its weights, equal on every rank as just checked, and rank 0's
        # history and timings, broadcast).
        report: list[Any] = [
            {"history": history, "fingerprint": fingerprint, "seconds": seconds, "holdout_probs": holdout_probs}
            if rank == 0
            else None
        ]
        dist.broadcast_object_list(report, src=0)
        return {
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            **report[0],
            "examples": examples,
            "world_size": world,
        }
    finally:
        dist.destroy_process_group()


def train_distributed(
    files: Files,
    spec: FeatureSpec,
    cfg: RankerSettings,
    num_processes: int | None = None,
    *,
    init_state: Mapping[str, torch.Tensor] | None = None,
    eval_files: Files | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    local_mode: bool = True,
) -> TrainResult:
    """``train`` on ``num_processes`` processes (default ``cfg.num_processes``) through TorchDistributor.

    Needs an active Spark session. ``local_mode=True`` runs the processes on the driver's machine; ``False`` runs
    them as Spark tasks on the executors (the files must then be readable there). ``cfg.batch_size`` is per process.
    ``on_epoch`` runs in rank 0's process and must be picklable. Returns rank 0's model, after checking that every
    rank ended with the same weights (their fingerprints).
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    source, eval_source = _checked(files, spec, eval_files)
    n = num_processes or cfg.num_processes
    arch = arch_for(spec, cfg)
    out = TorchDistributor(num_processes=n, local_mode=local_mode, use_gpu=False).run(
        _distributed_worker, source, spec, cfg, arch, init_state, eval_source, on_epoch
    )
    if not out:
        raise RuntimeError("TorchDistributor returned nothing from rank 0")
    model = build_model(arch, strip_ddp_prefix(out["state"]))
    return TrainResult(
        model,
        spec,
        arch,
        out["history"],
        out["seconds"],
        out["examples"],
        out["world_size"],
        out["fingerprint"],
        out["holdout_probs"],
    )


@torch.no_grad()
def predict(
    model: MultiTaskRanker, files: Files, spec: FeatureSpec, *, batch_size: int = PREDICT_BATCH
) -> dict[str, np.ndarray]:
    """Head -> predicted probabilities for every row of ``files``, in file order (``data.read_columns``' order).

    Labels are not needed; every file is checked against the spec first.
    """
    source = as_source(files)
    check_files(source, spec, labels=False)
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        for batch in iter_batches(source, spec, batch_size=batch_size, labels=False):
            out.append(torch.sigmoid(model(*batch.inputs)).numpy().astype(np.float64))
    finally:
        model.train(was_training)
    probs = np.concatenate(out) if out else np.zeros((0, len(HEADS)))
    return {h: probs[:, j] for j, h in enumerate(HEADS)}
