"""The read path under load: the HTTP API (uvicorn, one worker) over loopback with a fixed number of concurrent
clients, throughput and p50/p99/p99.9 latency of ``GET /api/v1/feed`` with 20 pull-mode authors per user.

Set-up, all in this run: a fresh local redis-server; one published feed version of ``users`` users, each with an
800-entry timeline and 20 pull-mode authors (of 200), each author with 10 posts in the last 24 h (the reader merges
the 5 latest of each: 100 pull candidates per read) and two older ones; metadata for every post. The API runs as
``uvicorn --factory serving.api:app_from_env`` (uvloop, httptools, no access log) in its own process; the load comes
from another process: ``concurrency`` aiohttp clients in a closed loop (each sends its next request when the last
one is answered), a random user per request, first pages of 20. Latency is measured by the client, from sending to
the last byte; the first seconds are warm-up and not counted.

Two endpoints under the same load: ``/healthz`` (the same server, one Redis round trip and a tiny JSON body: the
floor of the stack), then ``/api/v1/feed``. The seed's target is a p99 under 500 ms; ours is under 10 ms here.

``ratio``: /feed requests/s over /healthz requests/s, same server, same clients, same run.
``--quick``: 500 users, 5 s per endpoint; the full run: 5,000 users, 20 s per endpoint.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from datetime import timedelta

import numpy as np
import pandas as pd

from darkroom.redis_server import LocalRedisServer, free_port
from darkroom.settings import DarkroomSettings
from serving.keys import batch_end
from serving.publisher import publish_frames

BATCH_ID = "20261101T0000Z"
ENTRIES = 800
PULL_AUTHORS = 20
AUTHORS = 200
POSTS_PER_AUTHOR = 10  # in the 24 h window; two older ones each besides
CONCURRENCY = 4
WORKERS = 1  # uvicorn worker processes
P99_TARGET_MS = 10.0
SEED_P99_MS = 500.0


def _frames(users: int, seed: int = 11) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    end = batch_end(BATCH_ID)
    pool = 1_790_000_000_000_000_000 + rng.choice(10**15, size=max(2 * ENTRIES, 2 * users), replace=False)
    user_ids = np.repeat(np.arange(1, users + 1, dtype=np.int64), ENTRIES)
    post_ids = np.concatenate([rng.choice(pool, size=ENTRIES, replace=False) for _ in range(users)])
    timelines = pd.DataFrame(
        {
            "batch_id": BATCH_ID,
            "user_id": user_ids,
            "post_id": post_ids,
            "score": np.sort(rng.random((users, ENTRIES)), axis=1)[:, ::-1].ravel(),  # in rank order
            "rank": np.tile(np.arange(1, ENTRIES + 1, dtype=np.int32), users),
            "author_id": 1_000_000 + post_ids % 100_000,
            "created_at": end - timedelta(hours=2),
        }
    )
    authors = np.arange(1, AUTHORS + 1, dtype=np.int64)
    per_author = POSTS_PER_AUTHOR + 2
    celebrity_ids = 1_800_000_000_000_000_000 + np.arange(AUTHORS * per_author, dtype=np.int64)
    hours = np.tile(np.concatenate([np.linspace(0.5, 20, POSTS_PER_AUTHOR), [30.0, 40.0]]), AUTHORS)
    celebrity = pd.DataFrame(
        {
            "batch_id": BATCH_ID,
            "author_id": np.repeat(authors, per_author),
            "post_id": celebrity_ids,
            "created_at": pd.Timestamp(end) - pd.to_timedelta(hours, unit="h"),
        }
    )
    pull = pd.DataFrame(
        {
            "batch_id": BATCH_ID,
            "user_id": np.repeat(np.arange(1, users + 1, dtype=np.int64), PULL_AUTHORS),
            "author_id": np.concatenate([rng.choice(authors, PULL_AUTHORS, replace=False) for _ in range(users)]),
        }
    )
    all_posts = np.concatenate([pool, celebrity_ids])
    created = np.concatenate([np.full(len(pool), pd.Timestamp(end) - pd.Timedelta(hours=2)), celebrity["created_at"]])
    meta = pd.DataFrame(
        {
            "batch_id": BATCH_ID,
            "post_id": all_posts,
            "author_id": np.concatenate([1_000_000 + pool % 100_000, celebrity["author_id"].to_numpy()]),
            "created_at": created,
            "caption": "a caption of some thirty bytes",
            "media_count": 1,
            "like_count": rng.integers(0, 1000, len(all_posts)),
            "comment_count": rng.integers(0, 100, len(all_posts)),
            "base_score": rng.random(len(all_posts)),
        }
    )
    config = pd.DataFrame(
        [(BATCH_ID, "bench", "hybrid", 5000, end)],
        columns=["batch_id", "policy_version", "policy", "threshold", "computed_at"],
    )
    return {
        "feed_timelines": timelines,
        "celebrity_posts": celebrity,
        "pull_authors": pull,
        "post_meta": meta,
        "fanout_config": config,
    }


class _ApiServer:
    """``uvicorn`` with the API's factory in a child process; ready when it logs that it listens."""

    def __init__(self, redis_url: str, port: int) -> None:
        env = {**os.environ, "DARKROOM_REDIS_URL": redis_url}
        args = [sys.executable, "-m", "uvicorn", "serving.api:app_from_env", "--factory", "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log", "--loop", "uvloop", "--http", "httptools",
                "--workers", str(WORKERS)]  # fmt: skip
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                if "Uvicorn running on" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(60) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("the API did not start:\n" + "".join(self.lines[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _load(url: str, users: int, concurrency: int, warmup: float, duration: float) -> dict:
    """Runs in its own process: closed-loop clients; latencies (ms) after the warm-up, statuses, pull share."""
    import aiohttp
    import uvloop

    async def main() -> dict:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        sample: list[bytes] = []
        t0 = time.perf_counter()
        start, stop = t0 + warmup, t0 + warmup + duration
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def client(i: int) -> None:
                rng = random.Random(i)
                while True:
                    sent = time.perf_counter()
                    if sent >= stop:
                        return
                    headers = {"X-User-Id": str(rng.randint(1, users))}
                    async with session.get(url, headers=headers) as response:
                        body = await response.read()
                    if sent >= start:
                        latencies.append((time.perf_counter() - sent) * 1000)
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                        if len(sample) < 50:
                            sample.append(body)

            await asyncio.gather(*(client(i) for i in range(concurrency)))
        return {"latencies_ms": latencies, "statuses": statuses, "sample": sample}

    return uvloop.run(main())


def _summary(name: str, result: dict, duration: float) -> dict:
    lat = np.array(result["latencies_ms"])
    return {
        "endpoint": name,
        "requests": int(lat.size),
        "requests_per_s": round(lat.size / duration, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "p99_9_ms": round(float(np.percentile(lat, 99.9)), 3),
        "max_ms": round(float(lat.max()), 3),
        "statuses": {str(k): v for k, v in sorted(result["statuses"].items())},
    }


def run(settings: DarkroomSettings, quick: bool, progress=print) -> dict:
    import json

    users = 500 if quick else 5_000
    duration, warmup = (5.0, 1.0) if quick else (20.0, 2.0)
    progress(f"read bench: {users:,} users x {ENTRIES}-entry timelines, {PULL_AUTHORS} pull-mode authors each, "
             f"{CONCURRENCY} concurrent clients, {duration:.0f}s per endpoint")  # fmt: skip
    with LocalRedisServer(settings.state_dir / "bench" / "read-redis") as redis_server:
        t = time.perf_counter()
        [published] = publish_frames(settings, BATCH_ID, _frames(users), ["feed"], redis_url=redis_server.url)
        progress(f"  published {published.version} in {time.perf_counter() - t:.1f}s")
        port = free_port()
        api = _ApiServer(redis_server.url, port)
        try:
            results = {}
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                for name, path in (("healthz", "/healthz"), ("feed", "/api/v1/feed?limit=20")):
                    url = f"http://127.0.0.1:{port}{path}"
                    raw = pool.submit(_load, url, users, CONCURRENCY, warmup, duration).result()
                    results[name] = _summary(name, raw, duration)
                    if name == "feed":
                        pages = [json.loads(b) for b in raw["sample"]]
                        posts = [p for page in pages for p in page["posts"]]
                        results[name]["posts_per_page"] = round(len(posts) / max(1, len(pages)), 1)
                        results[name]["pull_share"] = round(sum(p["source"] == "pull" for p in posts) / len(posts), 3)
                    r = results[name]
                    progress(
                        f"  {name}: {r['requests_per_s']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f}"
                        f" ms, p99.9 {r['p99_9_ms']:.2f} ms, statuses {r['statuses']}"
                    )
        finally:
            api.stop()
    feed, floor = results["feed"], results["healthz"]
    return {
        "ratio": round(feed["requests_per_s"] / floor["requests_per_s"], 3),
        "ratio_of": (
            "GET /api/v1/feed requests/s over GET /healthz requests/s (one Redis round trip, tiny body: the stack's "
            "floor), same uvicorn worker, same clients, same run"
        ),
        "feed": feed,
        "healthz": floor,
        "p99_target_ms": P99_TARGET_MS,
        "meets_p99_target": feed["p99_ms"] < P99_TARGET_MS,
        "seed_p99_ms": SEED_P99_MS,
        "parameters": {
            "users": users,
            "timeline_entries": ENTRIES,
            "pull_authors_per_user": PULL_AUTHORS,
            "pull_authors": AUTHORS,
            "posts_per_pull_author_in_window": POSTS_PER_AUTHOR,
            "merged_per_pull_author": settings.serving.posts_per_pull_author,
            "page": 20,
            "concurrency": CONCURRENCY,
            "seconds_per_endpoint": duration,
            "warmup_seconds": warmup,
            "server": f"uvicorn, {WORKERS} worker(s), uvloop, httptools, no access log",
            "client": "aiohttp in its own process, closed loop, a random user per request",
        },
    }
