"""The tiering plan over access events: Spark (our job) against DuckDB on the same Parquet files, in the same run.

Generated, not timed (numpy + pyarrow, seeded): ``media`` (1M media over 180 days, their size, current tier and
since when) and ``access`` (50M reads: ``media_id, accessed_at, bytes, cdn_hit``) in 10 Parquet files. Each media
has a popularity (log-normal) and a decay time (3, 20 or 400 days); its reads come at ages drawn from the truncated
exponential, so most media are read a lot when new and rarely later, and a few stay popular.

Timed: the tiering aggregation as the mart computes it (reads over 1, 7, 30 and 90 days, the last read, joined with
each media's age and tier), then the tier decision, the result written as Parquet:
- Spark (``local[2]``): a DataFrame aggregation reading only ``media_id, accessed_at``, then
  ``jobs.tiering_plan.transform.decide``;
- DuckDB (2 threads): the same aggregation and the same decision rules (tiers, actions, rules, reasons) in one SQL
  statement.
After an untimed warm-up on one file, each engine runs ``ROUNDS`` times, alternating; the best wall time of each
counts. Both must agree on the per-tier counts (checked); mismatches per media of tier, action, rule and reason are
reported. ``ratio`` = Spark seconds / DuckDB seconds (the issue's goal: within 4x on this machine); the CPU seconds
of each (the driver JVM's, DuckDB's process) and the load average are reported beside it, the machine being
shared. ``--quick``: 2M events over 50k media in 2 files.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from darkroom.settings import DarkroomSettings

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
WINDOWS = (1, 7, 30, 90)
HISTORY_DAYS = 180
DAY_US = 86_400_000_000
THREADS = 2
SEED = 20261101
FULL = {"media": 1_000_000, "events": 50_000_000, "files": 10}
QUICK = {"media": 50_000, "events": 2_000_000, "files": 2}
# Each engine runs this many times, alternating; the best wall time of each counts (the machine is shared, and the
# JVM's JIT keeps compiling the aggregate's generated code over the first runs).
ROUNDS = 3
# Spark, sized for this machine (2 cores): one scan task per core over all the files (each task's partial aggregate
# then holds each media once: ~1.5M rows shuffled instead of ~6M from one task per file); the first-level codegen
# hash map of the partial aggregate large enough for every media a task sees (default 2^16 rows, past which rows go
# to the slower second-level map); a few shuffle partitions that AQE may coalesce. The aggregate probes a ~100 MB
# hash map at random: transparent huge pages for the JVM heap cut its TLB misses (a third of its CPU time here).
SPARK_SQL_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    "spark.sql.files.maxPartitionBytes": str(1 << 30),
    "spark.sql.codegen.aggregate.fastHashMap.capacityBit": "22",
}
DRIVER_MEMORY = "6g"
JAVA_OPTIONS = "-XX:+UseTransparentHugePages"


def window_starts(as_of: datetime) -> dict[int, datetime]:
    """The first instant of each N-day window, as dbt's ``window_start_date(N)`` .. ``as_of_date()``."""
    last_day = (as_of - timedelta(microseconds=1)).date()
    return {n: datetime.combine(last_day - timedelta(days=n - 1), datetime.min.time(), UTC) for n in WINDOWS}


# ---------------------------------------------------------------------------------------------------------------------
# Data (not timed)


def generate(out: Path, *, media: int, events: int, files: int, seed: int = SEED) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    as_of_us = int(AS_OF.timestamp() * 1_000_000)
    ids = np.arange(1, media + 1, dtype=np.int64)
    age = rng.uniform(0, HISTORY_DAYS, media)
    created_us = as_of_us - (age * DAY_US).astype(np.int64)
    size = np.clip(rng.lognormal(np.log(250_000), 0.7, media), 1_000, 50_000_000).astype(np.int64)
    u = rng.random(media)
    tier = np.where(age < 14, "hot", np.where(u < 0.55, "hot", np.where(u < 0.88, "warm", "cold")))
    moved = (tier != "hot") | (rng.random(media) < 0.2)
    in_tier = np.where(moved, rng.uniform(0, 1, media) * age, age)
    tier_since_us = as_of_us - (in_tier * DAY_US).astype(np.int64)
    ts = pa.timestamp("us", tz="UTC")
    (out / "media").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "media_id": ids,
                "size_bytes": size,
                "created_at": pa.array(created_us, ts),
                "current_tier": tier,
                "tier_since": pa.array(tier_since_us, ts),
            }
        ),
        out / "media" / "media.parquet",
    )

    # Reads of media i at age a: popularity_i x exp(-a / tau_i) for a in [0, age_i); media drawn by expected reads.
    popularity = rng.lognormal(0, 1.6, media)
    tau = rng.choice(np.array([3.0, 20.0, 400.0]), media, p=[0.6, 0.3, 0.1])
    reach = -np.expm1(-age / tau)  # 1 - exp(-age / tau)
    cdf = np.cumsum(popularity * tau * reach)
    (out / "access").mkdir(parents=True, exist_ok=True)
    per_file = [events // files + (1 if i < events % files else 0) for i in range(files)]
    for i, n in enumerate(per_file):
        idx = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), media - 1)
        read_age = -tau[idx] * np.log1p(-rng.random(n) * reach[idx])
        at = np.minimum(created_us[idx] + (read_age * DAY_US).astype(np.int64), as_of_us - 1)
        order = np.argsort(at, kind="stable")  # a log file is in time order
        pq.write_table(
            pa.table(
                {
                    "media_id": ids[idx][order],
                    "accessed_at": pa.array(at[order], ts),
                    "bytes": size[idx][order],
                    "cdn_hit": rng.random(n)[order] < 0.85,
                }
            ),
            out / "access" / f"part-{i:03d}.parquet",
        )
    return {
        "media": media,
        "events": events,
        "files": files,
        "bytes_on_disk": sum(p.stat().st_size for p in (out / "access").glob("*.parquet")),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Spark: our job's code


def spark_plan(spark, access: list[str], media: str, out: str, policy: dict) -> None:
    from pyspark.sql import functions as F

    from jobs.tiering_plan.transform import decide

    starts = window_starts(AS_OF)
    as_of = F.lit(AS_OF)
    ts = F.col("accessed_at")
    windowed = (
        spark.read.parquet(*access)
        .select("media_id", "accessed_at")
        .where(ts < as_of)
        .groupBy("media_id")
        .agg(
            *[F.count_if(ts >= F.lit(starts[n])).alias(f"reads_{n}d") for n in WINDOWS],
            F.max(ts).alias("last_accessed_at"),
        )
    )

    def days(col):
        return (F.unix_micros(as_of) - F.unix_micros(col)).cast("double") / DAY_US

    mart = (
        spark.read.parquet(media)
        .select("media_id", "size_bytes", "created_at", "current_tier", "tier_since")
        # The aggregate is already partitioned by media_id: a hash join on it, no sort of either side.
        .join(windowed.hint("shuffle_hash"), on="media_id", how="left")
        .select(
            "media_id",
            "size_bytes",
            days(F.col("created_at")).alias("age_days"),
            days(F.col("last_accessed_at")).alias("days_since_last_access"),
            *[F.coalesce(F.col(f"reads_{n}d"), F.lit(0)).cast("bigint").alias(f"reads_{n}d") for n in WINDOWS],
            *[
                (F.coalesce(F.col(f"reads_{n}d"), F.lit(0)).cast("double") / n).alias(f"read_rate_{n}d")
                for n in WINDOWS
            ],
            "current_tier",
            "tier_since",
            as_of.alias("as_of"),
        )
    )
    decide(mart, **policy).write.mode("overwrite").parquet(out)


# ---------------------------------------------------------------------------------------------------------------------
# DuckDB: the same aggregation and rules in SQL


def _ts(d: datetime) -> str:
    return f"TIMESTAMPTZ '{d.strftime('%Y-%m-%d %H:%M:%S')}+00'"


def _g(x: float) -> str:
    return f"{x:g}"


def duckdb_sql(access: list[str], media: str, out: str, p: dict) -> str:
    starts = window_starts(AS_OF)
    as_of = _ts(AS_OF)
    files = ", ".join(f"'{f}'" for f in access)
    bar = p["hot_reads_per_day"] * p["hysteresis"]
    hot, hyst, warm_week = _g(p["hot_reads_per_day"]), _g(p["hysteresis"]), _g(p["warm_reads_per_week"])
    idle_code = f"idle_{_g(p['cold_idle_days'])}d"

    def days(col: str) -> str:
        return f"cast(epoch_us({as_of}) - epoch_us({col}) as double) / {DAY_US}"

    # (condition, tier, rule, reason): transform.decide's rules in its order.
    rules = [
        ("current_tier = 'cold'", "'cold'", "'cold_stays'", "'cold_stays: restores are on demand, never planned'"),
        (
            f"current_tier = 'hot' and age_days < {p['hot_recent_days']}",
            "'hot'",
            "'recent_upload'",
            f"printf('recent_upload: %.1f days old < {_g(p['hot_recent_days'])}', age_days)",
        ),
        (
            f"idle_days >= {p['cold_idle_days']}",
            "'cold'",
            f"'{idle_code}'",
            f"case when days_since_last_access is null "
            f"then printf('{idle_code}: never read in %.1f days', age_days) "
            f"else printf('{idle_code}: last read %.1f days ago', days_since_last_access) end",
        ),
        (
            f"current_tier = 'hot' and read_rate_7d > {p['hot_reads_per_day']}",
            "'hot'",
            "'hot_reads'",
            f"printf('hot_reads: %.1f reads/day > {hot}', read_rate_7d)",
        ),
        (
            f"current_tier = 'warm' and read_rate_7d > {bar}",
            "'hot'",
            "'promote_reads'",
            f"printf('promote_reads: %.1f reads/day > {_g(bar)} ({hot} x {hyst})', read_rate_7d)",
        ),
        (
            f"current_tier = 'warm' and read_rate_7d > {p['hot_reads_per_day']}",
            "'warm'",
            "'hysteresis'",
            f"printf('hysteresis: %.1f reads/day > {hot} but <= {_g(bar)} ({hot} x {hyst})', read_rate_7d)",
        ),
        (
            f"reads_7d < {p['warm_reads_per_week']}",
            "'warm'",
            "'cool_reads'",
            f"printf('cool_reads: %d reads in 7 days < {warm_week}/week', reads_7d)",
        ),
    ]
    between = "printf('between_bands: %.1f reads/day, %d reads in 7 days', read_rate_7d, reads_7d)"

    def case(pick: int, default: str) -> str:
        whens = " ".join(f"when {r[0]} then {r[pick]}" for r in rules)
        return f"case {whens} else {default} end"

    counts = ",\n".join(f"count_if(accessed_at >= {_ts(starts[n])}) as reads_{n}d" for n in WINDOWS)
    mart_counts = ",\n".join(
        f"coalesce(w.reads_{n}d, 0) as reads_{n}d, cast(coalesce(w.reads_{n}d, 0) as double) / {n} as read_rate_{n}d"
        for n in WINDOWS
    )
    return f"""
copy (
with
windowed as (
    select media_id, {counts}, max(accessed_at) as last_accessed_at
    from read_parquet([{files}])
    where accessed_at < {as_of}
    group by media_id
),
mart as (
    select m.media_id, m.size_bytes, {days("m.created_at")} as age_days,
        {days("w.last_accessed_at")} as days_since_last_access,
        {mart_counts},
        m.current_tier, m.tier_since, {days("m.tier_since")} as days_in_tier
    from read_parquet('{media}') as m
    left join windowed as w on m.media_id = w.media_id
),
wanted as (
    select *, {case(1, "current_tier")} as wanted_tier, {case(2, "'between_bands'")} as wanted_rule,
        {case(3, between)} as wanted_reason
    from (select *, coalesce(days_since_last_access, age_days) as idle_days from mart)
),
held as (
    select *, (wanted_tier <> current_tier and days_in_tier < {p["min_days_in_tier"]}
        and not (current_tier = 'warm' and wanted_tier = 'hot')) as held
    from wanted
),
final as (
    select media_id, size_bytes, current_tier,
        case when held then current_tier else wanted_tier end as target_tier,
        case when held then 'min_days_in_tier' else wanted_rule end as rule,
        case when held then printf(
            'min_days_in_tier: %.1f days in %s < {_g(p["min_days_in_tier"])}, waits to move to %s (%s)',
            days_in_tier, current_tier, wanted_tier, wanted_reason)
        else wanted_reason end as reason,
        age_days, days_in_tier, days_since_last_access, reads_7d,
        read_rate_1d, read_rate_7d, read_rate_30d, read_rate_90d
    from held
)
select *, case when target_tier = current_tier then 'keep' when target_tier = 'warm' then 'demote_warm'
    when target_tier = 'cold' then 'archive_cold' else 'promote_hot' end as action,
    {as_of} as as_of
from final
) to '{out}' (format parquet)
"""


# ---------------------------------------------------------------------------------------------------------------------


def _compare(spark_out: str, duck_out: str) -> dict:
    import duckdb

    con = duckdb.connect()
    s = f"read_parquet('{spark_out}/*.parquet')"
    d = f"read_parquet('{duck_out}')"
    tiers = {}
    for name, src in (("spark", s), ("duckdb", d)):
        tiers[name] = dict(con.execute(f"select target_tier, count(*) from {src} group by 1 order by 1").fetchall())
    row = con.execute(
        f"""select count(*) as media,
            count_if(a.target_tier is distinct from b.target_tier or a.action is distinct from b.action
                     or a.rule is distinct from b.rule) as decision_mismatches,
            count_if(a.reason is distinct from b.reason) as reason_mismatches
        from {s} as a full outer join {d} as b on a.media_id = b.media_id"""
    ).fetchone()
    actions = dict(con.execute(f"select action, count(*) from {s} group by 1 order by 1").fetchall())
    rules = dict(con.execute(f"select rule, count(*) from {s} group by 1 order by 1").fetchall())
    examples = con.execute(
        f"select a.media_id, a.reason, b.reason from {s} as a join {d} as b on a.media_id = b.media_id "
        "where a.reason <> b.reason order by 1 limit 3"
    ).fetchall()
    con.close()
    return {
        "tiers": tiers,
        "media": row[0],
        "decision_mismatches": row[1],
        "reason_mismatches": row[2],
        "reason_mismatch_examples": [list(e) for e in examples],
        "actions": actions,
        "rules": rules,
    }


def _jvm_cpu_s(spark) -> float | None:
    """CPU seconds of the local driver JVM (Linux /proc), for the CPU-time figures beside the wall times."""
    try:
        pid = spark.sparkContext._gateway.proc.pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, IndexError, ValueError):
        return None


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(settings: DarkroomSettings, *, quick: bool) -> dict:
    import duckdb

    from darkroom.spark import get_spark
    from jobs.tiering_plan.main import policy

    size = QUICK if quick else FULL
    work = settings.state_dir / "bench" / "tiering_plan"
    shutil.rmtree(work, ignore_errors=True)
    spark_settings = settings.spark.model_copy(
        update={
            "master": f"local[{THREADS}]",
            "driver_memory": DRIVER_MEMORY,
            "conf": {
                **settings.spark.conf,
                "spark.driver.extraJavaOptions": f"-Dderby.system.home={work / 'derby'} {JAVA_OPTIONS}",
            },
        }
    )
    st = settings.model_copy(update={"state_dir": work, "jars_path": settings.jars_dir, "spark": spark_settings})
    t0 = time.perf_counter()
    data = generate(work / "data", **size)
    access = sorted(str(p) for p in (work / "data" / "access").glob("*.parquet"))
    media = str(work / "data" / "media" / "media.parquet")
    print(f"[bench tiering_plan] {size['events']:,} events in {len(access)} files: {time.perf_counter() - t0:.0f}s")
    pol = policy(st.tiering)

    spark = get_spark(st, "bench-tiering_plan")
    for k, v in SPARK_SQL_CONF.items():
        spark.conf.set(k, v)
    con = duckdb.connect()
    con.execute(f"set threads = {THREADS}")
    con.execute("set preserve_insertion_order = false")

    def spark_run(files, out) -> tuple[float, float | None]:
        c, t = _jvm_cpu_s(spark), time.perf_counter()
        spark_plan(spark, files, media, str(out), pol)
        wall, c2 = time.perf_counter() - t, _jvm_cpu_s(spark)
        return wall, (c2 - c if c is not None and c2 is not None else None)

    def duck_run(files, out) -> tuple[float, float]:
        c, t = _own_cpu_s(), time.perf_counter()
        con.execute(duckdb_sql(files, media, str(out), pol))
        return time.perf_counter() - t, _own_cpu_s() - c

    warm = {
        "spark_s": spark_run(access[:1], work / "warm_spark")[0],
        "duckdb_s": duck_run(access[:1], work / "w.pq")[0],
    }
    load_before = os.getloadavg()
    rounds = []
    for i in range(ROUNDS):
        spark_wall, spark_cpu = spark_run(access, work / "out_spark")
        duck_wall, duck_cpu = duck_run(access, work / "out_duckdb.parquet")
        rounds.append(
            {"spark_s": spark_wall, "duckdb_s": duck_wall, "spark_cpu_s": spark_cpu, "duckdb_cpu_s": duck_cpu}
        )
        print(
            f"[bench tiering_plan] round {i + 1}/{ROUNDS}: Spark local[{THREADS}] {spark_wall:.1f}s, "
            f"DuckDB ({THREADS} threads) {duck_wall:.1f}s",
            flush=True,
        )
    load_after = os.getloadavg()
    con.close()
    check = _compare(str(work / "out_spark"), str(work / "out_duckdb.parquet"))
    if check["tiers"]["spark"] != check["tiers"]["duckdb"]:
        raise RuntimeError(f"Spark and DuckDB disagree on the per-tier counts: {check['tiers']}")
    spark_s = min(r["spark_s"] for r in rounds)
    duck_s = min(r["duckdb_s"] for r in rounds)
    spark_cpu = min((r["spark_cpu_s"] for r in rounds if r["spark_cpu_s"] is not None), default=None)
    duck_cpu = min(r["duckdb_cpu_s"] for r in rounds)
    return {
        "ratio": round(spark_s / duck_s, 3),
        "ratio_of": "Spark seconds over DuckDB seconds (best of the rounds each), the same aggregation and tier "
        f"decision on the same Parquet files in the same run ({THREADS} cores each; goal: within 4x)",
        "spark_s": round(spark_s, 2),
        "duckdb_s": round(duck_s, 2),
        "cpu_s": {"spark_jvm": None if spark_cpu is None else round(spark_cpu, 2), "duckdb": round(duck_cpu, 2)},
        "cpu_ratio": None if spark_cpu is None else round(spark_cpu / duck_cpu, 3),
        "events_per_s": {"spark": round(size["events"] / spark_s), "duckdb": round(size["events"] / duck_s)},
        "rounds": [{k: None if v is None else round(v, 2) for k, v in r.items()} for r in rounds],
        "warm_up_one_file_s": {k: round(v, 2) for k, v in warm.items()},
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "rows": {"events": size["events"], "media": size["media"]},
        "files": len(access),
        "access_bytes_on_disk": data["bytes_on_disk"],
        "threads": {"spark": f"local[{THREADS}]", "duckdb": THREADS},
        "check": check,
        "params": {
            "as_of": AS_OF.isoformat(),
            "seed": SEED,
            "history_days": HISTORY_DAYS,
            "rounds": ROUNDS,
            "policy": pol,
            "spark_sql_conf": SPARK_SQL_CONF,
            "spark_driver_memory": DRIVER_MEMORY,
            "spark_java_options": JAVA_OPTIONS,
            "duckdb": duckdb.__version__,
        },
    }
