"""The readers against published batches: the pull-author merge against a hand-computed order, pagination (ties,
across a publish, expired cursors), an unfollow, unknown users, the story ring and Explore."""

from __future__ import annotations

import numpy as np
import pytest

from serving.errors import CursorExpiredError, NotPublishedError, UnknownUserError
from tests.serving.conftest import (
    BATCH,
    DIM,
    batch,
    frames,
    hours_before,
    publish,
    readers,
    serving_settings,
    whole_feed,
)


def test_pull_authors_merge_by_score_hand_computed(sv_settings, client):
    # Timeline of user 1: 101 (5.0), 102 (3.0), 103 (1.0), 104 (1.0), 804 (0.7).
    # Pull author 8: 801 (1 h old, base 4.0), 802 (3 h, 1.0), 803 (25 h: outside the 24 h window), 804 (2 h, base 9.0,
    # but also in the timeline: its timeline entry stays). Pull author 9: 901..907, 0.5 h to 6.5 h old: only the 5
    # latest (901-905) are merged; 903 has no metadata (cannot be ranked).
    celebrity = {8: [(801, 1), (802, 3), (803, 25), (804, 2)], 9: [(900 + i, i - 0.5) for i in range(1, 8)]}
    base = {801: 4.0, 802: 1.0, 803: 100.0, 804: 9.0, 901: 6.0, 902: 3.0, 903: 8.0, 904: 2.0, 905: 0.1}
    base |= {906: 50.0, 907: 60.0}
    batch_frames = frames(
        timelines={1: [(101, 5.0), (102, 3.0), (103, 1.0), (104, 1.0), (804, 0.7)]},
        pull={1: [8, 9]},
        celebrity=celebrity,
        base_scores=base,
        authors={p: p // 100 for p in range(800, 910)},
    )
    meta = batch_frames["post_meta"]
    batch_frames["post_meta"] = meta[meta["post_id"] != 903]
    publish(sv_settings, BATCH, batch_frames)
    feed, _, _ = readers(client, sv_settings)
    page = feed.get_feed(1, limit=20)
    # By score, then post id, both descending: 902 (3.0) before 102 (3.0); 802 (1.0) before 104 and 103.
    expected = [901, 101, 801, 902, 102, 904, 802, 104, 103, 804, 905]
    assert [p.post_id for p in page.posts] == expected
    assert [p.score for p in page.posts] == [6.0, 5.0, 4.0, 3.0, 3.0, 2.0, 1.0, 1.0, 1.0, 0.7, 0.1]
    assert [p.source for p in page.posts] == ["pull", "timeline", "pull", "pull", "timeline", "pull", "pull",
                                              "timeline", "timeline", "timeline", "pull"]  # fmt: skip
    assert page.posts[0].author_id == 9 and page.posts[0].caption == "post 901"
    assert (page.has_more, page.next_cursor) == (False, None)
    for limit in (1, 3, 4):
        assert whole_feed(feed, 1, limit=limit)[0] == expected


def test_pages_through_ties_without_duplicates_or_gaps(sv_settings, client):
    # Seven timeline entries at one score, two pull posts at the same score: one order, post id descending.
    timeline = [(100 + i, 1.0) for i in range(7)] + [(200, 2.0), (99, 0.5)]
    publish(
        sv_settings,
        BATCH,
        frames(
            timelines={1: timeline},
            pull={1: [9]},
            celebrity={9: [(903, 1), (902, 2)]},
            base_scores={903: 1.0, 902: 1.0},
        ),
    )
    feed, _, _ = readers(client, sv_settings)
    expected = [200, 903, 902, 106, 105, 104, 103, 102, 101, 100, 99]
    for limit in (1, 2, 3, 5, 20):
        assert whole_feed(feed, 1, limit=limit)[0] == expected


def _user1(batch_id: str, offset: int):
    timeline = [(1000 * offset + i, float(10 - i)) for i in range(6)]
    return frames(batch_id, timelines={1: timeline})


def test_pagination_across_a_publish_continues_the_cursors_version(sv_settings, client):
    v1 = publish(sv_settings, BATCH, _user1(BATCH, 1)).version
    feed, _, _ = readers(client, sv_settings)
    first = feed.get_feed(1, limit=2)
    assert [p.post_id for p in first.posts] == [1000, 1001] and first.version == v1
    v2 = publish(sv_settings, batch(60), _user1(batch(60), 2)).version
    second = feed.get_feed(1, cursor=first.next_cursor, limit=2)
    third = feed.get_feed(1, cursor=second.next_cursor, limit=2)
    assert [p.post_id for p in second.posts + third.posts] == [1002, 1003, 1004, 1005]
    assert {second.version, third.version} == {v1} and not third.has_more
    fresh = feed.get_feed(1, limit=2)
    assert fresh.version == v2 and [p.post_id for p in fresh.posts] == [2000, 2001]


def test_a_cursor_of_an_expired_version_says_so(tmp_path, redis_url, client):
    settings = serving_settings(tmp_path, redis_url, grace_seconds=0)
    publish(settings, BATCH, _user1(BATCH, 1))
    feed, _, _ = readers(client, settings)
    first = feed.get_feed(1, limit=2)
    publish(settings, batch(60), _user1(batch(60), 2))
    with pytest.raises(CursorExpiredError, match="version 20261101T0000Z.1 has expired; start again"):
        feed.get_feed(1, cursor=first.next_cursor, limit=2)


def test_an_unfollow_disappears_from_the_next_published_feed(sv_settings, client):
    # Batch 1: user 1 follows push author 3 (posts 301, 302) and pull-mode author 9 (post 901); user 2 follows 9 too.
    def batch_frames(batch_id: str, follows_3_and_9: bool):
        timelines = {1: [(101, 1.0)] + ([(301, 4.0), (302, 2.0)] if follows_3_and_9 else []), 2: [(201, 1.0)]}
        pull = {1: [9], 2: [9]} if follows_3_and_9 else {2: [9]}
        return frames(batch_id, timelines=timelines, pull=pull, celebrity={9: [(901, 1)]}, base_scores={901: 3.0})

    publish(sv_settings, BATCH, batch_frames(BATCH, True))
    feed, _, _ = readers(client, sv_settings)
    assert whole_feed(feed, 1)[0] == [301, 901, 302, 101]
    # Batch 2: user 1 unfollowed both (the author left the follow graph); 9 is still a pull-mode author of user 2.
    publish(sv_settings, batch(60), batch_frames(batch(60), False))
    assert whole_feed(feed, 1)[0] == [101]
    assert whole_feed(feed, 2)[0] == [901, 201]


def test_unknown_users_and_nothing_published(sv_settings, client):
    feed, stories, explore = readers(client, sv_settings)
    with pytest.raises(NotPublishedError, match="feed: nothing has been published yet"):
        feed.get_feed(1)
    publish(sv_settings, BATCH, frames(timelines={1: [(101, 1.0)]}))
    with pytest.raises(UnknownUserError, match="user 77 has no feed in version 20261101T0000Z.1"):
        feed.get_feed(77)
    with pytest.raises(NotPublishedError, match="stories"):
        stories.get_ring(1)
    with pytest.raises(ValueError, match="limit must be an integer from 1 to 100"):
        feed.get_feed(1, limit=0)


def test_story_ring_order_and_expiry(sv_settings, client):
    # Viewer 1: author 5 (seen, 9.0, expires in 1 h), 6 (unseen, 1.0, 3 h), 7 (unseen, 2.0, 2 h).
    rings = {1: [(5, 9.0, False, 1.0), (6, 1.0, True, 3.0), (7, 2.0, True, 2.0)]}
    publish(sv_settings, BATCH, frames(timelines={2: [(201, 1.0)]}), group="feed")
    publish(sv_settings, BATCH, frames(rings=rings), group="stories")
    _, stories, _ = readers(client, sv_settings)
    end_ms = int(hours_before(BATCH, 0).timestamp() * 1000)
    ring = stories.get_ring(1, now_ms=end_ms)
    expected = [(7, True, 2.0), (6, True, 1.0), (5, False, 9.0)]
    assert [(e.author_id, e.has_unseen, e.score) for e in ring.ring] == expected
    assert ring.ring[1].expires_at_ms == end_ms + 3 * 3_600_000
    later = stories.get_ring(1, now_ms=end_ms + int(1.5 * 3_600_000))  # author 5's stories have expired
    assert [e.author_id for e in later.ring] == [7, 6]
    assert stories.get_ring(1).ring == ring.ring  # the world's now: just after the batch end
    assert stories.get_ring(2, now_ms=end_ms).ring == []  # known from the feed, no ring
    with pytest.raises(UnknownUserError, match="user 3 has no story ring"):
        stories.get_ring(3)


def test_explore_and_embeddings(sv_settings, client):
    vec = [0.1, -2.5, 3.25, 1e-3]
    publish(sv_settings, BATCH, frames(timelines={1: [(101, 1.0)]}, base_scores={501: 0.0, 502: 0.0}))
    publish(
        sv_settings,
        BATCH,
        frames(explore={1: [(502, 0.9), (501, 0.4), (503, 0.2)]}, user_vectors={1: vec}, item_vectors={502: vec}),
        group="explore",
    )
    _, _, explore = readers(client, sv_settings)
    page = explore.get_explore(1, limit=2)
    assert [(p.post_id, p.score, p.caption) for p in page.posts] == [(502, 0.9, "post 502"), (501, 0.4, "post 501")]
    assert explore.get_explore(1).posts[2].caption is None  # 503: no metadata in the feed version
    assert np.array_equal(explore.user_embedding(1), np.array(vec, dtype=np.float32))
    assert explore.item_embedding(502).dtype == np.float32 and explore.item_embedding(502).shape == (DIM,)
    assert explore.user_embedding(2) is None
    with pytest.raises(UnknownUserError, match="user 2 has no explore candidates"):
        explore.get_explore(2)
