"""Evaluation metrics for binary heads, and the per-head table that puts several models side by side.

- ``auc``: the probability that a random positive scores above a random negative, ties counting one half
  (Mann-Whitney U with average ranks); equals ``sklearn.metrics.roc_auc_score``.
- ``normalized_entropy``: mean log loss divided by the entropy of the base rate (He et al. 2014, "Practical
  Lessons from Predicting Clicks on Ads at Facebook"; TorchRec's NE metric). 1.0 is what always predicting the base
  rate scores; lower is better. Probabilities are clipped to [1e-7, 1 - 1e-7].
- ``calibration``: mean predicted over mean observed; 1.0 is calibrated, above 1 over-predicts.

When a metric is undefined it is NaN, never an exception: AUC with only one class in the labels, NE when the base
rate is 0 or 1 (the base rate's entropy is 0), calibration when nothing was observed (mean label 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

EPS = 1e-7
ORACLE = "oracle"


def _arrays(
    labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def auc(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC with tied scores counting 1/2; NaN when the labels hold one class only."""
    y, s = _arrays(labels, scores)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # Average rank (1-based) of each distinct score: the ranks its ties would share.
    upper = np.cumsum(counts)
    avg_rank = upper - (counts - 1) / 2.0
    rank_sum = avg_rank[inverse][y == 1].sum()
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))


def log_loss(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """Mean binary cross-entropy (natural log), probabilities clipped to [EPS, 1 - EPS]."""
    y, p = _arrays(labels, probs)
    if y.size == 0:
        return float("nan")
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def normalized_entropy(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """Log loss over the entropy of the base rate; NaN when the base rate is 0 or 1 (or there are no rows)."""
    y, _ = _arrays(labels, probs)
    if y.size == 0:
        return float("nan")
    b = float(y.mean())
    if b <= 0.0 or b >= 1.0:
        return float("nan")
    entropy = -(b * np.log(b) + (1 - b) * np.log(1 - b))
    return log_loss(labels, probs) / entropy


def calibration(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """Mean predicted probability over the observed rate; NaN when no positive was observed."""
    y, p = _arrays(labels, probs)
    if y.size == 0 or y.sum() == 0:
        return float("nan")
    return float(p.mean() / y.mean())


def head_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {
        "auc": auc(labels, probs),
        "ne": normalized_entropy(labels, probs),
        "calibration": calibration(labels, probs),
        "log_loss": log_loss(labels, probs),
    }


def head_table(
    labels: Mapping[str, np.ndarray],
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    *,
    oracle: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per (head, model): n, base rate, AUC, NE, calibration, log loss, and the gap to the oracle's AUC.

    ``labels`` is head -> 0/1 array; ``predictions`` is model name -> head -> probabilities, every array aligned
    with the labels. With ``oracle`` (head -> the world's true probabilities), the oracle is one more model and
    ``auc_gap`` = oracle AUC - model AUC (how much a perfect model of the world would still gain); else NaN.
    """
    models = dict(predictions)
    if oracle is not None:
        if ORACLE in models:
            raise ValueError(f"a model may not be called {ORACLE!r}")
        models[ORACLE] = oracle
    rows = []
    for head, y in labels.items():
        y = np.asarray(y, dtype=np.float64)
        oracle_auc = auc(y, oracle[head]) if oracle is not None else float("nan")
        for name, preds in models.items():
            if head not in preds:
                raise ValueError(f"model {name!r} has no predictions for head {head!r}")
            m = head_metrics(y, preds[head])
            rows.append(
                {
                    "head": head,
                    "model": name,
                    "n": int(y.size),
                    "base_rate": float(y.mean()) if y.size else float("nan"),
                    **m,
                    "oracle_auc": oracle_auc,
                    "auc_gap": oracle_auc - m["auc"],
                }
            )
    return pd.DataFrame(rows).set_index(["head", "model"])
