"""``darkroom/spark_task.py``, the file spark-submit runs for a DAG's Spark task: it rebuilds the settings from the
environment, calls the entry point and writes its outcome (a result, or a skip) whole to the result file; a failing
or missing entry point exits non-zero with the reason and leaves no result. Run here as a plain script (what the
submitted driver runs, without the JVM); the submitted path itself runs in tests/e2e/test_platform.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from darkroom.airflow_env import settings_env
from darkroom.settings import PROJECT_ROOT
from darkroom.spark_task import SPARK_TASK_FILE, TaskSkipped, result_path

AS_OF = "2026-10-26T00:00:00+00:00"
ENTRIES = "tests.darkroom.test_spark_task"  # this module, as the launcher imports it from the project root


def echo(settings, *, as_of: datetime, n: int) -> dict:
    """An entry point: what it was called with."""
    return {
        "as_of": as_of.isoformat(),
        "n": n,
        "state_dir": str(settings.state_dir),
        "tasks": settings.airflow.spark_tasks,
    }


def nothing_new(settings, *, as_of: datetime) -> dict:
    raise TaskSkipped("no new landing file since 2026-10-25")


def broken(settings, *, as_of: datetime) -> dict:
    raise ValueError("bronze.posts row 17: author_id is null")


def not_json(settings, *, as_of: datetime) -> object:
    return {"when": as_of}


def _launch(settings, tmp_path, call: str, kwargs: dict | None = None) -> tuple[subprocess.CompletedProcess, object]:
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(settings_env(settings), PYTHONPATH=str(PROJECT_ROOT))
    cmd = [sys.executable, str(SPARK_TASK_FILE), "--as-of", AS_OF, "--call", call, "--result", str(out)]
    proc = subprocess.run(
        [*cmd, "--kwargs", json.dumps(kwargs or {})], env=env, capture_output=True, text=True, timeout=120
    )
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_the_result_is_the_entry_points_value_with_the_settings_and_as_of(settings, tmp_path):
    submitted = settings.model_copy(update={"airflow": settings.airflow.model_copy(update={"spark_tasks": "submit"})})
    proc, outcome = _launch(submitted, tmp_path, f"{ENTRIES}:echo", {"n": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outcome == {"result": {"as_of": AS_OF, "n": 2, "state_dir": str(settings.state_dir), "tasks": "submit"}}


def test_a_skip_is_written_as_a_skip_with_its_reason(settings, tmp_path):
    proc, outcome = _launch(settings, tmp_path, f"{ENTRIES}:nothing_new")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outcome == {"skipped": "no new landing file since 2026-10-25"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (f"{ENTRIES}:broken", "bronze.posts row 17: author_id is null"),
        (f"{ENTRIES}:not_json", "returned a value that is not JSON"),
        (f"{ENTRIES}:missing", "has no function 'missing'"),
        ("jobs.no_such_job.main:run", "cannot import jobs.no_such_job.main"),
        ("jobs.storage.main", "expected 'package.module:function'"),
    ],
)
def test_a_failing_or_unknown_entry_point_exits_non_zero_and_leaves_no_result(settings, tmp_path, call, message):
    (tmp_path / "result.json").write_text(json.dumps({"result": "an earlier try's"}))
    proc, outcome = _launch(settings, tmp_path, call)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert outcome is None  # an earlier try's result is not taken for this one's


def test_result_files_are_per_dag_run_and_task(settings):
    a = result_path(settings, "ingest", "manual__2026-10-26T00:00:00+00:00", "ingest_users")
    b = result_path(settings, "ingest", "scheduled__2026-10-26T01:00:00+00:00", "ingest_users")
    assert a != b and a.parent.parent == b.parent.parent == settings.airflow_home / "task_results" / "ingest"
    assert a.name == "ingest_users.json" and ":" not in a.parent.name and "+" not in a.parent.name
    assert result_path(settings, "ingest", "r", "t", map_index=3).name == "t.3.json"
