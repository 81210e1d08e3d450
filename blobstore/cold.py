"""Cold archive tier: media compressed into write-once packs, each pack kept whole in several regions.

Key layout (one copy per machine of ``Topology.cold_regions(pack_id, copies)``, i.e. one per region)::

    <machine.prefix>/cold/pack-<pack_id:08d>.zst             the pack file
    <machine.prefix>/cold/pack-<pack_id:08d>.manifest.json   its manifest (sidecar)

Every copy of a pack, and every copy of its sidecar, holds the same bytes.

Pack file::

    [frame 0][frame 1] ... [frame n-1][manifest JSON][footer: 48 bytes]
    |<------------ data section ---------->|

- frame i: one complete zstd frame (content size in its header, no zstd checksum) holding media i's raw bytes, so one
  media is restored by reading and decompressing only its own ``size`` bytes at ``offset``.
- manifest JSON: exactly the sidecar's bytes (both are kept: the sidecar finds a media without touching the pack's
  tail; the embedded copy recovers a lost or damaged sidecar).
- footer, little-endian: ``u64 manifest length | sha256 of the manifest bytes (32 bytes) | magic b"DRCOLD01"``.
  The sha256 tells a damaged embedded manifest from a good one, so a pack file describes itself.

Manifest: UTF-8 JSON, canonical (sorted keys, no spaces, ASCII), one line ending in a newline::

    format "darkroom-cold-pack", version 1, codec "zstd", checksum "sha256"
    pack_id, level                 the zstd level the frames were written with
    copies      [{"pack": key, "manifest": key}, ...]  every copy, in region order
    count, raw_bytes               number of media and the sum of their raw sizes
    data_bytes, data_sha256        size and sha256 of the data section: the pack's own checksum
    entries     [{"id", "offset", "size", "raw_size", "sha256"}, ...]
        id        the media id: an int >= 0, or a str (which may name sub-folders, "2026/11/a.jpg")
        offset    where its frame starts in the data section (= in the file); size: the frame's length
        raw_size  the media's size; sha256: hex sha256 of its raw bytes

Entries are sorted by id (ints, then strs) and tile the data section in order without gaps, so a pack's bytes depend
only on its items, the level and the placement: re-running an archival job rewrites byte-identical files (with the
same zstd library; another libzstd version may emit other frames for the same media).

An entry's name when extracted is its id as text. A name must be a relative POSIX path without empty, "." or ".."
parts, backslashes or NULs, unique, and not a folder of another name: checked when writing, loading and extracting.

Entry points: ``write_pack``, ``verify_pack``, ``read_media``, ``extract``, ``check_pack``, ``repair_copy``;
``load_manifest`` / ``parse_manifest`` validate a manifest, ``find_manifest`` finds one from storage alone.

Write, verify, publish: ``write_pack`` writes every copy (each file atomic and fsync'd by ``BlobFS.write``, the pack
before its sidecar); the caller runs ``verify_pack`` before it records the pack or drops the media's warmer copies.
Every read checks the media's raw sha256, so a damaged copy never yields wrong bytes: ``read_media`` moves on to the
next copy and fails, naming pack and media, only when no copy is good. ``check_pack`` is the scrubber's report
(missing and corrupt copies, their bad entries, entries lost everywhere); ``repair_copy`` rewrites a bad copy from
the good frames of the others. Checks read whole pack files into memory: packs are meant to be tens of MiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import zstandard

from blobstore.fs import BlobFS
from blobstore.intents import crash_point
from blobstore.topology import Machine, Topology

MediaId = int | str

FORMAT = "darkroom-cold-pack"
VERSION = 1
MAGIC = b"DRCOLD01"
FOOTER = struct.Struct("<Q32s8s")  # manifest length, sha256 of the manifest, magic
MIN_LEVEL, MAX_LEVEL = 1, 22

_HEADER_KEYS = {"format", "version", "codec", "checksum"}
_TOP_KEYS = _HEADER_KEYS | {"pack_id", "level", "copies", "count", "raw_bytes", "data_bytes", "data_sha256", "entries"}
_ENTRY_KEYS = {"id", "offset", "size", "raw_size", "sha256"}
_COPY_KEY = re.compile(r"(?P<region>[A-Za-z0-9_][A-Za-z0-9_.-]*)/cell-\d+/rack-\d+/m-\d+/cold/pack-(?P<pack>\d+)\.zst")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class ColdPackError(Exception):
    """A cold pack that cannot be written, read or repaired; the message names the pack and, if one, the media."""


class ManifestError(ColdPackError, ValueError):
    """A malformed or inconsistent manifest, or items that would make one; the message names the field or entry."""


class UnsafeNameError(ManifestError):
    """An entry name that could land outside the folder it is extracted into."""


class MediaNotFoundError(ColdPackError, LookupError):
    """The pack has no entry for this media id."""


class MediaUnavailableError(ColdPackError):
    """No copy of the pack holds good bytes for a media."""


class _Corrupt(Exception):
    """A frame that does not decode to its entry's raw bytes (internal)."""


@dataclass(frozen=True)
class PackEntry:
    media_id: MediaId
    offset: int
    size: int
    raw_size: int
    sha256: str

    @property
    def name(self) -> str:
        """Its relative path when extracted."""
        return str(self.media_id)


@dataclass(frozen=True)
class PackManifest:
    pack_id: int
    level: int
    pack_keys: tuple[str, ...]
    manifest_keys: tuple[str, ...]
    data_bytes: int
    data_sha256: str
    entries: tuple[PackEntry, ...]
    raw: bytes = field(repr=False, compare=False)  # the exact JSON bytes, as in the sidecar and the pack

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def raw_bytes(self) -> int:
        return sum(e.raw_size for e in self.entries)

    @property
    def pack_bytes(self) -> int:
        """Size of each copy's pack file."""
        return self.data_bytes + len(self.raw) + FOOTER.size

    @cached_property
    def _by_id(self) -> dict[MediaId, PackEntry]:
        return {e.media_id: e for e in self.entries}

    def entry(self, media_id: MediaId) -> PackEntry:
        try:
            return self._by_id[media_id]
        except KeyError:
            raise MediaNotFoundError(f"pack {self.pack_id:08d}: no media {media_id!r}") from None


@dataclass(frozen=True)
class PackInfo:
    """What ``write_pack`` wrote: the catalogue's record of a pack."""

    pack_id: int
    regions: tuple[str, ...]
    keys: tuple[str, ...]  # each copy's pack file
    manifest_keys: tuple[str, ...]  # each copy's sidecar
    checksums: tuple[str, ...]  # hex sha256 of each copy's pack file as written
    pack_bytes: int  # size of each copy's pack file (copies are byte-identical)
    count: int
    raw_bytes: int  # sum of the media's sizes
    compressed_bytes: int  # the data section: the media's frames
    manifest: PackManifest = field(repr=False)


@dataclass(frozen=True)
class CopyStatus:
    index: int
    pack_key: str
    manifest_key: str
    pack_present: bool
    manifest_present: bool
    bad_entries: tuple[MediaId, ...]  # entries whose frame is short, does not decode, or has the wrong raw sha256
    problems: tuple[str, ...]  # everything wrong with this copy, readable; empty when the copy is good

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class PackCheck:
    """The scrubber's report on one pack."""

    pack_id: int
    manifest: PackManifest = field(repr=False)
    copies: tuple[CopyStatus, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.copies)

    @property
    def missing(self) -> tuple[int, ...]:
        """Copies whose pack file is absent."""
        return tuple(c.index for c in self.copies if not c.pack_present)

    @property
    def corrupt(self) -> tuple[int, ...]:
        """Copies whose pack file is present but damaged, or whose sidecar is missing or damaged."""
        return tuple(c.index for c in self.copies if c.pack_present and not c.ok)

    @property
    def lost_entries(self) -> tuple[MediaId, ...]:
        """Media good in no copy: beyond repair from this pack."""
        lost = {e.media_id for e in self.manifest.entries}
        for c in self.copies:
            if c.pack_present:
                lost &= set(c.bad_entries)
        return tuple(e.media_id for e in self.manifest.entries if e.media_id in lost)


# --- keys and names -------------------------------------------------------------------------------------------------
def pack_key(machine: Machine, pack_id: int) -> str:
    return f"{machine.prefix}/cold/pack-{pack_id:08d}.zst"


def manifest_key(machine: Machine, pack_id: int) -> str:
    return f"{machine.prefix}/cold/pack-{pack_id:08d}.manifest.json"


def _entry_name(media_id: object, where: str) -> str:
    if isinstance(media_id, bool) or not isinstance(media_id, int | str):
        raise ManifestError(f"{where}: media id {media_id!r} is neither an int >= 0 nor a str")
    if isinstance(media_id, int):
        if media_id < 0:
            raise ManifestError(f"{where}: media id {media_id} is negative")
        return str(media_id)
    name = media_id
    if not name:
        problem = "is empty"
    elif "\x00" in name or "\\" in name:
        problem = "holds a NUL or a backslash"
    elif name.startswith("/"):
        problem = "is an absolute path"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, '.' or '..' part"
    else:
        return name
    raise UnsafeNameError(f"{where}: entry name {name!r} {problem}; it could land outside the extraction folder")


def _check_names(ids: Iterable[MediaId], where: str) -> None:
    """Every name safe, unique, and no name a folder of another (``a`` and ``a/b`` cannot both be files)."""
    names = [_entry_name(i, where) for i in ids]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ManifestError(f"{where}: entry name {name!r} appears twice")
        seen.add(name)
    for name in names:
        parts = name.split("/")
        for n in range(1, len(parts)):
            folder = "/".join(parts[:n])
            if folder in seen:
                raise ManifestError(f"{where}: entry name {folder!r} is also the folder of entry {name!r}")


def _sort_key(media_id: MediaId) -> tuple[bool, MediaId]:
    return (isinstance(media_id, str), media_id)


# --- the manifest ---------------------------------------------------------------------------------------------------
def _manifest_json(
    pack_id: int,
    level: int,
    pack_keys: Sequence[str],
    manifest_keys: Sequence[str],
    entries: Sequence[PackEntry],
    data: bytes,
) -> bytes:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "codec": "zstd",
        "checksum": "sha256",
        "pack_id": pack_id,
        "level": level,
        "copies": [{"pack": p, "manifest": m} for p, m in zip(pack_keys, manifest_keys, strict=True)],
        "count": len(entries),
        "raw_bytes": sum(e.raw_size for e in entries),
        "data_bytes": len(data),
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "entries": [
            {"id": e.media_id, "offset": e.offset, "size": e.size, "raw_size": e.raw_size, "sha256": e.sha256}
            for e in entries
        ],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii") + b"\n"


def _footer(raw_manifest: bytes) -> bytes:
    return FOOTER.pack(len(raw_manifest), hashlib.sha256(raw_manifest).digest(), MAGIC)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError(f"duplicate keys in {sorted(k for k, _ in pairs)}")
    return doc


def _fields(doc: object, expected: set[str], where: str) -> dict:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if set(doc) != expected:
        missing, extra = sorted(expected - set(doc)), sorted(set(doc) - expected)
        raise ManifestError(f"{where}: missing fields {missing}, unknown fields {extra}")
    return doc


def _int(doc: dict, key: str, where: str, lo: int = 0, hi: int | None = None) -> int:
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ManifestError(f"{where}: {key} = {v!r}, expected an int {bound}")
    return v


def _hex(doc: dict, key: str, where: str) -> str:
    v = doc[key]
    if not isinstance(v, str) or not _HEX64.fullmatch(v):
        raise ManifestError(f"{where}: {key} = {v!r}, expected 64 lowercase hex digits")
    return v


def _copies(copies: object, pack_id: int, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(copies, list) or not copies:
        raise ManifestError(f"{where}: copies must be a non-empty list")
    pack_keys, manifest_keys, regions = [], [], set()
    for i, c in enumerate(copies):
        c = _fields(c, {"pack", "manifest"}, f"{where}: copy #{i}")
        pk, mk = c["pack"], c["manifest"]
        match = _COPY_KEY.fullmatch(pk) if isinstance(pk, str) else None
        if not match or match["pack"] != f"{pack_id:08d}":
            raise ManifestError(f"{where}: copy #{i} pack key {pk!r} is not a cold pack key of pack {pack_id:08d}")
        if mk != pk.removesuffix(".zst") + ".manifest.json":
            raise ManifestError(f"{where}: copy #{i} manifest key {mk!r} does not sit beside its pack {pk!r}")
        if match["region"] in regions:
            raise ManifestError(f"{where}: two copies in region {match['region']!r}")
        regions.add(match["region"])
        pack_keys.append(pk)
        manifest_keys.append(mk)
    return tuple(pack_keys), tuple(manifest_keys)


def parse_manifest(data: bytes, *, source: str = "manifest", pack_bytes: int | None = None) -> PackManifest:
    """Parses and validates a manifest; ``pack_bytes``, if known, is the size of the pack file it describes.

    Refuses, naming the field or entry: bad JSON or fields, copy keys that are not this pack's cold keys, unsafe or
    clashing entry names, and an entry whose frame falls outside the data section or does not follow the one before.
    """
    try:
        doc = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except ValueError as e:  # also UnicodeDecodeError
        raise ManifestError(f"{source}: not a JSON manifest ({e})") from None
    doc = _fields(doc, _TOP_KEYS, source)
    header = {k: doc[k] for k in sorted(_HEADER_KEYS)}
    if header != {"format": FORMAT, "version": VERSION, "codec": "zstd", "checksum": "sha256"}:
        raise ManifestError(f"{source}: {header} is not a {FORMAT} v{VERSION} manifest (zstd, sha256)")
    pack_id = _int(doc, "pack_id", source)
    where = f"{source} (pack {pack_id:08d})"
    level = _int(doc, "level", where, MIN_LEVEL, MAX_LEVEL)
    pack_keys, manifest_keys = _copies(doc["copies"], pack_id, where)
    data_bytes = _int(doc, "data_bytes", where)
    if pack_bytes is not None and data_bytes + len(data) + FOOTER.size != pack_bytes:
        raise ManifestError(
            f"{where}: data_bytes = {data_bytes} + manifest + footer != the pack file's {pack_bytes} bytes"
        )
    data_sha256 = _hex(doc, "data_sha256", where)
    if not isinstance(doc["entries"], list):
        raise ManifestError(f"{where}: entries must be a list")
    entries, end = [], 0
    for i, item in enumerate(doc["entries"]):
        item = _fields(item, _ENTRY_KEYS, f"{where}: entry #{i}")
        media_id = item["id"]
        _entry_name(media_id, f"{where}: entry #{i}")
        at = f"{where}: entry {media_id!r}"
        offset, size = _int(item, "offset", at), _int(item, "size", at, lo=1)
        if offset + size > data_bytes:
            raise ManifestError(
                f"{at}: frame [{offset}, {offset + size}) lies outside the pack's data section ({data_bytes} bytes)"
            )
        if offset != end:
            raise ManifestError(
                f"{at}: frame starts at {offset}, expected {end} (frames tile the data section in order)"
            )
        entries.append(PackEntry(media_id, offset, size, _int(item, "raw_size", at), _hex(item, "sha256", at)))
        end = offset + size
    if end != data_bytes:
        raise ManifestError(f"{where}: the frames cover {end} of the data section's {data_bytes} bytes")
    _check_names((e.media_id for e in entries), where)
    if _int(doc, "count", where) != len(entries) or _int(doc, "raw_bytes", where) != sum(e.raw_size for e in entries):
        raise ManifestError(f"{where}: count or raw_bytes disagree with the entries")
    return PackManifest(pack_id, level, pack_keys, manifest_keys, data_bytes, data_sha256, tuple(entries), raw=data)


def _embedded_manifest(fs: BlobFS, key: str) -> PackManifest:
    size = fs.size(key)
    if size < FOOTER.size:
        raise ManifestError(f"{key}: {size} bytes, too short for a cold pack footer")
    length, digest, magic = FOOTER.unpack(fs.read(key, size - FOOTER.size, FOOTER.size))
    if magic != MAGIC:
        raise ManifestError(f"{key}: no cold pack footer (magic {magic!r}, expected {MAGIC!r})")
    if length > size - FOOTER.size:
        raise ManifestError(f"{key}: footer claims a {length}-byte manifest in a {size}-byte file")
    raw = fs.read(key, size - FOOTER.size - length, length)
    if hashlib.sha256(raw).digest() != digest:
        raise ManifestError(f"{key}: the embedded manifest does not match the footer's sha256")
    return parse_manifest(raw, source=key, pack_bytes=size)


def load_manifest(fs: BlobFS, key: str) -> PackManifest:
    """The validated manifest of a sidecar key (``.manifest.json``) or of a pack key (``.zst``, from its footer).

    The manifest must list ``key`` among its copies. Raises ManifestError, or BlobFSError if the file is missing.
    """
    if key.endswith(".manifest.json"):
        manifest = parse_manifest(fs.read(key), source=key)
        listed = manifest.manifest_keys
    elif key.endswith(".zst"):
        manifest = _embedded_manifest(fs, key)
        listed = manifest.pack_keys
    else:
        raise ValueError(f"{key}: expected a cold pack (.zst) or its manifest (.manifest.json)")
    if key not in listed:
        raise ManifestError(f"{key}: the manifest does not list this key among its copies {list(listed)}")
    return manifest


def find_manifest(fs: BlobFS, topology: Topology, pack_id: int, *, copies: int) -> PackManifest:
    """A pack's manifest found from storage alone (for a scrubber without a catalogue).

    Tries each copy's embedded manifest (its footer's sha256 vouches for it), then each sidecar.
    """
    machines = topology.cold_regions(pack_id, copies)
    reasons = []
    for key in [pack_key(m, pack_id) for m in machines] + [manifest_key(m, pack_id) for m in machines]:
        try:
            manifest = load_manifest(fs, key)
        except (OSError, ManifestError) as e:  # OSError: BlobFSError, missing or unreadable
            reasons.append(str(e))
            continue
        if manifest.pack_id == pack_id:
            return manifest
        reasons.append(f"{key}: manifest of pack {manifest.pack_id:08d}")
    raise ColdPackError(f"pack {pack_id:08d}: no readable manifest in any copy: {'; '.join(reasons)}")


# --- frames ---------------------------------------------------------------------------------------------------------
def _decode(frame: bytes, entry: PackEntry) -> bytes:
    """The entry's raw bytes, or _Corrupt; never decompresses more than ``raw_size + 1`` bytes."""
    if len(frame) != entry.size:
        raise _Corrupt(f"frame is {len(frame)} bytes, the manifest says {entry.size}")
    out = bytearray()
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(frame)
        while len(out) <= entry.raw_size:
            chunk = reader.read(min(_CHUNK, entry.raw_size + 1 - len(out)))
            if not chunk:
                break
            out += chunk
    except zstandard.ZstdError as e:
        raise _Corrupt(f"frame does not decode ({e})") from None
    if len(out) != entry.raw_size:
        got = f"more than {entry.raw_size}" if len(out) > entry.raw_size else str(len(out))
        raise _Corrupt(f"frame decodes to {got} bytes, the manifest says {entry.raw_size}")
    if hashlib.sha256(out).hexdigest() != entry.sha256:
        raise _Corrupt("raw sha256 mismatch")
    return bytes(out)


def _frame_ok(frame: bytes, entry: PackEntry) -> bool:
    try:
        _decode(frame, entry)
    except _Corrupt:
        return False
    return True


def _manifest_of(source: PackInfo | PackManifest) -> PackManifest:
    return source.manifest if isinstance(source, PackInfo) else source


# --- writing --------------------------------------------------------------------------------------------------------
def write_pack(
    fs: BlobFS, topology: Topology, pack_id: int, items: Iterable[tuple[MediaId, bytes]], *, level: int, copies: int
) -> PackInfo:
    """Compresses ``items`` (media id, raw bytes) into pack ``pack_id`` and writes it to ``copies`` regions.

    ``level`` is ``blob.cold_zstd_level``, ``copies`` is ``blob.cold_regions``. Items may come in any order; ids must
    be unique. Frames are compressed as items arrive, so only compressed bytes are held. Run ``verify_pack`` next.
    """
    if isinstance(pack_id, bool) or not isinstance(pack_id, int) or pack_id < 0:
        raise ValueError(f"pack id {pack_id!r}: expected an int >= 0")
    where = f"pack {pack_id:08d}"
    if isinstance(level, bool) or not isinstance(level, int) or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise ValueError(f"{where}: zstd level {level!r}, expected {MIN_LEVEL}..{MAX_LEVEL} (blob.cold_zstd_level)")
    machines = topology.cold_regions(pack_id, copies)
    if copies < 1 or len(machines) != copies:
        raise ValueError(f"{where}: {copies} copies need as many regions, the topology has {len(topology.regions)}")
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True)
    frames: dict[MediaId, tuple[bytes, int, str]] = {}
    for media_id, raw in items:
        _entry_name(media_id, where)
        if media_id in frames:
            raise ManifestError(f"{where}: media {media_id!r} given twice")
        frames[media_id] = (cctx.compress(raw), len(raw), hashlib.sha256(raw).hexdigest())
    order = sorted(frames, key=_sort_key)
    _check_names(order, where)
    entries, offset = [], 0
    for media_id in order:
        frame, raw_size, digest = frames[media_id]
        entries.append(PackEntry(media_id, offset, len(frame), raw_size, digest))
        offset += len(frame)
    data = b"".join(frames[media_id][0] for media_id in order)
    pack_keys = tuple(pack_key(m, pack_id) for m in machines)
    manifest_keys = tuple(manifest_key(m, pack_id) for m in machines)
    raw_manifest = _manifest_json(pack_id, level, pack_keys, manifest_keys, entries, data)
    pack = data + raw_manifest + _footer(raw_manifest)
    manifest = parse_manifest(raw_manifest, source=f"{where} (new)", pack_bytes=len(pack))  # what readers will see
    for pk, mk in zip(pack_keys, manifest_keys, strict=True):
        fs.write(pk, pack)
        crash_point("cold.pack_file_written")
        fs.write(mk, raw_manifest)
        crash_point("cold.copy_written")
    checksum = hashlib.sha256(pack).hexdigest()
    return PackInfo(
        pack_id=pack_id,
        regions=tuple(m.region for m in machines),
        keys=pack_keys,
        manifest_keys=manifest_keys,
        checksums=(checksum,) * len(machines),
        pack_bytes=len(pack),
        count=manifest.count,
        raw_bytes=manifest.raw_bytes,
        compressed_bytes=len(data),
        manifest=manifest,
    )


# --- reading --------------------------------------------------------------------------------------------------------
def read_media(fs: BlobFS, source: PackInfo | PackManifest, media_id: MediaId) -> bytes:
    """One media's raw bytes from the first copy whose frame checks out (only that frame is read)."""
    manifest = _manifest_of(source)
    entry = manifest.entry(media_id)
    reasons = []
    for key in manifest.pack_keys:
        try:
            return _decode(fs.read(key, entry.offset, entry.size), entry)
        except OSError as e:  # BlobFSError: missing or short file
            reasons.append(str(e))
        except _Corrupt as e:
            reasons.append(f"{key}: {e}")
    raise MediaUnavailableError(
        f"pack {manifest.pack_id:08d}: media {media_id!r} has no good copy ({'; '.join(reasons)})"
    )


def _check_copy(fs: BlobFS, manifest: PackManifest, index: int, checksum: str | None) -> CopyStatus:
    pk, mk = manifest.pack_keys[index], manifest.manifest_keys[index]
    problems: list[str] = []
    sidecar, data = _read_or_none(fs, mk), _read_or_none(fs, pk)
    if sidecar is None:
        problems.append(f"{mk}: sidecar manifest missing or unreadable")
    elif sidecar != manifest.raw:
        problems.append(f"{mk}: sidecar manifest differs from the pack's manifest")
    if data is None:
        problems.append(f"{pk}: pack file missing or unreadable")
        return CopyStatus(index, pk, mk, False, sidecar is not None, (), tuple(problems))
    if len(data) != manifest.pack_bytes:
        problems.append(f"{pk}: {len(data)} bytes, the manifest says {manifest.pack_bytes}")
    if checksum is not None and hashlib.sha256(data).hexdigest() != checksum:
        problems.append(f"{pk}: pack file sha256 differs from the one recorded when it was written")
    if hashlib.sha256(data[: manifest.data_bytes]).hexdigest() != manifest.data_sha256:
        problems.append(f"{pk}: data section sha256 mismatch")
    if data[manifest.data_bytes :] != manifest.raw + _footer(manifest.raw):
        problems.append(f"{pk}: embedded manifest or footer damaged")
    bad = tuple(e.media_id for e in manifest.entries if not _frame_ok(data[e.offset : e.offset + e.size], e))
    if bad:
        shown = ", ".join(repr(b) for b in bad[:5]) + (", ..." if len(bad) > 5 else "")
        problems.append(f"{pk}: {len(bad)} bad entries: {shown}")
    return CopyStatus(index, pk, mk, True, sidecar is not None, bad, tuple(problems))


def _read_or_none(fs: BlobFS, key: str) -> bytes | None:
    try:
        return fs.read(key)
    except OSError:  # BlobFSError: missing
        return None


def verify_pack(fs: BlobFS, info: PackInfo) -> tuple[CopyStatus, ...]:
    """Reads back every copy whole: file sha256 and size as written, data sha256, embedded manifest, sidecar, and
    every media's raw sha256. One status per copy, in ``info.keys`` order."""
    return tuple(_check_copy(fs, info.manifest, i, info.checksums[i]) for i in range(len(info.keys)))


def check_pack(fs: BlobFS, source: PackInfo | PackManifest) -> PackCheck:
    """The scrubber's report: which copies are missing or corrupt, their bad entries, and entries lost everywhere.

    Without a catalogue record, pass ``find_manifest(...)``: every byte of a copy is still checked (the data section
    against ``data_sha256``, the tail against the manifest and its footer).
    """
    manifest = _manifest_of(source)
    checksums = source.checksums if isinstance(source, PackInfo) else (None,) * len(manifest.pack_keys)
    statuses = tuple(_check_copy(fs, manifest, i, checksums[i]) for i in range(len(manifest.pack_keys)))
    return PackCheck(manifest.pack_id, manifest, statuses)


def _rebuild(fs: BlobFS, manifest: PackManifest) -> bytes:
    """The pack file from the good frames of whichever copies hold them (copies' frames are byte-identical)."""
    where = f"pack {manifest.pack_id:08d}"
    blobs = [b for b in (_read_or_none(fs, key) for key in manifest.pack_keys) if b is not None]
    tail = manifest.raw + _footer(manifest.raw)
    for blob in blobs:
        data = blob[: manifest.data_bytes]
        if hashlib.sha256(data).hexdigest() == manifest.data_sha256:
            return data + tail
    parts, lost = [], []
    for e in manifest.entries:
        frame = next((f for b in blobs if _frame_ok(f := b[e.offset : e.offset + e.size], e)), None)
        if frame is None:
            lost.append(e.media_id)
        else:
            parts.append(frame)
    if lost:
        raise MediaUnavailableError(f"{where}: cannot rebuild, no copy holds good media {lost}")
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != manifest.data_sha256:
        raise ColdPackError(f"{where}: the good frames do not reproduce the manifest's data_sha256")
    return data + tail


def repair_copy(fs: BlobFS, source: PackInfo | PackManifest, index: int) -> CopyStatus:
    """Rewrites copy ``index`` (pack file and sidecar) if it is missing or bad, then reads it back and checks it.

    The bytes come from a good copy, or are spliced from the good frames of several damaged ones. Raises
    MediaUnavailableError, naming the media, when some media is good in no copy; nothing is written then.
    """
    manifest = _manifest_of(source)
    if not 0 <= index < len(manifest.pack_keys):
        raise IndexError(f"pack {manifest.pack_id:08d} has copies 0..{len(manifest.pack_keys) - 1}, not {index}")
    checksum = source.checksums[index] if isinstance(source, PackInfo) else None
    status = _check_copy(fs, manifest, index, checksum)
    if status.ok:
        return status
    pack = _rebuild(fs, manifest)
    if checksum is not None and hashlib.sha256(pack).hexdigest() != checksum:
        raise ColdPackError(f"pack {manifest.pack_id:08d}: the rebuilt pack differs from the one written")
    fs.write(manifest.pack_keys[index], pack)
    fs.write(manifest.manifest_keys[index], manifest.raw)
    status = _check_copy(fs, manifest, index, checksum)
    if not status.ok:
        raise ColdPackError(f"pack {manifest.pack_id:08d}: copy {index} still bad after repair: {status.problems}")
    return status


# --- extraction -----------------------------------------------------------------------------------------------------
def extract(
    fs: BlobFS, source: PackInfo | PackManifest, dest_dir: Path, names: Iterable[MediaId] | None = None
) -> list[Path]:
    """Writes media (all, or the ids in ``names``) as files ``dest_dir/<name>``; returns their paths.

    Every name is checked before anything is written: it must be a safe relative path (see the module docstring)
    whose real path, following any symlink already in ``dest_dir``, stays inside ``dest_dir``; and every frame must
    lie inside some copy's pack file. Each file is written
    to a temp file (created without following symlinks) and renamed into place. A media good in no copy stops the
    extraction with MediaUnavailableError; the files written before it are complete.
    """
    manifest = _manifest_of(source)
    where = f"pack {manifest.pack_id:08d}"
    if names is None:
        entries = list(manifest.entries)
    else:
        entries = [manifest.entry(i) for i in dict.fromkeys(names)]
    _check_names((e.media_id for e in entries), where)
    root = Path(os.path.realpath(dest_dir))
    targets = []
    for e in entries:
        target = root.joinpath(*e.name.split("/"))
        if not Path(os.path.realpath(target)).is_relative_to(root):
            raise UnsafeNameError(f"{where}: entry name {e.name!r} resolves outside {dest_dir} through a symlink")
        targets.append(target)
    largest = max((_size_or_zero(fs, key) for key in manifest.pack_keys), default=0)
    for e in entries:
        if e.offset + e.size > largest:
            raise ManifestError(
                f"{where}: entry {e.media_id!r}: frame [{e.offset}, {e.offset + e.size}) lies beyond the end of every "
                f"copy of the pack (the largest is {largest} bytes)"
            )
    written = []
    for e, target in zip(entries, targets, strict=True):
        data = read_media(fs, manifest, e.media_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not Path(os.path.realpath(target.parent)).is_relative_to(root):  # a symlink appeared since the check
            raise UnsafeNameError(f"{where}: entry name {e.name!r} resolves outside {dest_dir} through a symlink")
        _write_file(target, data)
        written.append(Path(dest_dir).joinpath(*e.name.split("/")))
    return written


def _size_or_zero(fs: BlobFS, key: str) -> int:
    try:
        return fs.size(key)
    except OSError:  # BlobFSError: missing
        return 0


def _write_file(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.extract-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a leftover of a killed run; unlink removes a symlink itself, not its target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)  # replaces a symlink at target itself, never writes through it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
