"""The tiny world through bronze and the dbt project, built the way a week of runs would build it.

``dbt_world`` runs, in one state folder of its own, in one child process on one Spark session with dbt's metastore
(``tests/dbt/world_build.py``):
1. ``dbt run --full-refresh`` as of one day before the world's end (day one),
2. ``dbt run`` as of the end (an incremental day),
3. ``dbt build --full-refresh`` as of the end (models, unit tests, data tests),
4. ``dbt source freshness``, a production build of one mart (``dbt.unit_tests`` off) and ``dbt docs generate``,
and records each incremental model's Delta version after step 2, so tests can compare the incremental rows with
the full refresh's. Mart checks read the tables by path from the test's own Spark session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from darkroom.dbt_runner import DbtRunSummary
from darkroom.settings import PROJECT_ROOT, DarkroomSettings, load_settings
from darkroom.tables import table
from tests.model_sizes import RANKER

WORLD_END = datetime(2026, 11, 1, tzinfo=UTC)
DAY_ONE = WORLD_END - timedelta(days=1)


def incremental_models(settings: DarkroomSettings) -> list[str]:
    """``schema.name`` of every incremental model, from the manifest of the last dbt run."""
    manifest = json.loads((settings.dbt_dir / "target" / "manifest.json").read_text())
    return sorted(
        f"{n['schema']}.{n['name']}"
        for n in manifest["nodes"].values()
        if n["resource_type"] == "model" and n["config"]["materialized"] == "incremental"
    )


@dataclass
class DbtWorld:
    settings: DarkroomSettings
    as_of: datetime
    build: DbtRunSummary
    incremental_versions: dict[str, int]
    freshness: DbtRunSummary  # dbt source freshness after the build
    production: DbtRunSummary  # a production build (no unit tests) of fct_user_read_activity

    def read(self, spark, qualified_name: str, version: int | None = None):
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(table(qualified_name).uri(self.settings))

    def bronze(self, spark, name: str):
        return self.read(spark, f"bronze.{name}")


@pytest.fixture(scope="session")
def dbt_settings(settings, tmp_path_factory) -> DarkroomSettings:
    return load_settings(
        state_dir=tmp_path_factory.mktemp("dbt-state"),
        jars_path=settings.jars_dir,
        spark=settings.spark.model_dump(),
        world=settings.world.model_dump(),
        dbt={"unit_tests": True},  # the suite runs the unit tests in its builds (production builds leave them to CI)
    )


@pytest.fixture(scope="session")
def dbt_bronze(dbt_settings, spark) -> DarkroomSettings:
    """The tiny world (seed 7) generated and ingested into the dbt state's bronze."""
    from jobs.generate.main import generate
    from jobs.ingest.main import ingest_landing

    generate(dbt_settings, scale="tiny", seed=7, days=None, out_dir=dbt_settings.landing_dir, spark=spark)
    ingest_landing(dbt_settings, with_report=False, echo=lambda *_: None)
    return dbt_settings


@pytest.fixture(scope="session")
def dbt_world(dbt_bronze, tmp_path_factory) -> DbtWorld:
    from darkroom.airflow_env import settings_env

    s = dbt_bronze
    out = tmp_path_factory.mktemp("dbt-world") / "world.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")} | settings_env(s)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.dbt.world_build", str(out)],
        env=env,
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and out.exists(), (proc.stdout[-3000:], proc.stderr[-3000:])
    built = json.loads(out.read_text())
    return DbtWorld(
        settings=s,
        as_of=WORLD_END,
        build=DbtRunSummary.from_json(built["build"]),
        incremental_versions=built["incremental_versions"],
        freshness=DbtRunSummary.from_json(built["freshness"]),
        production=DbtRunSummary.from_json(built["production"]),
    )


# The ranker of ``champion_world``: tiny dimensions, one epoch, a week of training.
CHAMPION_RANKER = RANKER


@dataclass
class ChampionWorld:
    """A state of its own with dbt_world's lake, the fan-out policy as of ``as_of`` and ``models:/ranker@champion``
    (version ``champion_version``) in its own MLflow store: what the serving precompute jobs need."""

    settings: DarkroomSettings
    as_of: datetime
    champion_version: str


@pytest.fixture(scope="session")
def champion_world(dbt_world, tmp_path_factory, spark) -> ChampionWorld:
    """dbt_world's lake copied into a new state, ``fanout_threshold`` run as of WORLD_END (budgets under which the
    tiny graph has push and pull authors, as in test_fanout_tuning.py; no report, no MLflow run) and a tiny ranker
    trained on the week before WORLD_END, the first model, so it becomes champion."""
    from jobs.fanout_threshold.main import tune
    from ml.ranker.pipeline import retrain

    state = tmp_path_factory.mktemp("champion-state")
    shutil.copytree(dbt_world.settings.lake_dir, state / "lake")
    s = load_settings(
        state_dir=state,
        jars_path=dbt_world.settings.jars_dir,
        spark=dbt_world.settings.spark.model_dump(),
        world=dbt_world.settings.world.model_dump(),
        fanout={"read_budget_merges": 20, "fanout_writes_per_second": 5.0},
        ranker=CHAMPION_RANKER,
    )
    tune(s, WORLD_END, spark, with_report=False, log_mlflow=False, progress=lambda *_: None)
    run = retrain(s, WORLD_END, spark=spark, with_baselines=False, progress=lambda *_: None)
    assert run.champion_version == run.version, run.decision.reason
    return ChampionWorld(settings=s, as_of=WORLD_END, champion_version=run.version)
