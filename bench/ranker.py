"""The multi-task ranker: training throughput, batch scoring, and the quality table against baselines and oracle.

Full (``medium`` world): the weekly retrain exactly as ``darkroom ranker retrain`` runs it (point-in-time training set
of the last ``ranker.train_days`` days, the MMoE at the settings' dimensions, the last day held out, logistic
regression and LightGBM on the same features and split, the generator's oracle), then, on the same training rows:
- ``ratio``: examples/s with sparse embedding gradients (``sparse_adam``, the default) over examples/s with dense
  Adam on the embedding tables (the issue's peer: 16k against 4k examples/s measured on a 42M-parameter MMoE), both
  one epoch over the same window of the training set, one after the other in this process;
- batch scoring: the registered model (loaded back from MLflow) scores the holdout's rows, candidates/s;
- the quality table: AUC, NE and calibration per head for the model, both baselines and the oracle, and the goals
  (within 0.01 AUC of the oracle on like, 0.03 on the rarer heads; NE better than both baselines on every head);
- the MLflow comparison (``cadence``): the weekly run (as of the world's last day, which it leaves for the
  fine-tunes) and the two hourly fine-tunes after it, each with its registry version, the gate's decision and reason.

The world (generated, ingested, the ranker's marts built by dbt as of the world's end) is kept in
``<state>/bench/ranker/world.json``'s folder between runs; delete the folder to rebuild it (about 15 minutes).

``--quick``: no world; a synthetic training set of the same shape (Parquet, 60k rows) for the two throughputs and
the scoring rate only.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from darkroom.settings import DarkroomSettings

RANKER_MARTS = ["+fct_engagement_labels", "+dim_user_features", "+dim_post_features", "+fct_viewer_author_affinity"]
PEER_WINDOW = timedelta(hours=2)
FINETUNE_AFTER_HOURS = (1, 2)  # the hourly fine-tunes after the weekly run, as the ranker_hourly DAG runs them
RESULTS = Path(__file__).resolve().parent / "results" / "ranker"
HEADS = ("like", "comment", "save", "share", "follow", "hide", "dwell")


def _world(spark, st: DarkroomSettings) -> dict:
    """The medium world with the ranker's marts, built once and reused while world.json matches."""
    marker = st.state_dir / "world.json"
    want = {"scale": "medium", "seed": st.world.seed}
    if marker.exists():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in want} == want:
            print(f"[bench ranker] reusing the world in {st.state_dir} ({have})", flush=True)
            return have
    from darkroom.dbt_runner import run_dbt
    from jobs.generate.main import generate
    from jobs.ingest.main import ingest_landing

    t0 = time.perf_counter()
    generate(st, scale="medium", seed=st.world.seed, days=st.world.days, out_dir=st.landing_dir, spark=spark)
    ingest_landing(st, with_report=False)
    as_of = st.world.end.replace(tzinfo=UTC)
    run_dbt(st, "run", select=RANKER_MARTS, full_refresh=True, as_of=as_of)
    have = want | {"as_of": as_of.isoformat(), "days": st.world.days, "built_s": round(time.perf_counter() - t0)}
    marker.write_text(json.dumps(have))
    return have


def _throughput(files, spec, cfg, optimizer: str) -> dict:
    from ml.ranker.train import train

    run_cfg = cfg.model_copy(update={"embedding_optimizer": optimizer, "epochs": 1})
    result = train(files, spec, run_cfg)
    return {
        "optimizer": optimizer,
        "examples": result.examples,
        "seconds": round(result.seconds, 2),
        "examples_per_s": round(result.examples_per_s),
        "parameters": result.parameters,
    }


def _scoring(scorer, source) -> dict:
    from ml.ranker.data import read_columns

    rows = read_columns(source, scorer.spec.feature_columns(labels=False))
    t0 = time.perf_counter()
    scores = scorer.predict_table(rows)
    seconds = time.perf_counter() - t0
    assert len(scores["value"]) == rows.num_rows
    return {
        "candidates": rows.num_rows,
        "seconds": round(seconds, 2),
        "candidates_per_s": round(rows.num_rows / seconds),
    }


def _goals(quality: dict) -> dict:
    model, oracle = quality.get("model", {}), quality.get("oracle", {})
    out = {}
    for h in HEADS:
        gap = oracle.get(f"auc_{h}", np.nan) - model.get(f"auc_{h}", np.nan)
        limit = 0.01 if h == "like" else 0.03
        ne = model.get(f"ne_{h}", np.nan)
        beats = all(ne < quality.get(b, {}).get(f"ne_{h}", np.nan) for b in ("logistic", "lightgbm"))
        out[h] = {
            "auc_gap_to_oracle": round(float(gap), 4),
            "gap_limit": limit,
            "within_gap": bool(gap <= limit),
            "ne_better_than_both_baselines": bool(beats),
        }
    return out


def _table(quality: dict) -> dict:
    return {
        h: {
            m: {k: round(v[f"{k}_{h}"], 4) for k in ("auc", "ne", "calibration") if f"{k}_{h}" in v}
            for m, v in quality.items()
        }
        for h in HEADS
    }


def _progress(message: str) -> None:
    print(f"[bench ranker] {message}", flush=True)


def _cadence_row(st: DarkroomSettings, result, seconds: float) -> dict:
    """One run of the MLflow comparison: what the registry and the gate recorded for it."""
    from darkroom.tracking import tracking_uri
    from ml import registry as R

    run = R.client(tracking_uri(st)).get_run(result.run_id)
    model = result.quality["model"]
    return {
        "version": result.version,
        "kind": result.kind,
        "run_name": run.info.run_name,
        "mlflow_run_id": result.run_id,
        "training_window": run.data.tags.get("training_window"),
        "started_from": run.data.tags.get("started_from"),
        "train_rows": result.train_rows,
        "promoted": result.decision.promote,
        "reason": result.decision.reason,
        "value_ne": round(result.decision.challenger_value_ne, 5),
        "champion_value_ne": (
            round(result.decision.champion_value_ne, 5) if result.decision.champion_value_ne is not None else None
        ),
        "auc_like": round(model["auc_like"], 4),
        "champion_after": result.champion_version,
        "seconds": round(seconds, 1),
    }


def _full(settings: DarkroomSettings) -> dict:
    from darkroom.spark import get_spark
    from darkroom.tracking import tracking_uri
    from feature_store.definitions import get_service
    from feature_store.offline import training_set_files
    from ml import registry as R
    from ml.ranker.data import as_source
    from ml.ranker.inference import load_registered
    from ml.ranker.pipeline import finetune, retrain

    work = settings.state_dir / "bench" / "ranker"
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "mlflow", ignore_errors=True)  # a fresh registry: the run's model is the first champion
    st = settings.model_copy(update={"state_dir": work, "jars_path": settings.jars_dir})
    spark = get_spark(st, "bench-ranker")
    world = _world(spark, st)
    # The weekly run leaves the world's last day for the hourly fine-tunes after it.
    as_of = datetime.fromisoformat(world["as_of"]) - timedelta(days=1)
    t0 = time.perf_counter()
    result = retrain(st, as_of, spark=spark, with_baselines=True, progress=_progress)
    retrain_s = time.perf_counter() - t0
    print(f"[bench ranker] weekly retrain in {retrain_s:.0f}s: {result.examples_per_s:,.0f} examples/s", flush=True)

    service = get_service(st.ranker.feature_service)
    start = as_of - timedelta(days=st.ranker.train_days)
    boundary = as_of - timedelta(days=st.ranker.holdout_days)
    source = as_source(training_set_files(st, service, result.training_set_version, start, as_of))
    scorer = load_registered(f"models:/{st.ranker.registered_model}/{result.version}")
    peer_source = source.window(boundary - PEER_WINDOW, boundary)
    sparse = _throughput(peer_source, scorer.spec, st.ranker, st.ranker.embedding_optimizer)
    dense = _throughput(peer_source, scorer.spec, st.ranker, "dense_adam")
    print(f"[bench ranker] sparse {sparse['examples_per_s']:,}/s, dense Adam {dense['examples_per_s']:,}/s", flush=True)
    scoring = _scoring(scorer, source.window(boundary, as_of))
    print(f"[bench ranker] scoring {scoring['candidates_per_s']:,} candidates/s", flush=True)
    cadence = [_cadence_row(st, result, retrain_s)]
    for hours in FINETUNE_AFTER_HOURS:
        t0 = time.perf_counter()
        tuned = finetune(st, as_of + timedelta(hours=hours), spark=spark, progress=_progress)
        cadence.append(_cadence_row(st, tuned, time.perf_counter() - t0))

    RESULTS.mkdir(parents=True, exist_ok=True)
    c = R.client(tracking_uri(st))
    for name in ("holdout_quality.csv", "holdout_quality.html", "training_curves.png", "calibration.png", "gate.json"):
        shutil.copy(c.download_artifacts(result.run_id, name, str(work / "artifacts")), RESULTS / name)
    spark.stop()
    return {
        "ratio": round(sparse["examples_per_s"] / dense["examples_per_s"], 3),
        "ratio_of": "training examples/s with sparse embedding gradients (SparseAdam) over dense Adam on the "
        "embedding tables, one epoch each over the same 2 h of the training set, same process",
        "throughput": {"sparse": sparse, "dense_adam": dense},
        "weekly_retrain": {
            "seconds": round(retrain_s, 1),
            "train_examples_per_s": round(result.examples_per_s),
            "train_rows": result.train_rows,
            "holdout_rows": result.holdout_rows,
            "training_set_version": result.training_set_version,
            "mlflow_run_id": result.run_id,
        },
        "scoring": scoring,
        "cadence": cadence,
        "quality": _table(result.quality),
        "goals": _goals(result.quality),
        "report_files": sorted(p.name for p in RESULTS.iterdir()),
        "params": {
            "world": world,
            "ranker": json.loads(st.ranker.model_dump_json()),
            "spark_master": st.spark.master,
        },
    }


def _quick(settings: DarkroomSettings) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml.ranker.inference import RankerScorer
    from ml.ranker.train import prepare_spec, train

    work = settings.state_dir / "bench" / "ranker-quick"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = 60_000
    start_us = int(datetime(2026, 10, 30, tzinfo=UTC).timestamp() * 1e6)
    tags = np.array(["#cats", "#dogs", "#food", "#sea"])
    table = pa.table(
        {
            "viewer_id": pa.array(rng.integers(1, 50_000, rows), pa.int64()),
            "post_id": pa.array(rng.integers(1, 200_000, rows), pa.int64()),
            "author_id": pa.array(rng.integers(1, 20_000, rows), pa.int64()),
            "impressed_at": pa.array(start_us + rng.integers(0, 86_400_000_000, rows), pa.timestamp("us", tz="UTC")),
            **{f"viewer__f{i}": pa.array(rng.lognormal(2, 1, rows)) for i in range(6)},
            **{f"post__f{i}": pa.array(rng.normal(0, 1, rows)) for i in range(6)},
            "post_hashtags__hashtags": pa.array([list(rng.choice(tags, rng.integers(0, 3))) for _ in range(rows)]),
            **{f"label_{h}": pa.array((rng.uniform(size=rows) < 0.1).astype(np.int32)) for h in HEADS},
        }
    )
    path = work / "part-0.parquet"
    pq.write_table(table, path, row_group_size=16_384)
    cfg = settings.ranker
    spec = prepare_spec([str(path)], cfg)
    sparse = _throughput([str(path)], spec, cfg, cfg.embedding_optimizer)
    dense_rows = work / "dense.parquet"
    pq.write_table(table.slice(0, 8_192), dense_rows)
    dense = _throughput([str(dense_rows)], spec, cfg, "dense_adam")
    model = train([str(dense_rows)], spec, cfg.model_copy(update={"epochs": 1})).model
    scorer = RankerScorer(model, spec, model.arch, dict(cfg.value_weights))
    scoring = _scoring(scorer, [str(path)])
    return {
        "ratio": round(sparse["examples_per_s"] / dense["examples_per_s"], 3),
        "ratio_of": "training examples/s with sparse embedding gradients over dense Adam (synthetic rows)",
        "throughput": {"sparse": sparse, "dense_adam": dense},
        "scoring": scoring,
        "params": {"rows": rows, "synthetic": True, "ranker": json.loads(cfg.model_dump_json())},
    }


def run(settings: DarkroomSettings, *, quick: bool) -> dict:
    return _quick(settings) if quick else _full(settings)
