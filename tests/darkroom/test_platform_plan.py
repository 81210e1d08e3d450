"""The plans ``darkroom demo`` and ``darkroom backfill`` run (``darkroom.platform_run``): order and coverage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

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
    # story_expiry (on ingest's stories) before the day's compaction in storage_tiering, every day
    for day in days:
        dags = [r.dag_id for r in plan if r.logical_date.date() == day]
        assert dags.index("story_expiry") < dags.index("storage_tiering")


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


_HUNG_PLAN = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("[plan] [1/1] a run that never ends", flush=True)
print(f"grandchild {child.pid}", flush=True)
time.sleep(600)
"""


def test_a_hung_plan_is_killed_with_its_children_at_the_timeout(tmp_path):
    """The plan's child and everything it started (JVMs, spark-submits) go when the timeout passes, even while the
    child prints nothing: the watchdog does not wait for the output to end."""
    import os
    import sys

    from darkroom.platform_run import stream_child

    lines: list[str] = []
    log = tmp_path / "plan.log"
    with pytest.raises(TimeoutError):
        stream_child(
            [sys.executable, "-c", _HUNG_PLAN],
            env=dict(os.environ),
            cwd=tmp_path,
            log_file=log,
            progress=lines.append,
            timeout=3,
        )
    assert lines == ["[1/1] a run that never ends"]
    grandchild = int(log.read_text().split("grandchild ")[1].split()[0])
    # Killed and reaped by its parent's death (init adopts it): either way no longer running.
    status = Path(f"/proc/{grandchild}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()


def test_a_plan_child_streams_its_progress_lines_and_returns_its_code(tmp_path):
    import os
    import sys

    from darkroom.platform_run import stream_child

    lines: list[str] = []
    code = stream_child(
        [sys.executable, "-c", "print('noise'); print('[plan] one'); print('[plan] two'); raise SystemExit(3)"],
        env=dict(os.environ),
        cwd=tmp_path,
        log_file=tmp_path / "plan.log",
        progress=lines.append,
    )
    assert (code, lines) == (3, ["one", "two"])
    assert (tmp_path / "plan.log").read_text().splitlines() == ["noise", "[plan] one", "[plan] two"]
