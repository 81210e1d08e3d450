"""Atomicity: a reader hammering the feed during many publishes never sees a mixed or partial version; Redis killed
(SIGKILL) at points of a publish, then restarted from its append-only file: the previous version is current and
whole, and the re-run completes."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import redis

from darkroom.redis_server import LocalRedisServer
from serving.errors import NotPublishedError, ServingPublishError
from serving.keys import batch_end
from serving.publisher import PublishHooks
from serving.readers import FeedReader, ReaderConfig
from tests.serving.conftest import END, batch, frames, publish, serving_settings, whole_feed

USERS = (1, 2, 3)


def batch_frames(k: int):
    """Batch k: each user's timeline has 3 + k % 5 posts, user 1 also merges 2 posts of pull-mode author 9; every
    post id is k * 1000 + something, so a post of another batch is recognised."""
    n = 3 + k % 5
    timelines = {u: [(k * 1000 + u * 100 + j, float(n - j)) for j in range(n)] for u in USERS}
    celebrity = {9: [(k * 1000 + 900 + j, 1 + j) for j in range(2)]}
    return frames(
        batch(k),
        timelines=timelines,
        pull={1: [9]},
        celebrity=celebrity,
        base_scores={p: 0.5 for p, _ in celebrity[9]},
        authors={k * 1000 + 900 + j: 9 for j in range(2)},
    )


def expected_feed(k: int, user: int) -> list[int]:
    n = 3 + k % 5
    timeline = [k * 1000 + user * 100 + j for j in range(n)]
    if user != 1:
        return timeline
    scores = {p: float(n - j) for j, p in enumerate(timeline)} | {k * 1000 + 900: 0.5, k * 1000 + 901: 0.5}
    return sorted(scores, key=lambda p: (scores[p], p), reverse=True)


def k_of(version: str) -> int:
    return int((batch_end(version[:14]) - END) / timedelta(minutes=1))


def test_readers_never_see_a_mixed_or_partial_version(tmp_path, redis_url):
    # One key per pipeline and one record per partition: the publish is as many round trips as keys, and the
    # reader's reads fall between them.
    settings = serving_settings(tmp_path, redis_url, pipeline_keys=1)
    publishes = 40
    done = threading.Event()
    seen: dict[str, int] = {}
    problems: list[str] = []

    def hammer() -> None:
        client = redis.Redis.from_url(redis_url)
        feed = FeedReader(client, ReaderConfig.from_settings(settings.serving))
        try:
            while not done.is_set():
                for user in USERS:
                    try:
                        posts, versions = whole_feed(feed, user, limit=2)
                    except NotPublishedError:
                        continue
                    (version,) = versions
                    seen[version] = seen.get(version, 0) + 1
                    if posts != expected_feed(k_of(version), user):
                        problems.append(f"user {user} in {version}: {posts}")
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            problems.append(repr(e))
        finally:
            client.close()

    reader = threading.Thread(target=hammer)
    reader.start()
    try:
        for k in range(1, publishes + 1):
            assert publish(settings, batch(k), batch_frames(k), partition_records=1).state == "current"
    finally:
        done.set()
        reader.join()
    assert problems == []
    assert sum(seen.values()) > publishes and len(seen) > publishes // 4, seen


def _aof_server(tmp_path) -> LocalRedisServer:
    return LocalRedisServer(tmp_path / "redis", extra_args=("--appendonly", "yes", "--appendfsync", "always"))


@pytest.mark.parametrize("point", ["mid_write", "before_switch", "after_switch"])
def test_redis_killed_during_a_publish(tmp_path, point):
    server = _aof_server(tmp_path).start()
    try:
        v1 = publish(serving_settings(tmp_path, server.url), batch(1), batch_frames(1)).version
        partitions: list[str] = []

        def after_partition(family: str, part: int) -> None:
            partitions.append(family)
            if point == "mid_write" and len(partitions) == 2:  # the second of three timelines is written
                server.kill()

        hooks = PublishHooks(
            after_partition=after_partition,
            before_switch=lambda v: server.kill() if point == "before_switch" else None,
            after_switch=lambda v: server.kill() if point == "after_switch" else None,
        )
        settings = serving_settings(tmp_path, server.url)
        if point == "after_switch":
            cut = publish(settings, batch(2), batch_frames(2), hooks=hooks, partition_records=1)
            assert cut.state == "current" and "expiry of old versions cut short" in cut.warnings[0]
        else:
            with pytest.raises(ServingPublishError, match=f"the current version stays {v1}; a re-run restarts"):
                publish(settings, batch(2), batch_frames(2), hooks=hooks, partition_records=1)
        assert partitions[:2] == ["feed_timelines", "feed_timelines"]

        server.start()  # a new port, the same directory: the append-only file is loaded
        settings = serving_settings(tmp_path, server.url)
        client = redis.Redis.from_url(server.url)
        feed = FeedReader(client, ReaderConfig())
        v2 = f"{batch(2)}.2"
        state = {"mid_write": b"writing", "before_switch": b"verified", "after_switch": b"current"}[point]
        assert client.hget(f"sv:{{feed}}:manifest:{v2}", "state") == state
        current_k = 2 if point == "after_switch" else 1
        for user in USERS:
            assert whole_feed(feed, user) == (expected_feed(current_k, user), {v2 if current_k == 2 else v1})

        rerun = publish(settings, batch(2), batch_frames(2))
        if point == "after_switch":
            assert (rerun.state, rerun.version, rerun.expired) == ("already_current", v2, [v1])
        else:
            assert (rerun.state, rerun.version) == ("current", f"{batch(2)}.3")
            assert (rerun.expired, rerun.removed) == ([v1], [v2])
            assert list(client.scan_iter(match=f"sv:feed:{v2}:*")) == []
        for user in USERS:
            assert whole_feed(feed, user)[0] == expected_feed(2, user)
        client.close()
    finally:
        server.stop()
