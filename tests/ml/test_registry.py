"""The champion gate (pure) and alias moves against a real MLflow SQLite registry."""

from __future__ import annotations

import pytest

from ml import registry as R

WEIGHTS = {"like": 1.0, "comment": 2.0, "save": 3.0, "share": 3.0, "follow": 5.0, "hide": -10.0, "dwell": 1.0}
CHAMPION_NE = {"like": 0.90, "comment": 0.95, "save": 0.95, "share": 0.96, "follow": 0.97, "hide": 0.98, "dwell": 0.8}


def test_value_weighted_ne_uses_absolute_weights():
    # |w| sum = 1+2+3+3+5+10+1 = 25; sum |w| x NE = 0.9+1.9+2.85+2.88+4.85+9.8+0.8 = 23.98 -> 0.9592
    assert R.value_weighted_ne(CHAMPION_NE, WEIGHTS) == pytest.approx(23.98 / 25)


def test_value_weighted_ne_refuses_a_missing_head():
    with pytest.raises(ValueError, match="dwell"):
        R.value_weighted_ne({h: v for h, v in CHAMPION_NE.items() if h != "dwell"}, WEIGHTS)


def test_first_model_is_promoted():
    d = R.decide(CHAMPION_NE, None, WEIGHTS, margin=0.001, head_tolerance=0.01)
    assert d.promote and d.champion_value_ne is None and "no champion" in d.reason


def test_a_worse_challenger_is_not_promoted():
    worse = {h: v + 0.004 for h, v in CHAMPION_NE.items()}
    d = R.decide(worse, CHAMPION_NE, WEIGHTS, margin=0.001, head_tolerance=0.01)
    assert not d.promote
    assert d.challenger_value_ne - d.champion_value_ne == pytest.approx(0.004)
    assert d.regressed_heads == () and "margin" in d.reason


def test_a_better_challenger_is_promoted():
    better = {h: v - 0.002 for h, v in CHAMPION_NE.items()}
    d = R.decide(better, CHAMPION_NE, WEIGHTS, margin=0.001, head_tolerance=0.01)
    assert d.promote and d.head_deltas["hide"] == pytest.approx(-0.002)


def test_a_gain_below_the_margin_is_not_enough():
    slightly = {h: v - 0.0005 for h, v in CHAMPION_NE.items()}
    assert not R.decide(slightly, CHAMPION_NE, WEIGHTS, margin=0.001, head_tolerance=0.01).promote


def test_one_regressed_head_blocks_a_better_average():
    # follow gets 0.02 worse; every other head 0.01 better: value-weighted NE improves by (20*0.01 - 5*0.02)/25
    mixed = {h: v - 0.01 for h, v in CHAMPION_NE.items()} | {"follow": CHAMPION_NE["follow"] + 0.02}
    d = R.decide(mixed, CHAMPION_NE, WEIGHTS, margin=0.001, head_tolerance=0.01)
    assert d.champion_value_ne - d.challenger_value_ne == pytest.approx(0.1 / 25)
    assert not d.promote and d.regressed_heads == ("follow",) and "follow" in d.reason


@pytest.fixture
def mlflow_client(tmp_path):
    return R.client(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _versions(c, name, n, tmp_path):
    c.create_registered_model(name)
    return [str(c.create_model_version(name, source=(tmp_path / f"m{i}").as_uri()).version) for i in range(n)]


def test_promote_and_rollback_move_the_champion_alias(mlflow_client, tmp_path):
    c = mlflow_client
    v1, v2, v3 = _versions(c, "ranker", 3, tmp_path)
    assert R.alias_version(c, "ranker", R.CHAMPION) is None
    assert R.promote(c, "ranker", v1, reason="first") is None
    assert R.promote(c, "ranker", v2, reason="better") == v1
    R.mark_challenger(c, "ranker", v3)
    assert R.alias_version(c, "ranker", R.CHAMPION) == v2
    assert R.alias_version(c, "ranker", R.CHALLENGER) == v3
    assert c.get_model_version("ranker", v2).tags["promotion_reason"] == "better"

    assert R.rollback(c, "ranker") == (v2, v1)
    assert R.alias_version(c, "ranker", R.CHAMPION) == v1
    with pytest.raises(R.RegistryError, match="no earlier champion"):
        R.rollback(c, "ranker")


def test_promoting_an_unknown_version_is_refused(mlflow_client, tmp_path):
    _versions(mlflow_client, "ranker", 1, tmp_path)
    with pytest.raises(R.RegistryError, match="no version 7"):
        R.promote(mlflow_client, "ranker", "7", reason="typo")
    assert R.alias_version(mlflow_client, "ranker", R.CHAMPION) is None
