"""Publishing timelines: 800-entry timelines per second through the serving publisher, against the raw pipelined
ZADD rate of the same payload by the same harness in the same run (the limit), and the memory per timeline.

Measured on a fresh local redis-server (persistence off, default configuration, so timelines are skiplists):
- the payload: ``users`` timelines of 800 (score, post id) entries drawn from a pool of two posts per timeline
  (each with its metadata), in descending score order, as the sources deliver them;
- raw: the very ZADD commands the builders make, built beforehand (numbers already formatted), written by ``writers``
  forked processes with ``serving.pipeline_keys`` keys per round trip, the same partitions and the same sender;
  and, for reference, the same through redis-py's pipeline;
- ours: ``publish_frames`` of the feed group from pandas frames (timelines, the pool's post metadata, the config)
  with the same number of writer processes, end to end: counts, build + write, verification (every key's size, a
  sampled content checksum, the encoding), the pointer switch and the expiry of the version it replaces; and the
  write phase alone;
- the server's own cost, two ways: INFO commandstats' microseconds per ZADD (the command alone, the issue's
  figure) give one server-bound rate; the server main thread's CPU time over the raw round (INFO cpu: reading and
  parsing each 1,601-argument request, the command, the reply) gives the rate one core can actually sustain;
- memory and encodings: MEMORY USAGE (SAMPLES 0) and OBJECT ENCODING of one 800-entry timeline as a skiplist
  (the default zset-max-listpack-entries 128) and as a listpack (1024), the server's microseconds per ZADD for each
  (in descending score order and shuffled), and per ZREVRANGEBYSCORE of a first page (LIMIT 21 from +inf) and of a
  page from the middle: the figures behind ``serving.timeline_encoding``.

Raw and ours alternate, two rounds each; the best round of each is reported (the machine is shared).

``ratio``: our end-to-end timelines/s over the raw ZADD timelines/s, same payload, same writers, same run.
``--quick``: 1,000 timelines; the full run: 10,000.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from darkroom.redis_server import LocalRedisServer
from darkroom.settings import DarkroomSettings
from serving.keys import KeySpace, batch_end
from serving.payloads import BuildContext, build
from serving.publisher import publish_frames
from serving.sources import MemoryBatch
from serving.writer import PipelinedSender

ENTRIES = 800
ROUNDS = 2
POSTS_PER_TIMELINE = 2  # distinct posts (with metadata) per timeline: the pool the timelines draw from
BATCH_ID = "20261101T0000Z"
_RAW: dict[str, Any] = {}  # what the raw writer processes inherit: the prebuilt commands per partition


def _frames(users: int, seed: int = 5) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    pool = max(2 * ENTRIES, POSTS_PER_TIMELINE * users)
    posts = 1_790_000_000_000_000_000 + rng.choice(10**15, size=pool, replace=False)
    user_ids = np.repeat(np.arange(1, users + 1, dtype=np.int64), ENTRIES)
    post_ids = np.concatenate([rng.choice(posts, size=ENTRIES, replace=False) for _ in range(users)])
    end = batch_end(BATCH_ID)
    timelines = pd.DataFrame(
        {
            "batch_id": BATCH_ID,
            "user_id": user_ids,
            "post_id": post_ids,
            "score": np.sort(rng.random((users, ENTRIES)) * 10, axis=1)[:, ::-1].ravel(),  # in rank order
            "rank": np.tile(np.arange(1, ENTRIES + 1, dtype=np.int32), users),
            "author_id": post_ids % 100_000,
            "created_at": end,
        }
    )
    meta = pd.DataFrame(
        {
            "batch_id": BATCH_ID,
            "post_id": posts,
            "author_id": posts % 100_000,
            "created_at": end,
            "caption": "a caption of some thirty bytes",
            "media_count": 1,
            "like_count": rng.integers(0, 1000, pool),
            "comment_count": rng.integers(0, 100, pool),
            "base_score": rng.random(pool),
        }
    )
    config = pd.DataFrame(
        [(BATCH_ID, "bench", "hybrid", 5000, end)],
        columns=["batch_id", "policy_version", "policy", "threshold", "computed_at"],
    )
    return {"feed_timelines": timelines, "post_meta": meta, "fanout_config": config}


def _raw_write(part: int, url: str, pipeline_keys: int, redis_py: bool) -> int:
    import redis

    client = redis.Redis.from_url(url)
    sender = PipelinedSender(client)
    commands = _RAW["parts"][part]
    for lo in range(0, len(commands), pipeline_keys):
        batch = commands[lo : lo + pipeline_keys]
        if redis_py:  # redis-py's own pipeline, for reference
            pipe = client.pipeline(transaction=False)
            for command in batch:
                pipe.execute_command(*command)
            pipe.execute()
        else:
            sender.send(batch)
    sender.finish()
    client.close()
    return len(commands)


def _raw_rate(source: MemoryBatch, url: str, writers: int, pipeline_keys: int, redis_py: bool) -> dict[str, float]:
    """The publisher's ZADDs, built beforehand, written by the same number of forked processes over the same
    partitions and pipelines (with ``redis_py``: through redis-py's pipeline instead of the publisher's sender)."""
    ctx = BuildContext(KeySpace("raw"), f"{BATCH_ID}.1", 0, ENTRIES, 1)
    parts = source.parts("feed_timelines")
    _RAW["parts"] = [[build("feed_timelines", source.record("feed_timelines", i), ctx)[0] for i in p] for p in parts]
    write = partial(_raw_write, url=url, pipeline_keys=pipeline_keys, redis_py=redis_py)
    with multiprocessing.get_context("fork").Pool(writers) as pool:
        t = time.perf_counter()
        done = sum(pool.map(write, range(len(parts))))
        seconds = time.perf_counter() - t
    _RAW.clear()
    return {"timelines": done, "seconds": round(seconds, 3), "timelines_per_s": round(done / seconds, 1)}


def _server_cpu_s(client) -> float:
    """CPU seconds (user + system) of the server's main thread so far."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


def _zadd_usec(client, name: str, payloads: list[list[Any]]) -> float:
    client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for i, args in enumerate(payloads):
        pipe.execute_command("ZADD", f"{name}:{{{i}}}", *args)
    pipe.execute()
    return float(client.info("commandstats")["cmdstat_zadd"]["usec_per_call"])


def _range_usec(client, name: str, n: int, max_score: str) -> float:
    client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.execute_command("ZREVRANGEBYSCORE", f"{name}:{{{i}}}", max_score, "-inf", "WITHSCORES", "LIMIT", 0, 21)
    pipe.execute()
    return float(client.info("commandstats")["cmdstat_zrevrangebyscore"]["usec_per_call"])


def _encodings(client, n: int, progress) -> dict[str, Any]:
    """One 800-entry timeline per encoding: memory, OBJECT ENCODING, server microseconds per ZADD and per page."""
    rng = random.Random(7)
    desc, shuffled = [], []
    for _ in range(n):
        entries = sorted((rng.random() * 10, 1_790_000_000_000_000_000 + rng.randrange(10**15)) for _ in range(800))
        entries.reverse()
        desc.append([x for e in entries for x in e])
        rng.shuffle(entries)
        shuffled.append([x for e in entries for x in e])
    out: dict[str, Any] = {}
    for encoding, threshold in (("skiplist", 128), ("listpack", 1024)):
        client.config_set("zset-max-listpack-entries", threshold)
        name = f"enc:{encoding}"
        zadd_desc = _zadd_usec(client, name, desc)
        zadd_shuffled = _zadd_usec(client, f"{name}:shuffled", shuffled)
        key = f"{name}:{{0}}"
        out[encoding] = {
            "zset_max_listpack_entries": threshold,
            "object_encoding": client.object("encoding", key).decode(),
            "memory_usage_bytes": int(client.memory_usage(key, samples=0)),
            "zadd_usec_descending": zadd_desc,
            "zadd_usec_shuffled": zadd_shuffled,
            "first_page_usec": _range_usec(client, name, n, "+inf"),
            "middle_page_usec": _range_usec(client, name, n, "5"),
        }
        e = out[encoding]
        progress(
            f"  {encoding}: OBJECT ENCODING {e['object_encoding']}, {e['memory_usage_bytes'] / 1024:.1f} KiB, "
            f"ZADD {zadd_desc:.0f} us (descending) / {zadd_shuffled:.0f} us (shuffled), first page "
            f"{e['first_page_usec']:.1f} us, middle page {e['middle_page_usec']:.1f} us"
        )
        client.delete(*client.keys("enc:*"))
    client.config_set("zset-max-listpack-entries", 128)
    return out


def run(settings: DarkroomSettings, quick: bool, progress=print) -> dict:
    import redis

    users = 1_000 if quick else 10_000
    writers = settings.serving.writers or max(2, os.cpu_count() or 1)
    pipeline_keys = settings.serving.pipeline_keys
    progress(f"publish bench: {users:,} timelines x {ENTRIES} entries, {writers} writer processes, "
             f"{pipeline_keys} keys per pipeline")  # fmt: skip
    frames = _frames(users)
    with LocalRedisServer(settings.state_dir / "bench" / "publish-redis") as server:
        client = redis.Redis.from_url(server.url)
        progress("encodings (one 800-entry timeline each, 200 samples):")
        encodings = _encodings(client, 200, progress)

        # Raw and ours alternate, ROUNDS times each, and the best of each counts: the machine is shared, so a
        # slow moment should not decide the ratio.
        raws, pys, ours_runs = [], [], []
        for round_ in range(1, ROUNDS + 1):
            source = MemoryBatch(BATCH_ID, frames, writers=writers)
            progress(f"round {round_}/{ROUNDS}: raw pipelined ZADD of the same payload, built beforehand ...")
            client.config_resetstat()
            cpu = _server_cpu_s(client)
            raws.append(_raw_rate(source, server.url, writers, pipeline_keys, redis_py=False))
            raws[-1]["server_cpu_usec_per_timeline"] = round((_server_cpu_s(client) - cpu) / users * 1e6, 1)
            zadd_usec = float(client.info("commandstats")["cmdstat_zadd"]["usec_per_call"])
            progress(f"  raw: {raws[-1]['timelines_per_s']:,.0f} timelines/s; the server spends {zadd_usec:.0f} us "
                     f"per ZADD ({1e6 / zadd_usec:,.0f} timelines/s per core), its main thread "
                     f"{raws[-1]['server_cpu_usec_per_timeline']:.0f} us of CPU per timeline")  # fmt: skip
            client.flushall()
            pys.append(_raw_rate(source, server.url, writers, pipeline_keys, redis_py=True))
            progress(f"  the same through redis-py's pipeline: {pys[-1]['timelines_per_s']:,.0f} timelines/s")
            source.close()
            client.flushall()

            progress(f"round {round_}/{ROUNDS}: publisher, end to end (feed: timelines, post metadata, config) ...")
            before = int(client.info("memory")["used_memory"])
            cpu = _server_cpu_s(client)
            t = time.perf_counter()
            [result] = publish_frames(settings, BATCH_ID, frames, ["feed"], redis_url=server.url, writers=writers,
                                      force=True)  # fmt: skip
            seconds = time.perf_counter() - t
            server_cpu = (_server_cpu_s(client) - cpu) / users * 1e6
            used = int(client.info("memory")["used_memory"]) - before
            keys = [f"{settings.serving.key_prefix}:feed:{result.version}:timeline:{{{u}}}" for u in range(1, 101)]
            observed = client.object("encoding", keys[0]).decode()
            per_timeline = float(np.mean([client.memory_usage(k, samples=0) for k in keys]))
            ours_runs.append((users / seconds, users / result.seconds["write"], seconds, result, used, server_cpu))
            progress(f"  ours: {users / seconds:,.0f} timelines/s end to end ({seconds:.1f}s: {result.seconds}); "
                     f"write phase {users / result.seconds['write']:,.0f} timelines/s; OBJECT ENCODING {observed}, "
                     f"MEMORY USAGE {per_timeline / 1024:.1f} KiB per timeline")  # fmt: skip
            client.flushall()
        client.close()

    raw = max(raws, key=lambda r: r["timelines_per_s"])
    redis_py = max(pys, key=lambda r: r["timelines_per_s"])
    ours, _, seconds, result, used, ours_server_cpu = max(ours_runs, key=lambda r: r[0])
    ours = round(ours, 1)
    write_rate = round(max(r[1] for r in ours_runs), 1)
    server_bound = round(1e6 / zadd_usec, 1)
    server_cpu_usec = min(r["server_cpu_usec_per_timeline"] for r in raws)
    server_cpu_bound = round(1e6 / server_cpu_usec, 1)
    return {
        "ratio": round(ours / raw["timelines_per_s"], 3),
        "ratio_of": (
            "our end-to-end publish (build, write, verify, switch, expire) timelines/s over the raw pipelined ZADD "
            "timelines/s of the same prebuilt payload, same writer processes, same server, same run"
        ),
        "timelines_per_s": ours,
        "write_phase_timelines_per_s": write_rate,
        "raw_zadd_timelines_per_s": raw["timelines_per_s"],
        "redis_py_pipeline_timelines_per_s": redis_py["timelines_per_s"],
        "server_bound_timelines_per_s_per_core": server_bound,
        "ours_over_server_bound": round(ours / server_bound, 3),
        "raw_over_server_bound": round(raw["timelines_per_s"] / server_bound, 3),
        "server_cpu_usec_per_timeline": server_cpu_usec,
        "server_cpu_bound_timelines_per_s": server_cpu_bound,
        "ours_over_server_cpu_bound": round(ours / server_cpu_bound, 3),
        "raw_over_server_cpu_bound": round(raw["timelines_per_s"] / server_cpu_bound, 3),
        "ours_server_cpu_usec_per_timeline": round(ours_server_cpu, 1),
        "server_usec_per_zadd": zadd_usec,
        "publish_seconds": round(seconds, 2),
        "phases_seconds": result.seconds,
        "memory_usage_per_timeline_bytes": round(per_timeline),
        "used_memory_per_timeline_bytes": round(used / users),  # with the post metadata and the config
        "timeline_encoding": {"setting": settings.serving.timeline_encoding, "observed": observed},
        "encodings": encodings,
        "verified": result.verified,
        "parameters": {
            "timelines": users,
            "entries": ENTRIES,
            "post_pool": max(2 * ENTRIES, POSTS_PER_TIMELINE * users),
            "writers": writers,
            "rounds": ROUNDS,
            "pipeline_keys": pipeline_keys,
            "redis": "local redis-server, persistence off, default configuration",
        },
    }
