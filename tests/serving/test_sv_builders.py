"""The pure parts, by hand: the key layout and its hash tags, each family's payload, the refusals of bad input,
the canonical contents verification compares, the encoding rule, and cursors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from redis.cluster import key_slot

from serving.cursor import Cursor, decode_cursor, encode_cursor
from serving.errors import BadCursorError, ServingInputError
from serving.keys import KeySpace, batch_end_ms, check_batch_id, make_version, parse_version
from serving.payloads import (
    BuildContext,
    build,
    canonical_of_commands,
    canonical_of_reply,
    checksum,
    expected_encoding,
    expected_keys,
)

V = "20261101T0000Z.3"
END_MS = 1_793_491_200_000  # 2026-11-01 00:00 UTC
CTX = BuildContext(KeySpace("sv"), V, END_MS, timeline_cap=3, embedding_dim=2)


def test_versions_and_batch_ids():
    assert make_version("20261101T0000Z", 3) == V
    assert parse_version(V) == ("20261101T0000Z", 3)
    assert batch_end_ms("20261101T0000Z") == END_MS
    for bad in ("2026-11-01", "20261301T0000Z", "20261101T0000"):
        with pytest.raises(ValueError, match="batch_id"):
            check_batch_id(bad)
    with pytest.raises(ValueError, match="expected <batch_id>.<seq>"):
        parse_version("20261101T0000Z")


def test_physical_keys_and_hash_tags():
    keys = KeySpace("sv")
    assert keys.pointer("feed") == "sv:{feed}:current"
    assert keys.manifest("feed", V) == "sv:{feed}:manifest:20261101T0000Z.3"
    assert keys.data("feed", V, "timeline:{42}") == "sv:feed:20261101T0000Z.3:timeline:{42}"
    # The switch script's keys share a slot; so do one user's keys across families and groups.
    control = (keys.pointer("feed"), keys.manifest("feed", V), keys.versions("feed"), keys.sequence("feed"))
    assert len({key_slot(k.encode()) for k in control}) == 1
    user_keys = [
        ("feed_timelines", (42, [1.0], [7])),
        ("pull_authors", (42, [9])),
        ("story_rings", (42, [True], [1.0], [9], [END_MS + 1])),
        ("explore_candidates", (42, [1.0], [7])),
    ]
    slots = {key_slot(e.key.encode()) for fam, rec in user_keys for e in expected_keys(fam, rec, CTX)}
    assert slots == {key_slot(b"{42}")}
    with pytest.raises(ValueError, match="unknown key-family group 'nope'"):
        keys.pointer("nope")


def test_timeline_payload_keeps_the_sources_order():
    [cmd] = build("feed_timelines", (42, [3.5, 2.0, 0.1 + 0.2], [11, 12, 13]), CTX)
    assert cmd == ("ZADD", "sv:feed:20261101T0000Z.3:timeline:{42}", "3.5", "11", "2.0", "12", "0.30000000000000004",
                   "13")  # fmt: skip


@pytest.mark.parametrize(
    "record, message",
    [
        ((42, [1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4]), r"timeline:\{42\}: 4 entries; expected at most 3"),
        ((42, [1.0, math.nan], [1, 2]), r"serving.feed_timelines: key .*timeline:\{42\}: score of member 2 is nan"),
        ((42, [1.0, math.inf], [1, 2]), "score of member 2 is inf; expected a finite number"),
        ((42, [1.0, None], [1, 2]), "score of member 2 is null"),
        ((42, [1.0, 2.0], [5, 5]), "post_id 5 appears twice"),
    ],
)
def test_bad_timelines_are_refused_by_name(record, message):
    with pytest.raises(ServingInputError, match=message):
        build("feed_timelines", record, CTX)


def test_celebrity_posts_and_their_merge_candidates():
    # Newest first: 4 (1 h old, base 2.0), 3 (2 h, no metadata), 2 (3 h, 1.0), 1 (25 h: outside the window).
    hour = 3_600_000
    created = [END_MS - hour, END_MS - 2 * hour, END_MS - 3 * hour, END_MS - 25 * hour]
    record = (9, created, [4, 3, 2, 1], [2.0, None, 1.0, 7.0])
    ctx = BuildContext(KeySpace("sv"), V, END_MS, 3, 2, pull_window_ms=24 * hour, posts_per_pull_author=2)
    posts, recent = build("celebrity_posts", record, ctx)
    assert posts[1] == "sv:feed:20261101T0000Z.3:celebrity:{9}:posts" and len(posts) == 2 + 2 * 4
    # The 2 latest in the window are 4 and 3; 3 has no base score, so only 4 is a candidate.
    assert recent == ("ZADD", "sv:feed:20261101T0000Z.3:celebrity:{9}:recent", "2.0", "4")
    assert [e.size for e in expected_keys("celebrity_posts", record, ctx)] == [4, 1]


def test_post_meta_and_config_hashes():
    [cmd] = build("post_meta", (7, 2, 1_000, None, 1, 5, 0, 0.25), CTX)
    assert cmd[:2] == ("HSET", "sv:feed:20261101T0000Z.3:post:{7}")
    assert dict(zip(cmd[2::2], cmd[3::2], strict=True)) == {
        "author_id": 2,
        "created_at": 1_000,
        "media_count": 1,
        "like_count": 5,
        "comment_count": 0,
        "base_score": 0.25,
    }
    assert expected_keys("post_meta", (7, 2, 1_000, None, 1, 5, 0, 0.25), CTX)[0].size == 6
    with pytest.raises(ServingInputError, match=r"post:\{7\}: base_score of member 7 is nan"):
        build("post_meta", (7, 2, 1_000, "x", 1, 5, 0, math.nan), CTX)
    with pytest.raises(ServingInputError, match=r"post:\{7\}: media_count is null"):
        build("post_meta", (7, 2, 1_000, "x", math.nan, 5, 0, 1.0), CTX)
    [cfg] = build("fanout_config", (0, "p1", "hybrid", None, END_MS), CTX)
    assert cfg == ("HSET", "sv:feed:20261101T0000Z.3:config:fanout", "policy_version", "p1", "policy", "hybrid",
                   "computed_at", "2026-11-01T00:00:00.000Z")  # fmt: skip


def test_story_ring_order_and_ttl():
    # Authors 5 (seen, 9.0), 6 (unseen, 1.0), 7 (unseen, 2.0): unseen first, then by score.
    record = (1, [False, True, True], [9.0, 1.0, 2.0], [5, 6, 7], [END_MS + 1_000, END_MS + 5_000, END_MS + 3_000])
    ring, info, ttl_ring, ttl_info = build("story_rings", record, CTX)
    assert ring == ("ZADD", "sv:stories:20261101T0000Z.3:story_ring:{1}", "3", "7", "2", "6", "1", "5")
    assert info[1] == "sv:stories:20261101T0000Z.3:story_ring:{1}:authors"
    assert info[2:4] == (7, '{"unseen":true,"score":2.0,"expires_at":1793491203000}')
    assert ttl_ring == ("PEXPIRE", ring[1], 5_000) and ttl_info == ("PEXPIRE", info[1], 5_000)
    expired = (1, [True], [1.0], [5], [END_MS])
    with pytest.raises(ServingInputError, match="author 5's stories expire at 2026-11-01T00:00:00.000Z; expected aft"):
        build("story_rings", expired, CTX)


def test_embeddings_are_little_endian_float32():
    [cmd] = build("user_embeddings", (3, "tt-1", [1.5, -2.0]), CTX)
    assert cmd == ("SET", "sv:explore:20261101T0000Z.3:emb:user:{3}", np.array([1.5, -2.0], "<f4").tobytes())
    assert cmd[2] == b"\x00\x00\xc0?\x00\x00\x00\xc0"
    with pytest.raises(
        ServingInputError, match=r"serving.item_embeddings: key .*emb:item:\{3\}: embedding of 3 floats"
    ):
        build("item_embeddings", (3, "tt-1", [1.0, 2.0, 3.0]), CTX)
    with pytest.raises(ServingInputError, match="non-finite value at index 1"):
        build("item_embeddings", (3, "tt-1", [1.0, math.nan]), CTX)


def test_canonical_contents_compare_what_redis_returns():
    cmds = build("feed_timelines", (42, [2.5, 1.0], [11, 12]), CTX)
    want = canonical_of_commands(cmds)
    key = cmds[0][1]
    assert want[key] == ("zset", {b"11": 2.5, b"12": 1.0}, False)
    assert canonical_of_reply("zset", [[b"12", 1.0], [b"11", 2.5]], -1) == want[key]
    assert canonical_of_reply("zset", [b"11", b"2.5", b"12", b"1"], -1) == want[key]  # flat RESP2
    assert canonical_of_reply("zset", [[b"12", 1.0], [b"11", 2.5]], 5) != want[key]  # a TTL where none is due
    assert checksum({key: canonical_of_reply("zset", [[b"12", 1.0], [b"11", 2.5]], -1)}) == checksum(want)
    assert checksum({key: ("zset", {b"11": 2.5, b"12": 1.5}, False)}) != checksum(want)
    [sadd] = build("pull_authors", (42, [9, 7]), CTX)
    assert canonical_of_commands([sadd]) == {sadd[1]: ("set", frozenset({b"9", b"7"}), False)}


def test_encoding_rule():
    assert expected_encoding("skiplist", 800, 128, 800) == "skiplist"
    assert expected_encoding("skiplist", 100, 128, 800) == "listpack"  # short timelines are listpacks anyway
    assert expected_encoding("listpack", 800, 1024, 800) == "listpack"
    assert expected_encoding("skiplist", 100, None, 800) is None
    assert expected_encoding("skiplist", 800, None, 800) == "skiplist"


def test_cursor_round_trip_and_refusals():
    c = Cursor(0.1 + 0.2, 1_790_000_000_000_123, V, 42)
    assert decode_cursor(encode_cursor(c), 42) == c
    assert c.is_after(0.3, 5) and c.is_after(0.30000000000000004, 1_790_000_000_000_122)
    assert not c.is_after(0.30000000000000004, 1_790_000_000_000_123)
    with pytest.raises(BadCursorError, match="issued to another user"):
        decode_cursor(encode_cursor(c), 43)
    with pytest.raises(BadCursorError, match="not the base64 JSON"):
        decode_cursor("%%%", 42)
    with pytest.raises(BadCursorError, match="expected the fields"):
        decode_cursor("e30", 42)  # {}
    with pytest.raises(BadCursorError, match="at most 512"):
        decode_cursor("a" * 600, 42)


def test_hex_scores_are_exact_and_verified_like_decimal_ones():
    scores = [3.5, 0.1 + 0.2, 1e-300, 123456789.12345679]
    hexed = BuildContext(KeySpace("sv"), V, END_MS, timeline_cap=4, embedding_dim=2, hex_scores=True)
    [cmd] = build("feed_timelines", (42, scores, [11, 12, 13, 14]), hexed)
    assert cmd[2::2] == tuple(float.hex(s) for s in scores)
    decimal = BuildContext(KeySpace("sv"), V, END_MS, timeline_cap=4, embedding_dim=2)
    [plain] = build("feed_timelines", (42, scores, [11, 12, 13, 14]), decimal)
    assert plain[2::2] == tuple(map(repr, scores))
    assert canonical_of_commands([cmd]) == canonical_of_commands([plain])  # the same doubles either way
    assert canonical_of_commands([cmd])[cmd[1]][1] == dict(zip([b"11", b"12", b"13", b"14"], scores, strict=True))
