"""Contracts load, and the great-expectations suite built from a contract agrees with the Spark row checks."""

from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import functions as F

from darkroom.contract_spec import Contract, ContractError, contract_names, load_contract
from darkroom.tables import input_datasets
from data_contracts.checks import RULES_COL, with_violations
from data_contracts.suites import ContractValidator, expectation_suite

T0 = datetime(2026, 10, 1)


def test_every_input_of_the_design_has_a_contract():
    assert set(contract_names()) == {
        "users",
        "follows",
        "posts",
        "media",
        "media_access",
        "impressions",
        "feed_reads",
        "stories",
        "story_views",
        "profile_visits",
        "dm_events",
        "oracle",
    }


def test_ingest_order_puts_referenced_datasets_first():
    order = input_datasets()
    for name in order:
        for ref in load_contract(name).references:
            assert order.index(ref.table) < order.index(name), (name, ref.table)


def test_a_malformed_contract_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="min/max need a numeric type"):
        Contract.model_validate(
            {
                "dataset": "x",
                "description": "d",
                "key": ["a"],
                "columns": [{"name": "a", "type": "string", "min": 1}],
            }
        )
    with pytest.raises(ContractError, match="no contract for dataset 'nope'"):
        load_contract("nope")


def test_suite_mirrors_every_rule_with_meta():
    suite = expectation_suite(load_contract("impressions"))
    rules = {e.meta["rule"] for e in suite.expectations}
    assert {"columns", "not_null:viewer_id", "range:position", "accepted_values:surface", "duplicate_key"} <= rules


@pytest.mark.integration
def test_great_expectations_counts_match_quarantine_counts(spark, settings, tmp_path):
    contract = load_contract("posts")
    rows = [
        (1, 10, T0, "ok", 1),
        (2, 10, T0, None, 11),  # media_count out of range
        (3, 10, T0, "x" * 2201, 1),  # caption too long
        (4, 10, T0, "dup", 0),  # out of range and duplicate key
        (4, 10, T0, "dup", 2),
        (None, 10, T0, "no key", 1),
    ]
    df = spark.createDataFrame(
        rows, "post_id long, author_id long, created_at timestamp, caption string, media_count int"
    )
    users = spark.createDataFrame([(10,)], "user_id long")
    checked = with_violations(df, contract, references={"users": users})
    ours = {
        r["rule"]: r["n"]
        for r in checked.select(F.explode(RULES_COL).alias("rule"))
        .groupBy("rule")
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    }
    assert ours == {"range:media_count": 2, "max_length:caption": 1, "duplicate_key": 2, "not_null:post_id": 1}

    report = ContractValidator(settings.model_copy(update={"state_dir": tmp_path})).validate(
        contract, df, run_name="test"
    )
    assert not report.success
    theirs = report.failed_rules()
    for rule in ("range:media_count", "max_length:caption", "not_null:post_id", "duplicate_key"):
        assert theirs[rule] == ours[rule], rule
    assert report.docs_index.exists() and report.docs_index.name == "index.html"
