"""``dbt_world``'s three dbt commands in one process, on one Spark session with dbt's catalog
(``darkroom.dbt_runner.share_session``, as ``darkroom.platform_run`` runs its builds), instead of a child process,
a JVM and a metastore start for each: measured on the tiny world, 192 s against 288 s.

``python -m tests.dbt.world_build OUT``: the settings come from the environment (``settings_env``); writes
``{"incremental_versions": ..., "build": <the build's summary>}`` to ``OUT``. A failed command raises (non-zero exit,
its failures in the traceback) and writes nothing.
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
    summary = run_dbt(s, "build", full_refresh=True, as_of=WORLD_END)
    out.write_text(json.dumps({"incremental_versions": versions, "build": asdict(summary)}))


if __name__ == "__main__":  # dbt's worker processes re-import the main module: nothing may run on import
    main(Path(sys.argv[1]))
