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
    # the hourly dbt build rebuilds only what the fine-tune and the publish read, without the staging views (the
    # hour's ingest found nothing new); Monday's (after the ingest) the whole project; the later days' (no new
    # bronze) intermediate and marts, and the tests of the blob store's placement table
    builds = {r.logical_date: json_conf(r) for r in plan if r.dag_id == "dbt_build"}
    assert {c for t, c in builds.items() if t.hour} == {
        '{"exclude": "staging", "select": "+fct_engagement_labels +fct_story_ring_signals"}'
    }
    assert builds[MONDAY] == "null"
    assert {c for t, c in builds.items() if t.date() > MONDAY.date()} == {
        '{"select": "source:meta intermediate marts"}'
    }
    # within a day: the build first, the weekly trainings before the publish that reads their champion
    monday = [r.dag_id for r in plan if r.logical_date == MONDAY]
    assert monday.index("dbt_build") < monday.index("storage_tiering")
    assert monday.index("ranker_weekly") < monday.index("feed_publish")
    assert monday.index("fanout_threshold_tuning") < monday.index("feed_publish")
    # feed_publish where its schedule (the ranker's champion) fires: after the weekly retrain and each fine-tune;
    # and on the week's last day, on its last fan-out policy
    assert [r.logical_date for r in plan if r.dag_id == "feed_publish"] == [
        MONDAY,
        MONDAY + timedelta(hours=1),
        MONDAY + timedelta(hours=2),
        MONDAY + timedelta(days=6),
    ]
    published = [i for i, r in enumerate(plan) if r.dag_id == "feed_publish"]
    assert all(plan[i - 1].dag_id in ("two_tower_weekly", "ranker_hourly", "feature_materialize") for i in published)
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
    import select
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
    # SIGKILL is delivered asynchronously: wait on the grandchild's pidfd, which becomes readable when it exits.
    try:
        pidfd = os.pidfd_open(grandchild)
    except ProcessLookupError:
        return  # already gone
    try:
        readable, _, _ = select.select([pidfd], [], [], 60)
    finally:
        os.close(pidfd)
    assert readable, f"the plan's grandchild {grandchild} is still running after the timeout killed the plan"


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


def test_demo_refuses_a_state_folder_holding_another_world(tmp_path):
    """The demo generates its world into the state folder's landing: over tables or blobs made from another world
    (or another scale's numbers) it would mix the two, so it stops first, naming the folder and what to do."""
    from typer.testing import CliRunner

    from darkroom.cli import app

    state = tmp_path / "state"
    (state / "lake" / "bronze").mkdir(parents=True)
    (state / "landing").mkdir()
    (state / "landing" / "_world.json").write_text('{"scale": "small", "seed": 42, "days": null}\n')  # no parameters
    result = CliRunner().invoke(app, ["demo", "--days", "1", "--hours", "0"], env={"DARKROOM_STATE_DIR": str(state)})
    assert result.exit_code == 2, result.output
    assert "holds tables or blobs of another world" in result.output and "make clean" in result.output
    assert not (state / "landing" / "users").exists()  # nothing generated
