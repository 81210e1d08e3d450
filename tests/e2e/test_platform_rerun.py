"""The platform end to end over two days, then the second day run again, as a backfill or a retry would: every check
of ``test_platform.py`` on that world, and every Delta table's rows, every blob file and every Redis key must be
exactly as the first run left them. The re-run spark-submits every Spark task (``airflow.spark_tasks=submit``), the
first run ran them in the plan's process: the two leave the same state.

Heavy (about 17 min of both cores: 20 DAG runs, the 6-run re-run, the digests): ``make test-heavy``.
"""

from __future__ import annotations

import json

import pytest

from darkroom.platform_run import DAILY
from tests.e2e.conftest import build_platform
from tests.e2e.test_platform import *  # noqa: F403 (the suite's checks, collected again on this module's world)

pytestmark = [pytest.mark.integration, pytest.mark.heavy]


@pytest.fixture(scope="module")
def platform(settings, spark, tmp_path_factory):
    yield from build_platform(settings, spark, tmp_path_factory, days=2, rerun=True)


def test_rerunning_the_last_day_changes_no_table_file_or_key(platform):
    rerun = platform["rerun"]
    assert {r.dag_id for r in rerun} == {"dbt_build", *DAILY, "feed_publish"}
    assert all(o.state == "success" for o in platform["rerun_outcomes"])
    first, second = platform["first"], platform["second"]
    assert first["files"], "no blob files"
    changed = {k: (first["delta"].get(k), v) for k, v in second["delta"].items() if first["delta"].get(k) != v}
    assert not changed, f"Delta tables whose rows changed on the re-run: {json.dumps(changed)}"
    assert second["files"] == first["files"]
    # Redis: every key as it was, but keys that expire (a superseded version's, a story's ring) may have gone by the
    # wall clock meanwhile; the re-run added none.
    gone = {k for k in first["redis"] if k not in second["redis"]}
    assert all(first["redis"][k][2] for k in gone), sorted(k for k in gone if not first["redis"][k][2])[:10]
    assert {k: v for k, v in first["redis"].items() if k not in gone} == second["redis"]


def test_the_rerun_spark_submitted_every_spark_task(platform):
    """The re-run ran with ``airflow.spark_tasks=submit``: every task that ran, but the short-circuits, is one
    spark-submit of ``darkroom/spark_task.py`` (or of a job's main.py), and dbt's build ran in its submitted driver."""
    log = platform["rerun_log"]
    submits = [line for line in log.splitlines() if "Spark-Submit cmd:" in line]
    ran = [
        (o.dag_id, t)
        for o in platform["rerun_outcomes"]
        for t, state in o.tasks.items()
        if state == "success" and t not in ("day_complete", "week_complete")
    ]
    assert len(submits) == len(ran), (len(submits), ran)  # each once: no task needed a retry
    assert any("--call darkroom.dbt_runner:build " in line and " --dbt-session" in line for line in submits)
    for call in ("jobs.storage.main:ec_rewrite_task", "feature_store.online:materialize_task", "serving.publisher:"):
        assert any(f"--call {call}" in line for line in submits), call
