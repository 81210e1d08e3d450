"""Every darkroom table that DAGs produce or consume, as one Airflow ``Asset`` constant each.

Producers list a table's asset in ``outlets``; consumers schedule on it. The name is the table's registry name
(``darkroom.tables``), the URI a static id: ``x-darkroom://<layer>/<table>``. Airflow leaves ``x-`` schemes as
written (no provider normalises them), and the URI does not depend on where the lake is, so a DAG file needs no
settings to name a table. A test checks these match the registry.
"""

from __future__ import annotations

from airflow.sdk import Asset


def _table_asset(layer: str, name: str) -> Asset:
    return Asset(name=f"{layer}.{name}", uri=f"x-darkroom://{layer}/{name}", group=layer)


# Bronze: the input datasets, merged from landing through their data contracts by the ingest DAG.
BRONZE_USERS = _table_asset("bronze", "users")
BRONZE_FOLLOWS = _table_asset("bronze", "follows")
BRONZE_POSTS = _table_asset("bronze", "posts")
BRONZE_MEDIA = _table_asset("bronze", "media")
BRONZE_MEDIA_ACCESS = _table_asset("bronze", "media_access")
BRONZE_STORIES = _table_asset("bronze", "stories")
BRONZE_STORY_VIEWS = _table_asset("bronze", "story_views")
BRONZE_IMPRESSIONS = _table_asset("bronze", "impressions")
BRONZE_DM_EVENTS = _table_asset("bronze", "dm_events")
BRONZE_FEED_READS = _table_asset("bronze", "feed_reads")
BRONZE_PROFILE_VISITS = _table_asset("bronze", "profile_visits")
# The generator's ground truth, kept apart from bronze: evaluation reads it, training never does.
ORACLE = _table_asset("oracle", "oracle")

# Input dataset (contract name) -> the asset of the table it is ingested into.
ASSETS_BY_DATASET: dict[str, Asset] = {
    "users": BRONZE_USERS,
    "follows": BRONZE_FOLLOWS,
    "posts": BRONZE_POSTS,
    "media": BRONZE_MEDIA,
    "media_access": BRONZE_MEDIA_ACCESS,
    "stories": BRONZE_STORIES,
    "story_views": BRONZE_STORY_VIEWS,
    "impressions": BRONZE_IMPRESSIONS,
    "dm_events": BRONZE_DM_EVENTS,
    "feed_reads": BRONZE_FEED_READS,
    "profile_visits": BRONZE_PROFILE_VISITS,
    "oracle": ORACLE,
}
