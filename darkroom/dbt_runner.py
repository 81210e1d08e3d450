"""Run the dbt project (``dbt/``) with darkroom's Spark session, in a process of its own.

dbt-spark's ``session`` method takes whatever Spark session the process already has, so this module builds it first,
deliberately: darkroom's Delta configuration plus a Hive metastore (embedded Derby under ``<state>/dbt/metastore``),
because dbt needs a catalog that outlives the process (its views, its incremental tables, ``dbt docs``). Model
tables are external Delta tables under ``<lake>/intermediate`` and ``<lake>/marts`` (``location_root``), so every
other job reads them by path, with no metastore. Sources are the bronze Delta tables, registered in the catalog by
location before each run.

Derby lets one process open the metastore at a time, and a process's Spark session cannot switch catalogs, so dbt
runs in a child process: ``run_dbt(settings, "build", ...)`` from the CLI or an Airflow task, which parses the run
results and raises ``DbtRunError`` naming every failed model and test. The one exception is a process that runs many
DAG runs one after another (``darkroom.platform_run``): it calls ``share_session`` first, so its one Spark session
carries dbt's catalog and every ``run_dbt`` in it runs dbt there (one JVM, warm, instead of one per build).

    python -m darkroom.dbt_runner build --select marts --as-of 2026-11-01T00:00:00
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from darkroom.settings import PROJECT_ROOT, DarkroomSettings, load_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt"
# Schemas dbt writes (views in staging; Delta tables under <lake>/<schema>/<model> for the other two).
MODEL_SCHEMAS = ("staging", "intermediate", "marts")
COMMANDS = ("build", "run", "test", "compile", "docs", "source", "ls", "parse", "show")
# Statuses that fail a run: a model or unit test that errored, a data test that failed, a stale or broken source.
FAILED = {"error", "fail", "runtime error"}
INCREMENTAL_MODE_TAG = "incremental_mode"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class DbtRunError(RuntimeError):
    """dbt did not finish cleanly; the message names every failed node (or the crash)."""

    def __init__(self, message: str, summary: DbtRunSummary | None = None):
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class NodeResult:
    unique_id: str
    name: str
    resource_type: str
    status: str
    message: str | None
    execution_time: float


@dataclass
class DbtRunSummary:
    args: list[str]
    as_of: str
    elapsed: float
    success: bool
    results: list[NodeResult] = field(default_factory=list)
    error: str | None = None
    target_dir: str = ""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[f"{r.resource_type}:{r.status}"] = out.get(f"{r.resource_type}:{r.status}", 0) + 1
        return dict(sorted(out.items()))

    def failures(self) -> list[NodeResult]:
        return [r for r in self.results if r.status in FAILED]

    def line(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in self.counts().items()) or "no nodes"
        return f"dbt {' '.join(self.args[:1])} as of {self.as_of}: {parts} in {self.elapsed:.1f}s"

    def raise_for_failures(self) -> DbtRunSummary:
        failed = self.failures()
        if self.success and not failed and not self.error:
            return self
        lines = [f"dbt {self.args[0]} failed (as of {self.as_of}):"]
        lines += [f"  {r.resource_type} {r.name} [{r.status}]: {(r.message or '').strip()[:500]}" for r in failed]
        if self.error:
            lines.append(f"  {self.error.strip()[:2000]}")
        if len(lines) == 1:
            lines.append("  dbt reported failure without a failed node; see the log in " + self.target_dir)
        raise DbtRunError("\n".join(lines), self)

    @classmethod
    def from_json(cls, data: dict) -> DbtRunSummary:
        results = [NodeResult(**r) for r in data.pop("results")]
        return cls(results=results, **data)


def hive_conf(settings: DarkroomSettings) -> dict[str, str]:
    """The Spark configuration of a dbt process on top of ``spark_conf``: the Hive catalog on embedded Derby."""
    metastore = settings.dbt_dir / "metastore"
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL": _derby_url(metastore / "metastore_db"),
        "spark.hadoop.hive.exec.scratchdir": str(settings.dbt_dir / "hive-scratch"),
        "spark.hadoop.hive.exec.local.scratchdir": str(settings.dbt_dir / "hive-scratch-local"),
        "spark.hadoop.hive.metastore.schema.verification": "false",
        # An incremental model's source is a view over its query; Delta's MERGE reads its source twice (find the
        # touched files, then rewrite them) and would run the query twice. Materialised once, it runs once.
        "spark.databricks.delta.merge.materializeSource": "all",
    }


def _derby_url(path: Path) -> str:
    return f"jdbc:derby:;databaseName={path};create=true"


def dbt_env(settings: DarkroomSettings) -> dict[str, str]:
    """Environment read by ``dbt/profiles.yml`` and ``dbt_project.yml`` (paths only; no credentials are needed)."""
    return {
        "DARKROOM_LAKE_DIR": str(settings.lake_dir),
        "DBT_PROFILES_DIR": str(DBT_PROJECT_DIR),
        "DBT_PROJECT_DIR": str(DBT_PROJECT_DIR),
        "DBT_TARGET_PATH": str(settings.dbt_dir / "target"),
        "DBT_LOG_PATH": str(settings.dbt_dir / "logs"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DBT_VERSION_CHECK": "false",
        # `--select x` runs the tests whose every parent is selected or built before: none of an unbuilt model.
        "DBT_INDIRECT_SELECTION": "buildable",
        "DO_NOT_TRACK": "1",
    }


def dbt_vars(settings: DarkroomSettings, as_of: datetime) -> dict[str, object]:
    d = settings.dbt
    return {
        "as_of": as_of.astimezone(UTC).strftime(TIME_FORMAT),
        "lookback_days": d.lookback_days,
        "active_window_days": d.active_window_days,
        "affinity_half_life_days": d.affinity_half_life_days,
        "dwell_threshold_ms": d.dwell_threshold_ms,
        "post_feature_horizon_days": d.post_feature_horizon_days,
    }


def parse_as_of(value: str | datetime) -> datetime:
    """An as-of instant in UTC; naive values are UTC. Raises ValueError naming the expected format."""
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--as-of: expected an ISO timestamp like 2026-11-01T00:00:00, got {value!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def high_water_mark(spark: SparkSession, settings: DarkroomSettings) -> datetime | None:
    """The end of the hour holding the latest bronze event: the as-of of a by-hand run without --as-of."""
    from functools import reduce

    from pyspark.sql import functions as F

    from darkroom import lake
    from darkroom.tables import all_tables

    maxima = [
        lake.read(spark, t, settings).select(F.max(t.event_time).alias("latest"))
        for t in all_tables("bronze")
        if t.event_time and lake.exists(spark, t, settings)
    ]
    # One Spark job for every table's maximum.
    latest = reduce(lambda a, b: a.unionByName(b), maxima).agg(F.max("latest")).collect()[0][0] if maxima else None
    if latest is None:
        return None
    latest = latest.replace(tzinfo=UTC) if latest.tzinfo is None else latest.astimezone(UTC)
    return latest.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def prepare_catalog(spark: SparkSession, settings: DarkroomSettings) -> None:
    """Register what dbt reads and writes in the metastore; idempotent, and it heals a lost metastore.

    Databases point at their lake folders; bronze (and the blob catalog's tier table) are registered by location;
    any model table already on disk is registered again, so an incremental model finds its history.
    """
    from darkroom import lake
    from darkroom.tables import all_tables, table

    missing = [t.qualified_name for t in all_tables("bronze") if not lake.exists(spark, t, settings)]
    if missing:
        raise DbtRunError(
            f"dbt reads bronze, and these tables do not exist yet under {settings.lake_dir / 'bronze'}: "
            f"{', '.join(missing)} (run `darkroom ingest` first)"
        )
    placement = table("meta.media_placement")
    lake.ensure_table(spark, placement, settings)
    for schema in ("bronze", "meta", *MODEL_SCHEMAS):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {schema} LOCATION '{settings.lake_dir / schema}'")
    for t in [*all_tables("bronze"), placement]:
        spark.sql(f"CREATE TABLE IF NOT EXISTS {t.layer}.{t.name} USING DELTA LOCATION '{t.uri(settings)}'")
    for schema in MODEL_SCHEMAS[1:]:
        folder = settings.lake_dir / schema
        for path in sorted(folder.glob("*/_delta_log")):
            name = path.parent.name
            spark.sql(f"CREATE TABLE IF NOT EXISTS {schema}.{name} USING DELTA LOCATION '{path.parent}'")


def _node_results(result: object) -> list[NodeResult]:
    out = []
    for r in getattr(result, "results", None) or []:
        node = r.node
        out.append(
            NodeResult(
                unique_id=node.unique_id,
                name=node.name,
                resource_type=str(getattr(node.resource_type, "value", node.resource_type)),
                status=str(getattr(r.status, "value", r.status)),
                message=_message(r),
                execution_time=round(float(r.execution_time or 0.0), 3),
            )
        )
    return out


def first_build(settings: DarkroomSettings) -> bool:
    """True while some model table does not exist yet (a fresh state folder, or a model added since)."""
    from darkroom import tables

    return any(not (t.path(settings) / "_delta_log").is_dir() for t in tables.all_tables() if t.layer in MODEL_SCHEMAS)


def _message(r) -> str | None:
    if getattr(r, "age", None) is not None:  # a source freshness result
        return f"latest row at {r.max_loaded_at:%Y-%m-%d %H:%M:%S}, {r.age / 3600:.1f} h before the check"
    return r.message if isinstance(r.message, str) or r.message is None else str(r.message)


# The metastore whose catalog this process's Spark session carries (share_session), else None.
_shared_metastore: Path | None = None
_MATERIALIZE_SOURCE = "spark.databricks.delta.merge.materializeSource"


def share_session(settings: DarkroomSettings, app_name: str = "plan") -> SparkSession:
    """Start this process's Spark session with dbt's catalog (``hive_conf``), and from then on run every
    ``run_dbt`` for these settings' state folder here, on that session, instead of in a child process.

    For a process that runs many DAG runs in a row (``darkroom.platform_run``): one JVM, already warm, serves every
    build. The metastore stays open in this process until it exits, so no other process can run dbt on the same
    state folder meanwhile (Derby), as with a build under way. Must be called before anything starts a session.
    """
    from pyspark.sql import SparkSession

    from darkroom.spark import get_spark

    global _shared_metastore
    if SparkSession.getActiveSession() is not None:
        raise DbtRunError("share_session must start the process's Spark session; one is running already")
    for sub in ("metastore", "hive-scratch", "hive-scratch-local"):
        (settings.dbt_dir / sub).mkdir(parents=True, exist_ok=True)
    spark = get_spark(settings.model_copy(update={"spark": _with_hive(settings)}), app_name)
    # dbt's MERGE setting, not the other jobs': invoke sets it for the length of a build.
    spark.conf.unset(_MATERIALIZE_SOURCE)
    _shared_metastore = (settings.dbt_dir / "metastore").resolve()
    return spark


def _shares_session(settings: DarkroomSettings) -> bool:
    return _shared_metastore is not None and _shared_metastore == (settings.dbt_dir / "metastore").resolve()


def invoke(settings: DarkroomSettings, args: list[str], as_of: datetime | None) -> DbtRunSummary:
    """Run dbt in this process: on a session it starts (it must be the process's first), or on the one
    ``share_session`` started, with dbt's environment and MERGE setting for the length of the run only."""
    from pyspark.sql import SparkSession

    if not _shares_session(settings):
        return _invoke(settings, args, as_of)
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise DbtRunError("the shared Spark session is gone; dbt needs the one share_session started")
    saved_env, saved_conf = dict(os.environ), spark.conf.get(_MATERIALIZE_SOURCE, None)
    try:
        return _invoke(settings, args, as_of, spark=spark)
    finally:
        for k in set(os.environ) - set(saved_env):  # what the build added (dbt's paths), key by key: no moment
            del os.environ[k]  # with an empty environment for the plan's other threads
        os.environ.update({k: v for k, v in saved_env.items() if os.environ.get(k) != v})
        if saved_conf is None:
            spark.conf.unset(_MATERIALIZE_SOURCE)
        else:
            spark.conf.set(_MATERIALIZE_SOURCE, saved_conf)


def _invoke(
    settings: DarkroomSettings, args: list[str], as_of: datetime | None, *, spark: SparkSession | None = None
) -> DbtRunSummary:
    from pyspark.sql import SparkSession

    from darkroom.spark import get_spark

    if spark is None and SparkSession.getActiveSession() is not None:
        raise DbtRunError("dbt must run in a process without a Spark session; use run_dbt(), which starts one")
    os.environ.update(dbt_env(settings))
    for sub in ("metastore", "hive-scratch", "hive-scratch-local"):
        (settings.dbt_dir / sub).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if spark is None:
        spark = get_spark(settings.model_copy(update={"spark": _with_hive(settings)}), "dbt")
    else:
        spark.conf.set(_MATERIALIZE_SOURCE, hive_conf(settings)[_MATERIALIZE_SOURCE])
    try:
        prepare_catalog(spark, settings)
    except DbtRunError:
        raise
    except Exception as e:  # noqa: BLE001 - the metastore's errors are Java errors with long traces
        if "Another instance of Derby" in str(e) or "XSDB6" in str(e):
            raise DbtRunError(
                f"the dbt metastore {settings.dbt_dir / 'metastore'} is open in another process: "
                "one dbt run per state folder at a time"
            ) from None
        raise
    as_of = as_of or high_water_mark(spark, settings)
    if as_of is None:
        raise DbtRunError("no --as-of given and bronze has no events to take it from")
    deferred = args[0] in ("build", "test") and first_build(settings)
    if deferred:
        # dbt cannot run an incremental-mode unit test before the model's table exists (dbt-core #10695).
        args = [*args, "--exclude", f"tag:{INCREMENTAL_MODE_TAG}"]
        print(f"first build of some tables: unit tests tagged {INCREMENTAL_MODE_TAG} wait for the next run", flush=True)
    if args[0] == "build" and not settings.dbt.unit_tests:
        # Unit tests check SQL against fixed rows: they belong in CI, not in every scheduled build (dbt's advice).
        args = [*args, "--exclude-resource-type", "unit_test"]
    if args[0] in ("build", "run", "test") and "--threads" not in args:
        args = [*args, "--threads", str(settings.dbt.threads)]
    variables = dbt_vars(settings, as_of)
    if args[0] in ("build", "test") and "--full-refresh" not in args and not deferred:
        # An incremental run tests the days it can change (macros/test_window.sql); a full refresh tests all rows.
        variables["test_window_days"] = settings.dbt.lookback_days
    full = [*args, "--vars", json.dumps(variables)]
    print(f"dbt {' '.join(args)} (as of {as_of:%Y-%m-%d %H:%M:%S} UTC)", flush=True)
    from dbt.cli.main import dbtRunner

    res = dbtRunner().invoke(full)
    error = None if res.exception is None else f"{type(res.exception).__name__}: {res.exception}"
    return DbtRunSummary(
        args=args,
        as_of=as_of.strftime(TIME_FORMAT),
        elapsed=round(time.monotonic() - started, 2),
        success=bool(res.success),
        results=_node_results(res.result),
        error=error,
        target_dir=str(settings.dbt_dir / "target"),
    )


def _with_hive(settings: DarkroomSettings):
    return settings.spark.model_copy(update={"conf": {**settings.spark.conf, **hive_conf(settings)}})


def dbt_args(
    command: str,
    *,
    select: list[str] | None = None,
    exclude: list[str] | None = None,
    full_refresh: bool = False,
    extra: list[str] | None = None,
) -> list[str]:
    if command not in COMMANDS:
        raise ValueError(f"unknown dbt command {command!r}; expected one of {', '.join(COMMANDS)}")
    args = command.split()
    if command == "docs":
        args.append("generate")
    elif command == "source":
        args.append("freshness")
    for s in select or []:
        args += ["--select", s]
    for e in exclude or []:
        args += ["--exclude", e]
    if full_refresh:
        args.append("--full-refresh")
    return args + list(extra or [])


def run_dbt(
    settings: DarkroomSettings,
    command: str = "build",
    *,
    select: list[str] | None = None,
    exclude: list[str] | None = None,
    full_refresh: bool = False,
    as_of: datetime | None = None,
    extra: list[str] | None = None,
    check: bool = True,
) -> DbtRunSummary:
    """Run one dbt command in a child process with ``settings`` (in this one, on its session, after
    ``share_session``); dbt's progress lines stream to this process.

    Returns the parsed summary; with ``check`` (the default) raises ``DbtRunError`` naming every failed node.
    """
    from darkroom.airflow_env import settings_env

    args = dbt_args(command, select=select, exclude=exclude, full_refresh=full_refresh, extra=extra)
    if _shares_session(settings):
        summary = invoke(settings, args, as_of)
        return summary.raise_for_failures() if check else summary
    settings.dbt_dir.mkdir(parents=True, exist_ok=True)
    out = settings.dbt_dir / f"summary-{os.getpid()}-{time.monotonic_ns()}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(settings_env(settings))
    cmd = [sys.executable, "-m", "darkroom.dbt_runner", "--summary-out", str(out)]
    if as_of is not None:
        cmd += ["--as-of", as_of.astimezone(UTC).isoformat()]
    proc = subprocess.run([*cmd, "--", *args], env=env, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, check=False)
    if not out.exists():
        raise DbtRunError(f"dbt {' '.join(args)} exited with code {proc.returncode} before writing its results")
    summary = DbtRunSummary.from_json(json.loads(out.read_text()))
    out.unlink()
    if proc.returncode != 0 and summary.success and not summary.error:
        summary.error = f"the dbt process exited with code {proc.returncode}"
        summary.success = False
    return summary.raise_for_failures() if check else summary


def build(settings: DarkroomSettings, *, as_of: datetime, params: dict[str, Any]) -> dict[str, Any]:
    """The ``dbt_build`` DAG's task (entry point, ``darkroom.spark_task``): ``dbt build`` with the run's params
    (``select``, ``exclude``: space-separated, empty for none; ``full_refresh``) as of ``as_of``; returns the summary
    (as-of, counts per node type and status, elapsed seconds) and raises ``DbtRunError`` naming every failed node."""
    summary = run_dbt(
        settings,
        "build",
        select=params["select"].split() or None,
        exclude=params["exclude"].split() or None,
        full_refresh=params["full_refresh"],
        as_of=as_of,
    )
    print(summary.line(), flush=True)
    return {"as_of": summary.as_of, "counts": summary.counts(), "elapsed_s": summary.elapsed}


def lint(settings: DarkroomSettings, paths: list[str] | None = None, *, fix: bool = False) -> tuple[int, str]:
    """sqlfluff (Spark dialect, dbt templater) over the project's models; returns (exit code, report).

    The dbt templater compiles the project, and ``is_incremental()`` opens a Spark session to look for the model's
    table: that session gets a throw-away catalog under ``<state>/dbt/lint`` (never the real metastore), so linting
    needs no data and cannot touch the lake.
    """
    home = settings.dbt_dir / "lint"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **dbt_env(settings), "DBT_TARGET_PATH": str(home / "target")}
    env["PYSPARK_SUBMIT_ARGS"] = " ".join(
        [
            "--master local[1]",
            f"--conf spark.driver.extraJavaOptions=-Dderby.system.home={home}",
            f"--conf spark.sql.warehouse.dir={home / 'warehouse'}",
            f"--conf spark.hadoop.javax.jdo.option.ConnectionURL={_derby_url(home / 'metastore_db')}",
            "--conf spark.ui.enabled=false",
            "pyspark-shell",
        ]
    )
    sqlfluff = str(Path(sys.executable).with_name("sqlfluff"))
    cmd = [sqlfluff, "fix" if fix else "lint", *(paths or ["models"]), "--nocolor", "--disable-progress-bar"]
    proc = subprocess.run(cmd, cwd=DBT_PROJECT_DIR, env=env, capture_output=True, text=True, check=False)
    # stderr carries the JVM's start-up noise; it only matters when sqlfluff itself failed to run.
    return proc.returncode, proc.stdout + (proc.stderr if proc.returncode not in (0, 1) else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m darkroom.dbt_runner", description=__doc__.split("\n")[0])
    parser.add_argument("--summary-out", type=Path, help="write the run summary here as JSON")
    parser.add_argument("--as-of", help="the run's as-of instant (UTC); default: the bronze high-water mark")
    parser.add_argument("dbt_args", nargs=argparse.REMAINDER, help="-- then the dbt command and its flags")
    ns = parser.parse_args(argv)
    args = [a for a in ns.dbt_args if a != "--"] or ["build"]
    settings = load_settings()
    try:
        summary = invoke(settings, args, parse_as_of(ns.as_of) if ns.as_of else None)
    except (DbtRunError, ValueError) as e:
        summary = DbtRunSummary(args=args, as_of=ns.as_of or "", elapsed=0.0, success=False, error=str(e))
    if ns.summary_out:
        ns.summary_out.write_text(json.dumps(asdict(summary)))
    if not ns.summary_out:  # with --summary-out the caller reports the outcome
        print(summary.line(), flush=True)
        for r in summary.failures():
            print(f"FAILED {r.resource_type} {r.name} [{r.status}]: {r.message or ''}", flush=True)
        if summary.error:
            print(summary.error, file=sys.stderr, flush=True)
    return 0 if summary.success and not summary.failures() and not summary.error else 1


if __name__ == "__main__":
    sys.exit(main())
