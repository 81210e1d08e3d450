"""Spark jobs as tasks, through the Spark provider's ``SparkSubmitOperator``.

- ``spark_task``: a task whose work is an *entry point* (``darkroom.spark_task``), a function that returns the
  task's XCom; spark-submitted (``settings.airflow.spark_tasks`` = ``submit``, the default: the submitted driver writes
  the return value to a result file the task reads back) or called in the task's process (``in_process``).
- ``spark_submit_task``: ``spark-submit`` of a job's ``main.py`` CLI; its results are tables (no XCom).

The master is the ``spark_default`` connection's (``darkroom.airflow_env`` defines it from ``settings.spark.master``
unless ``AIRFLOW_CONN_SPARK_DEFAULT`` is set already), so pointing the connection at a cluster moves the jobs there
unchanged. Every task is in pool ``spark`` (``airflow.spark_pool_slots``, 1 on 2 cores: one submitted driver JVM at a
time). Importing this module does no work: settings, Spark configuration, jars and environment are resolved when the
task runs (``DarkroomSparkSubmitOperator.execute``), for the connection's master.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from dags._defaults import run_as_of

SPARK_CONN_ID = "spark_default"  # darkroom.airflow_env.SPARK_CONN_ID (not imported: a DAG file imports no darkroom)
SPARK_POOL = "spark"  # darkroom.airflow_env.SPARK_POOL
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def job_file(module: str) -> Path:
    """``jobs.story_rings.main`` -> ``<project>/jobs/story_rings/main.py``."""
    return _PROJECT_ROOT.joinpath(*module.split(".")).with_suffix(".py")


class DarkroomSparkSubmitOperator(SparkSubmitOperator):
    """``SparkSubmitOperator`` for a darkroom job module (``jobs.<job>.main``, whose ``main()`` is its CLI).

    When the task runs: the settings are loaded with the connection's master (``task_settings``, as every task
    does), and ``conf``, ``jars``, ``env_vars``, ``spark_binary`` and ``name`` come from
    ``darkroom.spark.spark_submit_args`` for that master; the job gets ``--as-of <run_as_of(context)>`` before the
    task's own ``application_args`` (templated: e.g. an upstream task's XCom). Values given to the constructor for
    ``conf`` and ``env_vars`` are laid over the derived ones. Success is the job's exit code 0.
    """

    def __init__(self, *, module: str, **kwargs: Any) -> None:
        super().__init__(application=str(job_file(module)), **kwargs)
        self.module = module
        self.job_name = module.split(".")[-2]  # jobs.<job>.main: the Spark app name
        # What the DAG gave, kept apart from what execute() derives: a retry of the same operator object (dag.test
        # runs tries in one process) derives afresh instead of stacking on the last try's values.
        self._given_conf = dict(self.conf or {})
        self._given_env_vars = dict(self.env_vars or {})

    def execute(self, context) -> None:
        from darkroom.spark import spark_submit_args

        settings = task_settings(self._conn_id)
        master = settings.spark.master
        args = spark_submit_args(settings, self.job_name)
        self.conf = {**args["conf"], **self._given_conf}
        self.jars = args["jars"]
        self.env_vars = {**args["env_vars"], **self._given_env_vars}
        self.name = args["name"]
        self._spark_binary = self._spark_binary or args["spark_binary"]
        self.application_args = with_as_of(self.application_args, run_as_of(context).isoformat())
        self.log.info("%s on master %s (connection %s, pool %s)", self.module, master, self._conn_id, self.pool)
        super().execute(context)


def connection_master(conn_id: str = SPARK_CONN_ID) -> str:
    """The Spark master of an Airflow connection, as ``SparkSubmitHook`` resolves it (the host of a ``spark``
    connection is the whole master URL: ``local[2]``, ``spark://host:7077``, ``yarn``, ``k8s://...``)."""
    return SparkSubmitHook(conn_id=conn_id)._connection["master"]


def task_settings(conn_id: str = SPARK_CONN_ID):
    """The settings every task runs with: ``load_settings()`` with ``spark.master`` taken from the ``spark_default``
    connection. A spark-submitted job gets that master on its command line; a task that runs Spark in its own
    process (its result is a return value later tasks read, or dbt's session) starts its driver there too, so
    pointing the connection at a cluster moves every Spark session of the DAGs, not only the submitted ones."""
    from darkroom.settings import load_settings
    from darkroom.spark import with_master

    return with_master(load_settings(), connection_master(conn_id))


def with_as_of(args: Sequence[str] | None, as_of: str) -> list[str]:
    """``--as-of <as_of>`` then ``args`` without any ``--as-of`` pair an earlier try put there."""
    rest, given = [], list(args or [])
    i = 0
    while i < len(given):
        if given[i] == "--as-of":
            i += 2
            continue
        rest.append(given[i])
        i += 1
    return ["--as-of", as_of, *rest]


def spark_submit_task(
    task_id: str, module: str, application_args: Sequence[str] = (), **kwargs: Any
) -> DarkroomSparkSubmitOperator:
    """A task that spark-submits ``module``'s file (``jobs/<job>/main.py``) with ``--as-of <run's as-of>`` and
    ``application_args``, on connection ``spark_default`` in pool ``spark``; ``kwargs`` go to the operator (outlets,
    ...). A job's results live in its tables: the task returns nothing (no XCom)."""
    return DarkroomSparkSubmitOperator(
        task_id=task_id,
        module=module,
        application_args=list(application_args),
        conn_id=SPARK_CONN_ID,
        pool=SPARK_POOL,
        **kwargs,
    )


class DarkroomSparkTaskOperator(DarkroomSparkSubmitOperator):
    """A task whose work is an entry point (``darkroom.spark_task``): ``call(settings, as_of=run's as-of, **kwargs)``.

    ``kwargs`` is ``op_kwargs`` (templated) plus the context values ``context_kwargs`` names (``params``,
    ``run_id``). With ``settings.airflow.spark_tasks == "submit"`` the task spark-submits ``darkroom/spark_task.py``
    (conf, jars and environment as for every submitted job, Spark app name = task id) and returns the value the
    driver wrote to its result file; with ``in_process`` it calls the entry point itself. Either way the return value
    is the task's XCom, ``TaskSkipped`` skips the task, and with ``interval_end_extra`` every outlet's asset event
    carries ``{"data_interval_end": as-of}`` for its consumers' windows. ``dbt_session``: the submitted driver starts
    its session with dbt's catalog and runs dbt on it (``darkroom.dbt_runner.share_session``). ``precheck``: an entry
    point that must not start Spark, called in the task's process first (both ways); when it raises ``TaskSkipped``
    the task is skipped without a driver (e.g. ``ingest`` for an hour with no new landing file).
    """

    template_fields = (*DarkroomSparkSubmitOperator.template_fields, "op_kwargs")

    def __init__(
        self,
        *,
        call: str,
        op_kwargs: dict[str, Any] | None = None,
        context_kwargs: Sequence[str] = (),
        interval_end_extra: bool = False,
        dbt_session: bool = False,
        precheck: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(module="darkroom.spark_task", **kwargs)
        self.call = call
        self.precheck = precheck
        self.op_kwargs = dict(op_kwargs or {})
        self.context_kwargs = tuple(context_kwargs)
        self.interval_end_extra = interval_end_extra
        self.dbt_session = dbt_session
        self.job_name = self.task_id  # the Spark app name is the task's (STYLE 11)

    def execute(self, context) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        from darkroom.spark_task import read_outcome, result_path, run_entry

        settings = task_settings(self._conn_id)
        as_of = run_as_of(context)
        kwargs = {**self.op_kwargs, **{k: _context_value(context, k) for k in self.context_kwargs}}
        if self.precheck:
            checked = run_entry(self.precheck, settings, as_of, kwargs)
            if "skipped" in checked:
                self.log.info("pre-check %s: skipped, no driver started", self.precheck)
                raise AirflowSkipException(checked["skipped"])
        if settings.airflow.spark_tasks == "in_process":
            self.log.info("%s in this process (airflow.spark_tasks=in_process), as of %s", self.call, as_of)
            outcome = run_entry(self.call, settings, as_of, kwargs)
        else:
            ti = context["ti"]
            path = result_path(settings, ti.dag_id, context["run_id"], ti.task_id, getattr(ti, "map_index", -1))
            path.unlink(missing_ok=True)  # a retry's outcome is its own, never an earlier try's
            self.application_args = [
                "--call", self.call, "--kwargs", json.dumps(kwargs, sort_keys=True), "--result", str(path),
                *(["--dbt-session"] if self.dbt_session else []),
            ]  # fmt: skip
            super().execute(context)
            outcome = read_outcome(path, self.call)
        if "skipped" in outcome:
            raise AirflowSkipException(outcome["skipped"])
        if self.interval_end_extra:
            for asset in self.outlets:
                context["outlet_events"][asset].extra = {"data_interval_end": as_of.isoformat()}
        return outcome["result"]


def _context_value(context, key: str) -> Any:
    if key == "params":
        return {k: context["params"][k] for k in context["params"]}
    if key == "run_id":
        return context["run_id"]
    raise ValueError(f"context_kwargs: {key!r} is not passed to entry points (params, run_id are)")


def spark_task(task_id: str, call: str, **kwargs: Any) -> DarkroomSparkTaskOperator:
    """A task that runs entry point ``call`` (``"package.module:function"``) as of the run's as-of, spark-submitted
    or in the task's process (``settings.airflow.spark_tasks``), on connection ``spark_default`` in pool ``spark``
    unless ``kwargs`` names another pool; it returns the entry point's value (XCom). ``kwargs`` go to the operator
    (``op_kwargs``, ``context_kwargs``, ``outlets``, ``interval_end_extra``, ``dbt_session``, ``precheck``, ...)."""
    kwargs.setdefault("pool", SPARK_POOL)
    return DarkroomSparkTaskOperator(task_id=task_id, call=call, conn_id=SPARK_CONN_ID, **kwargs)
