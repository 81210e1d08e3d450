"""One day of feed traffic replayed through a real Redis under a push/pull policy, counting what the model predicts.

The feed's hybrid fan-out, as the seed runs it:

- a post by a *push* author is written at post time into the timeline of each active follower
  (``ZADD timeline:{u} created_ms post_id``, then ``ZREMRANGEBYRANK timeline:{u} 0 -(cap+1)`` to keep the newest
  ``cap``); a post by a *pull* author goes once into ``celebrity:{a}:posts``;
- a feed read by an active user reads its timeline (``ZREVRANGE timeline:{u} 0 39``) and *merges* each pull author it
  follows (``ZREVRANGEBYSCORE celebrity:{a}:posts now now-window LIMIT 0 limit``), whether or not that author posted:
  the reader cannot know; a read by a user outside the active set is computed on demand and only counted.

:func:`replay_day` runs the day's posts and reads in time order (a post before a read on a tie) and returns
:class:`ReplayCounts`: the writes, merges and stored entries the model predicts, measured, plus throughput. Every key
lives under ``key_prefix``, cleared before the run and (unless ``keep_keys``) after it, so a replay never touches live
keys and a re-run gives the same counts.

Speed: at the ``small`` scale pure pull is ~20M merges. The follow graph (15M+ edges) is deduplicated and indexed once
with numpy on compact ids (pyarrow's hash ``index_in``, one sort of packed (followee, follower) keys), and only the
followers of the day's push authors and the pull followees of the day's active readers are kept. Commands are
pre-encoded RESP built with ``bytes.join`` over per-key chunks (a read's merges are one join, not one Python call
per command), sent on one socket with one batch in flight while the next is built, and the replies are counted
and checked for errors with hiredis. redis-py's pipeline spends several microseconds of Python per command on
packing and reply callbacks, which would cap a replay at roughly 100k commands/s; it is still used for the slow
paths (clearing the prefix, counting entries).
"""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FEED_PAGE = 40  # a feed read's first page: ZREVRANGE timeline 0 39
PROGRESS_EVERY_S = 5.0
POST, READ = 0, 1  # event kinds; a post sorts before a read at the same ms


class ReplayError(RuntimeError):
    """Redis answered a replay command with an error, or the connection broke mid-replay."""


@dataclass(frozen=True)
class ReplayCounts:
    """What one replayed day did to Redis; ``writes``, ``merges`` and ``stored_entries`` are the model's figures."""

    policy: str  # a label, e.g. "threshold", "pure_push", "pure_pull", "per_author"
    posts: int  # posts replayed
    reads: int  # feed reads replayed
    writes: int  # timeline ZADDs: one per (push post, active follower other than the author)
    celebrity_writes: int  # ZADDs into celebrity:{a}:posts: one per pull-author post
    merges: int  # ZREVRANGEBYSCORE calls on celebrity sets made by reads of active users
    timeline_reads: int  # ZREVRANGE timeline calls (one per read of an active user)
    on_demand_reads: int  # reads by users outside the active set: counted only, no commands
    timeline_entries: int  # sum of ZCARD over the replay's timeline keys at the end
    celebrity_entries: int  # sum of ZCARD over the replay's celebrity keys at the end
    redis_commands: int  # every command the events sent (clearing and counting excluded)
    seconds: float  # wall time of the events (input preparation, clearing and counting excluded)
    dropped_edges: int  # input edges dropped as duplicates or self-follows before the replay
    returned_entries: int  # post ids the replies returned to readers (timeline pages plus merges)

    @property
    def stored_entries(self) -> int:
        return self.timeline_entries + self.celebrity_entries

    @property
    def events_per_second(self) -> float:
        return (self.posts + self.reads) / self.seconds if self.seconds > 0 else 0.0

    @property
    def commands_per_second(self) -> float:
        return self.redis_commands / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        """The fields plus the derived figures, JSON-ready."""
        return {
            **asdict(self),
            "stored_entries": self.stored_entries,
            "events_per_second": self.events_per_second,
            "commands_per_second": self.commands_per_second,
        }


# --- keys and payloads (pure) ---------------------------------------------------------------------------------------
def timeline_key(prefix: str, user_id: int) -> str:
    return f"{prefix}:timeline:{user_id}"


def celebrity_key(prefix: str, author_id: int) -> str:
    return f"{prefix}:celebrity:{author_id}:posts"


def _bulk(value: bytes | str | int) -> bytes:
    """One RESP bulk string: ``$<len>\\r\\n<bytes>\\r\\n``."""
    b = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _head(name: bytes, nargs: int) -> bytes:
    """The RESP array header and command name of a command with ``nargs`` arguments after the name."""
    return b"*%d\r\n" % (nargs + 1) + _bulk(name)


_ZADD = _head(b"ZADD", 3)
_ZREMRANGEBYRANK = _head(b"ZREMRANGEBYRANK", 3)
_ZREVRANGE = _head(b"ZREVRANGE", 3)
_ZREVRANGEBYSCORE = _head(b"ZREVRANGEBYSCORE", 6)


@dataclass(frozen=True)
class Payloads:
    """RESP payloads of the replay's commands, built from pre-encoded key chunks (``_bulk(key)``).

    Each builder returns the bytes of several commands at once; ``bytes.join`` does the per-command work in C.
    """

    timeline_cap: int
    pull_window_ms: int
    pull_limit: int

    def push_post(self, timeline_chunks: list[bytes], created_ms: int, post_id: int) -> bytes:
        """ZADD + ZREMRANGEBYRANK into each timeline: 2 commands per chunk."""
        mid = _bulk(created_ms) + _bulk(post_id) + _ZREMRANGEBYRANK
        trim = _bulk(0) + _bulk(-(self.timeline_cap + 1))
        return _ZADD + (trim + _ZADD).join([k + mid + k for k in timeline_chunks]) + trim

    def pull_post(self, celebrity_chunk: bytes, created_ms: int, post_id: int) -> bytes:
        """ZADD into the author's celebrity set: 1 command."""
        return _ZADD + celebrity_chunk + _bulk(created_ms) + _bulk(post_id)

    def read(self, timeline_chunk: bytes, celebrity_chunks: list[bytes], read_ms: int) -> bytes:
        """The timeline page, then one merge per pull followee: 1 + len(celebrity_chunks) commands."""
        page = _ZREVRANGE + timeline_chunk + _bulk(0) + _bulk(FEED_PAGE - 1)
        if not celebrity_chunks:
            return page
        tail = (
            _bulk(read_ms) + _bulk(read_ms - self.pull_window_ms) + _bulk(b"LIMIT") + _bulk(0) + _bulk(self.pull_limit)
        )
        return page + _ZREVRANGEBYSCORE + (tail + _ZREVRANGEBYSCORE).join(celebrity_chunks) + tail


def event_order(posts: pa.Table, reads: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The day's events in replay order: ``(kinds, rows)``, kind ``POST`` (0) or ``READ`` (1), row into its table.

    Sorted by (time, kind, id), id being post_id or user_id: a post comes before a read at the same ms, so a read
    sees every post made up to and including its own ms; full ties keep input order (the sort is stable).
    """
    post_ms = _int64(posts, "created_ms")
    read_ms = _int64(reads, "read_ms")
    times = np.concatenate([post_ms, read_ms])
    kinds = np.concatenate([np.full(len(post_ms), POST, np.int8), np.full(len(read_ms), READ, np.int8)])
    ids = np.concatenate([_int64(posts, "post_id"), _int64(reads, "user_id")])
    rows = np.concatenate([np.arange(len(post_ms), dtype=np.int64), np.arange(len(read_ms), dtype=np.int64)])
    order = np.lexsort((ids, kinds, times))
    return kinds[order], rows[order]


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise ValueError(f"replay input: column {name!r} missing (has {table.column_names})")
    col = table.column(name)
    if not pa.types.is_integer(col.type):
        raise ValueError(f"replay input: column {name!r} must be an integer (int64) column, got {col.type}")
    if col.null_count:
        raise ValueError(f"replay input: column {name!r} has {col.null_count} nulls")
    return col.cast(pa.int64())


def _int64(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(_column(table, name).to_numpy(), dtype=np.int64)


# --- the graph, indexed once ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DayGraph:
    """The part of the follow graph a day needs, on compact ids (``ids[i]`` is the real id of index ``i``).

    ``pushed_to[a]`` is the active followers of push author ``a`` (authors who post that day only);
    ``pull_followees[pull_ptr[u]:pull_ptr[u+1]]`` is active reader ``u``'s pull followees (readers of the day only).
    """

    ids: np.ndarray  # int64, real id by compact index
    is_push: np.ndarray  # bool by compact index
    is_active: np.ndarray  # bool by compact index
    pushed_to: dict[int, np.ndarray]  # posting push author -> its active followers (int32 compact)
    pull_ptr: np.ndarray  # int64 CSR offsets by compact follower index
    pull_followees: np.ndarray  # int32 compact followee indexes, grouped by follower
    post_author: np.ndarray  # int32 compact author of each post row
    read_user: np.ndarray  # int32 compact user of each read row
    dropped_edges: int


def index_day(
    *,
    posts: pa.Table,
    reads: pa.Table,
    edges: pa.Table,
    push_authors: np.ndarray,
    active_users: np.ndarray,
) -> DayGraph:
    """Deduplicate the edges (dropping self-follows) and index what the day's posts and reads touch.

    Ids are made compact with a hash lookup into the set of ids seen (pyarrow ``unique`` + ``index_in``); a
    (followee, follower) pair packs into one int64 whose single sort both finds duplicates and groups followers by
    author. Memory is a few arrays the size of the edge list; no Python object per edge.
    """
    follower, followee = _column(edges, "follower_id"), _column(edges, "followee_id")
    author, reader = _column(posts, "author_id"), _column(reads, "user_id")
    universe = pc.unique(
        pa.chunked_array(follower.chunks + followee.chunks + author.chunks + reader.chunks, type=pa.int64())
    )
    n = len(universe)

    def compact(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
        return np.asarray(pc.index_in(values, value_set=universe).to_numpy(), dtype=np.int32)

    def mask(real_ids: np.ndarray) -> np.ndarray:
        found = pc.drop_null(pc.index_in(pa.array(np.asarray(real_ids, dtype=np.int64)), value_set=universe))
        out = np.zeros(n, dtype=bool)
        out[np.asarray(found.to_numpy(), dtype=np.int64)] = True
        return out

    is_push, is_active = mask(push_authors), mask(active_users)
    post_author, read_user = compact(author), compact(reader)

    fi, ei = compact(follower), compact(followee)
    keys = (ei.astype(np.int64) << 32) | fi.astype(np.int64)
    keys = keys[fi != ei]
    del fi, ei
    keys.sort()
    if len(keys):
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    dropped = len(follower) - len(keys)
    followee_s = (keys >> 32).astype(np.int32)
    follower_s = (keys & 0xFFFFFFFF).astype(np.int32)
    del keys

    # followers of the day's push authors, sorted by followee already
    posting_push = np.unique(post_author[is_push[post_author]])
    lo = np.searchsorted(followee_s, posting_push, side="left")
    hi = np.searchsorted(followee_s, posting_push, side="right")
    pushed_to: dict[int, np.ndarray] = {}
    for a, i, j in zip(posting_push.tolist(), lo.tolist(), hi.tolist(), strict=True):
        fl = follower_s[i:j]
        pushed_to[a] = fl[is_active[fl]]

    # pull followees of the day's active readers, grouped by follower (stable: followee order within a reader)
    is_reader = np.zeros(n, dtype=bool)
    is_reader[read_user] = True
    is_reader &= is_active
    sel = is_reader[follower_s] & ~is_push[followee_s]
    sub_f, sub_e = follower_s[sel], followee_s[sel]
    order = np.argsort(sub_f, kind="stable")
    pull_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(sub_f, minlength=n), out=pull_ptr[1:])
    return DayGraph(
        ids=np.asarray(universe.to_numpy(), dtype=np.int64),
        is_push=is_push,
        is_active=is_active,
        pushed_to=pushed_to,
        pull_ptr=pull_ptr,
        pull_followees=sub_e[order],
        post_author=post_author,
        read_user=read_user,
        dropped_edges=int(dropped),
    )


# --- the wire -------------------------------------------------------------------------------------------------------
class RespPipe:
    """One raw RESP connection for the replay's hot path: payloads out, replies counted and checked with hiredis.

    Non-transactional pipelining with one batch in flight: ``send`` writes a batch, then reads the replies of the
    batch before it, so Redis works on batch k while the caller builds batch k+1. Redis executes one connection's
    commands in the order sent, so the state is the one the event order gives. Redis buffers replies it cannot write
    yet, so writing a batch before reading the previous one's replies cannot deadlock.
    """

    def __init__(self, url: str, *, timeout: float = 120.0) -> None:
        import hiredis
        from redis.connection import parse_url

        kw = parse_url(url)
        if "connection_class" in kw:
            raise ValueError(f"replay: only redis:// and unix:// URLs are supported, got {url!r}")
        if "path" in kw:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(timeout)
            self._sock.connect(kw["path"])
        else:
            self._sock = socket.create_connection((kw.get("host", "localhost"), int(kw.get("port", 6379))), timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = hiredis.Reader()
        self._in_flight: collections.deque[int] = collections.deque()
        self.commands = 0  # commands sent
        self.returned = 0  # total length of the array replies (post ids returned)
        hello = []
        if kw.get("password") is not None:
            user = [kw["username"]] if kw.get("username") else []
            hello.append(b"".join([_head(b"AUTH", 1 + len(user)), *map(_bulk, user), _bulk(kw["password"])]))
        if kw.get("db"):
            hello.append(_head(b"SELECT", 1) + _bulk(int(kw["db"])))
        if hello:
            self.send(b"".join(hello), len(hello))
            self.drain()
            self.commands = 0

    def send(self, payload: bytes, commands: int) -> None:
        self._sock.sendall(payload)
        self.commands += commands
        self._in_flight.append(commands)
        while len(self._in_flight) > 1:
            self._read(self._in_flight.popleft())

    def drain(self) -> None:
        while self._in_flight:
            self._read(self._in_flight.popleft())

    def close(self) -> None:
        self._sock.close()

    def _read(self, n: int) -> None:
        gets, feed, recv = self._reader.gets, self._reader.feed, self._sock.recv
        returned = 0
        while n:
            r = gets()
            if r is False:
                data = recv(1 << 20)
                if not data:
                    raise ReplayError(f"redis closed the connection with {n} replies outstanding")
                feed(data)
                continue
            n -= 1
            t = r.__class__
            if t is list:
                returned += len(r)
            elif t is not int and isinstance(r, Exception):
                raise ReplayError(f"redis replied to a replay command with an error: {r}")
        self.returned += returned


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in s)


def delete_prefix(client, key_prefix: str, batch: int = 10_000) -> int:
    """UNLINK every key under ``key_prefix:`` (SCAN MATCH); returns how many. Other keys are untouched."""
    deleted = 0
    keys: list[bytes] = []
    for key in client.scan_iter(match=_glob_escape(key_prefix) + ":*", count=1000):
        keys.append(key)
        if len(keys) >= batch:
            deleted += client.unlink(*keys)
            keys = []
    if keys:
        deleted += client.unlink(*keys)
    return deleted


def _sum_zcard(client, keys: list[str], batch: int) -> int:
    total = 0
    for i in range(0, len(keys), batch):
        pipe = client.pipeline(transaction=False)
        for k in keys[i : i + batch]:
            pipe.zcard(k)
        total += sum(pipe.execute())
    return total


# --- the replay -----------------------------------------------------------------------------------------------------
def replay_day(
    redis_url: str,
    *,
    posts: pa.Table,
    reads: pa.Table,
    edges: pa.Table,
    push_authors: np.ndarray,
    active_users: np.ndarray,
    policy: str,
    timeline_cap: int = 800,
    pull_window_ms: int = 86_400_000,
    pull_limit: int = 5,
    key_prefix: str = "replay",
    batch: int = 10_000,
    keep_keys: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ReplayCounts:
    """Replay one day of ``posts`` and feed ``reads`` through Redis at ``redis_url`` with ``push_authors`` in push
    mode (everyone else pull) and ``active_users``' timelines maintained; see the module docstring for the commands.

    Inputs: ``posts`` (post_id, author_id, created_ms), ``reads`` (user_id, read_ms), ``edges`` (follower_id,
    followee_id; duplicates and self-follows are dropped and counted). Keys under ``key_prefix`` are deleted first
    and, unless ``keep_keys``, again after counting. ``batch`` is the commands per round trip; ``progress`` gets a
    line about every 5 s.
    """
    import redis

    if timeline_cap < 1 or pull_limit < 1 or pull_window_ms < 0 or batch < 1:
        raise ValueError(
            f"replay: timeline_cap {timeline_cap} and pull_limit {pull_limit} must be >= 1, pull_window_ms "
            f"{pull_window_ms} >= 0, batch {batch} >= 1"
        )
    if not key_prefix:
        raise ValueError("replay: key_prefix must not be empty (it keeps the replay off live keys)")

    # input preparation (not timed)
    kinds, rows = event_order(posts, reads)
    post_ms, post_id = _int64(posts, "created_ms").tolist(), _int64(posts, "post_id").tolist()
    read_ms = _int64(reads, "read_ms").tolist()
    g = index_day(posts=posts, reads=reads, edges=edges, push_authors=push_authors, active_users=active_users)
    ids = g.ids.tolist()
    is_push, is_active = g.is_push.tolist(), g.is_active.tolist()
    post_author, read_user = g.post_author.tolist(), g.read_user.tolist()

    timeline_users = np.unique(np.concatenate([np.empty(0, np.int32), *g.pushed_to.values()]))
    tl_needed = np.union1d(timeline_users, g.read_user[g.is_active[g.read_user]]).tolist()
    tl_chunk: dict[int, bytes] = {i: _bulk(timeline_key(key_prefix, ids[i])) for i in tl_needed}
    pushed_to = {a: [tl_chunk[u] for u in fl.tolist()] for a, fl in g.pushed_to.items()}
    pull_posters = np.unique(g.post_author[~g.is_push[g.post_author]])
    cel_needed = np.union1d(np.unique(g.pull_followees), pull_posters)
    cel_chunk = np.empty(len(ids), dtype=object)
    cel_chunk[cel_needed] = [_bulk(celebrity_key(key_prefix, ids[i])) for i in cel_needed.tolist()]
    pull_ptr, pull_followees = g.pull_ptr, g.pull_followees
    merges_of: dict[int, list[bytes]] = {}
    payloads = Payloads(timeline_cap=timeline_cap, pull_window_ms=pull_window_ms, pull_limit=pull_limit)

    client = redis.Redis.from_url(redis_url)
    pipe = None
    try:
        delete_prefix(client, key_prefix, batch)
        pipe = RespPipe(redis_url)
        writes = celebrity_writes = merges = timeline_reads = on_demand = 0
        buf: list[bytes] = []
        pending = 0
        total = len(kinds)
        started = last_report = time.perf_counter()

        def flush() -> None:
            nonlocal buf, pending, last_report
            pipe.send(b"".join(buf), pending)
            buf, pending = [], 0
            now = time.perf_counter()
            if progress is not None and now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                progress(
                    f"[replay {policy}] {done:,}/{total:,} events, {done / (now - started):,.0f} events/s, "
                    f"{writes:,} writes, {merges:,} merges"
                )

        done = 0
        for kind, row in zip(kinds.tolist(), rows.tolist(), strict=True):
            done += 1
            if kind == POST:
                a = post_author[row]
                if is_push[a]:
                    followers = pushed_to[a]
                    for i in range(0, len(followers), batch):  # a big author's fan-out, split into round trips
                        part = followers[i : i + batch]
                        buf.append(payloads.push_post(part, post_ms[row], post_id[row]))
                        pending += 2 * len(part)
                        writes += len(part)
                        if pending >= batch:
                            flush()
                else:
                    buf.append(payloads.pull_post(cel_chunk[a], post_ms[row], post_id[row]))
                    pending += 1
                    celebrity_writes += 1
            else:
                u = read_user[row]
                if not is_active[u]:
                    on_demand += 1
                    continue
                chunks = merges_of.get(u)
                if chunks is None:
                    chunks = merges_of[u] = cel_chunk[pull_followees[pull_ptr[u] : pull_ptr[u + 1]]].tolist()
                buf.append(payloads.read(tl_chunk[u], chunks, read_ms[row]))
                pending += 1 + len(chunks)
                timeline_reads += 1
                merges += len(chunks)
            if pending >= batch:
                flush()
        if buf:
            pipe.send(b"".join(buf), pending)
        pipe.drain()
        seconds = time.perf_counter() - started

        timeline_entries = _sum_zcard(
            client, [timeline_key(key_prefix, ids[u]) for u in timeline_users.tolist()], batch
        )
        celebrity_entries = _sum_zcard(
            client, [celebrity_key(key_prefix, ids[a]) for a in pull_posters.tolist()], batch
        )
        if not keep_keys:
            delete_prefix(client, key_prefix, batch)
    finally:
        if pipe is not None:
            pipe.close()
        client.close()

    counts = ReplayCounts(
        policy=policy,
        posts=posts.num_rows,
        reads=reads.num_rows,
        writes=writes,
        celebrity_writes=celebrity_writes,
        merges=merges,
        timeline_reads=timeline_reads,
        on_demand_reads=on_demand,
        timeline_entries=timeline_entries,
        celebrity_entries=celebrity_entries,
        redis_commands=pipe.commands,
        seconds=seconds,
        dropped_edges=g.dropped_edges,
        returned_entries=pipe.returned,
    )
    if progress is not None:
        progress(
            f"[replay {policy}] done: {counts.posts + counts.reads:,} events in {seconds:,.1f} s "
            f"({counts.events_per_second:,.0f} events/s, {counts.commands_per_second:,.0f} commands/s), "
            f"{writes:,} writes, {merges:,} merges, {counts.stored_entries:,} stored entries"
        )
    return counts
