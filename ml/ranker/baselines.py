"""The ranker's baselines, on the same features and the same split: logistic regression and LightGBM, one per head.

Both train on a uniform sample of at most ``cfg.baseline_max_rows`` training rows (streamed: each read batch is
sampled as it comes) and score in streamed chunks, so neither collects a whole table.

- Logistic regression (scikit-learn, L2, liblinear: ~20x faster than lbfgs on this sparse matrix): the dense
  inputs exactly as the ranker sees them (standardised signed log1p plus missing indicators) and a one-hot of
  every id and hashtag hashed into ``cfg.logreg_hash_buckets`` columns (the same stable hash as the ranker's,
  salted per column), as one sparse matrix.
- LightGBM: the raw dense values (null = missing, which LightGBM handles natively), the ids as numbers (darkroom's
  ids are time-sortable, so an id says when the account or post was created) and each multi-valued column's length.

A head whose sample holds one class only predicts that class's rate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from ml.ranker.data import Files, as_source, check_files, chunked, count_rows
from ml.ranker.features import (
    HEADS,
    FeatureSpec,
    column_salt,
    dense_matrix,
    hash_ids,
    hash_string_lists,
    transform_dense,
)

if TYPE_CHECKING:
    from darkroom.settings import RankerSettings


def sample_rows(files: Files, columns: list[str], *, max_rows: int, seed: int = 0) -> pa.Table:
    """A uniform random sample of about ``max_rows`` rows (all of them when there are fewer), streamed."""
    total = count_rows(files)
    keep = min(1.0, max_rows / max(total, 1))
    rng = np.random.default_rng(seed)
    parts = []
    for t in chunked(files, columns):
        parts.append(t if keep >= 1.0 else t.filter(pa.array(rng.uniform(size=t.num_rows) < keep)))
    return pa.concat_tables(parts)


def _labels(table: pa.Table, spec: FeatureSpec) -> dict[str, np.ndarray]:
    return {
        h: pc.fill_null(pc.cast(table.column(c), pa.int8()), 0).to_numpy(zero_copy_only=False).astype(np.int8)
        for h, c in zip(HEADS, spec.label_columns, strict=True)
    }


class _Constant:
    """The head's training rate, for a sample with one class only."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def predict_proba(self, x: Any) -> np.ndarray:
        p = np.full(x.shape[0], self.rate)
        return np.stack([1 - p, p], axis=1)


def _fit_heads(x: Any, labels: Mapping[str, np.ndarray], make: Any) -> dict[str, Any]:
    models = {}
    for h in HEADS:
        y = labels[h]
        if y.min() == y.max():
            models[h] = _Constant(float(y[0]) if y.size else 0.0)
        else:
            models[h] = make().fit(x, y)
    return models


@dataclass
class LogisticBaseline:
    spec: FeatureSpec
    hash_buckets: int
    models: dict[str, Any]
    name: str = "logistic"

    def features(self, table: pa.Table) -> sp.csr_matrix:
        return logistic_features(table, self.spec, self.hash_buckets)

    def predict(self, files: Files) -> dict[str, np.ndarray]:
        return _predict(files, self.spec, self.features, self.models)


@dataclass
class LightGBMBaseline:
    spec: FeatureSpec
    models: dict[str, Any]
    name: str = "lightgbm"

    def features(self, table: pa.Table) -> np.ndarray:
        return lightgbm_features(table, self.spec)

    def predict(self, files: Files) -> dict[str, np.ndarray]:
        return _predict(files, self.spec, self.features, self.models)


def _predict(files: Files, spec: FeatureSpec, features: Any, models: Mapping[str, Any]) -> dict[str, np.ndarray]:
    src = as_source(files)
    check_files(src, spec, labels=False)
    parts: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    for t in chunked(src, spec.feature_columns(labels=False)):
        x = features(t)
        for h in HEADS:
            parts[h].append(models[h].predict_proba(x)[:, 1])
    return {h: np.concatenate(v) for h, v in parts.items()}


def logistic_features(table: pa.Table, spec: FeatureSpec, buckets: int) -> sp.csr_matrix:
    """[dense inputs | one-hot of hashed ids and hashtags] as a CSR matrix (rows x dense_inputs + buckets)."""
    n = table.num_rows
    dense = sp.csr_matrix(transform_dense(dense_matrix(table, spec.dense_columns), spec.dense_mean, spec.dense_std))
    rows, cols = [], []
    for c in spec.id_columns:
        raw = pc.fill_null(table.column(c), 0).to_numpy(zero_copy_only=False)
        rows.append(np.arange(n))
        cols.append(hash_ids(raw, buckets, column_salt(c)))
    for c in spec.multi_columns:
        values, offsets = hash_string_lists(table.column(c), buckets, column_salt(c))
        lengths = np.diff(np.append(offsets, values.size))
        rows.append(np.repeat(np.arange(n), lengths))
        cols.append(values)
    r, k = np.concatenate(rows), np.concatenate(cols)
    onehot = sp.csr_matrix((np.ones(r.size, dtype=np.float32), (r, k)), shape=(n, buckets))
    return sp.hstack([dense, onehot], format="csr")


def lightgbm_features(table: pa.Table, spec: FeatureSpec) -> np.ndarray:
    """[raw dense values (NaN = missing) | ids as their hash buckets | multi-valued lengths].

    Ids are hashed as the model hashes them: 64-bit ids do not fit a double exactly, and their raw order carries
    nothing a tree could split on usefully anyway."""
    ids = [
        hash_ids(
            pc.fill_null(table.column(c), 0).to_numpy(zero_copy_only=False), spec.id_buckets, column_salt(c)
        ).astype(np.float64)
        for c in spec.id_columns
    ]
    lengths = [
        pc.fill_null(pc.list_value_length(table.column(c)), 0).to_numpy(zero_copy_only=False).astype(np.float64)
        for c in spec.multi_columns
    ]
    return (
        np.column_stack([dense_matrix(table, spec.dense_columns), *ids, *lengths])
        if table.num_rows
        else np.zeros((0, 0))
    )


def fit_logistic(files: Files, spec: FeatureSpec, cfg: RankerSettings) -> LogisticBaseline:
    from sklearn.linear_model import LogisticRegression

    src = as_source(files)
    check_files(src, spec)
    table = sample_rows(src, spec.feature_columns(), max_rows=cfg.baseline_max_rows, seed=cfg.seed)
    x = logistic_features(table, spec, cfg.logreg_hash_buckets)
    models = _fit_heads(
        x, _labels(table, spec), lambda: LogisticRegression(C=cfg.logreg_c, solver="liblinear", max_iter=300)
    )
    return LogisticBaseline(spec, cfg.logreg_hash_buckets, models)


def fit_lightgbm(files: Files, spec: FeatureSpec, cfg: RankerSettings) -> LightGBMBaseline:
    import lightgbm as lgb

    src = as_source(files)
    check_files(src, spec)
    table = sample_rows(src, spec.feature_columns(), max_rows=cfg.baseline_max_rows, seed=cfg.seed)
    x = lightgbm_features(table, spec)
    threads = cfg.torch_threads or max(1, (os.cpu_count() or 1) - 1)  # more threads than cores: 40x slower

    def make() -> Any:
        return lgb.LGBMClassifier(
            n_estimators=cfg.lgbm_rounds,
            num_leaves=cfg.lgbm_num_leaves,
            learning_rate=cfg.lgbm_learning_rate,
            random_state=cfg.seed,
            n_jobs=threads,
            verbose=-1,
        )

    return LightGBMBaseline(spec, _fit_heads(x, _labels(table, spec), make))
