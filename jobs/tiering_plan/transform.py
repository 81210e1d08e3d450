"""Tiering plan transforms: the per-media tier decision, the plan's contract checks, and the storage figures.

``decide`` and ``plan_violations`` are pure DataFrame functions (explicit ``select`` in and out); ``tier_moves``
aggregates a plan for the report; ``replication_factors`` and ``storage_figures`` are plain Python over those
aggregates. No session, no paths, no clock: time comes in as the mart's ``as_of``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

TIERS = ("hot", "warm", "cold")
KEEP, DEMOTE_WARM, ARCHIVE_COLD, PROMOTE_HOT = "keep", "demote_warm", "archive_cold", "promote_hot"
# (current_tier, target_tier) a plan may contain. Cold never leaves cold in a plan: a restore happens on demand, when
# a cold media is read, not as a planned move; warm -> hot is the promotion (behind hysteresis).
ALLOWED_TRANSITIONS = frozenset(
    {
        ("hot", "hot"),
        ("warm", "warm"),
        ("cold", "cold"),
        ("hot", "warm"),
        ("hot", "cold"),
        ("warm", "cold"),
        ("warm", "hot"),
    }
)
ACTION_BY_TARGET = {"warm": DEMOTE_WARM, "cold": ARCHIVE_COLD, "hot": PROMOTE_HOT}
DAY_MICROS = 86_400_000_000

MART_COLUMNS = (
    "media_id",
    "size_bytes",
    "age_days",
    "days_since_last_access",
    "reads_7d",
    "read_rate_1d",
    "read_rate_7d",
    "read_rate_30d",
    "read_rate_90d",
    "current_tier",
    "tier_since",
    "as_of",
)
DECISION_COLUMNS = (
    "media_id",
    "size_bytes",
    "current_tier",
    "target_tier",
    "action",
    "rule",
    "reason",
    "age_days",
    "days_in_tier",
    "days_since_last_access",
    "reads_7d",
    "read_rate_1d",
    "read_rate_7d",
    "read_rate_30d",
    "read_rate_90d",
    "as_of",
    "plan_date",
)


def _num(x: float) -> str:
    """A threshold as the reason shows it: 10.0 -> '10', 2.5 -> '2.5'."""
    return f"{x:g}"


def action_for(current: Column, target: Column) -> Column:
    """keep when the tier does not change, else the move named by the target tier (null for an unknown target)."""
    by_target = F.create_map(*[F.lit(x) for kv in ACTION_BY_TARGET.items() for x in kv])
    return F.when(current == target, F.lit(KEEP)).otherwise(by_target[target])


def decide(
    df: DataFrame,
    *,
    hot_recent_days: float,
    hot_reads_per_day: float,
    warm_reads_per_week: float,
    cold_idle_days: float,
    hysteresis: float,
    min_days_in_tier: float,
) -> DataFrame:
    """One decision per media of ``dim_media_tiering``: its target tier, the action, the rule and its reason.

    The rules, first match wins (the read rate is ``read_rate_7d``, reads a day over the last 7 days; reads a week
    is ``reads_7d``; idle days are ``days_since_last_access``, or ``age_days`` for a media never read):

    1. ``cold_stays``: cold media stay cold (a restore is on demand, never planned).
    2. ``recent_upload``: a hot media younger than ``hot_recent_days`` stays hot (exactly that old: the rules apply).
    3. ``idle_<N>d``: idle for ``cold_idle_days`` or more -> cold (from hot or warm).
    4. ``hot_reads``: a hot media read more than ``hot_reads_per_day`` stays hot.
    5. ``promote_reads``: a warm media read more than ``hot_reads_per_day x hysteresis`` -> hot.
    6. ``hysteresis``: a warm media read more than ``hot_reads_per_day`` but not above the promotion bar stays warm.
    7. ``cool_reads``: read less than ``warm_reads_per_week`` in the last 7 days -> warm (hot moves, warm stays).
    8. ``between_bands``: otherwise the media stays where it is.

    Then ``min_days_in_tier``: a media whose wanted tier differs from its current one stays put while it has been
    in its tier (``as_of - tier_since``) less than ``min_days_in_tier`` days, the reason naming the move it waits
    for. The one exception is a promotion: a warm media read above the promotion bar is served from hot at once
    (the hysteresis already keeps it from flapping, and serving a burst from erasure-coded warm costs more).
    """
    hot_bar = hot_reads_per_day * hysteresis
    cur = F.col("current_tier")
    rate = F.col("read_rate_7d")
    reads_7d = F.col("reads_7d")
    age = F.col("age_days")
    since_read = F.col("days_since_last_access")
    idle = F.coalesce(since_read, age)
    days_in_tier = (F.unix_micros(F.col("as_of")) - F.unix_micros(F.col("tier_since"))).cast("double") / DAY_MICROS

    def fmt(template: str, *cols: Column) -> Column:
        return F.format_string(template, *cols)

    idle_code = f"idle_{_num(cold_idle_days)}d"
    rules: list[tuple[Column, Column, str, Column]] = [
        (cur == "cold", F.lit("cold"), "cold_stays", F.lit("cold_stays: restores are on demand, never planned")),
        (
            (cur == "hot") & (age < hot_recent_days),
            F.lit("hot"),
            "recent_upload",
            fmt(f"recent_upload: %.1f days old < {_num(hot_recent_days)}", age),
        ),
        (
            idle >= cold_idle_days,
            F.lit("cold"),
            idle_code,
            F.when(since_read.isNull(), fmt(f"{idle_code}: never read in %.1f days", age)).otherwise(
                fmt(f"{idle_code}: last read %.1f days ago", since_read)
            ),
        ),
        (
            (cur == "hot") & (rate > hot_reads_per_day),
            F.lit("hot"),
            "hot_reads",
            fmt(f"hot_reads: %.1f reads/day > {_num(hot_reads_per_day)}", rate),
        ),
        (
            (cur == "warm") & (rate > hot_bar),
            F.lit("hot"),
            "promote_reads",
            fmt(
                f"promote_reads: %.1f reads/day > {_num(hot_bar)} ({_num(hot_reads_per_day)} x {_num(hysteresis)})",
                rate,
            ),
        ),
        (
            (cur == "warm") & (rate > hot_reads_per_day),
            F.lit("warm"),
            "hysteresis",
            fmt(
                f"hysteresis: %.1f reads/day > {_num(hot_reads_per_day)} but <= {_num(hot_bar)} "
                f"({_num(hot_reads_per_day)} x {_num(hysteresis)})",
                rate,
            ),
        ),
        (
            reads_7d < warm_reads_per_week,
            F.lit("warm"),
            "cool_reads",
            fmt(f"cool_reads: %d reads in 7 days < {_num(warm_reads_per_week)}/week", reads_7d),
        ),
    ]

    def first_match(pick, otherwise: Column) -> Column:
        """CASE WHEN rule 1 THEN pick(rule 1) WHEN rule 2 ... ELSE otherwise END."""
        case = F.when(rules[0][0], pick(rules[0]))
        for rule in rules[1:]:
            case = case.when(rule[0], pick(rule))
        return case.otherwise(otherwise)

    wanted = first_match(lambda r: r[1], cur)
    wanted_rule = first_match(lambda r: F.lit(r[2]), F.lit("between_bands"))
    wanted_reason = first_match(
        lambda r: r[3], fmt("between_bands: %.1f reads/day, %d reads in 7 days", rate, reads_7d)
    )

    held = (
        (F.col("wanted_tier") != cur)
        & (F.col("days_in_tier") < min_days_in_tier)
        & ~((cur == "warm") & (F.col("wanted_tier") == "hot"))
    )
    held_reason = fmt(
        f"min_days_in_tier: %.1f days in %s < {_num(min_days_in_tier)}, waits to move to %s (%s)",
        F.col("days_in_tier"),
        cur,
        F.col("wanted_tier"),
        F.col("wanted_reason"),
    )
    return (
        df.select(*MART_COLUMNS)
        .withColumns(
            {
                "days_in_tier": days_in_tier,
                "wanted_tier": wanted,
                "wanted_rule": wanted_rule,
                "wanted_reason": wanted_reason,
            }
        )
        .withColumns(
            {
                "target_tier": F.when(held, cur).otherwise(F.col("wanted_tier")),
                "rule": F.when(held, F.lit("min_days_in_tier")).otherwise(F.col("wanted_rule")),
                "reason": F.when(held, held_reason).otherwise(F.col("wanted_reason")),
            }
        )
        .withColumns(
            {
                "action": action_for(cur, F.col("target_tier")),
                # The last day of data the plan saw (as_of at midnight is the day before), like dbt's as_of_date().
                "plan_date": F.to_date(F.timestamp_micros(F.unix_micros(F.col("as_of")) - 1)),
            }
        )
        .select(*DECISION_COLUMNS)
    )


def plan_violations(plan: DataFrame, mart_media: DataFrame) -> DataFrame:
    """Every plan row with the contract rules it breaks (``rules``, empty when none): one column per rule check.

    Rules: ``unknown_media`` (not in the mart), ``unknown_target_tier`` (not hot, warm or cold),
    ``transition_not_allowed`` ((current_tier, target_tier) not in ALLOWED_TRANSITIONS), ``action_mismatch`` (the
    action does not name the transition), ``duplicate_media`` (media_id twice in the plan), ``size_not_positive``.
    """
    from pyspark.sql import Window

    known = mart_media.select(F.col("media_id")).dropDuplicates(["media_id"]).withColumn("_in_mart", F.lit(True))
    allowed = [f"{a}->{b}" for a, b in sorted(ALLOWED_TRANSITIONS)]
    checks = {
        "unknown_media": F.col("_in_mart").isNull(),
        "unknown_target_tier": F.col("target_tier").isNull() | ~F.col("target_tier").isin(*TIERS),
        "transition_not_allowed": ~F.concat_ws("->", F.col("current_tier"), F.col("target_tier")).isin(*allowed),
        "action_mismatch": ~F.coalesce(
            F.col("action") == action_for(F.col("current_tier"), F.col("target_tier")), F.lit(False)
        ),
        "duplicate_media": F.count(F.lit(1)).over(Window.partitionBy("media_id")) > 1,
        "size_not_positive": F.coalesce(F.col("size_bytes") <= 0, F.lit(True)),
    }
    return (
        plan.select("media_id", "size_bytes", "current_tier", "target_tier", "action")
        .join(known, on="media_id", how="left")
        .select(
            "media_id",
            "current_tier",
            "target_tier",
            F.filter(
                F.array(*[F.when(cond, F.lit(rule)) for rule, cond in checks.items()]), lambda r: r.isNotNull()
            ).alias("rules"),
        )
    )


def tier_moves(plan: DataFrame) -> DataFrame:
    """Objects and bytes of a plan by (current_tier, target_tier, action, rule): what the report is made of."""
    return (
        plan.select("current_tier", "target_tier", "action", "rule", "size_bytes")
        .groupBy("current_tier", "target_tier", "action", "rule")
        .agg(F.count(F.lit(1)).alias("objects"), F.sum(F.col("size_bytes")).cast("bigint").alias("bytes"))
        .select("current_tier", "target_tier", "action", "rule", "objects", "bytes")
    )


# Haystack machines store each replica on RAID-6 (1.2x); f4 stripes a volume RS(k, m) and keeps, per two volumes in
# two regions, their XOR in a third (x 1.5); cold keeps whole copies in ``cold_regions`` regions, zstd-compressed.
HOT_RAID_OVERHEAD = 1.2
WARM_XOR_OVERHEAD = 1.5


def replication_factors(
    *,
    hot_replicas: int,
    ec_data_blocks: int,
    ec_parity_blocks: int,
    cold_copies: int,
    cold_compression_ratio: float = 1.0,
) -> dict[str, float]:
    """Raw bytes stored per logical byte in each tier: hot 3 x 1.2 = 3.6, warm 1.4 x 1.5 = 2.1, cold 2 x ratio.

    ``cold_compression_ratio`` is zstd's stored bytes over original bytes (1.0: photos, already compressed, do not
    shrink; 0.5 would halve them).
    """
    if cold_compression_ratio <= 0:
        raise ValueError(f"cold_compression_ratio must be > 0, got {cold_compression_ratio}")
    return {
        "hot": round(hot_replicas * HOT_RAID_OVERHEAD, 6),
        "warm": round((ec_data_blocks + ec_parity_blocks) / ec_data_blocks * WARM_XOR_OVERHEAD, 6),
        "cold": round(cold_copies * cold_compression_ratio, 6),
    }


GB = 10**9  # prices are per decimal GB-month of raw stored bytes


def _tier_block(objects: int, logical: int, factor: float, price: float) -> dict:
    stored = logical * factor
    return {
        "objects": objects,
        "bytes": logical,
        "stored_bytes": round(stored),
        "replication_factor": factor,
        "cost_per_month": round(stored / GB * price, 6),
    }


def _side(rows: list[dict], column: str, factors: dict[str, float], prices: dict[str, float]) -> dict:
    out = {}
    for tier in TIERS:
        objects = sum(r["objects"] for r in rows if r[column] == tier)
        logical = sum(r["bytes"] or 0 for r in rows if r[column] == tier)
        out[tier] = _tier_block(objects, logical, factors[tier], prices[tier])
    logical = sum(out[t]["bytes"] for t in TIERS)
    stored = sum(out[t]["bytes"] * factors[t] for t in TIERS)
    out["total"] = {
        "objects": sum(out[t]["objects"] for t in TIERS),
        "bytes": logical,
        "stored_bytes": round(stored),
        "replication_factor": round(stored / logical, 6) if logical else None,
        "cost_per_month": round(sum(out[t]["cost_per_month"] for t in TIERS), 6),
    }
    return out


def storage_figures(moves: list[dict], *, factors: dict[str, float], prices: dict[str, float]) -> dict:
    """Bytes, objects, stored bytes, replication factor and monthly cost per tier before and after the plan.

    ``moves`` are ``tier_moves`` rows as dicts. Costs are stored bytes / 10^9 x the tier's price per GB-month;
    the saving is against keeping every byte hot (and against the tiers before the plan).
    """
    before = _side(moves, "current_tier", factors, prices)
    after = _side(moves, "target_tier", factors, prices)
    all_hot = _tier_block(after["total"]["objects"], after["total"]["bytes"], factors["hot"], prices["hot"])
    saving = all_hot["cost_per_month"] - after["total"]["cost_per_month"]
    by_action = {a: {"objects": 0, "bytes": 0} for a in (KEEP, DEMOTE_WARM, ARCHIVE_COLD, PROMOTE_HOT)}
    by_rule: dict[str, int] = {}
    for r in moves:
        slot = by_action.setdefault(r["action"], {"objects": 0, "bytes": 0})
        slot["objects"] += r["objects"]
        slot["bytes"] += r["bytes"] or 0
        by_rule[r["rule"]] = by_rule.get(r["rule"], 0) + r["objects"]
    return {
        "replication_factor": dict(factors),
        "price_per_gb_month": dict(prices),
        "before": before,
        "after": after,
        "all_hot": all_hot,
        "saving_per_month_vs_all_hot": round(saving, 6),
        "saving_fraction_vs_all_hot": round(saving / all_hot["cost_per_month"], 6)
        if all_hot["cost_per_month"]
        else 0.0,
        "saving_per_month_vs_before": round(before["total"]["cost_per_month"] - after["total"]["cost_per_month"], 6),
        "by_action": by_action,
        "by_rule": dict(sorted(by_rule.items())),
    }
