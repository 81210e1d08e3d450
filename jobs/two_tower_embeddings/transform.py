"""Pure steps of the embedding job: which users get embeddings, and the batch id of a run."""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from darkroom.tables import batch_id  # noqa: F401  (re-exported: the batch of a run)


def active_users(feed_reads: DataFrame, *, as_of: datetime, days: int) -> DataFrame:
    """Users with a feed read in [as_of - days, as_of): user_id, one row each."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    since = as_of - timedelta(days=days)
    return feed_reads.where((F.col("ts") >= F.lit(since)) & (F.col("ts") < F.lit(as_of))).select("user_id").distinct()
