"""The ingest DAG for real: ``airflow dags test`` in a subprocess (Airflow configured only by ``airflow_env``) on the
tiny generated world, then the lake read back with Spark; a second run on the same landing changes nothing."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest

from darkroom import lake
from darkroom.airflow_env import airflow_db_path, ensure_airflow_db, run_dag_test
from darkroom.contract_spec import contract_names
from darkroom.settings import load_settings
from darkroom.tables import dataset_table, table
from jobs.generate.main import generate
from tests.platform_checks import add_a_self_follow

# Heavy: the suite's end-to-end test (tests/e2e/test_platform.py) runs this DAG on its world and checks the same.
pytestmark = [pytest.mark.integration, pytest.mark.heavy]

FIRST_RUN, SECOND_RUN = "2026-11-01T00:00:00+00:00", "2026-11-01T01:00:00+00:00"
# Delta rebuilds a table's state with 50 tasks by default: most of the time spent on a small table.
FAST_DELTA = {"spark.databricks.delta.snapshotPartitions": "2"}


@pytest.fixture(scope="module")
def lake_spark(spark):
    """The shared session, with the small-table Delta setting for this module (restored after)."""
    before = {k: spark.conf.get(k, None) for k in FAST_DELTA}
    for k, v in FAST_DELTA.items():
        spark.conf.set(k, v)
    yield spark
    for k, v in before.items():
        if v is None:
            spark.conf.unset(k)
        else:
            spark.conf.set(k, v)


@pytest.fixture(scope="module")
def generated(settings, lake_spark, tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """The tiny world, plus one self-follow appended to follows so the quarantine path runs too; the landing folder
    and the rows landed per dataset."""
    root = tmp_path_factory.mktemp("landing")
    counts = generate(settings, scale="tiny", seed=7, days=None, out_dir=root, spark=lake_spark)
    assert sorted(counts) == contract_names()
    add_a_self_follow(lake_spark, root)
    return root, {**counts, "follows": counts["follows"] + 1}


@pytest.fixture(scope="module")
def landing(generated) -> Path:
    return generated[0]


@pytest.fixture(scope="module")
def dag_settings(settings, tmp_path_factory):
    """Settings with a state folder of their own: the DAG's Spark runs in another process than the test's."""
    spark_settings = settings.spark.model_dump()
    spark_settings["conf"] = {**spark_settings["conf"], **FAST_DELTA}
    return load_settings(
        state_dir=tmp_path_factory.mktemp("dag-state"),
        jars_path=settings.jars_path,
        spark=spark_settings,
        world=settings.world.model_dump(),
    )


def dag_run_record(dag_settings, logical_date: str) -> dict:
    """What Airflow recorded for the ingest run at ``logical_date``: task states, return values, asset events."""
    when = datetime.fromisoformat(logical_date).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(airflow_db_path(dag_settings)) as db:
        [(run_id, state)] = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = 'ingest' AND logical_date = ?", (when,)
        ).fetchall()
        states = db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = 'ingest' AND run_id = ?", (run_id,)
        ).fetchall()
        xcoms = db.execute(
            "SELECT task_id, key, value FROM xcom WHERE dag_id = 'ingest' AND run_id = ?", (run_id,)
        ).fetchall()
        events = db.execute(
            "SELECT e.source_task_id, a.name FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE e.source_dag_id = 'ingest' AND e.source_run_id = ?",
            (run_id,),
        ).fetchall()
    return {
        "state": state,
        "tasks": dict(states),
        "xcom_keys": sorted({(t, k) for t, k, _ in xcoms}),
        "results": {t: json.loads(v) for t, k, v in xcoms if k == "return_value"},
        "asset_events": sorted(events),
    }


def run_ingest(dag_settings, landing, logical_date) -> dict:
    proc = run_dag_test(dag_settings, "ingest", logical_date, conf={"landing_dir": str(landing)})
    assert proc.returncode == 0, proc.stdout[-5000:]
    return dag_run_record(dag_settings, logical_date)


def lake_versions(spark, dag_settings) -> dict[str, int]:
    tables = [table("meta.ingest_ledger")]
    for d in contract_names():
        tables += [dataset_table(d), table(f"quarantine.{d}")]
    return {t.qualified_name: lake.current_version(spark, t, dag_settings) for t in tables}


def ledger(spark, dag_settings) -> dict[str, tuple]:
    cols = ["source_checksum", "source_file", "rows", "good_rows", "quarantined_rows", "target_version", "run_id"]
    df = lake.read(spark, table("meta.ingest_ledger"), dag_settings)
    rows = {r.dataset: tuple(r[c] for c in cols) for r in df.collect()}
    assert df.count() == len(rows), "one ledger row per dataset expected: one landing folder each"
    return rows


@pytest.fixture(scope="module")
def first_run(dag_settings, landing):
    ensure_airflow_db(dag_settings)
    return run_ingest(dag_settings, landing, FIRST_RUN)


def test_airflow_db_is_migrated_once(dag_settings, first_run):
    started = time.monotonic()
    ensure_airflow_db(dag_settings)
    assert time.monotonic() - started < 1


def test_every_task_succeeds_and_updates_its_asset(first_run):
    assert first_run["state"] == "success"
    assert first_run["tasks"] == {f"ingest_{d}": "success" for d in contract_names()}
    assets = sorted((f"ingest_{d}", dataset_table(d).qualified_name) for d in contract_names())
    assert first_run["asset_events"] == assets


def test_task_results_are_plain_return_values(first_run):
    # One XCom per task (no per-key fan-out), holding the ingest result.
    assert first_run["xcom_keys"] == sorted((f"ingest_{d}", "return_value") for d in contract_names())
    follows = first_run["results"]["ingest_follows"]
    assert (follows["status"], follows["quarantined_rows"]) == ("ingested", 1)
    assert follows["quarantined_by_rule"] == {"row_check:no_self_follow": 1}
    assert follows["report"].endswith("index.html") and Path(follows["report"]).exists()


def test_tables_hold_landing_rows_minus_quarantined(lake_spark, dag_settings, generated, first_run):
    landing, landed_rows = generated
    recorded = ledger(lake_spark, dag_settings)
    assert sorted(recorded) == contract_names()
    for d in contract_names():
        landed = landed_rows[d]
        quarantined = lake.read(lake_spark, table(f"quarantine.{d}"), dag_settings).count()
        in_table = lake.read(lake_spark, dataset_table(d), dag_settings).count()
        assert in_table == landed - quarantined, d
        _, source, rows, good, bad, _, run_id = recorded[d]
        assert (source, rows, good, bad) == (str((landing / d).resolve()), landed, in_table, quarantined), d
        assert run_id.startswith("manual__"), run_id  # the Airflow run's id
    assert {d: r[4] for d, r in recorded.items() if r[4]} == {"follows": 1}


def test_second_run_changes_nothing(lake_spark, dag_settings, landing, first_run):
    before = (ledger(lake_spark, dag_settings), lake_versions(lake_spark, dag_settings))
    second = run_ingest(dag_settings, landing, SECOND_RUN)
    # Every file is already in the ledger: tasks skip, so no asset event tells consumers something changed.
    assert second["tasks"] == {f"ingest_{d}": "skipped" for d in contract_names()}
    assert second["asset_events"] == []
    assert (ledger(lake_spark, dag_settings), lake_versions(lake_spark, dag_settings)) == before
