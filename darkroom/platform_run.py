"""Run darkroom's DAGs for real, in logical-time order: the demo's simulated week, the end-to-end test, a re-run.

A *plan* is a list of DAG runs (DAG, logical date, conf). :func:`week_plan` lays out what the schedules would start
over a week: the hourly ingest drop, the daily dbt build with tiering, fan-out tuning, feature materialisation and
story expiry behind it, the weekly trainings and scrub on Monday, hourly fine-tunes, and a feed publish after every
ranker run (``feed_publish`` is scheduled on the ranker's champion asset).

:func:`run_plan` executes a plan in one child process configured by ``darkroom.airflow_env`` (the same environment as
``airflow dags test``), calling ``dag.test()`` for each run in order: one process keeps one Spark session and one
import of the stack for the whole plan, instead of one per run; the DAGs' Spark tasks run on that session
(``airflow.spark_tasks`` = ``in_process``, unless ``run_plan(..., spark_tasks="submit")``), and it carries dbt's
catalog, so the plan's builds run on it too (``darkroom.dbt_runner.share_session``) rather than each in a JVM of its
own. Each run goes
through Airflow's own task runner (the metadata DB records every DAG run and task instance; ``airflow dags
list-runs`` and the UI show them). The first run that does not succeed stops the plan: everything after it depends
on it.

    python -m darkroom.platform_run --plan plan.json --results results.json   # (what run_plan starts)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from darkroom.airflow_env import ensure_airflow_db, subprocess_env, task_states
from darkroom.settings import DarkroomSettings, SparkTasks
from darkroom.tables import utc

# The daily DAGs after dbt_build, in the order their assets trigger them: story_expiry runs on ingest's
# bronze.stories, so it is done before the build's marts trigger storage_tiering, whose compaction then reclaims the
# day's expired stories in the same run (and a re-run of the day finds nothing more to compact).
DAILY = ("story_expiry", "storage_tiering", "fanout_threshold_tuning", "feature_materialize")
WEEKLY = ("blob_scrub", "ranker_weekly", "two_tower_weekly")
# What the hourly dbt build rebuilds: the labels the fine-tune trains on and the story-ring signals the publish reads
# as of the hour, with what they are made of (the other marts feed_publish reads are the day's), but not the staging
# views: the hour's ingest found nothing new (the week's landing drop is ingested on its first day), so bronze is
# what the day's build tested (the views and their tests are about a third of the hourly build's node time).
HOURLY_SELECT = "+fct_engagement_labels +fct_story_ring_signals"
HOURLY_EXCLUDE = "staging"
# What the build of a day with no ingest before it rebuilds: bronze has not changed since the last build that tested
# the staging views (the week's landing drop is ingested on its first day), so the day re-states intermediate and
# marts as of its midnight, with their tests and the tests of what the blob store changed (meta.media_placement).
QUIET_DAY_SELECT = "source:meta intermediate marts"
# A line every this many seconds while a run is under way (a dbt build at small takes minutes).
HEARTBEAT_SECONDS = 30.0


@dataclass(frozen=True)
class PlannedRun:
    dag_id: str
    logical_date: datetime
    conf: dict | None = None
    why: str = ""

    def line(self) -> str:
        extra = f" conf={json.dumps(self.conf, sort_keys=True)}" if self.conf else ""
        return f"{self.dag_id} @ {self.logical_date:%Y-%m-%d %H:%M}{extra}"

    def as_json(self) -> dict:
        return {
            "dag_id": self.dag_id,
            "logical_date": self.logical_date.isoformat(),
            "conf": self.conf,
            "why": self.why,
        }

    @classmethod
    def from_json(cls, d: dict) -> PlannedRun:
        return cls(d["dag_id"], datetime.fromisoformat(d["logical_date"]), d.get("conf"), d.get("why", ""))


@dataclass
class RunOutcome:
    dag_id: str
    logical_date: str
    run_id: str
    state: str
    seconds: float
    tasks: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def line(self) -> str:
        skipped = sum(1 for s in self.tasks.values() if s == "skipped")
        tail = f", {skipped} skipped" if skipped else ""
        return f"{self.state} in {self.seconds:.1f}s ({len(self.tasks)} tasks{tail})"


class PlanFailed(RuntimeError):
    """A run of the plan did not succeed; ``outcomes`` holds every run up to and including it."""

    def __init__(self, message: str, outcomes: list[RunOutcome]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


def day_chain(day: datetime, *, weekly: bool, publish: bool, select: str | None = None) -> list[PlannedRun]:
    """One day's runs as of midnight ``day``: the daily build (of ``select``, else the whole project), then what its
    marts trigger, the weekly DAGs on a week's first day, and (``publish``) a feed publish on the day's fan-out
    policy and the ranker's champion."""
    if select:
        runs = [PlannedRun("dbt_build", day, {"select": select}, why="daily, no new bronze: marts as of midnight")]
    else:
        runs = [PlannedRun("dbt_build", day, why="daily: bronze -> marts as of midnight")]
    runs += [PlannedRun(d, day, why="daily, on the day's marts") for d in DAILY]
    if weekly:
        runs += [PlannedRun(d, day, why="weekly") for d in WEEKLY]
    if publish:
        why = "after the weekly retrain and the day's fan-out policy" if weekly else "the week's last fan-out policy"
        runs.append(PlannedRun("feed_publish", day, why=why))
    return runs


def hour_chain(hour: datetime) -> list[PlannedRun]:
    """One hour: the ingest drop, the labels the fine-tune reads, the fine-tune, a feed publish on its champion."""
    return [
        PlannedRun("ingest", hour, why="hourly landing drop"),
        PlannedRun(
            "dbt_build",
            hour,
            {"select": HOURLY_SELECT, "exclude": HOURLY_EXCLUDE},
            why="hourly: what the fine-tune and the publish read",
        ),
        PlannedRun("ranker_hourly", hour, why="hourly fine-tune"),
        PlannedRun("feed_publish", hour, why="after ranker_hourly (champion asset)"),
    ]


def week_plan(first_day: datetime, *, days: int = 7, hours: int = 2) -> list[PlannedRun]:
    """A simulated week from midnight ``first_day``: the landing drop ingested, then ``days`` daily chains in
    logical-time order, the weekly DAGs on the first day and ``hours`` hourly chains after it.

    ``feed_publish`` runs where its schedule (the ranker's champion) triggers it: after the weekly retrain and after
    each hourly fine-tune; and once more on the last day, so what the week leaves in Redis is on its last fan-out
    policy. The days between publish nothing (no new champion). Only the first day ingests (the world's landing
    drop; the hourly ingests find nothing new), so the later days' builds are of ``QUIET_DAY_SELECT``.
    """
    start = utc(first_day)
    if start.time() != datetime.min.time():
        raise ValueError(f"first_day must be a midnight UTC, got {start.isoformat()}")
    if days < 1 or hours < 0:
        raise ValueError(f"expected days >= 1 and hours >= 0, got days={days} hours={hours}")
    plan = [PlannedRun("ingest", start, why="the landing drop (the generated world) into bronze")]
    plan += day_chain(start, weekly=True, publish=True)
    plan += [r for h in range(1, hours + 1) for r in hour_chain(start + timedelta(hours=h))]
    plan += [
        r
        for d in range(1, days)
        for r in day_chain(start + timedelta(days=d), weekly=False, publish=d == days - 1, select=QUIET_DAY_SELECT)
    ]
    return plan


def rerun_plan(plan: Iterable[PlannedRun], day: datetime) -> list[PlannedRun]:
    """The runs of ``plan`` whose logical date falls on ``day`` (a backfill of that day), in plan order."""
    d = utc(day).date()
    return [r for r in plan if r.logical_date.date() == d]


def backfill_plan(dag_ids: list[str], start: datetime, end: datetime, *, every: str = "day") -> list[PlannedRun]:
    """``dag_ids`` at every interval from ``start`` to ``end`` inclusive (``every``: day or hour), in logical-time
    order and, within an interval, in the order given."""
    from darkroom.airflow_env import DAGS_DIR

    step = {"day": timedelta(days=1), "hour": timedelta(hours=1)}.get(every)
    if step is None:
        raise ValueError(f"every: expected day or hour, got {every!r}")
    known = sorted(p.stem for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_") and p.stem != "assets")
    unknown = [d for d in dag_ids if d not in known]
    if unknown or not dag_ids:
        raise ValueError(f"unknown DAG(s) {unknown or dag_ids}: expected some of {known}")
    first, last = utc(start), utc(end)
    if last < first:
        raise ValueError(f"--to {last.isoformat()} is before --from {first.isoformat()}")
    plan, when = [], first
    while when <= last:
        plan += [PlannedRun(d, when, why="backfill") for d in dag_ids]
        when += step
    return plan


def run_plan(
    settings: DarkroomSettings,
    plan: list[PlannedRun],
    *,
    progress: Callable[[str], None] = print,
    timeout: float | None = None,
    spark_tasks: SparkTasks = "in_process",
) -> list[RunOutcome]:
    """Execute ``plan`` in one child process (see the module doc); stream its progress lines to ``progress``.

    ``spark_tasks`` is where the DAGs' Spark tasks run (``settings.airflow.spark_tasks``): ``in_process`` (the
    default here) on the plan process's one session, or ``submit``: each spark-submitted, a driver JVM per task
    (about 10-15 s more per task on 2 cores: the cold start of a driver and its first Delta read).

    Raises :class:`PlanFailed` naming the first run that did not succeed (its failed tasks and the log folder).
    """
    settings = settings.model_copy(update={"airflow": settings.airflow.model_copy(update={"spark_tasks": spark_tasks})})
    ensure_airflow_db(settings)
    work = settings.airflow_home / "plans"
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    plan_file = work / f"plan-{stamp}.json"
    results_file = work / f"results-{stamp}.json"
    log_file = work / f"plan-{stamp}.log"
    plan_file.write_text(json.dumps([r.as_json() for r in plan], indent=1) + "\n")
    cmd = [sys.executable, "-m", "darkroom.platform_run", "--plan", str(plan_file), "--results", str(results_file)]
    started = time.monotonic()
    try:
        code = stream_child(
            cmd,
            env=subprocess_env(settings),
            cwd=settings.airflow_home,
            log_file=log_file,
            progress=progress,
            timeout=timeout,
        )
        timed_out = False
    except TimeoutError:
        timed_out = True
    outcomes = [RunOutcome(**o) for o in json.loads(results_file.read_text())] if results_file.exists() else []
    if timed_out:
        raise PlanFailed(
            f"plan killed over its {timeout:.0f}s timeout after {len(outcomes)} of {len(plan)} runs; the whole output "
            f"is in {log_file}",
            outcomes,
        )
    if code != 0 or len(outcomes) != len(plan) or any(o.state != "success" for o in outcomes):
        bad = next((o for o in outcomes if o.state != "success"), None)
        what = (
            f"{bad.dag_id} @ {bad.logical_date} ended {bad.state}: failed tasks "
            f"{sorted(t for t, s in bad.tasks.items() if s not in ('success', 'skipped'))}"
            + (f" ({bad.error})" if bad.error else "")
            if bad
            else f"the plan process exited {code} after {len(outcomes)} of {len(plan)} runs"
        )
        raise PlanFailed(
            f"plan stopped after {time.monotonic() - started:.0f}s: {what}; the whole output is in {log_file}, "
            f"task logs under {settings.airflow_home / 'logs'}",
            outcomes,
        )
    return outcomes


def stream_child(
    cmd: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_file: Path,
    progress: Callable[[str], None],
    timeout: float | None = None,
) -> int:
    """Run ``cmd``, its whole output to ``log_file`` and its ``[plan]`` lines to ``progress``; its exit code.

    The child gets its own process group: past ``timeout`` seconds, or when the caller is interrupted, the whole group
    (the plan's Spark JVMs and spark-submits with it) is killed, and a timeout raises :class:`TimeoutError`.
    """
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            _kill_group(proc)

        watchdog = threading.Timer(timeout, kill) if timeout else None
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if line.startswith("[plan]"):
                    progress(line[len("[plan] ") :].rstrip())
            code = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            if watchdog:
                watchdog.cancel()
    if timed_out.is_set():
        raise TimeoutError(f"{cmd[:3]} killed after {timeout}s")
    return code


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


# --- the child process ------------------------------------------------------------------------------------------------
def _execute(plan: list[PlannedRun], results: Path) -> int:
    import logging

    from airflow.utils.cli import get_bagged_dag

    from darkroom.settings import load_settings

    logging.getLogger("airflow").setLevel(logging.WARNING)
    settings = load_settings()
    if settings.airflow.spark_tasks == "in_process" and any(r.dag_id == "dbt_build" for r in plan):
        from darkroom.dbt_runner import share_session

        # One Spark session for the plan, dbt's builds included: each would otherwise start a JVM of its own.
        share_session(settings)
    outcomes: list[RunOutcome] = []
    began = time.monotonic()
    current: list = [None, 0.0]  # the run under way and when it started, for the heartbeat

    def heartbeat(stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            run, t0 = current
            if run is not None:
                print(f"[plan]     ... {run.dag_id} still running, {(time.monotonic() - t0) / 60:.1f} min", flush=True)

    stop = threading.Event()
    threading.Thread(target=heartbeat, args=(stop,), daemon=True).start()
    for i, run in enumerate(plan, 1):
        print(f"[plan] [{i}/{len(plan)}] {run.line()}  ({run.why})", flush=True)
        t0 = time.monotonic()
        current[:] = [run, t0]
        error = None
        try:
            # Parsed afresh for every run: dag.test() leaves a run's conf in the DAG object's params.
            dag = get_bagged_dag(None, run.dag_id)
            dr = dag.test(logical_date=run.logical_date, run_conf=run.conf)
            run_id, state = dr.run_id, str(getattr(dr.state, "value", dr.state))
        except Exception as e:  # noqa: BLE001 - recorded and reported; the plan stops here
            run_id, state, error = "", "failed", f"{type(e).__name__}: {e}"
        outcome = RunOutcome(
            dag_id=run.dag_id,
            logical_date=run.logical_date.isoformat(),
            run_id=run_id,
            state=state,
            seconds=round(time.monotonic() - t0, 1),
            tasks=task_states(settings, run.dag_id, run_id) if run_id else {},
            error=error,
        )
        outcomes.append(outcome)
        results.write_text(json.dumps([asdict(o) for o in outcomes], indent=1) + "\n")
        elapsed = time.monotonic() - began
        print(f"[plan]     {outcome.line()}; {i}/{len(plan)} runs in {elapsed / 60:.1f} min", flush=True)
        if state != "success":
            stop.set()
            return 1
    stop.set()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m darkroom.platform_run", description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, required=True, help="JSON list of runs (dag_id, logical_date, conf)")
    parser.add_argument("--results", type=Path, required=True, help="where each run's outcome is written")
    args = parser.parse_args(argv)
    plan = [PlannedRun.from_json(d) for d in json.loads(args.plan.read_text())]
    return _execute(plan, args.results)


if __name__ == "__main__":
    sys.exit(main())
