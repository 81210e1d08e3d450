"""Feature definitions: the ranker's service is consistent, every kind of inconsistency is refused with its name, and
the training-set table registered in darkroom/tables.py has exactly the service's columns."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from darkroom.tables import table
from feature_store.definitions import (
    AUTHOR,
    POST,
    RANKER_V1,
    VIEWER,
    VIEWER_VIEW,
    Entity,
    FeatureDefinitionError,
    FeatureService,
    FeatureView,
    get_service,
    is_valid_type,
    validate_service,
)
from feature_store.transform import training_set_columns


def view(**over) -> FeatureView:
    base = FeatureView(
        name="v",
        entities=(VIEWER,),
        source="marts.dim_user_features",
        source_keys=("user_id",),
        features=(("followers", "bigint"),),
    )
    return replace(base, **over)


def problems_of(*views: FeatureView) -> str:
    with pytest.raises(FeatureDefinitionError) as e:
        validate_service(FeatureService("s", 1, views))
    return str(e.value)


def test_the_ranker_service_is_valid_and_joins_on_viewer_author_post():
    assert get_service("ranker_v1") is RANKER_V1
    assert RANKER_V1.view_names == ("viewer", "author", "post", "viewer_author", "post_hashtags")
    assert RANKER_V1.join_keys == ("viewer_id", "author_id", "post_id")
    assert RANKER_V1.view("viewer_author").join_keys == ("viewer_id", "author_id")
    assert RANKER_V1.view("author").source_keys == ("user_id",)
    assert RANKER_V1.view("post_hashtags").features == (("hashtags", "array<string>"),)
    # Today's region and privacy flag would leak the future into old impressions.
    assert {"region", "is_private"}.isdisjoint(RANKER_V1.view("viewer").feature_names)


def test_unknown_service_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown feature service 'ranker_v9'; known: ranker_v1"):
        get_service("ranker_v9")


def test_every_problem_is_listed_with_its_view_and_feature():
    message = problems_of(
        view(name="a", source_keys=("user_id", "day")),
        view(name="b", features=(("x", "bigintt"), ("x", "double"), ("y__z", "int"), ("feature_ts", "int"))),
        view(name="c", expressions=(("nope", "1"),), ttl=timedelta(0)),
        view(name="c", source="dim_user_features"),
    )
    for expected in (
        "feature view 'a': 2 source keys ['user_id', 'day'] for 1 join keys ['viewer_id']",
        "feature view 'b': feature 'x': unknown type 'bigintt'",
        "feature view 'b': feature 'x' is defined twice",
        "feature view 'b': feature 'y__z': name must be lowercase letters, digits and single underscores",
        "feature view 'b': feature 'feature_ts' takes a reserved column name",
        "feature view 'c': expression for 'nope', which is not a feature of the view",
        "feature view 'c': ttl must be positive",
        "feature service 's': view 'c' appears twice",
        "feature view 'c': source 'dim_user_features' is not a registry name layer.table",
    ):
        assert expected in message


def test_an_entity_must_keep_its_join_keys_across_views():
    other_viewer = Entity("viewer", ("user_id",))
    message = problems_of(view(name="a"), view(name="b", entities=(other_viewer,)))
    assert "entity 'viewer' has join keys ['viewer_id'] in one view and ['user_id'] in view 'b'" in message


def test_a_pair_view_needs_a_source_key_per_join_key():
    pair = view(name="pair", entities=(VIEWER, AUTHOR), source_keys=("viewer_id",))
    assert "1 source keys ['viewer_id'] for 2 join keys ['viewer_id', 'author_id']" in problems_of(pair)
    validate_service(FeatureService("s", 1, (replace(pair, source_keys=("viewer_id", "author_id")),)))


def test_service_name_and_version_are_checked():
    with pytest.raises(FeatureDefinitionError, match="version must be >= 1"):
        validate_service(FeatureService("s", 0, (view(),)))
    with pytest.raises(FeatureDefinitionError, match="name must be lowercase"):
        validate_service(FeatureService("Ranker-1", 1, (view(),)))


def test_projection_keeps_the_chosen_features_in_definition_order():
    small = VIEWER_VIEW.select("like_rate_7d", "followers")
    assert small.features == (("followers", "bigint"), ("like_rate_7d", "double"))
    assert small.output_columns() == [("viewer__followers", "bigint"), ("viewer__like_rate_7d", "double")]
    with pytest.raises(FeatureDefinitionError, match="feature view viewer: no feature likes"):
        VIEWER_VIEW.select("likes")


def test_type_strings():
    for good in ("bigint", "DOUBLE", "array<string>", "array<array<int>>", "decimal(10, 2)", "timestamp"):
        assert is_valid_type(good), good
    for bad in ("long", "array<strin>", "map<string,int>", "struct<a:int>", ""):
        assert not is_valid_type(bad), bad


def test_the_feature_age_column_only_where_asked():
    assert RANKER_V1.view("viewer_author").output_columns()[-1] == ("viewer_author__feature_age_hours", "double")
    assert all(not c.endswith("feature_age_hours") for c, _ in RANKER_V1.view("post").output_columns())
    assert POST in RANKER_V1.view("post_hashtags").entities


@pytest.mark.integration
def test_the_registered_training_set_table_has_the_services_columns(spark):
    t = table("features.training_set_ranker_v1")
    registered = [(f.name, f.dataType.simpleString()) for f in t.schema.fields]
    assert registered == [(n, t.replace(" ", "")) for n, t in training_set_columns(RANKER_V1)]
    assert t.partition_by == ("impression_date",)
    assert t.key == ("viewer_id", "post_id", "impressed_at")
