"""The atomic, versioned publish of one batch per key-family group: write a new version, verify it, switch the
group's pointer, expire what it replaced. The only writer of serving keys is this module (through
:mod:`serving.writer`'s partition functions).

A publish of group G for batch B (every step is safe to kill; the previous version stays current and whole):

1. refuse a batch older than the current one (the pointer never moves back); a batch that is already current is done
   (``already_current``) unless ``force``;
2. count keys and rows per family in the source (the manifest's expectation); no rows in the group's anchor family
   is a missing batch, an error;
3. ``INCR`` the group's sequence: the version ``B.<seq>`` is new, so no key of it exists yet and no reader knows it;
   its manifest (``state=writing``) records the expectation;
4. write every family from the source's partitions (Spark executors, or writer processes), pipelined;
5. verify: every key the source implies exists with its exact size (members, fields, bytes) and, for story rings, a
   TTL; the totals per family equal the source's counts; a deterministic sample of keys per family has the same
   content as the source (sha256 over the canonical contents); the longest sampled timeline has the chosen
   encoding. Any difference marks the version ``failed`` and raises;
6. switch: one Lua script moves the pointer iff it still names the version this publish saw, the new version is
   ``verified`` and its batch is not older than the current one; it marks the old version ``superseded``;
7. expire: every key of a superseded version gets a TTL of the grace period (plus a minute, so a reader that saw the
   manifest alive finds the keys too; ``PEXPIRE .. LT`` keeps a story's shorter TTL) and its manifest expires
   after the grace period; versions abandoned by a failed or killed publish (older than the current one, never
   current) are deleted at once.

A re-run after a failure restarts the batch under a fresh version; the abandoned one is deleted by step 7 of the
run that succeeds. Two publishers of one group at once are safe (the switch is a compare-and-set) but wasteful.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from serving.errors import (
    ServingConfigError,
    ServingError,
    ServingInputError,
    ServingPublishError,
    ServingVerificationError,
)
from serving.keys import (
    GROUPS,
    KeySpace,
    batch_end_ms,
    check_batch_id,
    check_group,
    make_version,
    parse_version,
    timeline_key,
)
from serving.payloads import (
    ANCHORS,
    FAMILIES,
    BuildContext,
    build,
    canonical_of_commands,
    canonical_of_reply,
    checksum,
    expected_encoding,
    read_command,
)
from serving.sources import BatchSource, FamilyCounts, MemoryBatch, SparkBatch
from serving.writer import WriteSpec, connect

if TYPE_CHECKING:
    from datetime import datetime

    from pyspark.sql import SparkSession

    from darkroom.settings import DarkroomSettings, ServingSettings

KEY_TTL_MARGIN_MS = 60_000  # data keys of a superseded version outlive its manifest by this
SCAN_COUNT = 1000

# KEYS[1] the group's pointer, KEYS[2] the new version's manifest, KEYS[3] the current version's manifest (KEYS[2]
# when there is none). ARGV[1] the new version, ARGV[2] the current version the caller saw ('' for none), ARGV[3] the
# new version's batch id, ARGV[4] now (epoch ms). A version starts with its batch id (14 characters, sorts as text).
SWITCH_LUA = """
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[2] then
  return {'moved', cur}
end
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= 'verified' then
  return {'unverified', state or 'missing'}
end
if cur ~= '' then
  if string.sub(cur, 1, 14) > ARGV[3] then
    return {'older', cur}
  end
  redis.call('HSET', KEYS[3], 'state', 'superseded', 'superseded_at', ARGV[4], 'superseded_by', ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'current', 'current_at', ARGV[4], 'previous', cur)
return {'switched', cur}
"""


@dataclass(frozen=True)
class PublishHooks:
    """Call-backs at the publish's steps, on the driver: for tests that crash it at a chosen point, and progress."""

    after_partition: Callable[[str, int], None] | None = None  # (family, partition); Spark: once per family (-1)
    before_switch: Callable[[str], None] | None = None  # (version), verified
    after_switch: Callable[[str], None] | None = None  # (version), current, before the expiry


@dataclass(frozen=True)
class PublishResult:
    group: str
    batch_id: str
    version: str
    previous: str | None
    state: str  # "current": this run switched the pointer; "already_current": the batch was published before
    expected: dict[str, dict[str, int]] = field(default_factory=dict)
    verified: dict[str, dict[str, Any]] = field(default_factory=dict)
    encoding: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)  # superseded versions given the grace TTL
    removed: list[str] = field(default_factory=list)  # abandoned versions deleted
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.state == "already_current":
            return f"{self.group}: batch {self.batch_id} is already current (version {self.version})"
        keys = sum(v.get("keys", 0) for v in self.verified.values())
        took = sum(self.seconds.values())
        return (
            f"{self.group}: version {self.version} current (was {self.previous or 'none'}), {keys:,} keys verified, "
            f"{took:.1f}s; expiring {self.expired or 'nothing'}, removed {self.removed or 'nothing'}"
        )


def result_dict(result: PublishResult) -> dict[str, Any]:
    """A publish result as plain JSON-able data (an Airflow task's return value, a CLI's --json)."""
    return asdict(result)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPublisher:
    """Publishes batches to the Redis at ``redis_url`` under ``serving`` settings; ``embedding_dim`` is the two-tower
    vectors' width. ``clock`` (epoch seconds) only stamps manifests."""

    def __init__(
        self,
        redis_url: str,
        serving: ServingSettings,
        *,
        embedding_dim: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis_url = redis_url
        self.serving = serving
        self.embedding_dim = embedding_dim
        self.keys = KeySpace(serving.key_prefix)
        self.clock = clock
        self.client = connect(redis_url, cluster=serving.cluster)
        # Sampled zsets come back flat: redis-py would pair up 800 members in Python per timeline.
        self.client.set_response_callback("ZRANGE", lambda response, **options: response)
        self._switch = self.client.register_script(SWITCH_LUA)
        self._hex: bool | None = None

    @classmethod
    def from_settings(cls, settings: DarkroomSettings, redis_url: str | None = None) -> RedisPublisher:
        return cls(redis_url or settings.redis_url, settings.serving, embedding_dim=settings.two_tower.output_dim)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RedisPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def context(self, version: str) -> BuildContext:
        batch_id, _ = parse_version(version)
        return BuildContext(
            keys=self.keys,
            version=version,
            batch_end_ms=batch_end_ms(batch_id),
            timeline_cap=self.serving.timeline_cap,
            embedding_dim=self.embedding_dim,
            pull_window_ms=int(self.serving.pull_window_hours * 3_600_000),
            posts_per_pull_author=self.serving.posts_per_pull_author,
            hex_scores=self.serving.hex_scores and self._server_parses_hex(),
        )

    def _server_parses_hex(self) -> bool:
        """Whether the server takes a hex float score (strtod does; a parser without hex would not): one ZADD to a
        scratch key of the group-independent sequence slot, deleted again; asked once per publisher."""
        if self._hex is None:
            probe = f"{self.keys.sequence('feed')}:hex-probe"
            try:
                self.client.execute_command("ZADD", probe, "0x1.8p+1", "m")
                self._hex = self.client.zscore(probe, "m") == 3.0
            except ResponseError:
                self._hex = False
            finally:
                self.client.delete(probe)
        return self._hex

    def spec(self, family: str, version: str) -> WriteSpec:
        return WriteSpec(
            redis_url=self.redis_url,
            cluster=self.serving.cluster,
            family=family,
            ctx=self.context(version),
            pipeline_keys=self.serving.pipeline_keys,
        )

    # --- the publish ------------------------------------------------------------------------------------------------

    def publish(
        self, source: BatchSource, group: str, *, hooks: PublishHooks | None = None, force: bool = False
    ) -> PublishResult:
        """Publish ``source``'s batch of ``group``; see the module's docstring for the steps and guarantees."""
        check_group(group)
        batch_id = check_batch_id(source.batch_id)
        hooks = hooks or PublishHooks()
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        current = self.current_version(group)
        if current is not None:
            current_batch, _ = parse_version(current)
            if current_batch > batch_id:
                raise ServingPublishError(
                    f"{group}: refusing to publish batch {batch_id}: batch {current_batch} (version {current}) is "
                    "already current and the pointer never moves back to an older batch"
                )
            if current_batch == batch_id and not force:  # done before; finish its expiry if that was cut short
                expired, removed = self.expire_old_versions(group)
                return PublishResult(
                    group, batch_id, current, None, "already_current", expired=expired, removed=removed
                )
        families = GROUPS[group]
        counts = {f: source.counts(f) for f in families}
        self._check_batch(group, batch_id, counts, current)
        threshold = self._preflight(group)
        seconds["count"] = time.perf_counter() - t

        version = make_version(batch_id, int(self.client.incr(self.keys.sequence(group))))
        expected = {f: {"keys": c.records, "rows": c.rows} for f, c in counts.items()}
        self._start_manifest(group, version, batch_id, expected, source.describe())
        try:
            t = time.perf_counter()
            for family in families:
                if counts[family].rows:
                    self._write(source, family, version, hooks)
            seconds["write"] = time.perf_counter() - t
            t = time.perf_counter()
            verified, encoding = self._verify(source, group, version, counts, threshold)
            self._set_manifest(
                group,
                version,
                state="verified",
                verified_at=self._now_ms(),
                verified=json.dumps(verified),
                encoding=json.dumps(encoding),
            )
            seconds["verify"] = time.perf_counter() - t
            if hooks.before_switch is not None:
                hooks.before_switch(version)
            t = time.perf_counter()
            previous = self._switch_pointer(group, version, batch_id, current)
            seconds["switch"] = time.perf_counter() - t
            if hooks.after_switch is not None:
                hooks.after_switch(version)
        except ServingError as e:
            self._fail(group, version, str(e))
            raise
        except Exception as e:
            self._fail(group, version, f"{type(e).__name__}: {e}")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ServingPublishError(
                f"{group}: publish of batch {batch_id} as version {version} failed ({type(e).__name__}: {first}); "
                f"the current version stays {current or 'none'}; a re-run restarts the batch"
            ) from e
        t = time.perf_counter()
        warnings: list[str] = []
        try:
            expired, removed = self.expire_old_versions(group)
        except Exception as e:  # the switch is done; the next publish (or a re-run) finishes the expiry
            expired, removed = [], []
            warnings.append(f"expiry of old versions cut short ({type(e).__name__}: {e}); a re-run finishes it")
        seconds["expire"] = time.perf_counter() - t
        return PublishResult(
            group,
            batch_id,
            version,
            previous or None,
            "current",
            expected,
            verified,
            encoding,
            {k: round(v, 4) for k, v in seconds.items()},
            expired,
            removed,
            warnings,
        )

    def _check_batch(self, group: str, batch_id: str, counts: dict[str, FamilyCounts], current: str | None) -> None:
        stays = f"nothing was written; {group} stays at version {current or 'none'}"
        anchor = ANCHORS[group]
        if counts[anchor].rows == 0:
            raise ServingInputError(
                f"serving.{anchor}: no rows for batch_id {batch_id}; expected the batch its precompute job wrote "
                f"({stays})"
            )
        for family, c in counts.items():
            fam = FAMILIES[family]
            if fam.key is not None and not fam.grouped and c.records != c.rows:
                raise ServingInputError(
                    f"serving.{family}: {c.rows} rows but {c.records} distinct {fam.key} for batch_id {batch_id}; "
                    f"expected one row per {fam.key} ({stays})"
                )
        if group == "feed" and counts["fanout_config"].rows != 1:
            raise ServingInputError(
                f"serving.fanout_config: {counts['fanout_config'].rows} rows for batch_id {batch_id}; expected "
                f"exactly one (the chosen policy) ({stays})"
            )

    def _preflight(self, group: str) -> int | None:
        """The server answers, and its sorted-set threshold agrees with ``serving.timeline_encoding``. Returns the
        threshold (None where CONFIG is not allowed, as on some managed services: the verification still checks
        OBJECT ENCODING)."""
        self.client.ping()
        if group != "feed":
            return None
        import redis

        try:
            reply = self.client.config_get("zset-max-listpack-entries")
        except redis.ResponseError:
            return None
        raw = reply.get("zset-max-listpack-entries") or reply.get(b"zset-max-listpack-entries")
        if raw is None:
            return None
        threshold, cap, choice = int(raw), self.serving.timeline_cap, self.serving.timeline_encoding
        if choice == "listpack" and threshold < cap:
            raise ServingConfigError(
                f"serving.timeline_encoding is listpack but the server's zset-max-listpack-entries is {threshold} < "
                f"serving.timeline_cap {cap}: full timelines would be skiplists; run the online Redis with "
                f"zset-max-listpack-entries >= {cap}, or set serving.timeline_encoding=skiplist"
            )
        if choice == "skiplist" and threshold >= cap:
            raise ServingConfigError(
                f"serving.timeline_encoding is skiplist but the server's zset-max-listpack-entries is {threshold} >= "
                f"serving.timeline_cap {cap}: full timelines would be listpacks; run the online Redis with "
                "zset-max-listpack-entries 128 (the default), or set serving.timeline_encoding=listpack"
            )
        return threshold

    def _write(self, source: BatchSource, family: str, version: str, hooks: PublishHooks) -> None:
        result = source.write(self.spec(family, version), hooks.after_partition)
        if result.problems:
            more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
            raise ServingInputError(
                f"{result.problems[0]}{more}; version {version} was not made current, the current version is untouched"
            )

    def _verify(
        self, source: BatchSource, group: str, version: str, counts: dict[str, FamilyCounts], threshold: int | None
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        problems: list[str] = []
        verified: dict[str, dict[str, Any]] = {}
        encoding: dict[str, Any] | None = None
        ctx = self.context(version)
        for family in GROUPS[group]:
            fam, c = FAMILIES[family], counts[family]
            check = source.check(self.spec(family, version)) if c.rows else None
            keys_found = check.keys_found if check else 0
            members_found = check.members_found if check else 0
            if check is not None:
                problems += [f"serving.{family}: {m}" for m in check.mismatches]
                if check.records != c.records:
                    problems.append(
                        f"serving.{family}: the check covered {check.records} keys; the source counts {c.records}"
                    )
                if fam.grouped and check.primary_members != c.rows:
                    problems.append(
                        f"serving.{family}: the check covered {check.primary_members} members; the source counts "
                        f"{c.rows} rows"
                    )
            sample = source.sample(family, self.serving.verify_sample) if c.rows and self.serving.verify_sample else []
            want: dict[str, tuple] = {}
            for record in sample:
                want.update(canonical_of_commands(build(family, record, ctx)))
            got = self._read_canonical(want)
            if got != want:
                key = next(k for k in sorted(want) if got.get(k) != want[k])
                problems.append(
                    f"serving.{family}: sampled key {key}: Redis holds {_short(got.get(key))}, the source "
                    f"{_short(want[key])}"
                )
            verified[family] = {
                "keys": keys_found,
                "members": members_found,
                "sampled": len(want),
                "checksum": checksum(got)[:16],
            }
            if family == "feed_timelines" and sample:
                encoding = self._check_encoding(ctx, sample, threshold, problems)
        if problems:
            raise ServingVerificationError(
                f"{group}: version {version} failed verification and was not made current: " + "; ".join(problems[:10])
            )
        return verified, encoding

    def _read_canonical(self, want: dict[str, tuple]) -> dict[str, tuple]:
        if not want:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for key, (kind, _, _) in want.items():
            pipe.execute_command(*read_command(kind, key))
            pipe.execute_command("PTTL", key)
        replies = pipe.execute(raise_on_error=False)
        out = {}
        for i, (key, (kind, _, _)) in enumerate(want.items()):
            reply, pttl = replies[2 * i], replies[2 * i + 1]
            failed = isinstance(reply, Exception)
            out[key] = ("error", str(reply), False) if failed else canonical_of_reply(kind, reply, pttl)
        return out

    def _check_encoding(
        self, ctx: BuildContext, sample: Sequence[tuple], threshold: int | None, problems: list[str]
    ) -> dict[str, Any]:
        longest = max(sample, key=lambda r: len(r[2]))
        key = ctx.key("feed_timelines", timeline_key(longest[0]))
        observed = _s(self.client.object("encoding", key))
        n, choice = len(longest[2]), self.serving.timeline_encoding
        want = expected_encoding(choice, n, threshold, self.serving.timeline_cap)
        if want is not None and observed != want:
            problems.append(
                f"serving.feed_timelines: {key} of {n} entries is a {observed}; serving.timeline_encoding={choice} "
                f"expects a {want} (see serving/README.md for the server's zset-max-listpack-entries)"
            )
        return {"choice": choice, "observed": observed, "entries": n, "zset_max_listpack_entries": threshold}

    def _switch_pointer(self, group: str, version: str, batch_id: str, seen: str | None) -> str:
        for _ in range(5):
            old = seen or ""
            keys = [
                self.keys.pointer(group),
                self.keys.manifest(group, version),
                self.keys.manifest(group, old) if old else self.keys.manifest(group, version),
            ]
            outcome, cur = (_s(v) for v in self._switch(keys=keys, args=[version, old, batch_id, self._now_ms()]))
            if outcome == "switched":
                return cur
            if outcome == "moved":  # another publish switched meanwhile: compare against what is current now
                seen = cur or None
                continue
            if outcome == "older":
                raise ServingPublishError(
                    f"{group}: version {version} (batch {batch_id}) not made current: {cur} of a newer batch became "
                    "current meanwhile and the pointer never moves back"
                )
            raise ServingPublishError(f"{group}: version {version} not made current: its manifest is {cur}")
        raise ServingPublishError(f"{group}: the pointer kept moving while switching to {version}")

    # --- manifests --------------------------------------------------------------------------------------------------

    def _start_manifest(
        self, group: str, version: str, batch_id: str, expected: dict[str, Any], source: dict[str, Any]
    ) -> None:
        _, seq = parse_version(version)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(
            self.keys.manifest(group, version),
            mapping={
                "group": group,
                "version": version,
                "batch_id": batch_id,
                "seq": seq,
                "state": "writing",
                "created_at": self._now_ms(),
                "expected": json.dumps(expected),
                "source": json.dumps(source, default=str),
                "writer": f"{socket.gethostname()}:{os.getpid()}",
                "encoding_choice": self.serving.timeline_encoding if group == "feed" else "",
            },
        )
        pipe.zadd(self.keys.versions(group), {version: seq})
        pipe.execute()

    def _set_manifest(self, group: str, version: str, **fields: Any) -> None:
        self.client.hset(self.keys.manifest(group, version), mapping=fields)

    def _fail(self, group: str, version: str, error: str) -> None:
        """Mark the version failed, if Redis still answers (a killed server does not: the state stays writing)."""
        import redis

        try:
            self._set_manifest(group, version, state="failed", failed_at=self._now_ms(), error=error[:2000])
        except redis.RedisError:
            pass

    def current_version(self, group: str) -> str | None:
        raw = self.client.get(self.keys.pointer(group))
        return _s(raw) if raw is not None else None

    def manifest(self, group: str, version: str) -> dict[str, Any]:
        raw = {_s(k): _s(v) for k, v in self.client.hgetall(self.keys.manifest(group, version)).items()}
        for name in ("expected", "verified", "encoding", "source"):
            if raw.get(name):
                raw[name] = json.loads(raw[name])
        return raw

    def versions(self, group: str) -> list[str]:
        return [_s(v) for v in self.client.zrange(self.keys.versions(group), 0, -1)]

    def status(self, groups: Iterable[str] | None = None) -> dict[str, Any]:
        """Per group: the current version, its manifest, and every version still known with its state."""
        out: dict[str, Any] = {}
        for group in groups or GROUPS:
            current = self.current_version(group)
            out[group] = {
                "current": current,
                "manifest": self.manifest(group, current) if current else None,
                "versions": {v: self.manifest(group, v).get("state", "expired") for v in self.versions(group)},
            }
        return out

    # --- expiry -----------------------------------------------------------------------------------------------------

    def expire_old_versions(self, group: str) -> tuple[list[str], list[str]]:
        """Give superseded versions the grace TTL, delete abandoned ones; returns (expired, removed) versions."""
        current = self.current_version(group)
        if current is None:
            return [], []
        cur_order = parse_version(current)
        grace_ms = self.serving.grace_seconds * 1000
        expired, removed = [], []
        for version in self.versions(group):
            if version == current:
                continue
            manifest_key = self.keys.manifest(group, version)
            state = self.client.hget(manifest_key, "state")
            if state is None:  # the manifest expired: so did the keys
                self.client.zrem(self.keys.versions(group), version)
                continue
            state = _s(state)
            if state == "superseded":
                if self.client.hexists(manifest_key, "expires_at"):
                    continue
                if grace_ms == 0:
                    self._delete_version(group, version)
                    removed.append(version)
                    continue
                self._expire_keys(group, version, grace_ms + KEY_TTL_MARGIN_MS)
                pipe = self.client.pipeline(transaction=False)
                pipe.hset(manifest_key, "expires_at", self._now_ms() + grace_ms)
                pipe.pexpire(manifest_key, grace_ms)
                pipe.execute()
                expired.append(version)
            elif parse_version(version) < cur_order:  # writing / verified / failed and older: abandoned
                self._delete_version(group, version)
                removed.append(version)
        return expired, removed

    def _scan_version(self, group: str, version: str):
        return self.client.scan_iter(match=self.keys.data_pattern(group, version), count=SCAN_COUNT)

    def _expire_keys(self, group: str, version: str, ttl_ms: int) -> int:
        return self._each_batch(self._scan_version(group, version), lambda pipe, k: pipe.pexpire(k, ttl_ms, lt=True))

    def _delete_version(self, group: str, version: str) -> None:
        self._each_batch(self._scan_version(group, version), lambda pipe, k: pipe.unlink(k))
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.keys.manifest(group, version))
        pipe.zrem(self.keys.versions(group), version)
        pipe.execute()

    def _each_batch(self, keys: Iterable[Any], op: Callable[[Any, Any], Any]) -> int:
        n = 0
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            op(pipe, key)
            n += 1
            if n % SCAN_COUNT == 0:
                pipe.execute()
        pipe.execute()
        return n


def _short(canonical: Any, width: int = 160) -> str:
    text = "nothing" if canonical is None else repr(canonical)
    return text if len(text) <= width else text[: width - 3] + "..."


# --- entry points ---------------------------------------------------------------------------------------------------


def publish_batch(
    spark: SparkSession,
    settings: DarkroomSettings,
    batch_id: str,
    groups: Sequence[str] | None = None,
    *,
    redis_url: str | None = None,
    hooks: PublishHooks | None = None,
    force: bool = False,
) -> list[PublishResult]:
    """Publish batch ``batch_id`` of the ``serving.*`` Delta tables, group by group (each its own version and
    pointer); stops at the first group that fails (the groups before it stay published)."""
    check_batch_id(batch_id)
    groups = [check_group(g) for g in (groups or GROUPS)]
    source = SparkBatch(spark, settings, batch_id)
    try:
        with RedisPublisher.from_settings(settings, redis_url) as publisher:
            return [publisher.publish(source, g, hooks=hooks, force=force) for g in groups]
    finally:
        source.close()


def publish_frames(
    settings: DarkroomSettings,
    batch_id: str,
    frames: dict[str, Any],
    groups: Sequence[str] | None = None,
    *,
    redis_url: str | None = None,
    hooks: PublishHooks | None = None,
    force: bool = False,
    writers: int | None = None,
) -> list[PublishResult]:
    """Publish a batch given in memory (one pandas DataFrame or pyarrow Table per family, shaped like its table;
    a family without a frame is empty) with the same builders and writer as :func:`publish_batch`. ``groups``
    defaults to the groups whose anchor family has a frame; ``writers`` defaults to ``serving.writers``."""
    check_batch_id(batch_id)
    if groups is None:
        groups = [g for g, anchor in ANCHORS.items() if anchor in frames]
    groups = [check_group(g) for g in groups]
    n = settings.serving.writers if writers is None else writers
    source = MemoryBatch(batch_id, frames, writers=n)
    try:
        with RedisPublisher.from_settings(settings, redis_url) as publisher:
            return [publisher.publish(source, g, hooks=hooks, force=force) for g in groups]
    finally:
        source.close()


def publish_families(settings: DarkroomSettings, *, as_of: datetime, families: list[str]) -> list[dict[str, Any]]:
    """``feed_publish.publish`` / ``two_tower_weekly.publish_explore`` (entry point, ``darkroom.spark_task``): the
    batch of ``as_of`` published for ``families``, verified; one result per family."""
    from darkroom.spark import get_spark
    from serving.keys import batch_id_of

    spark = get_spark(settings, "publish")
    return [result_dict(r) for r in publish_batch(spark, settings, batch_id_of(as_of), families)]
