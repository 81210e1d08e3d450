"""The publisher against a real redis-server, from in-memory batches: the keys of the contract, the switch, re-runs,
refusals that leave the current version untouched, verification, expiry, the encoding check, password and TLS,
and parallel writers."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import redis

from darkroom.redis_server import LocalRedisServer
from serving.errors import ServingConfigError, ServingInputError, ServingPublishError, ServingVerificationError
from serving.keys import KeySpace
from serving.publisher import KEY_TTL_MARGIN_MS, PublishHooks, RedisPublisher
from tests.serving.conftest import BATCH, DIM, batch, frames, publish, readers, serving_settings, whole_feed

KEYS = KeySpace("sv")


def feed(batch_id: str = BATCH):
    """Users 1 and 2; user 1 follows pull-mode author 9 (post 901, 2 h old, base score 2.5)."""
    return frames(
        batch_id,
        timelines={1: [(101, 3.0), (102, 2.0)], 2: [(201, 1.5)]},
        pull={1: [9]},
        celebrity={9: [(901, 2.0)]},
        base_scores={901: 2.5},
    )


FEED = feed()


def _data_keys(client, version: str, group: str = "feed") -> list[bytes]:
    return sorted(client.scan_iter(match=f"sv:{group}:{version}:*"))


def test_publish_writes_the_contract_and_switches_the_pointer(sv_settings, client):
    result = publish(sv_settings, BATCH, FEED)
    v = f"{BATCH}.1"
    assert (result.version, result.previous, result.state) == (v, None, "current")
    assert client.get("sv:{feed}:current") == v.encode()
    assert client.zrange(f"sv:feed:{v}:timeline:{{1}}", 0, -1, withscores=True, desc=True) == [
        (b"101", 3.0),
        (b"102", 2.0),
    ]
    assert client.smembers(f"sv:feed:{v}:user:{{1}}:pull_authors") == {b"9"}
    assert client.zrange(f"sv:feed:{v}:celebrity:{{9}}:posts", 0, -1, withscores=True) == [(b"901", 1793484000000.0)]
    assert client.hgetall(f"sv:feed:{v}:post:{{901}}") == {
        b"author_id": b"9",
        b"created_at": b"1793484000000",
        b"caption": b"post 901",
        b"media_count": b"1",
        b"like_count": b"5",
        b"comment_count": b"1",
        b"base_score": b"2.5",
    }
    assert client.hgetall(f"sv:feed:{v}:config:fanout") == {
        b"policy_version": b"policy-20261101T0000Z",
        b"policy": b"hybrid",
        b"computed_at": b"2026-11-01T00:00:00.000Z",
        b"threshold": b"5000",
    }
    assert client.zrange(f"sv:feed:{v}:celebrity:{{9}}:recent", 0, -1, withscores=True) == [(b"901", 2.5)]
    # timelines, pull set, celebrity posts and merge candidates, 4 posts, config
    assert len(_data_keys(client, v)) == 2 + 1 + 2 + 4 + 1
    assert all(client.pttl(k) == -1 for k in _data_keys(client, v))
    manifest = client.hgetall(f"sv:{{feed}}:manifest:{v}")
    assert manifest[b"state"] == b"current"
    assert json.loads(manifest[b"expected"])["feed_timelines"] == {"keys": 2, "rows": 3}
    verified = json.loads(manifest[b"verified"])
    assert verified["feed_timelines"]["keys"] == 2 and verified["feed_timelines"]["members"] == 3
    assert verified["post_meta"]["sampled"] == 4
    assert json.loads(manifest[b"encoding"])["observed"] == "listpack"  # 2 entries: below the server's 128


def test_rerun_is_done_and_an_older_batch_is_refused(sv_settings, client):
    first = publish(sv_settings, batch(60), feed(batch(60)))
    again = publish(sv_settings, batch(60), feed(batch(60)))
    assert again.state == "already_current" and again.version == first.version
    with pytest.raises(ServingPublishError, match=r"refusing to publish batch 20261101T0000Z: batch 20261101T0100Z"):
        publish(sv_settings, BATCH, FEED)
    forced = publish(sv_settings, batch(60), feed(batch(60)), force=True)
    assert forced.version == f"{batch(60)}.2" and forced.previous == first.version
    assert client.get("sv:{feed}:current") == forced.version.encode()


def _bad_feeds():
    nan = frames(batch(60), timelines={1: [(101, 3.0), (102, float("nan"))]})
    long = frames(batch(60), timelines={1: [(100 + i, float(i)) for i in range(4)]})
    empty = frames(batch(60), timelines={})
    two_configs = frames(batch(60), timelines={1: [(101, 1.0)]})
    two_configs["fanout_config"] = two_configs["fanout_config"].iloc[[0, 0]]
    return [
        (nan, ServingInputError, r"serving.feed_timelines: key sv:feed:\S+:timeline:\{1\}: score of member 102 is nan"),
        (long, ServingInputError, r"timeline:\{1\}: 4 entries; expected at most 3 \(serving.timeline_cap\)"),
        (
            empty,
            ServingInputError,
            r"serving.feed_timelines: no rows for batch_id 20261101T0100Z; .*stays at version "
            r"20261101T0000Z.1",
        ),  # fmt: skip
        (two_configs, ServingInputError, r"serving.fanout_config: 2 rows .* expected exactly one"),
    ]


@pytest.mark.parametrize("bad, error, message", _bad_feeds(), ids=["nan", "over_cap", "missing_batch", "two_configs"])
def test_bad_input_leaves_the_current_version_untouched(tmp_path, redis_url, client, bad, error, message):
    settings = serving_settings(tmp_path, redis_url, timeline_cap=3, timeline_encoding="listpack")  # 3 <= 128
    good = publish(settings, BATCH, FEED)
    reader, _, _ = readers(client, settings)
    before = whole_feed(reader, 1)
    with pytest.raises(error, match=message):
        publish(settings, batch(60), bad)
    assert client.get("sv:{feed}:current") == good.version.encode()
    assert whole_feed(reader, 1) == before == ([101, 901, 102], {good.version})
    versions = client.zrange("sv:{feed}:versions", 0, -1)
    states = {v: client.hget(f"sv:{{feed}}:manifest:{v.decode()}", "state") for v in versions}
    assert states[good.version.encode()] == b"current"
    failed = [v for v, s in states.items() if s == b"failed"]
    # The next good publish deletes what the failed one wrote.
    after = publish(settings, batch(120), feed(batch(120)))
    assert after.removed == [v.decode() for v in failed]
    assert all(_data_keys(client, v.decode()) == [] for v in failed)


def test_a_wrong_embedding_is_refused_for_the_explore_group(sv_settings, client):
    ok = frames(explore={1: [(101, 1.0)]}, user_vectors={1: [0.5] * DIM})
    publish(sv_settings, BATCH, ok, group="explore")
    bad = frames(batch(60), explore={1: [(101, 1.0)]}, user_vectors={1: [0.5] * (DIM + 1)})
    message = (
        r"serving.user_embeddings: key \S+emb:user:\{1\}: embedding of 5 floats; expected 4 \(two_tower.output_dim\)"
    )
    with pytest.raises(ServingInputError, match=message):
        publish(sv_settings, batch(60), bad, group="explore")
    _, _, explore = readers(client, sv_settings)
    assert explore.user_embedding(1).tolist() == [0.5] * DIM
    assert client.get("sv:{explore}:current") == f"{BATCH}.1".encode()


def test_verification_catches_a_key_changed_before_the_switch(sv_settings, client):
    first = publish(sv_settings, BATCH, FEED)

    def tamper(family: str, part: int) -> None:  # after the last family's write: one timeline loses a member
        if family == "fanout_config":
            client.zrem(f"sv:feed:{batch(60)}.2:timeline:{{1}}", "102")

    with pytest.raises(ServingVerificationError, match=r"timeline:\{1\}: zset of size 1; expected 2"):
        publish(sv_settings, batch(60), feed(batch(60)), hooks=PublishHooks(after_partition=tamper))
    assert client.get("sv:{feed}:current") == first.version.encode()
    assert client.hget(f"sv:{{feed}}:manifest:{batch(60)}.2", "state") == b"failed"


def test_verification_compares_sampled_contents(sv_settings, client):
    def tamper(family: str, part: int) -> None:  # same size, another score
        if family == "fanout_config":
            client.zadd(f"sv:feed:{BATCH}.1:timeline:{{2}}", {"201": 9.0})

    message = r"sampled key \S+timeline:\{2\}: Redis holds .*9\.0.*the source "
    with pytest.raises(ServingVerificationError, match=message):
        publish(sv_settings, BATCH, FEED, hooks=PublishHooks(after_partition=tamper))
    assert client.get("sv:{feed}:current") is None


def test_superseded_versions_expire_after_the_grace_period(tmp_path, redis_url, client):
    settings = serving_settings(tmp_path, redis_url, grace_seconds=100)
    v1 = publish(settings, BATCH, FEED).version
    v2 = publish(settings, batch(60), feed(batch(60)))
    assert v2.expired == [v1]
    grace_ms = 100_000
    assert all(grace_ms < client.pttl(k) <= grace_ms + KEY_TTL_MARGIN_MS for k in _data_keys(client, v1))
    assert 0 < client.pttl(f"sv:{{feed}}:manifest:{v1}") <= grace_ms
    assert client.hget(f"sv:{{feed}}:manifest:{v1}", "state") == b"superseded"
    assert all(client.pttl(k) == -1 for k in _data_keys(client, v2.version))
    # A story ring keeps its own TTL (2 h from the batch end) when that is shorter than the grace period (3 h).
    long_grace = serving_settings(tmp_path, redis_url, grace_seconds=3 * 3600)
    rings = {1: [(5, 1.0, True, 2.0)]}
    s1 = publish(long_grace, BATCH, frames(rings=rings), group="stories").version
    ring_ttl = client.pttl(f"sv:stories:{s1}:story_ring:{{1}}")
    assert 7_000_000 < ring_ttl <= 7_200_000
    publish(long_grace, batch(60), frames(batch(60), rings=rings), group="stories")
    assert 7_000_000 < client.pttl(f"sv:stories:{s1}:story_ring:{{1}}") <= ring_ttl
    assert 7_000_000 < client.pttl(f"sv:stories:{s1}:story_ring:{{1}}:authors") <= ring_ttl
    # With no grace period a superseded version goes at once.
    settings0 = serving_settings(tmp_path, redis_url, grace_seconds=0)
    v3 = publish(settings0, batch(120), feed(batch(120)))
    assert v3.removed == [v2.version] and _data_keys(client, v2.version) == []


def test_the_encoding_must_be_the_chosen_one(tmp_path):
    timeline = {1: [(1000 + i, float(i)) for i in range(130)]}
    with LocalRedisServer(tmp_path / "lp", extra_args=("--zset-max-listpack-entries", "1024")) as server:
        skip = serving_settings(tmp_path, server.url, timeline_cap=130)
        with pytest.raises(ServingConfigError, match="zset-max-listpack-entries is 1024 >= serving.timeline_cap 130"):
            publish(skip, BATCH, frames(timelines=timeline))
        listpack = serving_settings(tmp_path, server.url, timeline_cap=130, timeline_encoding="listpack")
        assert publish(listpack, BATCH, frames(timelines=timeline)).encoding["observed"] == "listpack"
    with LocalRedisServer(tmp_path / "sl") as server:
        skip = serving_settings(tmp_path, server.url, timeline_cap=130)
        result = publish(skip, BATCH, frames(timelines=timeline))
        assert result.encoding == {"choice": "skiplist", "observed": "skiplist", "entries": 130,
                                   "zset_max_listpack_entries": 128}  # fmt: skip
        c = redis.Redis.from_url(server.url)
        assert c.object("encoding", f"sv:feed:{result.version}:timeline:{{1}}") == b"skiplist"
        c.close()


def test_password_in_the_url(tmp_path):
    with LocalRedisServer(tmp_path, extra_args=("--requirepass", "s3cret")) as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
        result = publish(serving_settings(tmp_path, url), BATCH, FEED)
        c = redis.Redis.from_url(url)
        reader, _, _ = readers(c, serving_settings(tmp_path, url))
        assert whole_feed(reader, 1)[0] == [101, 901, 102] and result.state == "current"
        c.close()
        with pytest.raises(redis.AuthenticationError):
            publish(serving_settings(tmp_path, f"redis://:wrong@127.0.0.1:{server.port}/0"), batch(60), feed(batch(60)))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
def test_tls_in_the_url(tmp_path):
    ca, cert, key = tmp_path / "ca.crt", tmp_path / "redis.crt", tmp_path / "redis.key"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=tmp_path)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "redis.key",
        "-out", "redis.csr")  # fmt: skip
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.cnf", "-out", "redis.crt")  # fmt: skip
    from darkroom.redis_server import free_port

    tls_port = free_port()
    args = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")  # fmt: skip
    with LocalRedisServer(tmp_path / "redis", extra_args=args) as server:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
        settings = serving_settings(tmp_path, url)
        assert publish(settings, BATCH, FEED).state == "current"
        c = redis.Redis.from_url(url)
        assert whole_feed(readers(c, settings)[0], 1)[0] == [101, 901, 102]
        c.close()
        assert redis.Redis(port=server.port).get("sv:{feed}:current") == f"{BATCH}.1".encode()


def test_parallel_writers_publish_the_same_contents(sv_settings, client):
    rng = np.random.default_rng(3)
    posts = rng.permutation(np.arange(1000, 1200))
    timelines = {
        u: [(int(p), float(s)) for p, s in zip(posts[u : u + 50], rng.random(50), strict=True)] for u in range(1, 41)
    }
    one = publish(sv_settings, BATCH, frames(timelines=timelines), writers=1)
    two = publish(sv_settings, batch(60), frames(batch(60), timelines=timelines), writers=2, partition_records=7)
    sizes = lambda r: {f: (v["keys"], v["members"]) for f, v in r.verified.items()}  # noqa: E731
    assert sizes(one) == sizes(two) and sizes(two)["feed_timelines"] == (40, 2000)
    for u in (1, 17, 40):
        a = client.zrange(f"sv:feed:{one.version}:timeline:{{{u}}}", 0, -1, withscores=True)
        assert a == client.zrange(f"sv:feed:{two.version}:timeline:{{{u}}}", 0, -1, withscores=True)
        assert len(a) == 50


@pytest.mark.parametrize("hex_scores", [True, False])
def test_scores_arrive_exactly_in_hex_or_decimal(tmp_path, redis_url, client, hex_scores):
    """With hex_scores the publisher checks once that the server parses a hex score, then sends float.hex literals;
    either way Redis holds the very doubles of the frame (verification compares them too)."""
    s = serving_settings(tmp_path / "state", redis_url, hex_scores=hex_scores)
    scores = [0.1 + 0.2, 1 / 3, 2.5e-12]
    result = publish(s, BATCH, frames(BATCH, timelines={1: [(101, scores[0]), (102, scores[1]), (103, scores[2])]}))
    with RedisPublisher.from_settings(s) as publisher:
        assert publisher.context(result.version).hex_scores is hex_scores
    key = f"sv:feed:{result.version}:timeline:{{1}}"
    got = client.zrange(key, 0, -1, withscores=True)
    assert sorted(score for _, score in got) == sorted(scores)
    assert not client.exists("sv:{feed}:seq:hex-probe")  # the probe leaves nothing behind
