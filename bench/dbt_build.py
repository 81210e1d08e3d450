"""dbt: a full build against an incremental run after one more day of data.

A world is generated and ingested into a bronze of the benchmark's own (not timed), then, timed, each through
``darkroom.dbt_runner.run_dbt`` (a child process with its own Spark session, as the CLI and the DAG run it):
1. ``dbt build --full-refresh`` as of one day before the world's end (every model, unit test and data test),
2. ``dbt build`` as of the world's end: the incremental day (incremental models merge only the last
   ``dbt.lookback_days`` days; tables and tests run again).
``ratio`` = incremental wall time / full-build wall time (the issue asks that an incremental day cost a small
fraction of a full build). Wall times include the child's Spark start-up, which both pay once; the sum of dbt's
own node timings is reported beside them.

Full: the ``medium`` world with ``HISTORY_DAYS`` (90) days of events unless ``world.days`` asks for more, and the
whole project. 90 days is the longest window the marts read (the affinity's decay window, the tiering's 90-day
access rate and cold threshold): with less history a full build is not yet the steady-state job it is in
production, and the ratio flatters neither side. ``--quick``: the tiny world, only the media datasets and
``+fct_media_access_daily``.

The generated bronze is kept in ``<state>/bench/dbt_build`` with ``bronze.json`` (scale, seed, days, end,
datasets, rows) and reused by the next run that asks for the same world; delete the folder to regenerate it.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import timedelta

from darkroom.settings import DarkroomSettings

QUICK_DATASETS = ["users", "posts", "media", "media_access"]
QUICK_SELECT = ["+fct_media_access_daily"]
HISTORY_DAYS = 90


def _timed(st, full_refresh: bool, as_of, select) -> dict:
    from darkroom.dbt_runner import run_dbt

    t0 = time.perf_counter()
    s = run_dbt(st, "build", select=select, full_refresh=full_refresh, as_of=as_of)
    wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 2),
        "node_s": round(sum(r.execution_time for r in s.results), 2),
        "as_of": s.as_of,
        "counts": s.counts(),
    }


def run(settings: DarkroomSettings, *, quick: bool) -> dict:
    from darkroom.spark import get_spark
    from jobs.generate import transform as T
    from jobs.generate.main import generate
    from jobs.ingest.main import ingest_landing

    scale = "tiny" if quick else "medium"
    seed = settings.world.seed
    work = settings.state_dir / "bench" / "dbt_build"
    days = settings.world.days if quick else max(settings.world.days or 0, HISTORY_DAYS)
    world = settings.world.model_copy(update={"days": days})
    st = settings.model_copy(update={"state_dir": work, "jars_path": settings.jars_dir, "world": world})
    datasets = QUICK_DATASETS if quick else None
    select = QUICK_SELECT if quick else None
    marker = work / "bronze.json"
    wanted = {"scale": scale, "seed": seed, "days": days, "end": st.world.end.isoformat(), "datasets": datasets}
    have = json.loads(marker.read_text()) if marker.exists() else {}
    if {k: have.get(k) for k in wanted} == wanted:
        # The same world's bronze from an earlier run (not timed either way); the full build rewrites every model.
        counts = have["rows"]
        print(f"[bench dbt_build] reusing bronze in {work} ({sum(counts.values()):,} rows)", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
        spark = get_spark(st, "bench-dbt")
        t0 = time.perf_counter()
        counts = generate(
            st, scale=scale, seed=seed, days=st.world.days, out_dir=st.landing_dir, spark=spark, datasets=datasets
        )
        ingest_landing(st, with_report=False, datasets=datasets)
        marker.write_text(json.dumps(wanted | {"rows": counts}))
        print(
            f"[bench dbt_build] bronze ready: {sum(counts.values()):,} rows in {time.perf_counter() - t0:.0f}s",
            flush=True,
        )

    end = st.world.end
    full = _timed(st, True, end - timedelta(days=1), select)
    print(f"[bench dbt_build] full build (as of {full['as_of']}): {full['wall_s']:.1f}s", flush=True)
    incremental = _timed(st, False, end, select)
    print(f"[bench dbt_build] incremental day (as of {incremental['as_of']}): {incremental['wall_s']:.1f}s", flush=True)
    return {
        "ratio": round(incremental["wall_s"] / full["wall_s"], 4),
        "ratio_of": "incremental build wall time (one more day) over full build wall time (--full-refresh)",
        "full_build": full,
        "incremental_build": incremental,
        "bronze_rows": counts,
        "params": {
            "scale": scale,
            "seed": seed,
            "days": T.make_world(scale, seed, st.world.days, end).days,
            "unit_tests_in_build": st.dbt.unit_tests,
            "select": select or "whole project",
            "lookback_days": st.dbt.lookback_days,
            "spark_master": st.spark.master,
            "shuffle_partitions": st.spark.shuffle_partitions,
        },
    }
