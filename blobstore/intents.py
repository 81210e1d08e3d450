"""Durable intent records: what a storage job has decided to do, written before it moves a byte.

A job that moves bytes between tiers first writes an intent (``_intents/<job>/<unit>.json``, atomic and fsync'd)
naming exactly what it will do (which media go into which new volume or pack, with the ids it allocated). Every
step after that is idempotent and the intent says which steps are done, so a re-run after a crash at any point
resumes the same work with the same ids and ends in the same files and catalog rows. A finished unit's intent is
deleted last; no intent left means nothing is in flight.

``crash_point(name)`` lets tests kill a job with SIGKILL at a named point (``DARKROOM_CRASH_AT=<name>[#<n>]``, the
n-th time that point is reached, default the first); it costs one dictionary look-up when unset.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator

from blobstore.fs import BlobFS

INTENTS = "_intents"
_reached: Counter[str] = Counter()


class Intent:
    def __init__(self, fs: BlobFS, job: str, unit: str) -> None:
        self.fs = fs
        self.key = f"{INTENTS}/{job}/{unit}.json"
        self.job = job
        self.unit = unit

    def load(self) -> dict | None:
        if not self.fs.exists(self.key):
            return None
        return json.loads(self.fs.read(self.key))

    def save(self, record: dict) -> None:
        self.fs.write(self.key, json.dumps(record, sort_keys=True, indent=1).encode())

    def step(self, record: dict, step: str) -> None:
        """Marks ``step`` done in the record and saves it."""
        record.setdefault("done", [])
        if step not in record["done"]:
            record["done"].append(step)
        self.save(record)

    def finish(self) -> None:
        self.fs.delete(self.key)


def pending(fs: BlobFS, job: str) -> Iterator[Intent]:
    """Intents of ``job`` left by an earlier run (in unit order)."""
    prefix = f"{INTENTS}/{job}"
    for key in sorted(fs.list(prefix)):
        if key.endswith(".json"):
            yield Intent(fs, job, key[len(prefix) + 1 : -len(".json")])


def crash_point(name: str) -> None:
    target = os.environ.get("DARKROOM_CRASH_AT")
    if not target:
        return
    point, _, nth = target.partition("#")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
