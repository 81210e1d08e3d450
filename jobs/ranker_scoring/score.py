"""``ranker_scoring``: candidates scored by a registered ranker in Spark, with point-in-time features as of ``as_of``.

    scored = score_candidates(spark, settings, candidates, as_of=as_of, surface="feed")

``candidates`` has one row per (``user_id``, ``post_id``, ``author_id``): ``user_id`` is the viewer the post would
be shown to (it is the feature store's and the model's ``viewer_id``). Any other column is passed through. The
result is every candidate column, then ``p_<head>`` for the seven heads, ``value_score`` and ``ranker_version``.

1. The model: ``model_uri`` (default ``models:/<ranker.registered_model>@champion``) is resolved to one registered
   version on the driver, once (``resolve_model``), and the versioned URI goes to the workers: every partition
   scores with the same model even if the alias moves mid-job. No champion: ``NoChampionError`` naming the
   registered model and the tracking URI.
2. The features: the ranker's feature service (``ranker.feature_service``) joined point in time as of ``as_of``
   (the feature store's ``historical_features``, with the window [as_of, as_of] so only snapshots that can serve
   as_of are sorted), plus the request context the model reads: ``surface`` and ``position`` 0 (unplaced).
3. The scores: ``mapInPandas``; each Python worker loads the model once (cache keyed by tracking URI and model URI;
   the tracking URI is handed to the workers) and scores its rows in batches with ``RankerScorer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from darkroom.tables import utc
from darkroom.tracking import tracking_uri
from ml.ranker.features import HEADS

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from darkroom.settings import DarkroomSettings
    from ml.ranker.inference import RankerScorer

APP_NAME = "ranker_scoring"
CANDIDATE_COLUMNS = ("user_id", "post_id", "author_id")
HEAD_COLUMNS = tuple(f"p_{h}" for h in HEADS)
VALUE_COLUMN = "value_score"
VERSION_COLUMN = "ranker_version"
SURFACES = ("feed", "explore")
# Columns scoring adds for the model; a candidate frame must not bring its own.
VIEWER_COLUMN, TS_COLUMN, SURFACE_COLUMN, POSITION_COLUMN = "viewer_id", "features_as_of", "surface", "position"
UNPLACED_POSITION = 0

_SCORERS: dict[tuple[str, str], RankerScorer] = {}  # (tracking uri, versioned model uri) -> scorer, per worker


class RankerModelError(LookupError):
    """The model to score with cannot be found; the message names the registered model and the tracking URI."""


class NoChampionError(RankerModelError):
    """The registered ranker has no ``@champion`` version."""


@dataclass(frozen=True)
class ResolvedModel:
    """One concrete model: ``uri`` never names an alias (``models:/<name>/<version>``, or a ``runs:/`` URI)."""

    uri: str
    version: str
    name: str | None
    tracking_uri: str


def resolve_model(settings: DarkroomSettings, model_uri: str | None = None) -> ResolvedModel:
    """``models:/<name>@<alias>`` (default: the ranker's ``@champion``) -> that alias's version now;
    ``models:/<name>/<version>`` is checked to exist; any other URI (``runs:/…``) is used as given."""
    from mlflow.exceptions import MlflowException

    from ml import registry as R

    tracking = tracking_uri(settings)
    uri = model_uri or f"models:/{settings.ranker.registered_model}@{R.CHAMPION}"
    if not uri.startswith("models:/"):
        return ResolvedModel(uri=uri, version=uri, name=None, tracking_uri=tracking)
    ref = uri.removeprefix("models:/")
    c = R.client(tracking)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = R.alias_version(c, name, alias)
        if version is None:
            cls = NoChampionError if alias == R.CHAMPION else RankerModelError
            raise cls(
                f"registered model {name!r} has no @{alias} version in the MLflow registry at {tracking}: "
                "train and promote one first (`darkroom ranker retrain`)"
            )
    else:
        name, _, version = ref.partition("/")
        try:
            c.get_model_version(name, version)
        except MlflowException:
            raise RankerModelError(
                f"registered model {name!r} has no version {version!r} in the MLflow registry at {tracking}"
            ) from None
    return ResolvedModel(uri=f"models:/{name}/{version}", version=str(version), name=name, tracking_uri=tracking)


def scoring_rows(candidates: DataFrame, *, as_of: datetime, surface: str) -> DataFrame:
    """The entity frame the features are joined to: every candidate column, then ``viewer_id`` (= user_id), the
    instant the features are taken at, and the request context (``surface``; ``position`` 0, not yet placed)."""
    from pyspark.sql import functions as F

    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(
            f"candidates lack {', '.join(missing)}: need {', '.join(CANDIDATE_COLUMNS)} (user_id is the viewer), "
            f"got {', '.join(candidates.columns)}"
        )
    reserved = {VIEWER_COLUMN, TS_COLUMN, SURFACE_COLUMN, POSITION_COLUMN, *HEAD_COLUMNS, VALUE_COLUMN, VERSION_COLUMN}
    clash = sorted(reserved & set(candidates.columns))
    if clash:
        raise ValueError(f"candidates must not carry {', '.join(clash)}: scoring adds them")
    if surface not in SURFACES:
        raise ValueError(f"surface must be one of {', '.join(SURFACES)}, got {surface!r}")
    return candidates.select(
        *[F.col(c) for c in candidates.columns],
        F.col("user_id").cast("bigint").alias(VIEWER_COLUMN),
        F.lit(utc(as_of)).cast("timestamp").alias(TS_COLUMN),
        F.lit(surface).alias(SURFACE_COLUMN),
        F.lit(UNPLACED_POSITION).cast("int").alias(POSITION_COLUMN),
    )


def _scorer(tracking: str, model_uri: str) -> RankerScorer:
    key = (tracking, model_uri)
    if key not in _SCORERS:
        import mlflow

        from ml.ranker.inference import load_registered

        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(tracking)
        _SCORERS[key] = load_registered(model_uri)
    return _SCORERS[key]


def score_partition(model: ResolvedModel, passthrough: list[str], input_schema_json: str, timezone: str = "UTC"):
    """The ``mapInPandas`` function: candidate and feature columns in; the ``passthrough`` columns, the head
    probabilities, ``value_score`` and ``ranker_version`` out. The rows go to the scorer as Arrow with the Spark
    input's exact types (so a batch where a feature is all null keeps its type; ``timezone`` is the session's)."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pyarrow as pa
        from pyspark.sql.pandas.types import to_arrow_schema
        from pyspark.sql.types import StructType

        schema = to_arrow_schema(StructType.fromJson(json.loads(input_schema_json)), timezone=timezone)
        scorer = _scorer(model.tracking_uri, model.uri)
        for frame in frames:
            if frame.empty:
                continue
            scores = scorer.predict_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            out = frame[passthrough].copy()
            for head, column in zip(HEADS, HEAD_COLUMNS, strict=True):
                out[column] = scores[head]
            out[VALUE_COLUMN] = scores["value"]
            out[VERSION_COLUMN] = model.version
            yield out

    return run


def score_candidates(
    spark: SparkSession,
    settings: DarkroomSettings,
    candidates: DataFrame,
    *,
    as_of: datetime,
    surface: str,
    model_uri: str | None = None,
) -> DataFrame:
    """``candidates`` (user_id, post_id, author_id, any other columns) scored as of ``as_of`` on ``surface``
    (``feed`` or ``explore``) by ``model_uri`` (default the ranker's ``@champion``, resolved to its version now).

    Returns the candidate columns, ``p_<head>`` (seven heads), ``value_score`` and ``ranker_version`` (lazy: nothing
    runs until the result is used; the model is resolved here, on the driver)."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    from feature_store import transform as FT
    from feature_store.definitions import get_service
    from feature_store.offline import default_ttl
    from feature_store.sources import read_source

    as_of = utc(as_of)
    model = resolve_model(settings, model_uri)
    rows = scoring_rows(candidates, as_of=as_of, surface=surface)
    service = get_service(settings.ranker.feature_service)
    sources = {v.name: read_source(spark, settings, v) for v in service.views}
    # Every row is at as_of: snapshots known after it, or too old for any view's TTL at it, are pruned before the
    # point-in-time join's sort (the window is [as_of, as_of + 1 us)).
    featured = FT.historical_features(
        rows,
        sources,
        service.views,
        timestamp_column=TS_COLUMN,
        default_ttl=default_ttl(settings),
        window=(as_of, as_of + timedelta(microseconds=1)),
    ).drop(TS_COLUMN)
    passthrough = list(candidates.columns)
    out_schema = StructType(
        [
            *[candidates.schema[c] for c in passthrough],
            *[StructField(c, DoubleType(), False) for c in (*HEAD_COLUMNS, VALUE_COLUMN)],
            StructField(VERSION_COLUMN, StringType(), False),
        ]
    )
    timezone = spark.conf.get("spark.sql.session.timeZone") or "UTC"
    scored = featured.mapInPandas(score_partition(model, passthrough, featured.schema.json(), timezone), out_schema)
    return scored.select(*passthrough, *HEAD_COLUMNS, VALUE_COLUMN, VERSION_COLUMN)
