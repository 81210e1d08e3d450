"""The dbt project as a whole on the tiny world: it builds and passes its tests, incremental runs equal a full
refresh, the SQL lints clean, docs and source freshness work, failures are reported by name, and the dbt_build
DAG runs it for real (``airflow dags test``)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import yaml

from darkroom.airflow_env import airflow_db_path, run_dag_test
from darkroom.dbt_runner import DbtRunError, lint, run_dbt
from darkroom.settings import load_settings
from darkroom.tables import DBT_MODELS_DIR, all_tables, table

pytestmark = pytest.mark.integration

MARTS = sorted(t.name for t in all_tables("marts"))


def same_rows(a, b) -> bool:
    return a.count() == b.count() and a.exceptAll(b).isEmpty() and b.exceptAll(a).isEmpty()


def unit_test_count() -> int:
    return sum(len(yaml.safe_load(p.read_text()).get("unit_tests", [])) for p in DBT_MODELS_DIR.rglob("*.yml"))


def test_build_passes_every_model_unit_test_and_data_test(dbt_world):
    s = dbt_world.build
    assert s.failures() == [] and s.success
    counts = s.counts()
    assert counts["model:success"] == len(list(DBT_MODELS_DIR.rglob("*.sql")))
    assert counts["unit_test:pass"] == unit_test_count() > 0
    assert counts["test:pass"] > 3 * counts["model:success"]  # keys, relationships, enums on every model
    assert set(counts) == {"model:success", "unit_test:pass", "test:pass"}


def test_every_mart_is_a_delta_table_with_rows(dbt_world, spark):
    for mart in MARTS:
        df = dbt_world.read(spark, f"marts.{mart}")
        assert df.count() > 0, mart


def test_incremental_run_equals_full_refresh(dbt_world, spark):
    """Day one built in full, then one incremental day: the same rows as a full refresh as of that day."""
    assert dbt_world.incremental_versions, "no incremental model found in the manifest"
    for q, version in dbt_world.incremental_versions.items():
        incremental = dbt_world.read(spark, q, version=version)
        full = dbt_world.read(spark, q)
        assert same_rows(incremental, full), q


def test_sqlfluff_lints_every_model_clean(dbt_settings):
    code, report = lint(dbt_settings)
    assert code == 0, report
    assert "All Finished" in report


def test_docs_generate_writes_the_site_with_every_mart(dbt_world):
    target = dbt_world.settings.dbt_dir / "target"
    assert (target / "index.html").exists()
    catalog = json.loads((target / "catalog.json").read_text())
    documented = {n["metadata"]["name"] for n in catalog["nodes"].values() if n["metadata"]["schema"] == "marts"}
    assert documented == set(MARTS)


def test_source_freshness_checks_every_bronze_table(dbt_world):
    summary = dbt_world.freshness
    checked = {r.name for r in summary.results if r.resource_type == "source"}
    assert checked == {t.name for t in all_tables("bronze")}
    # The generated world stopped at 2026-11-01; freshness is judged against the wall clock, so a stale source is
    # reported by name.
    for r in summary.results:
        assert r.status in {"pass", "warn", "error"}, r
    stale = [r.name for r in summary.results if r.status == "error"]
    if stale:
        with pytest.raises(DbtRunError, match=stale[0]):
            summary.raise_for_failures()


@pytest.fixture(scope="module")
def broken(dbt_world, spark, tmp_path_factory):
    """A copy of the bronze tables with one user duplicated: the staging key test must fail."""
    s = load_settings(
        state_dir=tmp_path_factory.mktemp("dbt-broken"),
        jars_path=dbt_world.settings.jars_dir,
        spark=dbt_world.settings.spark.model_dump(),
        airflow={"task_retries": 0},  # the failure is the point: no retry delays
    )
    shutil.copytree(dbt_world.settings.lake_dir / "bronze", s.lake_dir / "bronze")
    users = table("bronze.users").uri(s)
    spark.read.format("delta").load(users).limit(1).write.format("delta").mode("append").save(users)
    return s


@pytest.mark.heavy  # in the suite, test_dag_run_fails_naming_the_failed_test fails this build through the DAG
def test_a_failing_data_test_is_reported_by_name(broken):
    with pytest.raises(DbtRunError) as e:
        run_dbt(broken, "build", select=["stg_bronze__users"])
    assert "test unique_stg_bronze__users_user_id [fail]" in str(e.value)
    summary = e.value.summary
    assert [r.name for r in summary.failures()] == ["unique_stg_bronze__users_user_id"]


def _last_dag_run(settings) -> dict:
    with sqlite3.connect(airflow_db_path(settings)) as db:
        [(run_id, state)] = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = 'dbt_build' ORDER BY id DESC LIMIT 1"
        ).fetchall()
        tasks = dict(
            db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = 'dbt_build' AND run_id = ?", (run_id,))
        )
        events = db.execute(
            "SELECT a.name, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE e.source_dag_id = 'dbt_build' AND e.source_run_id = ?",
            (run_id,),
        ).fetchall()
    return {"state": state, "tasks": tasks, "events": {n: json.loads(x) for n, x in events}}


def test_a_production_build_leaves_unit_tests_to_ci(dbt_world):
    summary = dbt_world.production
    assert {r.resource_type for r in summary.results} == {"model", "test"}
    assert summary.counts()["model:success"] == 1 and summary.counts()["test:pass"] >= 3
    # the CI build ran this model's unit tests; the production one ran none of them
    assert any(
        r.resource_type == "unit_test" and r.unique_id.startswith("unit_test.darkroom.fct_user_read_activity.")
        for r in dbt_world.build.results
    )


@pytest.mark.heavy  # the suite's end-to-end test runs this DAG on its world and checks the same
def test_dag_run_builds_incrementally_and_changes_no_rows(dbt_world, spark):
    before = {m: dbt_world.read(spark, f"marts.{m}").localCheckpoint() for m in MARTS}
    proc = run_dag_test(dbt_world.settings, "dbt_build", "2026-11-01T00:00:00+00:00")
    assert proc.returncode == 0, proc.stdout[-5000:]
    run = _last_dag_run(dbt_world.settings)
    assert run["state"] == "success" and run["tasks"] == {"build": "success"}
    assert run["events"] == {f"marts.{m}": {"data_interval_end": "2026-11-01T00:00:00+00:00"} for m in MARTS}
    for m in MARTS:
        assert same_rows(before[m], dbt_world.read(spark, f"marts.{m}")), m


def test_dag_run_fails_naming_the_failed_test(broken):
    proc = run_dag_test(broken, "dbt_build", "2026-11-01T00:00:00+00:00", conf={"select": "stg_bronze__users"})
    run = _last_dag_run(broken)
    assert run["state"] == "failed" and run["tasks"] == {"build": "failed"}
    assert run["events"] == {}
    assert "unique_stg_bronze__users_user_id [fail]" in proc.stdout
