"""The plans ``darkroom demo`` and ``darkroom backfill`` run (``darkroom.platform_run``): order and coverage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from darkroom.platform_run import DAILY, WEEKLY, PlannedRun, backfill_plan, rerun_plan, week_plan

MONDAY = datetime(2026, 10, 26, tzinfo=UTC)


def test_week_plan_is_in_logical_time_order_with_every_dag():
    plan = week_plan(MONDAY, days=7, hours=2)
    assert [r.logical_date for r in plan] == sorted(r.logical_date for r in plan)
    assert plan[0] == PlannedRun("ingest", MONDAY, why=plan[0].why)
    assert {r.dag_id for r in plan} == {"ingest", "dbt_build", "ranker_hourly", "feed_publish", *DAILY, *WEEKLY}
    days = {r.logical_date.date() for r in plan}
    assert len(days) == 7
    for dag in DAILY:
        assert [r.logical_date for r in plan if r.dag_id == dag] == [MONDAY + timedelta(days=d) for d in range(7)]
    for dag in WEEKLY:
        assert [r.logical_date for r in plan if r.dag_id == dag] == [MONDAY]
    hourly = [r for r in plan if r.dag_id == "ranker_hourly"]
    assert [r.logical_date for r in hourly] == [MONDAY + timedelta(hours=1), MONDAY + timedelta(hours=2)]
    # the hourly dbt build rebuilds only what the fine-tune reads; the daily one the whole project
    assert {json_conf(r) for r in plan if r.dag_id == "dbt_build" and r.logical_date.hour} == {
        '{"select": "+fct_engagement_labels +fct_story_ring_signals"}'
    }
    # within a day: the build first, the weekly trainings before the publish that reads their champion
    monday = [r.dag_id for r in plan if r.logical_date == MONDAY]
    assert monday.index("dbt_build") < monday.index("storage_tiering")
    assert monday.index("ranker_weekly") < monday.index("feed_publish")
    assert monday.index("fanout_threshold_tuning") < monday.index("feed_publish")


def json_conf(r: PlannedRun) -> str:
    import json

    return json.dumps(r.conf, sort_keys=True)


def test_rerun_plan_is_the_days_runs_in_order():
    plan = week_plan(MONDAY, days=3, hours=1)
    day = MONDAY + timedelta(days=2)
    again = rerun_plan(plan, day)
    assert [r.dag_id for r in again] == ["dbt_build", *DAILY, "feed_publish"]
    assert {r.logical_date for r in again} == {day}


def test_plans_refuse_bad_input_naming_it():
    with pytest.raises(ValueError, match="midnight"):
        week_plan(MONDAY + timedelta(hours=3))
    with pytest.raises(ValueError, match="days >= 1"):
        week_plan(MONDAY, days=0)
    with pytest.raises(ValueError, match=r"unknown DAG\(s\) \['nope'\]"):
        backfill_plan(["nope"], MONDAY, MONDAY)
    with pytest.raises(ValueError, match="before"):
        backfill_plan(["dbt_build"], MONDAY, MONDAY - timedelta(days=1))
    with pytest.raises(ValueError, match="day or hour"):
        backfill_plan(["dbt_build"], MONDAY, MONDAY, every="week")


def test_backfill_plan_walks_the_range_interval_by_interval():
    plan = backfill_plan(["dbt_build", "storage_tiering"], MONDAY, MONDAY + timedelta(days=2))
    assert [(r.dag_id, r.logical_date.day) for r in plan] == [
        ("dbt_build", 26),
        ("storage_tiering", 26),
        ("dbt_build", 27),
        ("storage_tiering", 27),
        ("dbt_build", 28),
        ("storage_tiering", 28),
    ]
    hours = backfill_plan(["ranker_hourly"], MONDAY, MONDAY + timedelta(hours=3), every="hour")
    assert len(hours) == 4
