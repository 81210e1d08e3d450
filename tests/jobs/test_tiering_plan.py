"""The storage tiering plan with real Spark and Delta: every rule and boundary of ``decide`` on hand-made mart rows,
the dry-run figures against hand-computed values, an idempotent write, and validation refusing bad plans."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from delta.tables import DeltaTable
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from darkroom.settings import load_settings
from jobs.tiering_plan import transform as T
from jobs.tiering_plan.main import (
    TIER_DECISIONS,
    PlanValidationError,
    plan,
    policy,
    read_plan,
    validate_plan,
    write_decisions,
)

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
PLAN_DATE = date(2026, 10, 31)
GB = 10**9

MART_SCHEMA = (
    "media_id BIGINT, size_bytes BIGINT, created_at TIMESTAMP, age_days DOUBLE, last_accessed_at TIMESTAMP, "
    "days_since_last_access DOUBLE, reads_1d BIGINT, reads_7d BIGINT, reads_30d BIGINT, reads_90d BIGINT, "
    "read_rate_1d DOUBLE, read_rate_7d DOUBLE, read_rate_30d DOUBLE, read_rate_90d DOUBLE, current_tier STRING, "
    "tier_since TIMESTAMP, as_of TIMESTAMP"
)


def mart_row(media_id, gb, tier, *, age, reads_7d=0, since_read=None, in_tier=None, as_of=AS_OF) -> tuple:
    """A dim_media_tiering row: ``age`` and ``in_tier`` (default: since creation) in days before as_of."""
    last = None if since_read is None else as_of - timedelta(days=since_read)
    in_tier = age if in_tier is None else in_tier
    reads_1d, reads_30d, reads_90d = reads_7d // 7, reads_7d, reads_7d
    return (
        media_id,
        gb * GB,
        as_of - timedelta(days=age),
        float(age),
        last,
        None if since_read is None else float(since_read),
        reads_1d,
        reads_7d,
        reads_30d,
        reads_90d,
        reads_1d / 1,
        reads_7d / 7,
        reads_30d / 30,
        reads_90d / 90,
        tier,
        as_of - timedelta(days=in_tier),
        as_of,
    )


# id, GB, tier now, age, reads in 7 days, days since the last read, days in tier: one row per rule and boundary.
MART_ROWS = [
    mart_row(1, 1, "hot", age=3, since_read=None),  # a recent upload, never read
    mart_row(2, 2, "hot", age=7),  # exactly 7 days old, never read: the rules apply
    mart_row(3, 1, "hot", age=40, reads_7d=70, since_read=0.5),  # exactly 10 reads/day: not above the bar
    mart_row(4, 1, "hot", age=40, reads_7d=77, since_read=0.5),  # 11 reads/day
    mart_row(5, 2, "warm", age=60, reads_7d=84, since_read=0.1, in_tier=20),  # 12/day: hysteresis keeps it warm
    mart_row(6, 1, "warm", age=60, reads_7d=175, since_read=0.1, in_tier=2),  # 25/day: promoted despite 2 days
    mart_row(7, 5, "hot", age=200, since_read=97.2),
    mart_row(8, 3, "warm", age=150, since_read=90, in_tier=30),  # exactly 90 idle days
    mart_row(9, 1, "warm", age=120, since_read=89.9, in_tier=30),
    mart_row(10, 1, "hot", age=100, since_read=10, in_tier=3),  # promoted 3 days ago, cool now: held
    mart_row(11, 4, "cold", age=300, reads_7d=500, since_read=0.2, in_tier=100),  # cold stays cold
    mart_row(12, 2, "hot", age=95),  # never read in 95 days
    mart_row(13, 1, "hot", age=40, reads_7d=1, since_read=6),  # exactly 1 read a week
    mart_row(14, 1, "warm", age=60, reads_7d=140, since_read=0.1, in_tier=30),  # exactly 20 reads/day
]

# media_id, current, target, action, rule, reason: written by hand from the rules.
EXPECTED = [
    (1, "hot", "hot", "keep", "recent_upload", "recent_upload: 3.0 days old < 7"),
    (2, "hot", "warm", "demote_warm", "cool_reads", "cool_reads: 0 reads in 7 days < 1/week"),
    (3, "hot", "hot", "keep", "between_bands", "between_bands: 10.0 reads/day, 70 reads in 7 days"),
    (4, "hot", "hot", "keep", "hot_reads", "hot_reads: 11.0 reads/day > 10"),
    (5, "warm", "warm", "keep", "hysteresis", "hysteresis: 12.0 reads/day > 10 but <= 20 (10 x 2)"),
    (6, "warm", "hot", "promote_hot", "promote_reads", "promote_reads: 25.0 reads/day > 20 (10 x 2)"),
    (7, "hot", "cold", "archive_cold", "idle_90d", "idle_90d: last read 97.2 days ago"),
    (8, "warm", "cold", "archive_cold", "idle_90d", "idle_90d: last read 90.0 days ago"),
    (9, "warm", "warm", "keep", "cool_reads", "cool_reads: 0 reads in 7 days < 1/week"),
    (
        10,
        "hot",
        "hot",
        "keep",
        "min_days_in_tier",
        "min_days_in_tier: 3.0 days in hot < 7, waits to move to warm (cool_reads: 0 reads in 7 days < 1/week)",
    ),
    (11, "cold", "cold", "keep", "cold_stays", "cold_stays: restores are on demand, never planned"),
    (12, "hot", "cold", "archive_cold", "idle_90d", "idle_90d: never read in 95.0 days"),
    (13, "hot", "hot", "keep", "between_bands", "between_bands: 0.1 reads/day, 1 reads in 7 days"),
    (14, "warm", "warm", "keep", "hysteresis", "hysteresis: 20.0 reads/day > 10 but <= 20 (10 x 2)"),
]
EXPECTED_COLUMNS = ["media_id", "current_tier", "target_tier", "action", "rule", "reason"]


@pytest.fixture(scope="module")
def st(settings, tmp_path_factory):
    """Settings with a lake and reports of this module's own (the Spark session is shared); seed defaults."""
    return load_settings(
        state_dir=tmp_path_factory.mktemp("tiering-state"),
        jars_path=settings.jars_path,
        spark=settings.spark.model_dump(),
    )


def write_mart(spark, st, rows) -> None:
    (
        spark.createDataFrame(rows, MART_SCHEMA)
        .write.format("delta")
        .mode("overwrite")
        .save(str(st.lake_dir / "marts" / "dim_media_tiering"))
    )


@pytest.fixture(scope="module")
def planned(spark, st):
    write_mart(spark, st, MART_ROWS)
    first = plan(st, AS_OF, spark)
    second = plan(st, AS_OF, spark)
    return first, second


def test_decide_applies_every_rule_and_boundary(spark, st):
    mart = spark.createDataFrame(MART_ROWS, MART_SCHEMA)
    out = T.decide(mart, **policy(st.tiering))
    assert out.columns == list(T.DECISION_COLUMNS)
    assertDataFrameEqual(out.select(*EXPECTED_COLUMNS), spark.createDataFrame(EXPECTED, EXPECTED_COLUMNS))
    assertDataFrameEqual(
        out.where(F.col("media_id").isin(2, 6, 10)).select("media_id", "days_in_tier", "read_rate_7d", "plan_date"),
        [Row(media_id=2, days_in_tier=7.0, read_rate_7d=0.0, plan_date=PLAN_DATE),
         Row(media_id=6, days_in_tier=2.0, read_rate_7d=25.0, plan_date=PLAN_DATE),
         Row(media_id=10, days_in_tier=3.0, read_rate_7d=0.0, plan_date=PLAN_DATE)],
    )  # fmt: skip


def test_decide_with_a_lower_hysteresis_promotes_and_without_a_minimum_moves_at_once(spark, st):
    mart = spark.createDataFrame([MART_ROWS[4], MART_ROWS[9]], MART_SCHEMA)  # media 5 (12/day, warm), 10 (held)
    params = {**policy(st.tiering), "hysteresis": 1.1, "min_days_in_tier": 0}
    assertDataFrameEqual(
        T.decide(mart, **params).select(*EXPECTED_COLUMNS),
        spark.createDataFrame(
            [
                (5, "warm", "hot", "promote_hot", "promote_reads", "promote_reads: 12.0 reads/day > 11 (10 x 1.1)"),
                (10, "hot", "warm", "demote_warm", "cool_reads", "cool_reads: 0 reads in 7 days < 1/week"),
            ],
            EXPECTED_COLUMNS,
        ),
    )


def test_replication_factors():
    common = {"hot_replicas": 3, "ec_data_blocks": 10, "ec_parity_blocks": 4, "cold_copies": 2}
    assert T.replication_factors(**common) == {"hot": 3.6, "warm": 2.1, "cold": 2.0}
    assert T.replication_factors(**common, cold_compression_ratio=0.5)["cold"] == 1.0
    with pytest.raises(ValueError, match="cold_compression_ratio"):
        T.replication_factors(**common, cold_compression_ratio=0)


def test_plan_figures_match_hand_computed_values(planned):
    f = planned[1].figures
    approx = pytest.approx
    # Before: hot 1+2+1+1+5+1+2+1 GB (8 media), warm 2+1+3+1+1 (5), cold 4 (1).
    assert {t: (f["before"][t]["objects"], f["before"][t]["bytes"]) for t in T.TIERS} == {
        "hot": (8, 14 * GB),
        "warm": (5, 8 * GB),
        "cold": (1, 4 * GB),
    }
    # After: hot 1, 3, 4, 6, 10, 13; warm 2, 5, 9, 14; cold 7, 8, 11, 12.
    assert {t: (f["after"][t]["objects"], f["after"][t]["bytes"]) for t in T.TIERS} == {
        "hot": (6, 6 * GB),
        "warm": (4, 6 * GB),
        "cold": (4, 14 * GB),
    }
    assert f["replication_factor"] == {"hot": 3.6, "warm": 2.1, "cold": 2.0}
    # Stored: before 14 x 3.6 + 8 x 2.1 + 4 x 2 = 75.2 GB; after 6 x 3.6 + 6 x 2.1 + 14 x 2 = 62.2 GB (of 26).
    assert f["before"]["total"]["stored_bytes"] == 75_200_000_000
    assert f["after"]["total"]["stored_bytes"] == 62_200_000_000
    assert f["before"]["total"]["replication_factor"] == approx(75.2 / 26)
    assert f["after"]["total"]["replication_factor"] == approx(62.2 / 26)
    # $/month: after hot 21.6 x 0.023 = 0.4968, warm 12.6 x 0.0125 = 0.1575, cold 28 x 0.004 = 0.112.
    assert {t: f["after"][t]["cost_per_month"] for t in T.TIERS} == approx(
        {"hot": 0.4968, "warm": 0.1575, "cold": 0.112}
    )
    assert f["before"]["total"]["cost_per_month"] == approx(1.1592 + 0.21 + 0.032)
    assert f["all_hot"]["cost_per_month"] == approx(93.6 * 0.023)  # 2.1528
    assert f["saving_per_month_vs_all_hot"] == approx(2.1528 - 0.7663)
    assert f["saving_fraction_vs_all_hot"] == approx(1.3865 / 2.1528, rel=1e-5)
    assert f["saving_per_month_vs_before"] == approx(1.4012 - 0.7663)
    assert f["by_action"] == {
        "keep": {"objects": 9, "bytes": 13 * GB},
        "demote_warm": {"objects": 1, "bytes": 2 * GB},
        "archive_cold": {"objects": 3, "bytes": 10 * GB},
        "promote_hot": {"objects": 1, "bytes": 1 * GB},
    }
    assert f["by_rule"] == {
        "between_bands": 2,
        "cold_stays": 1,
        "cool_reads": 2,
        "hot_reads": 1,
        "hysteresis": 2,
        "idle_90d": 3,
        "min_days_in_tier": 1,
        "promote_reads": 1,
        "recent_upload": 1,
    }


def test_plan_writes_the_report(planned, st):
    files = planned[1].report_files
    assert set(files) == {"json", "png", "html"}
    assert files["html"].parent == st.reports_dir / "tiering" / "2026-10-31"
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files["html"].read_text()
    assert '<img src="tiers.png"' in page and "Saving against all-hot: $1.39/month (64.4%)" in page


def test_plan_write_is_idempotent(planned, spark, st):
    first, second = planned
    assert second.table_version == first.table_version + 1
    table = spark.read.format("delta").load(TIER_DECISIONS.uri(st))
    assert [r["plan_date"] for r in table.select("plan_date").distinct().collect()] == [PLAN_DATE]
    assert DeltaTable.forPath(spark, TIER_DECISIONS.uri(st)).detail().collect()[0]["partitionColumns"] == ["plan_date"]
    v1 = spark.read.format("delta").option("versionAsOf", first.table_version).load(TIER_DECISIONS.uri(st))
    assertDataFrameEqual(table, v1)
    assert table.count() == len(MART_ROWS)
    assertDataFrameEqual(table.select(*EXPECTED_COLUMNS), spark.createDataFrame(EXPECTED, EXPECTED_COLUMNS))


def test_validate_accepts_the_plan(planned, spark, st):
    assert validate_plan(spark, st, PLAN_DATE) == len(MART_ROWS)
    assert validate_plan(spark, st, "2026-10-31") == len(MART_ROWS)


def test_validate_refuses_a_bad_plan_naming_media_and_rules(planned, spark, st):
    bad_date = date(2026, 10, 20)
    good = read_plan(spark, st, PLAN_DATE).withColumn("plan_date", F.lit(bad_date))
    unknown = good.where(F.col("media_id") == 2).withColumn("media_id", F.lit(999).cast("bigint"))
    cold_to_warm = good.where(F.col("media_id") == 11).withColumns(
        {"target_tier": F.lit("warm"), "action": F.lit("demote_warm")}
    )
    twice = good.where(F.col("media_id") == 1)
    empty = good.where(F.col("media_id") == 3).withColumn("size_bytes", F.lit(0).cast("bigint"))
    rest = good.where(~F.col("media_id").isin(1, 2, 3, 11))
    write_decisions(spark, st, rest.unionByName(unknown).unionByName(cold_to_warm).unionByName(twice).unionByName(twice)
                    .unionByName(empty), bad_date)  # fmt: skip

    with pytest.raises(PlanValidationError) as caught:
        validate_plan(spark, st, bad_date)
    assert caught.value.failures == {
        "unknown_media": (1, ["999 (hot->warm)"]),
        "transition_not_allowed": (1, ["11 (cold->warm)"]),
        "duplicate_media": (2, ["1 (hot->hot)", "1 (hot->hot)"]),
        "size_not_positive": (1, ["3 (hot->hot)"]),
    }
    message = str(caught.value)
    assert message.startswith("tier plan 2026-10-20 refused, nothing may move: unknown_media: 1 rows not in")
    assert "transition_not_allowed: 1 rows with a transition not allowed" in message and "11 (cold->warm)" in message
    # The good plan of another day is untouched by this one's write.
    assert validate_plan(spark, st, PLAN_DATE) == len(MART_ROWS)


def test_validate_refuses_an_unknown_tier_and_a_wrong_action(planned, spark, st):
    d = date(2026, 10, 21)
    good = read_plan(spark, st, PLAN_DATE).withColumn("plan_date", F.lit(d))
    lukewarm = good.where(F.col("media_id") == 4).withColumn("target_tier", F.lit("lukewarm"))  # action keep
    wrong_action = good.where(F.col("media_id") == 7).withColumn("action", F.lit("demote_warm"))  # hot->cold
    write_decisions(
        spark, st, good.where(~F.col("media_id").isin(4, 7)).unionByName(lukewarm).unionByName(wrong_action), d
    )
    with pytest.raises(PlanValidationError) as caught:
        validate_plan(spark, st, d)
    assert caught.value.failures == {
        "unknown_target_tier": (1, ["4 (hot->lukewarm)"]),
        "transition_not_allowed": (1, ["4 (hot->lukewarm)"]),
        "action_mismatch": (2, ["4 (hot->lukewarm)", "7 (hot->cold)"]),
    }
    with pytest.raises(PlanValidationError, match="no rows for that date"):
        validate_plan(spark, st, date(2026, 1, 1))


def test_plan_refuses_a_mart_of_another_as_of(planned, st, spark):
    with pytest.raises(ValueError, match=r"is as of 2026-11-01 00:00:00.000000, the plan is as of 2026-11-02"):
        plan(st, AS_OF + timedelta(days=1), spark, with_report=False)
