"""train() with tiny dimensions: it learns the synthetic task, starts from given weights, refuses bad columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from ml.ranker.data import last_window, read_columns
from ml.ranker.features import FeatureSchemaError
from ml.ranker.model import MultiTaskRanker, state_dict_diff, state_fingerprint, value_score
from ml.ranker.train import arch_for, finetune_settings, predict, prepare_spec, train


def test_training_learns_the_synthetic_task(trained):
    cfg, spec, result, seen = trained
    losses = [e.loss for e in result.history]
    assert len(losses) == cfg.epochs and losses[0] > losses[1] > losses[2]
    assert seen == result.history  # on_epoch saw every epoch, in order
    holdout_auc = {h: m["auc"] for h, m in result.history[-1].holdout.items()}
    assert holdout_auc["like"] > 0.75 and np.mean(list(holdout_auc.values())) > 0.7
    first_auc = np.mean([m["auc"] for m in result.history[0].holdout.values()])
    assert np.mean(list(holdout_auc.values())) > first_auc
    assert result.examples == cfg.epochs * result.history[0].examples and result.examples_per_s > 0
    assert set(result.history[-1].metrics()) >= {"train_loss", "train_loss_like", "holdout_auc_like", "holdout_ne_hide"}
    assert result.config()["spec"]["dense_columns"] == list(spec.dense_columns)


def test_predict_scores_every_row_in_file_order(trained, split):
    _, spec, result, _ = trained
    _, holdout = split
    probs = predict(result.model, holdout, spec)
    labels = read_columns(holdout, ["label_like"]).column("label_like").to_numpy()
    assert probs["like"].shape == labels.shape and 0 < probs["like"].min() and probs["like"].max() < 1
    # Positives get higher like probabilities on average, and the value score is finite.
    assert probs["like"][labels == 1].mean() > probs["like"][labels == 0].mean() + 0.1
    assert np.isfinite(
        value_score(probs, {"like": 1, "comment": 2, "save": 3, "share": 3, "follow": 5, "hide": -10, "dwell": 1})
    ).all()
    # The run keeps its last epoch's holdout predictions: the pipeline does not score the holdout a second time.
    for h in probs:
        np.testing.assert_allclose(result.holdout_probs[h], probs[h], rtol=1e-6)


def test_training_starts_from_the_given_weights(trained, dataset):
    cfg, spec, result, _ = trained
    files, _ = dataset
    champion = {k: v.clone() for k, v in result.state_dict().items()}
    last_hour = last_window(files)
    tuned = train(last_hour, spec, finetune_settings(cfg), init_state=champion)
    # The weights before the first step were the champion's, and training moved them (with 1/10 of the rates).
    assert tuned.initial_fingerprint == state_fingerprint(champion)
    assert state_dict_diff(tuned.state_dict(), champion) != []
    assert len(tuned.history) == cfg.finetune_epochs and tuned.history[0].examples < 200
    # Without init_state the start is the seeded initialisation, not the champion.
    fresh = train(last_hour, spec, finetune_settings(cfg))
    torch.manual_seed(cfg.seed)
    assert fresh.initial_fingerprint == state_fingerprint(MultiTaskRanker(arch_for(spec, cfg)).state_dict())
    assert fresh.initial_fingerprint != tuned.initial_fingerprint


def test_dense_adam_reference_path_runs(split, trained):
    cfg, spec, _, _ = trained
    train_src, _ = split
    result = train(train_src, spec, cfg.model_copy(update={"embedding_optimizer": "dense_adam", "epochs": 1}))
    assert not result.arch.sparse and np.isfinite(result.history[0].loss)


def rewrite(src: str, dst, fn) -> str:
    pq.write_table(fn(pq.read_table(src)), dst)
    return str(dst)


@pytest.mark.parametrize(
    "change, named, problem",
    [
        pytest.param(lambda t: t.drop_columns(["post__like_rate"]), "post__like_rate", "is missing", id="missing"),
        pytest.param(
            lambda t: t.set_column(
                t.schema.get_field_index("viewer__follower_count"),
                "viewer__follower_count",
                pc.cast(t.column("viewer__follower_count"), pa.string()),
            ),
            "viewer__follower_count",
            "is string, expected a number",
            id="string-for-a-number",
        ),
    ],
)
def test_a_training_set_with_a_missing_or_corrupt_column_is_refused(trained, dataset, tmp_path, change, named, problem):
    cfg, spec, _, _ = trained
    files, _ = dataset
    bad = rewrite(files[1], tmp_path / "bad.parquet", change)
    seen = []
    with pytest.raises(FeatureSchemaError, match=f"bad.parquet: column '{named}' {problem}") as e:
        train([files[0], bad], spec, cfg, on_epoch=seen.append)
    assert e.value.columns == (named,) and seen == []
    with pytest.raises(FeatureSchemaError, match=named):
        prepare_spec([files[0], bad], cfg)
