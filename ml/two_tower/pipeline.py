"""The two-tower's weekly run and its index build, each one MLflow run in experiment ``two_tower.experiment``.

``train_weekly``: train on the examples' Parquet files, evaluate on the time holdout (recall@K and NDCG@K of exact
search over the model's embeddings, of the chosen ANN index, and of the popularity baseline; the champion on the
same holdout), sweep the index settings on the holdout's item embeddings (the recall-vs-queries/s curve), log the
model as a pyfunc with a signature, register it, and move ``@champion`` only when recall@gate_k beats the
champion's by more than ``gate_margin``.

``build_index``: the chosen index for a model version over the live posts' embeddings, checked against exact search
on a sample of user queries (re-swept when the recall floor is missed), saved under the state folder and logged as
an artifact of an ``index-<batch>`` run tagged with the model version.

Spark is not used here: the caller (``jobs/two_tower_examples``, ``jobs/two_tower_embeddings``) passes files and
Arrow tables.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss  # noqa: F401  (before torch)
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from darkroom.tracking import tracking_uri, use_experiment
from ml import registry as R
from ml.two_tower import index as X
from ml.two_tower.evaluate import exact_top_k, ndcg_at_k, popularity_baseline, recall_at_k
from ml.two_tower.features import ItemCounts, TwoTowerColumns
from ml.two_tower.inference import TwoTowerEncoder, validate_embeddings
from ml.two_tower.train import TwoTowerConfig, arch_for, parquet_batches, parquet_item_counts, train

if TYPE_CHECKING:
    from darkroom.settings import DarkroomSettings, TwoTowerSettings

log = logging.getLogger(__name__)

USER_PREFIXES = ("viewer__",)
ITEM_PREFIXES = ("author__", "post__")
MODEL_NAME_IN_RUN = "two_tower"
PIP_REQUIREMENTS = ["torch==2.13.0", "faiss-cpu==1.15.1", "numpy", "pandas<3", "pyarrow"]
INDEX_SPEC_TAG = "index_spec"
SHUFFLE_BUFFER_ROWS = 65_536


class TwoTowerRunError(RuntimeError):
    """The run cannot go on; the message says which input and why."""


def config_from(cfg: TwoTowerSettings) -> TwoTowerConfig:
    return TwoTowerConfig(
        embedding_dim=cfg.embedding_dim,
        output_dim=cfg.output_dim,
        hidden=tuple(cfg.hidden),
        temperature=cfg.temperature,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        embedding_learning_rate=cfg.embedding_learning_rate,
        id_buckets=cfg.id_buckets,
        seed=cfg.seed,
        log_q_correction=cfg.log_q_correction,
        torch_threads=cfg.torch_threads,
    )


def columns_from_schema(schema: pa.Schema) -> TwoTowerColumns:
    """The towers' columns: user dense = ``viewer__*``, item dense = ``author__*`` and ``post__*``, in file order."""
    names = schema.names
    return TwoTowerColumns(
        user_dense=tuple(n for n in names if n.startswith(USER_PREFIXES)),
        item_dense=tuple(n for n in names if n.startswith(ITEM_PREFIXES)),
    )


@dataclass
class RetrievalHoldout:
    """The time holdout as the evaluation reads it (Arrow, one row per user / per item)."""

    start: datetime
    end: datetime
    queries: pa.Table  # user_id, history_post_ids, user dense: as of the holdout's start
    relevant: list[set[int]]  # per query row: the posts engaged in the holdout
    exclude: list[set[int]]  # per query row: own posts and the posts already in the history
    catalogue: pa.Table  # post_id, author_id, item dense: the posts the model may retrieve

    def __post_init__(self) -> None:
        n = self.queries.num_rows
        if not (len(self.relevant) == len(self.exclude) == n):
            raise ValueError(
                f"holdout: {n} queries, {len(self.relevant)} relevant and {len(self.exclude)} exclude sets"
            )
        if n == 0 or self.catalogue.num_rows == 0:
            raise TwoTowerRunError(f"holdout: {n} queries and {self.catalogue.num_rows} catalogue items; need both")


# --- evaluation -------------------------------------------------------------------------------------------------------
def retrieval_metrics(retrieved: np.ndarray, relevant: Sequence[set], ks: Sequence[int]) -> dict[str, float]:
    return recall_at_k(retrieved, relevant, ks).metrics("recall") | ndcg_at_k(retrieved, relevant, ks).metrics("ndcg")


@dataclass
class Embedded:
    """A model's embeddings of the holdout: users (query rows) and items (catalogue rows)."""

    users: np.ndarray
    items: np.ndarray
    item_ids: np.ndarray


def embed_holdout(encoder: TwoTowerEncoder, holdout: RetrievalHoldout) -> Embedded:
    dim = encoder.arch.output_dim
    user_ids = np.asarray(holdout.queries.column(encoder.columns.user_id).to_numpy(), dtype=np.int64)
    item_ids = np.asarray(holdout.catalogue.column(encoder.columns.item_id).to_numpy(), dtype=np.int64)
    users = validate_embeddings(user_ids, encoder.encode_users(holdout.queries), dim, "holdout users")
    items = validate_embeddings(item_ids, encoder.encode_items(holdout.catalogue), dim, "holdout catalogue")
    return Embedded(users, items, item_ids)


def evaluate_exact(emb: Embedded, holdout: RetrievalHoldout, ks: Sequence[int]) -> dict[str, float]:
    top = exact_top_k(emb.users, emb.items, emb.item_ids, max(ks), holdout.exclude)
    return retrieval_metrics(top.ids, holdout.relevant, ks)


def evaluate_index(emb: Embedded, holdout: RetrievalHoldout, ks: Sequence[int], spec: X.IndexSpec) -> dict[str, float]:
    index = X.build_index(emb.items, spec, emb.item_ids)
    top = X.search_excluding(index, emb.users, max(ks), holdout.exclude)
    return retrieval_metrics(top.ids, holdout.relevant, ks)


def evaluate_popularity(counts: ItemCounts, holdout: RetrievalHoldout, ks: Sequence[int]) -> dict[str, float]:
    top = popularity_baseline(counts, max(ks), exclude=holdout.exclude)
    return retrieval_metrics(top, holdout.relevant, ks)


def _query_sample(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(vectors) <= n:
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), n, replace=False))]


def index_sweep(
    items: np.ndarray, item_ids: np.ndarray, queries: np.ndarray, cfg: TwoTowerSettings
) -> tuple[list[X.SweepPoint], X.SweepPoint]:
    """The default specs for this many items, measured on one thread; the fastest reaching the recall floor."""
    k = min(cfg.index_k, len(items))
    points = X.sweep(items, _query_sample(queries, cfg.index_queries, cfg.seed), k=k, item_ids=item_ids, threads=1)
    return points, X.choose(points, cfg.index_min_recall)


# --- reports ----------------------------------------------------------------------------------------------------------
def sweep_png(points: Sequence[X.SweepPoint], chosen: X.SweepPoint, floor: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker in (("flat", "s"), ("ivf_flat", "o"), ("hnsw", "^")):
        pts = [p for p in points if p.spec.kind == kind]
        if pts:
            ax.plot([p.recall for p in pts], [p.queries_per_s for p in pts], marker=marker, label=kind)
    ax.scatter([chosen.recall], [chosen.queries_per_s], s=160, facecolors="none", edgecolors="red", label="chosen")
    ax.axvline(floor, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{chosen.k} against exact search")
    ax.set_ylabel("queries/s (1 thread)")
    ax.set_title(f"index sweep: {chosen.spec.label()}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sweep_rows(points: Sequence[X.SweepPoint]) -> list[dict[str, Any]]:
    return [{"spec": p.spec.label(), **p.spec.to_dict(), **p.metrics()} for p in points]


def curve_png(steps: list[tuple[int, float]], epochs: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot([s for s, _ in steps], [v for _, v in steps], label="loss (mean of the last steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("in-batch softmax loss")
    ax.set_title(f"two-tower training; epoch losses {', '.join(f'{e:.3f}' for e in epochs)}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quality_frame(quality: dict[str, dict[str, float]]):
    """Rows = retriever, columns = recall_at_k / ndcg_at_k."""
    import pandas as pd

    return pd.DataFrame(quality).T


# --- the pyfunc -------------------------------------------------------------------------------------------------------
try:
    import mlflow.pyfunc as _pyfunc

    _PythonModel = _pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    _PythonModel = object


class TwoTowerPyfunc(_PythonModel):
    """``models:/two_tower@...`` as a pyfunc: user rows (``params={"tower": "user"}``, the default) or item rows
    (``"item"``) in, a float32 (rows, output_dim) array of embeddings out."""

    def load_context(self, context) -> None:
        self.encoder = TwoTowerEncoder.load(context.artifacts["two_tower"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        tower = (params or {}).get("tower", "user")
        table = pa.Table.from_pandas(model_input, preserve_index=False)
        if tower == "user":
            return self.encoder.encode_users(table)
        if tower == "item":
            return self.encoder.encode_items(table)
        raise ValueError(f"params tower must be 'user' or 'item', got {tower!r}")


def load_encoder(model_uri: str) -> TwoTowerEncoder:
    """The encoder of a logged or registered model (``models:/two_tower@champion``, ``models:/two_tower/3``)."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().encoder


def _example(table: pa.Table, columns: Sequence[str]):
    """Five rows, dense values as float64 (a null-free, stable schema for the signature)."""
    frame = table.select(list(columns)).slice(0, 5).to_pandas()
    for c in frame.columns:
        if c not in ("user_id", "post_id", "author_id", "history_post_ids"):
            frame[c] = frame[c].astype("float64")
    frame["history_post_ids"] = frame["history_post_ids"].map(lambda v: [int(x) for x in v])
    return frame


def _log_model(encoder: TwoTowerEncoder, holdout: RetrievalHoldout, name: str, folder: Path):
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    example = _example(holdout.queries, encoder.columns.user_columns())
    out = encoder.encode_users(pa.Table.from_pandas(example, preserve_index=False))
    signature = infer_signature(example, out, params={"tower": "user"})
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN,
        python_model=TwoTowerPyfunc(),
        artifacts={"two_tower": str(encoder.save(folder / "two_tower"))},
        signature=signature,
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=name,
    )


# --- the weekly run ---------------------------------------------------------------------------------------------------
@dataclass
class TwoTowerRunResult:
    run_id: str
    version: str
    promoted: bool
    reason: str
    champion_version: str | None
    quality: dict[str, dict[str, float]]  # retriever -> metric -> value
    sweep: list[dict[str, Any]]
    chosen_index: dict[str, Any]
    train_rows: int
    holdout_users: int
    catalogue_items: int
    examples_per_s: float
    seconds: float
    tags: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What a DAG task returns (XCom)."""
        return {
            "run_id": self.run_id,
            "version": self.version,
            "promoted": self.promoted,
            "reason": self.reason,
            "champion": self.champion_version,
        }


def gate(challenger: float, champion: float | None, *, k: int, margin: float) -> tuple[bool, str]:
    """Promote when there is no champion, or recall@k beats the champion's on the same holdout by more than
    ``margin``; the reason says which."""
    if not np.isfinite(challenger):
        return False, f"recall@{k} is {challenger}: nothing to compare"
    if champion is None:
        return True, f"no champion yet (recall@{k} {challenger:.4f})"
    gain = challenger - champion
    if gain > margin:
        return True, f"recall@{k} {challenger:.4f} beats the champion's {champion:.4f} by {gain:.4f} > {margin}"
    return False, f"recall@{k} {challenger:.4f} vs the champion's {champion:.4f}: gain {gain:.4f} <= margin {margin}"


def train_weekly(
    settings: DarkroomSettings,
    as_of: datetime,
    *,
    train_files: Sequence[str],
    holdout: RetrievalHoldout,
    tags: dict[str, str] | None = None,
    progress: Callable[[str], None] = print,
) -> TwoTowerRunResult:
    """Train, evaluate, sweep, log, register and gate (see the module docstring); one MLflow run."""
    import mlflow

    t0 = time.perf_counter()
    cfg = settings.two_tower
    ks = sorted(set(cfg.eval_ks))
    if not train_files:
        raise TwoTowerRunError("two-tower: no training files (the examples window is empty)")
    columns = columns_from_schema(pq.read_schema(train_files[0]))
    tcfg = config_from(cfg)
    progress(f"two-tower: counting items over {len(train_files)} file(s) for the log-Q correction")
    counts = parquet_item_counts(train_files, columns)
    arch = arch_for(tcfg, user_dense=len(columns.user_dense), item_dense=len(columns.item_dense))
    use_experiment(settings, cfg.experiment)
    c = R.client(tracking_uri(settings))
    champion_before = R.alias_version(c, cfg.registered_model, R.CHAMPION)
    run_tags = {
        "kind": "weekly",
        "as_of": as_of.isoformat(),
        "holdout_window": f"{holdout.start.isoformat()}/{holdout.end.isoformat()}",
        "champion_before": champion_before or "",
        **(tags or {}),
    }

    with mlflow.start_run(run_name=f"weekly-{as_of:%Y%m%dT%H%MZ}") as run, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mlflow.log_params(
            {f"two_tower.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in cfg.model_dump().items()}
        )
        mlflow.log_params({"user_dense": len(columns.user_dense), "item_dense": len(columns.item_dense)})
        mlflow.set_tags(run_tags)
        steps: list[tuple[int, float]] = []

        def on_steps(step: int, loss: float) -> None:
            steps.append((step, loss))
            mlflow.log_metric("train_loss_window", loss, step=step)
            if len(steps) % 10 == 0:  # about 5 lines an epoch
                progress(f"two-tower: step {step:,}, loss {loss:.4f}")

        def on_epoch(e) -> None:
            mlflow.log_metrics(e.metrics(), step=e.epoch)
            progress(
                f"two-tower: epoch {e.epoch}: loss {e.loss:.4f}, {e.examples:,} pairs in {e.seconds:.0f}s "
                f"({e.examples_per_s:,.0f}/s)"
            )

        progress(f"two-tower: training on {counts.total:,} pairs, {tcfg.epochs} epoch(s)")
        result = train(
            lambda epoch: parquet_batches(
                train_files,
                columns,
                batch_size=tcfg.batch_size,
                seed=tcfg.seed,
                epoch=epoch,
                shuffle_buffer=SHUFFLE_BUFFER_ROWS,
            ),
            arch,
            tcfg,
            item_counts=counts,
            on_epoch=on_epoch,
            on_steps=on_steps,
            steps_per_report=max(1, counts.total // tcfg.batch_size // 50),  # about 50 points an epoch
        )
        encoder = TwoTowerEncoder(result.model, arch, columns)

        progress(
            f"two-tower: evaluating on {holdout.queries.num_rows:,} holdout users x "
            f"{holdout.catalogue.num_rows:,} items"
        )
        emb = embed_holdout(encoder, holdout)
        quality = {"model_exact": evaluate_exact(emb, holdout, ks)}
        points, chosen = index_sweep(emb.items, emb.item_ids, emb.users, cfg)
        quality["model_index"] = evaluate_index(emb, holdout, ks, chosen.spec)
        quality["popularity"] = evaluate_popularity(counts, holdout, ks)
        if champion_before is not None:
            champion = load_encoder(f"models:/{cfg.registered_model}/{champion_before}")
            quality["champion_exact"] = evaluate_exact(embed_holdout(champion, holdout), holdout, ks)
        for name, metrics in quality.items():
            mlflow.log_metrics({f"holdout_{name}_{k}": v for k, v in metrics.items()})
        for i, p in enumerate(points):
            mlflow.log_metrics({"sweep_recall": p.recall, "sweep_queries_per_s": p.queries_per_s}, step=i)
        mlflow.log_metrics({f"index_{k}": v for k, v in chosen.metrics().items()})

        key = f"recall_at_{cfg.gate_k}"
        champion_recall = quality["champion_exact"][key] if "champion_exact" in quality else None
        promote, reason = gate(quality["model_exact"][key], champion_recall, k=cfg.gate_k, margin=cfg.gate_margin)
        info = _log_model(encoder, holdout, cfg.registered_model, folder)
        version = str(info.registered_model_version)
        R.mark_challenger(c, cfg.registered_model, version)
        version_tags = run_tags | {
            "run_id": run.info.run_id,
            INDEX_SPEC_TAG: json.dumps(chosen.spec.to_dict()),
            f"holdout_{key}": f"{quality['model_exact'][key]:.6f}",
        }
        for k, v in version_tags.items():
            c.set_model_version_tag(cfg.registered_model, version, k, v)
        if promote:
            R.promote(c, cfg.registered_model, version, reason=reason)
        champion_after = R.alias_version(c, cfg.registered_model, R.CHAMPION)
        mlflow.set_tags({"gate_promoted": str(promote).lower(), "gate_reason": reason})
        progress(f"two-tower: version {version} registered; {reason}")

        table = quality_frame(quality)
        table.to_csv(folder / "holdout_quality.csv")
        (folder / "holdout_quality.html").write_text(
            f"<h2>two-tower holdout {holdout.start:%Y-%m-%d} .. {holdout.end:%Y-%m-%d}</h2>"
            f"<p>{holdout.queries.num_rows:,} users, {holdout.catalogue.num_rows:,} items; {reason}</p>"
            + table.to_html(float_format="%.4f")
        )
        sweep = _sweep_rows(points)
        (folder / "index_sweep.json").write_text(json.dumps({"points": sweep, "chosen": chosen.spec.label()}, indent=1))
        sweep_png(points, chosen, cfg.index_min_recall, folder / "index_sweep.png")
        curve_png(steps, [e.loss for e in result.history], folder / "training_curve.png")
        (folder / "gate.json").write_text(json.dumps({"promoted": promote, "reason": reason}, indent=1))
        for name in (
            "holdout_quality.csv",
            "holdout_quality.html",
            "index_sweep.json",
            "index_sweep.png",
            "training_curve.png",
            "gate.json",
        ):
            mlflow.log_artifact(str(folder / name))
        return TwoTowerRunResult(
            run_id=run.info.run_id,
            version=version,
            promoted=promote,
            reason=reason,
            champion_version=champion_after,
            quality=quality,
            sweep=sweep,
            chosen_index={"spec": chosen.spec.label(), **chosen.metrics()},
            train_rows=result.history[0].examples,
            holdout_users=holdout.queries.num_rows,
            catalogue_items=holdout.catalogue.num_rows,
            examples_per_s=result.examples_per_s,
            seconds=time.perf_counter() - t0,
            tags=version_tags,
        )


# --- the index --------------------------------------------------------------------------------------------------------
@dataclass
class IndexBuild:
    path: Path
    model_version: str
    spec: dict[str, Any]
    items: int
    recall: float
    queries_per_s: float
    build_seconds: float
    run_id: str
    reswept: bool


def index_path(settings: DarkroomSettings, batch_id: str) -> Path:
    return settings.state_dir / "two_tower" / "index" / batch_id / "items.faiss"


def build_index(
    settings: DarkroomSettings,
    *,
    model_version: str,
    item_ids: np.ndarray,
    item_vecs: np.ndarray,
    query_vecs: np.ndarray,
    batch_id: str,
    progress: Callable[[str], None] = print,
) -> IndexBuild:
    """The model version's chosen index over these items (see the module docstring); one MLflow run."""
    import mlflow

    cfg = settings.two_tower
    items = validate_embeddings(item_ids, item_vecs, item_vecs.shape[1] if item_vecs.ndim == 2 else -1, "items")
    c = R.client(tracking_uri(settings))
    tag = c.get_model_version(cfg.registered_model, model_version).tags.get(INDEX_SPEC_TAG)
    spec = X.IndexSpec.from_dict(json.loads(tag)) if tag else X.IndexSpec("flat")
    if spec.kind == "ivf_flat" and spec.nlist > len(items):
        spec = X.IndexSpec("flat")
    queries = _query_sample(query_vecs, cfg.index_queries, cfg.seed)
    k = min(cfg.index_k, len(items))
    progress(f"two-tower index: {spec.label()} over {len(items):,} items (model version {model_version})")
    [point] = X.sweep(items, queries, k=k, specs=[spec], item_ids=item_ids, threads=1)
    points, reswept = [point], False
    if point.recall < cfg.index_min_recall:
        progress(f"two-tower index: recall@{k} {point.recall:.3f} < {cfg.index_min_recall}; sweeping again")
        points, point = index_sweep(items, item_ids, query_vecs, cfg)
        spec, reswept = point.spec, True
    started = time.perf_counter()
    index = X.build_index(items, spec, item_ids)
    build_seconds = time.perf_counter() - started
    path = X.save_index(index, index_path(settings, batch_id))
    (path.parent / "meta.json").write_text(
        json.dumps({"model_version": model_version, "spec": spec.to_dict(), "items": len(items), "batch_id": batch_id})
    )
    use_experiment(settings, cfg.experiment)
    with mlflow.start_run(run_name=f"index-{batch_id}") as run:
        mlflow.set_tags({"kind": "index", "model_version": model_version, "batch_id": batch_id})
        mlflow.log_params({"index_spec": spec.label(), "items": len(items), "reswept": reswept})
        mlflow.log_metrics({f"recall_at_{k}": point.recall, "queries_per_s": point.queries_per_s})
        mlflow.log_metric("build_seconds", build_seconds)
        for i, p in enumerate(points):
            mlflow.log_metrics({"sweep_recall": p.recall, "sweep_queries_per_s": p.queries_per_s}, step=i)
        mlflow.log_artifact(str(path), artifact_path="index")
        mlflow.log_artifact(str(path.parent / "meta.json"), artifact_path="index")
    c.set_model_version_tag(cfg.registered_model, model_version, "index_run_id", run.info.run_id)
    progress(f"two-tower index: recall@{k} {point.recall:.3f} at {point.queries_per_s:,.0f} queries/s; saved to {path}")
    return IndexBuild(
        path=path,
        model_version=model_version,
        spec=spec.to_dict(),
        items=len(items),
        recall=point.recall,
        queries_per_s=point.queries_per_s,
        build_seconds=build_seconds,
        run_id=run.info.run_id,
        reswept=reswept,
    )
