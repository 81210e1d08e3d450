"""The fan-out cost model: pure DataFrame steps, no session, paths or Delta (``main`` does those).

An author ``a`` has ``followers`` f(a), ``active_followers`` active(a) (followers with a feed read in the active
window: only they get timeline writes), ``posts_per_day`` p(a) and ``reader_load`` L(a), the feed reads a day of all
its followers. A policy puts every author in push or pull mode; for a threshold T, an author is pushed when
f(a) <= T (T = -1 is pure pull, T = max f pure push). Per day:

- writes W = sum over pushed authors of p(a) * active(a)  (one ZADD per post and active follower);
- merges R = sum over pulled authors of L(a)  (every feed read merges each pull author it follows);
- stored entries S = sum over active users u of min(cap, sum over pushed followees a of p(a) * days)  (the timeline
  cap binds per timeline, so S is not a sum over authors) + sum over pulled authors of p(a) * days (their own
  ``celebrity:{a}:posts`` lists);
- cost = write_cost * W + merge_cost * R + stored_entry_cost * S.

``threshold_curve`` computes W, R, S and the cost for every distinct follower count at once: authors are grouped by
f and running sums taken over f; the capped storage comes from one window per user over its followees ordered by f
(the marginal entries each follower-count group adds before the cap is reached). Two budgets bound T:
``read_budget_floor`` (the p99 over feed reads of pull authors merged stays <= B: a reader's fan-in is <= B exactly
when T >= the (B+1)-th largest f among its followees, so the floor is a weighted quantile of that value) and
``freshness_ceiling`` (an author may be pushed only if its active followers can be written within the freshness
budget at the fan-out write throughput).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PURE_PULL = -1  # the threshold below every follower count: nobody is pushed
PUSH, PULL = "push", "pull"


@dataclass(frozen=True)
class CostModel:
    """Unit costs and the timeline's shape; every figure of a policy is computed with one of these."""

    write_cost: float
    merge_cost: float
    stored_entry_cost: float
    timeline_cap: int = 800
    timeline_days: float = 1.0

    def cost(self, writes: float, merges: float, stored: float) -> float:
        return self.write_cost * writes + self.merge_cost * merges + self.stored_entry_cost * stored


@dataclass(frozen=True)
class Budgets:
    """The read budget (p-quantile of pull authors merged per feed read) and the freshness budget in writes."""

    max_merges: int
    quantile: float
    max_push_active_followers: int  # freshness_seconds * fan-out writes per second


def authors(stats: DataFrame) -> DataFrame:
    """``marts.fct_author_fanout_stats`` -> the model's per-author rates (f, active, p, L)."""
    from pyspark.sql import functions as F

    return stats.select(
        F.col("author_id").cast("bigint").alias("author_id"),
        F.col("followers").cast("bigint").alias("followers"),
        F.col("active_followers").cast("bigint").alias("active_followers"),
        F.col("posts_per_day").cast("double").alias("posts_per_day"),
        F.col("follower_feed_reads_per_day").cast("double").alias("reader_load"),
    )


def readers(activity: DataFrame) -> DataFrame:
    """``marts.fct_user_read_activity`` -> per user: active or not, feed reads a day."""
    from pyspark.sql import functions as F

    return activity.select(
        F.col("user_id").cast("bigint").alias("user_id"),
        F.col("is_active").cast("boolean").alias("is_active"),
        F.col("feed_reads_per_day").cast("double").alias("reads_per_day"),
    )


def edges(follows: DataFrame, authors_df: DataFrame, readers_df: DataFrame) -> DataFrame:
    """Follow edges with what the model needs of both ends: the followee's f and p, the follower's activity."""
    from pyspark.sql import functions as F

    a = authors_df.select(
        F.col("author_id").alias("followee_id"), F.col("followers").alias("followee_followers"), "posts_per_day"
    )
    r = readers_df.select(F.col("user_id").alias("follower_id"), "is_active", "reads_per_day")
    return (
        follows.select(F.col("follower_id").cast("bigint"), F.col("followee_id").cast("bigint"))
        .join(a, on="followee_id", how="inner")
        .join(r, on="follower_id", how="left")
        .select(
            "follower_id",
            "followee_id",
            "followee_followers",
            "posts_per_day",
            F.coalesce(F.col("is_active"), F.lit(False)).alias("follower_active"),
            F.coalesce(F.col("reads_per_day"), F.lit(0.0)).alias("follower_reads_per_day"),
        )
    )


def graph_problems(follows: DataFrame, users: DataFrame) -> DataFrame:
    """Rows of the follow graph the model must never count: one row per problem kind with a count and examples.

    Kinds: ``self_follow`` (follower_id = followee_id), ``duplicate_edge`` (an edge listed more than once),
    ``unknown_user`` (an end missing from users). Empty when the graph is clean.
    """
    from pyspark.sql import functions as F

    pair = F.concat_ws("->", F.col("follower_id").cast("string"), F.col("followee_id").cast("string"))
    self_follows = follows.where(F.col("follower_id") == F.col("followee_id")).select(
        F.lit("self_follow").alias("problem"), pair.alias("example")
    )
    dupes = (
        follows.groupBy("follower_id", "followee_id")
        .count()
        .where(F.col("count") > 1)
        .select(F.lit("duplicate_edge").alias("problem"), pair.alias("example"))
    )
    ids = users.select(F.col("user_id").alias("id"))
    unknown = (
        follows.select(F.col("follower_id").alias("id"), pair.alias("example"))
        .unionByName(follows.select(F.col("followee_id").alias("id"), pair.alias("example")))
        .join(ids, on="id", how="left_anti")
        .select(F.lit("unknown_user").alias("problem"), "example")
    )
    return (
        self_follows.unionByName(dupes)
        .unionByName(unknown)
        .groupBy("problem")
        .agg(F.count("*").alias("rows"), F.slice(F.sort_array(F.collect_set("example")), 1, 5).alias("examples"))
        .select("problem", "rows", "examples")
    )


def threshold_curve(authors_df: DataFrame, edges_df: DataFrame, model: CostModel) -> DataFrame:
    """W, R, S and the cost for every threshold T in {-1} and the distinct follower counts, in one pass.

    Columns: threshold, push_authors, pull_authors, writes, merges, timeline_entries, celebrity_entries,
    stored_entries, write_cost, merge_cost, storage_cost, total_cost; one row per T, ordered by T.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    days, cap = F.lit(float(model.timeline_days)), F.lit(float(model.timeline_cap))
    # per user, its followees grouped by f, the entries each group adds to the timeline before the cap binds
    user_groups = (
        edges_df.where(F.col("follower_active"))
        .groupBy("follower_id", "followee_followers")
        .agg(F.sum(F.col("posts_per_day") * days).alias("entries"))
    )
    per_user = Window.partitionBy("follower_id").orderBy("followee_followers").rowsBetween(Window.unboundedPreceding, 0)
    timeline_by_f = (
        user_groups.withColumn("upto", F.sum("entries").over(per_user))
        .withColumn("added", F.least(F.col("upto"), cap) - F.least(F.col("upto") - F.col("entries"), cap))
        .groupBy(F.col("followee_followers").alias("followers"))
        .agg(F.sum("added").alias("timeline_added"))
    )
    by_f = (
        authors_df.groupBy("followers")
        .agg(
            F.count("*").alias("authors"),
            F.sum(F.col("posts_per_day") * F.col("active_followers")).alias("push_writes"),
            F.sum("reader_load").alias("pull_merges"),
            F.sum(F.col("posts_per_day") * days).alias("own_entries"),
        )
        .join(timeline_by_f, on="followers", how="left")
        .select(
            "followers",
            "authors",
            "push_writes",
            "pull_merges",
            "own_entries",
            F.coalesce(F.col("timeline_added"), F.lit(0.0)).alias("timeline_added"),
        )
    )
    floor = by_f.sparkSession.createDataFrame(
        [(PURE_PULL, 0, 0.0, 0.0, 0.0, 0.0)],
        "followers bigint, authors bigint, push_writes double, "
        "pull_merges double, own_entries double, timeline_added double",
    )
    # running sums over T ascending; the table has one row per distinct f, so one partition is the right size
    upto = Window.partitionBy(F.lit(0)).orderBy("followers").rowsBetween(Window.unboundedPreceding, 0)
    whole = Window.partitionBy(F.lit(0))
    curve = (
        floor.unionByName(by_f)
        .select(
            F.col("followers").alias("threshold"),
            F.sum("authors").over(upto).alias("push_authors"),
            (F.sum("authors").over(whole) - F.sum("authors").over(upto)).alias("pull_authors"),
            F.sum("push_writes").over(upto).alias("writes"),
            (F.sum("pull_merges").over(whole) - F.sum("pull_merges").over(upto)).alias("merges"),
            F.sum("timeline_added").over(upto).alias("timeline_entries"),
            (F.sum("own_entries").over(whole) - F.sum("own_entries").over(upto)).alias("celebrity_entries"),
        )
        .withColumn("stored_entries", F.col("timeline_entries") + F.col("celebrity_entries"))
    )
    return _costed(curve, model).orderBy("threshold")


def _costed(df: DataFrame, model: CostModel) -> DataFrame:
    from pyspark.sql import functions as F

    return (
        df.withColumn("write_cost", F.col("writes") * F.lit(model.write_cost))
        .withColumn("merge_cost", F.col("merges") * F.lit(model.merge_cost))
        .withColumn("storage_cost", F.col("stored_entries") * F.lit(model.stored_entry_cost))
        .withColumn("total_cost", F.col("write_cost") + F.col("merge_cost") + F.col("storage_cost"))
    )


def fan_in_floor_weights(edges_df: DataFrame, readers_df: DataFrame, max_merges: int) -> DataFrame:
    """Per reader, k = the (B+1)-th largest f among its followees (-1 if it follows B or fewer), grouped by k with the
    readers' feed reads a day as the weight: a reader merges at most B pull authors exactly when T >= k."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rank = Window.partitionBy("follower_id").orderBy(F.col("followee_followers").desc(), F.col("followee_id"))
    kth = (
        edges_df.select("follower_id", "followee_id", "followee_followers")
        .withColumn("rank", F.row_number().over(rank))
        .where(F.col("rank") == max_merges + 1)
        .select(F.col("follower_id").alias("user_id"), F.col("followee_followers").alias("k"))
    )
    return (
        readers_df.where(F.col("reads_per_day") > 0)
        .join(kth, on="user_id", how="left")
        .select(F.coalesce(F.col("k"), F.lit(PURE_PULL).cast("bigint")).alias("k"), "reads_per_day")
        .groupBy("k")
        .agg(F.sum("reads_per_day").alias("reads_per_day"))
        .select("k", "reads_per_day")
    )


def read_budget_floor(k_weights: list[tuple[int, float]], quantile: float) -> int:
    """The smallest T at which at most (1 - quantile) of feed reads merge more than B pull authors.

    ``k_weights``: (k, reads a day) from ``fan_in_floor_weights``. Over-budget reads at T are those with k > T, a
    non-increasing step function of T that only changes at the k values, so the answer is -1 or one of them.
    """
    total = sum(w for _, w in k_weights)
    allowed = (1.0 - quantile) * total * (1 + 1e-12)
    by_k: dict[int, float] = {}
    for k, w in k_weights:
        by_k[int(k)] = by_k.get(int(k), 0.0) + w
    at_or_below = 0.0
    for t in sorted({PURE_PULL, *by_k}):
        at_or_below += by_k.get(t, 0.0)
        if total - at_or_below <= allowed:
            return t
    return max(by_k, default=PURE_PULL)


def freshness_ceiling(authors_df: DataFrame, max_push_active_followers: int) -> int | None:
    """The largest threshold whose pushed authors all fit the freshness budget (None: every author fits).

    An author with more active followers than the budget must be pulled, so T stays below its follower count.
    """
    from pyspark.sql import functions as F

    row = authors_df.where(F.col("active_followers") > max_push_active_followers).agg(F.min("followers")).first()
    return None if row is None or row[0] is None else int(row[0]) - 1


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: int
    floor: int  # read budget: T >= floor
    ceiling: int | None  # freshness: T <= ceiling (None = unbounded)
    conflict: bool
    message: str


def choose_threshold(curve: list[dict], floor: int, ceiling: int | None) -> ThresholdChoice:
    """T* = the cheapest threshold in [floor, ceiling] (ties: the smaller T, fewer writes at post time).

    When the budgets conflict (floor > ceiling) no T meets both; the least-bad policy keeps freshness (a pushed post
    that cannot reach its followers in time is a broken feed, a slow merge is a slower one) and takes the ceiling,
    the smallest fan-in freshness allows; the message says how far the read budget is missed.
    """
    points = sorted(curve, key=lambda r: r["threshold"])
    top = points[-1]["threshold"]
    hi = top if ceiling is None else min(ceiling, top)
    if ceiling is not None and floor > ceiling:
        allowed = [p for p in points if p["threshold"] <= ceiling] or points[:1]
        t = allowed[-1]["threshold"]
        return ThresholdChoice(
            t,
            floor,
            ceiling,
            True,
            f"budgets conflict: the read budget needs T >= {floor} but freshness allows T <= {ceiling}; "
            f"least-bad policy T = {t} (freshness kept, read budget missed)",
        )
    feasible = [p for p in points if floor <= p["threshold"] <= hi]
    best = min(feasible, key=lambda p: (round(p["total_cost"], 9), p["threshold"]))
    return ThresholdChoice(best["threshold"], floor, ceiling, False, f"T* = {best['threshold']} in [{floor}, {hi}]")


def per_author_modes(
    authors_df: DataFrame, model: CostModel, *, threshold: int, floor: int, max_push_active_followers: int
) -> DataFrame:
    """Each author's mode under the threshold and under the per-author rule, with its own push and pull cost.

    Per-author rule (Feeding Frenzy, Silberstein et al. 2010): push exactly when the author's push cost (writes and
    the entries they store, before the cap) is below its pull cost (the merges its readers do and its own list),
    under the same budgets: authors with f <= the read-budget floor stay pushed (then no reader merges more pull
    authors than at the floor, where the budget holds) and authors over the freshness budget are pulled.
    """
    from pyspark.sql import functions as F

    p, act, L = F.col("posts_per_day"), F.col("active_followers"), F.col("reader_load")
    push_cost = p * act * F.lit(model.write_cost) + p * act * F.lit(model.timeline_days * model.stored_entry_cost)
    pull_cost = L * F.lit(model.merge_cost) + p * F.lit(model.timeline_days * model.stored_entry_cost)
    fresh = act <= F.lit(max_push_active_followers)
    per_author_push = fresh & ((F.col("followers") <= F.lit(floor)) | (F.col("push_cost") < F.col("pull_cost")))
    return (
        authors_df.withColumn("push_cost", push_cost)
        .withColumn("pull_cost", pull_cost)
        .select(
            "author_id",
            "followers",
            "active_followers",
            "posts_per_day",
            "reader_load",
            F.when(F.col("followers") <= F.lit(threshold), F.lit(PUSH)).otherwise(F.lit(PULL)).alias("threshold_mode"),
            F.when(per_author_push, F.lit(PUSH)).otherwise(F.lit(PULL)).alias("per_author_mode"),
            "push_cost",
            "pull_cost",
        )
    )


def policy_costs(modes: DataFrame, edges_df: DataFrame, model: CostModel, mode_column: str) -> dict[str, float]:
    """Exact W, R, S and costs of any assignment in ``modes[mode_column]`` (the cap taken per timeline)."""
    from pyspark.sql import functions as F

    pushed = F.col(mode_column) == F.lit(PUSH)
    totals = modes.agg(
        F.sum(F.when(pushed, 1).otherwise(0)).alias("push_authors"),
        F.sum(F.when(~pushed, 1).otherwise(0)).alias("pull_authors"),
        F.sum(F.when(pushed, F.col("posts_per_day") * F.col("active_followers")).otherwise(0.0)).alias("writes"),
        F.sum(F.when(~pushed, F.col("reader_load")).otherwise(0.0)).alias("merges"),
        F.sum(F.when(~pushed, F.col("posts_per_day") * F.lit(model.timeline_days)).otherwise(0.0)).alias("celebrity"),
    ).first()
    push_ids = modes.where(pushed).select(F.col("author_id").alias("followee_id"))
    timeline = (
        edges_df.where(F.col("follower_active"))
        .join(push_ids, on="followee_id", how="left_semi")
        .groupBy("follower_id")
        .agg(F.sum(F.col("posts_per_day") * F.lit(model.timeline_days)).alias("entries"))
        .agg(F.sum(F.least(F.col("entries"), F.lit(float(model.timeline_cap)))))
        .first()[0]
    )
    return costed_figures(
        model,
        push_authors=int(totals["push_authors"] or 0),
        pull_authors=int(totals["pull_authors"] or 0),
        writes=float(totals["writes"] or 0.0),
        merges=float(totals["merges"] or 0.0),
        timeline_entries=float(timeline or 0.0),
        celebrity_entries=float(totals["celebrity"] or 0.0),
    )


def costed_figures(model: CostModel, **f: float) -> dict[str, float]:
    stored = f["timeline_entries"] + f["celebrity_entries"]
    out = {**f, "stored_entries": stored}
    out["write_cost"] = f["writes"] * model.write_cost
    out["merge_cost"] = f["merges"] * model.merge_cost
    out["storage_cost"] = stored * model.stored_entry_cost
    out["total_cost"] = out["write_cost"] + out["merge_cost"] + out["storage_cost"]
    return out


def fan_in(edges_df: DataFrame, readers_df: DataFrame, modes: DataFrame, mode_columns: dict[str, str]) -> DataFrame:
    """Pull authors merged per feed read under several policies at once (one pass over the edges), as histograms:
    (policy, fan_in, readers, reads_per_day); ``mode_columns`` maps a policy name to its column in ``modes``."""
    from pyspark.sql import functions as F

    names = list(mode_columns)
    pulled = modes.select(
        F.col("author_id").alias("followee_id"),
        *[(F.col(c) == F.lit(PULL)).cast("bigint").alias(n) for n, c in mode_columns.items()],
    )
    per_user = (
        edges_df.select("follower_id", "followee_id")
        .join(pulled, on="followee_id", how="inner")
        .groupBy(F.col("follower_id").alias("user_id"))
        .agg(*[F.sum(n).alias(n) for n in names])
    )
    per_policy = F.explode(
        F.array(*[F.struct(F.lit(n).alias("policy"), F.coalesce(F.col(n), F.lit(0)).alias("fan_in")) for n in names])
    )
    return (
        readers_df.where(F.col("reads_per_day") > 0)
        .join(per_user, on="user_id", how="left")
        .select(per_policy.alias("p"), "reads_per_day")
        .groupBy(F.col("p.policy").alias("policy"), F.col("p.fan_in").cast("bigint").alias("fan_in"))
        .agg(F.count("*").alias("readers"), F.sum("reads_per_day").alias("reads_per_day"))
        .select("policy", "fan_in", "readers", "reads_per_day")
    )


def weighted_quantile(hist: list[tuple[int, float]], q: float) -> int:
    """The smallest value v with at least q of the weight at or below v (hist: (value, weight))."""
    total = sum(w for _, w in hist)
    if total <= 0:
        return 0
    acc = 0.0
    for v, w in sorted(hist):
        acc += w
        if acc >= q * total - 1e-9 * total:
            return int(v)
    return int(max(v for v, _ in hist))


def max_push_active_followers(freshness_seconds: float, writes_per_second: float) -> int:
    return int(math.floor(freshness_seconds * writes_per_second))
