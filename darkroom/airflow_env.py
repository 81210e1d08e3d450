"""Run Airflow on darkroom's DAGs from a settings object: the environment, the metadata DB, ``airflow dags test``.

Everything Airflow keeps (``airflow.cfg``, the SQLite DB, logs) lives in ``settings.airflow_home``. The task processes
rebuild the caller's settings exactly: every setting is passed as a ``DARKROOM_*`` environment variable (nested
settings as JSON), and inherited ``DARKROOM_*`` / ``AIRFLOW__*`` variables are dropped, so ``load_settings()`` in a
task equals the ``settings`` given here.

Every Airflow process also gets the ``spark_default`` connection (``AIRFLOW_CONN_SPARK_DEFAULT``: Spark at
``settings.spark.master``), through which the DAGs' ``SparkSubmitOperator`` tasks submit their jobs, unless the caller's
environment defines that variable already: then theirs stays, which is how the jobs are pointed at a cluster.

    from darkroom.airflow_env import run_dag_test
    run_dag_test(settings, "ingest", "2026-11-01", conf={"landing_dir": "/data/landing"})

In a shell: ``eval "$(.venv/bin/python -m darkroom.airflow_env [--config F])"`` sets the same variables (and unsets
stray ``DARKROOM_*`` / ``AIRFLOW__*`` ones); then ``airflow db migrate`` once, and ``airflow dags test ingest DATE``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import date, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from darkroom.settings import CONFIG_ENV, PROJECT_ROOT, DarkroomSettings, load_settings

DAGS_DIR = PROJECT_ROOT / "dags"
_ENV_PREFIX = "DARKROOM_"
# Variables from the caller's shell that would change what Airflow or the task settings see.
_DROPPED_PREFIXES = (_ENV_PREFIX, "AIRFLOW__", "AIRFLOW_HOME", "AIRFLOW_CONFIG")
# The connection SparkSubmitOperator uses; an ``AIRFLOW_CONN_*`` variable is not dropped, so a caller's value is kept.
SPARK_CONN_ID = "spark_default"
SPARK_CONN_ENV = f"AIRFLOW_CONN_{SPARK_CONN_ID.upper()}"
SPARK_POOL = "spark"


def airflow_db_path(settings: DarkroomSettings) -> Path:
    return settings.airflow_home / "airflow.db"


def settings_env(settings: DarkroomSettings) -> dict[str, str]:
    """``DARKROOM_*`` variables from which ``load_settings()`` rebuilds ``settings`` exactly.

    Scalars are plain strings; nested settings are JSON (pydantic-settings decodes JSON for nested models).
    ``jars_path`` is left out when unset, its default.
    """
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        key = f"{_ENV_PREFIX}{name.upper()}"
        env[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
    return env


def project_python_path() -> str:
    """``PYTHONPATH`` with the project root first (``dags``, ``jobs``, ... import from it), then the caller's."""
    return os.pathsep.join([str(PROJECT_ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])


def spark_connection(settings: DarkroomSettings) -> str:
    """The ``spark_default`` connection as ``AIRFLOW_CONN_SPARK_DEFAULT`` (JSON): Spark at ``settings.spark.master``.

    SparkSubmitHook takes the host of a ``spark`` connection as the whole master URL (``local[*]``, ``spark://h:7077``,
    ``yarn``, ``k8s://...``), so the submitted jobs run where darkroom's own sessions do: ``local[*]`` by default,
    which is ``local[2]`` on a 2-core machine, the ``spark`` pool letting one such job run at a time.
    """
    return json.dumps({"conn_type": "spark", "host": settings.spark.master})


def airflow_env(settings: DarkroomSettings) -> dict[str, str]:
    """The variables to set for running Airflow on darkroom's DAGs (merge them over a clean environment).

    Pure: nothing is created; ``ensure_airflow_db`` creates the Airflow home and the DB. ``AIRFLOW_CONN_SPARK_DEFAULT``
    is left out when the caller's environment has it (theirs wins: a cluster's master).
    """
    home = settings.airflow_home
    spark_conn = {} if SPARK_CONN_ENV in os.environ else {SPARK_CONN_ENV: spark_connection(settings)}
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": str(settings.airflow.task_retries),
        "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": str(settings.airflow.retry_delay_seconds),
        # Four slashes: sqlite:// plus an absolute path.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_db_path(settings)}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        # No telemetry calls, no provider-less surprises on a machine without network.
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
        "SCARF_ANALYTICS": "false",
        "PYTHONPATH": project_python_path(),
        **spark_conn,
        **settings_env(settings),
    }


def subprocess_env(settings: DarkroomSettings) -> dict[str, str]:
    """The full environment for an Airflow subprocess: the caller's, minus darkroom/Airflow variables, plus ours."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES) and k != CONFIG_ENV}
    return {**base, **airflow_env(settings)}


def airflow_bin() -> str:
    local = Path(sys.executable).parent / "airflow"
    return str(local) if local.exists() else "airflow"


def pools(settings: DarkroomSettings) -> dict[str, tuple[int, str]]:
    """The pools the DAGs name (created with the DB): name -> (slots, description)."""
    return {
        "ranker_training": (
            1,
            "one ranker training at a time: the hourly fine-tune never runs over the weekly retrain",
        ),
        SPARK_POOL: (
            settings.airflow.spark_pool_slots,
            "spark-submit jobs running at once, each a Spark driver JVM (settings airflow.spark_pool_slots)",
        ),
    }


def _stamp_path(settings: DarkroomSettings) -> Path:
    return settings.airflow_home / ".db-migrated"


def ensure_airflow_db(settings: DarkroomSettings, *, timeout: float = 600) -> Path:
    """Create or upgrade the Airflow metadata DB (``airflow db migrate``); a no-op once done for this Airflow version.

    A stamp file next to the DB records the Airflow version it was migrated with; a new version or a missing DB
    migrates again. Returns the DB path.
    """
    db = airflow_db_path(settings)
    stamp = _stamp_path(settings)
    wanted_pools = pools(settings)
    slots = ",".join(f"{name}={n}" for name, (n, _) in sorted(wanted_pools.items()))
    wanted = f"apache-airflow-core {version('apache-airflow-core')} {db} pools {slots}"
    if db.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return db
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [airflow_bin(), "db", "migrate"],
        env=subprocess_env(settings),
        cwd=settings.airflow_home,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"`airflow db migrate` failed (exit {proc.returncode}) for {db}:\n{tail}")
    for name, (n, description) in wanted_pools.items():
        proc = subprocess.run(
            [airflow_bin(), "pools", "set", name, str(n), description],
            env=subprocess_env(settings),
            cwd=settings.airflow_home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"`airflow pools set {name}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    stamp.write_text(wanted + "\n")
    return db


def dag_test_log_path(settings: DarkroomSettings, dag_id: str, logical_date: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in logical_date)
    return settings.airflow_home / "logs" / "dags_test" / f"{dag_id}__{safe}.log"


def run_dag_test(
    settings: DarkroomSettings,
    dag_id: str,
    logical_date: str | date | datetime,
    conf: dict | None = None,
    *,
    timeout: float | None = 1800,
) -> subprocess.CompletedProcess[str]:
    """Run one DAG run in-process with ``airflow dags test`` and return it (stdout and stderr merged, as text).

    The output is also written to ``<airflow_home>/logs/dags_test/<dag_id>__<logical_date>.log``. The return code is
    not checked: ``returncode != 0`` or a task not in state success is the caller's to judge.
    """
    ensure_airflow_db(settings)
    when = logical_date.isoformat() if isinstance(logical_date, date | datetime) else str(logical_date)
    cmd = [airflow_bin(), "dags", "test", dag_id, when]
    if conf:
        cmd += ["-c", json.dumps(conf)]
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        env=subprocess_env(settings),
        cwd=settings.airflow_home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    log = dag_test_log_path(settings, dag_id, when)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        f"$ {' '.join(cmd)}\n# exit {proc.returncode} after {time.monotonic() - started:.1f}s\n{proc.stdout}"
    )
    return proc


def shell_exports(settings: DarkroomSettings) -> str:
    """``unset``/``export`` lines that turn the current shell's environment into ``subprocess_env(settings)``."""
    wanted = airflow_env(settings)
    stray = sorted(k for k in os.environ if (k.startswith(_DROPPED_PREFIXES) or k == CONFIG_ENV) and k not in wanted)
    lines = [f"unset {k}" for k in stray]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in wanted.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m darkroom.airflow_env",
        description='Print the shell lines that configure Airflow for darkroom\'s DAGs: eval "$(python -m ...)"',
    )
    parser.add_argument("--config", type=Path, default=None, help="settings YAML (else DARKROOM_CONFIG / local)")
    args = parser.parse_args(argv)
    print(shell_exports(load_settings(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def task_states(settings: DarkroomSettings, dag_id: str, run_id: str) -> dict[str, str]:
    """task_id -> state (``none`` when never set) of one run of ``dag_id`` in the settings' Airflow DB."""
    import sqlite3

    with sqlite3.connect(airflow_db_path(settings)) as db:
        rows = db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        return {t: s or "none" for t, s in rows.fetchall()}


def asset_events(settings: DarkroomSettings, dag_id: str, run_id: str) -> list[tuple[str, str, dict]]:
    """The asset events one run of ``dag_id`` emitted: (task_id, asset name, extra), sorted."""
    import sqlite3

    with sqlite3.connect(airflow_db_path(settings)) as db:
        rows = db.execute(
            "SELECT e.source_task_id, a.name, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE e.source_dag_id = ? AND e.source_run_id = ?",
            (dag_id, run_id),
        ).fetchall()
    return sorted((t, name, json.loads(extra) if extra else {}) for t, name, extra in rows)


def last_dag_run(settings: DarkroomSettings, dag_id: str) -> tuple[str, dict[str, str]]:
    """(state, task_id -> state) of the latest run of ``dag_id`` in the settings' Airflow DB (e.g. after
    ``run_dag_test``)."""
    import sqlite3

    with sqlite3.connect(airflow_db_path(settings)) as db:
        found = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchall()
    if not found:
        raise LookupError(f"no run of DAG {dag_id!r} in {airflow_db_path(settings)}")
    [(run_id, state)] = found
    return state, task_states(settings, dag_id, run_id)


def task_return_value(settings: DarkroomSettings, dag_id: str, task_id: str) -> Any:
    """What ``task_id`` returned (its ``return_value`` XCom, decoded from JSON) in the latest run of ``dag_id``."""
    import sqlite3

    with sqlite3.connect(airflow_db_path(settings)) as db:
        rows = db.execute(
            "SELECT x.value FROM xcom x JOIN dag_run r ON r.id = x.dag_run_id WHERE x.dag_id = ? AND x.task_id = ? "
            "AND x.key = 'return_value' ORDER BY r.id DESC LIMIT 1",
            (dag_id, task_id),
        ).fetchall()
    if not rows:
        raise LookupError(f"no return value of {dag_id}.{task_id} in {airflow_db_path(settings)}")
    value = rows[0][0]
    return json.loads(value.decode() if isinstance(value, bytes) else value)
