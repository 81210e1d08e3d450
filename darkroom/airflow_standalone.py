"""``darkroom airflow up|down|status``: Airflow 3's ``airflow standalone`` (api-server, scheduler, dag-processor,
triggerer, LocalExecutor) on the project's DAGs, the SQLite DB and the settings the DAG tests use.

``up`` starts it in the background (its own process group, output in ``<airflow_home>/standalone.log``), waits
until the api-server answers its health check and the scheduler heartbeats, and returns the URL and the login (user
``admin``; Airflow's simple auth manager generates the password once, in ``<airflow_home>``). ``down`` stops the
process group (SIGTERM, then SIGKILL after a grace period). Both are safe to repeat: ``up`` on a running instance
returns it, ``down`` on none does nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from darkroom.airflow_env import airflow_bin, ensure_airflow_db, subprocess_env
from darkroom.settings import DarkroomSettings

USER = "admin"


class AirflowUpError(RuntimeError):
    """``airflow standalone`` did not come up; the message names the log to read."""


@dataclass(frozen=True)
class Standalone:
    pid: int
    url: str
    user: str
    password: str | None
    log: Path


def _pid_path(settings: DarkroomSettings) -> Path:
    return settings.airflow_home / "standalone.pid"


def _log_path(settings: DarkroomSettings) -> Path:
    return settings.airflow_home / "standalone.log"


def _password_path(settings: DarkroomSettings) -> Path:
    return settings.airflow_home / "simple_auth_manager_passwords.json.generated"


def url(settings: DarkroomSettings) -> str:
    return f"http://{settings.airflow.host}:{settings.airflow.port}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is not alive
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def running_pid(settings: DarkroomSettings) -> int | None:
    path = _pid_path(settings)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def health(settings: DarkroomSettings, timeout: float = 2.0) -> dict | None:
    """The api-server's ``/api/v2/monitor/health`` document, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"{url(settings)}/api/v2/monitor/health", timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _healthy(doc: dict | None) -> bool:
    return bool(doc) and all(
        (doc.get(component) or {}).get("status") == "healthy" for component in ("metadatabase", "scheduler")
    )


def password(settings: DarkroomSettings) -> str | None:
    try:
        return json.loads(_password_path(settings).read_text()).get(USER)
    except (OSError, ValueError):
        return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def env(settings: DarkroomSettings) -> dict[str, str]:
    """The DAG tests' environment plus the api-server's address and the simple auth manager's one admin user."""
    base = subprocess_env(settings)
    # standalone starts its components as `airflow <command>` from PATH: the venv's, even when it is not activated
    path = os.pathsep.join([str(Path(airflow_bin()).parent), base.get("PATH", os.defpath)])
    return {
        **base,
        "PATH": path,
        "AIRFLOW__API__HOST": settings.airflow.host,
        "AIRFLOW__API__PORT": str(settings.airflow.port),
        "AIRFLOW__API__BASE_URL": url(settings),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url(settings)}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_password_path(settings)),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }


def up(settings: DarkroomSettings, *, timeout: float = 300, progress: Callable[[str], None] = print) -> Standalone:
    """Start ``airflow standalone`` unless it runs already; wait until it is healthy."""
    pid = running_pid(settings)
    if pid is None:
        if not _port_free(settings.airflow.host, settings.airflow.port):
            raise AirflowUpError(
                f"port {settings.airflow.port} on {settings.airflow.host} is taken by another process; set "
                "DARKROOM_AIRFLOW__PORT to a free one"
            )
        ensure_airflow_db(settings)
        log = _log_path(settings)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [airflow_bin(), "standalone"],
                env=env(settings),
                cwd=settings.airflow_home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: `down` stops every component with it
            )
        pid = proc.pid
        _pid_path(settings).write_text(f"{pid}\n")
        progress(f"airflow standalone started (pid {pid}), log {log}; waiting for {url(settings)} ...")
    started = time.monotonic()
    last_report = started
    while True:
        doc = health(settings)
        if _healthy(doc) and password(settings) is not None:
            break
        if not _alive(pid):
            raise AirflowUpError(
                f"airflow standalone (pid {pid}) exited before it was healthy; see {_log_path(settings)}"
            )
        waited = time.monotonic() - started
        if waited > timeout:
            down(settings, progress=lambda *_: None)
            raise AirflowUpError(
                f"airflow standalone was not healthy after {timeout:.0f}s (last health: {doc}); stopped it; see "
                f"{_log_path(settings)}"
            )
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            state = "no answer" if doc is None else ", ".join(f"{k} {v.get('status')}" for k, v in doc.items())
            progress(f"  {waited:.0f}s: {state}")
        time.sleep(0.5)  # polling an HTTP endpoint for readiness; no other signal exists
    return Standalone(pid, url(settings), USER, password(settings), _log_path(settings))


def down(settings: DarkroomSettings, *, grace: float = 30, progress: Callable[[str], None] = print) -> int | None:
    """Stop the standalone process group (SIGTERM, then SIGKILL after ``grace`` seconds); its pid, or None."""
    pid = running_pid(settings)
    if pid is None:
        _pid_path(settings).unlink(missing_ok=True)
        progress("airflow standalone is not running")
        return None
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _pid_path(settings).unlink(missing_ok=True)
    progress(f"airflow standalone (pid {pid}) stopped")
    return pid


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
