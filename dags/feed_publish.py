"""
### feed_publish: the precomputed feeds and story rings, published to Redis atomically, every hour

Runs whenever `ranker_hourly` or `ranker_weekly` has run (asset `models.ranker_champion`), so every batch is scored
by the champion of that hour, with the latest fan-out policy at or before the run's as-of.

1. **feed_precompute** (`darkroom precompute feed`): per active user, the recent posts of followed push-mode authors
   scored by `ranker@champion` (top `fanout.timeline_cap`), the pull-mode authors' recent posts, each user's pull
   authors, the metadata of every referenced post and `config:fanout`: the `serving.*` feed tables of the batch.
2. **story_rings** (`spark-submit jobs/story_rings/main.py --as-of T`, connection `spark_default`, pool `spark`):
   `serving.story_rings` of the batch, authors with a live story, unseen first, then by engagement.
3. **publish** (`darkroom serving publish --batch-id B --groups feed --groups stories`): each group written under a
   new version, verified against the Delta tables (counts per key family, sampled contents), then made current by
   one pointer switch; the previous version stays whole until then and expires after `serving.grace_seconds`.
   A re-run of a batch that is already current changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag

from dags._defaults import default_args
from dags._spark import spark_submit_task, spark_task
from dags.assets import (
    RANKER_CHAMPION,
    SERVING_CELEBRITY_POSTS,
    SERVING_FANOUT_CONFIG,
    SERVING_FEED_TIMELINES,
    SERVING_POST_META,
    SERVING_PULL_AUTHORS,
    SERVING_STORY_RINGS,
)


@dag(
    dag_id="feed_publish",
    schedule=RANKER_CHAMPION,
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "serving", "feed"],
    default_args=default_args(execution_timeout=timedelta(hours=1)),
)
def feed_publish():
    feed_precompute = spark_task(
        "feed_precompute",
        "jobs.feed_precompute.main:feed_precompute",
        outlets=[
            SERVING_FEED_TIMELINES,
            SERVING_CELEBRITY_POSTS,
            SERVING_PULL_AUTHORS,
            SERVING_POST_META,
            SERVING_FANOUT_CONFIG,
        ],
    )
    story_rings = spark_submit_task("story_rings", "jobs.story_rings.main", outlets=[SERVING_STORY_RINGS])
    publish = spark_task("publish", "serving.publisher:publish_families", op_kwargs={"families": ["feed", "stories"]})

    [feed_precompute, story_rings] >> publish


feed_publish()
