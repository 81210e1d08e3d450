"""The blob store as one object: the read path through the catalog, and writes into hot volumes.

:class:`BlobStore` ties the engines (:mod:`blobstore.haystack`, :mod:`blobstore.warm`, :mod:`blobstore.cold`) to
the catalog (:mod:`blobstore.catalog`). A read resolves the media in ``media_locations``: a hot replica, else its warm
volume (a normal read from the data block holding it; a degraded read reconstructs the segment from any 10 of 14
blocks), else its cold pack (and, unless told not to, the media is restored to hot). Every read compares the bytes
with the catalog's checksum; a mismatch is an error naming the media and the tier, never wrong bytes.

Hot writes go to one open volume at a time (:meth:`BlobStore.put_hot`); before writing, needles that an earlier,
killed writer appended but never recorded in the catalog are *adopted* (their catalog row is written) instead of
being appended again, so a crash never leaves orphaned bytes.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from blobstore import cold
from blobstore.catalog import Catalog, CatalogError, match
from blobstore.content import checksum
from blobstore.fs import LocalFS
from blobstore.haystack import HotStore, HotVolume, volume_key
from blobstore.intents import crash_point
from blobstore.topology import Topology
from blobstore.warm import VolumeLostError, WarmStore, WarmVolume, XorPair
from darkroom.settings import DarkroomSettings

log = logging.getLogger(__name__)


@contextmanager
def writer_lock(root: Path, *, job: str) -> Iterator[None]:
    """One writer at a time: storage jobs hold an exclusive lock on ``<root>/.writer.lock`` while they write (a second
    job waits). Inside it no other write is in flight, so temp files of killed writes are removed at the start."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".writer.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            removed = LocalFS(root).remove_temp_files()
            if removed:
                log.warning("%s: removed %d temp files of killed writes under %s", job, removed, root)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class BlobReadError(RuntimeError):
    """A media that cannot be read back with its catalog checksum, naming the media, the tier and why."""


@dataclass(frozen=True)
class Blob:
    """A blob to store: its id, kind (``media`` or ``story``) and bytes. ``placed_at``, when given, is the
    catalog's ``placed_at`` of a new upload (its upload time) instead of the storing job's as-of, so the row does not
    depend on when the job ran."""

    media_id: int
    kind: str
    data: bytes
    placed_at: datetime | None = None


class BlobStore:
    def __init__(self, settings: DarkroomSettings) -> None:
        self.settings = settings
        self.blob = settings.blob
        self.fs = LocalFS(settings.blob_root)
        self.topology = Topology(settings.blob)
        self.catalog = Catalog(settings.lake_dir)
        self._hot: dict[int, HotVolume] = {}

    @cached_property
    def warm(self) -> WarmStore:
        return WarmStore(self.fs, self.blob)

    # -- volumes -------------------------------------------------------------------------------------------------------

    def hot_volume(self, volume_id: int) -> HotVolume:
        vol = self._hot.get(volume_id)
        if vol is None:
            vol = HotVolume.open(self.fs, self.topology, volume_id, capacity=self.blob.volume_bytes)
            self._hot[volume_id] = vol
        return vol

    def forget_hot(self, volume_id: int) -> None:
        """Drops the cached handle (after compaction or repair, the next use re-opens the files)."""
        vol = self._hot.pop(volume_id, None)
        if vol is not None:
            vol.close()

    def warm_volume(self, volume_id: int) -> WarmVolume:
        row = self.catalog.get("volumes", volume_id)
        if row is None or row["kind"] != "warm" or not row["info_json"]:
            raise CatalogError(f"warm volume {volume_id}: no encoded warm volume in the catalog")
        return WarmVolume.from_dict(json.loads(row["info_json"]))

    def xor_pair(self, group: int) -> XorPair:
        row = self.catalog.get("xor_groups", group)
        if row is None:
            raise CatalogError(f"XOR group {group}: not in the catalog")
        d = json.loads(row["info_json"])
        return XorPair(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def pack(self, pack_id: int) -> cold.PackManifest:
        row = self.catalog.get("packs", pack_id)
        if row is None:
            raise CatalogError(f"cold pack {pack_id}: not in the catalog")
        keys = json.loads(row["info_json"])["manifest_keys"]
        errors = []
        for key in keys:
            try:
                return cold.load_manifest(self.fs, key)
            except (cold.ColdPackError, OSError) as e:
                errors.append(f"{key}: {e}")
        for key in json.loads(row["info_json"])["keys"]:
            try:
                return cold.load_manifest(self.fs, key)  # the manifest embedded in the pack's footer
            except (cold.ColdPackError, OSError) as e:
                errors.append(f"{key}: {e}")
        raise BlobReadError(f"cold pack {pack_id}: no readable manifest: {'; '.join(errors)}")

    # -- the read path -------------------------------------------------------------------------------------------------

    def get(self, media_id: int, *, restore: bool = True, as_of: datetime | None = None) -> bytes:
        """The media's bytes, verified against the catalog; a cold media is restored to hot unless ``restore=False``."""
        loc = self.catalog.location(media_id)
        data = self.read_location(loc)
        if loc["tier"] == "cold" and restore:
            self.restore([media_id], as_of=as_of or loc["placed_at"])
        return data

    def read_location(self, loc: dict) -> bytes:
        """A catalog location's bytes, verified against its checksum (``BlobReadError`` naming the media if not)."""
        return self._read_location(loc, {}, {})

    def read_locations(self, locations: Iterable[dict]) -> Iterator[tuple[dict, bytes]]:
        """``(location, bytes)`` for every location, each verified as ``read_location`` does; each warm volume's
        description and each cold pack's manifest is read from the catalog once for all its media (a bulk read:
        ``read_location`` alone reads them for every media)."""
        volumes: dict[int, WarmVolume] = {}
        packs: dict[int, cold.PackManifest] = {}
        for loc in locations:
            yield loc, self._read_location(loc, volumes, packs)

    def _read_location(self, loc: dict, volumes: dict, packs: dict) -> bytes:
        media_id, tier = loc["media_id"], loc["tier"]
        try:
            if tier == "hot":
                data = self.hot_volume(loc["volume_id"]).read(media_id)
            elif tier == "warm":
                if loc["volume_id"] not in volumes:
                    volumes[loc["volume_id"]] = self.warm_volume(loc["volume_id"])
                data = self._read_warm(loc, volumes[loc["volume_id"]])
            elif tier == "cold":
                if loc["pack_id"] not in packs:
                    packs[loc["pack_id"]] = self.pack(loc["pack_id"])
                data = cold.read_media(self.fs, packs[loc["pack_id"]], media_id)
            else:
                raise BlobReadError(f"media {media_id}: tier {tier!r}, nothing to read (deleted)")
        except (OSError, ValueError, LookupError, cold.ColdPackError) as e:
            raise BlobReadError(f"media {media_id} ({tier}): {e}") from e
        if checksum(data) != loc["checksum"]:
            raise BlobReadError(
                f"media {media_id} ({tier}): checksum {checksum(data)} does not match the catalog's {loc['checksum']}"
            )
        return data

    def _read_warm(self, loc: dict, volume: WarmVolume) -> bytes:
        try:
            return self.warm.read_range(volume, loc["offset"], loc["size"])
        except VolumeLostError as e:
            row = self.catalog.get("volumes", volume.volume_id)
            self.catalog.upsert("volumes", [{**row, "state": "lost", "lost_blocks": list(e.blocks)}])
            raise

    # -- hot writes ----------------------------------------------------------------------------------------------------

    def open_hot_volume_id(self) -> int | None:
        rows = self.catalog.rows("volumes", match(kind="hot", state="open"))
        return max((r["volume_id"] for r in rows), default=None)

    def _unrecorded_hot_volumes(self) -> list[int]:
        """Hot volumes on disk that the catalog does not know (a writer killed before recording them)."""
        known = {r["volume_id"] for r in self.catalog.rows("volumes")}
        found = set()
        for key in self.fs.list():
            if "/hot/vol-" in key and key.endswith(".dat"):
                found.add(int(key.rsplit("vol-", 1)[1][:8]))
        return sorted(found - known)

    def put_hot(self, blobs: Iterable[Blob], *, as_of: datetime, batch: int = 16384) -> int:
        """Stores blobs in hot volumes and records them; blobs already recorded are skipped. Returns blobs written.

        Catalog rows are written per ``batch`` and whenever a volume is sealed; a blob an earlier killed run
        appended but did not record is adopted from the volume that holds it (see :meth:`place_hot`).
        """
        recorded = self._recorded_ids()
        unrecorded = (b for b in blobs if b.media_id not in recorded)
        return self.place_hot(unrecorded, as_of=as_of, batch=batch, unrecorded=True)

    def place_hot(self, blobs: Iterable[Blob], *, as_of: datetime, batch: int = 2048, unrecorded: bool = False) -> int:
        """Appends blobs to the open hot volume (sealing it and creating others as they fill) and points each one's
        catalog row there, whatever tier it had (a restore, a promotion); returns the blobs appended.

        Crash safety rests on one rule: a volume that may hold needles the catalog does not point at is either not
        in the catalog or marked open there. So a batch's media rows are written before its volume rows (a volume is
        recorded sealed only once its needles are recorded), and a re-run looks in exactly those volumes for needles
        of the blobs it is given whose catalog row points elsewhere: such a needle, if it holds the blob's bytes, is
        adopted (its row written) instead of appended again. Volumes a killed run sealed or created are recorded at
        the end. ``unrecorded``: no blob has a catalog row yet (put_hot), so rows are appended rather than merged.
        """
        hot_at = {r["media_id"]: r["volume_id"] for r in self.catalog.rows("media_locations", match(tier="hot"))}
        candidates = self._unrecorded_hot_volumes()
        open_id = self.open_hot_volume_id()
        if open_id is not None:
            candidates.append(open_id)
        adoptable: dict[int, tuple[int, int]] = {}
        for vid in candidates:
            for needle_id, offset, _size in self.hot_volume(vid).needles():
                if hot_at.get(needle_id) != vid:
                    adoptable[needle_id] = (vid, offset)
        store = HotStore(
            self.fs,
            self.topology,
            volume_bytes=self.blob.volume_bytes,
            new_volume_id=lambda: self.catalog.next_id("volumes", floor=self._next_free_volume_id()),
        )
        resume = max(candidates, default=None)
        if resume is not None:
            store.volume = self.hot_volume(resume)
        written = 0
        for chunk in _chunks(blobs, batch):
            rows: list[dict] = []
            to_append = []
            for b in chunk:
                found = adoptable.pop(b.media_id, None)
                if found is not None and self.hot_volume(found[0]).read(b.media_id) == b.data:
                    rows.append(_hot_row(b, found[0], found[1], as_of))
                else:
                    to_append.append(b)
            sealed_before = len(store.sealed_volume_ids)
            locations = store.put_many([(b.media_id, b.data) for b in to_append])
            crash_point("hot.appended")
            rows.extend(
                _hot_row(b, loc.volume_id, loc.offset, as_of) for b, loc in zip(to_append, locations, strict=True)
            )
            written += len(to_append)
            self._record_hot(store, rows, as_of, sealed=store.sealed_volume_ids[sealed_before:], new=unrecorded)
        store.close()
        if store.volume is not None:
            self._hot[store.volume.volume_id] = store.volume
        self.refresh_hot_volume_rows(candidates, as_of)
        return written

    def _next_free_volume_id(self) -> int:
        on_disk = [int(k.rsplit("vol-", 1)[1][:8]) for k in self.fs.list() if "/hot/vol-" in k or "/warm/vol-" in k]
        return max(on_disk, default=0) + 1

    def _record_hot(self, store: HotStore, rows: list[dict], as_of: datetime, sealed: list[int], new: bool) -> None:
        """Media rows first, then their volumes' rows (see :meth:`place_hot`). ``new``: no media has a row yet
        (put_hot), so rows are appended; a restore or promotion replaces the media's rows."""
        if new:
            self.catalog.insert("media_locations", rows)
        else:
            self.catalog.upsert("media_locations", rows)
        crash_point("hot.locations_recorded")
        volumes = []
        for vid in sorted({*sealed, *(r["volume_id"] for r in rows)}):
            vol = store.volume if store.volume is not None and store.volume.volume_id == vid else self.hot_volume(vid)
            self._hot[vid] = vol
            volumes.append(self._hot_volume_row(vol, as_of))
        self.catalog.upsert("volumes", volumes)

    def _hot_volume_row(self, vol: HotVolume, as_of: datetime) -> dict:
        stored = self.catalog.get("volumes", vol.volume_id)
        return {
            "volume_id": vol.volume_id,
            "kind": "hot",
            "state": "sealed" if vol.sealed else "open",
            "region": self.topology.home_region(vol.volume_id),
            "bytes": vol.size,
            "blobs": len(vol),
            "updated_at": stored["updated_at"] if stored and _same_hot(stored, vol) else as_of,
        }

    def refresh_hot_volume_rows(self, volume_ids: Iterable[int], as_of: datetime) -> None:
        self.catalog.upsert("volumes", [self._hot_volume_row(self.hot_volume(v), as_of) for v in volume_ids])

    def _recorded_ids(self) -> set[int]:
        return set(self.catalog.read("media_locations", columns=["media_id"]).column(0).to_pylist())

    # -- restore -------------------------------------------------------------------------------------------------------

    def restore(self, media_ids: Iterable[int], *, as_of: datetime) -> int:
        """Brings cold (or warm) media back to hot: appended to the open hot volume, then the catalog points there.

        The cold copy stays (packs are immutable); the media is hot again until a later plan moves it. A restore
        killed after its append is adopted by the next one (:meth:`place_hot`).
        """
        todo = [loc for loc in map(self.catalog.location, dict.fromkeys(media_ids)) if loc["tier"] != "hot"]
        blobs = (Blob(loc["media_id"], loc["kind"], data) for loc, data in self.read_locations(todo))
        self.place_hot(blobs, as_of=as_of)
        self.catalog.sync_placement()
        return len(todo)

    # -- inventory -----------------------------------------------------------------------------------------------------

    def hot_volume_ids(self) -> list[int]:
        return sorted(r["volume_id"] for r in self.catalog.rows("volumes", match(kind="hot")))

    def files(self) -> Iterator[str]:
        return self.fs.list()

    def hot_keys(self, volume_id: int) -> list[str]:
        return [volume_key(m, volume_id, s) for m in self.topology.hot_replicas(volume_id) for s in ("dat", "idx")]


def _hot_row(blob: Blob, volume_id: int, offset: int, as_of: datetime) -> dict:
    return {
        "media_id": blob.media_id,
        "kind": blob.kind,
        "tier": "hot",
        "volume_id": volume_id,
        "pack_id": None,
        "offset": offset,
        "size": len(blob.data),
        "checksum": checksum(blob.data),
        "placed_at": blob.placed_at or as_of,
    }


def _same_hot(stored: dict, vol: HotVolume) -> bool:
    return (
        stored["bytes"] == vol.size
        and stored["blobs"] == len(vol)
        and stored["state"] == ("sealed" if vol.sealed else "open")
    )


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
