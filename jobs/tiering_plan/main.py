"""``tiering_plan``: decide per media its storage tier (Haystack hot, f4 warm, cold) from ``marts.dim_media_tiering``.

    python -m jobs.tiering_plan.main --as-of 2026-11-01T00:00:00 [--cold-compression-ratio 1.0] [--validate]

``plan`` reads the mart (which must be as of the run's ``as_of``), applies ``transform.decide`` with the policy of
``settings.tiering``, writes the decisions to ``blob_catalog.tier_decisions`` (Delta, partitioned by ``plan_date``,
``replaceWhere`` on that date: a re-run for the same day leaves the same rows) and writes the dry-run report (JSON,
HTML, PNG) under ``<reports_dir>/tiering/<plan_date>/``. Nothing moves here: ``validate_plan`` checks a written plan
against its contract, and only then may the movers run.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from darkroom import lake
from darkroom.settings import BlobSettings, DarkroomSettings, TieringSettings, load_settings
from darkroom.tables import table, utc
from jobs.tiering_plan import transform as T

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

APP_NAME = "tiering_plan"
MART = "marts.dim_media_tiering"
# <lake_dir>/blob_catalog/tier_decisions, partitioned by plan_date (schema: darkroom.tables.TIER_DECISIONS_DDL).
TIER_DECISIONS = table("blob_catalog.tier_decisions")
EXAMPLES = 5  # offending media ids named per broken rule
RULE_TEXT = {
    "unknown_media": f"not in {MART}",
    "unknown_target_tier": f"with a target tier not one of {', '.join(T.TIERS)}",
    "transition_not_allowed": "with a transition not allowed (allowed: "
    + ", ".join(f"{a}->{b}" for a, b in sorted(T.ALLOWED_TRANSITIONS) if a != b)
    + ", or staying put)",
    "action_mismatch": "whose action does not name the transition",
    "duplicate_media": "planned more than once",
    "size_not_positive": "with size_bytes missing or <= 0",
}


class PlanValidationError(ValueError):
    """A plan breaks its contract; ``failures`` maps each broken rule to (rows, the first few "id (from->to)")."""

    def __init__(self, plan_date: date, failures: dict[str, tuple[int, list[str]]], message: str | None = None):
        self.plan_date = plan_date
        self.failures = failures
        super().__init__(message or _failure_message(plan_date, failures))


def _failure_message(plan_date: date, failures: dict[str, tuple[int, list[str]]]) -> str:
    parts = [
        f"{rule}: {n:,} rows {RULE_TEXT.get(rule, '')} (e.g. {', '.join(ids)})" for rule, (n, ids) in failures.items()
    ]
    return f"tier plan {plan_date} refused, nothing may move: " + "; ".join(parts)


@dataclass
class TieringPlan:
    plan_date: date
    as_of: datetime
    media: int
    table: str
    table_version: int
    figures: dict
    report_files: dict[str, Path] = field(default_factory=dict)

    def line(self) -> str:
        f, a = self.figures, self.figures["by_action"]
        moves = ", ".join(f"{k} {v['objects']:,}" for k, v in a.items())
        return (
            f"tier plan {self.plan_date}: {self.media:,} media ({moves}) -> {self.table} v{self.table_version}; "
            f"${f['after']['total']['cost_per_month']:,.2f}/month after, "
            f"saving ${f['saving_per_month_vs_all_hot']:,.2f} ({f['saving_fraction_vs_all_hot']:.1%}) against all-hot"
        )


def policy(t: TieringSettings) -> dict[str, float]:
    """The keyword arguments of ``transform.decide`` from the tiering settings."""
    return {
        "hot_recent_days": t.hot_recent_days,
        "hot_reads_per_day": t.hot_reads_per_day,
        "warm_reads_per_week": t.warm_reads_per_week,
        "cold_idle_days": t.cold_idle_days,
        "hysteresis": t.hysteresis,
        "min_days_in_tier": t.min_days_in_tier,
    }


def factors(blob: BlobSettings, cold_compression_ratio: float) -> dict[str, float]:
    return T.replication_factors(
        hot_replicas=blob.hot_replicas,
        ec_data_blocks=blob.ec_data_blocks,
        ec_parity_blocks=blob.ec_parity_blocks,
        cold_copies=blob.cold_regions,
        cold_compression_ratio=cold_compression_ratio,
    )


def plan_date_of(as_of: datetime) -> date:
    """The plan's date: the last day of data before ``as_of`` (midnight 2026-11-01 -> 2026-10-31), dbt's as_of_date."""
    return (utc(as_of) - timedelta(microseconds=1)).date()


def _as_date(plan_date: date | str) -> date:
    if isinstance(plan_date, datetime):
        return plan_date.date()
    return plan_date if isinstance(plan_date, date) else date.fromisoformat(plan_date)


def read_mart(spark: SparkSession, settings: DarkroomSettings, as_of: datetime) -> DataFrame:
    """The mart, refused unless every row is as of ``as_of`` (a stale mart would plan on yesterday's reads)."""
    return lake.read_as_of(spark, table(MART), settings, as_of, purpose="the plan")


def write_decisions(spark: SparkSession, settings: DarkroomSettings, decisions: DataFrame, plan_date: date) -> int:
    """Replace the ``plan_date`` partition of tier_decisions with ``decisions``; returns the table version."""
    return lake.replace_where(spark, TIER_DECISIONS, settings, decisions, f"plan_date = DATE'{plan_date.isoformat()}'")


def read_plan(spark: SparkSession, settings: DarkroomSettings, plan_date: date | str) -> DataFrame:
    from pyspark.sql import functions as F

    d = _as_date(plan_date)
    return lake.read(spark, TIER_DECISIONS, settings).where(F.col("plan_date") == F.lit(d))


def plan(
    settings: DarkroomSettings,
    as_of: datetime,
    spark: SparkSession | None = None,
    *,
    cold_compression_ratio: float = 1.0,
    with_report: bool = True,
) -> TieringPlan:
    """Decide every media's tier as of ``as_of``, write the plan (idempotent) and its dry-run report."""
    from pyspark.sql import functions as F

    from darkroom.spark import get_spark

    spark = spark or get_spark(settings, APP_NAME)
    rf = factors(settings.blob, cold_compression_ratio)
    plan_date = plan_date_of(as_of)
    decisions = T.decide(read_mart(spark, settings, as_of), **policy(settings.tiering))
    version = write_decisions(spark, settings, decisions, plan_date)

    written = read_plan(spark, settings, plan_date)
    moves = [r.asDict() for r in T.tier_moves(written).collect()]
    figures = {
        "plan_date": plan_date.isoformat(),
        "as_of": utc(as_of).isoformat(),
        "media": sum(m["objects"] for m in moves),
        "policy": policy(settings.tiering),
        "cold_compression_ratio": cold_compression_ratio,
        **T.storage_figures(moves, factors=rf, prices=dict(settings.tiering.price_per_gb_month)),
    }
    result = TieringPlan(plan_date, utc(as_of), figures["media"], TIER_DECISIONS.uri(settings), version, figures)
    if with_report:
        largest = (
            written.where(F.col("action") != T.KEEP)
            .orderBy(F.col("size_bytes").desc(), F.col("media_id"))
            .select("media_id", "size_bytes", "current_tier", "target_tier", "action", "reason")
            .limit(10)
            .collect()
        )
        out_dir = settings.reports_dir / "tiering" / plan_date.isoformat()
        result.report_files = write_report(out_dir, figures, [r.asDict() for r in largest])
    return result


def validate_plan(spark: SparkSession, settings: DarkroomSettings, plan_date: date | str) -> int:
    """Check the written plan of ``plan_date`` against its contract before any byte moves; returns its media count.

    Raises PlanValidationError naming, per broken rule, how many media break it and the first few ids (with their
    transition): unknown media (not in the mart), unknown target tier, a transition outside ALLOWED_TRANSITIONS, an
    action that does not name the transition, a media planned twice, a size missing or <= 0; or when there is no
    plan for that date at all.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    d = _as_date(plan_date)
    if not lake.exists(spark, TIER_DECISIONS, settings):
        raise PlanValidationError(
            d, {}, f"tier plan {d} refused: no tier_decisions table at {TIER_DECISIONS.uri(settings)}"
        )
    checked = T.plan_violations(read_plan(spark, settings, d), lake.read(spark, table(MART), settings))
    checked = checked.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = checked.agg(
            F.count(F.lit(1)).alias("_rows"),
            *[F.sum(F.array_contains("rules", rule).cast("long")).alias(rule) for rule in RULE_TEXT],
        ).collect()[0]
        rows = int(counts["_rows"])
        if rows == 0:
            raise PlanValidationError(d, {}, f"tier plan {d} refused: the plan has no rows for that date")
        failures: dict[str, tuple[int, list[str]]] = {}
        for rule in RULE_TEXT:
            n = int(counts[rule] or 0)
            if n:
                first = (
                    checked.where(F.array_contains("rules", rule))
                    .orderBy("media_id", "current_tier", "target_tier")
                    .limit(EXAMPLES)
                    .collect()
                )
                failures[rule] = (n, [f"{r['media_id']} ({r['current_tier']}->{r['target_tier']})" for r in first])
    finally:
        checked.unpersist()
    if failures:
        raise PlanValidationError(d, failures)
    return rows


def _gb(n: float) -> str:
    return f"{n / T.GB:,.3f}"


def _chart(path: Path, figures: dict) -> None:
    """Stacked bars per tier of stored bytes and of monthly cost: all hot, before the plan, after it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = {"hot": "#d9534f", "warm": "#f0ad4e", "cold": "#5bc0de"}
    scenarios = {
        "all hot": {"hot": figures["all_hot"], "warm": None, "cold": None},
        "before": figures["before"],
        "after": figures["after"],
    }
    fig = Figure(figsize=(10, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    for ax, key, label in zip(
        fig.subplots(1, 2),
        ("stored_bytes", "cost_per_month"),
        ("raw stored GB (replicas, parity)", "storage cost per month ($)"),
        strict=True,
    ):
        bottom = [0.0] * len(scenarios)
        for tier in T.TIERS:
            values = [
                ((s[tier] or {}).get(key, 0) / (T.GB if key == "stored_bytes" else 1)) for s in scenarios.values()
            ]
            ax.bar(list(scenarios), values, bottom=bottom, color=colours[tier], label=tier)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        for x, total in enumerate(bottom):
            ax.annotate(
                f"{total:,.2f}", (x, total), ha="center", va="bottom", xytext=(0, 2), textcoords="offset points"
            )
        ax.set_ylim(0, max(bottom) * 1.15 or 1.0)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].legend(title="tier")
    fig.suptitle(f"tiering plan {figures['plan_date']} (as of {figures['as_of']})")
    fig.tight_layout()
    fig.savefig(path)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out_dir: Path, figures: dict, largest_moves: list[dict]) -> dict[str, Path]:
    """``figures.json``, ``tiers.png`` and ``report.html`` (which shows the PNG) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "figures.json", "png": out_dir / "tiers.png", "html": out_dir / "report.html"}
    files["json"].write_text(json.dumps(figures, indent=2) + "\n")
    _chart(files["png"], figures)

    def tier_rows(side: dict) -> list[list]:
        return [
            [
                tier,
                f"{b['objects']:,}",
                _gb(b["bytes"]),
                _gb(b["stored_bytes"]),
                "" if b["replication_factor"] is None else f"{b['replication_factor']:.3f}x",
                f"${b['cost_per_month']:,.2f}",
            ]
            for tier, b in side.items()
        ]

    header = ["tier", "objects", "GB", "stored GB", "replication", "$/month"]
    a = figures["all_hot"]
    pol = ", ".join(f"{k}={v:g}" for k, v in figures["policy"].items())
    sections = [
        f"<h1>Tiering plan {figures['plan_date']}</h1>",
        f"<p>As of {figures['as_of']}: {figures['media']:,} media. Policy: {html.escape(pol)}; cold compression ratio "
        f"{figures['cold_compression_ratio']:g}. A dry run: nothing has moved.</p>",
        '<img src="tiers.png" alt="stored bytes and monthly cost per tier">',
        "<h2>Before the plan</h2>",
        _table(header, tier_rows(figures["before"])),
        "<h2>After the plan</h2>",
        _table(header, tier_rows(figures["after"])),
        "<h2>Cost</h2>",
        _table(
            ["scenario", "stored GB", "$/month"],
            [
                ["all hot", _gb(a["stored_bytes"]), f"${a['cost_per_month']:,.2f}"],
                [
                    "before",
                    _gb(figures["before"]["total"]["stored_bytes"]),
                    f"${figures['before']['total']['cost_per_month']:,.2f}",
                ],
                [
                    "after",
                    _gb(figures["after"]["total"]["stored_bytes"]),
                    f"${figures['after']['total']['cost_per_month']:,.2f}",
                ],
            ],
        ),
        f"<p>Saving against all-hot: ${figures['saving_per_month_vs_all_hot']:,.2f}/month "
        f"({figures['saving_fraction_vs_all_hot']:.1%}); against before: "
        f"${figures['saving_per_month_vs_before']:,.2f}/month.</p>",
        "<h2>Moves</h2>",
        _table(
            ["action", "objects", "GB"],
            [[k, f"{v['objects']:,}", _gb(v["bytes"])] for k, v in figures["by_action"].items()],
        ),
        _table(["rule", "objects"], [[k, f"{v:,}"] for k, v in figures["by_rule"].items()]),
        "<h2>Largest moves</h2>",
        _table(
            ["media_id", "bytes", "from", "to", "action", "reason"],
            [
                [m["media_id"], f"{m['size_bytes']:,}", m["current_tier"], m["target_tier"], m["action"], m["reason"]]
                for m in largest_moves
            ],
        ),
    ]
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    )
    files["html"].write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>tiering plan {figures['plan_date']}</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    return files


def tiering_plan(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``storage_tiering.tiering_plan`` (entry point, ``darkroom.spark_task``): the plan and its report; returns its
    figures."""
    return plan(settings, as_of).figures


def validate_plan_task(settings: DarkroomSettings, *, as_of: datetime) -> int:
    """``storage_tiering.validate_plan``: the plan of the day before ``as_of`` against its contract."""
    from darkroom.spark import get_spark

    return validate_plan(get_spark(settings, "validate_plan"), settings, plan_date_of(as_of))


def main(argv: list[str] | None = None) -> int:
    from darkroom.dbt_runner import parse_as_of
    from darkroom.spark import get_spark

    parser = argparse.ArgumentParser(prog="python -m jobs.tiering_plan.main", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="settings YAML (else DARKROOM_CONFIG / local)")
    parser.add_argument("--as-of", required=True, help="end of the data interval, UTC ISO (the mart's as_of)")
    parser.add_argument("--cold-compression-ratio", type=float, default=1.0, help="zstd stored/original bytes")
    parser.add_argument("--validate", action="store_true", help="then validate the written plan")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    as_of = parse_as_of(args.as_of)
    spark = get_spark(settings, APP_NAME)
    result = plan(settings, as_of, spark, cold_compression_ratio=args.cold_compression_ratio)
    print(result.line())
    print(f"report: {result.report_files.get('html')}")
    if args.validate:
        try:
            n = validate_plan(spark, settings, result.plan_date)
        except PlanValidationError as e:
            print(str(e), file=sys.stderr)
            return 1
        print(f"tier plan {result.plan_date}: {n:,} media pass the plan contract")
    return 0


if __name__ == "__main__":
    sys.exit(main())
