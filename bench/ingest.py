"""Ingest throughput: rows per second through the contracts into bronze Delta (checks, great-expectations report,
quarantine, MERGE, ledger), against writing the same rows as plain Parquet with the same Spark session in the same
run. ``ratio`` = contract ingest rows/s / plain Parquet rows/s: the price of the contracts (1.0 would be free)."""

from __future__ import annotations

import shutil
import time

from darkroom.settings import DarkroomSettings
from darkroom.tables import input_datasets

QUICK_DATASETS = ["users", "follows"]  # --quick: the smallest and the largest table of the tiny world


def run(settings: DarkroomSettings, *, quick: bool) -> dict:
    from darkroom.spark import get_spark
    from data_contracts.suites import ContractValidator
    from jobs.generate.main import generate
    from jobs.ingest.main import ingest

    scale = "tiny" if quick else "medium"
    seed = settings.world.seed
    work = settings.state_dir / "bench" / "ingest"
    shutil.rmtree(work, ignore_errors=True)
    st = settings.model_copy(update={"state_dir": work, "jars_path": settings.jars_dir})
    spark = get_spark(st, "bench-ingest")
    landing = work / "landing"
    datasets = [d for d in input_datasets() if not quick or d in QUICK_DATASETS]
    counts = generate(st, scale=scale, seed=seed, days=None, out_dir=landing, datasets=datasets)
    validator = ContractValidator(st)

    per_dataset = {}
    for i, name in enumerate(datasets, 1):
        src = landing / name
        t0 = time.perf_counter()
        spark.read.parquet(str(src)).write.mode("overwrite").parquet(str(work / "plain" / name))
        plain_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = ingest(st, name, src, validator=validator)
        ingest_s = time.perf_counter() - t0
        rows = counts[name]
        per_dataset[name] = {
            "rows": rows,
            "quarantined": r.quarantined_rows,
            "ingest_s": round(ingest_s, 2),
            "plain_parquet_s": round(plain_s, 2),
            "ingest_rows_per_s": round(rows / ingest_s),
            "plain_parquet_rows_per_s": round(rows / plain_s),
        }
        print(
            f"[bench ingest {i}/{len(datasets)}] {name}: {rows:,} rows, contracts {ingest_s:.1f}s "
            f"({rows / ingest_s:,.0f} rows/s), plain Parquet {plain_s:.1f}s ({rows / plain_s:,.0f} rows/s)",
            flush=True,
        )
    rows = sum(d["rows"] for d in per_dataset.values())
    ingest_s = sum(d["ingest_s"] for d in per_dataset.values())
    plain_s = sum(d["plain_parquet_s"] for d in per_dataset.values())
    return {
        "ratio": round((rows / ingest_s) / (rows / plain_s), 4),
        "ratio_of": "contract ingest rows/s over plain Parquet write rows/s (same session, same rows)",
        "rows": rows,
        "ingest_rows_per_s": round(rows / ingest_s),
        "plain_parquet_rows_per_s": round(rows / plain_s),
        "per_dataset": per_dataset,
        "params": {
            "scale": scale,
            "seed": seed,
            "datasets": datasets,
            "spark_master": st.spark.master,
            "shuffle_partitions": st.spark.shuffle_partitions,
            "great_expectations_report": True,
        },
    }
