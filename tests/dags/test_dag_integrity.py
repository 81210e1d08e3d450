"""Every DAG file imports cleanly and follows the house rules; importing one does no work; the ingest DAG's edges are
the contracts' references; the Airflow harness hands task processes exactly the caller's settings; Spark jobs are
spark-submitted through the ``spark_default`` connection (the settings' master unless set outside) in pool ``spark``."""

from __future__ import annotations

import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from darkroom.airflow_env import (
    DAGS_DIR,
    SPARK_CONN_ENV,
    SPARK_CONN_ID,
    SPARK_POOL,
    airflow_env,
    pools,
    settings_env,
    subprocess_env,
)
from darkroom.contract_spec import contract_names, load_contract
from darkroom.settings import CONFIG_ENV, PROJECT_ROOT, load_settings
from darkroom.tables import dataset_table, dbt_model_tables, table

DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
HEAVY_MODULES = (
    "pyspark",
    "py4j",
    "delta",
    "great_expectations",
    "jobs",
    "data_contracts",
    "torch",
    "mlflow",
    "ml",
    "feature_store",
)


_DAGBAG_PROBE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset
bag = DagBag(dag_folder=sys.argv[1], safe_mode=False)
import dags.assets
def asset(a):
    return {"name": a.name, "uri": a.uri, "group": a.group}
print(json.dumps({
    "assets_by_dataset": {d: asset(a) for d, a in dags.assets.ASSETS_BY_DATASET.items()},
    "mart_assets": {m: asset(a) for m, a in dags.assets.MART_ASSETS.items()},
    "storage_assets": {m: asset(a) for m, a in dags.assets.STORAGE_ASSETS.items()},
    "fanout_assets": {m: asset(a) for m, a in dags.assets.FANOUT_ASSETS.items()},
    "serving_assets": {m: asset(a) for m, a in dags.assets.SERVING_ASSETS.items()},
    "model_assets": {m: asset(a) for m, a in dags.assets.MODEL_ASSETS.items()},
    "feature_assets": {m: asset(a) for m, a in dags.assets.FEATURE_ASSETS.items()},
    "asset_constants": {k: asset(a) for k, a in vars(dags.assets).items() if isinstance(a, Asset)},
    "import_errors": bag.import_errors,
    "dags": {
        dag_id: {
            "fileloc": dag.fileloc,
            "tags": sorted(dag.tags),
            "doc_md": dag.doc_md,
            "catchup": dag.catchup,
            "schedule_assets": sorted(
                a.name for a in getattr(getattr(dag.timetable, "asset_condition", None), "objects", [])
            ),
            "default_args": {k: v for k, v in dag.default_args.items() if isinstance(v, (int, float, str))},
            "tasks": {
                t.task_id: {
                    "upstream": sorted(t.upstream_task_ids),
                    "retries": t.retries,
                    "retry_exponential_backoff": t.retry_exponential_backoff,
                    "execution_timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                    "on_failure_callback": bool(t.on_failure_callback),
                    "outlets": [asset(a) for a in t.outlets],
                    "spark_submit": {
                        "conn_id": t._conn_id,
                        "pool": t.pool,
                        "application": t.application,
                        "module": getattr(t, "module", None),
                        "call": getattr(t, "call", None),
                        "precheck": getattr(t, "precheck", None),
                        "application_args": t.application_args,
                    } if isinstance(t, SparkSubmitOperator) else None,
                }
                for t in dag.tasks
            },
        }
        for dag_id, dag in bag.dags.items()
    },
}))
"""


@pytest.fixture(scope="module")
def dagbag(settings, tmp_path_factory) -> dict:
    """dags/ parsed by Airflow's DagBag, and dags/assets.py, in a subprocess configured by ``airflow_env``; returns a
    plain summary. Airflow's import sets up its home and logging, so it stays out of the test process (and nothing
    imports dags)."""
    dag_settings = load_settings(state_dir=tmp_path_factory.mktemp("dagbag-state"), jars_path=settings.jars_path)
    proc = subprocess.run(
        [sys.executable, "-c", _DAGBAG_PROBE, str(DAGS_DIR)],
        env=subprocess_env(dag_settings),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag["import_errors"] == {}
    assert dagbag["dags"], "no DAG found in dags/"


def test_dags_follow_the_house_rules(dagbag):
    for dag_id, dag in dagbag["dags"].items():
        assert dag_id == Path(dag["fileloc"]).stem, f"{dag_id} is in {dag['fileloc']}: file name must equal dag_id"
        assert dag["tags"], f"{dag_id}: no tags"
        assert dag["doc_md"] and len(dag["doc_md"].strip()) > 200, f"{dag_id}: doc_md must say what the DAG does"
        assert dag["catchup"] is False, f"{dag_id}: catchup must be False"
        for task_id, t in dag["tasks"].items():
            assert t["retries"] >= 2, f"{dag_id}.{task_id}: retries {t['retries']} < 2"
            assert t["retry_exponential_backoff"] > 0, f"{dag_id}.{task_id}: no retry back-off"
            assert t["execution_timeout"], f"{dag_id}.{task_id}: no execution_timeout"
            assert t["on_failure_callback"], f"{dag_id}.{task_id}: no on_failure_callback"


def test_one_dag_per_file(dagbag):
    files = [Path(d["fileloc"]).name for d in dagbag["dags"].values()]
    assert len(files) == len(set(files)), files


def test_ingest_has_one_task_per_contract_with_its_asset(dagbag):
    tasks = dagbag["dags"]["ingest"]["tasks"]
    assert sorted(tasks) == sorted(f"ingest_{d}" for d in contract_names())
    for d in contract_names():
        t = dataset_table(d)
        assert tasks[f"ingest_{d}"]["outlets"] == [
            {"name": t.qualified_name, "uri": f"x-darkroom://{t.layer}/{t.name}", "group": t.layer}
        ]


def test_dbt_build_runs_on_any_bronze_change_and_updates_every_mart(dagbag):
    [(task_id, t)] = dagbag["dags"]["dbt_build"]["tasks"].items()
    assert task_id == "build"
    assert sorted(a["name"] for a in t["outlets"]) == sorted(f"marts.{m}" for m in dagbag["mart_assets"])
    assert dagbag["dags"]["dbt_build"]["schedule_assets"] == sorted(
        a["name"] for d, a in dagbag["assets_by_dataset"].items() if a["group"] == "bronze"
    )


def test_ingest_edges_are_the_contract_references(dagbag):
    got = {task_id: t["upstream"] for task_id, t in dagbag["dags"]["ingest"]["tasks"].items()}
    expected = {
        f"ingest_{d}": sorted({f"ingest_{r.table}" for r in load_contract(d).references if r.table != d})
        for d in contract_names()
    }
    assert got == expected


def test_assets_name_the_registry_tables(dagbag):
    by_dataset = dagbag["assets_by_dataset"]
    assert sorted(by_dataset) == contract_names()
    for d, asset in by_dataset.items():
        t = dataset_table(d)
        assert asset == {"name": t.qualified_name, "uri": f"x-darkroom://{t.layer}/{t.name}", "group": t.layer}
    marts = dagbag["mart_assets"]
    assert sorted(marts) == sorted(name for layer, name, _ in dbt_model_tables() if layer == "marts")
    for name, asset in marts.items():
        t = table(f"marts.{name}")
        assert asset == {"name": t.qualified_name, "uri": f"x-darkroom://marts/{name}", "group": "marts"}
    for name, asset in {
        **dagbag["storage_assets"],
        **dagbag["fanout_assets"],
        **dagbag["feature_assets"],
        **dagbag["serving_assets"],
    }.items():
        t = table(name)
        assert asset == {"name": name, "uri": f"x-darkroom://{t.layer}/{t.name}", "group": t.layer}
    for alias, asset in dagbag["model_assets"].items():  # registry aliases: models:/<name>@<alias>
        name = alias.replace("@", "_")
        assert asset == {"name": f"models.{name}", "uri": f"x-darkroom://models/{name}", "group": "models"}
    # Every constant is wired, and each names a different table (or model alias).
    constants = list(dagbag["asset_constants"].values())
    wired = [
        *by_dataset.values(),
        *marts.values(),
        *dagbag["storage_assets"].values(),
        *dagbag["fanout_assets"].values(),
        *dagbag["model_assets"].values(),
        *dagbag["feature_assets"].values(),
        *dagbag["serving_assets"].values(),
    ]
    assert sorted(a["uri"] for a in constants) == sorted(a["uri"] for a in wired)
    assert len({a["uri"] for a in constants}) == len(constants)


_IMPORT_PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2])})
print(json.dumps(heavy))
"""


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_importing_a_dag_file_does_no_work(dag_file, tmp_path):
    """No settings are loaded (the config file named does not exist, so loading would raise), nothing is created in
    the state folder, and no heavy module is imported."""
    missing = tmp_path / "no-such-state"
    # Airflow itself writes its config and log folder at import: give it a home outside the state folder.
    env = subprocess_env(load_settings(state_dir=tmp_path / "airflow-side"))
    env.update(settings_env(load_settings(state_dir=missing)))
    env[CONFIG_ENV] = str(tmp_path / "no-such-config.yml")
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, str(dag_file), json.dumps(HEAVY_MODULES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert not missing.exists()


_SETTINGS_PROBE = "from darkroom.settings import load_settings; print(load_settings().model_dump_json())"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "jars_path": "/opt/jars",
            "redis_url": "redis://cache:6380/2",
            "spark": {"master": "local[3]", "shuffle_partitions": 3, "ui": True, "conf": {"spark.x": "1"}},
            "world": {"scale": "tiny", "seed": 11, "days": 9, "end": "2026-12-24T06:30:00+00:00"},
            "ingest": {"max_bad_fraction": 0.2},
            "dbt": {"lookback_days": 5, "affinity_half_life_days": 3.5},
            "airflow": {"task_retries": 0, "retry_delay_seconds": 5},
        },
    ],
    ids=["defaults", "everything-changed"],
)
def test_task_processes_rebuild_the_same_settings(tmp_path, monkeypatch, overrides):
    # A stray variable in the caller's shell must not leak into the task's settings.
    monkeypatch.setenv("DARKROOM_SPARK__MASTER", "local[7]")
    ours = load_settings(state_dir=tmp_path / "state", **overrides)
    proc = subprocess.run(
        [sys.executable, "-c", _SETTINGS_PROBE], env=subprocess_env(ours), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == json.loads(ours.model_dump_json())


def test_airflow_env_points_at_the_state_folder(settings):
    env = airflow_env(settings)
    assert env["AIRFLOW_HOME"] == str(settings.airflow_home)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(PROJECT_ROOT / "dags")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{settings.airflow_home}/airflow.db"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:////")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert (env["AIRFLOW__CORE__DEFAULT_TASK_RETRIES"], env["AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY"]) == ("2", "60")
    assert env["PYTHONPATH"].split(":")[0] == str(PROJECT_ROOT)


def test_shell_exports_give_the_same_settings(tmp_path, monkeypatch):
    config = tmp_path / "darkroom.yml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nworld:\n  scale: tiny\n  seed: 3\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("DARKROOM_SPARK__MASTER", "local[7]")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")  # stray: must be unset
    expected = load_settings()
    script = (
        f'eval "$({shlex.quote(sys.executable)} -m darkroom.airflow_env)" && '
        f'test -z "${{AIRFLOW__CORE__EXECUTOR+x}}" && {shlex.quote(sys.executable)} -c {shlex.quote(_SETTINGS_PROBE)}'
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == json.loads(expected.model_dump_json())
    assert expected.spark.master == "local[7]" and expected.world.seed == 3


# --- Spark jobs through SparkSubmitOperator ---------------------------------------------------------------------------

# Tasks that are no Spark job: a short-circuit on the run's as-of.
NOT_SPARK = {"day_complete", "week_complete"}
# Spark tasks in another pool than `spark`: the trainings (one at a time, beside at most one other Spark job).
TRAINING_POOL = {"retrain", "finetune", "train"}


def test_every_spark_task_is_a_spark_submit_on_spark_default(dagbag, settings):
    """Every task but the short-circuits is a ``SparkSubmitOperator`` on ``spark_default``: a job module's CLI
    (``jobs.<job>.main``, its results are tables) or an entry point run by ``darkroom/spark_task.py`` (its return
    value is the task's XCom)."""
    from darkroom.spark_task import SPARK_TASK_FILE, resolve

    tasks = {(d, t): task for d, dag in dagbag["dags"].items() for t, task in dag["tasks"].items()}
    assert {(d, t) for (d, t), task in tasks.items() if not task["spark_submit"]} == {
        (d, t) for d, t in tasks if t in NOT_SPARK
    }
    assert SPARK_POOL in pools(settings)
    entry_points = set()
    for (dag_id, task_id), task in tasks.items():
        sub, where = task["spark_submit"], f"{dag_id}.{task_id}"
        if sub is None:
            continue
        assert sub["conn_id"] == SPARK_CONN_ID, where
        assert sub["pool"] == ("ranker_training" if task_id in TRAINING_POOL else SPARK_POOL), where
        application = Path(sub["application"])
        assert application.is_file() and 'if __name__ == "__main__":' in application.read_text(), where
        if sub["call"]:  # an entry point: called by darkroom/spark_task.py, in the driver or in the task
            assert application == SPARK_TASK_FILE, where
            assert sub["call"].split(".")[0] in {"jobs", "ml", "feature_store", "serving", "darkroom"}, where
            resolve(sub["call"])  # raises naming what is missing
            entry_points.add(sub["call"])
            if sub["precheck"]:  # called in the task's process before any driver: must resolve there too
                resolve(sub["precheck"])
        else:  # a job module's own file, which runs main() as a script
            assert sub["module"].startswith("jobs.") and sub["module"].endswith(".main"), where
            assert application == PROJECT_ROOT.joinpath(*sub["module"].split(".")).with_suffix(".py"), where
            assert callable(getattr(importlib.import_module(sub["module"]), "main", None)), where
    assert len(entry_points) >= 20
    # an hour with no new landing file submits no driver: every ingest task has its Spark-free pre-check
    prechecks = {t: task["spark_submit"]["precheck"] for (d, t), task in tasks.items() if d == "ingest"}
    assert set(prechecks.values()) == {"jobs.ingest.main:ingest_precheck"}, prechecks
    # the replay validates the run's own tuning: its MLflow run id comes from fanout_threshold's XCom
    replay = dagbag["dags"]["fanout_threshold_tuning"]["tasks"]["replay_validation"]
    assert replay["upstream"] == ["fanout_threshold"]
    assert "xcom_pull(task_ids='fanout_threshold')['mlflow_run_id']" in " ".join(
        replay["spark_submit"]["application_args"]
    )
    assert dagbag["dags"]["feed_publish"]["tasks"]["publish"]["upstream"] == ["feed_precompute", "story_rings"]


_CONN_PROBE = (
    "from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook\n"
    f"print(SparkSubmitHook(conn_id={SPARK_CONN_ID!r})._connection['master'])"
)


@pytest.mark.parametrize("master", ["local[2]", "local[*]", "spark://spark-master:7077"])
def test_spark_default_is_the_settings_master_unless_set_outside(master, tmp_path, monkeypatch):
    """What SparkSubmitHook resolves in an Airflow process: the settings' master; a caller's connection wins."""
    monkeypatch.delenv(SPARK_CONN_ENV, raising=False)
    s = load_settings(state_dir=tmp_path / "state", spark={"master": master})

    def resolved() -> str:
        proc = subprocess.run(
            [sys.executable, "-c", _CONN_PROBE], env=subprocess_env(s), capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.strip().splitlines()[-1]

    assert resolved() == master
    monkeypatch.setenv(SPARK_CONN_ENV, "spark://elsewhere:7077")
    assert SPARK_CONN_ENV not in airflow_env(s)
    assert resolved() == "spark://elsewhere:7077"


_TASK_SPARK_PROBE = (
    "from dags._spark import task_settings\n"
    "from darkroom.spark import get_spark\n"
    "s = task_settings()\n"
    "print('masters:', s.spark.master, get_spark(s, 'probe').sparkContext.master, flush=True)"
)


def test_a_task_running_spark_in_its_own_process_starts_it_on_the_connections_master(settings, monkeypatch):
    """Not only the submitted jobs: a Spark task run in its own process (``airflow.spark_tasks=in_process``) starts
    its driver on the ``spark_default`` master, so pointing the connection elsewhere moves it too."""
    monkeypatch.setenv(SPARK_CONN_ENV, json.dumps({"conn_type": "spark", "host": "local[1]"}))
    assert settings.spark.master == "local[2]"
    proc = subprocess.run(
        [sys.executable, "-c", _TASK_SPARK_PROBE],
        env=subprocess_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("masters:")] == ["masters: local[1] local[1]"]


def test_local_profile_submits_to_the_machines_cores(tmp_path, monkeypatch):
    """The local profile's master is local[*]: as many Spark threads as cores (2 here), one submitted job at a time."""
    monkeypatch.delenv(SPARK_CONN_ENV, raising=False)
    s = load_settings(state_dir=tmp_path / "state")
    assert json.loads(airflow_env(s)[SPARK_CONN_ENV]) == {"conn_type": "spark", "host": s.spark.master}
    assert s.spark.master == "local[*]" and pools(s)[SPARK_POOL][0] == s.airflow.spark_pool_slots == 1


_SUBMIT_PROBE = """
import json, sys
from datetime import datetime, timezone
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from dags._spark import spark_submit_task
SparkSubmitOperator.execute = lambda self, context: None  # everything up to the spark-submit itself
op = spark_submit_task("story_rings", "jobs.story_rings.main", ["--extra", "1"])
when = datetime(2026, 11, 1, 1, tzinfo=timezone.utc)
tries = []
for _try in (1, 2):  # a retry of the same operator object (dag.test runs tries in one process)
    op.execute({"logical_date": when, "data_interval_end": when, "triggering_asset_events": {}})
    tries.append({"conf": op.conf, "jars": op.jars, "env_vars": op.env_vars, "name": op.name,
                  "spark_binary": op._spark_binary, "application_args": op.application_args})
print(json.dumps(tries))
"""


@pytest.mark.parametrize("connection", [None, "spark://spark-master:7077"], ids=["settings-master", "cluster"])
def test_a_submitted_job_gets_the_settings_conf_jars_and_environment(settings, connection, monkeypatch):
    """The operator resolves, when the task runs, what spark-submit gets: darkroom's Spark conf for the connection's
    master (no local-only settings on a cluster) without master and jars, the Delta jars, the task's settings as
    DARKROOM_* (with the connection's master, so the job's own session names the same master) and the venv's
    spark-submit."""
    from darkroom.jars import resolved_jars
    from darkroom.spark import spark_conf, with_master

    monkeypatch.delenv(SPARK_CONN_ENV, raising=False)
    if connection:
        monkeypatch.setenv(SPARK_CONN_ENV, connection)
    proc = subprocess.run(
        [sys.executable, "-c", _SUBMIT_PROBE], env=subprocess_env(settings), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, retried = json.loads(proc.stdout.strip().splitlines()[-1])
    assert retried == got  # a second try derives the same submit, nothing stacked on the first's
    job_settings = with_master(settings, connection or settings.spark.master)
    expected_conf = {
        k: v for k, v in spark_conf(job_settings, "story_rings").items() if k not in ("spark.master", "spark.jars")
    }
    assert got["conf"] == {"spark.log.level": "WARN", **expected_conf}
    assert ("spark.driver.host" in got["conf"]) is (connection is None)  # local-only settings follow the master
    assert got["jars"].split(",") == [str(j) for j in resolved_jars(settings.jars_dir)]
    assert {k: v for k, v in got["env_vars"].items() if k.startswith("DARKROOM_")} == settings_env(job_settings)
    assert json.loads(got["env_vars"]["DARKROOM_SPARK"])["master"] == (connection or "local[2]")
    assert got["env_vars"]["PYTHONPATH"].split(":")[0] == str(PROJECT_ROOT)
    assert got["env_vars"]["PYSPARK_DRIVER_PYTHON"] == sys.executable
    assert got["spark_binary"] == str(Path(sys.executable).parent / "spark-submit")
    assert got["name"] == "darkroom-story_rings"
    assert got["application_args"] == ["--as-of", "2026-11-01T01:00:00+00:00", "--extra", "1"]
