"""Generator throughput: rows per second per dataset of the synthetic world (``medium``; ``tiny`` with --quick),
against copying the same Parquet rows (read + write with the same session, the I/O floor) in the same run.
``ratio`` = generator rows/s over copy rows/s: below 1, generation costs more than moving the bytes."""

from __future__ import annotations

import shutil
import time

from darkroom.settings import DarkroomSettings


def run(settings: DarkroomSettings, *, quick: bool) -> dict:
    from darkroom.spark import get_spark
    from jobs.generate.main import generate

    scale = "tiny" if quick else "medium"
    seed = settings.world.seed
    work = settings.state_dir / "bench" / "generate"
    shutil.rmtree(work, ignore_errors=True)
    spark = get_spark(settings, "bench-generate")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    counts = generate(settings, scale=scale, seed=seed, days=None, out_dir=work / "world", timings=timings)
    total_s = time.perf_counter() - t0

    per_dataset = {}
    for name, rows in counts.items():
        t1 = time.perf_counter()
        spark.read.parquet(str(work / "world" / name)).write.mode("overwrite").parquet(str(work / "copy" / name))
        copy_s = time.perf_counter() - t1
        gen_s = timings[name]
        per_dataset[name] = {
            "rows": rows,
            "generate_s": round(gen_s, 2),
            "copy_s": round(copy_s, 2),
            "generate_rows_per_s": round(rows / gen_s),
            "copy_rows_per_s": round(rows / copy_s),
        }
        print(
            f"[bench generate] {name}: {rows:,} rows, generate {rows / gen_s:,.0f} rows/s, "
            f"copy {rows / copy_s:,.0f} rows/s",
            flush=True,
        )
    rows = sum(counts.values())
    gen_s = sum(d["generate_s"] for d in per_dataset.values())
    copy_s = sum(d["copy_s"] for d in per_dataset.values())
    shutil.rmtree(work, ignore_errors=True)
    return {
        "ratio": round((rows / gen_s) / (rows / copy_s), 4),
        "ratio_of": "generator rows/s over Parquet copy rows/s (same rows, same session)",
        "rows": rows,
        "generate_rows_per_s": round(rows / gen_s),
        "copy_rows_per_s": round(rows / copy_s),
        "wall_s": round(total_s, 1),
        "per_dataset": per_dataset,
        "params": {
            "scale": scale,
            "seed": seed,
            "spark_master": settings.spark.master,
            "shuffle_partitions": settings.spark.shuffle_partitions,
        },
    }
