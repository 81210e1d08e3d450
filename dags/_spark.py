"""Spark jobs as tasks: ``spark-submit`` of a job's ``main.py`` through the Spark provider's ``SparkSubmitOperator``.

The master is the ``spark_default`` connection's (``darkroom.airflow_env`` defines it from ``settings.spark.master``
unless ``AIRFLOW_CONN_SPARK_DEFAULT`` is set already), so pointing the connection at a cluster moves the jobs there
unchanged. Every task is in pool ``spark`` (``airflow.spark_pool_slots``, 1 on 2 cores: one submitted driver JVM at a
time). Importing this module does no work: settings, Spark configuration, jars and environment are resolved when the
task runs (``DarkroomSparkSubmitOperator.execute``), for the connection's master.
"""

from __future__ import annotations

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
