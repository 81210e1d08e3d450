"""The ranker scoring's pure entity frame and its model resolution (real Spark, a real empty MLflow store); the
scores themselves are checked against ``RankerScorer`` on the tiny world (test_pc_precompute_world.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pyspark.testing import assertDataFrameEqual

from jobs.ranker_scoring.score import NoChampionError, RankerModelError, resolve_model, scoring_rows

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 10, 10, 12, tzinfo=UTC)


def test_scoring_rows_add_the_viewer_the_instant_and_the_unplaced_context(spark):
    candidates = spark.createDataFrame(
        [(1, 101, 10, 0.25), (2, 102, 20, 0.5)], "user_id BIGINT, post_id BIGINT, author_id BIGINT, retrieval DOUBLE"
    )
    want = spark.createDataFrame(
        [(1, 101, 10, 0.25, 1, AS_OF, "explore", 0), (2, 102, 20, 0.5, 2, AS_OF, "explore", 0)],
        "user_id BIGINT, post_id BIGINT, author_id BIGINT, retrieval DOUBLE, viewer_id BIGINT, "
        "features_as_of TIMESTAMP, surface STRING, position INT",
    )
    assertDataFrameEqual(scoring_rows(candidates, as_of=AS_OF, surface="explore"), want)


def test_scoring_rows_refuse_missing_keys_reserved_columns_and_unknown_surfaces(spark):
    keys = "user_id BIGINT, post_id BIGINT, author_id BIGINT"
    with pytest.raises(ValueError, match="candidates lack author_id"):
        scoring_rows(spark.createDataFrame([], "user_id BIGINT, post_id BIGINT"), as_of=AS_OF, surface="feed")
    with pytest.raises(ValueError, match="must not carry position, value_score"):
        scoring_rows(
            spark.createDataFrame([], f"{keys}, position INT, value_score DOUBLE"), as_of=AS_OF, surface="feed"
        )
    with pytest.raises(ValueError, match="surface must be one of feed, explore, got 'reels'"):
        scoring_rows(spark.createDataFrame([], keys), as_of=AS_OF, surface="reels")


def test_no_champion_names_the_registered_model_and_the_tracking_uri(settings, tmp_path):
    from darkroom.settings import load_settings
    from darkroom.tracking import tracking_uri

    empty = load_settings(state_dir=tmp_path, jars_path=settings.jars_dir, ranker={"registered_model": "ranker_pc"})
    with pytest.raises(NoChampionError) as e:
        resolve_model(empty)
    assert "'ranker_pc' has no @champion" in str(e.value) and tracking_uri(empty) in str(e.value)
    with pytest.raises(RankerModelError, match="'ranker_pc' has no version '7'"):
        resolve_model(empty, "models:/ranker_pc/7")
    # a URI outside the registry is used as given
    assert resolve_model(empty, "runs:/abc/ranker").uri == "runs:/abc/ranker"
