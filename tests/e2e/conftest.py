"""The platform end to end, shared by its two modules: ``build_platform`` puts the tiny world through every DAG with
``dag.test()`` (``darkroom.platform_run``) in logical-time order, and optionally runs the last day again, recording
every Delta table's rows, every blob file and every Redis key before and after.

- ``test_platform.py`` (the suite, CI): the Monday (the landing drop, the daily chain, the weekly DAGs, a publish)
  and one hourly chain, 14 runs; checks on Delta, the blob store, MLflow, Redis, Airflow's records, the report.
- ``test_platform_rerun.py`` (``heavy``): two days and a re-run of the second (its Spark tasks spark-submitted), the
  same checks plus the re-run's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from darkroom.platform_run import rerun_plan, run_plan, week_plan
from darkroom.redis_server import LocalRedisServer
from darkroom.settings import load_settings
from darkroom.tables import all_tables
from tests.model_sizes import RANKER, TWO_TOWER
from tests.platform_checks import add_a_self_follow

FIRST_DAY = datetime(2026, 10, 26, tzinfo=UTC)  # a Monday: the weekly DAGs' day


def delta_digest(spark, settings) -> dict[str, tuple[int, int]]:
    """Every Delta table of the registry that exists: (rows, an order-independent digest of its rows)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    out = {}
    for t in all_tables():
        if t.layer == "landing" or not DeltaTable.isDeltaTable(spark, t.uri(settings)):
            continue
        df = spark.read.format("delta").load(t.uri(settings))
        h = F.xxhash64(F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns])))
        row = df.agg(F.count(F.lit(1)).alias("n"), F.sum(h.cast("decimal(38,0)")).alias("h")).collect()[0]
        out[t.qualified_name] = (int(row["n"]), int(row["h"] or 0))
    return out


def file_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".writer.lock"
    }


def redis_digest(url: str) -> dict[str, object]:
    """Every key: its type, its whole value, and whether it expires (not the TTL, which counts down)."""
    import redis

    client = redis.Redis.from_url(url)
    out: dict[str, object] = {}
    try:
        for key in sorted(client.scan_iter(count=1000)):
            kind = client.type(key).decode()
            value = {
                "string": lambda k: client.get(k),
                "hash": lambda k: sorted(client.hgetall(k).items()),
                "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                "set": lambda k: sorted(client.smembers(k)),
                "list": lambda k: client.lrange(k, 0, -1),
            }[kind](key)
            out[key.decode()] = (kind, repr(value), client.ttl(key) >= 0)
    finally:
        client.close()
    return out


def build_platform(settings, spark, tmp_path_factory, *, days: int, rerun: bool) -> Iterator[dict]:
    """The tiny world (seed 7, plus one self-follow) through ``week_plan(FIRST_DAY, days=days, hours=1)``; with
    ``rerun``, the last day again with every Spark task spark-submitted, with digests of every table, file and
    key before and after it. Yields what the
    checks read; the Redis server lives until the module is done."""
    from jobs.generate.main import generate

    state = tmp_path_factory.mktemp("platform-state")
    with LocalRedisServer(tmp_path_factory.mktemp("platform-redis")) as server:
        s = load_settings(
            state_dir=state,
            redis_url=server.url,
            jars_path=settings.jars_dir,
            spark=settings.spark.model_dump(),
            world={"scale": "tiny", "seed": 7},
            # budgets under which the tiny graph has push and pull authors (as in tests/dbt/test_fanout_tuning.py)
            fanout={"read_budget_merges": 20, "fanout_writes_per_second": 5.0},
            blob={"volume_bytes": 1 << 20},
            ranker=RANKER,
            two_tower=TWO_TOWER,
        )
        landed = generate(s, scale="tiny", seed=7, days=None, out_dir=s.landing_dir, spark=spark)
        add_a_self_follow(spark, s.landing_dir)
        landed = {**landed, "follows": landed["follows"] + 1}
        plan = week_plan(FIRST_DAY, days=days, hours=1)
        last_day = FIRST_DAY + timedelta(days=days - 1)
        lines: list[str] = []
        outcomes = run_plan(s, plan, progress=lines.append)
        out = {
            "settings": s,
            "landed": landed,
            "plan": plan,
            "days": [FIRST_DAY + timedelta(days=d) for d in range(days)],
            "last_day": last_day,
            "outcomes": outcomes,
            "rerun": [],
            "rerun_outcomes": [],
            "redis_url": server.url,
            "progress": lines,
        }
        if rerun:
            out["first"] = {
                "delta": delta_digest(spark, s),
                "files": file_digest(s.blob_root),
                "redis": redis_digest(server.url),
            }
            out["rerun"] = rerun_plan(plan, last_day)
            logs = set((s.airflow_home / "plans").glob("plan-*.log"))
            # The re-run spark-submits every Spark task (the first run ran them in the plan's process): what a
            # scheduler with the default airflow.spark_tasks would do, and it must leave the same state.
            out["rerun_outcomes"] = run_plan(s, out["rerun"], progress=lines.append, spark_tasks="submit")
            out["rerun_log"] = "\n".join(
                p.read_text() for p in sorted((s.airflow_home / "plans").glob("plan-*.log")) if p not in logs
            )
            out["second"] = {
                "delta": delta_digest(spark, s),
                "files": file_digest(s.blob_root),
                "redis": redis_digest(server.url),
            }
        yield out
