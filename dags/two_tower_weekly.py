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

from dags._defaults import default_args, run_as_of
from dags._defaults import week_complete as is_week_complete
from dags._spark import task_settings
from dags.assets import (
    FCT_ENGAGEMENT_LABELS,
    SERVING_EXPLORE_CANDIDATES,
    SERVING_ITEM_EMBEDDINGS,
    SERVING_USER_EMBEDDINGS,
    TWO_TOWER_CHAMPION,
    TWO_TOWER_EXAMPLES,
)


def _spark(settings, app: str):
    from darkroom.spark import get_spark

    return get_spark(settings, app)


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

    @task(pool="ranker_training", outlets=[TWO_TOWER_EXAMPLES, TWO_TOWER_CHAMPION])
    def train() -> dict:
        from jobs.two_tower_examples.main import train_weekly

        settings = task_settings()
        return train_weekly(settings, run_as_of(get_current_context()), spark=_spark(settings, "two_tower")).summary()

    @task(outlets=[SERVING_ITEM_EMBEDDINGS, SERVING_USER_EMBEDDINGS])
    def embed() -> dict:
        from dataclasses import asdict

        from jobs.two_tower_embeddings.main import embed as run_embed

        settings = task_settings()
        return asdict(run_embed(_spark(settings, "two_tower_embeddings"), settings, run_as_of(get_current_context())))

    @task
    def index() -> dict:
        from jobs.two_tower_embeddings.main import index_batch

        settings = task_settings()
        built = index_batch(_spark(settings, "two_tower_index"), settings, run_as_of(get_current_context()))
        return {"path": str(built.path), "spec": built.spec, "recall": built.recall, "run_id": built.run_id}

    @task(outlets=[SERVING_EXPLORE_CANDIDATES])
    def explore_candidates() -> dict:
        from dataclasses import asdict

        from jobs.explore_candidates.main import candidates

        settings = task_settings()
        return asdict(candidates(_spark(settings, "explore_candidates"), settings, run_as_of(get_current_context())))

    @task
    def publish_explore() -> list[dict]:
        from serving.keys import batch_id_of
        from serving.publisher import publish_batch, result_dict

        settings = task_settings()
        batch = batch_id_of(run_as_of(get_current_context()))
        results = publish_batch(_spark(settings, "publish_explore"), settings, batch, ["explore"])
        return [result_dict(r) for r in results]

    week_complete() >> train() >> embed() >> index() >> explore_candidates() >> publish_explore()


two_tower_weekly()
