"""Keeping the blob store whole: scrub and repair, fsck against the catalog, story expiry, compaction.

- :func:`scrub` reads every hot replica, warm block, XOR block and cold pack copy at a rate limit, checks every
  checksum, and repairs what it can: a hot replica from the others, warm blocks from any 10 of 14 (or, when more are
  lost, from the XOR partner in the other regions), XOR blocks from their two volumes, a pack copy from the other.
  What cannot be repaired is marked in the catalog (``volumes.state = lost``) and reported.
- :func:`fsck` compares the catalog with the files and lists every difference: a media whose bytes are not where
  the catalog says, a file or a live needle the catalog does not know (orphaned bytes), temp files of killed writes,
  and intents of moves still in flight.
- :func:`expire_stories`: story media are tombstoned at TTL + grace (24 h + 1 h); a story inside that is untouched.
- :func:`compact`: sealed hot volumes with enough dead needles are rewritten without them; catalog offsets follow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from blobstore import cold
from blobstore.catalog import Catalog, match
from blobstore.fs import BlobFSError
from blobstore.intents import INTENTS, crash_point
from blobstore.store import BlobStore
from blobstore.warm import VolumeLostError, WarmVolumeError, sha256_hex

log = logging.getLogger(__name__)

STORY_TTL = timedelta(hours=24)
STORY_GRACE = timedelta(hours=1)


class _RateLimit:
    """Sleeps so that reading averages at most ``mb_per_s`` (the scrubber must not starve the readers)."""

    def __init__(self, mb_per_s: float) -> None:
        self.bytes_per_s = mb_per_s * 1e6
        self.start = time.monotonic()
        self.read = 0

    def consumed(self, n: int) -> None:
        self.read += n
        ahead = self.read / self.bytes_per_s - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


@dataclass
class ScrubReport:
    checked: dict[str, int] = field(default_factory=lambda: {"hot_replicas": 0, "warm_blocks": 0, "xor_blocks": 0})
    bytes_read: int = 0
    found: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "checked": self.checked,
            "bytes_read": self.bytes_read,
            "found": self.found,
            "repaired": self.repaired,
            "unrepairable": self.unrepairable,
            "seconds": round(self.seconds, 2),
            "mb_per_s": round(self.bytes_read / 1e6 / self.seconds, 1) if self.seconds else None,
        }


def scrub(store: BlobStore, *, as_of: datetime, mb_per_s: float | None = None, progress=None) -> ScrubReport:
    report = ScrubReport()
    limit = _RateLimit(mb_per_s or store.blob.scrub_mb_per_s)
    t0 = time.monotonic()
    volumes = store.catalog.rows("volumes")
    for row in sorted((r for r in volumes if r["kind"] == "hot"), key=lambda r: r["volume_id"]):
        _scrub_hot(store, row["volume_id"], report, limit)
        _tick(progress, "hot", row["volume_id"])
    warm = sorted((r for r in volumes if r["kind"] == "warm" and r["info_json"]), key=lambda r: r["volume_id"])
    for row in warm:
        _scrub_warm(store, row, report, limit, as_of)
        _tick(progress, "warm", row["volume_id"])
    for row in sorted(store.catalog.rows("xor_groups"), key=lambda r: r["xor_group"]):
        _scrub_xor(store, row, report, limit)
    packs = store.catalog.rows("packs")
    for row in sorted(packs, key=lambda r: r["pack_id"]):
        _scrub_pack(store, row["pack_id"], report, limit)
        _tick(progress, "pack", row["pack_id"])
    report.bytes_read = limit.read
    report.seconds = time.monotonic() - t0
    return report


def _tick(progress, kind: str, unit: int) -> None:
    if progress is not None:
        progress(kind, unit)


def _scrub_hot(store: BlobStore, volume_id: int, report: ScrubReport, limit: _RateLimit) -> None:
    vol = store.hot_volume(volume_id)
    for rep in vol.check():
        report.checked["hot_replicas"] += 1
        limit.consumed(rep.data_bytes)
        if rep.ok:
            continue
        report.found.append(rep.summary())
        try:
            written = vol.repair_replica(rep.replica)
            report.repaired.append(f"hot volume {volume_id} replica {rep.replica}: rewrote {written} bytes")
        except (OSError, ValueError, RuntimeError) as e:
            report.unrepairable.append(f"hot volume {volume_id} replica {rep.replica}: {e}")
    store.forget_hot(volume_id)


def _scrub_warm(store: BlobStore, row: dict, report: ScrubReport, limit: _RateLimit, as_of: datetime) -> None:
    volume = store.warm_volume(row["volume_id"])
    check = store.warm.check(volume)
    report.checked["warm_blocks"] += volume.n
    limit.consumed(volume.raw_bytes)
    if check.healthy:
        _unmark_lost(store, row, as_of)
        return
    report.found.append(f"warm volume {volume.volume_id}: blocks missing {check.missing}, corrupt {check.corrupt}")
    try:
        fixed = store.warm.rebuild(volume, check.lost)
        report.repaired.append(f"warm volume {volume.volume_id}: rebuilt blocks {list(fixed)} from the other blocks")
        _unmark_lost(store, row, as_of)
        return
    except (VolumeLostError, WarmVolumeError) as e:
        reason = str(e)
    group = row["xor_group"]
    if group is not None:
        pair = store.xor_pair(group)
        partner_id = pair.volume_b if pair.volume_a == volume.volume_id else pair.volume_a
        try:
            fixed = store.warm.recover_from_xor(pair, volume, store.warm_volume(partner_id), check.lost)
            report.repaired.append(
                f"warm volume {volume.volume_id}: recovered blocks {list(fixed)} from XOR group {group} "
                f"(partner volume {partner_id}, region {pair.region})"
            )
            _unmark_lost(store, row, as_of)
            return
        except (VolumeLostError, WarmVolumeError, OSError) as e:
            reason = f"{reason}; XOR recovery failed: {e}"
    report.unrepairable.append(f"warm volume {volume.volume_id}: {reason}")
    store.catalog.upsert("volumes", [{**row, "state": "lost", "lost_blocks": list(check.lost), "updated_at": as_of}])


def _unmark_lost(store: BlobStore, row: dict, as_of: datetime) -> None:
    """A volume whole again (found so, or just repaired) is no longer lost: a read marked it, the catalog unmarks it."""
    if row["state"] == "lost" or row["lost_blocks"]:
        store.catalog.upsert("volumes", [{**row, "state": "released", "lost_blocks": None, "updated_at": as_of}])


def _scrub_xor(store: BlobStore, row: dict, report: ScrubReport, limit: _RateLimit) -> None:
    pair = store.xor_pair(row["xor_group"])
    bad = []
    for i, key in enumerate(pair.block_keys):
        report.checked["xor_blocks"] += 1
        try:
            data = store.fs.read(key)
        except BlobFSError:
            bad.append(i)
            continue
        limit.consumed(len(data))
        if sha256_hex(data) != pair.block_sha256[i]:
            bad.append(i)
    if not bad:
        return
    report.found.append(f"XOR group {row['xor_group']}: blocks {bad} missing or corrupt")
    try:
        redone = store.warm.write_xor(store.warm_volume(pair.volume_a), store.warm_volume(pair.volume_b))
        if redone.block_sha256 != pair.block_sha256:
            raise WarmVolumeError("re-computed XOR blocks differ from the catalog's checksums")
        report.repaired.append(
            f"XOR group {row['xor_group']}: rewrote blocks from volumes {pair.volume_a}, {pair.volume_b}"
        )
    except (VolumeLostError, WarmVolumeError, OSError) as e:
        report.unrepairable.append(f"XOR group {row['xor_group']}: {e}")


def _scrub_pack(store: BlobStore, pack_id: int, report: ScrubReport, limit: _RateLimit) -> None:
    manifest = store.pack(pack_id)
    check = cold.check_pack(store.fs, manifest)
    limit.consumed(manifest.pack_bytes * len(check.copies))
    if check.ok:
        return
    for c in check.copies:
        if c.ok:
            continue
        report.found.append(f"cold pack {pack_id} copy {c.index} ({c.pack_key}): {'; '.join(c.problems)}")
        try:
            status = cold.repair_copy(store.fs, manifest, c.index)
            if not status.ok:
                raise cold.ColdPackError("; ".join(status.problems))
            report.repaired.append(f"cold pack {pack_id} copy {c.index}: rewritten from the other copy")
        except (cold.ColdPackError, OSError) as e:
            report.unrepairable.append(f"cold pack {pack_id} copy {c.index}: {e}")


# -- fsck --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    kind: str  # missing_bytes | orphan_file | orphan_needle | temp_file | intent_pending | bad_location
    where: str
    detail: str

    def line(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


def fsck(store: BlobStore) -> list[Difference]:
    """Every difference between the catalog and the files (empty: they agree)."""
    out: list[Difference] = []
    catalog = store.catalog
    locations = catalog.rows("media_locations")
    volumes = {r["volume_id"]: r for r in catalog.rows("volumes")}
    groups = catalog.rows("xor_groups")
    packs = {r["pack_id"]: r for r in catalog.rows("packs")}
    expected: set[str] = set()

    hot_live: dict[int, dict[int, int]] = {}
    for vid, row in volumes.items():
        if row["kind"] == "hot":
            expected.update(store.hot_keys(vid))
            try:
                hot_live[vid] = {n: size for n, _off, size in store.hot_volume(vid).needles()}
            except (OSError, ValueError, RuntimeError) as e:
                out.append(Difference("missing_bytes", f"hot volume {vid}", str(e)))
                hot_live[vid] = {}
        elif row["info_json"]:
            info = json.loads(row["info_json"])
            for key, size in zip(info["block_keys"], info["block_sizes"], strict=True):
                expected.add(key)
                _expect_file(store, key, size, f"warm volume {vid}", out)
    for g in groups:
        info = json.loads(g["info_json"])
        for key, size in zip(info["block_keys"], info["block_sizes"], strict=True):
            expected.add(key)
            _expect_file(store, key, size, f"XOR group {g['xor_group']}", out)
    pack_entries: dict[int, set] = {}
    for pid, row in packs.items():
        info = json.loads(row["info_json"])
        for key in [*info["keys"], *info["manifest_keys"]]:
            expected.add(key)
            if not store.fs.exists(key):
                out.append(Difference("missing_bytes", f"cold pack {pid}", f"{key} is missing"))
        try:
            pack_entries[pid] = {e.media_id for e in store.pack(pid).entries}
        except Exception as e:  # noqa: BLE001 - reported, fsck goes on
            out.append(Difference("missing_bytes", f"cold pack {pid}", f"no readable manifest: {e}"))
            pack_entries[pid] = set()

    referenced: dict[int, set[int]] = {}
    for loc in locations:
        mid, tier = loc["media_id"], loc["tier"]
        where = f"media {mid} ({tier})"
        if tier == "hot":
            referenced.setdefault(loc["volume_id"], set()).add(mid)
            if loc["volume_id"] not in volumes:
                out.append(Difference("bad_location", where, f"hot volume {loc['volume_id']} is not in the catalog"))
            elif hot_live.get(loc["volume_id"], {}).get(mid) != loc["size"]:
                out.append(Difference("missing_bytes", where, f"no live needle of {loc['size']} bytes in its volume"))
        elif tier == "warm":
            row = volumes.get(loc["volume_id"])
            if row is None or not row["info_json"]:
                out.append(Difference("bad_location", where, f"warm volume {loc['volume_id']} is not encoded"))
            elif loc["offset"] + loc["size"] > row["bytes"]:
                out.append(Difference("bad_location", where, f"bytes beyond warm volume {loc['volume_id']}'s end"))
        elif tier == "cold":
            if loc["pack_id"] not in packs:
                out.append(Difference("bad_location", where, f"cold pack {loc['pack_id']} is not in the catalog"))
            elif mid not in pack_entries.get(loc["pack_id"], set()):
                out.append(Difference("missing_bytes", where, f"not in cold pack {loc['pack_id']}'s manifest"))

    for vid, live in hot_live.items():
        for needle in sorted(set(live) - referenced.get(vid, set())):
            out.append(Difference("orphan_needle", f"hot volume {vid}", f"live needle {needle} is not in the catalog"))
    for key in store.fs.list():
        if key.startswith(f"{INTENTS}/"):
            out.append(Difference("intent_pending", key, "a move was interrupted; the next run resumes it"))
        elif key not in expected:
            out.append(Difference("orphan_file", key, "no catalog row refers to this file"))
    for key in store.fs.temp_files():
        out.append(Difference("temp_file", key, "left by a killed write; removed by `darkroom blob fsck --fix`"))
    return out


def _expect_file(store: BlobStore, key: str, size: int, owner: str, out: list[Difference]) -> None:
    try:
        actual = store.fs.size(key)
    except BlobFSError:
        out.append(Difference("missing_bytes", owner, f"{key} is missing"))
        return
    if actual != size:
        out.append(Difference("missing_bytes", owner, f"{key} holds {actual} bytes, the catalog says {size}"))


# -- story expiry and compaction ------------------------------------------------------------------------------------


def expire_stories(store: BlobStore, stories: Iterable[tuple[int, datetime]], *, as_of: datetime) -> dict:
    """Tombstones the media of stories created at or before ``as_of - (24 h + 1 h)``; returns counts.

    The catalog row goes to tier ``deleted`` first, then the needle is tombstoned; a re-run tombstones any needle a
    killed run left live. A story younger than TTL + grace is never touched.
    """
    cutoff = as_of - STORY_TTL - STORY_GRACE
    expired = {sid for sid, created in stories if created <= cutoff}
    rows = store.catalog.rows("media_locations", match(kind="story", tier="hot"))
    newly = [r for r in rows if r["media_id"] in expired]
    store.catalog.upsert("media_locations", [{**r, "tier": "deleted", "placed_at": as_of} for r in newly])
    crash_point("story_expiry.catalog_marked")
    deleted = store.catalog.rows("media_locations", match(kind="story", tier="deleted"))
    tombstoned = 0
    by_volume: dict[int, list[int]] = {}
    for r in deleted:
        by_volume.setdefault(r["volume_id"], []).append(r["media_id"])
    for vid, ids in sorted(by_volume.items()):
        vol = store.hot_volume(vid)
        tombstoned += vol.delete_many(ids)
        vol.checkpoint()
    return {"expired": len(newly), "tombstoned": tombstoned, "cutoff": cutoff.isoformat()}


def compact(store: BlobStore, *, as_of: datetime, min_garbage_fraction: float = 0.25) -> dict:
    """Compacts sealed hot volumes whose dead bytes reach the fraction; refreshes their catalog offsets and rows.

    The open hot volume is sealed first when its dead bytes reach the fraction (see :func:`_seal_open_volume`), so
    the bytes of media moved out of hot, or of expired stories, do not stay on disk until it happens to fill.
    """
    done, reclaimed = [], 0
    opened = _seal_open_volume(store, as_of=as_of, min_garbage_fraction=min_garbage_fraction)
    sealed = sorted(r["volume_id"] for r in store.catalog.rows("volumes", match(kind="hot", state="sealed")))
    for vid in sealed:
        vol = store.hot_volume(vid)
        if not vol.sealed:
            # The catalog is the truth: a replica recovery that re-scanned the data file (rolling an interrupted
            # compaction forward) comes back without the index file's sealed flag.
            vol.seal()
        if vol.size and vol.garbage_bytes / vol.size >= min_garbage_fraction:
            reclaimed += vol.compact()
            done.append(vid)
            crash_point("compact.volume_compacted")
        _refresh_offsets(store.catalog, store, vid)
    # Every sealed volume's row, not only this run's: a killed run may have compacted some without recording them.
    store.refresh_hot_volume_rows(sealed, as_of)
    return {"volumes": done, "bytes_reclaimed": reclaimed, "sealed_open_volume": opened}


def _seal_open_volume(store: BlobStore, *, as_of: datetime, min_garbage_fraction: float) -> int | None:
    """Marks the open hot volume sealed in the catalog when its dead bytes reach the fraction; returns its id.

    Only the catalog changes here: :func:`compact` then seals the volume on disk (the catalog is the truth) and
    rewrites it, and the next put opens a new volume. A volume holding a live needle the catalog does not point at
    (a put killed before recording it) stays open, so that the next put can adopt the needle (``place_hot``).
    """
    vid = store.open_hot_volume_id()
    if vid is None:
        return None
    vol = store.hot_volume(vid)
    if not vol.size or vol.garbage_bytes / vol.size < min_garbage_fraction:
        return None
    recorded = {r["media_id"] for r in store.catalog.rows("media_locations", match(tier="hot", volume_id=vid))}
    if any(needle_id not in recorded for needle_id, _offset, _size in vol.needles()):
        return None
    store.catalog.upsert("volumes", [{**store.catalog.get("volumes", vid), "state": "sealed", "updated_at": as_of}])
    crash_point("compact.open_volume_sealed")
    return vid


def _refresh_offsets(catalog: Catalog, store: BlobStore, volume_id: int) -> None:
    offsets = {n: off for n, off, _size in store.hot_volume(volume_id).needles()}
    rows = catalog.rows("media_locations", match(tier="hot", volume_id=volume_id))
    catalog.upsert(
        "media_locations", [{**r, "offset": offsets[r["media_id"]]} for r in rows if r["media_id"] in offsets]
    )


# -- what is stored where ---------------------------------------------------------------------------------------------


def tier_report(store: BlobStore) -> dict:
    """Objects, logical bytes and raw bytes on disk per tier, from the catalog and the files; measured replication.

    hot: every replica's data file (live needles, plus dead ones until compaction); warm: the 14 block files of each
    volume plus the XOR blocks in the third region; cold: both copies of every pack. ``all_hot_raw_bytes`` is what
    the same live bytes would take as 3 hot replicas.
    """
    locations = store.catalog.read("media_locations", columns=["tier", "size"]).to_pylist()
    out: dict[str, dict] = {t: {"objects": 0, "bytes": 0, "raw_bytes": 0} for t in ("hot", "warm", "cold")}
    for r in locations:
        if r["tier"] in out:
            out[r["tier"]]["objects"] += 1
            out[r["tier"]]["bytes"] += r["size"]
    volumes = store.catalog.rows("volumes")
    for row in volumes:
        if row["kind"] == "hot":
            vol = store.hot_volume(row["volume_id"])
            out["hot"]["raw_bytes"] += vol.size * len(vol.machines)
        elif row["info_json"]:
            out["warm"]["raw_bytes"] += sum(json.loads(row["info_json"])["block_sizes"])
    out["warm"]["xor_raw_bytes"] = sum(
        sum(json.loads(g["info_json"])["block_sizes"]) for g in store.catalog.rows("xor_groups")
    )
    out["warm"]["raw_bytes"] += out["warm"]["xor_raw_bytes"]
    out["warm"]["volume_bytes"] = sum(r["bytes"] for r in volumes if r["kind"] == "warm")
    for row in store.catalog.rows("packs"):
        out["cold"]["raw_bytes"] += row["stored_bytes"]
    for f in out.values():
        f["replication"] = round(f["raw_bytes"] / f["bytes"], 4) if f["bytes"] else None
    # Warm volumes are immutable: bytes of media since archived stay in them; per volume byte the factor is:
    if out["warm"]["volume_bytes"]:
        out["warm"]["replication_per_volume_byte"] = round(out["warm"]["raw_bytes"] / out["warm"]["volume_bytes"], 4)
    live = sum(f["bytes"] for f in out.values())
    raw = sum(f["raw_bytes"] for f in out.values())
    hot_replicas = store.blob.hot_replicas
    return {
        "tiers": out,
        "total": {"bytes": live, "raw_bytes": raw, "replication": round(raw / live, 4) if live else None},
        "all_hot_raw_bytes": live * hot_replicas,
        "saved_vs_all_hot": round(1 - raw / (live * hot_replicas), 4) if live else None,
    }
