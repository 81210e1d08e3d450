"""Payload builders (pure): one record of a serving table family -> the Redis commands that write it, the keys and
sizes verification expects, and the canonical content a sampled checksum compares.

A record is a positional tuple, the same whichever source produced it (Spark rows or in-memory frames), in the
order of :data:`FAMILIES` ``columns``: the family's key, then for a grouped family one list per member column (the
members of that key), for a one-row family the row's values. Timestamps arrive as epoch milliseconds (``*_ms``).
Sources hand grouped members sorted by ``sort`` descending: Redis inserts an 800-member ZADD about twice as fast when
the scores come in descending order (bench/publish).

Every builder validates what it writes and raises :class:`ServingInputError` naming the family (the serving table),
the key and what was expected; nothing is written for a bad record.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np

from serving.errors import ServingInputError
from serving.keys import (
    FAMILY_GROUP,
    KeySpace,
    celebrity_posts_key,
    celebrity_recent_key,
    explore_key,
    fanout_config_key,
    item_embedding_key,
    post_key,
    pull_authors_key,
    story_ring_authors_key,
    story_ring_key,
    timeline_key,
    user_embedding_key,
)

Kind = Literal["zset", "set", "hash", "string"]
Command = tuple[Any, ...]


@dataclass(frozen=True)
class Family:
    """How one serving table becomes Redis keys."""

    name: str  # the serving table (serving.<name>)
    key: str | None  # the grouping column; None: exactly one row per batch
    columns: tuple[str, ...]  # record layout after the key (member lists, or the row's values)
    grouped: bool  # one key per distinct ``key`` with a list per column, else one key per row
    sort: tuple[str, ...] = ()  # member order (descending) a source should deliver
    kind: Kind = "zset"
    # (family, column joined on, column): a column the source looks up in another family of the batch (left join)
    lookup: tuple[str, str, str] | None = None

    @property
    def table(self) -> str:
        return f"serving.{self.name}"

    @property
    def group(self) -> str:
        return FAMILY_GROUP[self.name]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("feed_timelines", "user_id", ("score", "post_id"), True, ("score", "post_id"), "zset"),
        Family(
            "celebrity_posts",
            "author_id",
            ("created_ms", "post_id", "base_score"),
            True,
            ("created_ms", "post_id"),
            "zset",
            lookup=("post_meta", "post_id", "base_score"),
        ),
        Family("pull_authors", "user_id", ("author_id",), True, ("author_id",), "set"),
        Family(
            "post_meta",
            "post_id",
            ("author_id", "created_ms", "caption", "media_count", "like_count", "comment_count", "base_score"),
            False,
            kind="hash",
        ),
        Family("fanout_config", None, ("policy_version", "policy", "threshold", "computed_ms"), False, kind="hash"),
        Family(
            "story_rings",
            "viewer_id",
            ("unseen", "score", "author_id", "expires_ms"),
            True,
            ("unseen", "score", "author_id"),
            "zset",
        ),
        Family("explore_candidates", "user_id", ("score", "post_id"), True, ("score", "post_id"), "zset"),
        Family("user_embeddings", "user_id", ("model_version", "embedding"), False, kind="string"),
        Family("item_embeddings", "post_id", ("model_version", "embedding"), False, kind="string"),
    )
}
# The family whose rows prove the batch exists: a group with none of them has no batch to publish.
ANCHORS = {"feed": "feed_timelines", "stories": "story_rings", "explore": "explore_candidates"}
# Timestamp columns the sources turn into epoch milliseconds: record column -> table column.
MILLIS_COLUMNS = {"created_ms": "created_at", "expires_ms": "expires_at", "computed_ms": "computed_at"}


@dataclass(frozen=True)
class BuildContext:
    """What the builders need besides the record; picklable (it travels to the Spark executors)."""

    keys: KeySpace
    version: str
    batch_end_ms: int
    timeline_cap: int
    embedding_dim: int
    pull_window_ms: int = 24 * 3_600_000
    posts_per_pull_author: int = 5
    hex_scores: bool = False  # float scores as float.hex literals (exact; Redis parses them with strtod)

    def key(self, family: str, logical: str) -> str:
        return self.keys.data(FAMILY_GROUP[family], self.version, logical)


@dataclass(frozen=True)
class ExpectedKey:
    """A key verification expects: its type and its size (members, fields, or bytes)."""

    key: str
    kind: Kind
    size: int
    ttl: bool = False


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown serving family {name!r}; known: {', '.join(FAMILIES)}") from None


# --- validation helpers ---------------------------------------------------------------------------------------------


def _bad(fam: str, key: str, what: str) -> ServingInputError:
    return ServingInputError(f"serving.{fam}: key {key}: {what}")


def _check_finite(fam: str, key: str, column: str, values: Sequence[float], members: Sequence[Any]) -> None:
    """Every value a finite float; the fast path is one sum (NaN and inf propagate through it)."""
    if None in values:  # one C-level scan
        i = next(i for i, v in enumerate(values) if v is None)
        raise _bad(fam, key, f"{column} of member {members[i]} is null; expected a finite number")
    try:
        if math.isfinite(sum(values)):
            return
    except OverflowError:  # ints beyond a double's range: found below
        pass
    for v, m in zip(values, members, strict=True):
        if not math.isfinite(v):
            raise _bad(fam, key, f"{column} of member {m} is {v!r}; expected a finite number")


def _check_unique(fam: str, key: str, column: str, members: Sequence[Any]) -> None:
    if len(set(members)) != len(members):
        seen: set[Any] = set()
        dup = next(m for m in members if m in seen or seen.add(m))
        raise _bad(fam, key, f"{column} {dup} appears twice; expected each once")


def _check_not_null(fam: str, key: str, row: dict[str, Any], columns: Iterable[str]) -> None:
    for c in columns:
        v = row[c]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise _bad(fam, key, f"{c} is null; expected a value (NOT NULL in the table)")


def _zadd_args(scores: Sequence[Any], members: Sequence[Any], hex_scores: bool = False) -> list[Any]:
    """ZADD's score/member pairs as the strings Redis receives: a float as its round-trip repr (or, with
    ``hex_scores``, its exact hex literal, about three times cheaper to format), an int in decimal (formatted here
    once, in C-level maps: the formatting is most of a timeline's client-side cost)."""
    try:
        texts = list(map(float.hex if hex_scores else float.__repr__, scores))
    except TypeError:  # ints (epoch ms) or a mix
        texts = [repr(float(v)) if isinstance(v, float) else str(v) for v in scores]
    args: list[Any] = [None] * (2 * len(scores))
    args[0::2] = texts
    args[1::2] = map(str, members)
    return args


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ``YYYY-MM-DDTHH:MM:SS.fffZ`` (UTC)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- builders -------------------------------------------------------------------------------------------------------


def _zset_of_scores(fam: str, logical: str, record: tuple, ctx: BuildContext, cap: int | None) -> list[Command]:
    key_id, scores, members = record
    key = ctx.key(fam, logical)
    if not members:
        raise _bad(fam, key, "no members; expected at least one")
    if cap is not None and len(members) > cap:
        raise _bad(fam, key, f"{len(members)} entries; expected at most {cap} (serving.timeline_cap)")
    _check_finite(fam, key, FAMILIES[fam].columns[0], scores, members)
    _check_unique(fam, key, FAMILIES[fam].columns[1], members)
    return [("ZADD", key, *_zadd_args(scores, members, ctx.hex_scores))]


def build_timeline(record: tuple, ctx: BuildContext) -> list[Command]:
    """``timeline:{user_id}``: post ids scored by the user's value score (higher first), at most the cap."""
    return _zset_of_scores("feed_timelines", timeline_key(record[0]), record, ctx, ctx.timeline_cap)


def merge_candidates(record: tuple, ctx: BuildContext) -> tuple[list[float], list[int]]:
    """(base scores, post ids) of a pull-mode author's merge candidates: of its posts (the record's, newest first),
    the ``posts_per_pull_author`` latest created in (batch end - pull window, batch end], as the seed's read takes
    them, less those without a base score (no metadata: they cannot be ranked)."""
    _, created, posts, bases = record
    lo, hi = ctx.batch_end_ms - ctx.pull_window_ms, ctx.batch_end_ms
    latest = [(p, b) for c, p, b in zip(created, posts, bases, strict=True) if lo < c <= hi]
    latest = latest[: ctx.posts_per_pull_author]
    ranked = [(p, b) for p, b in latest if b is not None and math.isfinite(b)]
    return [float(b) for _, b in ranked], [p for p, _ in ranked]


def build_celebrity_posts(record: tuple, ctx: BuildContext) -> list[Command]:
    """``celebrity:{author_id}:posts``: a pull-mode author's recent post ids scored by created_at (epoch ms); and
    ``celebrity:{author_id}:recent``, its merge candidates scored by base_score (:func:`merge_candidates`), so a
    feed read gets them in one command per author instead of one per post."""
    author, created, posts, _ = record
    commands = _zset_of_scores("celebrity_posts", celebrity_posts_key(author), (author, created, posts), ctx, None)
    scores, ids = merge_candidates(record, ctx)
    if ids:
        recent_key = ctx.key("celebrity_posts", celebrity_recent_key(author))
        commands.append(("ZADD", recent_key, *_zadd_args(scores, ids, ctx.hex_scores)))
    return commands


def build_explore(record: tuple, ctx: BuildContext) -> list[Command]:
    """``explore:{user_id}``: candidate post ids scored by the ranker's value score."""
    return _zset_of_scores("explore_candidates", explore_key(record[0]), record, ctx, None)


def build_pull_authors(record: tuple, ctx: BuildContext) -> list[Command]:
    """``user:{user_id}:pull_authors``: the followed pull-mode authors merged at read time."""
    user_id, authors = record
    key = ctx.key("pull_authors", pull_authors_key(user_id))
    if not authors or any(a is None for a in authors):
        raise _bad("pull_authors", key, f"authors {authors!r}; expected one or more author ids")
    _check_unique("pull_authors", key, "author_id", authors)
    return [("SADD", key, *authors)]


POST_META_FIELDS = ("author_id", "created_at", "caption", "media_count", "like_count", "comment_count", "base_score")


def build_post_meta(record: tuple, ctx: BuildContext) -> list[Command]:
    """``post:{post_id}``: the metadata the feed shows; created_at in epoch ms, base_score as a round-trip float,
    no ``caption`` field when the caption is null."""
    post_id = record[0]
    row = dict(zip(FAMILIES["post_meta"].columns, record[1:], strict=True))
    key = ctx.key("post_meta", post_key(post_id))
    _check_not_null("post_meta", key, row, ("author_id", "created_ms", "media_count", "like_count", "comment_count"))
    _check_finite("post_meta", key, "base_score", [row["base_score"]], [post_id])
    fields: list[Any] = [
        "author_id",
        int(row["author_id"]),
        "created_at",
        int(row["created_ms"]),
        "media_count",
        int(row["media_count"]),
        "like_count",
        int(row["like_count"]),
        "comment_count",
        int(row["comment_count"]),
        "base_score",
        float(row["base_score"]),
    ]
    if row["caption"] is not None:
        fields += ["caption", row["caption"]]
    return [("HSET", key, *fields)]


def build_fanout_config(record: tuple, ctx: BuildContext) -> list[Command]:
    """``config:fanout``: the chosen policy (threshold absent for a policy without one)."""
    row = dict(zip(FAMILIES["fanout_config"].columns, record[1:], strict=True))
    key = ctx.key("fanout_config", fanout_config_key())
    _check_not_null("fanout_config", key, row, ("policy_version", "policy", "computed_ms"))
    fields: list[Any] = [
        "policy_version",
        row["policy_version"],
        "policy",
        row["policy"],
        "computed_at",
        iso_ms(int(row["computed_ms"])),
    ]
    if row["threshold"] is not None:
        fields += ["threshold", int(row["threshold"])]
    return [("HSET", key, *fields)]


def build_story_ring(record: tuple, ctx: BuildContext) -> list[Command]:
    """``story_ring:{viewer_id}``: author ids in ring order (unseen first, then by score, then author id, all
    descending) scored n..1, and ``story_ring:{viewer_id}:authors`` (author -> unseen, score, expires_at ms). Both
    keys expire with the ring's last story: TTL = its expires_at - the batch's end (the world's clock is the batch's,
    so the TTL is relative to the publish)."""
    viewer_id, unseen, scores, authors, expires = record
    key = ctx.key("story_rings", story_ring_key(viewer_id))
    if not authors:
        raise _bad("story_rings", key, "no authors; expected at least one")
    _check_finite("story_rings", key, "score", scores, authors)
    _check_unique("story_rings", key, "author_id", authors)
    if any(e is None for e in expires) or min(expires) <= ctx.batch_end_ms:
        i = next(i for i, e in enumerate(expires) if e is None or e <= ctx.batch_end_ms)
        got = "null" if expires[i] is None else iso_ms(expires[i])
        raise _bad(
            "story_rings",
            key,
            f"author {authors[i]}'s stories expire at {got}; expected after the batch's end {iso_ms(ctx.batch_end_ms)}",
        )
    order = sorted(zip(unseen, scores, authors, expires, strict=True), key=lambda t: (bool(t[0]), t[1], t[2]))
    order.reverse()
    n = len(order)
    ring = _zadd_args(list(range(n, 0, -1)), [a for _, _, a, _ in order])
    info: list[Any] = []
    for u, s, a, e in order:
        info += [a, json.dumps({"unseen": bool(u), "score": float(s), "expires_at": int(e)}, separators=(",", ":"))]
    ttl_ms = max(expires) - ctx.batch_end_ms
    info_key = ctx.key("story_rings", story_ring_authors_key(viewer_id))
    return [("ZADD", key, *ring), ("HSET", info_key, *info), ("PEXPIRE", key, ttl_ms), ("PEXPIRE", info_key, ttl_ms)]


def _embedding(fam: str, logical: str, record: tuple, ctx: BuildContext) -> list[Command]:
    key_id, model_version, vector = record
    key = ctx.key(fam, logical)
    if vector is None or len(vector) != ctx.embedding_dim:
        got = "null" if vector is None else f"{len(vector)} floats"
        raise _bad(fam, key, f"embedding of {got}; expected {ctx.embedding_dim} (two_tower.output_dim)")
    arr = np.asarray(vector, dtype="<f4")
    if not np.isfinite(arr).all():
        raise _bad(fam, key, f"embedding has a non-finite value at index {int(np.argmin(np.isfinite(arr)))}")
    return [("SET", key, arr.tobytes())]


def build_user_embedding(record: tuple, ctx: BuildContext) -> list[Command]:
    """``emb:user:{user_id}``: the user tower's vector as little-endian float32 bytes."""
    return _embedding("user_embeddings", user_embedding_key(record[0]), record, ctx)


def build_item_embedding(record: tuple, ctx: BuildContext) -> list[Command]:
    """``emb:item:{post_id}``: the item tower's vector as little-endian float32 bytes."""
    return _embedding("item_embeddings", item_embedding_key(record[0]), record, ctx)


BUILDERS = {
    "feed_timelines": build_timeline,
    "celebrity_posts": build_celebrity_posts,
    "pull_authors": build_pull_authors,
    "post_meta": build_post_meta,
    "fanout_config": build_fanout_config,
    "story_rings": build_story_ring,
    "explore_candidates": build_explore,
    "user_embeddings": build_user_embedding,
    "item_embeddings": build_item_embedding,
}


def build(fam: str, record: tuple, ctx: BuildContext) -> list[Command]:
    return BUILDERS[fam](record, ctx)


# --- what verification expects --------------------------------------------------------------------------------------


def expected_keys(fam: str, record: tuple, ctx: BuildContext) -> list[ExpectedKey]:
    """The keys one record writes and their sizes, without building the payload (cheap, for every key)."""
    key_id = record[0]
    if fam == "feed_timelines":
        return [ExpectedKey(ctx.key(fam, timeline_key(key_id)), "zset", len(record[2]))]
    if fam == "celebrity_posts":
        out = [ExpectedKey(ctx.key(fam, celebrity_posts_key(key_id)), "zset", len(record[2]))]
        n = len(merge_candidates(record, ctx)[1])
        return out + ([ExpectedKey(ctx.key(fam, celebrity_recent_key(key_id)), "zset", n)] if n else [])
    if fam == "explore_candidates":
        return [ExpectedKey(ctx.key(fam, explore_key(key_id)), "zset", len(record[2]))]
    if fam == "pull_authors":
        return [ExpectedKey(ctx.key(fam, pull_authors_key(key_id)), "set", len(record[1]))]
    if fam == "post_meta":
        caption = record[1 + FAMILIES["post_meta"].columns.index("caption")]
        return [ExpectedKey(ctx.key(fam, post_key(key_id)), "hash", 6 + (caption is not None))]
    if fam == "fanout_config":
        threshold = record[1 + FAMILIES["fanout_config"].columns.index("threshold")]
        return [ExpectedKey(ctx.key(fam, fanout_config_key()), "hash", 3 + (threshold is not None))]
    if fam == "story_rings":
        n = len(record[3])
        return [
            ExpectedKey(ctx.key(fam, story_ring_key(key_id)), "zset", n, ttl=True),
            ExpectedKey(ctx.key(fam, story_ring_authors_key(key_id)), "hash", n, ttl=True),
        ]
    if fam == "user_embeddings":
        return [ExpectedKey(ctx.key(fam, user_embedding_key(key_id)), "string", 4 * ctx.embedding_dim)]
    if fam == "item_embeddings":
        return [ExpectedKey(ctx.key(fam, item_embedding_key(key_id)), "string", 4 * ctx.embedding_dim)]
    raise ValueError(f"unknown serving family {fam!r}")


SIZE_COMMAND: dict[Kind, str] = {"zset": "ZCARD", "set": "SCARD", "hash": "HLEN", "string": "STRLEN"}
READ_COMMAND: dict[Kind, tuple[str, ...]] = {
    "zset": ("ZRANGE", "{key}", "0", "-1", "WITHSCORES"),
    "set": ("SMEMBERS", "{key}"),
    "hash": ("HGETALL", "{key}"),
    "string": ("GET", "{key}"),
}


def _b(value: Any) -> bytes:
    """A command argument as Redis stores it (floats as their round-trip repr, like redis-py and hiredis)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


def _score(value: Any) -> float:
    """A ZADD score argument as the double Redis stores: a number, its decimal text, or a hex literal."""
    if isinstance(value, str) and "x" in value:
        return float.fromhex(value)
    return float(value)


def _bytes_list(values: Sequence[Any]) -> list[bytes]:
    try:
        return list(map(str.encode, values))  # the builders' strings: one C-level pass
    except TypeError:
        return [_b(v) for v in values]


def canonical_of_commands(commands: Iterable[Command]) -> dict[str, tuple]:
    """What Redis must hold after ``commands`` on fresh keys: key -> (kind, content, has_ttl), the content a dict
    (zset: member -> score; hash: field -> value), a frozenset (set) or bytes (string), all in bytes as stored."""
    out: dict[str, list] = {}
    for cmd in commands:
        op, key, args = cmd[0], cmd[1], cmd[2:]
        if op == "ZADD":
            out[key] = ["zset", dict(zip(_bytes_list(args[1::2]), map(_score, args[0::2]), strict=True)), False]
        elif op == "SADD":
            out[key] = ["set", frozenset(_bytes_list(args)), False]
        elif op == "HSET":
            out[key] = ["hash", dict(zip(_bytes_list(args[0::2]), _bytes_list(args[1::2]), strict=True)), False]
        elif op == "SET":
            out[key] = ["string", _b(args[0]), False]
        elif op == "PEXPIRE":
            out[key][2] = True
        else:
            raise ValueError(f"no canonical form for {op}")
    return {k: tuple(v) for k, v in out.items()}


def read_command(kind: Kind, key: str) -> tuple[str, ...]:
    return tuple(key if a == "{key}" else a for a in READ_COMMAND[kind])


def score_pairs(reply: Any) -> list[tuple[bytes, float]]:
    """A WITHSCORES reply as (member, score) pairs, whether the client returned it flat (RESP2 wire, raw) or
    already paired (redis-py 8 pairs it from the command's WITHSCORES)."""
    if not reply:
        return []
    if isinstance(reply[0], list | tuple):
        return [(m, float(s)) for m, s in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


def canonical_of_reply(kind: Kind, reply: Any, pttl: int) -> tuple:
    """(kind, content, has_ttl) from a :func:`read_command` reply and the key's PTTL, as
    :func:`canonical_of_commands` has it."""
    if kind == "zset":
        if reply and isinstance(reply[0], list | tuple):
            content: Any = {m: float(s) for m, s in reply}  # redis-py 8's [member, score] pairs
        else:
            content = dict(zip(reply[0::2], map(float, reply[1::2]), strict=True)) if reply else {}
    elif kind == "set":
        content = frozenset(reply or ())
    elif kind == "hash":
        content = dict(reply) if isinstance(reply, dict) else dict(zip(reply[0::2], reply[1::2], strict=True))
    else:
        content = reply
    return (kind, content, pttl > 0)


def _sorted_content(content: Any) -> Any:
    if isinstance(content, dict):
        return sorted(content.items())
    if isinstance(content, frozenset):
        return sorted(content)
    return content


def checksum(canonical: dict[str, tuple]) -> str:
    """sha256 over the keys' canonical contents in key order (members sorted): equal contents, equal digests."""
    h = hashlib.sha256()
    for key in sorted(canonical):
        kind, content, ttl = canonical[key]
        h.update(pickle.dumps((key, kind, _sorted_content(content), ttl), protocol=4))
    return h.hexdigest()


def expected_encoding(choice: str, length: int, threshold: int | None, cap: int) -> str | None:
    """The OBJECT ENCODING a timeline of ``length`` entries must have under the chosen encoding, or None when it
    cannot be known (a short timeline with the server's threshold unknown). Redis keeps a sorted set a listpack
    while it has at most ``zset-max-listpack-entries`` members."""
    if threshold is not None:
        return "listpack" if length <= threshold else "skiplist"
    if choice == "listpack":
        return "listpack"
    return "skiplist" if length >= cap else None
