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

from airflow.sdk import dag, get_current_context, task

from dags._defaults import default_args, run_as_of
from dags._spark import task_settings
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
    @task
    def materialize() -> dict:
        from darkroom.spark import get_spark
        from feature_store.definitions import get_service
        from feature_store.online import materialize as write_online

        settings = task_settings()
        as_of = run_as_of(get_current_context())
        service = get_service(settings.ranker.feature_service)
        counts = write_online(
            get_spark(settings, "feature_materialize"), settings, service, as_of - timedelta(days=1), as_of
        )
        return {view: {"entities": c.entities, "written": c.written} for view, c in counts.items()}

    @task
    def check_consistency(written: dict) -> dict:
        from darkroom.spark import get_spark
        from feature_store.definitions import get_service
        from feature_store.online import check_consistency as check

        settings = task_settings()
        as_of = run_as_of(get_current_context())
        spark = get_spark(settings, "feature_materialize")
        since = as_of - timedelta(days=1)
        checked = {}
        for view in get_service(settings.ranker.feature_service).views:
            report = check(spark, settings, view, as_of, since=since)
            checked[view.name] = {"sampled": report.sampled, "matched": report.matched}
        return checked

    check_consistency(materialize())


feature_materialize()
