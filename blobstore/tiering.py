"""Moving bytes between tiers, crash-safe: hot -> warm (f4 rewrite), -> cold (archive), warm -> hot (promotion).

Each move follows write-verify-commit-release, with a durable intent (:mod:`blobstore.intents`) written first:

1. **intent**: which media go into which new warm volume or cold pack, with the ids allocated for them, and where
   each media is read from. A re-run after a crash finds the intent and redoes the same work with the same ids.
2. **write + verify**: the new volume's 14 blocks (or the pack's two copies) are written and read back against
   their checksums. Writes are deterministic, so redoing them rewrites the same bytes.
3. **commit**: the catalog gets the volume (or pack), then every media's new location. From here reads use it.
4. **release**: only now the old copies go: the hot needles are tombstoned (compaction reclaims them later).
5. the intent is deleted.

A kill at any point leaves every media readable from its committed location, and the re-run ends in the same
files and catalog rows as an uninterrupted run. Per-volume work (read, pack, encode, write, verify) is a pure
function of its spec (:func:`encode_warm_volume`), so the Spark job runs one task per volume.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from blobstore import cold
from blobstore.catalog import match
from blobstore.content import checksum
from blobstore.fs import LocalFS
from blobstore.haystack import HotVolume
from blobstore.intents import Intent, crash_point, pending
from blobstore.store import Blob, BlobStore
from blobstore.topology import Topology
from blobstore.warm import WarmStore, WarmVolume
from darkroom.settings import DarkroomSettings

log = logging.getLogger(__name__)

Runner = Callable[[Callable, Sequence], list]


def local_runner(fn: Callable, items: Sequence) -> list:
    return [fn(item) for item in items]


class PlanError(ValueError):
    """A tier move the catalog does not allow (unknown media, wrong current tier), named; nothing has moved."""


@dataclass(frozen=True)
class Source:
    """Where a media is read from for a move: its committed location."""

    media_id: int
    kind: str
    tier: str
    volume_id: int | None
    pack_id: int | None
    offset: int | None
    size: int
    checksum: str


def _sources(store: BlobStore, media_ids: Iterable[int], allowed: set[str], target: str) -> list[Source]:
    ids = sorted(set(media_ids))
    wanted = set(ids)
    rows = {r["media_id"]: r for r in store.catalog.rows("media_locations") if r["media_id"] in wanted}
    unknown = [m for m in ids if m not in rows]
    if unknown:
        raise PlanError(f"move to {target}: {len(unknown)} media not in the blob catalog, e.g. {unknown[:5]}")
    wrong = [(m, rows[m]["tier"]) for m in ids if rows[m]["tier"] not in allowed and rows[m]["tier"] != target]
    if wrong:
        raise PlanError(
            f"move to {target}: {len(wrong)} media are in a tier that cannot move there "
            f"(allowed from {sorted(allowed)}), e.g. {wrong[:5]}"
        )
    keep = ("media_id", "kind", "tier", "volume_id", "pack_id", "offset", "size", "checksum")
    return [Source(**{k: rows[m][k] for k in keep}) for m in ids if rows[m]["tier"] != target]


def _group(sources: list[Source], limit: int) -> list[list[Source]]:
    groups: list[list[Source]] = [[]]
    used = 0
    for s in sources:
        if groups[-1] and used + s.size > limit:
            groups.append([])
            used = 0
        groups[-1].append(s)
        used += s.size
    return [g for g in groups if g]


def _read_source(fs: LocalFS, topology: Topology, capacity: int, src: Source, cache: dict) -> bytes:
    """Reads a hot source straight from its volume (workers have no catalog handle)."""
    vol = cache.get(src.volume_id)
    if vol is None:
        vol = cache[src.volume_id] = HotVolume.open(fs, topology, src.volume_id, capacity=capacity)
    data = vol.read(src.media_id)
    if checksum(data) != src.checksum:
        raise ValueError(f"media {src.media_id}: hot volume {src.volume_id} gave bytes that fail the catalog checksum")
    return data


# -- hot -> warm -----------------------------------------------------------------------------------------------------


def encode_warm_volume(settings: DarkroomSettings, spec: dict) -> dict:
    """One task: reads the spec's media from hot, packs them in order, writes and verifies the 14 blocks.

    Returns the warm volume's catalog record; media sit back to back in the spec's order. Deterministic in ``spec``.
    """
    fs = LocalFS(settings.blob_root)
    topology = Topology(settings.blob)
    cache: dict[int, HotVolume] = {}
    parts = [_read_source(fs, topology, settings.blob.volume_bytes, Source(**s), cache) for s in spec["media"]]
    volume = WarmStore(fs, settings.blob).write(spec["volume_id"], b"".join(parts))
    return {"volume": volume.to_dict()}


def rewrite_to_warm(
    store: BlobStore, media_ids: Iterable[int], *, as_of: datetime, run: str, runner: Runner = local_runner
) -> dict:
    """The f4 rewrite: hot media -> new warm volumes (RS(10,4) on 14 racks) -> XOR pairs -> hot copies released."""
    intent = Intent(store.fs, "ec_rewrite", run)
    record = intent.load()
    if record is None:
        sources = _sources(store, media_ids, {"hot"}, "warm")
        if not sources:
            return {"volumes": 0, "media": 0, "bytes": 0}
        first = store.catalog.next_id("volumes", floor=store._next_free_volume_id())
        specs = [
            {"volume_id": first + i, "media": [asdict(s) for s in group]}
            for i, group in enumerate(_group(sources, store.blob.volume_bytes))
        ]
        record = {"run": run, "as_of": as_of.isoformat(), "volumes": specs, "done": []}
        intent.save(record)
        # Reserve the ids on the catalog at once (state encoding), so no other writer takes them.
        store.catalog.upsert("volumes", [_warm_row(store, s["volume_id"], "encoding", None, as_of) for s in specs])
    crash_point("ec_rewrite.intent_saved")
    specs = record["volumes"]
    states = {r["volume_id"]: r["state"] for r in store.catalog.rows("volumes", match(kind="warm"))}
    todo = [s for s in specs if states.get(s["volume_id"]) in (None, "encoding")]
    settings = store.settings
    results = runner(lambda spec: encode_warm_volume(settings, spec), todo)
    crash_point("ec_rewrite.blocks_written")
    for spec, result in zip(todo, results, strict=True):
        volume = WarmVolume.from_dict(result["volume"])
        row = _warm_row(store, volume.volume_id, "encoded", volume, as_of)
        store.catalog.upsert("volumes", [{**row, "blobs": len(spec["media"])}])
        crash_point("ec_rewrite.volume_committed")
    for spec in specs:
        store.catalog.upsert("media_locations", _warm_locations(spec, as_of))
        crash_point("ec_rewrite.locations_committed")
    store.catalog.sync_placement()
    crash_point("ec_rewrite.placement_synced")
    pairs = pair_xor(store, as_of=as_of)
    crash_point("ec_rewrite.xor_written")
    released = _release_hot(store, [Source(**s) for spec in specs for s in spec["media"]], "ec_rewrite.released")
    store.catalog.upsert(
        "volumes",
        [{**store.catalog.get("volumes", s["volume_id"]), "state": "released", "updated_at": as_of} for s in specs],
    )
    crash_point("ec_rewrite.volumes_released")
    intent.finish()
    return {
        "volumes": len(specs),
        "media": sum(len(s["media"]) for s in specs),
        "bytes": sum(m["size"] for s in specs for m in s["media"]),
        "xor_pairs": pairs,
        "hot_needles_released": released,
    }


def _warm_locations(spec: dict, as_of: datetime) -> list[dict]:
    """The catalog rows of a warm volume's media: packed back to back in the spec's order."""
    rows, offset = [], 0
    for s in spec["media"]:
        rows.append(
            {
                **{k: s[k] for k in ("media_id", "kind", "size", "checksum")},
                "tier": "warm",
                "volume_id": spec["volume_id"],
                "pack_id": None,
                "offset": offset,
                "placed_at": as_of,
            }
        )
        offset += s["size"]
    return rows


def _warm_row(store: BlobStore, volume_id: int, state: str, volume: WarmVolume | None, as_of: datetime) -> dict:
    stored = store.catalog.get("volumes", volume_id) or {}
    return {
        "volume_id": volume_id,
        "kind": "warm",
        "state": state,
        "region": store.topology.home_region(volume_id),
        "bytes": volume.length if volume else 0,
        "blobs": stored.get("blobs") or 0,
        "info_json": json.dumps(volume.to_dict(), sort_keys=True) if volume else None,
        "lost_blocks": None,
        "xor_group": stored.get("xor_group"),
        "updated_at": as_of,
    }


def pair_xor(store: BlobStore, *, as_of: datetime) -> int:
    """Pairs encoded warm volumes of two regions without an XOR group, in id order, and writes their XOR blocks.

    A volume without a partner from another region waits for the next rewrite (RS(10,4) protects it meanwhile).
    """
    unpaired = sorted(
        (r for r in store.catalog.rows("volumes") if r["kind"] == "warm" and r["info_json"] and r["xor_group"] is None),
        key=lambda r: r["volume_id"],
    )
    made = 0
    while True:
        a = next(iter(unpaired), None)
        b = next((r for r in unpaired[1:] if a and r["region"] != a["region"]), None)
        if a is None or b is None:
            return made
        unpaired = [r for r in unpaired if r["volume_id"] not in (a["volume_id"], b["volume_id"])]
        va, vb = store.warm_volume(a["volume_id"]), store.warm_volume(b["volume_id"])
        pair = store.warm.write_xor(va, vb)
        group = a["volume_id"]  # the pair's first volume names the group: stable across re-runs
        store.catalog.upsert(
            "xor_groups",
            [
                {
                    "xor_group": group,
                    "volume_a": pair.volume_a,
                    "volume_b": pair.volume_b,
                    "region": pair.region,
                    "info_json": json.dumps(asdict(pair), sort_keys=True),
                    "updated_at": as_of,
                }
            ],
        )
        crash_point("ec_rewrite.xor_committed")
        store.catalog.upsert("volumes", [{**a, "xor_group": group}, {**b, "xor_group": group}])
        made += 1


def _release_hot(store: BlobStore, sources: list[Source], point: str) -> int:
    """Tombstones the hot needles of media whose catalog row no longer points at that hot volume."""
    released = 0
    by_volume: dict[int, list[Source]] = {}
    for s in sources:
        if s.tier == "hot":
            by_volume.setdefault(s.volume_id, []).append(s)
    ids = {s.media_id for s in sources}
    current = {r["media_id"]: r for r in store.catalog.rows("media_locations") if r["media_id"] in ids}
    for vid, group in sorted(by_volume.items()):
        vol = store.hot_volume(vid)
        # Only needles whose media is committed elsewhere: never released before the new copy is in the catalog.
        gone = [
            s.media_id
            for s in group
            if not (current[s.media_id]["tier"] == "hot" and current[s.media_id]["volume_id"] == vid)
        ]
        released += vol.delete_many(gone)
        crash_point(point)
        vol.checkpoint()
    return released


# -- -> cold ---------------------------------------------------------------------------------------------------------


def archive_to_cold(store: BlobStore, media_ids: Iterable[int], *, as_of: datetime, run: str) -> dict:
    """Packs media (hot or warm) into zstd packs in two regions, verifies both copies, commits, releases hot copies.

    Warm volumes are immutable (their blocks are part of an XOR pair); an archived media's warm bytes stay until its
    volume and its XOR partner are both empty.
    """
    intent = Intent(store.fs, "cold_archive", run)
    record = intent.load()
    if record is None:
        sources = _sources(store, media_ids, {"hot", "warm"}, "cold")
        if not sources:
            return {"packs": 0, "media": 0, "bytes": 0}
        first = store.catalog.next_id("packs")
        specs = [
            {"pack_id": first + i, "media": [asdict(s) for s in group]}
            for i, group in enumerate(_group(sources, store.blob.volume_bytes))
        ]
        record = {"run": run, "as_of": as_of.isoformat(), "packs": specs, "done": []}
        intent.save(record)
    crash_point("cold_archive.intent_saved")
    specs = record["packs"]
    for spec in specs:
        stored = store.catalog.get("packs", spec["pack_id"])
        if stored is None or stored["state"] != "verified":
            items = [(loc["media_id"], data) for loc, data in store.read_locations(spec["media"])]
            info = cold.write_pack(
                store.fs,
                store.topology,
                spec["pack_id"],
                items,
                level=store.blob.cold_zstd_level,
                copies=store.blob.cold_regions,
            )
            crash_point("cold_archive.pack_written")
            bad = [c for c in cold.verify_pack(store.fs, info) if not c.ok]
            if bad:
                raise cold.ColdPackError(f"cold pack {spec['pack_id']}: copies failed verification: {bad}")
            store.catalog.upsert("packs", [_pack_row(info, as_of)])
            crash_point("cold_archive.pack_committed")
        pack_id = spec["pack_id"]
        store.catalog.upsert(
            "media_locations",
            [
                {
                    **{k: s[k] for k in ("media_id", "kind", "size", "checksum")},
                    "tier": "cold",
                    "volume_id": None,
                    "pack_id": pack_id,
                    "offset": None,
                    "placed_at": as_of,
                }
                for s in spec["media"]
            ],
        )
        crash_point("cold_archive.locations_committed")
    store.catalog.sync_placement()
    released = _release_hot(store, [Source(**s) for spec in specs for s in spec["media"]], "cold_archive.released")
    crash_point("cold_archive.hot_released")
    intent.finish()
    return {
        "packs": len(specs),
        "media": sum(len(s["media"]) for s in specs),
        "bytes": sum(m["size"] for s in specs for m in s["media"]),
        "hot_needles_released": released,
    }


def _pack_row(info: cold.PackInfo, as_of: datetime) -> dict:
    d = {k: v for k, v in asdict(info).items() if k != "manifest"}
    return {
        "pack_id": info.pack_id,
        "state": "verified",
        "info_json": json.dumps(d, sort_keys=True),
        "blobs": info.count,
        "raw_bytes": info.raw_bytes,
        "stored_bytes": info.pack_bytes * len(info.keys),
        "updated_at": as_of,
    }


# -- warm -> hot -----------------------------------------------------------------------------------------------------


def promote_to_hot(store: BlobStore, media_ids: Iterable[int], *, as_of: datetime) -> dict:
    """Warm media read hot again are copied back into hot volumes (the warm bytes stay: volumes are immutable)."""
    sources = _sources(store, media_ids, {"warm"}, "hot")
    reads = store.read_locations(asdict(s) for s in sources)  # each warm volume's description read once
    blobs = (Blob(s.media_id, s.kind, data) for s, (_, data) in zip(sources, reads, strict=True))
    written = store.place_hot(blobs, as_of=as_of)  # put_hot would skip them: they are in the catalog
    store.catalog.sync_placement()
    return {"media": len(sources), "written": written, "bytes": sum(s.size for s in sources)}


def resume_pending(store: BlobStore, *, runner: Runner = local_runner) -> list[str]:
    """Finishes every move an earlier run left half done (its intent is still there); returns the runs resumed."""
    resumed = []
    for intent in pending(store.fs, "ec_rewrite"):
        record = intent.load()
        rewrite_to_warm(store, [], as_of=datetime.fromisoformat(record["as_of"]), run=intent.unit, runner=runner)
        resumed.append(f"ec_rewrite/{intent.unit}")
    for intent in pending(store.fs, "cold_archive"):
        record = intent.load()
        archive_to_cold(store, [], as_of=datetime.fromisoformat(record["as_of"]), run=intent.unit)
        resumed.append(f"cold_archive/{intent.unit}")
    return resumed
