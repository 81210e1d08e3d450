"""``darkroom airflow up`` / ``down`` for real: ``airflow standalone`` on the project's DAGs in a state of its own,
on a free loopback port; the API answers healthy, the printed login gets a token, every DAG file's DAG is listed,
a second ``up`` reuses the instance, ``down`` stops every process of it."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from darkroom.airflow_standalone import _group_alive, down, health, running_pid, up, url
from darkroom.cli import app
from darkroom.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.heavy]  # airflow standalone: about a minute of both cores

EXPECTED_DAGS = {
    "ingest",
    "dbt_build",
    "storage_tiering",
    "blob_scrub",
    "fanout_threshold_tuning",
    "feature_materialize",
    "ranker_weekly",
    "ranker_hourly",
    "two_tower_weekly",
    "feed_publish",
    "story_expiry",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"{base}{path}", data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def standalone(settings, tmp_path_factory):
    s = load_settings(
        state_dir=tmp_path_factory.mktemp("airflow-up-state"),
        jars_path=settings.jars_dir,
        airflow={"port": _free_port()},
    )
    first = up(s, progress=lambda *_: None)
    yield s, first
    down(s, progress=lambda *_: None)


def test_up_serves_a_healthy_api_with_the_printed_login_and_every_dag(standalone):
    s, first = standalone
    assert first.url == url(s) == f"http://127.0.0.1:{s.airflow.port}"
    doc = health(s)
    assert doc["metadatabase"]["status"] == doc["scheduler"]["status"] == "healthy"
    token = _api(first.url, "/auth/token", body={"username": first.user, "password": first.password})["access_token"]
    # the dag-processor parses the folder after the api-server answers: wait for it (bounded)
    deadline, found = time.monotonic() + 180, set()
    while time.monotonic() < deadline:
        found = {d["dag_id"] for d in _api(first.url, "/api/v2/dags?limit=100", token)["dags"]}
        if EXPECTED_DAGS <= found:
            break
        time.sleep(1)
    assert EXPECTED_DAGS <= found, sorted(EXPECTED_DAGS - found)
    errors = _api(first.url, "/api/v2/importErrors", token)
    assert errors["total_entries"] == 0, errors
    dags = _api(first.url, "/api/v2/dags?limit=100", token)["dags"]
    assert all(d["is_paused"] for d in dags if d["dag_id"] in EXPECTED_DAGS)


def test_a_second_up_reuses_the_running_instance_and_status_reports_it(standalone):
    s, first = standalone
    assert up(s, progress=lambda *_: None).pid == first.pid == running_pid(s)
    env = {"DARKROOM_STATE_DIR": str(s.state_dir), "DARKROOM_AIRFLOW__PORT": str(s.airflow.port)}
    result = CliRunner().invoke(app, ["airflow", "status"], env=env)
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert (status["running"], status["pid"]) == (True, first.pid)


def test_down_stops_every_component_and_frees_the_port(standalone):
    s, first = standalone
    assert down(s, progress=lambda *_: None) == first.pid
    assert running_pid(s) is None and not _group_alive(first.pid)
    assert health(s) is None
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", s.airflow.port))  # free again
    assert down(s, progress=lambda *_: None) is None  # nothing to stop
