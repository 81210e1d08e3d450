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

# Marts: the dbt project's tables the jobs read (written by the dbt_build DAG; names are dbt model names).
FCT_MEDIA_ACCESS_DAILY = _table_asset("marts", "fct_media_access_daily")
DIM_MEDIA_TIERING = _table_asset("marts", "dim_media_tiering")
FCT_AUTHOR_FANOUT_STATS = _table_asset("marts", "fct_author_fanout_stats")
FCT_USER_READ_ACTIVITY = _table_asset("marts", "fct_user_read_activity")
FCT_ENGAGEMENT_LABELS = _table_asset("marts", "fct_engagement_labels")
DIM_USER_FEATURES = _table_asset("marts", "dim_user_features")
DIM_POST_FEATURES = _table_asset("marts", "dim_post_features")
FCT_VIEWER_AUTHOR_AFFINITY = _table_asset("marts", "fct_viewer_author_affinity")
FCT_STORY_RING_SIGNALS = _table_asset("marts", "fct_story_ring_signals")

MART_ASSETS: dict[str, Asset] = {
    a.name.split(".", 1)[1]: a
    for a in (
        FCT_MEDIA_ACCESS_DAILY,
        DIM_MEDIA_TIERING,
        FCT_AUTHOR_FANOUT_STATS,
        FCT_USER_READ_ACTIVITY,
        FCT_ENGAGEMENT_LABELS,
        DIM_USER_FEATURES,
        DIM_POST_FEATURES,
        FCT_VIEWER_AUTHOR_AFFINITY,
        FCT_STORY_RING_SIGNALS,
    )
}

# Storage: the tier plan, the blob catalog's locations and the placement dbt reads back (the storage_tiering DAG).
TIER_DECISIONS = _table_asset("blob_catalog", "tier_decisions")
MEDIA_LOCATIONS = _table_asset("blob_catalog", "media_locations")
MEDIA_PLACEMENT = _table_asset("meta", "media_placement")
STORAGE_ASSETS: dict[str, Asset] = {a.name: a for a in (TIER_DECISIONS, MEDIA_LOCATIONS, MEDIA_PLACEMENT)}

# The fan-out policy (the fanout_threshold_tuning DAG): what the serving publisher turns into config:fanout,
# user:{id}:pull_authors and celebrity:{id}:posts.
FANOUT_POLICIES = _table_asset("fanout", "policies")
FANOUT_AUTHOR_MODES = _table_asset("fanout", "author_modes")
FANOUT_INACTIVE_USERS = _table_asset("fanout", "inactive_users")
FANOUT_ASSETS: dict[str, Asset] = {a.name: a for a in (FANOUT_POLICIES, FANOUT_AUTHOR_MODES, FANOUT_INACTIVE_USERS)}

# Models: the ranker's @champion alias (the ranker DAGs update it; the feed publisher scores with it).
# Not a table: the registry alias ``models:/ranker@champion`` (the model registry is MLflow's, not the lake's).
RANKER_CHAMPION = Asset(name="models.ranker_champion", uri="x-darkroom://models/ranker_champion", group="models")
TWO_TOWER_CHAMPION = Asset(
    name="models.two_tower_champion", uri="x-darkroom://models/two_tower_champion", group="models"
)
MODEL_ASSETS: dict[str, Asset] = {"ranker@champion": RANKER_CHAMPION, "two_tower@champion": TWO_TOWER_CHAMPION}
# The two-tower model's training pairs (two_tower_weekly writes them).
TWO_TOWER_EXAMPLES = _table_asset("features", "two_tower_examples")
FEATURE_ASSETS: dict[str, Asset] = {a.name: a for a in (TWO_TOWER_EXAMPLES,)}

# Serving: one batch per precompute run (batch_id = the data-interval end), what the serving publisher puts in Redis.
SERVING_FEED_TIMELINES = _table_asset("serving", "feed_timelines")
SERVING_CELEBRITY_POSTS = _table_asset("serving", "celebrity_posts")
SERVING_PULL_AUTHORS = _table_asset("serving", "pull_authors")
SERVING_POST_META = _table_asset("serving", "post_meta")
SERVING_FANOUT_CONFIG = _table_asset("serving", "fanout_config")
SERVING_STORY_RINGS = _table_asset("serving", "story_rings")
SERVING_EXPLORE_CANDIDATES = _table_asset("serving", "explore_candidates")
SERVING_USER_EMBEDDINGS = _table_asset("serving", "user_embeddings")
SERVING_ITEM_EMBEDDINGS = _table_asset("serving", "item_embeddings")
SERVING_ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        SERVING_FEED_TIMELINES,
        SERVING_CELEBRITY_POSTS,
        SERVING_PULL_AUTHORS,
        SERVING_POST_META,
        SERVING_FANOUT_CONFIG,
        SERVING_STORY_RINGS,
        SERVING_EXPLORE_CANDIDATES,
        SERVING_USER_EMBEDDINGS,
        SERVING_ITEM_EMBEDDINGS,
    )
}
