"""The fan-out replay against a real redis-server: exact counts on hand-built days (push writes, pull merges, the
timeline cap, duplicate and self edges, on-demand readers, re-runs, time order) and the local server's life cycle."""

from __future__ import annotations

import socket

import numpy as np
import pyarrow as pa
import pytest
import redis

from darkroom import redis_server as rs
from jobs.fanout_threshold.replay import POST, READ, ReplayCounts, event_order, replay_day

pytestmark = pytest.mark.integration

PREFIX = "replay:test"
AUTHOR, CELEB = 100, 200  # a push author and a pull author in the tests below
DAY = 86_400_000


def table(names: tuple[str, ...], rows: tuple[tuple[int, ...], ...]) -> pa.Table:
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    return pa.table({n: pa.array(c, pa.int64()) for n, c in zip(names, cols, strict=True)})


def posts(*rows: tuple[int, int, int]) -> pa.Table:
    """(post_id, author_id, created_ms) rows."""
    return table(("post_id", "author_id", "created_ms"), rows)


def reads(*rows: tuple[int, int]) -> pa.Table:
    """(user_id, read_ms) rows."""
    return table(("user_id", "read_ms"), rows)


def edges(*pairs: tuple[int, int]) -> pa.Table:
    """(follower_id, followee_id) rows."""
    return table(("follower_id", "followee_id"), pairs)


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


# AUTHOR is followed by 1, 2 and 3; only 1 and 2 are active.
FOLLOWERS_OF_AUTHOR = edges((1, AUTHOR), (2, AUTHOR), (3, AUTHOR))
ACTIVE = ids(1, 2)


def replay(url: str, **kw) -> ReplayCounts:
    kw.setdefault("posts", posts())
    kw.setdefault("reads", reads())
    kw.setdefault("push_authors", ids())
    kw.setdefault("policy", "test")
    kw.setdefault("key_prefix", PREFIX)
    return replay_day(url, **kw)


def zrevrange(url: str, key: str) -> list[int]:
    client = redis.Redis.from_url(url)
    try:
        return [int(m) for m in client.zrevrange(key, 0, -1)]
    finally:
        client.close()


def test_push_posts_are_written_to_each_active_follower(redis_url):
    c = replay(
        redis_url,
        posts=posts((11, AUTHOR, 1_000), (12, AUTHOR, 2_000)),
        edges=FOLLOWERS_OF_AUTHOR,
        push_authors=ids(AUTHOR),
        active_users=ACTIVE,
        keep_keys=True,
    )
    assert (c.writes, c.timeline_entries, c.celebrity_writes, c.celebrity_entries, c.merges) == (4, 4, 0, 0, 0)
    assert c.stored_entries == 4
    assert c.redis_commands == 8  # a ZADD and a ZREMRANGEBYRANK per write
    assert zrevrange(redis_url, f"{PREFIX}:timeline:1") == [12, 11]
    assert zrevrange(redis_url, f"{PREFIX}:timeline:2") == [12, 11]
    assert zrevrange(redis_url, f"{PREFIX}:timeline:3") == []  # not active: no timeline


def test_pull_posts_are_merged_by_every_read_of_an_active_follower(redis_url):
    c = replay(
        redis_url,
        posts=posts((11, AUTHOR, 1_000), (12, AUTHOR, 2_000)),
        reads=reads((1, 3_000), (2, 3_000), (1, 4_000)),
        edges=FOLLOWERS_OF_AUTHOR,
        active_users=ACTIVE,
    )
    assert (c.writes, c.timeline_entries, c.celebrity_writes, c.celebrity_entries) == (0, 0, 2, 2)
    assert (c.merges, c.timeline_reads, c.on_demand_reads) == (3, 3, 0)
    assert c.returned_entries == 6  # each merge returns both posts; the timelines are empty
    assert c.redis_commands == 2 + 3 + 3
    assert (c.posts, c.reads) == (2, 3)


def test_merges_count_every_pull_followee_whether_or_not_it_posted(redis_url):
    c = replay(
        redis_url,
        posts=posts((11, AUTHOR, 1_000)),
        reads=reads((1, 2_000)),
        edges=edges((1, AUTHOR), (1, CELEB), (1, 300)),
        push_authors=ids(AUTHOR),
        active_users=ids(1),
    )
    assert (c.writes, c.merges, c.timeline_reads) == (1, 2, 1)  # CELEB and 300 are pull; 300 never posts
    assert c.returned_entries == 1  # the pushed post, on the timeline page


def test_the_timeline_keeps_the_newest_cap_entries(redis_url):
    # created_ms out of input order: the newest three are 15, 13 and 14 by time
    day = posts((11, AUTHOR, 1_000), (15, AUTHOR, 5_000), (12, AUTHOR, 2_000), (13, AUTHOR, 4_000), (14, AUTHOR, 3_000))
    c = replay(
        redis_url,
        posts=day,
        edges=edges((1, AUTHOR)),
        push_authors=ids(AUTHOR),
        active_users=ids(1),
        timeline_cap=3,
        keep_keys=True,
    )
    assert (c.writes, c.timeline_entries) == (5, 3)
    assert zrevrange(redis_url, f"{PREFIX}:timeline:1") == [15, 13, 14]


def test_duplicate_edges_and_self_follows_are_dropped_and_never_double_written(redis_url):
    graph = edges(
        (1, AUTHOR),
        (1, AUTHOR),  # duplicate
        (2, AUTHOR),
        (AUTHOR, AUTHOR),  # self-follow of the push author
        (1, CELEB),
        (1, CELEB),  # duplicate pull edge: still one merge per read
        (CELEB, CELEB),  # self-follow of the pull author
    )
    c = replay(
        redis_url,
        posts=posts((11, AUTHOR, 1_000), (21, CELEB, 1_500)),
        reads=reads((1, 2_000), (CELEB, 2_000)),
        edges=graph,
        push_authors=ids(AUTHOR),
        active_users=ids(1, 2, AUTHOR, CELEB),
    )
    assert c.dropped_edges == 4
    assert (c.writes, c.timeline_entries) == (2, 2)  # followers 1 and 2, not the author itself
    assert (c.merges, c.timeline_reads) == (1, 2)  # user 1 merges CELEB once; CELEB does not merge itself


def test_a_read_by_a_user_outside_the_active_set_is_on_demand_only(redis_url):
    c = replay(
        redis_url,
        posts=posts((11, AUTHOR, 1_000)),
        reads=reads((3, 2_000), (3, 3_000), (1, 3_000)),
        edges=FOLLOWERS_OF_AUTHOR,
        active_users=ACTIVE,
    )
    assert (c.on_demand_reads, c.timeline_reads, c.merges) == (2, 1, 1)
    assert c.redis_commands == 1 + 2  # the pull post; user 1's page and merge; nothing for user 3


def test_a_rerun_gives_the_same_counts_and_leaves_other_keys_alone(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.zadd(f"{PREFIX}:timeline:1", {"999": 1})  # stale: a previous run's leftover
    client.set(f"{PREFIX}:junk", "x")
    foreign = {"timeline:1": "live", "replay:tests:timeline:1": "a longer prefix", "replay:other": "another replay"}
    for k, v in foreign.items():
        client.set(k, v)

    kw = dict(
        posts=posts((11, AUTHOR, 1_000), (21, CELEB, 1_500), (12, AUTHOR, 2_500)),
        reads=reads((1, 2_000), (2, 3_000), (3, 3_000)),
        edges=edges((1, AUTHOR), (2, AUTHOR), (1, CELEB), (2, CELEB), (3, CELEB)),
        push_authors=ids(AUTHOR),
        active_users=ACTIVE,
    )
    first = replay(redis_url, keep_keys=True, **kw)
    second = replay(redis_url, keep_keys=True, **kw)
    third = replay(redis_url, **kw)

    def same(c: ReplayCounts) -> dict:
        return {
            k: v for k, v in c.as_dict().items() if k not in ("seconds", "events_per_second", "commands_per_second")
        }

    assert same(first) == same(second) == same(third)
    assert (first.writes, first.timeline_entries, first.merges, first.celebrity_entries) == (4, 4, 2, 1)
    assert first.on_demand_reads == 1
    assert first.returned_entries == (1 + 1) + (2 + 1)  # 1: post 11, merged 21; 2: posts 12 and 11, merged 21
    assert sorted(client.scan_iter(match=f"{PREFIX}:*")) == []  # the last run deleted its keys
    assert {k: client.get(k).decode() for k in foreign} == foreign
    client.close()


def test_event_order_is_time_then_post_before_read_then_id():
    day_posts = posts((7, AUTHOR, 2_000), (5, AUTHOR, 2_000), (9, AUTHOR, 500))
    day_reads = reads((4, 2_000), (3, 1_000), (1, 2_000), (4, 2_000))
    kinds, rows = event_order(day_posts, day_reads)
    assert list(zip(kinds.tolist(), rows.tolist(), strict=True)) == [
        (POST, 2),  # 500
        (READ, 1),  # 1000
        (POST, 1),  # 2000, post 5
        (POST, 0),  # 2000, post 7
        (READ, 2),  # 2000, user 1
        (READ, 0),  # 2000, user 4: the two identical reads keep input order
        (READ, 3),
    ]


def test_a_read_sees_pull_posts_up_to_its_own_ms_within_the_window(redis_url):
    c = replay(
        redis_url,
        posts=posts((21, CELEB, 2_000)),
        # before the post, at the post's ms (the post goes first), at the window's edge, past it
        reads=reads((1, 1_999), (1, 2_000), (1, 3_000), (1, 3_001)),
        edges=edges((1, CELEB)),
        active_users=ids(1),
        pull_window_ms=1_000,
    )
    assert c.merges == 4
    assert c.returned_entries == 2


def test_a_read_sees_pushed_posts_only_after_they_are_made(redis_url):
    c = replay(
        redis_url,
        posts=posts((11, AUTHOR, 2_000), (12, AUTHOR, 4_000)),
        reads=reads((1, 1_000), (1, 3_000), (1, 5_000)),
        edges=edges((1, AUTHOR)),
        push_authors=ids(AUTHOR),
        active_users=ids(1),
    )
    assert c.returned_entries == 0 + 1 + 2


def test_bad_input_names_the_column(redis_url):
    with pytest.raises(ValueError, match="created_ms"):
        replay(redis_url, posts=pa.table({"post_id": [1], "author_id": [2]}), edges=edges(), active_users=ids())
    with pytest.raises(ValueError, match="key_prefix"):
        replay(redis_url, edges=edges(), active_users=ids(), key_prefix="")


# --- the local server -----------------------------------------------------------------------------------------------
def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_local_redis_server_answers_and_is_gone_after_exit(tmp_path):
    with rs.LocalRedisServer(tmp_path) as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        client.close()
        port = server.port
    assert refuses(port)


def test_local_redis_server_retries_when_the_port_is_taken(tmp_path, redis_server, monkeypatch):
    ports = iter([redis_server.port, rs.free_port()])  # the first one is the session server's: in use
    monkeypatch.setattr(rs, "free_port", lambda: next(ports))
    with rs.LocalRedisServer(tmp_path) as server:
        assert server.port != redis_server.port
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        client.close()


def test_local_redis_server_that_exits_early_raises_with_its_exit_code(tmp_path):
    with pytest.raises(rs.LocalRedisError, match="exited with code 1 before it was ready"):
        rs.LocalRedisServer(tmp_path, binary="false").start()
