"""Metrics against scikit-learn and against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ml.metrics import auc, calibration, head_table, log_loss, normalized_entropy


def test_auc_hand_case_with_a_tie():
    # Positives score 0.8 and 0.4, negatives 0.4 and 0.1. Pairs (pos, neg): (0.8, 0.4) 1, (0.8, 0.1) 1,
    # (0.4, 0.4) a tie = 1/2, (0.4, 0.1) 1 -> 3.5 / 4 = 0.875.
    assert auc([1, 0, 1, 0], [0.8, 0.4, 0.4, 0.1]) == 0.875


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_agrees_with_sklearn_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2_000)
    scores = np.round(rng.normal(size=2_000) + y * 0.5, 1)  # rounding makes many ties
    assert auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_auc_is_nan_with_one_class():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.5, 0.9]))


def test_normalized_entropy_and_calibration_by_hand():
    y = [1, 0, 0, 0]
    p = [0.5, 0.5, 0.25, 0.25]
    # Log loss: -(ln 0.5 + ln 0.5 + ln 0.75 + ln 0.75) / 4 = (0.6931472 x 2 + 0.2876821 x 2) / 4
    #         = 1.9616585 / 4 = 0.4904146.
    # Base rate 0.25: entropy = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.3465736 + 0.2157616 = 0.5623351.
    # NE = 0.4904146 / 0.5623351 = 0.872104.
    assert log_loss(y, p) == pytest.approx(0.4904146, abs=1e-6)
    assert normalized_entropy(y, p) == pytest.approx(0.872104, abs=1e-6)
    # Calibration: mean predicted 1.5 / 4 = 0.375 over observed 0.25 = 1.5.
    assert calibration(y, p) == pytest.approx(1.5)


def test_predicting_the_base_rate_has_ne_one_and_is_calibrated():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0])
    p = np.full(8, 0.25)
    assert normalized_entropy(y, p) == pytest.approx(1.0)
    assert calibration(y, p) == pytest.approx(1.0)


def test_undefined_metrics_are_nan_and_probabilities_are_clipped():
    assert math.isnan(normalized_entropy([0, 0, 0], [0.1, 0.2, 0.3]))  # base rate 0: entropy 0
    assert math.isnan(normalized_entropy([1, 1], [0.9, 0.9]))  # base rate 1
    assert math.isnan(calibration([0, 0], [0.2, 0.3]))
    # p = 0 for a positive is clipped to 1e-7: loss -ln(1e-7) / 2 rows = 16.118096 / 2.
    assert log_loss([1, 0], [0.0, 0.0]) == pytest.approx(-math.log(1e-7) / 2, rel=1e-6)


def test_labels_must_be_binary_and_aligned():
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        auc([0, 1], [0.1])


def test_head_table_side_by_side_with_the_oracle_gap():
    labels = {"like": np.array([1, 0, 1, 0]), "hide": np.array([0, 0, 1, 0])}
    oracle = {"like": np.array([0.9, 0.1, 0.8, 0.2]), "hide": np.array([0.1, 0.2, 0.7, 0.1])}
    model = {"like": np.array([0.8, 0.4, 0.4, 0.1]), "hide": np.array([0.3, 0.2, 0.1, 0.4])}
    t = head_table(labels, {"m": model}, oracle=oracle)
    assert set(t.index) == {("like", "m"), ("like", "oracle"), ("hide", "m"), ("hide", "oracle")}
    # like: oracle ranks perfectly (AUC 1); the model's AUC is the hand case's 0.875 -> gap 0.125.
    assert t.loc[("like", "m"), "auc"] == 0.875
    assert t.loc[("like", "m"), "auc_gap"] == pytest.approx(0.125)
    assert t.loc[("like", "oracle"), "auc_gap"] == 0.0
    # hide: the only positive scores lowest -> AUC 0, gap 1.
    assert t.loc[("hide", "m"), "auc"] == 0.0 and t.loc[("hide", "m"), "auc_gap"] == 1.0
    assert t.loc[("hide", "m"), "base_rate"] == 0.25 and t.loc[("hide", "m"), "n"] == 4
    no_oracle = head_table(labels, {"m": model})
    assert math.isnan(no_oracle.loc[("like", "m"), "auc_gap"])
