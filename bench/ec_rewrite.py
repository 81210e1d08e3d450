"""The f4 rewrite end to end: GB/s of :func:`blobstore.tiering.rewrite_to_warm` against ``cp`` of the same bytes.

Set-up (not timed): a blob store under ``<state_dir>/bench/ec_rewrite`` (its own settings: 16 MiB hot volumes,
1 MiB segments, RS(10,4)), filled with ``put_hot`` by media of 16-512 KiB (:func:`blobstore.content.media_bytes`,
incompressible), 256 MiB of them (``--quick``: 32 MiB), three hot replicas each. Then ``sync``, so the set-up's dirty
pages are not flushed inside a timed step.

Timed, in one run, on the same disk, the page cache warm for both (the hot volumes were just written):

- ``cp``: ``cp`` of one replica of every hot volume's ``.dat`` file (needle headers included: the same bytes and a
  little more) into another folder of the store's disk, then ``sync FILE...`` on the copies (an fsync of each: like
  our per-file fsyncs, without flushing the other workers' writes on this shared machine as a bare ``sync`` would).
  Done before and after the rewrite; the faster one is the denominator.
- ``rewrite``: ``rewrite_to_warm(store, all media, run=...)`` with the local runner (one process): the intent, each
  media read from hot and its CRC32 checked, the volume packed, encoded into 14 blocks (ISA-L, every fragment
  sealed with its CRC32), the blocks' SHA-256s, 14 concurrent atomic writes (temp file, fsync, rename, directory
  fsync), read back and compared, the catalog commits (Delta, delta-rs), the XOR pairs (blocks read back and
  SHA-checked, XORed, 14 more writes, read back), the hot needles released.

``ratio`` = rewrite GB/s (logical bytes) over cp GB/s (bytes copied). ``phases_seconds`` splits the rewrite's wall
time: for the run, the functions below are wrapped by a timer (exclusive time, so a phase inside another counts
once, for itself; calls on the main thread only; ~1 us per call):

- ``read_hot``: tiering's ``_read_source`` (a hot needle read and its CRC32 check);
- ``encode``: :func:`blobstore.warm.encode_blocks` (data copied into the block buffers, ISA-L encode, CRC32 and
  header per fragment);
- ``sha256``: :func:`blobstore.warm.sha256_hex` (the catalog's block checksums, computed and checked);
- ``write_fsync``: ``LocalFS.write`` and ``WarmStore._write_blocks`` (a volume's 14 blocks by 14 threads);
- ``verify``: the read-back compare of written blocks;
- ``xor``: ``WarmStore.write_xor`` itself (block reads, the XOR);
- ``catalog``: the Delta catalog's reads and commits;
- ``release_hot``: the hot needles' tombstones;
- ``other``: the rest.

``replication`` is measured from the catalog's warm volumes and XOR pairs (:func:`blobstore.warm.measure_replication`)
and set against the hot tier's raw bytes per logical byte (measured from the hot files) and f4's 3.6x for Haystack.
``load`` records the load average and this process's CPU time over wall time.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from darkroom.settings import DarkroomSettings, load_settings

GB = 1e9
PUT_AS_OF = datetime(2026, 10, 1, tzinfo=UTC)
WARM_AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


@contextmanager
def _phase_clock(phases: dict[str, list[tuple[object, str]]]) -> Iterator[dict[str, float]]:
    """Wraps ``owner.name`` for every listed function with a timer for the block; yields exclusive seconds by phase
    (calls on this thread only)."""
    totals: dict[str, float] = defaultdict(float)
    stack: list[list[float]] = []  # per active call: [time spent in timed calls below it]
    saved = []

    main = threading.get_ident()

    def wrap(fn, phase: str):
        def timed(*args, **kwargs):
            if threading.get_ident() != main:  # the warm writer's threads: their wall time is _write_blocks'
                return fn(*args, **kwargs)
            stack.append([0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                inner = stack.pop()[0]
                totals[phase] += elapsed - inner
                if stack:
                    stack[-1][0] += elapsed

        return timed

    for phase, targets in phases.items():
        for owner, name in targets:
            raw = vars(owner)[name]
            saved.append((owner, name, raw))
            setattr(owner, name, wrap(getattr(owner, name), phase))
    try:
        yield totals
    finally:
        for owner, name, raw in reversed(saved):
            setattr(owner, name, raw)


def _cp(files: list[Path], dest: Path) -> tuple[float, int]:
    """Seconds for ``cp FILES dest/`` and ``sync`` of the copies; bytes copied."""
    dest.mkdir(parents=True)
    t0 = time.perf_counter()
    subprocess.run(["cp", *map(str, files), str(dest)], check=True)
    copies = [dest / f.name for f in files]
    subprocess.run(["sync", *map(str, copies)], check=True)
    seconds = time.perf_counter() - t0
    copied = sum(p.stat().st_size for p in copies)
    shutil.rmtree(dest)
    return seconds, copied


def run(settings: DarkroomSettings, *, quick: bool) -> dict:
    from blobstore import tiering, warm
    from blobstore.catalog import Catalog, match
    from blobstore.content import media_bytes
    from blobstore.fs import LocalFS
    from blobstore.store import Blob, BlobStore

    logical_target = (32 if quick else 256) << 20
    work = (settings.state_dir / "bench" / "ec_rewrite").resolve()
    shutil.rmtree(work, ignore_errors=True)
    blob = {"volume_bytes": 16 << 20, "ec_segment_bytes": 1 << 20, "ec_data_blocks": 10, "ec_parity_blocks": 4}
    s = load_settings(state_dir=work, jars_path=settings.jars_path, blob=blob)
    store = BlobStore(s)

    rng = random.Random(20261101)
    sizes: list[int] = []
    while sum(sizes) < logical_target:
        sizes.append(rng.randint(16 << 10, 512 << 10))
    t0 = time.perf_counter()
    batch = 256
    for start in range(0, len(sizes), batch):
        blobs = [
            Blob(i + 1, "media", media_bytes(i + 1, sizes[i])) for i in range(start, min(start + batch, len(sizes)))
        ]
        store.put_hot(blobs, as_of=PUT_AS_OF)
    setup_s = time.perf_counter() - t0
    logical = sum(sizes)
    hot_ids = store.hot_volume_ids()
    hot_files = [p for p in store.fs.root.rglob("*") if p.is_file() and "/hot/" in p.as_posix()]
    hot_raw = sum(p.stat().st_size for p in hot_files)
    one_replica = [store.fs.path(k) for vid in hot_ids for k in store.hot_keys(vid)[:1]]  # the first replica's .dat
    print(
        f"[bench ec_rewrite] {len(sizes)} media, {logical / 2**20:.0f} MiB in {len(hot_ids)} hot volumes "
        f"(set-up {setup_s:.1f} s)",
        flush=True,
    )
    subprocess.run(["sync"], check=True)

    cp_before = _cp(one_replica, work / "cp-before")
    subprocess.run(["sync"], check=True)

    phases = {
        "read_hot": [(tiering, "_read_source")],
        "encode": [(warm, "encode_blocks")],
        "sha256": [(warm, "sha256_hex")],
        "write_fsync": [(LocalFS, "write"), (warm.WarmStore, "_write_blocks")],
        "verify": [(warm.WarmStore, "_verify_written")],
        "xor": [(warm.WarmStore, "write_xor")],
        "catalog": [(Catalog, n) for n in ("read", "upsert", "next_id", "sync_placement", "table")],
        "release_hot": [(tiering, "_release_hot")],
    }
    load_before = os.getloadavg()
    with _phase_clock(phases) as spent:
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = tiering.rewrite_to_warm(store, range(1, len(sizes) + 1), as_of=WARM_AS_OF, run="bench")
        rewrite_s = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    load = {
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "rewrite_cpu_over_wall": round(cpu / rewrite_s, 3),
    }
    subprocess.run(["sync"], check=True)
    cp_after = _cp(one_replica, work / "cp-after")
    if result["bytes"] != logical:
        raise RuntimeError(f"the rewrite moved {result['bytes']} bytes, expected {logical}")

    # Read a sample back through the catalog (normal warm reads) before believing the figure.
    for media_id in random.Random(1).sample(range(1, len(sizes) + 1), 20):
        if store.get(media_id) != media_bytes(media_id, sizes[media_id - 1]):
            raise RuntimeError(f"media {media_id} reads back other bytes from warm")

    warm_rows = store.catalog.rows("volumes", match(kind="warm"))
    volumes = [store.warm_volume(r["volume_id"]) for r in warm_rows]
    pairs = [store.xor_pair(r["xor_group"]) for r in store.catalog.rows("xor_groups")]
    repl = warm.measure_replication(volumes, pairs)
    hot_replication = hot_raw / logical
    unpaired = sum(1 for r in warm_rows if r["xor_group"] is None)
    paired_vols = [v for v in volumes if any(v.volume_id in (p.volume_a, p.volume_b) for p in pairs)]
    paired_repl = warm.measure_replication(paired_vols, pairs) if paired_vols else None

    cp_s, cp_bytes = min((cp_before, cp_after), key=lambda c: c[0] / c[1])
    ours_gb_s = logical / rewrite_s / GB
    cp_gb_s = cp_bytes / cp_s / GB
    timed = {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    timed["other"] = round(rewrite_s - sum(spent.values()), 3)
    print(
        f"[bench ec_rewrite] rewrite {ours_gb_s:.3f} GB/s ({rewrite_s:.2f} s), cp {cp_gb_s:.3f} GB/s; "
        f"phases {timed}; load {load}",
        flush=True,
    )
    out = {
        "ratio": round(ours_gb_s / cp_gb_s, 4),
        "ratio_of": "rewrite_to_warm GB/s of logical bytes (read, encode, write 14 blocks + fsync, verify, catalog "
        "commit, XOR pairs, hot release; local runner, one process) over cp + sync of the hot volume files holding "
        "the same bytes, to the same disk, in the same run (the faster of a cp before and one after)",
        "rewrite": {
            "seconds": round(rewrite_s, 3),
            "gb_s": round(ours_gb_s, 4),
            "logical_bytes": logical,
            "media": result["media"],
            "warm_volumes": result["volumes"],
            "xor_pairs": result["xor_pairs"],
            "hot_needles_released": result["hot_needles_released"],
            "phases_seconds": timed,
            "bytes_written": repl.cell_bytes + repl.xor_bytes,
        },
        "cp": {
            "seconds": round(cp_s, 3),
            "gb_s": round(cp_gb_s, 4),
            "bytes": cp_bytes,
            "runs": {
                "before": {"seconds": round(cp_before[0], 3), "gb_s": round(cp_before[1] / cp_before[0] / GB, 4)},
                "after": {"seconds": round(cp_after[0], 3), "gb_s": round(cp_after[1] / cp_after[0] / GB, 4)},
            },
        },
        "replication": {
            "effective": round(repl.effective, 4),
            "in_cell": round(repl.in_cell, 4),
            "xor_share": round(repl.xor_share, 4),
            "effective_of_paired_volumes": round(paired_repl.effective, 4) if paired_repl else None,
            "unpaired_volumes": unpaired,
            "goal": 2.1,
            "hot_measured": round(hot_replication, 4),
            "saved_vs_hot_measured": round(1 - repl.effective / hot_replication, 4),
            "saved_vs_haystack_3_6": round(1 - repl.effective / 3.6, 4),
        },
        "load": load,
        "params": {
            "blob": blob,
            "hot_replicas": s.blob.hot_replicas,
            "media_bytes_min_max": [16 << 10, 512 << 10],
            "hot_volumes": len(hot_ids),
            "runner": "local (one process)",
            "work_dir": str(work),
            "gb": "10^9 bytes",
        },
    }
    shutil.rmtree(work, ignore_errors=True)
    return out
