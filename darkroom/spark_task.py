"""A DAG task's Spark work, run the same way in the task's process or spark-submitted: its *entry point*.

An entry point is a function ``fn(settings, *, as_of, **kwargs)`` in ``jobs``, ``ml``, ``feature_store``,
``serving`` or ``darkroom``, named ``"package.module:function"``, that returns what the task returns (a JSON value:
Airflow keeps it as the task's XCom) or raises ``TaskSkipped`` to skip the task. ``dags._spark.spark_task`` makes it
a task; where it runs is ``settings.airflow.spark_tasks``:

- ``submit`` (the default): ``spark-submit <this file> --call NAME --as-of T --kwargs JSON --result FILE``
  on the ``spark_default`` connection's master; this file's ``main`` rebuilds the settings from the environment,
  calls the entry point in the submitted driver and writes its outcome to ``FILE`` (written whole or not at all),
  which the task reads back;
- ``in_process``: the task calls the entry point itself, on its process's Spark session (for a process that runs
  many tasks on one warm session: ``darkroom.platform_run``, and the tests).

Both ways the entry point gets the same settings, ``as_of`` and arguments, so a task does the same work either way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from darkroom.settings import DarkroomSettings

log = logging.getLogger(__name__)

SPARK_TASK_FILE = Path(__file__).resolve()


class TaskSkipped(Exception):  # noqa: N818 - it is an outcome, not an error
    """Raised by an entry point: nothing to do for this run (the task ends *skipped*, with this reason)."""


class SparkTaskError(RuntimeError):
    """An entry point that cannot be found or called, or a result that is missing or not JSON."""


def resolve(call: str) -> Callable[..., Any]:
    """``"jobs.storage.main:blob_load"`` -> the function; raises ``SparkTaskError`` naming what is missing."""
    module_name, sep, attr = call.partition(":")
    if not sep or not module_name or not attr:
        raise SparkTaskError(f"entry point {call!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SparkTaskError(f"entry point {call!r}: cannot import {module_name}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SparkTaskError(f"entry point {call!r}: {module_name} has no function {attr!r}")
    return fn


def run_entry(call: str, settings: DarkroomSettings, as_of: datetime, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Call an entry point; its outcome as ``{"result": value}`` or ``{"skipped": reason}``."""
    fn = resolve(call)
    try:
        value = fn(settings, as_of=as_of, **kwargs)
    except TaskSkipped as e:
        return {"skipped": str(e)}
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise SparkTaskError(f"entry point {call!r} returned a value that is not JSON: {e}") from e
    return {"result": value}


def result_path(settings: DarkroomSettings, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Path:
    """Where a submitted task's outcome is written: ``<airflow_home>/task_results/<dag>/<run>/<task>[.<i>].json``
    (the run id's ``:`` and ``+`` made file-safe). The driver runs where spark-submit runs (client mode), on the
    task's machine."""
    safe_run = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    name = task_id if map_index < 0 else f"{task_id}.{map_index}"
    return settings.airflow_home / "task_results" / dag_id / safe_run / f"{name}.json"


def write_outcome(path: Path, outcome: dict[str, Any]) -> None:
    """Write ``outcome`` as JSON to ``path`` whole (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(outcome, sort_keys=True))
    os.replace(tmp, path)


def read_outcome(path: Path, call: str) -> dict[str, Any]:
    """The outcome a submitted entry point wrote; raises ``SparkTaskError`` when the job left none or a bad one."""
    try:
        outcome = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise SparkTaskError(f"{call}: the submitted job exited 0 but wrote no result to {path}") from e
    except json.JSONDecodeError as e:
        raise SparkTaskError(f"{call}: result file {path} is not JSON: {e}") from e
    if not isinstance(outcome, dict) or not ({"result"} == set(outcome) or {"skipped"} == set(outcome)):
        raise SparkTaskError(f"{call}: result file {path}: expected {{'result': ...}} or {{'skipped': ...}}")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spark-submit darkroom/spark_task.py", description=__doc__)
    parser.add_argument("--as-of", required=True, type=datetime.fromisoformat, help="the run's as-of (UTC)")
    parser.add_argument("--call", required=True, help="the entry point, package.module:function")
    parser.add_argument("--kwargs", default="{}", type=json.loads, help="keyword arguments (a JSON object)")
    parser.add_argument("--result", required=True, type=Path, help="where the outcome is written (JSON)")
    parser.add_argument(
        "--dbt-session", action="store_true", help="start the session with dbt's catalog, dbt runs in it"
    )
    args = parser.parse_args(argv)
    if not isinstance(args.kwargs, dict):
        parser.error(f"--kwargs: expected a JSON object, got {args.kwargs!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from darkroom.settings import load_settings

    settings = load_settings()
    if args.dbt_session:
        from darkroom.dbt_runner import share_session

        share_session(settings, app_name=args.call.rpartition(":")[2])
    args.result.unlink(missing_ok=True)
    outcome = run_entry(args.call, settings, args.as_of, args.kwargs)
    write_outcome(args.result, outcome)
    log.info("%s: %s -> %s", args.call, "skipped" if "skipped" in outcome else "done", args.result)
    return 0


if __name__ == "__main__":
    # Run as a file (spark-submit's application), this module is __main__; the entry points raise the TaskSkipped of
    # darkroom.spark_task, so the work is done by that module's main, not this copy's.
    from darkroom.spark_task import main as _main

    sys.exit(_main())
