"""train_distributed: two local processes through pyspark's TorchDistributor, DDP on gloo with sparse gradients."""

from __future__ import annotations

import numpy as np
import pytest

from ml.metrics import auc
from ml.ranker.data import read_columns
from ml.ranker.model import state_dict_diff, state_fingerprint
from ml.ranker.train import predict, train_distributed

pytestmark = pytest.mark.integration


def test_two_processes_train_one_sane_model(spark, trained, split):
    cfg, spec, single, _ = trained
    train_src, holdout = split
    start = {k: v.clone() for k, v in single.state_dict().items()}
    result = train_distributed(train_src, spec, cfg, 2, init_state=start, eval_files=holdout)
    assert result.world_size == 2 and len(result.history) == cfg.epochs
    assert result.initial_fingerprint == state_fingerprint(start)  # every rank started from the given weights
    assert state_dict_diff(result.state_dict(), start) != [] and result.history[-1].loss < result.history[0].loss
    # Each epoch saw every training row once over both ranks, in half the steps of one process.
    assert all(e.examples == single.history[0].examples for e in result.history)
    assert result.history[0].steps == -(-single.history[0].steps // 2)
    probs = predict(result.model, holdout, spec)
    labels = read_columns(holdout, ["label_like"]).column("label_like").to_numpy()
    assert all(np.isfinite(p).all() and 0 < p.min() and p.max() < 1 for p in probs.values())
    assert auc(labels, probs["like"]) > 0.75
    assert result.history[-1].holdout["like"]["auc"] == pytest.approx(auc(labels, probs["like"]), abs=1e-6)
