"""Shared fixtures: one real Spark session with Delta for the whole run, settings under a temporary state dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from darkroom.settings import PROJECT_ROOT, load_settings

PROJECT_JARS = Path(os.environ.get("DARKROOM_TEST_JARS", PROJECT_ROOT / ".darkroom" / "jars"))

# The DAG runs of the tests (``airflow dags test``, ``darkroom.platform_run``) run their Spark tasks in the task's
# process, on one session per run, as the demo does: spark-submitting each would start a driver JVM per task (10-15 s
# here). The tests of spark-submitted tasks set ``airflow.spark_tasks="submit"`` themselves.
os.environ.setdefault("DARKROOM_AIRFLOW__SPARK_TASKS", "in_process")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("darkroom-state")


@pytest.fixture(scope="session")
def settings(state_dir):
    return load_settings(
        state_dir=state_dir,
        jars_path=PROJECT_JARS,
        spark={"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "3g"},
        world={"scale": "tiny", "seed": 7},
    )


@pytest.fixture(scope="session")
def spark(settings):
    from darkroom.spark import get_spark

    session = get_spark(settings, "tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server (persistence off, free loopback port) for the whole run."""
    from darkroom.redis_server import LocalRedisServer

    with LocalRedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session server's URL, emptied (FLUSHALL) so each test starts from no keys."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url
