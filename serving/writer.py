"""The only code that writes serving data to Redis: one partition of records per call, pipelined.

:func:`write_partition` and :func:`check_partition` are module-level and take only picklable arguments, so Spark's
``foreachPartition`` / ``mapPartitions`` run them on the executors and the in-memory path runs the very same
functions in its writer processes. Each uses its process's connection for the URL (``redis://``, ``rediss://`` for
TLS, password in the URL) and writes ``pipeline_keys`` keys per round trip without MULTI (the version is not current
yet, so no reader can see a key half-written).

A bad record (:class:`ServingInputError` from a builder) stops its partition and is reported back as a problem,
not raised: on Spark an executor exception arrives as a wall of JVM stack; the publisher raises the problem itself,
with the builder's message. Redis errors (connection lost, OOM) do raise, and fail the publish.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from serving.errors import ServingInputError
from serving.payloads import SIZE_COMMAND, BuildContext, build, expected_keys
from serving.transport import PipelinedSender

MAX_REPORTED = 10  # problems and mismatches carried back per partition


def connect(url: str, *, cluster: bool = False, **kwargs: Any):
    """A redis-py client for ``url`` (a Redis Cluster client when ``cluster``); password and TLS come from the URL
    (``rediss://:pw@host:port/0?ssl_ca_certs=/path/ca.crt``)."""
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def connect_async(url: str, *, cluster: bool = False, **kwargs: Any):
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **kwargs)
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, **kwargs)


_CLIENTS: dict[tuple[int, str, bool], Any] = {}


def partition_client(url: str, cluster: bool):
    """One client per process and URL, reused by the partitions a process runs (Spark reuses its Python workers;
    the in-memory path's writer processes run many partitions). Keyed by pid: a forked child never uses its
    parent's sockets."""
    key = (os.getpid(), url, cluster)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = connect(url, cluster=cluster)
    return client


@dataclass(frozen=True)
class WriteSpec:
    """One family of one version, as the executors need it."""

    redis_url: str
    cluster: bool
    family: str
    ctx: BuildContext
    pipeline_keys: int


@dataclass
class PartitionResult:
    records: int = 0  # records written
    commands: int = 0
    problems: list[str] = field(default_factory=list)

    def merge(self, other: PartitionResult) -> PartitionResult:
        self.records += other.records
        self.commands += other.commands
        self.problems.extend(other.problems[: MAX_REPORTED - len(self.problems)])
        return self


def write_partition(records: Iterable[Any], spec: WriteSpec) -> PartitionResult:
    """Build and write every record of a partition, ``pipeline_keys`` keys per batch; stop at the first bad record
    (reported, not raised)."""
    out = PartitionResult()
    sender = PipelinedSender(partition_client(spec.redis_url, spec.cluster))
    pending: list[tuple[Any, ...]] = []
    keys = 0
    for record in records:
        try:
            commands = build(spec.family, tuple(record), spec.ctx)
        except ServingInputError as e:
            out.problems.append(str(e))
            break
        pending.extend(commands)
        out.commands += len(commands)
        out.records += 1
        keys += 1
        if keys >= spec.pipeline_keys:
            sender.send(pending)
            pending, keys = [], 0
    sender.send(pending)
    sender.finish()
    return out


def spark_write_partition(rows: Iterable[Any], spec: WriteSpec, written, problems) -> None:
    """``foreachPartition`` body: :func:`write_partition`, its counts into Spark accumulators."""
    result = write_partition(rows, spec)
    written.add(result.records)
    if result.problems:
        problems.add(result.problems)


@dataclass
class CheckResult:
    """A partition's keys against what Redis holds: existence, size (members, fields, bytes) and TTL."""

    records: int = 0  # records checked
    primary_members: int = 0  # sizes of each record's first key (a grouped family: the source's rows)
    keys_expected: int = 0
    keys_found: int = 0
    members_expected: int = 0
    members_found: int = 0
    mismatches: list[str] = field(default_factory=list)

    def merge(self, other: CheckResult) -> CheckResult:
        self.records += other.records
        self.primary_members += other.primary_members
        self.keys_expected += other.keys_expected
        self.keys_found += other.keys_found
        self.members_expected += other.members_expected
        self.members_found += other.members_found
        self.mismatches.extend(other.mismatches[: MAX_REPORTED - len(self.mismatches)])
        return self

    @property
    def mismatched(self) -> bool:
        return bool(self.mismatches)


def check_partition(records: Iterable[Any], spec: WriteSpec, batch: int = 1000) -> CheckResult:
    """Size (and TTL where one is due) of every key the partition's records must have written."""
    out = CheckResult()
    client = partition_client(spec.redis_url, spec.cluster)
    expected = []
    for record in records:
        keys = expected_keys(spec.family, tuple(record), spec.ctx)
        out.records += 1
        out.primary_members += keys[0].size
        expected.extend(keys)
        if len(expected) >= batch:
            _check(client, expected, out)
            expected = []
    if expected:
        _check(client, expected, out)
    return out


def spark_check_partition(rows: Iterable[Any], spec: WriteSpec) -> list[CheckResult]:
    return [check_partition(rows, spec)]


def _check(client, expected, out: CheckResult) -> None:
    pipe = client.pipeline(transaction=False)
    for e in expected:
        pipe.execute_command(SIZE_COMMAND[e.kind], e.key)
        if e.ttl:
            pipe.execute_command("PTTL", e.key)
    replies = iter(pipe.execute(raise_on_error=False))
    for e in expected:
        size = next(replies)
        ttl = next(replies) if e.ttl else None
        out.keys_expected += 1
        out.members_expected += e.size
        if isinstance(size, Exception):
            problem = f"{e.key}: {SIZE_COMMAND[e.kind]} failed ({size}); expected a {e.kind} of size {e.size}"
        else:
            out.keys_found += int(size > 0)
            out.members_found += int(size)
            if size == 0:
                problem = f"{e.key}: missing; expected a {e.kind} of size {e.size}"
            elif size != e.size:
                problem = f"{e.key}: {e.kind} of size {size}; expected {e.size}"
            elif e.ttl and not (isinstance(ttl, int) and ttl > 0):
                problem = f"{e.key}: PTTL {ttl}; expected a TTL (the ring expires with its last story)"
            else:
                continue
        if len(out.mismatches) < MAX_REPORTED:
            out.mismatches.append(problem)
