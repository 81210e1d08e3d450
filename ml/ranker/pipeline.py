"""The ranker's training runs as the DAGs and the CLI start them: weekly retrain, hourly fine-tune.

One MLflow run per call, in experiment ``settings.ranker.experiment``:
- params: the whole ``settings.ranker`` (flattened), the kind, as_of and the windows;
- tags: the feature service and its version, the training set's Delta table and version (so the exact rows can
  be read again with time travel), the training and holdout windows, the champion a fine-tune started from;
- metrics: per epoch with ``step=`` (training loss per head, holdout AUC/NE/calibration per head), then the final
  per-head holdout figures, and the gate's numbers;
- artifacts: the per-head quality table (CSV and HTML), training curves and calibration plots (PNG), the gate's
  decision (JSON), and the model itself as a pyfunc with signature and input example.

Each run registers a model version and points ``@challenger`` at it. The gate (``ml.registry.decide``) compares it
with ``@champion`` on the same holdout, recomputed now for both; only a win moves ``@champion``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from darkroom.tables import utc
from darkroom.tracking import tracking_uri, use_experiment
from ml import registry as R
from ml.ranker.features import HEADS
from ml.ranker.model import state_fingerprint

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from darkroom.settings import DarkroomSettings
    from ml.ranker.data import ParquetSource
    from ml.ranker.inference import RankerScorer
    from ml.ranker.train import TrainResult

log = logging.getLogger(__name__)

Kind = Literal["weekly", "hourly"]
MODEL_NAME_IN_RUN = "ranker"
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "pandas<3", "pyarrow"]


class RankerRunError(RuntimeError):
    """A training run that cannot start or finish as asked (no champion to fine-tune, an empty window)."""


@dataclass
class RankerRunResult:
    kind: Kind
    run_id: str
    version: str
    decision: R.GateDecision
    champion_version: str | None  # after the gate
    quality: dict[str, dict[str, float]]  # model -> metric_head -> value
    training_set_version: int
    train_rows: int
    holdout_rows: int
    examples_per_s: float
    seconds: float

    def summary(self) -> dict[str, Any]:
        """What a DAG task returns (XCom): the run, the version, and the gate's decision."""
        return {
            "run_id": self.run_id,
            "version": self.version,
            "promoted": self.decision.promote,
            "reason": self.decision.reason,
            "champion": self.champion_version,
        }


@contextmanager
def training_lock(settings: DarkroomSettings):
    """One ranker training at a time on this state folder, whoever starts it (DAG, CLI): an exclusive file lock,
    waited for. The Airflow pool ``ranker_training`` does the same between task slots; this also covers the CLI."""
    import fcntl

    path = settings.state_dir / "locks" / "ranker_training.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _epoch_line(stats) -> str:
    like = (stats.holdout or {}).get("like", {})
    holdout = f", holdout like AUC {like['auc']:.4f} NE {like['ne']:.4f}" if like else ""
    return (
        f"ranker: epoch {stats.epoch}: loss {stats.loss:.4f}, {stats.examples:,} examples in {stats.seconds:.0f}s "
        f"({stats.examples_per_s:,.0f}/s){holdout}"
    )


def _flat_params(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat_params(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else value
    return out


def _service(settings: DarkroomSettings):
    from feature_store.definitions import get_service

    return get_service(settings.ranker.feature_service)


# --- reports ----------------------------------------------------------------------------------------------------------
def _training_curves_png(result: TrainResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [s.epoch for s in result.history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for h in HEADS:
        axes[0].plot(epochs, [s.head_loss.get(h, np.nan) for s in result.history], marker="o", label=h)
    axes[0].set(title="training loss per head", xlabel="epoch", ylabel="BCE per example")
    axes[0].legend(fontsize=7)
    for h in HEADS:
        ne = [(s.holdout or {}).get(h, {}).get("ne", np.nan) for s in result.history]
        axes[1].plot(epochs, ne, marker="o", label=h)
    axes[1].set(title="holdout normalized entropy per head", xlabel="epoch", ylabel="NE (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _calibration_png(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], path: Path) -> Path:
    """A reliability diagram per head: mean predicted against observed rate, in deciles of the prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(14, 6.5))
    for ax, h in zip(axes.flat, HEADS, strict=False):
        p, y = probs[h], labels[h]
        edges = np.unique(np.quantile(p, np.linspace(0, 1, 11)))
        bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
        xs = [p[bins == b].mean() for b in np.unique(bins)]
        ys = [y[bins == b].mean() for b in np.unique(bins)]
        top = max(max(xs, default=0), max(ys, default=0), 1e-6) * 1.05
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
        ax.plot(xs, ys, marker="o")
        ax.set(title=h, xlabel="predicted", ylabel="observed")
    axes.flat[-1].axis("off")
    fig.suptitle("calibration on the holdout (deciles of the prediction)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _quality_html(table, decision: R.GateDecision, path: Path) -> Path:
    path.write_text(
        "<html><head><meta charset='utf-8'><title>ranker holdout quality</title></head><body>"
        f"<h2>Per-head holdout quality</h2>{table.to_html(float_format=lambda v: f'{v:.4f}')}"
        f"<h2>Gate</h2><p>{decision.reason}</p></body></html>"
    )
    return path


# --- the run ----------------------------------------------------------------------------------------------------------
def _log_model(scorer: RankerScorer, example_source: ParquetSource, name: str, folder: Path):
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from ml.ranker.data import read_columns
    from ml.ranker.inference import RankerPyfunc, scoring_frame

    rows = read_columns(example_source, scorer.spec.feature_columns(labels=False)).slice(0, 5)
    example = scoring_frame(rows, scorer.spec)
    signature = infer_signature(example, scorer.predict_pandas(example))
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN,
        python_model=RankerPyfunc(),
        artifacts={"ranker": str(scorer.save(folder / "ranker"))},
        signature=signature,
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=name,
    )


def _run(
    settings: DarkroomSettings,
    *,
    kind: Kind,
    as_of: datetime,
    train_source: ParquetSource,
    holdout_source: ParquetSource,
    training_set,
    holdout_window: tuple[datetime, datetime],
    init_scorer: RankerScorer | None,
    with_baselines: bool,
    oracle=None,
    progress: Callable[[str], None],
) -> RankerRunResult:
    import mlflow

    from ml.ranker import evaluate as E
    from ml.ranker.inference import RankerScorer, load_registered
    from ml.ranker.train import finetune_settings, predict, prepare_spec, train, train_distributed

    cfg = settings.ranker
    service = _service(settings)
    t0 = time.perf_counter()
    use_experiment(settings, cfg.experiment)
    c = R.client(tracking_uri(settings))
    champion_before = R.alias_version(c, cfg.registered_model, R.CHAMPION)
    if kind == "hourly":
        spec, init_state, train_cfg = init_scorer.spec, init_scorer.state_dict(), finetune_settings(cfg)
    else:
        spec, init_state, train_cfg = prepare_spec(train_source, cfg), None, cfg
    _, labels = E.holdout_labels(holdout_source, spec)
    holdout_rows = len(labels[HEADS[0]])
    if holdout_rows == 0:
        raise RankerRunError(f"the holdout {holdout_source.describe()} has no rows")

    with mlflow.start_run(run_name=f"{kind}-{as_of:%Y%m%dT%H%MZ}") as run, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mlflow.log_params(_flat_params("ranker", cfg.model_dump(), {}) | {"kind": kind, "as_of": as_of.isoformat()})
        tags = {
            "kind": kind,
            "feature_service": service.name,
            "feature_service_version": str(service.version),
            "training_set_table": training_set.table,
            "training_set_version": str(training_set.version),
            "training_window": f"{training_set.start.isoformat()}/{training_set.end.isoformat()}",
            "holdout_window": f"{holdout_window[0].isoformat()}/{holdout_window[1].isoformat()}",
            "champion_before": champion_before or "",
            "started_from": (f"champion version {champion_before}" if kind == "hourly" else "seeded weights"),
        }
        mlflow.set_tags(tags)
        trainer = train_distributed if train_cfg.num_processes > 1 else train
        progress(f"ranker {kind}: training ({train_cfg.epochs} epoch(s), {train_cfg.num_processes} process(es))")
        on_epoch = None if train_cfg.num_processes > 1 else (lambda e: progress(_epoch_line(e)))
        result = trainer(
            train_source, spec, train_cfg, init_state=init_state, eval_files=holdout_source, on_epoch=on_epoch
        )
        if on_epoch is None:
            for stats in result.history:
                progress(_epoch_line(stats))
        for stats in result.history:
            mlflow.log_metrics(stats.metrics(), step=stats.epoch)
        # The weights the run started from and ended with: a fine-tune's start equals its champion's end.
        tags |= {
            "initial_state_fingerprint": result.initial_fingerprint,
            "state_fingerprint": state_fingerprint(result.model.state_dict()),
        }
        mlflow.set_tags(tags)
        scorer = RankerScorer(result.model, result.spec, result.arch, dict(cfg.value_weights))
        probs = result.holdout_probs  # the last epoch's predictions: the holdout is not scored twice
        others = {}
        if champion_before is not None:
            champion = load_registered(f"models:/{cfg.registered_model}/{champion_before}")
            others["champion"] = predict(champion.model, holdout_source, champion.spec)
        if with_baselines:
            progress(
                f"ranker {kind}: fitting the baselines (logistic regression, LightGBM; up to "
                f"{cfg.baseline_max_rows:,} training rows each, seven heads)"
            )
        quality = _compare(cfg, train_source, holdout_source, labels, probs, others, with_baselines, oracle, spec)
        mlflow.log_metrics({f"holdout_{k}": v for k, v in quality["model"].items()})

        progress(f"ranker {kind}: evaluated on {holdout_rows:,} holdout rows ({', '.join(sorted(quality))})")
        info = _log_model(scorer, holdout_source, cfg.registered_model, folder)
        version = str(info.registered_model_version)
        R.mark_challenger(c, cfg.registered_model, version)
        for key, value in (tags | {"run_id": run.info.run_id}).items():
            c.set_model_version_tag(cfg.registered_model, version, key, value)

        champion_ne = {h: quality["champion"][f"ne_{h}"] for h in HEADS} if "champion" in quality else None
        decision = R.decide(
            {h: quality["model"][f"ne_{h}"] for h in HEADS},
            champion_ne,
            cfg.value_weights,
            margin=cfg.gate.margin,
            head_tolerance=cfg.gate.head_tolerance,
        )
        if decision.promote:
            R.promote(c, cfg.registered_model, version, reason=decision.reason)
        champion_after = R.alias_version(c, cfg.registered_model, R.CHAMPION)
        progress(f"ranker {kind}: version {version} registered; {decision.reason}")
        mlflow.set_tags({"gate_promoted": str(decision.promote).lower(), "gate_reason": decision.reason})
        mlflow.log_metrics(
            {"gate_challenger_value_ne": decision.challenger_value_ne}
            | ({"gate_champion_value_ne": decision.champion_value_ne} if decision.champion_value_ne else {})
        )
        (folder / "gate.json").write_text(json.dumps(decision.as_dict(), indent=1))
        table = _quality_frame(quality)
        table.to_csv(folder / "holdout_quality.csv")
        _quality_html(table, decision, folder / "holdout_quality.html")
        _training_curves_png(result, folder / "training_curves.png")
        _calibration_png(probs, labels, folder / "calibration.png")
        for name in (
            "gate.json",
            "holdout_quality.csv",
            "holdout_quality.html",
            "training_curves.png",
            "calibration.png",
        ):
            mlflow.log_artifact(str(folder / name))
        log.info("ranker %s run %s: version %s, %s", kind, run.info.run_id, version, decision.reason)
        return RankerRunResult(
            kind=kind,
            run_id=run.info.run_id,
            version=version,
            decision=decision,
            champion_version=champion_after,
            quality=quality,
            training_set_version=training_set.version,
            train_rows=sum(s.examples for s in result.history[:1]),
            holdout_rows=holdout_rows,
            examples_per_s=result.examples_per_s,
            seconds=time.perf_counter() - t0,
        )


def _quality_frame(quality: dict[str, dict[str, float]]):
    """Rows = metric_head, columns = model (model, champion, baselines, oracle)."""
    import pandas as pd

    return pd.DataFrame(quality).sort_index()


def _compare(cfg, train_source, holdout_source, labels, probs, others, with_baselines: bool, oracle, spec) -> dict:
    """The quality table: the model, ``others`` (the champion), the baselines (``logistic``, ``lightgbm``) and the
    ``oracle`` on the same split (``model`` gains its AUC gap to the oracle). An oracle that does not cover the holdout
    (real data has none) costs only its column, with a warning."""
    from ml.ranker import evaluate as E

    def compare(truth):
        return E.compare_for_pipeline(
            cfg,
            train_source,
            holdout_source,
            labels,
            probs,
            with_baselines=with_baselines,
            oracle=truth,
            spec=spec,
            others=others,
        )

    try:
        return compare(oracle)
    except E.OracleMismatchError as e:
        log.warning("ranker: the oracle is left out of the comparison: %s", e)
        return compare(None)


# --- entry points -----------------------------------------------------------------------------------------------------
def retrain(
    settings: DarkroomSettings,
    as_of: datetime,
    *,
    spark: SparkSession | None = None,
    with_baselines: bool = True,
    progress: Callable[[str], None] | None = None,
) -> RankerRunResult:
    """Weekly: a fresh model on the ``ranker.train_days`` days before ``as_of``; the last ``holdout_days`` are held
    out (train on earlier days, evaluate on the last)."""
    with training_lock(settings):
        return _retrain(settings, as_of, spark=spark, with_baselines=with_baselines, progress=progress or log.info)


def _retrain(settings, as_of, *, spark, with_baselines, progress) -> RankerRunResult:
    from darkroom.spark import get_spark
    from feature_store.offline import build_training_set, training_set_files
    from ml.ranker.data import as_source

    as_of = utc(as_of)
    cfg = settings.ranker
    spark = spark or get_spark(settings, "ranker_weekly")
    service = _service(settings)
    start = as_of - timedelta(days=cfg.train_days)
    t0 = time.perf_counter()
    ts = build_training_set(spark, settings, service, start, as_of)
    progress(
        f"ranker: training set {ts.table} v{ts.version}: {ts.rows:,} impressions of {start:%Y-%m-%d %H:%M} .. "
        f"{as_of:%Y-%m-%d %H:%M} in {time.perf_counter() - t0:.0f}s"
    )
    if ts.rows == 0:
        raise RankerRunError(f"no impressions in {start.isoformat()} .. {as_of.isoformat()}: nothing to train on")
    files = training_set_files(settings, service, ts.version, start, as_of)
    boundary = as_of - timedelta(days=cfg.holdout_days)
    source = as_source(files)
    train_source = source.window(start, boundary)
    holdout_source = source.window(boundary, as_of)
    oracle = _oracle(spark, settings, boundary, as_of)
    return _run(
        settings,
        kind="weekly",
        as_of=as_of,
        train_source=train_source,
        holdout_source=holdout_source,
        training_set=ts,
        holdout_window=(boundary, as_of),
        init_scorer=None,
        with_baselines=with_baselines,
        oracle=oracle,
        progress=progress,
    )


def finetune(
    settings: DarkroomSettings,
    as_of: datetime,
    *,
    spark: SparkSession | None = None,
    progress: Callable[[str], None] | None = None,
) -> RankerRunResult:
    """Hourly: ``models:/ranker@champion`` trained on the last ``finetune_hours`` of impressions with a small
    learning rate, evaluated on the champion's own holdout (its training set version, read by time travel)."""
    with training_lock(settings):
        return _finetune(settings, as_of, spark=spark, progress=progress or log.info)


def _finetune(settings, as_of, *, spark, progress) -> RankerRunResult:
    from darkroom.spark import get_spark
    from feature_store.offline import build_training_set, training_set_files
    from ml.ranker.data import as_source
    from ml.ranker.inference import load_registered

    as_of = utc(as_of)
    cfg = settings.ranker
    c = R.client(tracking_uri(settings))
    champion = R.alias_version(c, cfg.registered_model, R.CHAMPION)
    if champion is None:
        raise RankerRunError(
            f"model {cfg.registered_model!r} has no @champion yet: run `darkroom ranker retrain` first"
        )
    tags = c.get_model_version(cfg.registered_model, champion).tags
    h_start, h_end = (datetime.fromisoformat(x) for x in tags["holdout_window"].split("/"))
    ts_version = int(tags["training_set_version"])
    spark = spark or get_spark(settings, "ranker_hourly")
    service = _service(settings)
    start = as_of - timedelta(hours=cfg.finetune_hours)
    if start < h_end:
        raise RankerRunError(
            f"fine-tune window {start.isoformat()} .. {as_of.isoformat()} overlaps the champion's holdout "
            f"(ends {h_end.isoformat()}): it would train on the rows it is judged on"
        )
    t0 = time.perf_counter()
    ts = build_training_set(spark, settings, service, start, as_of)
    progress(
        f"ranker: training set {ts.table} v{ts.version}: {ts.rows:,} impressions of {start:%Y-%m-%d %H:%M} .. "
        f"{as_of:%Y-%m-%d %H:%M} in {time.perf_counter() - t0:.0f}s"
    )
    if ts.rows == 0:
        raise RankerRunError(f"no impressions in {start.isoformat()} .. {as_of.isoformat()}: nothing to fine-tune on")
    train_source = as_source(training_set_files(settings, service, ts.version, start, as_of)).window(start, as_of)
    holdout_source = as_source(training_set_files(settings, service, ts_version, h_start, h_end)).window(h_start, h_end)
    init = load_registered(f"models:/{cfg.registered_model}/{champion}")
    return _run(
        settings,
        kind="hourly",
        as_of=as_of,
        train_source=train_source,
        holdout_source=holdout_source,
        training_set=ts,
        holdout_window=(h_start, h_end),
        init_scorer=init,
        with_baselines=False,
        progress=progress,
    )


def _oracle(spark: SparkSession, settings: DarkroomSettings, start: datetime, end: datetime):
    """The generator's true probabilities for the holdout's impressions (pandas), when the world has them."""
    from darkroom import lake
    from darkroom.tables import table

    t = table("oracle.oracle")
    if not lake.exists(spark, t, settings):
        return None
    fmt = "%Y-%m-%d %H:%M:%S"
    return (
        lake.read(spark, t, settings)
        .where(f"ts >= TIMESTAMP'{start.strftime(fmt)}' AND ts < TIMESTAMP'{end.strftime(fmt)}'")
        .drop("dt")
        .toPandas()
    )


def promote_version(settings: DarkroomSettings, version: str) -> str | None:
    """``darkroom ranker promote VERSION``: a person moves @champion; returns the previous champion."""
    c = R.client(tracking_uri(settings))
    return R.promote(c, settings.ranker.registered_model, version, reason="promoted by hand")


def rollback(settings: DarkroomSettings) -> tuple[str, str]:
    c = R.client(tracking_uri(settings))
    return R.rollback(c, settings.ranker.registered_model)


def retrain_task(settings: DarkroomSettings, *, as_of: datetime) -> dict[str, Any]:
    """``ranker_weekly.retrain`` (entry point, ``darkroom.spark_task``): ``retrain``'s summary."""
    return retrain(settings, as_of).summary()


def finetune_task(settings: DarkroomSettings, *, as_of: datetime) -> dict[str, Any]:
    """``ranker_hourly.finetune`` (entry point, ``darkroom.spark_task``): ``finetune``'s summary."""
    return finetune(settings, as_of).summary()
