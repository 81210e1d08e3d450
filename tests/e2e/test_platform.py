"""The whole platform end to end: the tiny world through every DAG with ``dag.test()`` (``darkroom.platform_run``),
two simulated days in logical-time order, then checks on what it left: Delta tables (bronze, marts, catalog), the
blob store (every media reads back with its checksum), MLflow (runs, versions, aliases) and Redis (the current
version complete, a ``/feed`` read through the HTTP API). Then the last day is run again, as a backfill or a retry
would, and every Delta table's rows, every blob file and every Redis key must be exactly as the first run left them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from darkroom.platform_run import DAILY, WEEKLY, rerun_plan, run_plan, week_plan
from darkroom.redis_server import LocalRedisServer
from darkroom.settings import load_settings
from darkroom.tables import all_tables
from tests.model_sizes import RANKER, TWO_TOWER

# Heavy: about 22 min of both cores (20 DAG runs on the tiny world, a re-run of the last day): `make test-heavy`.
pytestmark = [pytest.mark.integration, pytest.mark.heavy]

FIRST_DAY = datetime(2026, 10, 26, tzinfo=UTC)  # a Monday: the weekly DAGs' day
LAST_DAY = datetime(2026, 10, 27, tzinfo=UTC)


def _dag_ids() -> set[str]:
    dags = Path(__file__).resolve().parents[2] / "dags"
    return {p.stem for p in dags.glob("*.py") if not p.name.startswith("_") and p.stem != "assets"}


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


@pytest.fixture(scope="module")
def platform(settings, spark, tmp_path_factory):
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
        generate(s, scale="tiny", seed=7, days=None, out_dir=s.landing_dir, spark=spark)
        plan = week_plan(FIRST_DAY, days=2, hours=1)
        lines: list[str] = []
        outcomes = run_plan(s, plan, progress=lines.append)
        first = {
            "delta": delta_digest(spark, s),
            "files": file_digest(s.blob_root),
            "redis": redis_digest(server.url),
        }
        rerun = rerun_plan(plan, LAST_DAY)
        rerun_outcomes = run_plan(s, rerun, progress=lines.append)
        second = {
            "delta": delta_digest(spark, s),
            "files": file_digest(s.blob_root),
            "redis": redis_digest(server.url),
        }
        yield {
            "settings": s,
            "plan": plan,
            "outcomes": outcomes,
            "rerun": rerun,
            "rerun_outcomes": rerun_outcomes,
            "first": first,
            "second": second,
            "redis_url": server.url,
            "progress": lines,
        }


def test_every_dag_ran_in_logical_time_order_and_succeeded(platform):
    outcomes = platform["outcomes"]
    assert {o.dag_id for o in outcomes} == _dag_ids()
    assert all(o.state == "success" for o in outcomes), [(o.dag_id, o.state) for o in outcomes]
    assert [o.logical_date for o in outcomes] == sorted(o.logical_date for o in outcomes)
    # the weekly DAGs ran on the Monday only, the daily chain on both days, the hourly chain once
    for dag in WEEKLY:
        assert [o.logical_date[:10] for o in outcomes if o.dag_id == dag] == ["2026-10-26"]
    for dag in DAILY:
        assert [o.logical_date[:10] for o in outcomes if o.dag_id == dag] == ["2026-10-26", "2026-10-27"]
    assert [o.logical_date for o in outcomes if o.dag_id == "ranker_hourly"] == ["2026-10-26T01:00:00+00:00"]
    # progress lines name each run with its count
    assert any(line.startswith(f"[{len(outcomes)}/{len(outcomes)}]") for line in platform["progress"])
    # every task of the daily work ran (the short circuits let whole days through)
    tiering = next(o for o in outcomes if o.dag_id == "storage_tiering")
    assert set(tiering.tasks.values()) == {"success"}, tiering.tasks


def test_delta_tables_bronze_marts_and_catalog(platform, spark):
    from darkroom.platform_report import run_xcom

    s, delta = platform["settings"], platform["first"]["delta"]
    ingest = next(o for o in platform["outcomes"] if o.dag_id == "ingest")
    for dataset in ("users", "follows", "posts", "media", "impressions", "feed_reads"):
        result = run_xcom(s, "ingest", ingest.run_id, f"ingest_{dataset}")
        assert result["good_rows"] > 0, result
        assert delta[f"bronze.{dataset}"][0] == result["good_rows"], (dataset, result)
    for mart in ("dim_media_tiering", "fct_engagement_labels", "fct_author_fanout_stats", "dim_user_features"):
        assert delta[f"marts.{mart}"][0] > 0, mart
    media = spark.read.format("delta").load(str(s.lake_dir / "bronze" / "media"))
    located = spark.read.format("delta").load(str(s.lake_dir / "blob_catalog" / "media_locations"))
    posts = located.where("kind = 'media'")  # the catalog also holds story media (kind 'story')
    assert posts.count() > 0
    assert posts.join(media, "media_id", "left_anti").count() == 0  # nothing the bronze table does not have
    before = media.where(f"created_at < timestamp'{LAST_DAY:%Y-%m-%d %H:%M:%S}'").select("media_id")
    assert before.join(posts, "media_id", "left_anti").count() == 0  # every media uploaded before the day is stored
    tiers = {r["tier"] for r in posts.select("tier").distinct().collect()}
    assert {"hot", "warm"} <= tiers, tiers


def test_every_media_reads_back_with_its_checksum(platform, spark):
    from blobstore.store import BlobStore

    s = platform["settings"]
    store = BlobStore(s)
    rows = [r for r in store.catalog.read("media_locations").to_pylist() if r["tier"] != "deleted"]
    assert rows
    tiers = {}
    for r in rows:
        data = store.read_location(r)  # raises naming the media if the checksum does not match
        assert data
        tiers[r["tier"]] = tiers.get(r["tier"], 0) + 1
    assert tiers.get("warm", 0) > 0, tiers


def test_mlflow_runs_versions_and_aliases(platform):
    from mlflow import MlflowClient

    from darkroom.tracking import tracking_uri

    s = platform["settings"]
    client = MlflowClient(tracking_uri(s), registry_uri=tracking_uri(s))
    for model in (s.ranker.registered_model, s.two_tower.registered_model):
        registered = client.get_registered_model(model)
        assert "champion" in registered.aliases, (model, registered.aliases)
        versions = client.search_model_versions(f"name = '{model}'")
        assert versions
        for v in versions:
            assert client.get_run(v.run_id).info.status == "FINISHED"
    ranker_runs = client.search_runs([client.get_experiment_by_name(s.ranker.experiment).experiment_id])
    assert len(ranker_runs) >= 2  # the weekly retrain and the hourly fine-tune
    fanout = client.get_experiment_by_name(s.fanout.experiment)
    assert len(client.search_runs([fanout.experiment_id])) >= 2  # one tuning per day (and the re-run)


def test_redis_current_versions_complete_and_a_feed_read(platform):
    import redis
    from fastapi.testclient import TestClient

    from darkroom.platform_report import run_xcom, sample_feed_read
    from serving.api import create_app
    from serving.keys import KeySpace

    s, url = platform["settings"], platform["redis_url"]
    last = [o for o in platform["rerun_outcomes"] if o.dag_id == "feed_publish"][-1]  # the re-run replaced the day's
    published = {r["group"]: r for r in run_xcom(s, "feed_publish", last.run_id, "publish")}
    client = redis.Redis.from_url(url)
    keys = KeySpace(s.serving.key_prefix)
    for group in ("feed", "stories"):
        assert client.get(keys.pointer(group)).decode() == published[group]["version"]
        expected, verified = published[group]["expected"], published[group]["verified"]
        assert {k: v["keys"] for k, v in verified.items()} == {k: v["keys"] for k, v in expected.items()}
    assert client.get(keys.pointer("explore")) is not None
    client.close()
    sample = sample_feed_read(s, url)
    assert sample["version"] == published["feed"]["version"] and sample["page"], sample
    with TestClient(create_app(s)) as http:
        r = http.get("/api/v1/feed", params={"limit": 5}, headers={"X-User-Id": str(sample["user"])})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == published["feed"]["version"]
    assert [p["post_id"] for p in body["posts"]] == [str(p["post_id"]) for p in sample["page"][:5]]


def test_rerunning_the_last_day_changes_no_table_file_or_key(platform):
    rerun = platform["rerun"]
    assert {r.dag_id for r in rerun} == {"dbt_build", *DAILY, "feed_publish"}
    assert all(o.state == "success" for o in platform["rerun_outcomes"])
    first, second = platform["first"], platform["second"]
    assert first["files"], "no blob files"
    changed = {k: (first["delta"].get(k), v) for k, v in second["delta"].items() if first["delta"].get(k) != v}
    assert not changed, f"Delta tables whose rows changed on the re-run: {json.dumps(changed)}"
    assert second["files"] == first["files"]
    assert second["redis"] == first["redis"]


def test_the_report_shows_what_ran(platform, tmp_path):
    """The demo's report on this run: every section filled from the platform's own stores, the plots written."""
    from darkroom.platform_report import build_report, write_report

    s = platform["settings"]
    # A re-run replaces the day's DAG runs (one run per DAG and logical date): report the latest of each.
    latest = {(o.dag_id, o.logical_date): o for o in [*platform["outcomes"], *platform["rerun_outcomes"]]}
    outcomes = [latest[(o.dag_id, o.logical_date)] for o in platform["outcomes"]]
    report = build_report(s, outcomes, redis_url=platform["redis_url"], extra={"title": "e2e"})
    page = write_report(report, tmp_path)
    assert {"runs.png", "tiers.png", "fanout.png", "ranker.png"} <= {p.name for p in tmp_path.glob("*.png")}
    assert len(report["runs"]) == len(platform["outcomes"])
    assert report["storage"]["scrubs"][0]["scrub"]["checked"]["warm_blocks"] > 0
    assert report["storage"]["tiers_now"]["tiers"]["warm"]["objects"] > 0
    assert report["storage"]["scrubs"] and all(d["fsck_differences"] == 0 for d in report["storage"]["days"])
    assert [d["threshold"] for d in report["fanout"]["days"]] and all(d["threshold"] for d in report["fanout"]["days"])
    assert report["models"]["registry"]["ranker"]["aliases"]["champion"]
    assert any(r["group"] == "feed" for p in report["feeds"]["published"] for r in p["results"])
    assert report["feeds"]["sample_read"]["page"]
    html = page.read_text()
    for section in ("DAG runs", "Storage", "Fan-out policy", "Models (MLflow)", "Feeds published", "mlflow ui"):
        assert section in html, section
