"""
### two_tower_weekly: the Explore retrieval model, its FAISS index and the Explore candidates, every week

Runs when `fct_engagement_labels` is rebuilt, once a week (the run whose as-of is Monday 00:00 UTC; a manual run
or `airflow dags test two_tower_weekly 2026-11-02` uses its own logical date).

1. **train** (`darkroom two-tower train`): the training pairs of the last `two_tower.train_days` days
   (`features.two_tower_examples`: explicit engagements, the user's earlier engaged posts, point-in-time features),
   a two-tower model (in-batch softmax with log-Q correction) trained on all days but the last, evaluated on the
   last: recall@K and NDCG@K for exact search, the chosen ANN index and the popularity baseline, and the champion on
   the same holdout. One MLflow run in experiment `two_tower` with the index sweep (recall vs queries/s) and the
   model; `@champion` moves only when recall@`gate_k` improves by more than `gate_margin`.
2. **embed**: the champion's embeddings of the live posts and the active users (Spark `mapInPandas`) into
   `serving.item_embeddings` / `serving.user_embeddings` for the batch.
3. **index**: the FAISS index of the batch's item embeddings, the setting the model's sweep chose, checked against
   exact search, saved under the state folder and logged as an `index-<batch>` MLflow run.
4. **explore_candidates**: per active user, ANN top-K without own posts, followed authors and seen posts, scored by
   `ranker@champion`, the best `two_tower.explore_size` into `serving.explore_candidates`.
5. **publish_explore** (`darkroom serving publish --groups explore`): the batch's Explore candidates and embeddings
   written to Redis under a new version of group `explore`, verified against the Delta tables, then made current by
   one pointer switch (the Explore reader and the API read it).

Runs in pool `ranker_training` (one slot) with the ranker DAGs: one model training at a time on the machine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from dags._defaults import default_args
from dags._defaults import week_complete as is_week_complete
from dags._spark import spark_task
from dags.assets import (
    FCT_ENGAGEMENT_LABELS,
    SERVING_EXPLORE_CANDIDATES,
    SERVING_ITEM_EMBEDDINGS,
    SERVING_USER_EMBEDDINGS,
    TWO_TOWER_CHAMPION,
    TWO_TOWER_EXAMPLES,
)


@dag(
    dag_id="two_tower_weekly",
    schedule=FCT_ENGAGEMENT_LABELS,
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "ml", "two_tower", "explore"],
    default_args=default_args(execution_timeout=timedelta(hours=3)),
)
def two_tower_weekly():
    @task.short_circuit
    def week_complete() -> bool:
        """Skips the run unless its as-of is Monday 00:00 UTC (or the run was started by hand)."""
        return is_week_complete(get_current_context())

    train = spark_task(
        "train",
        "jobs.two_tower_examples.main:train",
        pool="ranker_training",
        outlets=[TWO_TOWER_EXAMPLES, TWO_TOWER_CHAMPION],
    )
    embed = spark_task(
        "embed", "jobs.two_tower_embeddings.main:embed_task", outlets=[SERVING_ITEM_EMBEDDINGS, SERVING_USER_EMBEDDINGS]
    )
    index = spark_task("index", "jobs.two_tower_embeddings.main:index_task")
    explore_candidates = spark_task(
        "explore_candidates", "jobs.explore_candidates.main:explore_candidates", outlets=[SERVING_EXPLORE_CANDIDATES]
    )
    publish_explore = spark_task(
        "publish_explore", "serving.publisher:publish_families", op_kwargs={"families": ["explore"]}
    )

    week_complete() >> train >> embed >> index >> explore_candidates >> publish_explore


two_tower_weekly()
