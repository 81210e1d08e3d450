"""The publisher, readers and HTTP API against a real Redis Cluster (3 primaries, ``serving.cluster``): every group
published and verified, the keys that must move together in one slot, a feed read equal to the same read on a single
server, a second batch expiring the old version on every node, a failed publish leaving the current version in
place, the API's 503 when no node answers, and a password-protected cluster reached from one URL.

Per-node checks go through plain clients of each node (``node_clients``), not through the cluster client under test.
"""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest
from redis.exceptions import RedisClusterException

from darkroom.redis_server import LocalRedisCluster, free_port
from serving.errors import ServingInputError
from serving.keys import KeySpace
from serving.publisher import KEY_TTL_MARGIN_MS, RedisPublisher, publish_frames
from serving.readers import FeedReader, ReaderConfig
from serving.writer import connect, connect_async
from tests.serving.conftest import BATCH, DIM, batch, frames, publish, readers, serving_settings, whole_feed

KEYS = KeySpace("sv")
USERS = range(1, 13)
TAG = re.compile(rb"\{([^}]*)\}")


def batch_frames(batch_id: str = BATCH, *, nan_user: int | None = None):
    """Users 1-12, each a timeline of 3 posts (u01-u03, scores 5, 4, 3); user 1 follows pull-mode authors 90 and 91,
    user 2 author 90. Author 90: post 9001 (1 h old, base 4.5) and 9002 (30 h: outside the 24 h window); author 91:
    post 9101 (2 h, base 0.5). Users 1-6 have a story ring of two authors and two Explore candidates and a vector;
    posts 101 and 9001 have item vectors. ``nan_user``'s last timeline score is NaN (a bad record)."""
    timelines = {u: [(u * 100 + j, float(6 - j)) for j in range(1, 4)] for u in USERS}
    if nan_user is not None:
        timelines[nan_user][-1] = (timelines[nan_user][-1][0], float("nan"))
    some = range(1, 7)
    return frames(
        batch_id,
        timelines=timelines,
        pull={1: [90, 91], 2: [90]},
        celebrity={90: [(9001, 1.0), (9002, 30.0)], 91: [(9101, 2.0)]},
        base_scores={9001: 4.5, 9002: 9.0, 9101: 0.5},
        authors={9001: 90, 9002: 90, 9101: 91},
        rings={u: [(50 + u, 1.0, True, 2.0), (60 + u, 0.5, False, 3.0)] for u in some},
        explore={u: [(u * 100 + 1, 0.9), (9001, 0.8)] for u in some},
        user_vectors={u: [0.25 * u] * DIM for u in some},
        item_vectors={101: [1.0] * DIM, 9001: [0.5] * DIM},
    )


# User 1's feed by hand: timeline 101 (5.0), 102 (4.0), 103 (3.0); pull 9001 (4.5), 9101 (0.5); 9002 is too old.
USER1_FEED = [(101, 5.0), (9001, 4.5), (102, 4.0), (103, 3.0), (9101, 0.5)]


def cluster_settings(tmp_path, url: str, **serving):
    return serving_settings(tmp_path / "cluster", url, cluster=True, **serving)


def keys_per_node(node_clients, pattern: str) -> list[list[bytes]]:
    return [sorted(c.scan_iter(match=pattern, count=1000)) for c in node_clients]


def version_keys(node_clients, group: str, version: str) -> list[list[bytes]]:
    return keys_per_node(node_clients, KEYS.data_pattern(group, version))


def test_every_group_is_published_and_verified_on_a_cluster(tmp_path, cluster_url, node_clients):
    settings = cluster_settings(tmp_path, cluster_url)
    batch_ = batch_frames()
    results = {r.group: r for r in publish_frames(settings, BATCH, batch_, writers=2)}
    assert sorted(results) == ["explore", "feed", "stories"]
    client = connect(cluster_url, cluster=True)
    try:
        for group, result in results.items():
            assert (result.version, result.previous, result.state) == (f"{BATCH}.1", None, "current")
            assert client.get(KEYS.pointer(group)) == result.version.encode()
            assert client.hget(KEYS.manifest(group, result.version), "state") == b"current"
            for family, expected in result.expected.items():
                assert expected["rows"] == len(batch_[family]), family
        verified = {f: (v["keys"], v["members"]) for r in results.values() for f, v in r.verified.items()}
        assert verified == {
            "feed_timelines": (12, 36),
            "celebrity_posts": (4, 5),  # posts of 90 (2) and 91 (1); merge candidates of 90 (9001) and 91 (9101)
            "pull_authors": (2, 3),
            "post_meta": (39, 39 * 7),  # 36 timeline posts and 3 celebrity posts, 7 fields each
            "fanout_config": (1, 4),
            "story_rings": (12, 24),  # a zset and a hash per viewer, two authors each
            "explore_candidates": (6, 12),
            "user_embeddings": (6, 6 * 4 * DIM),
            "item_embeddings": (2, 2 * 4 * DIM),
        }
        with RedisPublisher.from_settings(settings) as publisher:
            status = publisher.status()
        assert {g: s["current"] for g, s in status.items()} == {g: f"{BATCH}.1" for g in results}
        # The data really is spread: every node holds keys of every group's version.
        for group in results:
            assert all(keys for keys in version_keys(node_clients, group, f"{BATCH}.1")), group
        feed, stories, explore = readers(client, settings)
        assert [(p.post_id, p.score) for p in feed.get_feed(1).posts] == USER1_FEED
        assert [(e.author_id, e.has_unseen) for e in stories.get_ring(3).ring] == [(53, True), (63, False)]
        page = explore.get_explore(2)
        assert [(p.post_id, p.score, p.caption) for p in page.posts] == [
            (201, 0.9, "post 201"),
            (9001, 0.8, "post 9001"),
        ]
        assert explore.user_embedding(4).tolist() == [1.0] * DIM
        assert explore.item_embedding(9001).tolist() == [0.5] * DIM
    finally:
        client.close()


def test_keys_that_move_together_share_a_slot(tmp_path, cluster_url, node_clients):
    settings = cluster_settings(tmp_path, cluster_url)
    publish_frames(settings, BATCH, batch_frames(), writers=1)
    v = f"{BATCH}.1"
    ask = node_clients[0]
    slot = lambda key: ask.cluster("KEYSLOT", key)  # noqa: E731 - the server's own hash
    # Every data key with a hash tag is in its tag's slot, whichever family, group or version it belongs to.
    per_node = keys_per_node(node_clients, "sv:*")
    data = [k for keys in per_node for k in keys if not k.startswith(b"sv:{")]  # control keys are sv:{group}:...
    assert len(data) == (12 + 4 + 2 + 39 + 1) + 12 + (6 + 6 + 2)  # feed, stories, explore (as verified above)
    for key in data:
        if (m := TAG.search(key)) is not None:  # all but config:fanout
            assert slot(key) == slot(b"{" + m.group(1) + b"}"), key
    # One user's keys of all three groups: one slot, on one node.
    user1 = [
        KEYS.data("feed", v, "timeline:{1}"),
        KEYS.data("feed", v, "user:{1}:pull_authors"),
        KEYS.data("stories", v, "story_ring:{1}"),
        KEYS.data("stories", v, "story_ring:{1}:authors"),
        KEYS.data("explore", v, "explore:{1}"),
        KEYS.data("explore", v, "emb:user:{1}"),
    ]
    assert len({slot(k) for k in user1}) == 1
    held = [len({k.encode() for k in user1} & set(keys)) for keys in per_node]
    assert sorted(held) == [0, 0, len(user1)]
    # An author's posts and its merge candidates (derived from them).
    assert slot(KEYS.data("feed", v, "celebrity:{90}:posts")) == slot(KEYS.data("feed", v, "celebrity:{90}:recent"))
    # The switch script's keys: each group's control keys share the group's slot.
    for group in ("feed", "stories", "explore"):
        control = [KEYS.pointer(group), KEYS.manifest(group, v), KEYS.versions(group), KEYS.sequence(group)]
        assert len({slot(k) for k in control}) == 1, group
    # Different users are in different slots (the tags do spread the data).
    assert len({slot(KEYS.data("feed", v, f"timeline:{{{u}}}")) for u in USERS}) == len(USERS)


def test_a_feed_read_on_a_cluster_equals_the_single_server_read(tmp_path, cluster_url, sv_settings, client):
    settings = cluster_settings(tmp_path, cluster_url)
    for s in (settings, sv_settings):
        publish(s, BATCH, batch_frames())
    cluster = connect(cluster_url, cluster=True)
    try:
        on_cluster, _, _ = readers(cluster, settings)
        single, _, _ = readers(client, sv_settings)
        for user in (1, 2, 7):
            page = on_cluster.get_feed(user, limit=20)
            assert page == single.get_feed(user, limit=20)  # same version, posts, scores, metadata, order
            assert whole_feed(on_cluster, user, limit=2) == whole_feed(single, user, limit=2)
        assert [(p.post_id, p.score) for p in on_cluster.get_feed(1).posts] == USER1_FEED
        first = on_cluster.get_feed(1, limit=2)
        assert [p.post_id for p in on_cluster.get_feed(1, cursor=first.next_cursor, limit=3).posts] == [102, 103, 9101]
    finally:
        cluster.close()

    async def read_async():  # the API's path: redis.asyncio's cluster client
        aclient = connect_async(cluster_url, cluster=True)
        try:
            return await FeedReader(aclient, ReaderConfig.from_settings(settings.serving)).aget_feed(1, limit=20)
        finally:
            await aclient.aclose()

    assert asyncio.run(read_async()) == single.get_feed(1, limit=20)


def test_a_second_batch_moves_the_pointer_and_expires_the_old_version_on_every_node(
    tmp_path, cluster_url, node_clients
):
    settings = cluster_settings(tmp_path, cluster_url, grace_seconds=100)
    v1 = {r.group: r.version for r in publish_frames(settings, BATCH, batch_frames(), writers=1)}
    old = {g: version_keys(node_clients, g, v) for g, v in v1.items()}
    results = {r.group: r for r in publish_frames(settings, batch(60), batch_frames(batch(60)), writers=1)}
    grace_ms = 100_000
    for group, result in results.items():
        assert (result.previous, result.expired, result.removed) == (v1[group], [v1[group]], [])
        per_node = version_keys(node_clients, group, v1[group])
        assert per_node == old[group] and all(per_node), group  # still readable, on every node
        for c, keys in zip(node_clients, per_node, strict=True):  # a story ring's own TTL (3 h) is longer here
            ttls = [c.pttl(k) for k in keys]
            assert all(grace_ms < t <= grace_ms + KEY_TTL_MARGIN_MS for t in ttls), (group, ttls)
        new = version_keys(node_clients, group, result.version)
        ttls = [c.pttl(k) for c, keys in zip(node_clients, new, strict=True) for k in keys]
        assert all(new) and all(t == -1 if group != "stories" else t > 3_500_000 for t in ttls), (group, ttls)
    cluster = connect(cluster_url, cluster=True)
    try:
        for group, result in results.items():
            assert cluster.get(KEYS.pointer(group)) == f"{batch(60)}.2".encode() == result.version.encode()
            assert cluster.hget(KEYS.manifest(group, v1[group]), "state") == b"superseded"
            assert 0 < cluster.pttl(KEYS.manifest(group, v1[group])) <= grace_ms
        feed, _, _ = readers(cluster, settings)
        assert feed.get_feed(1).version == f"{batch(60)}.2"
    finally:
        cluster.close()


def test_a_failed_publish_leaves_the_previous_version_current_on_the_cluster(tmp_path, cluster_url, node_clients):
    settings = cluster_settings(tmp_path, cluster_url)
    good = publish(settings, BATCH, batch_frames())
    cluster = connect(cluster_url, cluster=True)
    try:
        feed, _, _ = readers(cluster, settings)
        before = [whole_feed(feed, u) for u in USERS]
        # User 12 is the last record: the partitions of users 1-11 are written (across the nodes) before it fails.
        with pytest.raises(ServingInputError, match=r"timeline:\{12\}: score of member 1203 is nan"):
            publish(settings, batch(60), batch_frames(batch(60), nan_user=12))
        failed = f"{batch(60)}.2"
        assert cluster.get(KEYS.pointer("feed")) == good.version.encode()
        assert cluster.hget(KEYS.manifest("feed", failed), "state") == b"failed"
        assert [whole_feed(feed, u) for u in USERS] == before
        assert sum(len(keys) for keys in version_keys(node_clients, "feed", failed)) >= 11
        # The next good publish deletes what the failed one wrote, on every node.
        after = publish(settings, batch(120), batch_frames(batch(120)))
        assert (after.previous, after.removed, after.expired) == (good.version, [failed], [good.version])
        assert version_keys(node_clients, "feed", failed) == [[], [], []]
        assert cluster.get(KEYS.pointer("feed")) == after.version.encode()
    finally:
        cluster.close()


def test_the_http_api_serves_from_a_cluster(tmp_path, cluster_url):
    from fastapi.testclient import TestClient

    from serving.api import create_app

    settings = cluster_settings(tmp_path, cluster_url)
    publish_frames(settings, BATCH, batch_frames(), writers=1)
    with TestClient(create_app(settings)) as http:  # the app's redis.asyncio cluster client
        versions = {g: f"{BATCH}.1" for g in ("feed", "stories", "explore")}
        assert http.get("/healthz").json() == {"status": "ok", "versions": versions}
        first = http.get("/api/v1/feed", params={"limit": 2}, headers={"X-User-Id": "1"}).json()
        rest = http.get("/api/v1/feed", params={"cursor": first["next_cursor"]}, headers={"X-User-Id": "1"}).json()
        posts = [(p["post_id"], p["score"]) for p in first["posts"] + rest["posts"]]
        assert posts == [(str(p), s) for p, s in USER1_FEED] and rest["has_more"] is False
        ring = http.get("/api/v1/stories/feed", headers={"X-User-Id": "4"}).json()["story_ring"]
        assert [e["user_id"] for e in ring] == ["54", "64"]
        assert http.get("/api/v1/feed", headers={"X-User-Id": "999"}).status_code == 404
    # No node reachable: the cluster client raises RedisClusterException (not a RedisError); still a 503, not a 500.
    down = cluster_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(down)) as http:
        for path in ("/healthz", "/api/v1/feed"):
            response = http.get(path, headers={"X-User-Id": "1"})
            assert response.status_code == 503 and "cannot be connected" in response.json()["detail"], path


def test_a_password_protected_cluster_from_one_url(tmp_path):
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli not found on PATH: the test cluster is created with `redis-cli --cluster create`")
    with LocalRedisCluster(tmp_path / "nodes", extra_args=("--requirepass", "s3cret")) as cluster:
        url = cluster.url.replace("redis://", "redis://:s3cret@")
        settings = cluster_settings(tmp_path, url)
        results = publish_frames(settings, BATCH, batch_frames(), writers=2)  # forked writers reach every node
        assert [r.state for r in results] == ["current"] * 3
        client = connect(url, cluster=True)
        try:
            feed, _, _ = readers(client, settings)
            assert [(p.post_id, p.score) for p in feed.get_feed(1).posts] == USER1_FEED
        finally:
            client.close()
        with pytest.raises(RedisClusterException, match="invalid username-password pair"):  # slots discovery
            connect(cluster.url.replace("redis://", "redis://:wrong@"), cluster=True)
