"""``dbt_world``'s dbt commands in one process, on one Spark session with dbt's catalog
(``darkroom.dbt_runner.share_session``, as ``darkroom.platform_run`` runs its builds), instead of a child process,
a JVM and a metastore start for each (the three builds, measured on the tiny world: 192 s against 288 s).

``python -m tests.dbt.world_build OUT``: the settings come from the environment (``settings_env``). Runs
``run --full-refresh`` as of day one, ``run`` as of the world's end (then records each incremental model's Delta
version), ``build --full-refresh`` as of the end, ``source freshness``, a production build of
``fct_user_read_activity`` (``dbt.unit_tests`` off) and ``docs generate``; writes ``{"incremental_versions",
"build", "freshness", "production"}`` (the summaries) to ``OUT``. A failed command raises (non-zero exit, its
failures in the traceback) and writes nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path


def main(out: Path) -> None:
    from delta.tables import DeltaTable

    from darkroom.dbt_runner import run_dbt, share_session
    from darkroom.settings import load_settings
    from darkroom.tables import table
    from tests.dbt.conftest import DAY_ONE, WORLD_END, incremental_models

    s = load_settings()
    spark = share_session(s, "tests-dbt-world")
    run_dbt(s, "run", full_refresh=True, as_of=DAY_ONE)
    run_dbt(s, "run", as_of=WORLD_END)
    versions = {
        q: DeltaTable.forPath(spark, table(q).uri(s)).history(1).collect()[0]["version"] for q in incremental_models(s)
    }
    build = run_dbt(s, "build", full_refresh=True, as_of=WORLD_END)
    freshness = run_dbt(s, "source", check=False)  # judged against the wall clock: the world is stale by now
    production = s.model_copy(update={"dbt": s.dbt.model_copy(update={"unit_tests": False})})
    production_build = run_dbt(production, "build", select=["fct_user_read_activity"], as_of=WORLD_END)
    run_dbt(s, "docs", as_of=WORLD_END)  # last: target/ keeps its catalog.json
    summaries = {"build": build, "freshness": freshness, "production": production_build}
    out.write_text(json.dumps({"incremental_versions": versions, **{k: asdict(v) for k, v in summaries.items()}}))


if __name__ == "__main__":  # dbt's worker processes re-import the main module: nothing may run on import
    main(Path(sys.argv[1]))
