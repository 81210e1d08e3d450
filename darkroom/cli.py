"""``darkroom``: every job by hand, with the same settings the DAGs use.

The core imports nothing of ours at module level; each command imports its job's entry point when it runs.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from darkroom.settings import DarkroomSettings, SettingsError, load_settings

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file (overrides the local profile)")]


def _settings(config: Path | None, **overrides) -> DarkroomSettings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v})
    except SettingsError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2) from None


def _world(settings: DarkroomSettings, scale, seed, days) -> dict:
    w = settings.world
    return {"scale": scale or w.scale, "seed": w.seed if seed is None else seed, "days": days or w.days}


@app.command()
def generate(
    scale: Annotated[str | None, typer.Option(help="tiny | small | medium | large (default: world.scale)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: world.seed)")] = None,
    days: Annotated[int | None, typer.Option(help="days of event logs ending at world.end")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="landing folder (default: <state>/landing)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Generate the seeded synthetic world as landing Parquet files, one folder per dataset."""
    from jobs.generate.main import generate as run

    settings = _settings(config)
    world = _world(settings, scale, seed, days)
    if world["scale"] not in ("tiny", "small", "medium", "large"):
        raise typer.BadParameter(f"--scale must be tiny, small, medium or large, got {world['scale']!r}")
    counts = run(settings, out_dir=out, **world)
    typer.echo(f"generated {sum(counts.values()):,} rows in {len(counts)} datasets -> {out or settings.landing_dir}")


@app.command()
def ingest(
    dataset: Annotated[str | None, typer.Option(help="dataset name (a contract in data_contracts/contracts)")] = None,
    path: Annotated[Path | None, typer.Option(help="landing file or folder of part files")] = None,
    format: Annotated[str | None, typer.Option("--format", help="parquet | csv | json (default: by extension)")] = None,
    landing: Annotated[Path | None, typer.Option(help="ingest every dataset under this landing folder")] = None,
    report: Annotated[bool, typer.Option(help="write the great-expectations data docs report")] = True,
    config: ConfigOpt = None,
) -> None:
    """Ingest landing data through its contract into bronze Delta (bad rows to quarantine, the rest merged)."""
    from data_contracts.checks import FileContractError
    from data_contracts.suites import ContractValidator
    from jobs.ingest.main import ingest as run_one
    from jobs.ingest.main import ingest_landing, landing_path

    settings = _settings(config)
    if format not in (None, "parquet", "csv", "json"):
        raise typer.BadParameter(f"--format must be parquet, csv or json, got {format!r}")
    try:
        if dataset is None:
            if path is not None:
                raise typer.BadParameter("--path needs --dataset")
            results = ingest_landing(settings, landing, with_report=report)
        else:
            path = path or landing_path(settings, dataset, landing)
            validator = ContractValidator(settings) if report else None
            results = [run_one(settings, dataset, path, format, validator=validator)]
            typer.echo(results[0].line())
    except FileContractError as e:
        typer.secho(f"refused: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    reports = {r.report for r in results if r.report}
    for r in sorted(reports):
        typer.echo(f"validation report: {r}")


@app.command()
def tables(
    layer: Annotated[str | None, typer.Option(help="only this layer (bronze, quarantine, meta, oracle)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Every registered table: rows, Delta version, last write, path."""
    from darkroom import lake
    from darkroom.spark import get_spark
    from darkroom.tables import all_tables

    settings = _settings(config)
    spark = get_spark(settings, "tables")
    rows = []
    for t in all_tables():
        if t.layer == "landing" or (layer and t.layer != layer):
            continue
        info = lake.describe(spark, t, settings)
        rows.append((t.qualified_name, info.rows, info.version, info.last_write, info.last_operation, t.path(settings)))
    _print_table(["table", "rows", "version", "last write", "operation", "path"], rows)


def _print_table(header: list[str], rows: list[tuple]) -> None:
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, int):
            return f"{v:,}"
        if hasattr(v, "strftime"):
            return v.strftime("%Y-%m-%d %H:%M:%S")
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for c in cells:
        typer.echo("  ".join((v.rjust(w) if v[:1].isdigit() else v.ljust(w)) for v, w in zip(c, widths, strict=True)))


class SparkTasksChoice(StrEnum):
    """Where a plan's Spark tasks run (``settings.airflow.spark_tasks``)."""

    in_process = "in_process"
    submit = "submit"


SparkTasksOpt = Annotated[
    SparkTasksChoice,
    typer.Option(
        "--spark-tasks",
        help="where the DAGs' Spark tasks run: on the plan's one session, or spark-submitted (a driver JVM each)",
    ),
]


@app.command()
def demo(
    scale: Annotated[str | None, typer.Option(help="world scale (default: world.scale, small)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    days: Annotated[int, typer.Option(min=1, max=14, help="days of the simulated week (daily chains)")] = 7,
    hours: Annotated[int, typer.Option(min=0, max=24, help="hourly chains after the weekly runs")] = 2,
    spark_tasks: SparkTasksOpt = SparkTasksChoice.in_process,
    config: ConfigOpt = None,
) -> None:
    """The main job on embedded defaults: generate the world, then run every DAG for real over a simulated week in
    logical-time order (``darkroom.platform_run``), and write the report (HTML with plots)."""
    from darkroom.platform_report import build_report, write_report
    from darkroom.platform_run import PlanFailed, run_plan, week_plan
    from darkroom.redis_server import LocalRedisServer
    from jobs.generate.main import generate as run_generate
    from jobs.generate.transform import SCALES

    base = _settings(config)
    world = _world(base, scale, seed, None)
    started = time.monotonic()
    # The week ends at the world's end: its first day is (days - 1) days before it.
    first_day = base.world.end - timedelta(days=days - 1)
    typer.echo(
        f"== darkroom demo: {world['scale']} world, seed {world['seed']}, a simulated week of {days} day(s) from "
        f"{first_day:%Y-%m-%d} and {hours} hourly chain(s); state in {base.state_dir}"
    )
    marker = base.landing_dir / "_world.json"
    # The scale's parameters too: a scale whose numbers changed is another world.
    wanted = json.dumps({**world, "parameters": asdict(SCALES[world["scale"]])}, sort_keys=True)
    if marker.exists() and marker.read_text().strip() == wanted:
        typer.echo(f"== 1/3 generate: {base.landing_dir} already holds this world (delete {marker.name} to regenerate)")
    else:
        derived = [p for p in (base.lake_dir, base.blob_root) if p.is_dir() and any(p.iterdir())]
        if derived:
            typer.secho(
                f"the state folder {base.state_dir} holds tables or blobs of another world than {world} "
                f"({', '.join(map(str, derived))}; landing marker {marker}: "
                f"{marker.read_text().strip() if marker.exists() else 'absent'}); a new world would mix with them. "
                "Run `make clean` (keeps the jars) or point DARKROOM_STATE_DIR at an empty folder.",
                fg="red",
                err=True,
            )
            raise typer.Exit(2)
        typer.echo("== 1/3 generate")
        run_generate(base, out_dir=None, **world)
        marker.write_text(wanted + "\n")
    plan = week_plan(first_day, days=days, hours=hours)
    typer.echo(f"== 2/3 {len(plan)} DAG runs in logical-time order (Airflow's dag.test, one process)")
    with LocalRedisServer(base.state_dir / "redis", extra_args=["--appendonly", "yes"]) as server:
        settings = base.model_copy(update={"redis_url": server.url})
        try:
            outcomes = run_plan(settings, plan, progress=typer.echo, spark_tasks=spark_tasks.value)
        except PlanFailed as e:
            typer.secho(str(e), fg="red", err=True)
            raise typer.Exit(1) from None
        typer.echo("== 3/3 report")
        minutes = (time.monotonic() - started) / 60
        summary = {
            "world": world,
            "first_day": first_day.isoformat(),
            "days": days,
            "hours": hours,
            "runs": len(outcomes),
            "minutes": round(minutes, 1),
        }
        report = build_report(settings, outcomes, redis_url=server.url, extra={"title": "demo", "summary": summary})
    out = write_report(report, base.reports_dir / "demo")
    typer.echo("")
    typer.echo(f"report:   {out}")
    typer.echo(f"          {out.with_name('report.json')}")
    typer.echo(f"Airflow:  {report['ui']['airflow']}")
    typer.echo(f"MLflow:   {report['ui']['mlflow']}")
    typer.echo("tables:   .venv/bin/darkroom tables")
    typer.echo(f"done in {(time.monotonic() - started) / 60:.1f} min")


@app.command()
def backfill(
    dag_ids: Annotated[list[str], typer.Argument(help="the DAGs to run, in this order within each interval")],
    start: Annotated[str, typer.Option("--from", help="first logical date, UTC ISO (2026-10-27)")],
    end: Annotated[str, typer.Option("--to", help="last logical date, inclusive")],
    every: Annotated[str, typer.Option(help="interval: day or hour")] = "day",
    spark_tasks: SparkTasksOpt = SparkTasksChoice.in_process,
    config: ConfigOpt = None,
) -> None:
    """Run DAGs for real over a date range, interval by interval in logical-time order (``dag.test()``, one process):
    a backfill, or a re-run of days already run, which leaves every table, file and Redis key as it was."""
    from darkroom.dbt_runner import parse_as_of
    from darkroom.platform_run import PlanFailed, backfill_plan, run_plan

    settings = _settings(config)
    try:
        plan = backfill_plan(dag_ids, parse_as_of(start), parse_as_of(end), every=every)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(
        f"== backfill: {len(plan)} DAG runs from {plan[0].logical_date:%Y-%m-%d %H:%M} to "
        f"{plan[-1].logical_date:%Y-%m-%d %H:%M}"
    )
    started = time.monotonic()
    try:
        outcomes = run_plan(settings, plan, progress=typer.echo, spark_tasks=spark_tasks.value)
    except PlanFailed as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{len(outcomes)} runs succeeded in {(time.monotonic() - started) / 60:.1f} min")


dbt_app = typer.Typer(help="The dbt project (dbt/) with darkroom's Spark session; every window ends at --as-of.")
app.add_typer(dbt_app, name="dbt")

SelectOpt = Annotated[list[str] | None, typer.Option("--select", "-s", help="dbt selection (repeatable)")]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", help="dbt exclusion (repeatable)")]
AsOfOpt = Annotated[
    str | None, typer.Option("--as-of", help="end of the data interval, UTC ISO (default: bronze's high-water mark)")
]


def _dbt(command: str, config, select=None, exclude=None, as_of=None, full_refresh=False) -> None:
    from darkroom.dbt_runner import DbtRunError, parse_as_of, run_dbt

    settings = _settings(config)
    try:
        when = parse_as_of(as_of) if as_of else None
        summary = run_dbt(settings, command, select=select, exclude=exclude, as_of=when, full_refresh=full_refresh)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    except DbtRunError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(summary.line())
    if command == "docs":
        typer.echo(
            f"docs: {Path(summary.target_dir) / 'index.html'} (serve with `.venv/bin/dbt docs serve "
            f"--project-dir dbt --target-path {summary.target_dir}`)"
        )


@dbt_app.command("build")
def dbt_build(
    select: SelectOpt = None,
    exclude: ExcludeOpt = None,
    full_refresh: Annotated[bool, typer.Option("--full-refresh", help="rebuild incremental models")] = False,
    as_of: AsOfOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Build models, run unit and data tests, in DAG order (dbt build)."""
    _dbt("build", config, select, exclude, as_of, full_refresh)


@dbt_app.command("run")
def dbt_run(
    select: SelectOpt = None,
    exclude: ExcludeOpt = None,
    full_refresh: Annotated[bool, typer.Option("--full-refresh", help="rebuild incremental models")] = False,
    as_of: AsOfOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Build models without tests (dbt run)."""
    _dbt("run", config, select, exclude, as_of, full_refresh)


@dbt_app.command("test")
def dbt_test(select: SelectOpt = None, exclude: ExcludeOpt = None, as_of: AsOfOpt = None, config: ConfigOpt = None):
    """Run the data and unit tests (dbt test)."""
    _dbt("test", config, select, exclude, as_of)


@dbt_app.command("docs")
def dbt_docs(as_of: AsOfOpt = None, config: ConfigOpt = None) -> None:
    """Generate the dbt docs site (lineage, columns, tests) and print its path."""
    _dbt("docs", config, as_of=as_of)


@dbt_app.command("lint")
def dbt_lint(
    paths: Annotated[list[str] | None, typer.Argument(help="files or folders under dbt/ (default: models)")] = None,
    fix: Annotated[bool, typer.Option("--fix", help="apply sqlfluff's fixes")] = False,
    config: ConfigOpt = None,
) -> None:
    """sqlfluff over the models (Spark dialect, dbt templater); exit 1 on any violation."""
    from darkroom.dbt_runner import lint

    code, report = lint(_settings(config), paths, fix=fix)
    typer.echo(report.rstrip())
    raise typer.Exit(code)


@dbt_app.command("freshness")
def dbt_freshness(select: SelectOpt = None, config: ConfigOpt = None) -> None:
    """Check the freshness of the bronze sources (dbt source freshness) against the wall clock."""
    _dbt("source", config, select)


blob_app = typer.Typer(help="The photo blob store: hot volumes, warm f4 cells, cold packs, and its catalog.")
app.add_typer(blob_app, name="blob")
tiering_app = typer.Typer(help="Storage tiering: the plan from dim_media_tiering, then the byte moves.")
app.add_typer(tiering_app, name="tiering")
WhenOpt = Annotated[str | None, typer.Option("--as-of", help="the run's logical time, UTC ISO (default: world end)")]


def _when(settings: DarkroomSettings, as_of: str | None):
    from datetime import UTC, datetime

    if not as_of:
        return settings.world.end.replace(tzinfo=UTC)
    try:
        ts = datetime.fromisoformat(as_of)
    except ValueError:
        raise typer.BadParameter(f"--as-of {as_of!r}: expected an ISO date or timestamp") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _echo_json(value) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@blob_app.command("load")
def blob_load(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """Materialise bronze's media and stories (bytes from their content seeds) into hot volumes."""
    from jobs.storage.main import blob_load as run

    settings = _settings(config)
    _echo_json(run(settings, as_of=_when(settings, as_of) if as_of else None))


@blob_app.command("get")
def blob_get(
    media_id: Annotated[int, typer.Argument(help="a media (or story) id")],
    out: Annotated[Path | None, typer.Option("--out", help="write the bytes here (default: print a summary)")] = None,
    no_restore: Annotated[bool, typer.Option("--no-restore", help="read a cold media without restoring it")] = False,
    config: ConfigOpt = None,
) -> None:
    """Read one media through the catalog (hot, else warm, degraded if need be, else cold), checksum verified."""
    from blobstore.catalog import CatalogError
    from blobstore.content import checksum
    from blobstore.store import BlobReadError, BlobStore

    store = BlobStore(_settings(config))
    try:
        tier = store.catalog.location(media_id)["tier"]
        data = store.get(media_id, restore=not no_restore)
    except (CatalogError, BlobReadError) as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(1) from None
    if out:
        out.write_bytes(data)
    where = f" -> {out}" if out else ""
    typer.echo(f"media {media_id}: {len(data)} bytes from {tier}, crc32 {checksum(data)}{where}")


@blob_app.command("restore")
def blob_restore(
    media_ids: Annotated[list[int], typer.Argument(help="media ids to bring back to hot")],
    as_of: WhenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Bring cold (or warm) media back to hot volumes on demand."""
    from blobstore.store import BlobStore

    settings = _settings(config)
    n = BlobStore(settings).restore(media_ids, as_of=_when(settings, as_of))
    typer.echo(f"restored {n} media to hot")


@blob_app.command("scrub")
def blob_scrub(
    as_of: WhenOpt = None,
    mb_per_s: Annotated[float | None, typer.Option("--mb-per-s", help="read rate limit")] = None,
    config: ConfigOpt = None,
) -> None:
    """Read every replica, block and pack at a rate limit, check checksums, repair what is lost or corrupt."""
    from jobs.storage.main import blob_scrub as run

    settings = _settings(config)
    report = run(settings, _when(settings, as_of), mb_per_s=mb_per_s)
    _echo_json(report)
    if report["unrepairable"]:
        raise typer.Exit(1)


@blob_app.command("fsck")
def blob_fsck(
    fix: Annotated[bool, typer.Option("--fix", help="remove temp files of killed writes")] = False,
    config: ConfigOpt = None,
) -> None:
    """Compare the catalog with the files and list every difference (exit 1 if any)."""
    from jobs.storage.main import blob_fsck as run

    lines = run(_settings(config), fix_temp=fix)
    for line in lines:
        typer.echo(line)
    typer.echo(f"{len(lines)} differences")
    if lines:
        raise typer.Exit(1)


@blob_app.command("report")
def blob_report(config: ConfigOpt = None) -> None:
    """Objects, bytes and raw bytes on disk per tier, and the measured replication (warm: goal 2.1x)."""
    from blobstore.maintenance import tier_report
    from blobstore.store import BlobStore

    _echo_json(tier_report(BlobStore(_settings(config))))


fanout_app = typer.Typer(help="Fan-out policy: the follower threshold from the graph, validated by a Redis replay.")
app.add_typer(fanout_app, name="fanout")


@fanout_app.command("tune")
def fanout_tune(
    as_of: WhenOpt = None,
    replay: Annotated[bool, typer.Option(help="then replay the last day through Redis (settings.redis_url)")] = False,
    config: ConfigOpt = None,
) -> None:
    """Cost curve, T* within the budgets, the four policies; fanout.* tables, report and an MLflow run."""
    from jobs.fanout_threshold.main import FanoutInputError, ReplayMismatch, check_replay, tune, validate_by_replay

    settings = _settings(config)
    when = _when(settings, as_of)
    try:
        result = tune(settings, when, progress=typer.echo)
        for kind, path in result.report_files.items():
            typer.echo(f"report ({kind}): {path}")
        typer.echo(f"mlflow run {result.mlflow_run_id} (experiment {settings.fanout.experiment})")
        if replay:
            check_replay(validate_by_replay(settings, when, mlflow_run_id=result.mlflow_run_id, progress=typer.echo))
            typer.echo("replay: model and Redis agree within 5% for every replayed policy")
    except (FanoutInputError, ReplayMismatch) as e:
        typer.echo(f"fanout tune: {e}", err=True)
        raise typer.Exit(2) from None


features_app = typer.Typer(help="The feature store: point-in-time training sets, Redis materialisation, checks.")
app.add_typer(features_app, name="features")
FeatureServiceOpt = Annotated[str, typer.Option("--service", help="feature service (feature_store/definitions.py)")]


def _features_instant(flag: str, value: str):
    from datetime import UTC, datetime

    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{flag} {value!r}: expected an ISO date or timestamp (UTC)") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _features_run(settings: DarkroomSettings, service: str, app_name: str):
    """The service (validated) and the Spark session, or a clean exit naming the problem."""
    from darkroom.spark import get_spark
    from feature_store.definitions import FeatureDefinitionError, get_service

    try:
        svc = get_service(service)
    except (KeyError, FeatureDefinitionError) as e:
        raise typer.BadParameter(str(e).strip("'\"")) from None
    return svc, get_spark(settings, app_name)


@features_app.command("training-set")
def features_training_set(
    start: Annotated[str, typer.Option("--start", help="first impressed_at included, UTC ISO")],
    end: Annotated[str, typer.Option("--end", help="impressed_at before this, UTC ISO")],
    service: FeatureServiceOpt = "ranker_v1",
    config: ConfigOpt = None,
) -> None:
    """Point-in-time training set of the impressions in [start, end) -> features.training_set_<service>."""
    from feature_store.definitions import FeatureDefinitionError
    from feature_store.offline import build_training_set
    from feature_store.sources import FeatureSourceError

    settings = _settings(config)
    svc, spark = _features_run(settings, service, "build_training_set")
    try:
        info = build_training_set(
            spark, settings, svc, _features_instant("--start", start), _features_instant("--end", end)
        )
    except (FeatureSourceError, FeatureDefinitionError) as e:
        typer.echo(f"features training-set: {e}", err=True)
        raise typer.Exit(2) from None
    _echo_json({**info.__dict__, "files": len(info.files())})


@features_app.command("materialize")
def features_materialize(
    start: Annotated[str, typer.Option("--start", help="feature rows after this, UTC ISO")],
    end: Annotated[str, typer.Option("--end", help="feature rows up to this (included), UTC ISO")],
    service: FeatureServiceOpt = "ranker_v1",
    config: ConfigOpt = None,
) -> None:
    """Write each entity's latest feature row with feature_ts in (start, end] to Redis (settings.redis_url)."""
    from feature_store.online import materialize
    from feature_store.sources import FeatureSourceError

    settings = _settings(config)
    svc, spark = _features_run(settings, service, "materialize")
    try:
        counts = materialize(spark, settings, svc, _features_instant("--start", start), _features_instant("--end", end))
    except FeatureSourceError as e:
        typer.echo(f"features materialize: {e}", err=True)
        raise typer.Exit(2) from None
    _echo_json({name: c.__dict__ for name, c in counts.items()})


@features_app.command("check")
def features_check(
    as_of: Annotated[str, typer.Option("--as-of", help="end of the last materialised window, UTC ISO")],
    since: Annotated[
        str | None, typer.Option("--since", help="only entities with a row after this (default: within the TTL)")
    ] = None,
    sample: Annotated[int | None, typer.Option("--sample", help="entities per view")] = None,
    view: Annotated[list[str] | None, typer.Option("--view", help="views to check (default: all)")] = None,
    service: FeatureServiceOpt = "ranker_v1",
    config: ConfigOpt = None,
) -> None:
    """Compare a sample of entities' latest offline values with Redis, per view; exit 1 on a mismatch."""
    from feature_store.online import FeatureConsistencyError, check_consistency
    from feature_store.sources import FeatureSourceError

    settings = _settings(config)
    svc, spark = _features_run(settings, service, "check_consistency")
    when = _features_instant("--as-of", as_of)
    after = _features_instant("--since", since) if since else None
    try:
        views = [svc.view(v) for v in view] if view else list(svc.views)
    except KeyError as e:
        raise typer.BadParameter(str(e).strip("'\"")) from None
    failed = False
    for v in views:
        try:
            typer.echo(check_consistency(spark, settings, v, when, sample=sample, since=after).line())
        except FeatureConsistencyError as e:
            typer.echo(str(e), err=True)
            failed = True
        except FeatureSourceError as e:
            typer.echo(f"features check: {e}", err=True)
            raise typer.Exit(2) from None
    if failed:
        raise typer.Exit(1)


@tiering_app.command("plan")
def tiering_plan(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """Decide every media's tier from dim_media_tiering; write the decisions and the dry-run report."""
    from jobs.tiering_plan.main import plan

    settings = _settings(config)
    result = plan(settings, _when(settings, as_of))
    _echo_json(result.figures)
    for kind, path in (result.report_files or {}).items():
        typer.echo(f"report ({kind}): {path}")


@tiering_app.command("apply")
def tiering_apply(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """Validate the day's plan, then move bytes: f4 rewrites, promotions, cold archival, compaction, fsck."""
    from jobs.storage.main import apply_plan

    settings = _settings(config)
    _echo_json(apply_plan(settings, _when(settings, as_of)))


@app.command()
def bench(
    name: Annotated[str, typer.Argument(help="benchmark name: a module in bench/ (see bench/README.md)")],
    quick: Annotated[bool, typer.Option("--quick", help="small parameters, finishes within a minute")] = False,
    config: ConfigOpt = None,
) -> None:
    """Run one benchmark and write bench/results/NAME.json."""
    from bench.runner import run_benchmark

    settings = _settings(config)
    path = run_benchmark(name, settings, quick=quick)
    typer.echo(f"wrote {path}")
    typer.echo(path.read_text())


def main() -> None:
    try:
        app()
    except SettingsError as e:
        typer.secho(str(e), fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()


two_tower_app = typer.Typer(help="The two-tower retrieval model, its FAISS index and the Explore candidates.")
app.add_typer(two_tower_app, name="two-tower")


def _spark_for(settings: DarkroomSettings, app_name: str):
    from darkroom.spark import get_spark

    return get_spark(settings, app_name)


@two_tower_app.command("train")
def two_tower_train(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """Weekly: the training pairs of the last two_tower.train_days days, a model, recall@K on the held-out last
    day against popularity, exact search and @champion; @champion moves only when recall@gate_k improves."""
    from jobs.two_tower_examples.main import train_weekly
    from ml.two_tower.pipeline import TwoTowerRunError

    settings = _settings(config)
    try:
        r = train_weekly(settings, _when(settings, as_of), spark=_spark_for(settings, "two_tower"), progress=typer.echo)
    except (TwoTowerRunError, ValueError) as e:
        typer.echo(f"two-tower train: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"mlflow run {r.run_id}: registered version {r.version}; {r.reason}; @champion is {r.champion_version}")
    typer.echo(f"chosen index: {r.chosen_index['spec']}")
    for name, metrics in r.quality.items():
        cells = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("recall"))
        typer.echo(f"  {name:<15} {cells}")


@two_tower_app.command("embed")
def two_tower_embed(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """The champion's embeddings of the live posts and the active users, for the batch of --as-of."""
    from jobs.two_tower_embeddings.main import NoChampionError, embed

    settings = _settings(config)
    try:
        info = embed(_spark_for(settings, "two_tower_embeddings"), settings, _when(settings, as_of))
    except NoChampionError as e:
        typer.echo(f"two-tower embed: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"batch {info.batch_id}: {info.items:,} items, {info.users:,} users (version {info.model_version})")


@two_tower_app.command("index")
def two_tower_index(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """The FAISS index of the batch's item embeddings (the sweep's chosen setting, checked against exact search)."""
    from jobs.two_tower_embeddings.main import index_batch

    settings = _settings(config)
    built = index_batch(_spark_for(settings, "two_tower_index"), settings, _when(settings, as_of), progress=typer.echo)
    typer.echo(f"index {built.path}: {built.items:,} items, recall {built.recall:.3f}, mlflow run {built.run_id}")


@two_tower_app.command("candidates")
def two_tower_candidates(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """Explore candidates of the batch: ANN top-K minus own, followed and seen posts, ordered by ranker@champion."""
    from jobs.explore_candidates.main import candidates

    settings = _settings(config)
    info = candidates(_spark_for(settings, "explore_candidates"), settings, _when(settings, as_of))
    typer.echo(f"batch {info.batch_id}: {info.rows:,} candidates for {info.users:,} users")


ranker_app = typer.Typer(help="The multi-task feed ranker: weekly retrain, hourly fine-tune, the champion alias.")
app.add_typer(ranker_app, name="ranker")


def _ranker_report(result) -> None:
    typer.echo(f"mlflow run {result.run_id}: registered version {result.version} (@challenger)")
    typer.echo(f"gate: {result.decision.reason}")
    typer.echo(f"@champion is version {result.champion_version}")
    model = result.quality.get("model", {})
    for head in ("like", "comment", "save", "share", "follow", "hide", "dwell"):
        auc, ne = model.get(f"auc_{head}", float("nan")), model.get(f"ne_{head}", float("nan"))
        typer.echo(f"  {head:<8} AUC {auc:.4f}  NE {ne:.4f}")


@ranker_app.command("retrain")
def ranker_retrain(
    as_of: WhenOpt = None,
    baselines: Annotated[bool, typer.Option(help="also train and evaluate logistic regression and LightGBM")] = True,
    config: ConfigOpt = None,
) -> None:
    """Weekly: a fresh model on the last ranker.train_days days, gated against @champion on the same holdout."""
    from ml.ranker.features import FeatureSchemaError
    from ml.ranker.pipeline import RankerRunError, retrain

    settings = _settings(config)
    try:
        _ranker_report(retrain(settings, _when(settings, as_of), with_baselines=baselines, progress=typer.echo))
    except (RankerRunError, FeatureSchemaError) as e:
        typer.echo(f"ranker retrain: {e}", err=True)
        raise typer.Exit(2) from None


@ranker_app.command("finetune")
def ranker_finetune(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """Hourly: @champion trained on the last ranker.finetune_hours of impressions, judged on its own holdout."""
    from ml.ranker.features import FeatureSchemaError
    from ml.ranker.pipeline import RankerRunError, finetune

    settings = _settings(config)
    try:
        _ranker_report(finetune(settings, _when(settings, as_of), progress=typer.echo))
    except (RankerRunError, FeatureSchemaError) as e:
        typer.echo(f"ranker finetune: {e}", err=True)
        raise typer.Exit(2) from None


@ranker_app.command("promote")
def ranker_promote(version: Annotated[str, typer.Argument(help="registered model version")], config: ConfigOpt = None):
    """Point @champion at VERSION by hand (the previous champion is kept for rollback)."""
    from ml.ranker.pipeline import promote_version
    from ml.registry import RegistryError

    settings = _settings(config)
    try:
        previous = promote_version(settings, version)
    except RegistryError as e:
        typer.echo(f"ranker promote: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"@champion: version {previous} -> {version}")


@ranker_app.command("rollback")
def ranker_rollback(config: ConfigOpt = None) -> None:
    """Put the previous champion back."""
    from ml.ranker.pipeline import rollback
    from ml.registry import RegistryError

    settings = _settings(config)
    try:
        current, target = rollback(settings)
    except RegistryError as e:
        typer.echo(f"ranker rollback: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"@champion: version {current} -> {target}")


serving_app = typer.Typer(help="What the online feed reads: versioned Redis publishes of serving.*, and the API.")
app.add_typer(serving_app, name="serving")
GroupsOpt = Annotated[
    list[str] | None, typer.Option("--groups", help="key-family groups: feed, stories, explore (default: all)")
]


@serving_app.command("publish")
def serving_publish(
    batch_id: Annotated[str, typer.Option("--batch-id", help="the batch: its data-interval end, YYYYMMDDTHHMMZ")],
    groups: GroupsOpt = None,
    force: Annotated[bool, typer.Option("--force", help="publish again a batch that is already current")] = False,
    config: ConfigOpt = None,
) -> None:
    """Write the batch's serving.* tables to Redis (settings.redis_url) as a new version per group, verify it, switch
    the group's pointer, expire the version it replaces."""
    from darkroom.spark import get_spark
    from serving.errors import ServingError
    from serving.keys import check_batch_id, check_group
    from serving.publisher import publish_batch

    settings = _settings(config)
    try:
        check_batch_id(batch_id)  # before Spark starts
        for group in groups or []:
            check_group(group)
        results = publish_batch(get_spark(settings, "serving_publish"), settings, batch_id, groups, force=force)
    except (ServingError, ValueError) as e:
        typer.echo(f"serving publish: {e}", err=True)
        raise typer.Exit(2) from None
    for result in results:
        typer.echo(result.line())


@serving_app.command("status")
def serving_status(groups: GroupsOpt = None, config: ConfigOpt = None) -> None:
    """The current version of each group, its manifest, and every version still known with its state."""
    from serving.publisher import RedisPublisher

    settings = _settings(config)
    with RedisPublisher.from_settings(settings) as publisher:
        _echo_json(publisher.status(groups))


@serving_app.command("api")
def serving_api(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    config: ConfigOpt = None,
) -> None:
    """The HTTP API (uvicorn) over settings.redis_url; the OpenAPI document at /openapi.json."""
    import uvicorn

    from serving.api import create_app

    uvicorn.run(create_app(_settings(config)), host=host, port=port, access_log=False)


precompute_app = typer.Typer(help="The serving tables of one batch (batch_id = --as-of): feed timelines, story rings.")
app.add_typer(precompute_app, name="precompute")


@precompute_app.command("feed")
def precompute_feed(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """Push timelines scored by ranker@champion (top fanout.timeline_cap), pull authors, celebrity posts, post
    metadata and the fan-out config, under the latest fan-out policy at or before --as-of."""
    from jobs.feed_precompute.main import FanoutPolicyMissing, precompute
    from jobs.ranker_scoring.score import RankerModelError

    settings = _settings(config)
    try:
        precompute(settings, _when(settings, as_of), progress=typer.echo)
    except (FanoutPolicyMissing, RankerModelError) as e:
        typer.echo(f"precompute feed: {e}", err=True)
        raise typer.Exit(2) from None


@precompute_app.command("stories")
def precompute_stories(as_of: WhenOpt = None, config: ConfigOpt = None) -> None:
    """Story rings from fct_story_ring_signals (as of --as-of): unseen first, then engagement."""
    from darkroom.lake import StaleTableError
    from jobs.story_rings.main import build_rings

    settings = _settings(config)
    try:
        build_rings(settings, _when(settings, as_of), progress=typer.echo)
    except (StaleTableError, FileNotFoundError) as e:
        typer.echo(f"precompute stories: {e}", err=True)
        raise typer.Exit(2) from None


airflow_app = typer.Typer(help="Airflow 3 on the project's DAGs (airflow standalone, SQLite, the settings' state).")
app.add_typer(airflow_app, name="airflow")


@airflow_app.command("up")
def airflow_up(
    timeout: Annotated[float, typer.Option(help="seconds to wait until it is healthy")] = 300,
    config: ConfigOpt = None,
) -> None:
    """Start `airflow standalone` in the background (api-server, scheduler, dag-processor, triggerer) and print the
    URL and the login; a running instance is reused. DAGs start paused."""
    from darkroom.airflow_standalone import AirflowUpError, up

    settings = _settings(config)
    try:
        s = up(settings, timeout=timeout, progress=typer.echo)
    except AirflowUpError as e:
        typer.echo(f"airflow up: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Airflow UI:  {s.url}  (user {s.user}, password {s.password})")
    typer.echo(f"pid {s.pid}; log {s.log}; stop it with `darkroom airflow down`")


@airflow_app.command("down")
def airflow_down(config: ConfigOpt = None) -> None:
    """Stop what `darkroom airflow up` started (every component); nothing to do when it is not running."""
    from darkroom.airflow_standalone import down

    down(_settings(config), progress=typer.echo)


@airflow_app.command("status")
def airflow_status(config: ConfigOpt = None) -> None:
    """Whether `darkroom airflow up` runs, and its health document."""
    from darkroom.airflow_standalone import health, running_pid, url

    settings = _settings(config)
    pid = running_pid(settings)
    _echo_json({"running": pid is not None, "pid": pid, "url": url(settings), "health": health(settings)})
