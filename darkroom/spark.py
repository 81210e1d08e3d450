"""The Spark session factory: Delta from local jars, the master from settings, quiet when not on a terminal; and the
same configuration as spark-submit arguments (``spark_submit_args``) for the DAGs' ``SparkSubmitOperator`` tasks.

With the lake on an object store (``lake_uri = s3a://...``) the session also gets Hadoop's S3A settings; the
``hadoop-aws`` jar and its AWS SDK bundle are not resolved by local set-up (the project image has them in Spark's jars).
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from darkroom.jars import resolved_jars

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from darkroom.settings import DarkroomSettings


def spark_conf(settings: DarkroomSettings, app_name: str) -> dict[str, str]:
    """Every configuration darkroom sets, as a plain dict (also what SparkSubmitOperator and dbt are given)."""
    s = settings.spark
    local = s.master.startswith("local")
    interactive = sys.stderr.isatty()
    conf = {
        "spark.app.name": f"{s.app_name_prefix}-{app_name}",
        "spark.master": s.master,
        "spark.jars": ",".join(str(j) for j in resolved_jars(settings.jars_dir)),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(s.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(settings.state_dir / "warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={settings.state_dir / 'derby'}",
        "spark.ui.enabled": str(s.ui).lower(),
        "spark.ui.showConsoleProgress": str(interactive).lower(),
        "spark.sql.adaptive.enabled": "true",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Delta's own optimised writes keep small-data tables from exploding into many tiny files.
        "spark.databricks.delta.optimizeWrite.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    if local:
        conf["spark.driver.memory"] = s.driver_memory
        conf["spark.local.dir"] = str(settings.spark_local_dir)
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        # Delta reads its log with 50 partitions by default: most of the time of a small table's read or MERGE.
        conf["spark.databricks.delta.snapshotPartitions"] = "2"
    if settings.lake_on_object_store:
        conf.update(s3a_conf(settings))
    conf.update(s.conf)
    return conf


def s3a_conf(settings: DarkroomSettings) -> dict[str, str]:
    """Hadoop's S3A connector for an ``s3a://`` lake: endpoint, signing region, path-style access.

    No credentials: Spark copies ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``) from the
    driver's environment into ``fs.s3a.access.key`` / ``fs.s3a.secret.key``, so they stay out of settings files and
    of the Spark UI; without them S3A's default credential chain applies.
    """
    s3 = settings.s3
    conf = {"spark.hadoop.fs.s3a.path.style.access": str(s3.path_style_access).lower()}
    if s3.endpoint_url:
        conf["spark.hadoop.fs.s3a.endpoint"] = s3.endpoint_url
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(s3.endpoint_url.startswith("https://")).lower()
    if s3.region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = s3.region
    return conf


def with_master(settings: DarkroomSettings, master: str) -> DarkroomSettings:
    """``settings`` with ``spark.master`` replaced (validated like any setting)."""
    from darkroom.settings import SparkSettings

    spark = SparkSettings.model_validate({**settings.spark.model_dump(), "master": master})
    return settings.model_copy(update={"spark": spark})


# What spark-submit takes from its own arguments: the master (``--master``, from the Airflow connection) and the jars.
_SUBMIT_OWN = ("spark.master", "spark.jars")


def spark_submit_args(settings: DarkroomSettings, app_name: str) -> dict[str, Any]:
    """The arguments of ``SparkSubmitOperator`` that run a darkroom job as ``get_spark`` would run it in-process.

    ``settings.spark.master`` must be the master spark-submit gets (its connection's; ``with_master``), so that the
    configuration follows it (a local master gets the local-only settings) and the job's own ``load_settings()``,
    rebuilt from ``env_vars``, names the same master:

    - ``conf``: ``spark_conf`` without ``spark.master`` and ``spark.jars`` (the connection and ``jars`` carry them),
      with ``spark.log.level`` WARN unless ``spark.conf`` sets it (the driver's INFO lines would flood the task log;
      an in-process ``get_spark`` session logs errors only);
    - ``jars``: the resolved Delta jars, comma-separated (raises when set-up has not resolved them);
    - ``env_vars``: every setting as ``DARKROOM_*`` (``settings_env``), ``PYTHONPATH`` with the project root, and this
      interpreter as the driver's Python (``PYSPARK_DRIVER_PYTHON``; ``PYSPARK_PYTHON`` too unless already set);
    - ``spark_binary``: the ``spark-submit`` beside this interpreter (pyspark's, in the venv), else ``None`` (the
      connection's ``spark-binary`` extra, or ``spark-submit`` on the PATH);
    - ``name``: the Spark app name, ``<app_name_prefix>-<app_name>``.
    """
    from darkroom.airflow_env import project_python_path, settings_env

    conf = spark_conf(settings, app_name)
    local_submit = Path(sys.executable).parent / "spark-submit"
    return {
        "conf": {"spark.log.level": "WARN", **{k: v for k, v in conf.items() if k not in _SUBMIT_OWN}},
        "jars": conf["spark.jars"],
        "env_vars": {
            **settings_env(settings),
            "PYTHONPATH": project_python_path(),
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        },
        "spark_binary": str(local_submit) if local_submit.exists() else None,
        "name": conf["spark.app.name"],
    }


def get_spark(settings: DarkroomSettings, app_name: str = "session") -> SparkSession:
    """The process's Spark session with Delta; created once, stopped at exit. No network is needed."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    Path(settings.spark_local_dir).mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder
    for k, v in spark_conf(settings, app_name).items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    atexit.register(_stop_quietly, spark)
    return spark


def _stop_quietly(spark: SparkSession) -> None:
    try:
        spark.stop()
    except Exception:  # noqa: BLE001 - the JVM may already be gone at interpreter exit
        pass
