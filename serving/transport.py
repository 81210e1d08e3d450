"""Round trips to Redis without redis-py's per-command cost: commands packed by hiredis in one call, written on one
pooled connection, replies read straight from the connection's parser (RESP2 as the server sends it, no response
callbacks). redis-py's pipeline inspects every argument and runs a callback per reply in Python, which is most of
the client's time for an 800-member ZADD or a feed read's sixty small commands.

A Redis Cluster client (no ``connection_pool``: one pool per node) or a missing hiredis falls back to redis-py's
non-transactional pipeline, which routes each command to its slot's node; the callers accept both reply shapes.
No retries: a failed round trip raises (the connection is dropped, its unread replies with it).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import redis
from redis.utils import HIREDIS_AVAILABLE

if HIREDIS_AVAILABLE:
    import hiredis

Command = tuple[Any, ...]


def _fast(client: Any) -> bool:
    return HIREDIS_AVAILABLE and getattr(client, "connection_pool", None) is not None


def _packed(commands: Sequence[Command]) -> list[bytes]:
    return [b"".join(map(hiredis.pack_command, commands))]


def execute(client: Any, commands: Sequence[Command]) -> list[Any]:
    """One round trip with a sync client: every reply in order; an error reply raises after all are read."""
    if not _fast(client):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute()
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(_packed(commands))
        replies, error = [], None
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as e:
                error = error or e
                replies.append(e)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    if error is not None:
        raise error
    return replies


async def execute_async(client: Any, commands: Sequence[Command]) -> list[Any]:
    """:func:`execute` with a ``redis.asyncio`` client."""
    if not _fast(client):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(_packed(commands))
        replies, error = [], None
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except redis.ResponseError as e:
                error = error or e
                replies.append(e)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    if error is not None:
        raise error
    return replies


class PipelinedSender:
    """Sends batches of commands on one connection without waiting for the previous batch's replies, so the client
    builds batch n+1 while the server executes batch n (at most two batches in flight); raises the first error reply.

    On a single server the commands are packed by hiredis and written on one pooled connection: redis-py's pipeline
    inspects every argument in Python first, which costs about as much as the packing of an 800-member ZADD. A
    cluster client (or no hiredis) keeps redis-py's pipeline, one batch at a time (it routes each command to its
    slot's node). No retries: a failed round trip fails its partition (Spark retries the task; writes into a version
    that is not current yet are idempotent)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.fast = _fast(client)
        self._conn: Any = None
        self._in_flight: collections.deque[int] = collections.deque()

    def send(self, commands: list[tuple[Any, ...]]) -> None:
        if not commands:
            return
        if not self.fast:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            pipe.execute()
            return
        if self._conn is None:
            self._conn = self.client.connection_pool.get_connection()
        try:
            self._conn.send_packed_command(_packed(commands))
            self._in_flight.append(len(commands))
            while len(self._in_flight) > 1:
                self._read(self._in_flight.popleft())
        except BaseException:
            self._abort()
            raise

    def finish(self) -> None:
        """Read every outstanding reply and give the connection back."""
        if self._conn is None:
            return
        try:
            while self._in_flight:
                self._read(self._in_flight.popleft())
        except BaseException:
            self._abort()
            raise
        self.client.connection_pool.release(self._conn)
        self._conn = None

    def _read(self, n: int) -> None:
        error = None
        for _ in range(n):
            try:
                self._conn.read_response()
            except redis.ResponseError as e:  # read the batch's other replies, then raise the first error
                error = error or e
        if error is not None:
            raise error

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        self._in_flight.clear()
        if conn is not None:
            conn.disconnect()
            self.client.connection_pool.release(conn)
