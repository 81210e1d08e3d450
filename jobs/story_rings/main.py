"""``story_rings``: ``serving.story_rings`` for one batch (the run's data-interval end ``as_of``).

    python -m jobs.story_rings.main --as-of 2026-11-01T00:00:00

Reads ``marts.fct_story_ring_signals`` (refused unless it is as of exactly ``as_of``: one row per viewer and
followed author with a story created in (as_of - 24 h, as_of), with the unseen count and the 7-day engagement),
scores each ring (``transform.ring_scores``: unseen first, then engagement, weights ``precompute.ring_weights``)
and replaces the batch (``replaceWhere batch_id = …``): a re-run leaves the same rows. From the command line (the
``feed_publish`` DAG spark-submits it), a missing or stale input exits 2 with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from darkroom import lake
from darkroom.settings import DarkroomSettings, load_settings
from darkroom.tables import table
from jobs.feed_precompute.transform import batch_id, utc
from jobs.story_rings import transform as T

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

APP_NAME = "story_rings"
SIGNALS = table("marts.fct_story_ring_signals")
STORY_RINGS = table("serving.story_rings")


@dataclass(frozen=True)
class StoryRingsInfo:
    batch_id: str
    viewers: int
    rings: int
    unseen: int
    seconds: float

    def line(self) -> str:
        return (
            f"story rings {self.batch_id}: {self.rings:,} rings ({self.unseen:,} unseen) for {self.viewers:,} viewers "
            f"in {self.seconds:.0f}s"
        )


def build_rings(
    settings: DarkroomSettings, as_of: datetime, spark: SparkSession | None = None, *, progress=print
) -> StoryRingsInfo:
    """Write the batch of ``as_of`` to ``serving.story_rings``; idempotent per batch."""
    from pyspark.sql import functions as F

    from darkroom.spark import get_spark

    started = time.perf_counter()
    as_of = utc(as_of)
    batch = batch_id(as_of)
    spark = spark or get_spark(settings, APP_NAME)
    signals = lake.read_as_of(spark, SIGNALS, settings, as_of, purpose="the story rings")
    rings = T.ring_scores(signals, weights=settings.precompute.ring_weights).withColumn("batch_id", F.lit(batch))
    lake.replace_where(spark, STORY_RINGS, settings, rings, f"batch_id = '{batch}'")
    row = (
        lake.read(spark, STORY_RINGS, settings)
        .where(F.col("batch_id") == batch)
        .agg(F.count("*"), F.count_distinct("viewer_id"), F.count_if("unseen"))
        .first()
    )
    info = StoryRingsInfo(batch, int(row[1]), int(row[0]), int(row[2]), time.perf_counter() - started)
    progress(info.line())
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.story_rings.main", description=__doc__)
    parser.add_argument("--as-of", required=True, type=datetime.fromisoformat, help="the batch's instant (UTC)")
    args = parser.parse_args(argv)
    try:
        build_rings(load_settings(), args.as_of)
    except (lake.StaleTableError, FileNotFoundError) as e:
        print(f"story_rings: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
