"""``two_tower_embeddings``: the champion two-tower's embeddings of the live posts and the active users.

    python -m jobs.two_tower_embeddings.main --as-of 2026-11-01T00:00:00

Resolves ``models:/<two_tower.registered_model>@champion`` to one version on the driver, then encodes in Spark
(``mapInPandas``; each Python worker loads that version once): every post created in the last
``two_tower.live_post_days`` (the item tower, features as of ``as_of``) into ``serving.item_embeddings``, and every
user with a feed read in the last ``two_tower.active_user_days`` (the user tower: their history and features as of
``as_of``) into ``serving.user_embeddings``. Both replace their batch (``batch_id`` = as_of as ``YYYYMMDDTHHMMZ``).
A NaN or a vector of the wrong length is refused by ``validate_embeddings`` with the table, row and id.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from darkroom import lake
from darkroom.settings import DarkroomSettings, load_settings
from darkroom.tables import table
from darkroom.tracking import tracking_uri
from jobs.two_tower_embeddings import transform as T
from jobs.two_tower_examples.main import item_inputs, user_inputs, utc

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

APP_NAME = "two_tower_embeddings"
USER_EMBEDDINGS = table("serving.user_embeddings")
ITEM_EMBEDDINGS = table("serving.item_embeddings")

_ENCODERS: dict[tuple[str, str], object] = {}  # (tracking uri, model uri) -> encoder, per Python worker


class NoChampionError(LookupError):
    """There is no ``@champion`` version of the registered model to run."""


def champion_version(settings: DarkroomSettings) -> str:
    from ml import registry as R

    name, uri = settings.two_tower.registered_model, tracking_uri(settings)
    version = R.alias_version(R.client(uri), name, R.CHAMPION)
    if version is None:
        raise NoChampionError(
            f"registered model {name!r} has no @champion version in {uri}: run `darkroom two-tower train` first"
        )
    return version


def _encoder(tracking: str, model_uri: str):
    key = (tracking, model_uri)
    if key not in _ENCODERS:
        import mlflow

        from ml.two_tower.pipeline import load_encoder

        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(tracking)
        _ENCODERS[key] = load_encoder(model_uri)
    return _ENCODERS[key]


def encode_partition(tower: str, id_column: str, tracking: str, model_uri: str, version: str, batch: str):
    """The ``mapInPandas`` function: tower inputs in, (batch_id, id, model_version, embedding) out."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd
        import pyarrow as pa

        from ml.two_tower.inference import validate_embeddings

        encoder = _encoder(tracking, model_uri)
        name = f"serving.{tower}_embeddings"
        for frame in frames:
            if frame.empty:
                continue
            data = pa.Table.from_pandas(frame, preserve_index=False)
            vecs = encoder.encode_users(data) if tower == "user" else encoder.encode_items(data)
            vecs = validate_embeddings(frame[id_column].to_numpy(), vecs, encoder.arch.output_dim, name)
            yield pd.DataFrame(
                {
                    "batch_id": batch,
                    id_column: frame[id_column].to_numpy(),
                    "model_version": version,
                    "embedding": list(vecs),
                }
            )

    return run


@dataclass(frozen=True)
class EmbeddingsInfo:
    batch_id: str
    model_version: str
    users: int
    items: int


def _write(spark, settings, t, frame: DataFrame, batch: str) -> int:
    lake.replace_where(spark, t, settings, frame, f"batch_id = '{batch}'")
    return lake.read(spark, t, settings).where(f"batch_id = '{batch}'").count()


def embed(
    spark: SparkSession, settings: DarkroomSettings, as_of: datetime, *, version: str | None = None
) -> EmbeddingsInfo:
    """Write both embedding tables of the batch of ``as_of`` with the champion (or ``version``)."""
    from feature_store.sources import read_table

    as_of = utc(as_of)
    version = version or champion_version(settings)
    batch = T.batch_id(as_of)
    model_uri = f"models:/{settings.two_tower.registered_model}/{version}"
    tracking = tracking_uri(settings)
    items = item_inputs(spark, settings, as_of)
    item_schema = "batch_id string, post_id bigint, model_version string, embedding array<float>"
    item_emb = items.mapInPandas(encode_partition("item", "post_id", tracking, model_uri, version, batch), item_schema)
    n_items = _write(spark, settings, ITEM_EMBEDDINGS, item_emb, batch)
    reads = read_table(spark, settings, "bronze.feed_reads", ["user_id", "ts"], purpose="active users")
    users = user_inputs(
        spark, settings, T.active_users(reads, as_of=as_of, days=settings.two_tower.active_user_days), as_of
    )
    user_schema = "batch_id string, user_id bigint, model_version string, embedding array<float>"
    user_emb = users.mapInPandas(encode_partition("user", "user_id", tracking, model_uri, version, batch), user_schema)
    n_users = _write(spark, settings, USER_EMBEDDINGS, user_emb, batch)
    return EmbeddingsInfo(batch_id=batch, model_version=version, users=n_users, items=n_items)


def embed_task(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``two_tower_weekly.embed`` (entry point, ``darkroom.spark_task``): the champion's embeddings of ``as_of``."""
    from dataclasses import asdict

    from darkroom.spark import get_spark

    return asdict(embed(get_spark(settings, "two_tower_embeddings"), settings, as_of))


def index_task(settings: DarkroomSettings, *, as_of: datetime) -> dict:
    """``two_tower_weekly.index`` (entry point, ``darkroom.spark_task``): the FAISS index of the embeddings."""
    from darkroom.spark import get_spark

    built = index_batch(get_spark(settings, "two_tower_index"), settings, as_of)
    return {"path": str(built.path), "spec": built.spec, "recall": built.recall, "run_id": built.run_id}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.two_tower_embeddings.main", description=__doc__)
    parser.add_argument("--as-of", required=True, type=datetime.fromisoformat, help="the batch's instant (UTC)")
    args = parser.parse_args(argv)
    from darkroom.spark import get_spark

    settings = load_settings()
    info = embed(get_spark(settings, APP_NAME), settings, args.as_of)
    print(
        f"batch {info.batch_id}: {info.items:,} item and {info.users:,} user embeddings (version {info.model_version})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def index_batch(spark: SparkSession, settings: DarkroomSettings, as_of: datetime, *, progress=print):
    """The FAISS index of the batch's item embeddings (``ml.two_tower.pipeline.build_index``): the model version's
    chosen setting, checked against exact search with the batch's user embeddings as queries."""
    import numpy as np

    from ml.two_tower.pipeline import build_index

    batch = T.batch_id(utc(as_of))
    items = lake.read(spark, ITEM_EMBEDDINGS, settings).where(f"batch_id = '{batch}'")
    versions = [r[0] for r in items.select("model_version").distinct().collect()]
    if len(versions) != 1:
        raise ValueError(
            f"{ITEM_EMBEDDINGS.qualified_name} batch {batch} has model versions {versions}; expected exactly one "
            "(run the embedding job for this batch first)"
        )
    data = items.select("post_id", "embedding").toArrow()
    queries = (
        lake.read(spark, USER_EMBEDDINGS, settings)
        .where(f"batch_id = '{batch}'")
        .orderBy("user_id")
        .limit(settings.two_tower.index_queries)
        .select("embedding")
        .toArrow()
    )
    dim = len(data.column("embedding")[0].as_py())
    vecs = np.asarray(data.column("embedding").combine_chunks().flatten().to_numpy(), dtype=np.float32)
    qv = np.asarray(queries.column("embedding").combine_chunks().flatten().to_numpy(), dtype=np.float32)
    return build_index(
        settings,
        model_version=versions[0],
        item_ids=np.asarray(data.column("post_id").to_numpy(), dtype=np.int64),
        item_vecs=vecs.reshape(-1, dim),
        query_vecs=qv.reshape(-1, dim),
        batch_id=batch,
        progress=progress,
    )
