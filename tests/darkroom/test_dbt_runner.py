"""The dbt runner: arguments, as-of parsing, vars from settings, failure reports, the model registry; and (integration)
what a shared session changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import yaml

from darkroom.dbt_runner import (
    DbtRunError,
    DbtRunSummary,
    NodeResult,
    dbt_args,
    dbt_vars,
    parse_as_of,
)
from darkroom.settings import load_settings
from darkroom.tables import DBT_MODELS_DIR, dbt_model_tables


def node(name, status, resource_type="model", message=None):
    return NodeResult(f"{resource_type}.darkroom.{name}", name, resource_type, status, message, 0.5)


def summary(*results, success=True, error=None):
    return DbtRunSummary(
        args=["build"], as_of="2026-11-01 00:00:00", elapsed=1.0, success=success, results=list(results), error=error
    )


def test_dbt_args_select_exclude_full_refresh():
    assert dbt_args("build", select=["marts", "+dim_media_tiering"], exclude=["staging"], full_refresh=True) == [
        "build",
        "--select",
        "marts",
        "--select",
        "+dim_media_tiering",
        "--exclude",
        "staging",
        "--full-refresh",
    ]
    assert dbt_args("docs") == ["docs", "generate"]
    assert dbt_args("source") == ["source", "freshness"]
    with pytest.raises(ValueError, match="unknown dbt command 'deploy'"):
        dbt_args("deploy")


def test_as_of_is_utc_and_bad_values_name_the_format():
    assert parse_as_of("2026-11-01T00:00:00") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_as_of("2026-11-01T02:00:00+02:00") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_as_of("2026-11-01T00:00:00Z") == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"--as-of: expected an ISO timestamp.*'yesterday'"):
        parse_as_of("yesterday")


def test_vars_come_from_settings_and_as_of_is_rendered_in_utc(tmp_path):
    s = load_settings(state_dir=tmp_path, dbt={"lookback_days": 5, "affinity_half_life_days": 3.5})
    v = dbt_vars(s, datetime(2026, 11, 1, 1, 30, tzinfo=timezone(timedelta(hours=1))))
    assert v["as_of"] == "2026-11-01 00:30:00"
    assert (v["lookback_days"], v["affinity_half_life_days"], v["active_window_days"]) == (5, 3.5, 7)


def test_bad_dbt_setting_names_its_key(tmp_path):
    from darkroom.settings import SettingsError

    with pytest.raises(SettingsError, match=r"dbt\.lookback_days"):
        load_settings(state_dir=tmp_path, dbt={"lookback_days": 0})


def test_failures_are_named_and_skips_alone_do_not_fail():
    ok = summary(node("stg_bronze__users", "success"), node("unique_x", "pass", "test"))
    assert ok.raise_for_failures() is ok
    assert ok.counts() == {"model:success": 1, "test:pass": 1}
    bad = summary(
        node("stg_bronze__users", "success"),
        node("unique_stg_bronze__users_user_id", "fail", "test", "Got 1 result, configured to fail if != 0"),
        node("dim_media_tiering", "error", "model", "Column 'x' does not exist"),
        node("fct_author_fanout_stats", "skipped"),
        success=False,
    )
    with pytest.raises(DbtRunError) as e:
        bad.raise_for_failures()
    message = str(e.value)
    assert "test unique_stg_bronze__users_user_id [fail]: Got 1 result" in message
    assert "model dim_media_tiering [error]: Column 'x' does not exist" in message
    assert "fct_author_fanout_stats" not in message  # skipped because of the failure, not a cause
    crash = summary(success=False, error="YamlLoadError: Parsing Error in staging/x.yml")
    with pytest.raises(DbtRunError, match="YamlLoadError: Parsing Error in staging/x.yml"):
        crash.raise_for_failures()


def test_summary_round_trips_through_json():
    from dataclasses import asdict

    s = summary(node("a", "success"), node("b", "fail", "test", "x"), success=False)
    assert DbtRunSummary.from_json(asdict(s)) == s


def test_registry_has_every_table_model_with_its_tested_key():
    tables = {(layer, name): key for layer, name, key in dbt_model_tables()}
    sql = {
        (p.parent.name, p.stem) for layer in ("intermediate", "marts") for p in (DBT_MODELS_DIR / layer).glob("*.sql")
    }
    assert set(tables) == sql
    assert tables[("intermediate", "int_feed_reads_aggregated_daily")] == ("user_id", "read_date")


def test_every_model_has_a_yml_beside_it_with_a_key_test():
    for path in sorted(DBT_MODELS_DIR.rglob("*.sql")):
        yml = path.with_suffix(".yml")
        assert yml.exists(), f"{path.relative_to(DBT_MODELS_DIR)} has no .yml beside it"
        [model] = [m for m in yaml.safe_load(yml.read_text())["models"] if m["name"] == path.stem]
        key_tests = [t for t in model.get("data_tests", []) if isinstance(t, dict) and "unique_key" in t]
        unique_cols = [c["name"] for c in model.get("columns", []) if "unique" in (c.get("data_tests") or [])]
        assert key_tests or unique_cols, f"{path.stem}: no unique / unique_key test on its key"


SHARED_SESSION_PROBE = """
import json, os
from darkroom.dbt_runner import DbtRunError, run_dbt, share_session
from darkroom.settings import load_settings

settings = load_settings()
spark = share_session(settings)
before = dict(os.environ)
out = {"catalog": spark.conf.get("spark.sql.catalogImplementation")}
out["materialize_before"] = spark.conf.get("spark.databricks.delta.merge.materializeSource", None)
try:
    run_dbt(settings, "build")
except DbtRunError as e:
    out["error"] = str(e)
out["env_restored"] = dict(os.environ) == before
out["materialize_after"] = spark.conf.get("spark.databricks.delta.merge.materializeSource", None)
out["same_session"] = spark.sparkContext.appName
print("PROBE " + json.dumps(out))
"""


@pytest.mark.integration
def test_a_shared_session_runs_dbt_in_process_and_leaves_the_environment_as_it_was(settings, tmp_path):
    """After ``share_session`` (what a plan of DAG runs does), ``run_dbt`` runs dbt on the process's own session:
    it fails here as dbt itself would (no bronze yet, named), not as a child process that exited, and the process's
    environment and the session's MERGE setting are as they were before the build."""
    import json
    import os
    import subprocess
    import sys

    from darkroom.airflow_env import settings_env

    s = settings.model_copy(update={"state_dir": tmp_path / "state"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(settings_env(s))
    proc = subprocess.run(
        [sys.executable, "-c", SHARED_SESSION_PROBE], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(line.removeprefix("PROBE "))
    assert out["catalog"] == "hive"
    assert out["materialize_before"] is None and out["materialize_after"] is None
    assert "these tables do not exist yet" in out["error"] and "run `darkroom ingest` first" in out["error"], out
    assert out["env_restored"] is True
    assert out["same_session"].endswith("-plan")
