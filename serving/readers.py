"""The reference readers of the read contract: the hybrid feed, the story ring, Explore.

Each read is a plan of pipelined round trips written once as a generator (it yields the commands of a round trip and
receives their replies), driven by a sync client (``get_*``) or an asyncio one (``aget_*``, the HTTP API). Every
read resolves its group's pointer once and reads only that version's keys, so it never mixes two versions; a
superseded version stays readable for the grace period.

The feed (:meth:`FeedReader.get_feed`), the seed's hybrid read: the user's precomputed timeline (scored by the
user's value score) merged with the recent posts of the user's pull-mode authors: of each author, the
``posts_per_pull_author`` latest posts created in the ``pull_window_hours`` before the version's batch end (the
batch is a snapshot as of that instant, so that is the read's "now"), each scored by its ``base_score`` (the post's
median value score over the viewers it was scored for, so comparable with timeline scores). The publisher derives
those candidates per author (``celebrity:{a}:recent``, from ``celebrity:{a}:posts`` and ``post:{id}``), so a read
costs one command per author rather than one per post. A pull post also in the timeline keeps its timeline entry; one
without metadata cannot be ranked and is left out. Items are ordered by score then post id, both descending; see
:mod:`serving.cursor` for pagination.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.cursor import Cursor, decode_cursor, encode_cursor
from serving.errors import CursorExpiredError, NotPublishedError, UnknownUserError
from serving.keys import (
    KeySpace,
    batch_end_ms,
    celebrity_recent_key,
    explore_key,
    item_embedding_key,
    parse_version,
    post_key,
    pull_authors_key,
    story_ring_authors_key,
    story_ring_key,
    timeline_key,
    user_embedding_key,
)
from serving.payloads import score_pairs
from serving.transport import execute, execute_async

Commands = list[tuple[Any, ...]]
Plan = Generator[Commands, list[Any], Any]
READABLE_STATES = (b"current", b"superseded")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _hash(reply: Any) -> dict[bytes, bytes]:
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[0::2], reply[1::2], strict=True)) if reply else {}


def run_sync(client: Any, plan: Plan) -> Any:
    """Drive a plan with a sync redis-py client: one round trip per step (:func:`serving.transport.execute`)."""
    try:
        commands = next(plan)
        while True:
            commands = plan.send(execute(client, commands))
    except StopIteration as done:
        return done.value


async def run_async(client: Any, plan: Plan) -> Any:
    """Drive a plan with a ``redis.asyncio`` client."""
    try:
        commands = next(plan)
        while True:
            commands = plan.send(await execute_async(client, commands))
    except StopIteration as done:
        return done.value


@dataclass(frozen=True)
class ReaderConfig:
    """What the readers need from ``serving`` settings."""

    key_prefix: str = "sv"
    page_max: int = 100

    @classmethod
    def from_settings(cls, serving: Any) -> ReaderConfig:
        return cls(serving.key_prefix, serving.page_max)


def _check_limit(limit: int, page_max: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= page_max:
        raise ValueError(f"limit must be an integer from 1 to {page_max}, got {limit!r}")


# --- the feed -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedPost:
    post_id: int
    score: float
    source: str  # "timeline" or "pull"
    author_id: int | None = None
    created_at_ms: int | None = None
    caption: str | None = None
    media_count: int | None = None
    like_count: int | None = None
    comment_count: int | None = None


@dataclass(frozen=True)
class FeedPage:
    version: str
    posts: list[FeedPost]
    next_cursor: str | None
    has_more: bool


# Read with HMGET in this order: a flat reply, no per-post dict (a feed read fetches about a hundred posts).
POST_FIELDS = ("author_id", "created_at", "caption", "media_count", "like_count", "comment_count", "base_score")
NO_META = [None] * len(POST_FIELDS)


def _post(post_id: int, score: float, source: str, meta: list[Any], author: int | None = None) -> FeedPost:
    author_id, created_at, caption, media_count, like_count, comment_count, _ = meta
    return FeedPost(
        post_id=post_id,
        score=score,
        source=source,
        author_id=author if author_id is None else int(author_id),
        created_at_ms=_int(created_at),
        caption=None if caption is None else caption.decode("utf-8", "replace"),
        media_count=_int(media_count),
        like_count=_int(like_count),
        comment_count=_int(comment_count),
    )


def _meta_command(keys: KeySpace, version: str, post_id: int) -> tuple[Any, ...]:
    return ("HMGET", keys.data("feed", version, post_key(post_id)), *POST_FIELDS)


def feed_plan(keys: KeySpace, cfg: ReaderConfig, user_id: int, cursor: str | None, limit: int) -> Plan:
    """The hybrid feed read as round trips: the pointer; the timeline after the cursor and the pull authors; each
    author's merge candidates (``celebrity:{a}:recent``, scored by base_score); which of them the timeline holds,
    with the metadata of the page that follows if none does; the metadata still missing if some did (rare)."""
    _check_limit(limit, cfg.page_max)
    after = decode_cursor(cursor, user_id) if cursor else None
    if after is None:
        (pointer,) = yield [("GET", keys.pointer("feed"))]
        if pointer is None:
            raise NotPublishedError("feed: nothing has been published yet")
        version = _s(pointer)
    else:
        version = after.version
    tl = keys.data("feed", version, timeline_key(user_id))
    max_score = "+inf" if after is None else repr(after.score)

    # The timeline's items after the cursor: ZREVRANGEBYSCORE from the cursor's score (inclusive, for ties), more
    # if ties at that score left fewer than a page plus one.
    fetch, first, authors = limit + 1, True, []
    while True:
        commands: Commands = [("ZREVRANGEBYSCORE", tl, max_score, "-inf", "WITHSCORES", "LIMIT", 0, fetch)]
        if first:
            commands.append(("SMEMBERS", keys.data("feed", version, pull_authors_key(user_id))))
            if after is not None:
                commands.append(("HGET", keys.manifest("feed", version), "state"))
        replies = yield commands
        if first:
            if after is not None and replies[2] not in READABLE_STATES:
                raise CursorExpiredError(
                    f"the cursor's version {version} has expired; start again from the first page (no cursor)"
                )
            authors = sorted(int(a) for a in replies[1])
        entries = [(score, int(member)) for member, score in score_pairs(replies[0])]
        timeline = [e for e in entries if after is None or after.is_after(*e)]
        if len(timeline) > limit or len(entries) < fetch:
            break
        fetch, first = fetch * 4, False
    if after is None and not entries and not authors:
        raise UnknownUserError(f"user {user_id} has no feed in version {version} (unknown user, or nothing to show)")

    # (score, post id, source, pull author): timeline items, then pull candidates after the cursor.
    items = [(s, p, "timeline", None) for s, p in timeline[: limit + 1]]
    pull: list[tuple[float, int, str, int]] = []
    if authors:
        replies = yield [
            ("ZREVRANGE", keys.data("feed", version, celebrity_recent_key(a)), 0, -1, "WITHSCORES") for a in authors
        ]
        for a, reply in zip(authors, replies, strict=True):
            candidates = [(s, int(p), "pull", a) for p, s in score_pairs(reply)]
            pull += [it for it in candidates if after is None or after.is_after(it[0], it[1])]

    def page_of(candidates: list) -> list:
        return sorted(candidates, key=lambda it: (it[0], it[1]), reverse=True)[: limit + 1]

    page = page_of(items + pull)
    commands = [_meta_command(keys, version, it[1]) for it in page[:limit]]
    if pull:  # a pull post the timeline also holds keeps its timeline entry
        commands.append(("ZMSCORE", tl, *[it[1] for it in pull]))
    replies = yield commands
    metas = {it[1]: meta for it, meta in zip(page, replies[:limit], strict=False)}
    if pull:
        held = {it[1] for it, score in zip(pull, replies[-1], strict=True) if score is not None}
        if held:
            page = page_of(items + [it for it in pull if it[1] not in held])
            missing = [it[1] for it in page[:limit] if it[1] not in metas]
            if missing:
                replies = yield [_meta_command(keys, version, p) for p in missing]
                metas.update(zip(missing, replies, strict=True))
    has_more = len(page) > limit
    page = page[:limit]
    posts = [_post(p, s, src, metas[p], a) for s, p, src, a in page]
    next_cursor = encode_cursor(Cursor(page[-1][0], page[-1][1], version, user_id)) if has_more else None
    return FeedPage(version, posts, next_cursor, has_more)


class FeedReader:
    """``get_feed`` with a sync redis-py client, ``aget_feed`` with a ``redis.asyncio`` one."""

    def __init__(self, client: Any, cfg: ReaderConfig | None = None) -> None:
        self.client = client
        self.cfg = cfg or ReaderConfig()
        self.keys = KeySpace(self.cfg.key_prefix)

    def get_feed(self, user_id: int, cursor: str | None = None, limit: int = 20) -> FeedPage:
        return run_sync(self.client, feed_plan(self.keys, self.cfg, user_id, cursor, limit))

    async def aget_feed(self, user_id: int, cursor: str | None = None, limit: int = 20) -> FeedPage:
        return await run_async(self.client, feed_plan(self.keys, self.cfg, user_id, cursor, limit))


# --- stories --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RingEntry:
    author_id: int
    has_unseen: bool
    score: float
    expires_at_ms: int


@dataclass(frozen=True)
class StoryRing:
    version: str
    ring: list[RingEntry] = field(default_factory=list)


def story_ring_plan(keys: KeySpace, user_id: int, now_ms: int | None, wall_ms: int) -> Plan:
    """The ring in order, without authors whose stories expired. The world's now is the batch's end plus the time
    since the version became current (``now_ms`` overrides it)."""
    stories, feed = yield [("GET", keys.pointer("stories")), ("GET", keys.pointer("feed"))]
    if stories is None:
        raise NotPublishedError("stories: nothing has been published yet")
    version = _s(stories)
    commands: Commands = [
        ("ZREVRANGE", keys.data("stories", version, story_ring_key(user_id)), 0, -1),
        ("HGETALL", keys.data("stories", version, story_ring_authors_key(user_id))),
        ("HGET", keys.manifest("stories", version), "current_at"),
    ]
    if feed is not None:
        commands += [
            ("EXISTS", keys.data("feed", _s(feed), timeline_key(user_id))),
            ("EXISTS", keys.data("feed", _s(feed), pull_authors_key(user_id))),
        ]
    replies = yield commands
    authors, info = [int(a) for a in replies[0]], _hash(replies[1])
    if not authors and not any(replies[3:]):
        raise UnknownUserError(f"user {user_id} has no story ring in version {version} and no feed (unknown user)")
    if now_ms is None:
        current_at = _int(replies[2])
        now_ms = batch_end_ms(parse_version(version)[0]) + max(0, wall_ms - current_at) if current_at else wall_ms
    ring = []
    for a in authors:
        meta = json.loads(info.get(str(a).encode(), b"{}"))
        if meta and meta["expires_at"] > now_ms:
            ring.append(RingEntry(a, meta["unseen"], meta["score"], meta["expires_at"]))
    return StoryRing(version, ring)


class StoryRingReader:
    def __init__(self, client: Any, cfg: ReaderConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.keys = KeySpace((cfg or ReaderConfig()).key_prefix)
        self.clock = clock

    def get_ring(self, user_id: int, now_ms: int | None = None) -> StoryRing:
        return run_sync(self.client, story_ring_plan(self.keys, user_id, now_ms, int(self.clock() * 1000)))

    async def aget_ring(self, user_id: int, now_ms: int | None = None) -> StoryRing:
        return await run_async(self.client, story_ring_plan(self.keys, user_id, now_ms, int(self.clock() * 1000)))


# --- explore --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplorePage:
    version: str
    posts: list[FeedPost]


def explore_plan(keys: KeySpace, cfg: ReaderConfig, user_id: int, limit: int) -> Plan:
    """The top ``limit`` candidates with the feed version's post metadata (where the feed has it)."""
    _check_limit(limit, cfg.page_max)
    explore, feed = yield [("GET", keys.pointer("explore")), ("GET", keys.pointer("feed"))]
    if explore is None:
        raise NotPublishedError("explore: nothing has been published yet")
    version = _s(explore)
    (reply,) = yield [("ZREVRANGE", keys.data("explore", version, explore_key(user_id)), 0, limit - 1, "WITHSCORES")]
    top = [(int(member), score) for member, score in score_pairs(reply)]
    if not top:
        raise UnknownUserError(f"user {user_id} has no explore candidates in version {version} (unknown user)")
    metas: list[list[Any]] = [NO_META for _ in top]
    if feed is not None:
        metas = yield [_meta_command(keys, _s(feed), p) for p, _ in top]
    return ExplorePage(version, [_post(p, s, "explore", m) for (p, s), m in zip(top, metas, strict=True)])


def vector_plan(keys: KeySpace, logical: str) -> Plan:
    (pointer,) = yield [("GET", keys.pointer("explore"))]
    if pointer is None:
        raise NotPublishedError("explore: nothing has been published yet")
    (raw,) = yield [("GET", keys.data("explore", _s(pointer), logical))]
    return None if raw is None else np.frombuffer(raw, dtype="<f4")


class ExploreReader:
    def __init__(self, client: Any, cfg: ReaderConfig | None = None) -> None:
        self.client = client
        self.cfg = cfg or ReaderConfig()
        self.keys = KeySpace(self.cfg.key_prefix)

    def get_explore(self, user_id: int, limit: int = 20) -> ExplorePage:
        return run_sync(self.client, explore_plan(self.keys, self.cfg, user_id, limit))

    async def aget_explore(self, user_id: int, limit: int = 20) -> ExplorePage:
        return await run_async(self.client, explore_plan(self.keys, self.cfg, user_id, limit))

    def user_embedding(self, user_id: int) -> np.ndarray | None:
        """The current version's user vector (float32), None if it has none."""
        return run_sync(self.client, vector_plan(self.keys, user_embedding_key(user_id)))

    def item_embedding(self, post_id: int) -> np.ndarray | None:
        return run_sync(self.client, vector_plan(self.keys, item_embedding_key(post_id)))
