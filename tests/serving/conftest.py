"""Small serving batches written out by hand, the settings that point the publisher at the test's Redis, helpers
to publish and read them, and a real Redis Cluster (3 primaries) for the cluster tests.

Every batch is built inline by :func:`frames` from a few dicts, so each test's expectation can be worked out from its
own text. Times are instants of the world (``END`` is the first batch's end, 2026-11-01 00:00 UTC).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
import redis

from darkroom.settings import load_settings
from serving.keys import batch_id_of
from serving.publisher import RedisPublisher
from serving.readers import ExploreReader, FeedReader, ReaderConfig, StoryRingReader
from serving.sources import MemoryBatch

END = datetime(2026, 11, 1, tzinfo=UTC)
BATCH = "20261101T0000Z"
DIM = 4


def batch(minutes: int) -> str:
    """The batch id ``minutes`` after END."""
    return batch_id_of(END + timedelta(minutes=minutes))


def hours_before(batch_id: str, hours: float) -> datetime:
    return datetime.strptime(batch_id, "%Y%m%dT%H%MZ").replace(tzinfo=UTC) - timedelta(hours=hours)


def frames(
    batch_id: str = BATCH,
    *,
    timelines: dict[int, list[tuple[int, float]]] | None = None,
    pull: dict[int, list[int]] | None = None,
    celebrity: dict[int, list[tuple[int, float]]] | None = None,
    base_scores: dict[int, float] | None = None,
    authors: dict[int, int] | None = None,
    rings: dict[int, list[tuple[int, float, bool, float]]] | None = None,
    explore: dict[int, list[tuple[int, float]]] | None = None,
    user_vectors: dict[int, list[float]] | None = None,
    item_vectors: dict[int, list[float]] | None = None,
    threshold: int | None = 5000,
) -> dict[str, pd.DataFrame]:
    """The serving tables of one batch, shaped like their DDL.

    timelines: user -> [(post, score)]; pull: user -> [author]; celebrity: author -> [(post, hours before the batch
    end)]; base_scores: post -> base score (default 0.0); authors: post -> author (default post // 100);
    rings: viewer -> [(author, score, unseen, hours after the batch end it expires)]; explore: user -> [(post, score)].
    post_meta gets a row for every post another family names.
    """
    timelines, pull, celebrity = timelines or {}, pull or {}, celebrity or {}
    base_scores, authors, rings, explore = base_scores or {}, authors or {}, rings or {}, explore or {}
    end = hours_before(batch_id, 0)
    author_of = lambda p: authors.get(p, p // 100)  # noqa: E731
    out: dict[str, pd.DataFrame] = {}
    out["feed_timelines"] = pd.DataFrame(
        [
            (batch_id, u, p, float(s), rank, author_of(p), end - timedelta(hours=1))
            for u, entries in timelines.items()
            for rank, (p, s) in enumerate(entries, 1)
        ],
        columns=["batch_id", "user_id", "post_id", "score", "rank", "author_id", "created_at"],
    )
    out["celebrity_posts"] = pd.DataFrame(
        [(batch_id, a, p, end - timedelta(hours=h)) for a, posts in celebrity.items() for p, h in posts],
        columns=["batch_id", "author_id", "post_id", "created_at"],
    )
    out["pull_authors"] = pd.DataFrame(
        [(batch_id, u, a) for u, authors_ in pull.items() for a in authors_],
        columns=["batch_id", "user_id", "author_id"],
    )
    created = {p: end - timedelta(hours=h) for posts in celebrity.values() for p, h in posts}
    posts = sorted(
        {p for e in timelines.values() for p, _ in e}
        | set(created)
        | {p for e in explore.values() for p, _ in e}
        | set(base_scores)
    )
    out["post_meta"] = pd.DataFrame(
        [
            (
                batch_id,
                p,
                author_of(p),
                created.get(p, end - timedelta(hours=1)),
                f"post {p}",
                1,
                p % 7,
                p % 3,
                float(base_scores.get(p, 0.0)),
            )
            for p in posts
        ],
        columns=[
            "batch_id",
            "post_id",
            "author_id",
            "created_at",
            "caption",
            "media_count",
            "like_count",
            "comment_count",
            "base_score",
        ],
    )
    out["fanout_config"] = pd.DataFrame(
        [(batch_id, "policy-" + batch_id, "hybrid", threshold, end)],
        columns=["batch_id", "policy_version", "policy", "threshold", "computed_at"],
    )
    out["story_rings"] = pd.DataFrame(
        [
            (batch_id, v, a, float(s), bool(unseen), end + timedelta(hours=h))
            for v, ring in rings.items()
            for a, s, unseen, h in ring
        ],
        columns=["batch_id", "viewer_id", "author_id", "score", "unseen", "expires_at"],
    )
    out["explore_candidates"] = pd.DataFrame(
        [
            (batch_id, u, p, float(s), rank, 0.5, "tt-1")
            for u, entries in explore.items()
            for rank, (p, s) in enumerate(entries, 1)
        ],
        columns=["batch_id", "user_id", "post_id", "score", "rank", "retrieval_score", "model_version"],
    )
    out["user_embeddings"] = pd.DataFrame(
        [(batch_id, u, "tt-1", list(v)) for u, v in (user_vectors or {}).items()],
        columns=["batch_id", "user_id", "model_version", "embedding"],
    )
    out["item_embeddings"] = pd.DataFrame(
        [(batch_id, p, "tt-1", list(v)) for p, v in (item_vectors or {}).items()],
        columns=["batch_id", "post_id", "model_version", "embedding"],
    )
    return out


def serving_settings(state_dir, redis_url: str, **serving: Any):
    return load_settings(
        state_dir=state_dir,
        redis_url=redis_url,
        serving=serving,
        two_tower={"output_dim": DIM},
    )


@pytest.fixture
def sv_settings(tmp_path, redis_url):
    return serving_settings(tmp_path / "state", redis_url)


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A real Redis Cluster for a test module: 3 primaries, no replicas, loopback, persistence off."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli not found on PATH: the test cluster is created with `redis-cli --cluster create`")
    from darkroom.redis_server import LocalRedisCluster

    with LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster) -> str:
    """The cluster's URL (its first node), every node emptied (FLUSHALL) so each test starts from no keys."""
    for node in redis_cluster.nodes:
        c = redis.Redis.from_url(node.url)
        try:
            c.flushall()
        finally:
            c.close()
    return redis_cluster.url


@pytest.fixture
def node_clients(redis_cluster):
    """One plain client per cluster node, for checks that must see every node (SCAN, PTTL, CLUSTER KEYSLOT)."""
    clients = [redis.Redis.from_url(node.url) for node in redis_cluster.nodes]
    yield clients
    for c in clients:
        c.close()


def publish(settings, batch_id: str, batch_frames: dict[str, pd.DataFrame], group: str = "feed", **kw):
    """Publish one group of an in-memory batch from this process (one writer)."""
    partition_records = kw.pop("partition_records", None)
    source = MemoryBatch(batch_id, batch_frames, writers=kw.pop("writers", 1), partition_records=partition_records)
    try:
        with RedisPublisher.from_settings(settings) as publisher:
            return publisher.publish(source, group, **kw)
    finally:
        source.close()


def readers(client, settings):
    cfg = ReaderConfig.from_settings(settings.serving)
    return FeedReader(client, cfg), StoryRingReader(client, cfg), ExploreReader(client, cfg)


def whole_feed(feed: FeedReader, user_id: int, limit: int = 2) -> tuple[list[int], set[str]]:
    """Every post of the user's feed, page by page; and the versions the pages came from."""
    posts, versions, cursor = [], set(), None
    while True:
        page = feed.get_feed(user_id, cursor=cursor, limit=limit)
        posts += [p.post_id for p in page.posts]
        versions.add(page.version)
        if not page.has_more:
            return posts, versions
        cursor = page.next_cursor
