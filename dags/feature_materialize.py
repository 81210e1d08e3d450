"""
### feature_materialize: the ranker's latest feature values to the Redis online store, then an online/offline check

Runs when the feature marts (`dim_user_features`, `dim_post_features`, `fct_viewer_author_affinity`) are rebuilt.
The window is the run's data interval: the day before its as-of (the triggering events' `data_interval_end`, else
the run's own).

1. **materialize**: for every view of feature service `ranker.feature_service`, each entity's latest row with
   `as_of - 1 day < feature_ts <= as_of` written to `settings.redis_url` as one hash per entity,
   `<feature_store.online_key_prefix>:<view>:<key>` (fields = the features and `_feature_ts`). A key already holding
   a newer `_feature_ts` is left alone, so a backfill never overwrites fresher values.
2. **check_consistency**: for a sample of `feature_store.consistency_sample` entities per view, the online hash
   against the offline value at as-of; any mismatch fails the task naming the key, field and both values.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag

from dags._defaults import default_args
from dags._spark import spark_task
from dags.assets import DIM_POST_FEATURES, DIM_USER_FEATURES, FCT_VIEWER_AUTHOR_AFFINITY


@dag(
    dag_id="feature_materialize",
    schedule=(DIM_USER_FEATURES | DIM_POST_FEATURES | FCT_VIEWER_AUTHOR_AFFINITY),
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["darkroom", "features", "redis"],
    default_args=default_args(execution_timeout=timedelta(hours=1)),
)
def feature_materialize():
    materialize = spark_task("materialize", "feature_store.online:materialize_task")
    check_consistency = spark_task("check_consistency", "feature_store.online:check_consistency_task")
    materialize >> check_consistency


feature_materialize()
