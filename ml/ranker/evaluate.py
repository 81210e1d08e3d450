"""The ranker's evaluation: the model, its baselines and the world's oracle on one time-based holdout, per head.

The holdout is the last day(s) of the training set (``data.time_holdout``); every model scores the same rows in
the same order (file order), and the oracle's true probabilities are joined on (viewer_id, post_id,
impressed_at = ts). The result is ``ml.metrics.head_table``: per (head, model) AUC, normalised entropy,
calibration, log loss and the AUC gap to the oracle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ml.metrics import head_table
from ml.ranker.data import Files, as_source, check_files, read_columns, timestamps_us
from ml.ranker.features import HEADS, KEY_COLUMNS, TIME_COLUMN, FeatureSchemaError, FeatureSpec

if TYPE_CHECKING:
    from darkroom.settings import RankerSettings
    from ml.ranker.model import MultiTaskRanker

ORACLE_KEYS = ("viewer_id", "post_id", "ts")
BASELINES = ("logistic", "lightgbm")
QUALITY_METRICS = ("auc", "ne", "calibration", "log_loss", "auc_gap")


def holdout_labels(files: Files, spec: FeatureSpec) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """(keys viewer_id, post_id, impressed_at; head -> 0/1 labels) of every holdout row, in file order."""
    src = as_source(files)
    check_files(src, spec)
    for f in src.files:
        names = pq.read_schema(f).names
        missing = {c: "is missing (a key of the holdout's rows)" for c in KEY_COLUMNS if c not in names}
        if missing:
            raise FeatureSchemaError(missing, f)
    cols = list(KEY_COLUMNS)
    t = read_columns(src, [*cols, *spec.label_columns])
    labels = {
        h: t.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        for h, c in zip(HEADS, spec.label_columns, strict=True)
    }
    return t.select(cols), labels


class OracleMismatchError(ValueError):
    """The oracle cannot be aligned with the holdout (duplicate keys, or impressions it does not cover)."""


def oracle_probabilities(keys: pa.Table, oracle: pd.DataFrame | pa.Table) -> dict[str, np.ndarray]:
    """Head -> the oracle's p_<head> for each key row (viewer_id, post_id, impressed_at), aligned with ``keys``.

    Refuses an oracle with duplicate keys or one that lacks a holdout impression, naming how many and one example.
    """
    table = oracle if isinstance(oracle, pa.Table) else pa.Table.from_pandas(oracle, preserve_index=False)
    need = [*ORACLE_KEYS, *(f"p_{h}" for h in HEADS)]
    missing = {c: "is missing from the oracle" for c in need if c not in table.column_names}
    if missing:
        raise FeatureSchemaError(missing, "oracle")
    right = pd.DataFrame(
        {
            "viewer_id": table.column("viewer_id").to_numpy(zero_copy_only=False).astype(np.int64),
            "post_id": table.column("post_id").to_numpy(zero_copy_only=False).astype(np.int64),
            "ts_us": timestamps_us(table.column("ts")),
            **{f"p_{h}": table.column(f"p_{h}").to_numpy(zero_copy_only=False) for h in HEADS},
        }
    )
    on = ["viewer_id", "post_id", "ts_us"]
    dups = right.duplicated(on)
    if dups.any():
        raise OracleMismatchError(
            f"the oracle has {int(dups.sum())} duplicate key(s), e.g. {right.loc[dups, on].iloc[0].tolist()}"
        )
    left = pd.DataFrame(
        {
            "viewer_id": keys.column("viewer_id").to_numpy(zero_copy_only=False).astype(np.int64),
            "post_id": keys.column("post_id").to_numpy(zero_copy_only=False).astype(np.int64),
            "ts_us": timestamps_us(keys.column(TIME_COLUMN)),
        }
    )
    merged = left.merge(right, how="left", on=on, validate="many_to_one", sort=False)
    lost = merged["p_like"].isna()
    if lost.any():
        raise OracleMismatchError(
            f"the oracle lacks {int(lost.sum())} of {len(merged)} holdout impression(s), "
            f"e.g. (viewer_id, post_id, ts_us) = {merged.loc[lost, on].iloc[0].tolist()}"
        )
    return {h: merged[f"p_{h}"].to_numpy(dtype=np.float64) for h in HEADS}


def evaluate(
    holdout_files: Files,
    spec: FeatureSpec,
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    *,
    oracle: pd.DataFrame | pa.Table | None = None,
) -> pd.DataFrame:
    """The per-head table of models whose predictions (model -> head -> probabilities) follow the holdout's order."""
    keys, labels = holdout_labels(holdout_files, spec)
    for name, preds in predictions.items():
        for h in HEADS:
            if len(preds[h]) != keys.num_rows:
                raise ValueError(
                    f"model {name!r} scored {len(preds[h])} rows for head {h!r}, the holdout has {keys.num_rows}"
                )
    truth = oracle_probabilities(keys, oracle) if oracle is not None else None
    return head_table(labels, predictions, oracle=truth)


class Baseline(Protocol):
    name: str

    def predict(self, files: Files) -> dict[str, np.ndarray]: ...


def fit_baselines(
    train_files: Files, spec: FeatureSpec, cfg: RankerSettings, names: Sequence[str] = BASELINES
) -> list[Baseline]:
    """The named baselines (``logistic``, ``lightgbm``), fitted on the training rows."""
    from ml.ranker.baselines import fit_lightgbm, fit_logistic

    fitters = {"logistic": fit_logistic, "lightgbm": fit_lightgbm}
    unknown = sorted(set(names) - set(fitters))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    return [fitters[n](train_files, spec, cfg) for n in names]


def evaluate_with_baselines(
    train_files: Files,
    holdout_files: Files,
    spec: FeatureSpec,
    cfg: RankerSettings,
    model: MultiTaskRanker,
    *,
    oracle: pd.DataFrame | pa.Table | None = None,
    baselines: Sequence[str | Baseline] = BASELINES,
    model_name: str = "ranker",
) -> pd.DataFrame:
    """The ranker, the baselines and the oracle on ``holdout_files``, per head.

    ``baselines`` are names (fitted here on ``train_files``) or already fitted baselines.
    """
    from ml.ranker.train import predict

    predictions = {model_name: predict(model, holdout_files, spec)}
    names = [b for b in baselines if isinstance(b, str)]
    fitted = [b for b in baselines if not isinstance(b, str)] + fit_baselines(train_files, spec, cfg, names)
    for b in fitted:
        predictions[b.name] = b.predict(holdout_files)
    return evaluate(holdout_files, spec, predictions, oracle=oracle)


def flat_quality(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """A ``head_table`` as model -> ``<metric>_<head>`` -> value (finite values only), e.g. for MLflow metrics."""
    out: dict[str, dict[str, float]] = {}
    for (head, model), row in table.iterrows():
        for metric in QUALITY_METRICS:
            value = float(row[metric])
            if np.isfinite(value):
                out.setdefault(model, {})[f"{metric}_{head}"] = value
    return out


def compare_for_pipeline(
    cfg: RankerSettings,
    train_source: Files,
    holdout_source: Files,
    labels: Mapping[str, np.ndarray],
    probs: Mapping[str, np.ndarray],
    *,
    with_baselines: bool = True,
    oracle: pd.DataFrame | pa.Table | None = None,
    spec: FeatureSpec | None = None,
    model_name: str = "model",
    others: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, float]]:
    """The training pipeline's comparison: the model's holdout ``probs`` beside the baselines and the oracle.

    Returns model -> ``<metric>_<head>`` -> value for ``model_name`` (with ``auc_gap_<head>`` when there is an
    oracle), every model of ``others`` (name -> head -> probabilities, e.g. the champion), ``logistic`` and
    ``lightgbm`` (with ``with_baselines``; fitted on ``train_source`` with ``spec``, by default the spec
    ``prepare_spec`` fits on it) and ``oracle``. ``labels`` and every prediction follow the holdout's row order.
    """
    predictions: dict[str, Mapping[str, np.ndarray]] = {model_name: probs, **(others or {})}
    truth = None
    if oracle is not None:  # first: an oracle that does not fit the holdout fails before the baselines are fitted
        truth = oracle_probabilities(read_columns(holdout_source, list(KEY_COLUMNS)), oracle)
    if with_baselines:
        from ml.ranker.train import prepare_spec

        spec = spec or prepare_spec(train_source, cfg)
        for b in fit_baselines(train_source, spec, cfg):
            predictions[b.name] = b.predict(holdout_source)
    return flat_quality(head_table(labels, predictions, oracle=truth))


def summary(table: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """One metric as a heads x models grid (for a report or a log line)."""
    return table[metric].unstack("model")
