"""The blob catalog: Delta tables that say where every media's bytes are. The catalog is the truth.

Written with delta-rs (``deltalake``), so the read path (``darkroom blob get``) and the storage jobs' commits need no
JVM; Spark jobs and dbt read the same tables by path. Tables under ``<lake>/blob_catalog/``:

- ``media_locations``: one row per blob (a post's media or a story's media): its tier, where (hot volume, warm
  volume or cold pack, offset, size), the checksum of its bytes, and ``placed_at`` (the logical time of the job that
  put it there, or a new upload's own upload time; never the wall clock, so a re-run writes the same row).
- ``volumes``: hot and warm volumes and their state machine (hot: ``open -> sealed``; warm: ``encoding -> encoded
  -> released``, released meaning the hot copies of its media were tombstoned; ``archived`` when no live media is
  left in it), a warm volume's blocks with their sizes and SHA-256s, its XOR group, and blocks found lost.
- ``xor_groups``: f4's geo-replication: warm volumes A and B of two regions, XOR-ed into a third.
- ``packs``: cold packs, their copies and checksums.

Every upsert writes only rows that differ from what is stored, so a re-run that changes nothing commits nothing and
the tables stay identical. ``meta.media_placement`` (media_id, tier, placed_at), kept in step by
:meth:`Catalog.sync_placement`, is each media's placement *history*, one row per (media, placed_at): dbt reads each
media's latest placement before a run's as-of, so a day's marts do not depend on whether that day's own moves had
already been made (a re-run of the day after its tiering builds the same rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable, write_deltalake

TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "media_locations": pa.schema(
        [
            pa.field("media_id", pa.int64(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),  # media | story
            pa.field("tier", pa.string(), nullable=False),  # hot | warm | cold | deleted
            pa.field("volume_id", pa.int64()),  # hot or warm volume
            pa.field("pack_id", pa.int64()),  # cold pack
            pa.field("offset", pa.int64()),  # needle offset (hot) or byte offset in the volume (warm)
            pa.field("size", pa.int64(), nullable=False),
            pa.field("checksum", pa.string(), nullable=False),
            pa.field("placed_at", TS, nullable=False),
        ]
    ),
    "volumes": pa.schema(
        [
            pa.field("volume_id", pa.int64(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),  # hot | warm
            pa.field("state", pa.string(), nullable=False),
            pa.field("region", pa.string(), nullable=False),
            pa.field("bytes", pa.int64(), nullable=False),  # logical bytes (a warm volume's packed length)
            pa.field("blobs", pa.int64(), nullable=False),
            pa.field("info_json", pa.string()),  # warm: blobstore.warm.WarmVolume (blocks, sizes, SHA-256s)
            pa.field("lost_blocks", pa.list_(pa.int32())),
            pa.field("xor_group", pa.int64()),
            pa.field("updated_at", TS, nullable=False),
        ]
    ),
    "xor_groups": pa.schema(
        [
            pa.field("xor_group", pa.int64(), nullable=False),
            pa.field("volume_a", pa.int64(), nullable=False),
            pa.field("volume_b", pa.int64(), nullable=False),
            pa.field("region", pa.string(), nullable=False),
            pa.field("info_json", pa.string(), nullable=False),  # blobstore.warm.XorPair
            pa.field("updated_at", TS, nullable=False),
        ]
    ),
    "packs": pa.schema(
        [
            pa.field("pack_id", pa.int64(), nullable=False),
            pa.field("state", pa.string(), nullable=False),  # written | verified
            pa.field("info_json", pa.string(), nullable=False),  # blobstore.cold.PackInfo, as JSON
            pa.field("blobs", pa.int64(), nullable=False),
            pa.field("raw_bytes", pa.int64(), nullable=False),
            pa.field("stored_bytes", pa.int64(), nullable=False),
            pa.field("updated_at", TS, nullable=False),
        ]
    ),
}
KEYS = {"media_locations": "media_id", "volumes": "volume_id", "xor_groups": "xor_group", "packs": "pack_id"}
PLACEMENT_SCHEMA = pa.schema(
    [
        pa.field("media_id", pa.int64(), nullable=False),
        pa.field("tier", pa.string(), nullable=False),
        pa.field("placed_at", TS, nullable=False),
    ]
)


def match(**columns: object) -> ds.Expression:
    """``col == value and ...`` as a dataset filter (string literals typed as the tables' ``string``)."""
    expr = None
    for name, value in columns.items():
        literal = pa.scalar(value, pa.string()) if isinstance(value, str) else value
        term = ds.field(name) == literal
        expr = term if expr is None else expr & term
    assert expr is not None, "match() needs at least one column"
    return expr


class CatalogError(ValueError):
    """A catalog row that is missing or inconsistent, named."""


class Catalog:
    def __init__(self, lake_dir: Path) -> None:
        self.root = Path(lake_dir) / "blob_catalog"
        self.placement_path = Path(lake_dir) / "meta" / "media_placement"

    def path(self, name: str) -> Path:
        if name not in SCHEMAS:
            raise CatalogError(f"unknown catalog table {name!r}; known: {', '.join(SCHEMAS)}")
        return self.root / name

    def ensure(self) -> None:
        for name, schema in SCHEMAS.items():
            if not DeltaTable.is_deltatable(str(self.path(name))):
                DeltaTable.create(str(self.path(name)), schema, mode="ignore")
        if not DeltaTable.is_deltatable(str(self.placement_path)):
            DeltaTable.create(str(self.placement_path), PLACEMENT_SCHEMA, mode="ignore")

    def table(self, name: str) -> DeltaTable:
        path = self.path(name)
        if not DeltaTable.is_deltatable(str(path)):
            self.ensure()
        return DeltaTable(str(path))

    def read(
        self, name: str, where: ds.Expression | None = None, columns: Sequence[str] | None = None, *, pushdown=False
    ) -> pa.Table:
        """The table's rows matching ``where``. Filters on string columns are applied after the scan (delta-rs
        scans them as ``string_view``, which dataset filters cannot compare); ``pushdown=True`` for integer keys."""
        dataset = self.table(name).to_pyarrow_dataset()
        cols = list(columns) if columns else None
        if where is None:
            return dataset.to_table(columns=cols)
        if pushdown:
            return dataset.to_table(filter=where, columns=cols)
        return dataset.to_table().filter(where).select(cols) if cols else dataset.to_table().filter(where)

    def rows(self, name: str, where: ds.Expression | None = None, *, pushdown: bool = False) -> list[dict]:
        return self.read(name, where, pushdown=pushdown).to_pylist()

    def get(self, name: str, key: int) -> dict | None:
        found = self.rows(name, ds.field(KEYS[name]) == key, pushdown=True)
        return found[0] if found else None

    def location(self, media_id: int) -> dict:
        row = self.get("media_locations", media_id)
        if row is None:
            raise CatalogError(f"media {media_id}: not in the blob catalog ({self.path('media_locations')})")
        return row

    def upsert(self, name: str, rows: Iterable[dict]) -> int:
        """MERGE rows on the table's key, writing only rows that differ from the stored ones; returns rows written."""
        key = KEYS[name]
        schema = SCHEMAS[name]
        new = {r[key]: r for r in rows}
        if not new:
            return 0
        stored = {r[key]: r for r in self.rows(name, ds.field(key).isin(list(new)), pushdown=True)}
        changed = [r for r in _conform([new[k] for k in sorted(new)], schema) if r != stored.get(r[key])]
        if not changed:
            return 0
        source = pa.Table.from_pylist(changed, schema=schema)
        (
            self.table(name)
            .merge(source, f"t.{key} = s.{key}", source_alias="s", target_alias="t")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        return len(changed)

    def insert(self, name: str, rows: list[dict]) -> int:
        """Appends rows whose keys the caller knows are new (no read of stored rows: bulk loads)."""
        if not rows:
            return 0
        write_deltalake(
            str(self.path(name)),
            pa.Table.from_pylist(_conform(rows, SCHEMAS[name]), schema=SCHEMAS[name]),
            mode="append",
        )
        return len(rows)

    def next_id(self, name: str, floor: int = 1) -> int:
        ids = self.read(name, columns=[KEYS[name]]).column(0)
        return max(floor, (pc.max(ids).as_py() or 0) + 1) if len(ids) else floor

    def sync_placement(self) -> int:
        """Records in ``meta.media_placement`` every post media whose ``media_locations`` (tier, placed_at) is not
        its latest placement there; returns rows written. A placement at a (media, placed_at) already recorded
        replaces that row's tier (a media moved twice at one logical time: the last move stands)."""
        self.ensure()
        want = self.read("media_locations", match(kind="media"), ["media_id", "tier", "placed_at"])
        latest = self.current_placement()
        changed = [r for r in want.to_pylist() if latest.get(r["media_id"]) != (r["tier"], r["placed_at"])]
        if not changed:
            return 0
        source = pa.Table.from_pylist(changed, schema=PLACEMENT_SCHEMA)
        (
            DeltaTable(str(self.placement_path))
            .merge(
                source,
                "t.media_id = s.media_id AND t.placed_at = s.placed_at",
                source_alias="s",
                target_alias="t",
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        return len(changed)

    def current_placement(self) -> dict[int, tuple[str, object]]:
        """media_id -> (tier, placed_at) of its latest row in ``meta.media_placement``."""
        rows = DeltaTable(str(self.placement_path)).to_pyarrow_table().to_pylist()
        out: dict[int, tuple[str, object]] = {}
        for r in sorted(rows, key=lambda r: (r["media_id"], r["placed_at"])):
            out[r["media_id"]] = (r["tier"], r["placed_at"])
        return out

    def snapshot(self) -> dict[str, list[dict]]:
        """Every catalog table's rows, sorted by key: what idempotency tests compare."""
        out = {name: sorted(self.rows(name), key=lambda r, k=KEYS[name]: r[k]) for name in SCHEMAS}
        out["media_placement"] = sorted(
            DeltaTable(str(self.placement_path)).to_pyarrow_table().to_pylist(),
            key=lambda r: (r["media_id"], r["placed_at"]),
        )
        return out


def _conform(rows: list[dict], schema: pa.Schema) -> list[dict]:
    """The rows as the table would return them (every column, values normalised through Arrow)."""
    required = [f.name for f in schema if not f.nullable]
    for row in rows:
        missing = [c for c in required if row.get(c) is None]
        if missing:
            raise CatalogError(f"catalog row {row!r}: missing required columns {missing}")
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema).to_pylist()
