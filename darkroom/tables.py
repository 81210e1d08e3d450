"""The lakehouse table registry: the one place that names every table, its layer, path, schema, key and partitions.

Input datasets (bronze, and the oracle) take their schema and key from their data contract; event tables are
partitioned by ``dt``, a Delta generated column ``CAST(<event_time> AS DATE)``. No other module spells a table path.

``Table.path`` is a table's local folder; ``Table.uri`` is where Spark reads and writes it: the same folder, or, when
``settings.lake_uri`` is an ``s3a://`` URI, ``<lake_uri>/<layer>/<name>`` for every table not in ``LOCAL_ONLY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml

from darkroom.contract_spec import contract_names, load_contract
from darkroom.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

    from darkroom.settings import DarkroomSettings

Layer = Literal[
    "landing",
    "bronze",
    "oracle",
    "quarantine",
    "meta",
    "intermediate",
    "marts",
    "blob_catalog",
    "fanout",
    "features",
    "serving",
]
PARTITION_COLUMN = "dt"
DBT_MODELS_DIR = PROJECT_ROOT / "dbt" / "models"

# With the lake on an object store (``lake_uri = s3a://...``) these stay in the local lake folder (``lake_dir``):
# code outside Spark writes or reads their files by local path, or several Spark applications write them at once, which
# Delta on S3 does not make safe (one driver at a time, unless S3DynamoDBLogStore). A Spark cluster then needs that
# folder at the same path on the driver and on every executor (a shared volume). Key: a layer or a qualified table
# name; value: why.
_DBT_WRITES = "dbt writes its models under location_root = DARKROOM_LAKE_DIR (darkroom/dbt_runner.py, dbt_project.yml)"
_DELTA_RS_WRITES = "blobstore/catalog.py writes it with delta-rs (deltalake) at a local path"
LOCAL_ONLY: dict[str, str] = {
    "landing": "jobs/generate writes the input files and jobs/ingest lists them with pathlib",
    "intermediate": _DBT_WRITES,
    "marts": _DBT_WRITES,
    "blob_catalog.media_locations": _DELTA_RS_WRITES,
    "meta.media_placement": _DELTA_RS_WRITES,
    "meta.ingest_ledger": "every ingest task MERGEs into it, several at once in the ingest DAG (one Spark driver each)",
    "features.training_set_ranker_v1": "ml/ranker lists its files with delta-rs and reads them with pyarrow "
    "(feature_store.offline.training_set_files)",
    "features.two_tower_examples": "ml/two_tower lists its files with delta-rs and reads them with pyarrow "
    "(jobs/two_tower_examples)",
}


@dataclass(frozen=True)
class Table:
    name: str
    layer: Layer
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    event_time: str | None = None
    contract: str | None = None
    _schema_ddl: str | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.layer}.{self.name}"

    @property
    def local_only(self) -> str | None:
        """Why the table stays in the local lake folder when the lake is on an object store (None: it moves)."""
        return LOCAL_ONLY.get(self.qualified_name) or LOCAL_ONLY.get(self.layer)

    def path(self, settings: DarkroomSettings) -> Path:
        """The table's local folder (with an ``s3a://`` lake, only meaningful for ``local_only`` tables)."""
        base = settings.landing_dir if self.layer == "landing" else settings.lake_dir / self.layer
        return base / self.name

    def uri(self, settings: DarkroomSettings) -> str:
        """Where Spark reads and writes the table: under ``lake_uri`` on an object store unless ``local_only``."""
        if settings.lake_on_object_store and self.local_only is None:
            return f"{settings.lake_uri}/{self.layer}/{self.name}"
        return str(self.path(settings))

    @property
    def schema(self) -> StructType:
        """The logical schema (without the generated partition column)."""
        if self.contract:
            return load_contract(self.contract).spark_schema()
        from pyspark.sql.types import StructType

        return StructType.fromDDL(self._schema_ddl)


QUARANTINE_DDL = (
    "source_file STRING NOT NULL, source_checksum STRING NOT NULL, run_id STRING NOT NULL, "
    "quarantined_at TIMESTAMP NOT NULL, row_key STRING, rules ARRAY<STRING> NOT NULL, reasons ARRAY<STRING> NOT NULL, "
    "row_json STRING NOT NULL"
)
PLACEMENT_DDL = "media_id BIGINT NOT NULL, tier STRING NOT NULL, placed_at TIMESTAMP NOT NULL"
MEDIA_LOCATIONS_DDL = (
    "media_id BIGINT NOT NULL, kind STRING NOT NULL, tier STRING NOT NULL, volume_id BIGINT, pack_id BIGINT, "
    "offset BIGINT, size BIGINT NOT NULL, checksum STRING NOT NULL, placed_at TIMESTAMP NOT NULL"
)
TIER_DECISIONS_DDL = (
    "media_id BIGINT NOT NULL, size_bytes BIGINT, current_tier STRING NOT NULL, target_tier STRING, action STRING, "
    "rule STRING NOT NULL, reason STRING NOT NULL, age_days DOUBLE, days_in_tier DOUBLE, "
    "days_since_last_access DOUBLE, reads_7d BIGINT, read_rate_1d DOUBLE, read_rate_7d DOUBLE, "
    "read_rate_30d DOUBLE, read_rate_90d DOUBLE, as_of TIMESTAMP NOT NULL, plan_date DATE NOT NULL"
)
LEDGER_DDL = (
    "dataset STRING NOT NULL, source_checksum STRING NOT NULL, source_file STRING NOT NULL, "
    "file_format STRING NOT NULL, rows BIGINT NOT NULL, good_rows BIGINT NOT NULL, quarantined_rows BIGINT NOT NULL, "
    "target_version BIGINT, run_id STRING NOT NULL, ingested_at TIMESTAMP NOT NULL, report_path STRING"
)

FANOUT_POLICIES_DDL = (
    "version STRING NOT NULL, policy STRING NOT NULL, chosen BOOLEAN NOT NULL, threshold BIGINT, "
    "push_authors BIGINT NOT NULL, pull_authors BIGINT NOT NULL, writes DOUBLE NOT NULL, merges DOUBLE NOT NULL, "
    "timeline_entries DOUBLE NOT NULL, celebrity_entries DOUBLE NOT NULL, stored_entries DOUBLE NOT NULL, "
    "write_cost DOUBLE NOT NULL, merge_cost DOUBLE NOT NULL, storage_cost DOUBLE NOT NULL, total_cost DOUBLE NOT NULL, "
    "fan_in_quantile BIGINT NOT NULL, within_read_budget BOOLEAN NOT NULL, within_freshness BOOLEAN NOT NULL, "
    "read_floor BIGINT NOT NULL, freshness_ceiling BIGINT, budgets_conflict BOOLEAN NOT NULL, message STRING NOT NULL, "
    "as_of TIMESTAMP NOT NULL, computed_at TIMESTAMP NOT NULL"
)
FANOUT_AUTHOR_MODES_DDL = (
    "version STRING NOT NULL, author_id BIGINT NOT NULL, followers BIGINT NOT NULL, active_followers BIGINT NOT NULL, "
    "posts_per_day DOUBLE NOT NULL, reader_load DOUBLE NOT NULL, threshold_mode STRING NOT NULL, "
    "per_author_mode STRING NOT NULL, push_cost DOUBLE NOT NULL, pull_cost DOUBLE NOT NULL"
)
FANOUT_INACTIVE_USERS_DDL = "version STRING NOT NULL, user_id BIGINT NOT NULL"
# The ranker's training set (feature_store, service ranker_v1): the impression, its point-in-time features
# (<view>__<feature>, feature_store/definitions.py) and the seven labels; a test keeps it equal to the service's.
TRAINING_SET_RANKER_V1_DDL = (
    "viewer_id BIGINT NOT NULL, post_id BIGINT NOT NULL, author_id BIGINT, impressed_at TIMESTAMP NOT NULL, "
    "impression_date DATE NOT NULL, surface STRING, position INT, "
    "viewer__account_age_days DOUBLE, viewer__followers BIGINT, viewer__followees BIGINT, "
    "viewer__feed_reads_7d BIGINT, viewer__impressions_7d BIGINT, viewer__likes_7d BIGINT, "
    "viewer__like_rate_7d DOUBLE, "
    "author__account_age_days DOUBLE, author__followers BIGINT, author__followees BIGINT, author__posts_7d BIGINT, "
    "post__age_hours DOUBLE, post__media_count INT, post__caption_length INT, post__hashtag_count INT, "
    "post__impressions BIGINT, post__likes BIGINT, post__comments BIGINT, post__saves BIGINT, post__shares BIGINT, "
    "post__hides BIGINT, post__like_rate DOUBLE, post__author_followers BIGINT, "
    "viewer_author__decayed_likes DOUBLE, viewer_author__decayed_comments DOUBLE, viewer_author__decayed_dms DOUBLE, "
    "viewer_author__decayed_profile_visits DOUBLE, viewer_author__affinity_score DOUBLE, "
    "viewer_author__feature_age_hours DOUBLE, post_hashtags__hashtags ARRAY<STRING>, "
    "label_like INT NOT NULL, label_comment INT NOT NULL, label_save INT NOT NULL, label_share INT NOT NULL, "
    "label_follow INT NOT NULL, label_hide INT NOT NULL, label_dwell INT NOT NULL"
)
# The two-tower model's training pairs (jobs/two_tower_examples): an explicit engagement, the user's earlier engaged
# posts, and each tower's point-in-time features (feature services two_tower_user_v1 / two_tower_item_v1).
TWO_TOWER_EXAMPLES_DDL = (
    "user_id BIGINT NOT NULL, post_id BIGINT NOT NULL, author_id BIGINT NOT NULL, engaged_at TIMESTAMP NOT NULL, "
    "engaged_date DATE NOT NULL, history_post_ids ARRAY<BIGINT> NOT NULL, "
    "viewer__account_age_days DOUBLE, viewer__followers BIGINT, viewer__followees BIGINT, "
    "viewer__feed_reads_7d BIGINT, viewer__impressions_7d BIGINT, viewer__likes_7d BIGINT, "
    "viewer__like_rate_7d DOUBLE, "
    "author__account_age_days DOUBLE, author__followers BIGINT, author__followees BIGINT, author__posts_7d BIGINT, "
    "post__age_hours DOUBLE, post__media_count INT, post__caption_length INT, post__hashtag_count INT, "
    "post__impressions BIGINT, post__likes BIGINT, post__comments BIGINT, post__saves BIGINT, post__shares BIGINT, "
    "post__hides BIGINT, post__like_rate DOUBLE, post__author_followers BIGINT"
)

# What the serving publisher (serving/) puts in Redis, one table per key family, one batch per precompute run:
# ``batch_id`` is the run's data-interval end as ``YYYYMMDDTHHMMZ``; each job replaces its batch (replaceWhere).
SERVING_DDL = {
    # timeline:{user_id}: the push fan-out candidates scored by ranker@champion, top N by value score.
    "feed_timelines": "batch_id STRING NOT NULL, user_id BIGINT NOT NULL, post_id BIGINT NOT NULL, "
    "score DOUBLE NOT NULL, rank INT NOT NULL, author_id BIGINT NOT NULL, created_at TIMESTAMP NOT NULL",
    # celebrity:{author_id}:posts: recent posts of pull-mode authors, scored by created_at (ms) when published.
    "celebrity_posts": "batch_id STRING NOT NULL, author_id BIGINT NOT NULL, post_id BIGINT NOT NULL, "
    "created_at TIMESTAMP NOT NULL",
    # user:{user_id}:pull_authors: the followed pull-mode authors merged at read time.
    "pull_authors": "batch_id STRING NOT NULL, user_id BIGINT NOT NULL, author_id BIGINT NOT NULL",
    # post:{post_id}: the metadata the feed shows, for every post another family references. ``base_score`` is the
    # post's median value score over the viewers it was scored for: the reader ranks pull-mode posts by it.
    "post_meta": "batch_id STRING NOT NULL, post_id BIGINT NOT NULL, author_id BIGINT NOT NULL, "
    "created_at TIMESTAMP NOT NULL, caption STRING, media_count INT NOT NULL, like_count BIGINT NOT NULL, "
    "comment_count BIGINT NOT NULL, base_score DOUBLE NOT NULL",
    # config:fanout: the chosen policy of fanout.policies.
    "fanout_config": "batch_id STRING NOT NULL, policy_version STRING NOT NULL, policy STRING NOT NULL, "
    "threshold BIGINT, computed_at TIMESTAMP NOT NULL",
    # story_ring:{user_id}: authors with a live story, unseen first then by engagement; expires with the last story.
    "story_rings": "batch_id STRING NOT NULL, viewer_id BIGINT NOT NULL, author_id BIGINT NOT NULL, "
    "score DOUBLE NOT NULL, unseen BOOLEAN NOT NULL, expires_at TIMESTAMP NOT NULL",
    # explore:{user_id}: two-tower ANN candidates (own posts, followed authors, seen posts excluded) by ranker value.
    "explore_candidates": "batch_id STRING NOT NULL, user_id BIGINT NOT NULL, post_id BIGINT NOT NULL, "
    "score DOUBLE NOT NULL, rank INT NOT NULL, retrieval_score DOUBLE NOT NULL, model_version STRING NOT NULL",
    # emb:user:{id} / emb:item:{id}: float32 little-endian vectors of the two-tower model named by model_version.
    "user_embeddings": "batch_id STRING NOT NULL, user_id BIGINT NOT NULL, model_version STRING NOT NULL, "
    "embedding ARRAY<FLOAT> NOT NULL",
    "item_embeddings": "batch_id STRING NOT NULL, post_id BIGINT NOT NULL, model_version STRING NOT NULL, "
    "embedding ARRAY<FLOAT> NOT NULL",
}
SERVING_KEYS = {
    "feed_timelines": ("batch_id", "user_id", "post_id"),
    "celebrity_posts": ("batch_id", "author_id", "post_id"),
    "pull_authors": ("batch_id", "user_id", "author_id"),
    "post_meta": ("batch_id", "post_id"),
    "fanout_config": ("batch_id",),
    "story_rings": ("batch_id", "viewer_id", "author_id"),
    "explore_candidates": ("batch_id", "user_id", "post_id"),
    "user_embeddings": ("batch_id", "user_id"),
    "item_embeddings": ("batch_id", "post_id"),
}


def utc(ts: datetime) -> datetime:
    """A plain UTC ``datetime``: naive means UTC; Airflow's pendulum subclass (which Spark and arithmetic treat
    differently) becomes the standard class."""
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return datetime(ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond, tzinfo=UTC)


def batch_id(as_of: datetime) -> str:
    """The serving batch of a run (the ``batch_id`` of every ``serving.*`` table): its data-interval end as
    ``YYYYMMDDTHHMMZ`` in UTC; a naive instant is UTC."""
    as_of = as_of.replace(tzinfo=UTC) if as_of.tzinfo is None else as_of.astimezone(UTC)
    return f"{as_of:%Y%m%dT%H%MZ}"


@cache
def _registry() -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for name in contract_names():
        c = load_contract(name)
        tables[f"{c.layer}.{name}"] = Table(
            name=name,
            layer=c.layer,
            key=tuple(c.key),
            partition_by=(PARTITION_COLUMN,) if c.event_time else (),
            event_time=c.event_time,
            contract=name,
        )
        tables[f"landing.{name}"] = Table(name=name, layer="landing", key=tuple(c.key), contract=name)
        tables[f"quarantine.{name}"] = Table(
            name=name, layer="quarantine", key=("source_checksum", "row_json"), _schema_ddl=QUARANTINE_DDL
        )
    tables["meta.ingest_ledger"] = Table(
        name="ingest_ledger", layer="meta", key=("dataset", "source_checksum"), _schema_ddl=LEDGER_DDL
    )
    # Written by the blob catalog (storage tiering); dbt reads it for each media's current tier.
    tables["meta.media_placement"] = Table(
        name="media_placement", layer="meta", key=("media_id", "placed_at"), _schema_ddl=PLACEMENT_DDL
    )
    # The blob catalog (blobstore/catalog.py writes it with delta-rs; Spark reads it) and the tier plan.
    tables["blob_catalog.media_locations"] = Table(
        name="media_locations", layer="blob_catalog", key=("media_id",), _schema_ddl=MEDIA_LOCATIONS_DDL
    )
    tables["blob_catalog.tier_decisions"] = Table(
        name="tier_decisions",
        layer="blob_catalog",
        key=("plan_date", "media_id"),
        partition_by=("plan_date",),
        _schema_ddl=TIER_DECISIONS_DDL,
    )
    # The fan-out policy (jobs/fanout_threshold): one version a day, each table replaced by version.
    tables["fanout.policies"] = Table(
        name="policies", layer="fanout", key=("version", "policy"), _schema_ddl=FANOUT_POLICIES_DDL
    )
    tables["fanout.author_modes"] = Table(
        name="author_modes",
        layer="fanout",
        key=("version", "author_id"),
        partition_by=("version",),
        _schema_ddl=FANOUT_AUTHOR_MODES_DDL,
    )
    tables["fanout.inactive_users"] = Table(
        name="inactive_users",
        layer="fanout",
        key=("version", "user_id"),
        partition_by=("version",),
        _schema_ddl=FANOUT_INACTIVE_USERS_DDL,
    )
    tables["features.training_set_ranker_v1"] = Table(
        name="training_set_ranker_v1",
        layer="features",
        key=("viewer_id", "post_id", "impressed_at"),
        partition_by=("impression_date",),
        _schema_ddl=TRAINING_SET_RANKER_V1_DDL,
    )
    tables["features.two_tower_examples"] = Table(
        name="two_tower_examples",
        layer="features",
        key=("user_id", "post_id", "engaged_at"),
        partition_by=("engaged_date",),
        _schema_ddl=TWO_TOWER_EXAMPLES_DDL,
    )
    for name, ddl in SERVING_DDL.items():
        tables[f"serving.{name}"] = Table(
            name=name, layer="serving", key=SERVING_KEYS[name], partition_by=("batch_id",), _schema_ddl=ddl
        )
    for layer, name, key in dbt_model_tables():
        tables[f"{layer}.{name}"] = Table(name=name, layer=layer, key=key)
    return tables


def dbt_model_tables() -> list[tuple[Layer, str, tuple[str, ...]]]:
    """The Delta tables the dbt project writes (intermediate and marts), with the key its tests declare.

    Read from each model's ``.yml``: the model-level ``unique_key`` test, else the column tested ``unique``.
    """
    out: list[tuple[Layer, str, tuple[str, ...]]] = []
    for layer in ("intermediate", "marts"):
        for path in sorted((DBT_MODELS_DIR / layer).glob("*.yml")):
            for model in (yaml.safe_load(path.read_text()) or {}).get("models", []):
                out.append((layer, model["name"], _declared_key(model, path)))
    return out


def _declared_key(model: dict, path: Path) -> tuple[str, ...]:
    for test in model.get("data_tests", []):
        if isinstance(test, dict) and "unique_key" in test:
            return tuple(test["unique_key"]["arguments"]["columns"])
    for column in model.get("columns", []):
        if "unique" in (column.get("data_tests") or []):
            return (column["name"],)
    raise ValueError(f"{path}: model {model['name']} declares no key (a unique_key test or a unique column)")


def table(qualified_name: str) -> Table:
    """Look a table up by ``layer.name``; the error lists what exists."""
    try:
        return _registry()[qualified_name]
    except KeyError:
        raise KeyError(f"unknown table {qualified_name!r}; known: {', '.join(sorted(_registry()))}") from None


def all_tables(layer: Layer | None = None) -> list[Table]:
    return [t for q, t in sorted(_registry().items()) if layer is None or t.layer == layer]


def input_datasets() -> list[str]:
    """Every dataset that enters through a contract, in dependency order (referenced tables first)."""
    names = contract_names()
    deps = {n: {r.table for r in load_contract(n).references} - {n} for n in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = sorted(n for n in names if n not in ordered and deps[n] <= set(ordered))
        if not ready:
            raise ValueError(f"contracts reference each other in a cycle: {sorted(set(names) - set(ordered))}")
        ordered.extend(ready)
    return ordered


def dataset_table(dataset: str) -> Table:
    """The Delta table an input dataset is merged into (bronze, or the oracle layer)."""
    return table(f"{load_contract(dataset).layer}.{dataset}")
