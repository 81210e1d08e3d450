"""The whole platform end to end, in the suite: the tiny world through every DAG with ``dag.test()``
(``darkroom.platform_run``) in logical-time order, the Monday (the landing drop, the daily chain, the weekly DAGs, a
feed publish) and one hourly chain (``conftest.build_platform``), then checks on what it left: Airflow's records,
Delta tables (bronze, quarantine, marts, catalog), the blob store (every media reads back with its checksum), MLflow
(runs, versions, aliases), Redis (the current version complete, a ``/feed`` read through the HTTP API) and the report.
The checks of the DAG runs are here rather than one DAG run per test module: one world serves them all.
``test_platform_rerun.py`` (``heavy``) runs the same checks on two days and a re-run of the second.
"""

from __future__ import annotations

import collections
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from darkroom.platform_run import DAILY, WEEKLY
from tests.e2e.conftest import build_platform
from tests.platform_checks import placed_elsewhere_than_uploaded, warm_replication

# About 9 min of both cores (14 DAG runs on the tiny world and the checks): the suite's longest module.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def platform(settings, spark, tmp_path_factory):
    yield from build_platform(settings, spark, tmp_path_factory, days=1, rerun=False)


def _dag_ids() -> set[str]:
    dags = Path(__file__).resolve().parents[2] / "dags"
    return {p.stem for p in dags.glob("*.py") if not p.name.startswith("_") and p.stem != "assets"}


def _runs(platform, dag_id: str) -> list:
    """The plan's runs of ``dag_id`` in order; where the day was run again, the re-run's (it replaced the first run,
    with its XComs: one run per DAG and logical date)."""
    latest = {(o.dag_id, o.logical_date): o for o in [*platform["outcomes"], *platform["rerun_outcomes"]]}
    return [latest[(o.dag_id, o.logical_date)] for o in platform["outcomes"] if o.dag_id == dag_id]


def test_every_dag_ran_in_logical_time_order_and_succeeded(platform):
    outcomes = platform["outcomes"]
    days = [f"{d:%Y-%m-%d}" for d in platform["days"]]
    assert {o.dag_id for o in outcomes} == _dag_ids()
    assert all(o.state == "success" for o in outcomes), [(o.dag_id, o.state) for o in outcomes]
    assert [o.logical_date for o in outcomes] == sorted(o.logical_date for o in outcomes)
    # the weekly DAGs ran on the Monday only, the daily chain every day, the hourly chain once
    for dag in WEEKLY:
        assert [o.logical_date[:10] for o in _runs(platform, dag)] == days[:1]
    for dag in DAILY:
        assert [o.logical_date[:10] for o in _runs(platform, dag)] == days
    assert [o.logical_date for o in _runs(platform, "ranker_hourly")] == ["2026-10-26T01:00:00+00:00"]
    # progress lines name each run with its count
    assert any(line.startswith(f"[{len(outcomes)}/{len(outcomes)}]") for line in platform["progress"])
    # every task of the daily work ran (the short circuits let whole days through)
    for dag in ("storage_tiering", "fanout_threshold_tuning", "feature_materialize"):
        for o in _runs(platform, dag):
            assert set(o.tasks.values()) == {"success"}, (dag, o.tasks)


def test_ingest_records_every_dataset_quarantines_the_bad_row_and_skips_what_it_has(platform, spark):
    """The landing drop's run: one task per contract, each updating its table's asset and returning its result; the
    self-follow quarantined by its rule; each table holds what landed minus what was quarantined, and the ledger one
    row per dataset. The hourly run finds every file in the ledger: its tasks skip and emit no asset event."""
    from darkroom import lake
    from darkroom.airflow_env import asset_events
    from darkroom.contract_spec import contract_names
    from darkroom.platform_report import run_xcom
    from darkroom.tables import dataset_table, table

    s, landed = platform["settings"], platform["landed"]
    first, hourly = _runs(platform, "ingest")
    assert first.tasks == {f"ingest_{d}": "success" for d in contract_names()}
    events = asset_events(s, "ingest", first.run_id)
    assert [(t, name) for t, name, _ in events] == sorted(
        (f"ingest_{d}", dataset_table(d).qualified_name) for d in contract_names()
    )
    ledger = {r["dataset"]: r for r in lake.read(spark, table("meta.ingest_ledger"), s).collect()}
    assert sorted(ledger) == contract_names()
    for d in contract_names():
        result = run_xcom(s, "ingest", first.run_id, f"ingest_{d}")
        quarantined = lake.read(spark, table(f"quarantine.{d}"), s).count()
        in_table = lake.read(spark, dataset_table(d), s).count()
        assert (result["status"], result["rows"], result["quarantined_rows"]) == ("ingested", landed[d], quarantined)
        assert in_table == result["good_rows"] == landed[d] - quarantined, d
        row = ledger[d]
        assert (row["rows"], row["good_rows"], row["quarantined_rows"]) == (landed[d], in_table, quarantined), d
        assert row["run_id"] == first.run_id, d  # the hourly run wrote nothing
    follows = run_xcom(s, "ingest", first.run_id, "ingest_follows")
    assert follows["quarantined_by_rule"] == {"row_check:no_self_follow": 1}
    assert follows["report"].endswith("index.html") and Path(follows["report"]).exists()
    assert {d for d, r in ledger.items() if r["quarantined_rows"]} == {"follows"}
    assert hourly.tasks == {f"ingest_{d}": "skipped" for d in contract_names()}
    assert asset_events(s, "ingest", hourly.run_id) == []


def test_dbt_build_updates_every_mart_asset_as_of_its_run(platform):
    from darkroom.airflow_env import asset_events
    from darkroom.tables import all_tables

    s = platform["settings"]
    marts = sorted(t.qualified_name for t in all_tables("marts"))
    for run in _runs(platform, "dbt_build"):
        assert run.tasks == {"build": "success"}
        events = asset_events(s, "dbt_build", run.run_id)
        assert [name for _, name, _ in events] == marts, run.logical_date
        assert {json.dumps(extra) for _, _, extra in events} == {json.dumps({"data_interval_end": run.logical_date})}


def test_the_hourly_build_leaves_the_staging_views_alone(platform):
    """The plan's last build is an hourly one (``exclude: staging``; in the two-day module, a later day's, which
    selects intermediate and marts): dbt's run results hold the fine-tune's and the publish's models and their tests,
    and no staging view or staging test (bronze has not changed since the Monday's build tested them)."""
    s = platform["settings"]
    assert [o.logical_date for o in _runs(platform, "dbt_build")][-1] > f"{platform['days'][0]:%Y-%m-%d}T00"
    target = s.dbt_dir / "target"
    results = json.loads((target / "run_results.json").read_text())
    manifest = json.loads((target / "manifest.json").read_text())
    nodes = {**manifest["nodes"], **manifest.get("unit_tests", {})}
    ran = [r["unique_id"] for r in results["results"]]
    models = {nodes[u]["name"] for u in ran if u.startswith("model.")}
    assert {"fct_engagement_labels", "fct_story_ring_signals", "int_interactions_aggregated_daily"} <= models, models
    # a staging view, or a test of one (a mart's relationships test that refers to one is the mart's test)
    staging = [u for u in ran if "staging" in nodes[nodes[u].get("attached_node") or u]["fqn"]]
    assert not staging, staging[:5]


def test_delta_tables_bronze_marts_and_catalog(platform, spark):
    s = platform["settings"]
    for mart in ("dim_media_tiering", "fct_engagement_labels", "fct_author_fanout_stats", "dim_user_features"):
        assert spark.read.format("delta").load(str(s.lake_dir / "marts" / mart)).count() > 0, mart
    media = spark.read.format("delta").load(str(s.lake_dir / "bronze" / "media"))
    located = spark.read.format("delta").load(str(s.lake_dir / "blob_catalog" / "media_locations"))
    posts = located.where("kind = 'media'")  # the catalog also holds story media (kind 'story')
    assert posts.count() > 0
    assert posts.join(media, "media_id", "left_anti").count() == 0  # nothing the bronze table does not have
    before = media.where(f"created_at < timestamp'{platform['last_day']:%Y-%m-%d %H:%M:%S}'").select("media_id")
    assert before.join(posts, "media_id", "left_anti").count() == 0  # every media uploaded before the day is stored
    tiers = {r["tier"] for r in posts.select("tier").distinct().collect()}
    assert {"hot", "warm", "cold"} <= tiers, tiers


def test_storage_tiering_moved_what_the_plan_decided(platform, spark):
    """Each media sits in the tier the last day's plan chose; the placement history keeps a moved media's earlier
    placements; a blob never moved is placed at its upload time; warm volumes cost about 2.1x (RS(10,4) + XOR)."""
    from pyspark.sql import functions as F

    from blobstore.store import BlobStore

    s = platform["settings"]
    store = BlobStore(s)
    locations = store.catalog.rows("media_locations")
    tiers = collections.Counter((r["kind"], r["tier"]) for r in locations)
    assert all(tiers[("media", t)] > 0 for t in ("hot", "warm", "cold")), tiers
    plan_date = (platform["last_day"] - timedelta(days=1)).date()
    decisions = spark.read.format("delta").load(str(s.lake_dir / "blob_catalog" / "tier_decisions"))
    planned = {r["media_id"]: r["target_tier"] for r in decisions.where(F.col("plan_date") == plan_date).collect()}
    assert planned
    assert {r["media_id"]: r["tier"] for r in locations if r["kind"] == "media"} == planned
    assert {m: tier for m, (tier, _) in store.catalog.current_placement().items()} == planned
    placement = spark.read.format("delta").load(str(s.lake_dir / "meta" / "media_placement")).collect()
    history = collections.Counter(r["media_id"] for r in placement)
    moved = [m for m, tier in planned.items() if tier != "hot"]
    assert moved and all(history[m] >= 2 for m in moved)
    hot = [r for r in locations if r["tier"] == "hot" and history[r["media_id"]] <= 1]
    wrong = placed_elsewhere_than_uploaded(spark, s.lake_dir, hot)
    assert hot and not wrong, wrong[:5]
    replication = warm_replication(store)
    assert 1.95 < replication.effective < 2.25, replication


def test_every_media_reads_back_with_its_checksum(platform, spark):
    from blobstore.store import BlobStore

    s = platform["settings"]
    store = BlobStore(s)
    rows = [r for r in store.catalog.read("media_locations").to_pylist() if r["tier"] != "deleted"]
    assert rows
    tiers = {}
    for r, data in store.read_locations(rows):  # raises naming the media if the checksum does not match
        assert data
        tiers[r["tier"]] = tiers.get(r["tier"], 0) + 1
    assert tiers.get("warm", 0) > 0, tiers


def test_no_hot_volume_keeps_dead_bytes_past_the_compaction_threshold(platform):
    """The day's compaction comes after its moves and expiries: every hot volume, the open one included (it is sealed
    first), holds less than a quarter dead bytes afterwards, and the hot bytes on disk are about 3 replicas."""
    from blobstore.catalog import match
    from blobstore.store import BlobStore

    store = BlobStore(platform["settings"])
    hot = [store.hot_volume(r["volume_id"]) for r in store.catalog.rows("volumes", match(kind="hot"))]
    assert hot
    dead = {v.volume_id: round(v.garbage_bytes / v.size, 3) for v in hot if v.size}
    assert max(dead.values()) < 0.25, dead
    located = store.catalog.rows("media_locations", match(tier="hot"))
    stored = sum(v.size * v.replicas for v in hot)
    assert 3.0 <= stored / sum(r["size"] for r in located) < 4.5, (stored, len(located))


def test_fanout_tuned_every_day_and_the_submitted_replay_agrees_with_the_model(platform, spark):
    """Each day's policy mixes push and pull on the tiny graph under the test budgets; replay_validation was
    spark-submitted on the spark_default master with the day's as-of and the tuning's MLflow run, and the replay's
    errors (logged to that run and written to replay.json) are within 5%."""
    import sqlite3

    import mlflow
    from pyspark.sql import functions as F

    from darkroom.airflow_env import airflow_db_path
    from darkroom.platform_report import run_xcom
    from darkroom.tracking import tracking_uri
    from jobs.fanout_threshold.main import report_dir

    s = platform["settings"]
    log = "\n".join(p.read_text() for p in sorted((s.airflow_home / "plans").glob("plan-*.log")))
    submits = [line for line in log.splitlines() if "Spark-Submit cmd:" in line and "fanout_threshold" in line]
    runs = _runs(platform, "fanout_threshold_tuning")
    assert len(runs) == len(platform["days"]) and len(submits) >= len(runs)
    client = mlflow.MlflowClient(tracking_uri(s))
    for run in runs:
        tuned = run_xcom(s, "fanout_threshold_tuning", run.run_id, "fanout_threshold")
        assert any(
            f"--master {s.spark.master} " in line
            and f"jobs/fanout_threshold/main.py --as-of {run.logical_date} --replay-only --mlflow-run-id "
            f"{tuned['mlflow_run_id']}"
            in line
            for line in submits
        ), run.logical_date
        metrics = client.get_run(tuned["mlflow_run_id"]).data.metrics
        replay = json.loads((report_dir(s, tuned["version"]) / "replay.json").read_text())
        for name in ("threshold", "pure_push", "pure_pull"):
            for k in ("writes", "merges", "stored_entries"):
                assert metrics[f"replay.{name}.{k}_error"] == pytest.approx(replay[name]["error"][k])
                assert replay[name]["error"][k] <= 0.05
        modes = spark.read.format("delta").load(str(s.lake_dir / "fanout" / "author_modes"))
        mine = modes.where(F.col("version") == tuned["version"]).select("threshold_mode").distinct().collect()
        assert {r[0] for r in mine} == {"push", "pull"}, tuned
    with sqlite3.connect(airflow_db_path(s)) as db:
        assert db.execute("SELECT slots FROM slot_pool WHERE pool = 'spark'").fetchall() == [(1,)]


def test_features_are_materialized_online(platform):
    import redis

    s = platform["settings"]
    for run in _runs(platform, "feature_materialize"):
        assert run.tasks == {"materialize": "success", "check_consistency": "success"}
    client = redis.Redis.from_url(platform["redis_url"])
    try:
        viewer_keys = list(client.scan_iter(match=f"{s.feature_store.online_key_prefix}:viewer:*", count=1000))
        assert viewer_keys and b"_feature_ts" in client.hgetall(viewer_keys[0])
    finally:
        client.close()


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
    assert len(client.search_runs([fanout.experiment_id])) >= len(platform["days"])  # one tuning per day


def test_redis_current_versions_complete_and_a_feed_read(platform):
    import redis
    from fastapi.testclient import TestClient

    from darkroom.platform_report import run_xcom, sample_feed_read
    from serving.api import create_app
    from serving.keys import KeySpace

    s, url = platform["settings"], platform["redis_url"]
    # the last publish (a re-run's replaced the day's)
    last = [o for o in [*platform["outcomes"], *platform["rerun_outcomes"]] if o.dag_id == "feed_publish"][-1]
    published = {r["group"]: r for r in run_xcom(s, "feed_publish", last.run_id, "publish")}
    client = redis.Redis.from_url(url)
    keys = KeySpace(s.serving.key_prefix)
    for group in ("feed", "stories"):
        assert client.get(keys.pointer(group)).decode() == published[group]["version"]
        expected, verified = published[group]["expected"], published[group]["verified"]
        # a record writes one key, but a story ring two: the ring and its author -> expiry hash
        per_record = {"story_rings": 2}
        want = {k: v["keys"] * per_record.get(k, 1) for k, v in expected.items()}
        assert {k: v["keys"] for k, v in verified.items()} == want
        assert all(v["keys"] > 0 for k, v in verified.items() if k in ("feed_timelines", "story_rings")), verified
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


def test_spark_tasks_spark_submitted_return_what_they_return_in_process(platform):
    """The plan ran its Spark tasks in its process (``airflow.spark_tasks=in_process``); the same DAG run again
    with ``submit`` spark-submits each task's entry point (``darkroom/spark_task.py``) on the ``spark_default``
    master, and each task returns, through the driver's result file, what it returned in process. Near the end of
    the module: it replaces the last day's ``feature_materialize`` run (one run per DAG and logical date)."""
    from darkroom.platform_report import run_xcom
    from darkroom.platform_run import PlannedRun, run_plan
    from darkroom.spark_task import result_path

    s = platform["settings"]
    first = _runs(platform, "feature_materialize")[-1]  # the last day's: online rows are never set back to older ones
    tasks = {
        "materialize": "feature_store.online:materialize_task",
        "check_consistency": "feature_store.online:check_consistency_task",
    }
    before = {t: run_xcom(s, "feature_materialize", first.run_id, t) for t in tasks}
    assert before["materialize"] and all(v["written"] > 0 for v in before["materialize"].values())
    lines: list[str] = []
    plans = sorted((s.airflow_home / "plans").glob("plan-*.log"))
    when = platform["days"][-1]
    [again] = run_plan(s, [PlannedRun("feature_materialize", when)], progress=lines.append, spark_tasks="submit")
    assert again.state == "success" and again.tasks == dict.fromkeys(tasks, "success"), again
    log = "\n".join(p.read_text() for p in sorted((s.airflow_home / "plans").glob("plan-*.log")) if p not in plans)
    for task_id, call in tasks.items():
        assert run_xcom(s, "feature_materialize", again.run_id, task_id) == before[task_id], task_id
        result = result_path(s, "feature_materialize", again.run_id, task_id)
        assert json.loads(result.read_text()) == {"result": before[task_id]}
        [submit] = [line for line in log.splitlines() if "Spark-Submit cmd:" in line and f"--call {call} " in line]
        assert f"--master {s.spark.master} " in submit and f"--name darkroom-{task_id} " in submit, submit
        assert f"darkroom/spark_task.py --as-of {when.isoformat()} " in submit and f"--result {result}" in submit


def test_an_hour_with_no_new_landing_file_submits_no_driver(platform, spark, tmp_path):
    """``ingest``'s pre-check (``jobs.ingest.main.ingest_precheck``) decides its skips without Spark: run again
    spark-submitted, the hourly run skips every dataset before any ``spark-submit`` (the ledger read with delta-rs)
    and changes no ledger row. The pre-check skips only what the driver would: a changed file, a dataset left out
    of ``params.datasets``, a dataset with no landing data."""
    import shutil

    from darkroom import lake
    from darkroom.contract_spec import contract_names
    from darkroom.platform_run import PlannedRun, run_plan
    from darkroom.spark_task import TaskSkipped
    from darkroom.tables import table
    from jobs.ingest.main import data_files, ingest_precheck

    s = platform["settings"]
    _, hourly = _runs(platform, "ingest")
    ledger_before = sorted(map(tuple, lake.read(spark, table("meta.ingest_ledger"), s).collect()))
    plans = sorted((s.airflow_home / "plans").glob("plan-*.log"))
    when = datetime.fromisoformat(hourly.logical_date)
    [again] = run_plan(s, [PlannedRun("ingest", when)], spark_tasks="submit")
    assert again.state == "success" and again.tasks == {f"ingest_{d}": "skipped" for d in contract_names()}, again
    log = "\n".join(p.read_text() for p in sorted((s.airflow_home / "plans").glob("plan-*.log")) if p not in plans)
    assert "Spark-Submit cmd:" not in log
    assert log.count("pre-check jobs.ingest.main:ingest_precheck: skipped, no driver started") == len(contract_names())
    assert sorted(map(tuple, lake.read(spark, table("meta.ingest_ledger"), s).collect())) == ledger_before

    args = {"as_of": when, "run_id": "precheck-test"}
    every = {"datasets": contract_names(), "landing_dir": ""}
    with pytest.raises(TaskSkipped, match=r"users: .* already ingested \(checksum "):
        ingest_precheck(s, dataset="users", params=every, **args)
    with pytest.raises(TaskSkipped, match=r"users: not in params.datasets \['posts'\]"):
        ingest_precheck(s, dataset="users", params={"datasets": ["posts"], "landing_dir": ""}, **args)
    elsewhere = {"datasets": contract_names(), "landing_dir": str(tmp_path)}
    with pytest.raises(TaskSkipped, match=f"users: no landing data at {tmp_path / 'users'}"):
        ingest_precheck(s, dataset="users", params=elsewhere, **args)
    shutil.copytree(s.landing_dir / "users", tmp_path / "users")
    part = data_files(tmp_path / "users")[0]
    part.write_bytes(part.read_bytes() + b"\n")  # other bytes: another file for the ledger
    assert ingest_precheck(s, dataset="users", params=elsewhere, **args) is None
