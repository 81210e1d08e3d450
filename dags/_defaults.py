"""What every darkroom DAG shares: the failure callback and the retry policy (imported by the DAG files)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

log = logging.getLogger("darkroom.dags")


def log_failure(context) -> None:
    """One line per failed task: which DAG, task and run, and why."""
    ti = context["ti"]
    log.error(
        "darkroom task failed: dag=%s task=%s run=%s try=%s error=%s",
        ti.dag_id,
        ti.task_id,
        context["run_id"],
        ti.try_number,
        context.get("exception"),
    )


def default_args(**overrides) -> dict:
    """Exponential back-off and the failure callback; a DAG may override any of them.

    The number of retries and the first delay are Airflow's core defaults, which ``darkroom.airflow_env`` sets
    from the ``airflow`` settings (2 retries, 60 s).
    """
    return {
        "owner": "darkroom",
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=15),
        "on_failure_callback": log_failure,
        **overrides,
    }


def run_as_of(context) -> datetime:
    """The end of the data interval a run covers: the latest ``data_interval_end`` among the asset events that
    triggered it (producers put it in each event's extra), else the run's own data interval end, else its logical
    date; always UTC-aware."""
    ends = [
        datetime.fromisoformat(e.extra["data_interval_end"])
        for events in (context.get("triggering_asset_events") or {}).values()
        for e in events
        if (e.extra or {}).get("data_interval_end")
    ]
    when = max(ends) if ends else context.get("data_interval_end") or context["logical_date"]
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def week_complete(context) -> bool:
    """A weekly DAG's short-circuit: its as-of is Monday 00:00 UTC, or the run was started by hand (or backfill)."""
    when = run_as_of(context)
    by_hand = context["dag_run"].run_type in ("manual", "backfill")
    return by_hand or (when.weekday() == 0 and when.time() == datetime.min.time())
