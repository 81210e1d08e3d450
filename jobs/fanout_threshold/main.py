"""``fanout_threshold``: the follower threshold of the hybrid fan-out, from the real graph, every day.

    python -m jobs.fanout_threshold.main --as-of 2026-11-01T00:00:00 [--replay] [--no-mlflow]
    python -m jobs.fanout_threshold.main --as-of 2026-11-01T00:00:00 --replay-only [--mlflow-run-id RUN]

(the second validates the policy already tuned for that as_of; the DAG's ``replay_validation`` task spark-submits it;
a refused input or a replay beyond the tolerance exits 2 with the reason on stderr).

``tune`` reads ``marts.fct_author_fanout_stats`` and ``marts.fct_user_read_activity`` (both must be as of the run's
``as_of``) and the follow graph (``bronze.follows`` before ``as_of``, refused if it holds self-follows, duplicate
edges or unknown users), computes the cost curve over every threshold and the four policies (pure push, pure pull,
the best threshold T* within the read and freshness budgets, and the per-author rule), writes them to
``fanout.policies``, ``fanout.author_modes`` and ``fanout.inactive_users`` (one version per as_of, replaced on a
re-run), writes a report (JSON, PNG, HTML) and logs an MLflow run in experiment ``fanout.experiment``.

``validate_by_replay`` replays the last day before ``as_of`` (its posts and feed reads) through a real Redis under
T*, pure push and pure pull, and compares the writes, merges and stored entries counted there with the model's
prediction for that day; the errors go to the same MLflow run and the report.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from darkroom import lake
from darkroom.settings import DarkroomSettings, FanoutSettings, load_settings
from darkroom.tables import table, utc
from jobs.fanout_threshold import transform as T

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

APP_NAME = "fanout_threshold"
STATS = "marts.fct_author_fanout_stats"
ACTIVITY = "marts.fct_user_read_activity"
POLICIES = table("fanout.policies")
AUTHOR_MODES = table("fanout.author_modes")
INACTIVE_USERS = table("fanout.inactive_users")
POLICY_NAMES = ("pure_push", "pure_pull", "threshold", "per_author")
REPLAYED = {"threshold": "threshold", "pure_push": "push", "pure_pull": "pull"}
REPLAY_TOLERANCE = 0.05  # the bar: replay and model agree within 5%


class FanoutInputError(ValueError):
    """The job's inputs are not what the model may count; the message names the table, the problem and examples."""


@dataclass
class FanoutPolicy:
    version: str
    as_of: datetime
    threshold: int
    read_floor: int
    freshness_ceiling: int | None
    budgets_conflict: bool
    message: str
    policies: dict[str, dict]
    curve: list[dict]
    fan_in: dict[str, list[tuple[int, float]]]
    inactive_users: int
    seconds: float
    edges: int
    report_files: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    replay: dict[str, dict] = field(default_factory=dict)

    @property
    def per_author_saving(self) -> float:
        """What the per-author policy would save a day against T* (cost units)."""
        return self.policies["threshold"]["total_cost"] - self.policies["per_author"]["total_cost"]

    def line(self) -> str:
        p = self.policies
        costs = ", ".join(f"{k} {p[k]['total_cost']:,.0f}" for k in POLICY_NAMES)
        return (
            f"fanout policy {self.version}: T* = {self.threshold:,} followers (read floor {self.read_floor:,}, "
            f"freshness ceiling {'none' if self.freshness_ceiling is None else f'{self.freshness_ceiling:,}'}); "
            f"cost a day: {costs}; per-author saves {self.per_author_saving:,.0f} ({self.saving_fraction:.1%}) "
            f"against T*{'; ' + self.message if self.budgets_conflict else ''}"
        )

    @property
    def saving_fraction(self) -> float:
        t = self.policies["threshold"]["total_cost"]
        return self.per_author_saving / t if t else 0.0


def cost_model(f: FanoutSettings, timeline_days: float | None = None) -> T.CostModel:
    return T.CostModel(
        write_cost=f.write_cost,
        merge_cost=f.merge_cost,
        stored_entry_cost=f.stored_entry_cost,
        timeline_cap=f.timeline_cap,
        timeline_days=f.timeline_days if timeline_days is None else timeline_days,
    )


def budgets(f: FanoutSettings) -> T.Budgets:
    return T.Budgets(
        max_merges=f.read_budget_merges,
        quantile=f.read_budget_quantile,
        max_push_active_followers=T.max_push_active_followers(f.freshness_seconds, f.fanout_writes_per_second),
    )


def version_of(as_of: datetime) -> str:
    """The policy version: the as_of it was computed for, so a re-run of a day replaces its own version."""
    return utc(as_of).strftime("%Y%m%dT%H%M%SZ")


def read_mart(spark: SparkSession, settings: DarkroomSettings, name: str, as_of: datetime) -> DataFrame:
    """A mart, refused unless every row is as of ``as_of`` (yesterday's graph would tune today's knob)."""
    try:
        return lake.read_as_of(spark, table(name), settings, as_of, purpose="the fan-out policy")
    except lake.StaleTableError as e:
        raise FanoutInputError(str(e)) from None


def check_graph(follows: DataFrame, users: DataFrame, source: str) -> None:
    """Refuse a graph with self-follows, duplicate edges or unknown users, naming how many and which."""
    problems = [r.asDict() for r in T.graph_problems(follows, users).orderBy("problem").collect()]
    if problems:
        parts = [f"{p['problem']}: {p['rows']:,} (e.g. {', '.join(p['examples'])})" for p in problems]
        raise FanoutInputError(
            f"{source}: the follow graph is refused, the model would count these edges: " + "; ".join(parts)
        )


def read_graph(spark: SparkSession, settings: DarkroomSettings, as_of: datetime) -> tuple[DataFrame, DataFrame]:
    """(follows before as_of, users), the graph checked (the follows contract already quarantines such rows at
    ingestion; this is the model's own guard, for any graph it is given)."""
    from pyspark.sql import functions as F

    cutoff = F.lit(utc(as_of)).cast("timestamp")
    follows = (
        lake.read(spark, table("bronze.follows"), settings)
        .where(F.col("created_at") < cutoff)
        .select("follower_id", "followee_id")
    )
    users = lake.read(spark, table("bronze.users"), settings).where(F.col("created_at") < cutoff).select("user_id")
    check_graph(follows, users, "bronze.follows")
    return follows, users


def compute(
    authors: DataFrame, readers: DataFrame, edges: DataFrame, settings: FanoutSettings, *, model: T.CostModel
) -> tuple[dict, DataFrame]:
    """Everything the policy needs from the three inputs; returns (figures, author modes)."""
    b = budgets(settings)
    curve = [r.asDict() for r in T.threshold_curve(authors, edges, model).collect()]
    floor = T.read_budget_floor(
        [(r["k"], r["reads_per_day"]) for r in T.fan_in_floor_weights(edges, readers, b.max_merges).collect()],
        b.quantile,
    )
    ceiling = T.freshness_ceiling(authors, b.max_push_active_followers)
    choice = T.choose_threshold(curve, floor, ceiling)
    modes = T.per_author_modes(
        authors, model, threshold=choice.threshold, floor=floor, max_push_active_followers=b.max_push_active_followers
    ).persist()
    by_t = {r["threshold"]: r for r in curve}
    top = curve[-1]["threshold"]
    policies = {
        "pure_push": dict(by_t[top]),
        "pure_pull": dict(by_t[T.PURE_PULL]),
        "threshold": dict(by_t[choice.threshold]),
        "per_author": T.policy_costs(modes, edges, model, "per_author_mode") | {"threshold": None},
    }
    from pyspark.sql import functions as F

    all_push = modes.withColumn("pure_push", F.lit(T.PUSH)).withColumn("pure_pull", F.lit(T.PULL))
    mode_column = {
        "pure_push": "pure_push",
        "pure_pull": "pure_pull",
        "threshold": "threshold_mode",
        "per_author": "per_author_mode",
    }
    fan_in: dict[str, list[tuple[int, float]]] = {name: [] for name in mode_column}
    for r in T.fan_in(edges, readers, all_push, mode_column).collect():
        fan_in[r["policy"]].append((r["fan_in"], r["reads_per_day"]))
    fan_in = {name: sorted(hist) for name, hist in fan_in.items()}
    largest = all_push.agg(
        *[F.max(F.when(F.col(c) == T.PUSH, F.col("active_followers"))).alias(n) for n, c in mode_column.items()]
    ).first()
    biggest_pushed = {name: int(largest[name] or 0) for name in mode_column}
    for name, p in policies.items():
        p["fan_in_quantile"] = T.weighted_quantile(fan_in[name], b.quantile)
        p["within_read_budget"] = p["fan_in_quantile"] <= b.max_merges
        p["within_freshness"] = biggest_pushed[name] <= b.max_push_active_followers
        p["chosen"] = name == "threshold"
    figures = {
        "threshold": choice.threshold,
        "read_floor": floor,
        "freshness_ceiling": ceiling,
        "budgets_conflict": choice.conflict,
        "message": choice.message,
        "policies": policies,
        "curve": curve,
        "fan_in": fan_in,
        "budgets": asdict(b),
        "model": asdict(model),
    }
    return figures, modes


def tune(
    settings: DarkroomSettings,
    as_of: datetime,
    spark: SparkSession | None = None,
    *,
    with_report: bool = True,
    log_mlflow: bool = True,
    progress=print,
) -> FanoutPolicy:
    """Compute, write and report the day's fan-out policy (idempotent per as_of)."""
    from pyspark.sql import functions as F

    from darkroom.spark import get_spark

    started = time.perf_counter()
    as_of = utc(as_of)
    spark = spark or get_spark(settings, APP_NAME)
    version = version_of(as_of)
    stats = read_mart(spark, settings, STATS, as_of)
    activity = read_mart(spark, settings, ACTIVITY, as_of)
    follows, _users = read_graph(spark, settings, as_of)
    authors = T.authors(stats).persist()
    readers = T.readers(activity).persist()
    edges = T.edges(follows, authors, readers).persist()
    n_edges = edges.count()
    progress(f"[fanout {version}] {authors.count():,} authors, {n_edges:,} edges: cost curve and budgets")
    figures, modes = compute(authors, readers, edges, settings.fanout, model=cost_model(settings.fanout))
    progress(f"[fanout {version}] {len(figures['curve']):,} thresholds in {time.perf_counter() - started:.0f}s")

    inactive = readers.where(~F.col("is_active")).select(F.lit(version).alias("version"), "user_id")
    where = f"version = '{version}'"
    lake.replace_where(spark, AUTHOR_MODES, settings, modes.withColumn("version", F.lit(version)), where)
    lake.replace_where(spark, INACTIVE_USERS, settings, inactive, where)
    n_inactive = lake.read(spark, INACTIVE_USERS, settings).where(F.col("version") == version).count()
    rows = [
        {
            "version": version,
            "policy": name,
            **{k: p.get(k) for k in POLICY_COLUMNS},
            "read_floor": figures["read_floor"],
            "freshness_ceiling": figures["freshness_ceiling"],
            "budgets_conflict": figures["budgets_conflict"],
            "message": figures["message"],
            "as_of": as_of,
            "computed_at": as_of,
        }
        for name, p in figures["policies"].items()
    ]
    policies_df = spark.createDataFrame(rows, POLICIES.schema)
    lake.replace_where(spark, POLICIES, settings, policies_df, where)
    for df in (modes, edges, readers, authors):
        df.unpersist()

    result = FanoutPolicy(
        version=version,
        as_of=as_of,
        threshold=figures["threshold"],
        read_floor=figures["read_floor"],
        freshness_ceiling=figures["freshness_ceiling"],
        budgets_conflict=figures["budgets_conflict"],
        message=figures["message"],
        policies=figures["policies"],
        curve=figures["curve"],
        fan_in=figures["fan_in"],
        inactive_users=n_inactive,
        seconds=round(time.perf_counter() - started, 2),
        edges=n_edges,
    )
    if with_report:
        result.report_files = write_report(report_dir(settings, version), result, settings.fanout)
    if log_mlflow:
        result.mlflow_run_id = log_run(settings, result)
    progress(result.line())
    return result


POLICY_COLUMNS = (
    "chosen",
    "threshold",
    "push_authors",
    "pull_authors",
    "writes",
    "merges",
    "timeline_entries",
    "celebrity_entries",
    "stored_entries",
    "write_cost",
    "merge_cost",
    "storage_cost",
    "total_cost",
    "fan_in_quantile",
    "within_read_budget",
    "within_freshness",
)


def report_dir(settings: DarkroomSettings, version: str) -> Path:
    return settings.reports_dir / "fanout" / version


def read_policy(spark: SparkSession, settings: DarkroomSettings, version: str) -> dict[str, dict]:
    from pyspark.sql import functions as F

    rows = lake.read(spark, POLICIES, settings).where(F.col("version") == version).collect()
    if not rows:
        raise FanoutInputError(f"{POLICIES.qualified_name} has no version {version}: run `darkroom fanout tune` first")
    return {r["policy"]: r.asDict() for r in rows}


# ---------------------------------------------------------------------------------------------------------------------
# replay


def validate_by_replay(
    settings: DarkroomSettings,
    as_of: datetime,
    spark: SparkSession | None = None,
    *,
    redis_url: str | None = None,
    policies: tuple[str, ...] = ("threshold", "pure_push", "pure_pull"),
    mlflow_run_id: str | None = None,
    progress=print,
) -> dict[str, dict]:
    """Replay the last day before ``as_of`` through Redis under each policy and compare with the model.

    The model's prediction for the day is the same code (``policy_costs``) fed with that day's posts per author and
    feed reads per user, over one day of timeline (from empty); ``forecast_error`` compares the replay with the
    tuning run's own figures (rates averaged over the active window), which a single day can differ from.
    """
    import numpy as np
    from pyspark.sql import functions as F

    from darkroom.spark import get_spark
    from jobs.fanout_threshold.replay import replay_day

    as_of = utc(as_of)
    spark = spark or get_spark(settings, APP_NAME)
    version = version_of(as_of)
    tuned = read_policy(spark, settings, version)
    start = as_of - timedelta(days=1)
    lo, hi = F.lit(start).cast("timestamp"), F.lit(as_of).cast("timestamp")
    modes = lake.read(spark, AUTHOR_MODES, settings).where(F.col("version") == version).persist()
    follows, _users = read_graph(spark, settings, as_of)
    posts = lake.read(spark, table("bronze.posts"), settings).where(
        (F.col("created_at") >= lo) & (F.col("created_at") < hi)
    )
    reads = lake.read(spark, table("bronze.feed_reads"), settings).where((F.col("ts") >= lo) & (F.col("ts") < hi))
    activity = T.readers(read_mart(spark, settings, ACTIVITY, as_of))

    # the model on the day's own rates
    day_posts = posts.groupBy("author_id").agg(F.count("*").cast("double").alias("day_posts"))
    day_reads = reads.groupBy("user_id").agg(F.count("*").cast("double").alias("day_reads"))
    day_readers = (
        activity.join(day_reads, on="user_id", how="left")
        .select(
            "user_id",
            "is_active",
            F.when(F.col("is_active"), F.coalesce(F.col("day_reads"), F.lit(0.0)))
            .otherwise(F.lit(0.0))
            .alias("reads_per_day"),
        )
        .persist()
    )
    loads = (
        follows.join(day_readers.select(F.col("user_id").alias("follower_id"), "reads_per_day"), "follower_id", "inner")
        .groupBy(F.col("followee_id").alias("author_id"))
        .agg(F.sum("reads_per_day").alias("day_load"))
    )
    day_authors = (
        modes.join(day_posts, on="author_id", how="left")
        .join(loads, on="author_id", how="left")
        .select(
            "author_id",
            "followers",
            "active_followers",
            F.coalesce(F.col("day_posts"), F.lit(0.0)).alias("posts_per_day"),
            F.coalesce(F.col("day_load"), F.lit(0.0)).alias("reader_load"),
            "threshold_mode",
            "per_author_mode",
            F.lit(T.PUSH).alias("pure_push"),
            F.lit(T.PULL).alias("pure_pull"),
        )
        .persist()
    )
    day_edges = T.edges(follows, day_authors, day_readers).persist()
    day_model = cost_model(settings.fanout, timeline_days=1.0)
    column = {
        "threshold": "threshold_mode",
        "per_author": "per_author_mode",
        "pure_push": "pure_push",
        "pure_pull": "pure_pull",
    }

    # the replay's inputs, collected once (arrow, no per-row Python)
    posts_tb = posts.select(
        F.col("post_id").cast("bigint"),
        F.col("author_id").cast("bigint"),
        F.floor(F.unix_micros("created_at") / 1000).cast("bigint").alias("created_ms"),
    ).toArrow()
    reads_tb = reads.select(
        F.col("user_id").cast("bigint"), F.floor(F.unix_micros("ts") / 1000).cast("bigint").alias("read_ms")
    ).toArrow()
    edges_tb = follows.select(F.col("follower_id").cast("bigint"), F.col("followee_id").cast("bigint")).toArrow()
    active = np.asarray(
        day_readers.where(F.col("is_active")).select("user_id").toArrow().column(0).to_numpy(), dtype=np.int64
    )
    url = redis_url or settings.redis_url
    out: dict[str, dict] = {}
    for name in policies:
        predicted = T.policy_costs(day_authors, day_edges, day_model, column[name])
        pushed = np.asarray(
            day_authors.where(F.col(column[name]) == T.PUSH).select("author_id").toArrow().column(0).to_numpy(),
            dtype=np.int64,
        )
        progress(f"[fanout replay {version}] {name}: {posts_tb.num_rows:,} posts, {reads_tb.num_rows:,} reads")
        counts = replay_day(
            url,
            posts=posts_tb,
            reads=reads_tb,
            edges=edges_tb,
            push_authors=pushed,
            active_users=active,
            policy=name,
            timeline_cap=settings.fanout.timeline_cap,
            key_prefix=f"replay:{version}:{name}",
            progress=progress,
        )
        measured = {"writes": counts.writes, "merges": counts.merges, "stored_entries": counts.stored_entries}
        tuned_p = tuned[name]
        out[name] = {
            "counts": counts.as_dict(),
            "predicted": {k: predicted[k] for k in measured},
            "error": {k: _rel_err(measured[k], predicted[k]) for k in measured},
            "forecast": {
                "writes": tuned_p["writes"],
                "merges": tuned_p["merges"],
                "stored_entries": tuned_p["stored_entries"],
            },
            "forecast_error": {k: _rel_err(measured[k], tuned_p[k]) for k in ("writes", "merges", "stored_entries")},
            "events_per_second": counts.events_per_second,
        }
        worst = max(out[name]["error"].values())
        progress(
            f"[fanout replay {version}] {name}: writes {counts.writes:,} (model {predicted['writes']:,.0f}), "
            f"merges {counts.merges:,} (model {predicted['merges']:,.0f}), stored {counts.stored_entries:,} "
            f"(model {predicted['stored_entries']:,.0f}); worst error {worst:.2%}; "
            f"{counts.events_per_second:,.0f} events/s"
        )
    for df in (modes, day_readers, day_authors, day_edges):
        df.unpersist()
    if mlflow_run_id:
        _log_replay(settings, mlflow_run_id, out)
    d = report_dir(settings, version)
    d.mkdir(parents=True, exist_ok=True)
    (d / "replay.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def _rel_err(measured: float, predicted: float) -> float:
    if predicted == 0:
        return 0.0 if measured == 0 else float("inf")
    return abs(measured - predicted) / abs(predicted)


class ReplayMismatch(AssertionError):
    """The replay and the model disagree by more than the tolerance."""


def check_replay(result: dict[str, dict], tolerance: float = REPLAY_TOLERANCE) -> None:
    bad = [
        f"{name} {k}: replay {r['counts'][k if k != 'stored_entries' else 'stored_entries']:,} vs model "
        f"{r['predicted'][k]:,.1f} ({r['error'][k]:.2%})"
        for name, r in result.items()
        for k in r["error"]
        if r["error"][k] > tolerance
    ]
    if bad:
        raise ReplayMismatch(f"replay and model disagree beyond {tolerance:.0%}: " + "; ".join(bad))


# ---------------------------------------------------------------------------------------------------------------------
# MLflow and the report


def _params(f: FanoutSettings, result: FanoutPolicy) -> dict:
    return {
        **{k: v for k, v in f.model_dump().items() if k != "experiment"},
        "as_of": result.as_of.isoformat(),
        "version": result.version,
    }


def log_run(settings: DarkroomSettings, result: FanoutPolicy) -> str:
    """One MLflow run for the computation: the settings as params, the four policies, T* and bounds as metrics,
    the report's figures as artifacts."""
    import mlflow

    from darkroom.tracking import use_experiment

    use_experiment(settings, settings.fanout.experiment)
    with mlflow.start_run(run_name=f"fanout-{result.version}") as run:
        mlflow.log_params(_params(settings.fanout, result))
        metrics = {
            "threshold": result.threshold,
            "read_floor": result.read_floor,
            "budgets_conflict": int(result.budgets_conflict),
            "per_author_saving": result.per_author_saving,
            "per_author_saving_fraction": result.saving_fraction,
            "edges": result.edges,
            "seconds": result.seconds,
            "inactive_users": result.inactive_users,
        }
        if result.freshness_ceiling is not None:
            metrics["freshness_ceiling"] = result.freshness_ceiling
        for name, p in result.policies.items():
            for k in ("total_cost", "writes", "merges", "stored_entries", "fan_in_quantile", "push_authors"):
                metrics[f"{name}.{k}"] = float(p[k])
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"as_of": result.as_of.isoformat(), "version": result.version, "job": APP_NAME})
        for path in result.report_files.values():
            mlflow.log_artifact(str(path))
        return run.info.run_id


def _log_replay(settings: DarkroomSettings, run_id: str, out: dict[str, dict]) -> None:
    import mlflow

    from darkroom.tracking import use_experiment

    use_experiment(settings, settings.fanout.experiment)
    with mlflow.start_run(run_id=run_id):
        metrics = {}
        for name, r in out.items():
            for k, e in r["error"].items():
                metrics[f"replay.{name}.{k}_error"] = e
            for k, e in r["forecast_error"].items():
                metrics[f"replay.{name}.{k}_forecast_error"] = e
            metrics[f"replay.{name}.events_per_second"] = r["events_per_second"]
        mlflow.log_metrics(metrics)


def write_report(out_dir: Path, result: FanoutPolicy, f: FanoutSettings) -> dict[str, Path]:
    """``figures.json``, ``cost_curve.png`` (W, R, S and total against T, log x, T* marked), ``fan_in.png`` (pull
    authors merged per feed read under each policy), ``curve.csv`` and ``report.html``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out_dir / "figures.json",
        "curve_png": out_dir / "cost_curve.png",
        "fan_in_png": out_dir / "fan_in.png",
        "csv": out_dir / "curve.csv",
        "html": out_dir / "report.html",
    }
    figures = {
        "version": result.version,
        "as_of": result.as_of.isoformat(),
        "threshold": result.threshold,
        "read_floor": result.read_floor,
        "freshness_ceiling": result.freshness_ceiling,
        "budgets_conflict": result.budgets_conflict,
        "message": result.message,
        "policies": result.policies,
        "per_author_saving": result.per_author_saving,
        "per_author_saving_fraction": result.saving_fraction,
        "inactive_users": result.inactive_users,
        "edges": result.edges,
        "settings": f.model_dump(),
    }
    files["json"].write_text(json.dumps(figures, indent=2, default=str) + "\n")
    cols = ["threshold", "push_authors", "writes", "merges", "stored_entries", "total_cost"]
    files["csv"].write_text(
        ",".join(cols) + "\n" + "".join(",".join(f"{r[c]:g}" for c in cols) + "\n" for r in result.curve)
    )
    _curve_chart(files["curve_png"], result)
    _fan_in_chart(files["fan_in_png"], result, f)
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in (
                name,
                "" if p["threshold"] is None else f"{p['threshold']:,}",
                f"{p['push_authors']:,}",
                f"{p['writes']:,.0f}",
                f"{p['merges']:,.0f}",
                f"{p['stored_entries']:,.0f}",
                f"{p['total_cost']:,.0f}",
                p["fan_in_quantile"],
                "yes" if p["within_read_budget"] else "NO",
                "yes" if p["within_freshness"] else "NO",
            )
        )
        + "</tr>"
        for name, p in result.policies.items()
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "policy",
            "threshold",
            "push authors",
            "writes/day",
            "merges/day",
            "stored entries",
            "cost/day",
            f"p{f.read_budget_quantile * 100:g} fan-in",
            "read budget",
            "freshness",
        )
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}"
    )
    files["html"].write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>fan-out policy {result.version}</title>"
        f"<style>{style}</style></head><body><h1>Fan-out policy {result.version}</h1>"
        f"<p>{html.escape(result.line())}</p><table><tr>{head}</tr>{rows}</table>"
        '<img src="cost_curve.png" alt="cost curve"><img src="fan_in.png" alt="fan-in per feed read"></body></html>\n'
    )
    return files


def _curve_chart(path: Path, result: FanoutPolicy) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in result.curve if r["threshold"] >= 0]
    x = [max(r["threshold"], 0) + 1 for r in pts]
    fig, ax = plt.subplots(figsize=(9, 5))
    for key, label in (
        ("write_cost", "W: timeline writes"),
        ("merge_cost", "R: read-time merges"),
        ("storage_cost", "S: stored entries"),
        ("total_cost", "total"),
    ):
        ax.plot(x, [r[key] for r in pts], label=label, linewidth=2.5 if key == "total_cost" else 1.2)
    ax.axvline(result.threshold + 1, color="k", linestyle="--", label=f"T* = {result.threshold:,}")
    ax.axvspan(1, result.read_floor + 1, color="tab:red", alpha=0.08, label="read budget violated")
    if result.freshness_ceiling is not None:
        ax.axvspan(result.freshness_ceiling + 1, x[-1], color="tab:orange", alpha=0.08, label="freshness violated")
    ax.set_xscale("log")
    ax.set_yscale("log")  # merges dwarf writes and storage at small T: a log axis shows all four
    ax.set_xlabel("threshold T + 1 (authors with followers <= T are pushed)")
    ax.set_ylabel("cost a day (units)")
    ax.set_title(f"fan-out cost curve, {result.version}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fan_in_chart(path: Path, result: FanoutPolicy, f: FanoutSettings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name, hist in result.fan_in.items():
        total = sum(w for _, w in hist) or 1.0
        acc, xs, ys = 0.0, [], []
        for v, w in sorted(hist):
            acc += w
            xs.append(v + 1)
            ys.append(acc / total)
        ax.step(
            xs,
            ys,
            where="post",
            label=f"{name} (p{f.read_budget_quantile * 100:g} = {result.policies[name]['fan_in_quantile']})",
        )
    ax.axvline(f.read_budget_merges + 1, color="k", linestyle="--", label=f"read budget {f.read_budget_merges}")
    ax.set_xscale("log")
    ax.set_xlabel("pull authors merged per feed read + 1")
    ax.set_ylabel("share of feed reads (cumulative)")
    ax.set_title(f"per-read fan-in, {result.version}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fanout_threshold(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``fanout_threshold_tuning.fanout_threshold`` (entry point, ``darkroom.spark_task``): the day's policy
    tuned and written; returns its version, threshold and MLflow run (which the replay task validates)."""
    result = tune(settings, as_of)
    return {"version": result.version, "threshold": result.threshold, "mlflow_run_id": result.mlflow_run_id}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.fanout_threshold.main", description=__doc__.split("\n")[0])
    parser.add_argument("--as-of", required=True, type=datetime.fromisoformat)
    parser.add_argument("--replay", action="store_true", help="validate the policy by replaying the last day")
    parser.add_argument(
        "--replay-only", action="store_true", help="no tuning: validate the policy already tuned for --as-of"
    )
    parser.add_argument("--mlflow-run-id", default=None, help="with --replay-only: the tuning run the errors go to")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    if args.mlflow_run_id and not args.replay_only:
        parser.error("--mlflow-run-id goes with --replay-only (a tuning logs its own run)")
    settings = load_settings()
    try:
        if args.replay_only:
            run_id = None if args.no_mlflow else args.mlflow_run_id
            check_replay(validate_by_replay(settings, args.as_of, mlflow_run_id=run_id))
            return 0
        result = tune(settings, args.as_of, log_mlflow=not args.no_mlflow)
        if args.replay:
            check_replay(validate_by_replay(settings, args.as_of, mlflow_run_id=result.mlflow_run_id))
    except (FanoutInputError, ReplayMismatch) as e:
        print(f"fanout_threshold: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
