"""Typed settings for every darkroom component, loaded once at the edge (CLI or DAG task).

Precedence, highest first: keyword arguments, ``DARKROOM_*`` environment variables (nested with ``__``, e.g.
``DARKROOM_SPARK__MASTER=spark://host:7077``), the YAML file named by ``DARKROOM_CONFIG`` (or ``--config``), then the
embedded ``local`` profile. Unknown keys and bad values fail at start with the key and the reason.

The lake is a local folder by default (``<state_dir>/lake``); ``lake_uri`` moves it to another folder or to an object
store (``s3a://bucket/prefix``, reached through Hadoop's S3A connector with the ``s3`` settings).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
CONFIG_ENV = "DARKROOM_CONFIG"
S3A_SCHEME = "s3a://"
# S3's bucket naming rules (3-63 lower-case letters, digits, dots and hyphens; a letter or digit at both ends).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the key and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkSettings(_Strict):
    master: str = "local[*]"
    app_name_prefix: str = "darkroom"
    shuffle_partitions: int = Field(4, ge=1, description="spark.sql.shuffle.partitions; small locally")
    driver_memory: str = "4g"
    ui: bool = False
    # Extra Spark configuration, e.g. {"spark.executor.memory": "8g"} on a cluster.
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("master")
    @classmethod
    def _master_known(cls, v: str) -> str:
        if not (v.startswith(("local", "spark://", "yarn", "k8s://", "mesos://"))):
            raise ValueError(f"expected local[N], spark://host:port, yarn or k8s://..., got {v!r}")
        return v


class WorldSettings(_Strict):
    scale: Literal["tiny", "small", "medium", "large"] = "small"
    seed: int = 42
    days: int | None = Field(None, ge=1, le=366, description="days of event logs; default per scale")
    # The world's clock stops here: no wall-clock time enters generated data.
    end: datetime = datetime(2026, 11, 1, tzinfo=UTC)


class IngestSettings(_Strict):
    max_bad_fraction: float = Field(0.05, ge=0, le=1, description="more bad rows than this fails the whole file")


class DbtSettings(_Strict):
    """Knobs of the dbt project, passed to it as vars (the run's as_of comes from the data interval, not here)."""

    lookback_days: int = Field(3, ge=1, le=90, description="incremental models re-state these days before their last")
    active_window_days: int = Field(7, ge=1, le=90, description="a follower is active with a feed read in this window")
    affinity_half_life_days: float = Field(7.0, gt=0, description="half-life of viewer-author interactions")
    dwell_threshold_ms: int = Field(10_000, ge=0, description="the dwell head's label: dwell above this")
    post_feature_horizon_days: int = Field(30, ge=1, le=366, description="daily post features while younger than this")
    threads: int = Field(
        4,
        ge=1,
        le=16,
        description="dbt threads: nodes run at once, each a query on the one shared Spark session (dbt --threads)",
    )
    unit_tests: bool = Field(
        False,
        description="run the unit tests in `dbt build`; their inputs are static, so dbt advises CI only (the test suite"
        " runs them; `darkroom dbt test --select test_type:unit` any time)",
    )


SparkTasks = Literal["submit", "in_process"]


class AirflowSettings(_Strict):
    """Airflow's defaults for every darkroom task (a DAG or task may still set its own)."""

    task_retries: int = Field(2, ge=0, le=10, description="retries of a failed task (with exponential back-off)")
    retry_delay_seconds: int = Field(60, ge=0, description="first retry delay; doubles per try up to 15 minutes")
    host: str = Field("127.0.0.1", min_length=1, description="where `darkroom airflow up` serves the UI and API")
    port: int = Field(8080, ge=1, le=65535, description="the api-server's port of `darkroom airflow up`")
    spark_pool_slots: int = Field(
        1,
        ge=1,
        description="slots of the `spark` pool: Spark tasks (one driver JVM each) running at once; 1 on 2 cores",
    )
    spark_tasks: SparkTasks = Field(
        "submit",
        description=(
            "where a DAG's Spark tasks run: `submit` = spark-submitted on the spark_default connection's master; "
            "`in_process` = in the task's process on its session (darkroom.platform_run: many runs on one session)"
        ),
    )


class BlobSettings(_Strict):
    """The blob store: where its bytes live, its topology, and the codecs' parameters."""

    root: Path | None = Field(None, description="blob store root; default <state_dir>/blobs")
    size_scale: float = Field(
        0.0005, gt=0, le=1, description="stored bytes of a media = its generated size x this (keeps disks small)"
    )
    regions: list[str] = Field(default_factory=lambda: ["na", "eu", "as"], min_length=3)
    racks_per_cell: int = Field(14, ge=14, description="f4 puts a stripe's 14 blocks on 14 racks of a cell")
    machines_per_rack: int = Field(2, ge=1)
    hot_replicas: int = Field(3, ge=1, le=5, description="Haystack replicas, each on a machine of another rack")
    volume_bytes: int = Field(16 << 20, ge=1 << 16, description="a hot volume is sealed when it would exceed this")
    ec_data_blocks: int = Field(10, ge=2)
    ec_parity_blocks: int = Field(4, ge=1)
    ec_segment_bytes: int = Field(1 << 20, ge=4096, description="bytes per codec call")
    cold_zstd_level: int = Field(9, ge=1, le=22)
    cold_regions: int = Field(2, ge=1, description="a cold pack is written to this many regions")
    scrub_mb_per_s: float = Field(200.0, gt=0, description="the scrubber's read rate limit")

    @field_validator("regions")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"regions must be distinct, got {v}")
        return v


class TieringSettings(_Strict):
    """The seed's tier policy (defaults) and storage prices."""

    hot_recent_days: int = Field(7, ge=0, description="uploads younger than this stay hot")
    hot_reads_per_day: float = Field(10.0, gt=0, description="content read more than this a day stays (or turns) hot")
    warm_reads_per_week: float = Field(1.0, gt=0, description="content read less than this a week moves to warm")
    cold_idle_days: int = Field(90, ge=1, description="content not read for this many days moves to cold")
    hysteresis: float = Field(
        2.0, ge=1, description="warm content returns to hot only above hot_reads_per_day x this (no flapping)"
    )
    min_days_in_tier: int = Field(7, ge=0, description="a media stays at least this long in a tier before moving again")
    price_per_gb_month: dict[str, float] = Field(
        default_factory=lambda: {"hot": 0.023, "warm": 0.0125, "cold": 0.004},
        description="raw-disk price per stored (replicated) GB-month, per tier",
    )

    @field_validator("price_per_gb_month")
    @classmethod
    def _all_tiers(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"hot", "warm", "cold"}:
            raise ValueError(f"price_per_gb_month needs exactly hot, warm and cold, got {sorted(v)}")
        return v


class FanoutSettings(_Strict):
    """The fan-out cost model's unit costs and budgets (jobs/fanout_threshold); the seed's numbers are defaults."""

    write_cost: float = Field(1.0, gt=0, description="cost of one timeline write at post time (ZADD + trim)")
    merge_cost: float = Field(1.0, gt=0, description="cost of one read-time merge (one pull author's recent posts)")
    stored_entry_cost: float = Field(0.05, ge=0, description="cost of holding one timeline entry for a day")
    timeline_cap: int = Field(800, ge=1, description="entries per timeline (the seed's ZREMRANGEBYRANK 0 -801)")
    timeline_days: float = Field(1.0, gt=0, description="days of pushed posts a timeline holds (before the cap)")
    read_budget_merges: int = Field(50, ge=0, description="pull authors merged by a feed read, at the quantile below")
    read_budget_quantile: float = Field(0.99, gt=0, lt=1, description="the read budget's quantile over feed reads")
    merge_latency_ms: float = Field(2.0, gt=0, description="read-time cost of one merge, for the latency check")
    feed_base_latency_ms: float = Field(100.0, ge=0, description="the rest of a feed read (timeline, ranking)")
    feed_p99_ms: float = Field(500.0, gt=0, description="the seed's feed load p99; the read budget must fit in it")
    freshness_seconds: float = Field(30.0, gt=0, description="a pushed post reaches its active followers within this")
    # One post's fan-out by one worker; 30 s x 250/s = 7,500 active followers, the seed's 5-10K follower band.
    fanout_writes_per_second: float = Field(250.0, gt=0, description="timeline writes a second for one post")
    experiment: str = Field("fanout_policy", min_length=1, description="MLflow experiment of the tuning runs")

    @model_validator(mode="after")
    def _read_budget_fits_the_feed_latency(self) -> FanoutSettings:
        worst = self.feed_base_latency_ms + self.read_budget_merges * self.merge_latency_ms
        if worst > self.feed_p99_ms:
            raise ValueError(
                f"read_budget_merges {self.read_budget_merges} x merge_latency_ms {self.merge_latency_ms} + "
                f"feed_base_latency_ms {self.feed_base_latency_ms} = {worst:g} ms exceeds "
                f"feed_p99_ms {self.feed_p99_ms:g}"
            )
        return self


class FeatureStoreSettings(_Strict):
    """The feature store (feature_store/): feature views over the marts, training sets, the Redis online store."""

    default_ttl_hours: float = Field(48.0, gt=0, description="a feature value older than this is missing (null)")
    online_key_prefix: str = Field("fs", min_length=1, description="Redis keys: <prefix>:<view>:<entity key>")
    consistency_sample: int = Field(1000, ge=1, description="entities compared online against offline per check")
    online_batch_keys: int = Field(500, ge=1, description="keys per Redis pipeline round trip when materialising")


class RankerGateSettings(_Strict):
    """When a challenger becomes champion: both are evaluated on the same holdout, and the challenger must win."""

    margin: float = Field(
        0.001, ge=0, description="value-weighted NE must beat the champion's by at least this (absolute NE units)"
    )
    head_tolerance: float = Field(0.01, ge=0, description="no head's NE may be worse than the champion's by more")


class RankerSettings(_Strict):
    """The multi-task feed ranker (ml/ranker/); the seed's value weights are defaults."""

    value_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "like": 1.0,
            "comment": 2.0,
            "save": 3.0,
            "share": 3.0,
            "follow": 5.0,
            "hide": -10.0,
            "dwell": 1.0,
        },
        description="value score = sum of weight x predicted probability over the seven heads",
    )
    experiment: str = Field("ranker", min_length=1, description="MLflow experiment of training runs")
    registered_model: str = Field("ranker", min_length=1, description="MLflow registered model name")
    gate: RankerGateSettings = RankerGateSettings()
    feature_service: str = Field("ranker_v1", min_length=1, description="feature service the training sets use")
    train_days: int = Field(
        28,
        ge=2,
        le=90,
        description="the weekly retrain's window: the last N days (holdout included); at medium, 28 days beat 7 on "
        "every head (bench/ranker)",
    )
    finetune_hours: float = Field(
        1.0, gt=0, le=24, description="the hourly fine-tune trains on the last this many hours"
    )
    # Features: hashed ids and hashtags; the dense columns are inferred from the training set's schema.
    id_columns: list[str] = Field(
        default_factory=lambda: ["viewer_id", "author_id", "post_id"],
        min_length=1,
        description="single-valued id columns, each hashed into its own embedding table",
    )
    id_buckets: int = Field(1 << 20, ge=2, description="hash buckets (embedding rows) per id column")
    multi_buckets: int = Field(1 << 16, ge=2, description="hash buckets per multi-valued column (hashtags)")
    bag_mode: Literal["mean", "sum"] = Field("mean", description="pooling of a multi-valued column's embeddings")
    # The model: an MMoE (shared experts, one softmax gate and one tower per head).
    embedding_dim: int = Field(32, ge=1, description="width of every embedding table")
    dense_hidden: list[int] = Field(default_factory=lambda: [64], description="the dense features' MLP")
    num_experts: int = Field(4, ge=1, description="shared experts of the MMoE")
    expert_hidden: list[int] = Field(
        default_factory=lambda: [128, 64], min_length=1, description="each expert's MLP; the last is its output"
    )
    tower_hidden: list[int] = Field(default_factory=lambda: [32], description="each head's tower before its logit")
    # Training.
    batch_size: int = Field(1024, ge=1, description="examples per step (per process when distributed)")
    epochs: int = Field(
        1, ge=1, description="passes over the training window; a second pass memorises the id tables (bench/ranker)"
    )
    learning_rate: float = Field(1e-3, gt=0, description="Adam's learning rate for the dense parameters")
    embedding_learning_rate: float = Field(1e-2, gt=0, description="learning rate of the embedding tables")
    embedding_optimizer: Literal["sparse_adam", "adagrad", "dense_adam"] = Field(
        "sparse_adam",
        description="sparse_adam and adagrad use sparse gradients (rows touched by the batch only); dense_adam is "
        "the slow reference (about 4x slower on large tables)",
    )
    shuffle_buffer_rows: int = Field(65_536, ge=0, description="rows shuffled together while streaming; 0 = no shuffle")
    seed: int = Field(0, description="initial weights and shuffling")
    num_processes: int = Field(1, ge=1, description="training processes (TorchDistributor when above 1)")
    torch_threads: int | None = Field(
        None, ge=1, description="threads per process (torch, LightGBM); default its share of the cores less one"
    )
    holdout_days: int = Field(1, ge=1, description="the last days of the training set held out for evaluation")
    finetune_lr_scale: float = Field(0.1, gt=0, le=1, description="fine-tuning multiplies both learning rates by this")
    finetune_epochs: int = Field(1, ge=1, description="epochs of a fine-tune on the last hour's impressions")
    # Baselines, on the same features and split.
    baseline_max_rows: int = Field(1_000_000, ge=1, description="training rows sampled for the baselines")
    logreg_c: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regression")
    logreg_hash_buckets: int = Field(1 << 18, ge=16, description="one-hot columns of the hashed ids and hashtags")
    lgbm_rounds: int = Field(200, ge=1)
    lgbm_num_leaves: int = Field(31, ge=2)
    lgbm_learning_rate: float = Field(0.05, gt=0)

    @field_validator("value_weights")
    @classmethod
    def _seven_heads(cls, v: dict[str, float]) -> dict[str, float]:
        heads = {"like", "comment", "save", "share", "follow", "hide", "dwell"}
        if set(v) != heads:
            raise ValueError(f"value_weights needs exactly {sorted(heads)}, got {sorted(v)}")
        return v

    @field_validator("dense_hidden", "expert_hidden", "tower_hidden")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v):
            raise ValueError(f"layer widths must be positive, got {v}")
        return v


class TwoTowerSettings(_Strict):
    """The two-tower retrieval model (ml/two_tower/), its FAISS index and the Explore candidates."""

    experiment: str = Field("two_tower", min_length=1, description="MLflow experiment of training and index runs")
    registered_model: str = Field("two_tower", min_length=1, description="MLflow registered model name")
    train_days: int = Field(28, ge=2, le=90, description="the weekly run's window: the last N days, holdout included")
    holdout_days: int = Field(1, ge=1, description="the last days held out: recall@K is measured on them")
    history_len: int = Field(20, ge=1, description="engaged posts pooled into the user tower, latest first")
    history_lookback_days: int = Field(28, ge=1, description="how far back a user's engagement history reaches")
    # The model (ml.two_tower.train.TwoTowerConfig).
    embedding_dim: int = Field(64, ge=1, description="width of the id embedding tables")
    output_dim: int = Field(128, ge=1, description="the user and item embeddings' width (the seed's 128-d)")
    hidden: list[int] = Field(default_factory=lambda: [256], description="each tower's MLP")
    temperature: float = Field(0.05, gt=0, description="softmax temperature over u.v (normalised towers)")
    batch_size: int = Field(1024, ge=2, description="pairs per step: each row's in-batch negatives are the others")
    epochs: int = Field(1, ge=1)
    learning_rate: float = Field(1e-3, gt=0, description="Adam's learning rate for the MLPs")
    embedding_learning_rate: float = Field(1e-2, gt=0, description="SparseAdam's learning rate for the id tables")
    id_buckets: int = Field(1 << 20, ge=2, description="hash buckets per id table (user, history, post, author)")
    seed: int = 0
    log_q_correction: bool = Field(True, description="subtract log q(item) from the logits (Yi et al. 2019)")
    torch_threads: int = Field(0, ge=0, description="intra-op threads; 0 = the machine's share less one")
    # Evaluation and the champion gate.
    eval_ks: list[int] = Field(default_factory=lambda: [10, 50, 100, 500], min_length=1)
    gate_k: int = Field(100, ge=1, description="recall@gate_k on the holdout decides promotion (one of eval_ks)")
    gate_margin: float = Field(0.0, ge=0, description="the challenger's recall must beat the champion's by more")
    eval_max_users: int = Field(20_000, ge=1, description="holdout users evaluated (a seeded sample beyond this)")
    # The index and the candidates.
    live_post_days: int = Field(30, ge=1, description="posts created within this many days are indexed")
    index_min_recall: float = Field(0.95, gt=0, le=1, description="the sweep picks the fastest index reaching this")
    index_k: int = Field(100, ge=1, description="recall@k of the sweep against exact search")
    index_queries: int = Field(1_000, ge=1, description="user embeddings the sweep searches with")
    active_user_days: int = Field(7, ge=1, description="users with a feed read within this many days get candidates")
    retrieve_k: int = Field(500, ge=1, description="ANN neighbours fetched per user before the exclusions")
    score_k: int = Field(200, ge=1, description="candidates per user (best retrieval scores) the ranker scores")
    explore_size: int = Field(100, ge=1, description="candidates kept per user after the ranker's scoring")
    seen_days: int = Field(28, ge=1, description="posts impressed within this many days count as seen (excluded)")

    @model_validator(mode="after")
    def _gate_k_is_evaluated(self) -> TwoTowerSettings:
        if self.gate_k not in self.eval_ks:
            raise ValueError(f"gate_k {self.gate_k} must be one of eval_ks {self.eval_ks}")
        if not self.explore_size <= self.score_k <= self.retrieve_k:
            raise ValueError(
                f"need explore_size <= score_k <= retrieve_k, got {self.explore_size}, {self.score_k} and "
                f"{self.retrieve_k}"
            )
        return self


class StoryRingWeights(_Strict):
    """Weights of the story ring's engagement term (fct_story_ring_signals' columns); non-negative, so the term is."""

    dms: float = Field(3.0, ge=0, description="x dms_7d: DMs the viewer sent the author")
    profile_visits: float = Field(1.0, ge=0, description="x profile_visits_7d")
    likes_comments: float = Field(1.0, ge=0, description="x likes_comments_7d on the author's posts")
    story_views: float = Field(1.0, ge=0, description="x story_views_7d of the author's stories")
    affinity: float = Field(1.0, ge=0, description="x affinity_score (the 90-day decayed affinity at as_of)")


class PrecomputeSettings(_Strict):
    """What the serving precompute jobs (jobs/feed_precompute, jobs/story_rings) put in the serving.* tables; the
    timeline cap is ``fanout.timeline_cap`` (the cost model and the timelines share one cap)."""

    timeline_lookback_hours: float = Field(
        72.0, gt=0, description="a followed push author's post is a timeline candidate while younger than this"
    )
    celebrity_window_hours: float = Field(
        72.0, gt=0, description="a pull-mode author's post is in celebrity:{id}:posts while younger than this"
    )
    celebrity_posts_cap: int = Field(800, ge=1, description="newest posts kept per celebrity:{author_id}:posts")
    exclude_seen: bool = Field(
        True, description="drop candidates the user was already shown (an impression before as_of); hidden always"
    )
    base_score_viewers: int = Field(
        100, ge=1, description="active followers (a seeded sample) a pull-mode post is scored for: its base_score"
    )
    ring_weights: StoryRingWeights = StoryRingWeights()


class ServingSettings(_Strict):
    """The serving publisher and readers (serving/): versioned Redis keys, verification, the feed's read-time merge."""

    key_prefix: str = Field("sv", min_length=1, pattern=r"^[a-z0-9_]+$", description="first segment of every key")
    cluster: bool = Field(False, description="redis_url names a node of a Redis Cluster (RedisCluster client)")
    grace_seconds: int = Field(
        3600, ge=0, description="a superseded version's keys expire this long after the switch (open cursors, readers)"
    )
    pipeline_keys: int = Field(
        64, ge=1, description="keys per pipeline round trip when publishing; bounds how long a shard stalls reads"
    )
    writers: int = Field(0, ge=0, description="parallel writer processes of an in-memory publish; 0 = the CPU count")
    hex_scores: bool = Field(
        True,
        description="send float scores as exact hex literals (float.hex: a third of repr's client CPU) when the server "
        "accepts them (checked once per publisher); false: shortest decimal repr",
    )
    timeline_cap: int = Field(800, ge=1, description="entries per timeline; a longer one is refused (fanout's cap)")
    timeline_encoding: Literal["skiplist", "listpack"] = Field(
        "skiplist",
        description="the encoding of a full timeline, checked against the server's zset-max-listpack-entries: "
        "skiplist = 4x the memory of listpack, 1/7 of its write CPU and 1/6 of its deep-page read CPU (bench/publish)",
    )
    verify_sample: int = Field(100, ge=0, description="keys per family whose whole content is compared with the source")
    pull_window_hours: float = Field(24.0, gt=0, description="a pull-mode author's posts this recent are merged")
    posts_per_pull_author: int = Field(5, ge=1, description="at most this many recent posts per pull-mode author")
    page_max: int = Field(100, ge=1, description="the largest page the feed and explore readers serve")


class S3Settings(_Strict):
    """The object store of an ``s3a://`` lake (``lake_uri``), through Hadoop's S3A connector.

    Credentials are not settings: Spark copies ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (and
    ``AWS_SESSION_TOKEN``) from the driver's environment into ``fs.s3a.*``; without them S3A's default chain (instance
    profile, ...) applies.
    """

    endpoint_url: str | None = Field(
        None, description="an S3-compatible store, e.g. http://minio:9000; default AWS's endpoint for the region"
    )
    region: str | None = Field(None, min_length=1, description="the signing region (fs.s3a.endpoint.region)")
    path_style_access: bool = Field(
        False, description="the bucket in the URL path, not in the host name (MinIO and most S3-compatible stores)"
    )

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not re.fullmatch(r"https?://[^/\s]+/?", v):
            raise ValueError("expected http(s)://host[:port]")
        return v.rstrip("/")


class MlflowSettings(_Strict):
    """Where runs are tracked; default a SQLite store and artifact folder under the state folder."""

    tracking_uri: str | None = Field(
        None, description="e.g. http://mlflow:5000; default sqlite:///<state>/mlflow/mlflow.db"
    )


class DarkroomSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DARKROOM_", env_nested_delimiter="__", extra="forbid", frozen=True, validate_default=True
    )

    profile: Literal["local"] = "local"
    state_dir: Path = Path(".darkroom")
    # Where set-up resolved the Delta jars; default <state_dir>/jars. Tests point many state dirs at one set.
    jars_path: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Where the lake lives; default <state_dir>/lake. With s3a://, some tables stay local (darkroom.tables.LOCAL_ONLY).
    lake_uri: str | None = None
    s3: S3Settings = S3Settings()
    spark: SparkSettings = SparkSettings()
    world: WorldSettings = WorldSettings()
    ingest: IngestSettings = IngestSettings()
    dbt: DbtSettings = DbtSettings()
    airflow: AirflowSettings = AirflowSettings()
    blob: BlobSettings = BlobSettings()
    tiering: TieringSettings = TieringSettings()
    fanout: FanoutSettings = FanoutSettings()
    mlflow: MlflowSettings = MlflowSettings()
    feature_store: FeatureStoreSettings = FeatureStoreSettings()
    ranker: RankerSettings = RankerSettings()
    two_tower: TwoTowerSettings = TwoTowerSettings()
    serving: ServingSettings = ServingSettings()
    precompute: PrecomputeSettings = PrecomputeSettings()

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return (v if v.is_absolute() else PROJECT_ROOT / v).resolve()

    @field_validator("lake_uri")
    @classmethod
    def _lake_uri(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if v.startswith(S3A_SCHEME):
            bucket, _, prefix = v.removeprefix(S3A_SCHEME).partition("/")
            if not _BUCKET.fullmatch(bucket):
                raise ValueError(f"expected s3a://bucket[/prefix], and {bucket!r} is not a valid S3 bucket name")
            prefix = prefix.strip("/")
            return f"{S3A_SCHEME}{bucket}/{prefix}" if prefix else f"{S3A_SCHEME}{bucket}"
        if "://" in v:
            raise ValueError(
                "expected s3a://bucket[/prefix] or an absolute local path; no other scheme (Spark reaches S3 through "
                "Hadoop's S3A connector: s3a://, not s3://)"
            )
        if not Path(v).is_absolute():
            raise ValueError("expected s3a://bucket[/prefix] or an absolute local path, not a relative path")
        return str(Path(v).resolve())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    # Every path darkroom writes is derived here, once.
    @property
    def lake_on_object_store(self) -> bool:
        """True when ``lake_uri`` is an ``s3a://`` URI."""
        return self.lake_uri is not None and self.lake_uri.startswith(S3A_SCHEME)

    @property
    def lake_dir(self) -> Path:
        """The lake's local folder: ``lake_uri`` when it is a path, else ``<state_dir>/lake`` (with an ``s3a://`` lake,
        what stays local: the tables in ``darkroom.tables.LOCAL_ONLY``)."""
        if self.lake_uri is not None and not self.lake_on_object_store:
            return Path(self.lake_uri)
        return self.state_dir / "lake"

    @property
    def landing_dir(self) -> Path:
        return self.state_dir / "landing"

    @property
    def jars_dir(self) -> Path:
        return self.jars_path or self.state_dir / "jars"

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def dbt_dir(self) -> Path:
        """dbt's target (manifest, run results, docs), logs and the Hive metastore of its catalog."""
        return self.state_dir / "dbt"

    @property
    def blob_root(self) -> Path:
        return self.blob.root or self.state_dir / "blobs"

    @property
    def mlflow_dir(self) -> Path:
        """The default MLflow store: mlflow.db (runs, registry) and artifacts/."""
        return self.state_dir / "mlflow"

    @property
    def spark_local_dir(self) -> Path:
        return self.state_dir / "spark"


class _YamlSource(PydanticBaseSettingsSource):
    """The embedded profile overlaid with the YAML file named by DARKROOM_CONFIG (if any)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data = _read_yaml(PROFILES_DIR / "local.yml")
        path = os.environ.get(CONFIG_ENV)
        if path:
            data = _deep_merge(data, _read_yaml(Path(path)))
        return data


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise SettingsError(f"settings file {path} does not exist") from e
    except yaml.YAMLError as e:
        raise SettingsError(f"settings file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(config: Path | None = None, **overrides: Any) -> DarkroomSettings:
    """Load and validate settings; raise SettingsError naming every bad key.

    ``config`` is read for this call only (the process's ``DARKROOM_CONFIG`` is put back afterwards), so one call
    with a YAML file does not change what every later ``load_settings()`` in the process returns.
    """
    before = os.environ.get(CONFIG_ENV)
    if config is not None:
        os.environ[CONFIG_ENV] = str(config)
    try:
        return DarkroomSettings(**overrides)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] != "extra_forbidden" else "")
            for err in e.errors()
        )
        raise SettingsError(f"invalid darkroom settings: {problems}") from None
    finally:
        if config is not None:
            if before is None:
                os.environ.pop(CONFIG_ENV, None)
            else:
                os.environ[CONFIG_ENV] = before
