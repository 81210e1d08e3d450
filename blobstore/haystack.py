"""Haystack hot volumes (Beaver et al., OSDI 2010): many blobs per append-only file, replicated on three racks.

A volume ``v`` has one data file and one index file per replica, at the machines of ``Topology.hot_replicas(v)``::

    <machine.prefix>/hot/vol-<v:08d>.dat       the needles (append-only while the volume is open)
    <machine.prefix>/hot/vol-<v:08d>.idx       a hint: needle id -> offset, size, flags, as of some data length
    <machine.prefix>/hot/vol-<v:08d>.compact   compaction's new data file, only until it is renamed over .dat

Every replica holds the same bytes at the same offsets, so a needle's offset is one number for all of them and a
replica can be rebuilt needle by needle from the others. All integers are little-endian.

Data file: a 32-byte superblock, then needles back to back, each starting at a multiple of 8.

- superblock: ``magic b"HSTK" | version u32 (1) | volume id u64 | generation u32 | crc32 of the previous 20 bytes
  u32 | 8 zero bytes``. The generation counts compactions; an index file of another generation is ignored.
- needle: header (24 bytes) ``magic b"NDL\\x8b" | needle id u64 | flags u32 | data size u32 | crc32 of the previous
  16 bytes (id, flags, size) u32``, then the data, then the footer (8 bytes) ``magic b"\\x8bLDN" | crc32 of the
  data u32``, then zero padding to a multiple of 8: ``needle_length(size) = 32 + size rounded up to 8``. The needle
  id is the media id (the story id for story media). The footer's crc32 is the catalog's checksum of the blob
  (:func:`blobstore.content.checksum`); the header has its own crc32 so a flipped id, flag or size is caught too.
- flags: bit 0 = deleted; other bits must be 0. Deleting appends a *tombstone*: a needle with the same id, flag
  bit 0 and no data (32 bytes). Haystack sets the flag in place; :class:`~blobstore.fs.BlobFS` has no in-place write
  (an object store has none), so here the latest needle of an id wins, and a tombstone shadows the needles before it.
  Re-appending an id also supersedes the older needle. Compaction drops superseded needles and tombstones.

Index file: header (40 bytes) ``magic b"HIDX" | version u32 (1) | volume id u64 | generation u32 | flags u32 (bit 0
= sealed) | data bytes covered u64 | entry count u32 | 4 zero bytes``, then per needle id (latest needle, tombstones
included, in offset order) ``needle id u64 | offset u64 | size u32 | flags u32``, then the crc32 of everything
before it (u32). It is rewritten atomically (``BlobFS.write``) at create, seal, compaction, close and every
``checkpoint_every`` appends. Opening a volume trusts the entries of a valid index and re-scans the data file beyond
the bytes it covers (all of it when the index is missing, corrupt or of another generation): Haystack's recovery.

Recovery on open, per replica: an invalid tail after which no valid needle follows is a torn append and is truncated
(a corrupt needle *followed* by valid ones is damage, left for :meth:`HotVolume.check` and
:meth:`HotVolume.repair_replica`). Then replicas shorter than the longest (an append that reached only some of them
before a crash) are caught up with needles that verify on another replica, so all replicas have one length again.
A compaction interrupted between its writes and its renames is rolled forward if any replica already has the new
generation, else rolled back.

Not thread-safe: one writer per volume, as Haystack runs one store process per machine.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from blobstore.content import crc32
from blobstore.fs import BlobFS, BlobFSError
from blobstore.intents import crash_point
from blobstore.topology import Machine, Topology

log = logging.getLogger(__name__)

SUPERBLOCK = struct.Struct("<4sIQII8x")
SUPERBLOCK_MAGIC = b"HSTK"
HEADER = struct.Struct("<4sQIII")
HEADER_MAGIC = b"NDL\x8b"
FOOTER = struct.Struct("<4sI")
FOOTER_MAGIC = b"\x8bLDN"
INDEX_HEADER = struct.Struct("<4sIQIIQI4x")
INDEX_MAGIC = b"HIDX"
INDEX_ENTRY = struct.Struct("<QQII")
INDEX_TRAILER = struct.Struct("<I")
FORMAT_VERSION = 1
FLAG_DELETED = 1
INDEX_SEALED = 1
ALIGN = 8
MAX_NEEDLE_ID = (1 << 64) - 1
MAX_DATA_BYTES = (1 << 32) - 1
DEFAULT_CHECKPOINT_EVERY = 1024

assert SUPERBLOCK.size == 32 and HEADER.size == 24 and FOOTER.size == 8 and INDEX_HEADER.size == 40


class HotVolumeError(Exception):
    """A hot volume that cannot do what was asked, naming the volume (and needle and replica where it applies)."""


class NeedleNotFound(HotVolumeError, LookupError):
    """The needle id is not in the volume, or it was deleted."""


class NeedleUnreadable(HotVolumeError):
    """No replica holds a copy of the needle that verifies."""


def needle_length(size: int) -> int:
    """Bytes a needle with ``size`` bytes of data takes in the data file (header, data, footer, padding)."""
    return HEADER.size + FOOTER.size + (size + ALIGN - 1) // ALIGN * ALIGN


def volume_key(machine: Machine, volume_id: int, suffix: str) -> str:
    """``<machine.prefix>/hot/vol-<id:08d>.<suffix>`` with suffix ``dat``, ``idx`` or ``compact``."""
    if volume_id < 0:
        raise HotVolumeError(f"volume id must be >= 0, got {volume_id}")
    return f"{machine.prefix}/hot/vol-{volume_id:08d}.{suffix}"


@dataclass(frozen=True, slots=True)
class NeedleEntry:
    """The latest needle of an id: where it starts in the data file, its data size and its flags."""

    needle_id: int
    offset: int
    size: int
    flags: int

    @property
    def deleted(self) -> bool:
        return bool(self.flags & FLAG_DELETED)

    @property
    def length(self) -> int:
        return needle_length(self.size)


@dataclass(frozen=True)
class NeedleLocation:
    """Where :class:`HotStore` put a blob; the caller records it in the catalog."""

    volume_id: int
    needle_id: int
    offset: int
    size: int


@dataclass(frozen=True)
class Damage:
    """A region of a replica's data file that is not a valid needle (``needle_id`` when its header still reads)."""

    offset: int
    end: int
    needle_id: int | None
    reason: str


@dataclass(frozen=True)
class ReplicaReport:
    """What :meth:`HotVolume.check` found on one replica: what a scrubber records and repairs."""

    volume_id: int
    replica: int
    machine: Machine
    data_key: str
    missing: bool
    data_bytes: int
    corrupt: tuple[Damage, ...] = ()
    index_mismatches: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt and not self.index_mismatches

    def summary(self) -> str:
        if self.missing:
            return f"volume {self.volume_id} replica {self.replica} ({self.data_key}): data file missing"
        parts = [f"at {d.offset}: {d.reason}" for d in self.corrupt] + list(self.index_mismatches)
        return f"volume {self.volume_id} replica {self.replica} ({self.data_key}): " + ("; ".join(parts) or "ok")


# --- pure encoding and decoding -------------------------------------------------------------------------------------


def encode_superblock(volume_id: int, generation: int) -> bytes:
    head = SUPERBLOCK.pack(SUPERBLOCK_MAGIC, FORMAT_VERSION, volume_id, generation, 0)[:20]
    return SUPERBLOCK.pack(SUPERBLOCK_MAGIC, FORMAT_VERSION, volume_id, generation, crc32(head))


def decode_superblock(data: bytes, volume_id: int) -> int | str:
    """The generation, or why ``data`` is not the superblock of ``volume_id``."""
    if len(data) < SUPERBLOCK.size:
        return f"superblock truncated ({len(data)} of {SUPERBLOCK.size} bytes)"
    magic, version, vid, generation, check = SUPERBLOCK.unpack_from(data)
    if magic != SUPERBLOCK_MAGIC or version != FORMAT_VERSION:
        return f"not a hot volume data file (magic {magic!r}, version {version})"
    if crc32(memoryview(data)[:20]) != check:
        return "superblock checksum mismatch"
    if vid != volume_id:
        return f"superblock names volume {vid}"
    return generation


def encode_needle(needle_id: int, data: bytes, flags: int = 0) -> bytes:
    if not 0 <= needle_id <= MAX_NEEDLE_ID:
        raise HotVolumeError(f"needle id {needle_id} is not an unsigned 64-bit integer")
    if len(data) > MAX_DATA_BYTES:
        raise HotVolumeError(f"needle {needle_id}: {len(data)} bytes exceed the needle format's {MAX_DATA_BYTES}")
    if flags & ~FLAG_DELETED or (flags & FLAG_DELETED and data):
        raise HotVolumeError(f"needle {needle_id}: flags {flags} with {len(data)} bytes (a tombstone has no data)")
    fields = struct.pack("<QII", needle_id, flags, len(data))
    header = HEADER.pack(HEADER_MAGIC, needle_id, flags, len(data), crc32(fields))
    footer = FOOTER.pack(FOOTER_MAGIC, crc32(data))
    pad = b"\0" * (needle_length(len(data)) - HEADER.size - len(data) - FOOTER.size)
    return b"".join((header, data, footer, pad))


def _header_id(buf: bytes, pos: int) -> int | None:
    """The needle id of a header whose magic and checksum hold, else None."""
    if len(buf) - pos < HEADER.size:
        return None
    magic, needle_id, _flags, _size, check = HEADER.unpack_from(buf, pos)
    if magic != HEADER_MAGIC or crc32(memoryview(buf)[pos + 4 : pos + 20]) != check:
        return None
    return needle_id


def decode_needle(buf: bytes, pos: int = 0) -> NeedleEntry | str:
    """The needle at ``buf[pos:]`` (its ``offset`` is ``pos``), or why it is not a valid needle."""
    if len(buf) - pos < HEADER.size:
        return f"truncated needle header ({len(buf) - pos} of {HEADER.size} bytes)"
    magic, needle_id, flags, size, check = HEADER.unpack_from(buf, pos)
    if magic != HEADER_MAGIC:
        return "bad needle header magic"
    view = memoryview(buf)
    if crc32(view[pos + 4 : pos + 20]) != check:
        return "needle header checksum mismatch"
    if flags & ~FLAG_DELETED or (flags & FLAG_DELETED and size):
        return f"needle {needle_id}: invalid flags {flags} for {size} bytes"
    length = needle_length(size)
    if len(buf) - pos < length:
        return f"needle {needle_id}: truncated ({len(buf) - pos} of {length} bytes)"
    data_end = pos + HEADER.size + size
    footer_magic, data_check = FOOTER.unpack_from(buf, data_end)
    if footer_magic != FOOTER_MAGIC:
        return f"needle {needle_id}: bad footer magic"
    if crc32(view[pos + HEADER.size : data_end]) != data_check:
        return f"needle {needle_id}: data checksum mismatch"
    if any(view[data_end + FOOTER.size : pos + length]):
        return f"needle {needle_id}: nonzero padding"
    return NeedleEntry(needle_id, pos, size, flags)


def read_needle_at(fs: BlobFS, data_key: str, offset: int, size: int, needle_id: int) -> bytes:
    """One verified read of a live needle from one replica's data file, e.g. at a catalog location."""
    try:
        raw = fs.read(data_key, offset, needle_length(size))
    except BlobFSError as e:
        raise NeedleUnreadable(f"needle {needle_id} at {data_key}:{offset}: {e}") from e
    found = decode_needle(raw)
    if isinstance(found, str):
        raise NeedleUnreadable(f"needle {needle_id} at {data_key}:{offset}: {found}")
    if (found.needle_id, found.size, found.flags) != (needle_id, size, 0):
        raise NeedleUnreadable(
            f"needle {needle_id} at {data_key}:{offset}: holds needle {found.needle_id} "
            f"({found.size} bytes, flags {found.flags}), expected {size} bytes, flags 0"
        )
    return raw[HEADER.size : HEADER.size + size]


@dataclass
class _Scan:
    """Valid needles of ``buf`` (file offsets), damaged regions followed by valid needles, and a torn tail."""

    records: list[NeedleEntry]
    damage: list[Damage]
    torn: Damage | None
    end: int  # file offset where valid data ends: the torn tail's start, else the end of the buffer


def _resync(buf: bytes, start: int) -> int | None:
    """The first 8-aligned position at or after ``start`` that holds a valid needle."""
    start += -start % ALIGN
    i = buf.find(HEADER_MAGIC, start)
    while i != -1:
        if i % ALIGN == 0 and not isinstance(decode_needle(buf, i), str):
            return i
        i = buf.find(HEADER_MAGIC, i + 1)
    return None


def _scan(buf: bytes, base: int) -> _Scan:
    """Scans needles in ``buf``, which holds the data file from offset ``base`` (8-aligned) on."""
    records: list[NeedleEntry] = []
    damage: list[Damage] = []
    pos = 0
    while pos < len(buf):
        found = decode_needle(buf, pos)
        if not isinstance(found, str):
            records.append(NeedleEntry(found.needle_id, base + pos, found.size, found.flags))
            pos += found.length
            continue
        nxt = _resync(buf, pos + 1)
        bad = Damage(base + pos, base + (len(buf) if nxt is None else nxt), _header_id(buf, pos), found)
        if nxt is None:
            return _Scan(records, damage, bad, base + pos)
        damage.append(bad)
        pos = nxt
    return _Scan(records, damage, None, base + len(buf))


def _replay(entries: Iterable[NeedleEntry]) -> dict[int, NeedleEntry]:
    """The latest needle of each id, from needles possibly seen twice (deduplicated by offset)."""
    by_offset: dict[int, NeedleEntry] = {}
    for e in entries:
        by_offset.setdefault(e.offset, e)
    index: dict[int, NeedleEntry] = {}
    for offset in sorted(by_offset):
        e = by_offset[offset]
        index[e.needle_id] = e
    return index


def encode_index(volume_id: int, generation: int, covered: int, sealed: bool, entries: Iterable[NeedleEntry]) -> bytes:
    rows = sorted(entries, key=lambda e: e.offset)
    head = INDEX_HEADER.pack(
        INDEX_MAGIC, FORMAT_VERSION, volume_id, generation, INDEX_SEALED if sealed else 0, covered, len(rows)
    )
    body = b"".join(INDEX_ENTRY.pack(e.needle_id, e.offset, e.size, e.flags) for e in rows)
    return head + body + INDEX_TRAILER.pack(crc32(head + body))


@dataclass(frozen=True)
class _IndexHint:
    generation: int
    covered: int
    sealed: bool
    entries: list[NeedleEntry]


def decode_index(data: bytes, volume_id: int) -> _IndexHint | str:
    """The index file's content, or why it is unusable."""
    if len(data) < INDEX_HEADER.size + INDEX_TRAILER.size:
        return f"index truncated ({len(data)} bytes)"
    magic, version, vid, generation, flags, covered, count = INDEX_HEADER.unpack_from(data)
    if magic != INDEX_MAGIC or version != FORMAT_VERSION:
        return f"not a hot volume index (magic {magic!r}, version {version})"
    expected = INDEX_HEADER.size + count * INDEX_ENTRY.size + INDEX_TRAILER.size
    if len(data) != expected:
        return f"index holds {len(data)} bytes, {count} entries need {expected}"
    (check,) = INDEX_TRAILER.unpack_from(data, len(data) - INDEX_TRAILER.size)
    if crc32(memoryview(data)[: len(data) - INDEX_TRAILER.size]) != check:
        return "index checksum mismatch"
    if vid != volume_id:
        return f"index names volume {vid}"
    entries = [
        NeedleEntry(*INDEX_ENTRY.unpack_from(data, INDEX_HEADER.size + i * INDEX_ENTRY.size)) for i in range(count)
    ]
    return _IndexHint(generation, covered, bool(flags & INDEX_SEALED), entries)


# --- volumes --------------------------------------------------------------------------------------------------------


@dataclass
class _Replica:
    index: int
    machine: Machine
    data_key: str
    index_key: str
    compact_key: str
    problem: str | None = None  # why appends must wait for repair_replica: missing, bad superblock, stale, behind
    generation: int = -1
    end: int = 0
    entries: list[NeedleEntry] = field(default_factory=list)
    sealed: bool = False
    hint_fresh: bool = False


class HotVolume:
    """One replicated Haystack volume. Make one with :meth:`create` or :meth:`open`; see the module docstring."""

    def __init__(self, fs: BlobFS, topology: Topology, volume_id: int, *, capacity: int, checkpoint_every: int) -> None:
        if capacity <= SUPERBLOCK.size + needle_length(0):
            raise HotVolumeError(f"volume {volume_id}: capacity {capacity} bytes cannot hold a needle")
        self.fs = fs
        self.volume_id = volume_id
        self.capacity = capacity
        self.checkpoint_every = checkpoint_every
        self.machines = topology.hot_replicas(volume_id)
        self._replicas = [
            _Replica(
                i,
                m,
                volume_key(m, volume_id, "dat"),
                volume_key(m, volume_id, "idx"),
                volume_key(m, volume_id, "compact"),
            )
            for i, m in enumerate(self.machines)
        ]
        self._index: dict[int, NeedleEntry] = {}
        self._live_bytes = 0
        self._end = SUPERBLOCK.size
        self._generation = 0
        self._sealed = False
        self._broken: str | None = None
        self._since_checkpoint = 0

    # construction

    @classmethod
    def create(
        cls,
        fs: BlobFS,
        topology: Topology,
        volume_id: int,
        *,
        capacity: int,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> HotVolume:
        """A new, empty volume: superblock and index written at every replica."""
        vol = cls(fs, topology, volume_id, capacity=capacity, checkpoint_every=checkpoint_every)
        existing = [r.data_key for r in vol._replicas if fs.exists(r.data_key)]
        if existing:
            raise HotVolumeError(f"volume {volume_id}: already exists at {', '.join(existing)}; open it instead")
        superblock = encode_superblock(volume_id, 0)
        for r in vol._replicas:
            fs.write(r.data_key, superblock)
            r.generation, r.end = 0, SUPERBLOCK.size
        vol.checkpoint()
        return vol

    @classmethod
    def open(
        cls,
        fs: BlobFS,
        topology: Topology,
        volume_id: int,
        *,
        capacity: int,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> HotVolume:
        """An existing volume, recovered: index hints plus re-scanned tails, torn tails cut, replicas caught up."""
        vol = cls(fs, topology, volume_id, capacity=capacity, checkpoint_every=checkpoint_every)
        vol._recover()
        return vol

    def _recover(self) -> None:
        self._finish_compaction()
        for r in self._replicas:
            self._load_replica(r)
        generations = [r.generation for r in self._replicas if r.problem is None]
        if not generations:
            reasons = "; ".join(f"replica {r.index} ({r.data_key}): {r.problem}" for r in self._replicas)
            raise HotVolumeError(f"volume {self.volume_id}: no usable replica: {reasons}")
        self._generation = max(generations)
        for r in self._replicas:
            if r.problem is None and r.generation < self._generation:
                r.problem = f"stale generation {r.generation}, the volume is at {self._generation}"
        healthy = [r for r in self._replicas if r.problem is None]
        self._end = max(r.end for r in healthy)
        self._set_index(_replay(e for r in healthy for e in r.entries))
        self._sealed = any(r.sealed for r in healthy)
        caught_up = False
        for r in healthy:
            if r.end < self._end:
                self._catch_up(r, [s for s in healthy if s.end > r.end])
                caught_up = True
        if caught_up or not all(r.hint_fresh for r in healthy):
            self.checkpoint()
        for r in self._replicas:
            r.entries = []  # only needed while recovering
            if r.problem:
                log.warning("volume %d replica %d (%s): %s", self.volume_id, r.index, r.data_key, r.problem)

    def _finish_compaction(self) -> None:
        """Rolls an interrupted compaction forward (some replica has the new generation) or back (none has)."""
        pending = [r for r in self._replicas if self.fs.exists(r.compact_key)]
        if not pending:
            return
        data_generations = [self._read_generation(r.data_key) for r in self._replicas]
        committed = max((g for g in data_generations if isinstance(g, int)), default=-1)
        for r in pending:
            new = self._read_generation(r.compact_key)
            old = data_generations[r.index]
            if isinstance(new, int) and new <= committed and (not isinstance(old, int) or old < new):
                log.warning("volume %d replica %d: finishing an interrupted compaction", self.volume_id, r.index)
                self.fs.rename(r.compact_key, r.data_key)
            else:
                log.warning("volume %d replica %d: dropping an uncommitted compaction", self.volume_id, r.index)
                self.fs.delete(r.compact_key)

    def _read_generation(self, key: str) -> int | str:
        try:
            return decode_superblock(self.fs.read(key, 0, SUPERBLOCK.size), self.volume_id)
        except BlobFSError as e:
            return str(e)

    def _load_replica(self, r: _Replica) -> None:
        """Superblock, index hint and a scan of the tail beyond it; cuts a torn tail."""
        if not self.fs.exists(r.data_key):
            r.problem = "data file missing"
            return
        generation = self._read_generation(r.data_key)
        if isinstance(generation, str):
            r.problem = f"bad superblock: {generation}"
            return
        r.generation = generation
        file_bytes = self.fs.size(r.data_key)
        hint = self._read_hint(r)
        if isinstance(hint, str) or hint.generation != generation or not SUPERBLOCK.size <= hint.covered <= file_bytes:
            why = hint if isinstance(hint, str) else f"generation {hint.generation}, covers {hint.covered} bytes"
            log.info("volume %d replica %d: index unusable (%s), scanning the data file", self.volume_id, r.index, why)
            start, r.entries = SUPERBLOCK.size, []
        else:
            start, r.entries, r.sealed = hint.covered, list(hint.entries), hint.sealed
        r.hint_fresh = start == file_bytes
        scan = _scan(self.fs.read(r.data_key, start), start)
        r.entries.extend(scan.records)
        for d in scan.damage:
            log.warning("volume %d replica %d (%s): %s at %d", self.volume_id, r.index, r.data_key, d.reason, d.offset)
        if scan.torn is not None:
            log.warning(
                "volume %d replica %d (%s): torn tail at %d (%s), %d bytes cut",
                self.volume_id,
                r.index,
                r.data_key,
                scan.end,
                scan.torn.reason,
                file_bytes - scan.end,
            )
            self._truncate(r.data_key, scan.end)
        r.end = scan.end

    def _read_hint(self, r: _Replica) -> _IndexHint | str:
        if not self.fs.exists(r.index_key):
            return "index file missing"
        try:
            return decode_index(self.fs.read(r.index_key), self.volume_id)
        except BlobFSError as e:
            return str(e)

    def _truncate(self, key: str, size: int) -> None:
        truncate = getattr(self.fs, "truncate", None)  # LocalFS has one; BlobFS does not declare it
        if truncate is not None:
            truncate(key, size)
        else:
            self.fs.write(key, self.fs.read(key, 0, size))

    def _catch_up(self, r: _Replica, sources: list[_Replica]) -> None:
        try:
            tail = self._assemble(r.end, self._end, sources)
        except HotVolumeError as e:
            r.problem = f"behind at {r.end} of {self._end} bytes and cannot catch up: {e}"
            return
        log.warning(
            "volume %d replica %d: catching up %d bytes from other replicas", self.volume_id, r.index, len(tail)
        )
        offset = self.fs.append(r.data_key, tail, sync=True)
        if offset != r.end:
            r.problem = f"catch-up appended at {offset}, expected {r.end}"
            return
        r.end = self._end

    def _assemble(self, start: int, end: int, sources: list[_Replica]) -> bytes:
        """Bytes ``[start, end)`` of the data file, each needle taken from a source where it verifies."""
        scans: list[tuple[bytes, dict[int, NeedleEntry]]] = []
        for s in sources:
            try:
                buf = self.fs.read(s.data_key, start)[: end - start]
            except BlobFSError:
                continue
            scans.append((buf, {e.offset: e for e in _scan(buf, start).records}))
        parts = []
        pos = start
        while pos < end:
            for buf, records in scans:
                e = records.get(pos)
                if e is not None and pos + e.length <= end:
                    parts.append(buf[pos - start : pos - start + e.length])
                    pos += e.length
                    break
            else:
                raise HotVolumeError(f"volume {self.volume_id}: no replica holds a valid needle at offset {pos}")
        return b"".join(parts)

    # state

    def _set_index(self, index: dict[int, NeedleEntry]) -> None:
        self._index = index
        self._live_bytes = sum(e.length for e in index.values() if not e.deleted)

    def _apply(self, e: NeedleEntry) -> None:
        prev = self._index.get(e.needle_id)
        if prev is not None and not prev.deleted:
            self._live_bytes -= prev.length
        if not e.deleted:
            self._live_bytes += e.length
        self._index[e.needle_id] = e

    @property
    def replicas(self) -> int:
        return len(self._replicas)

    @property
    def generation(self) -> int:
        """How many times the volume was compacted."""
        return self._generation

    @property
    def sealed(self) -> bool:
        return self._sealed

    @property
    def size(self) -> int:
        """Bytes of each replica's data file."""
        return self._end

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity - self._end)

    @property
    def live_bytes(self) -> int:
        """Bytes of live needles (header, data, footer, padding)."""
        return self._live_bytes

    @property
    def garbage_bytes(self) -> int:
        """Bytes compaction would reclaim: deleted and superseded needles and tombstones."""
        return self._end - SUPERBLOCK.size - self._live_bytes

    @property
    def problems(self) -> dict[int, str]:
        """Replicas that need :meth:`repair_replica` before the volume takes writes again."""
        return {r.index: r.problem for r in self._replicas if r.problem}

    def data_key(self, replica: int) -> str:
        return self._replica(replica).data_key

    def index_key(self, replica: int) -> str:
        return self._replica(replica).index_key

    def _replica(self, replica: int) -> _Replica:
        if not 0 <= replica < len(self._replicas):
            raise HotVolumeError(
                f"volume {self.volume_id}: replica {replica} out of range 0..{len(self._replicas) - 1}"
            )
        return self._replicas[replica]

    def __contains__(self, needle_id: int) -> bool:
        e = self._index.get(needle_id)
        return e is not None and not e.deleted

    def __len__(self) -> int:
        return sum(1 for e in self._index.values() if not e.deleted)

    def entry(self, needle_id: int) -> NeedleEntry:
        """The live needle's index entry."""
        e = self._index.get(needle_id)
        if e is None or e.deleted:
            state = "not in" if e is None else "deleted from"
            raise NeedleNotFound(f"volume {self.volume_id}: needle {needle_id} is {state} the volume")
        return e

    def needles(self) -> Iterator[tuple[int, int, int]]:
        """Live needles as ``(needle_id, offset, size)`` in offset order (a snapshot)."""
        live = sorted((e for e in self._index.values() if not e.deleted), key=lambda e: e.offset)
        return iter([(e.needle_id, e.offset, e.size) for e in live])

    def would_exceed(self, size: int) -> bool:
        """Whether appending ``size`` bytes of data would take the volume past its capacity."""
        return self._end + needle_length(size) > self.capacity

    # writes

    def _require_writable(self, what: str, *, sealed_ok: bool = False) -> None:
        if self._broken:
            raise HotVolumeError(f"volume {self.volume_id}: cannot {what}, {self._broken}; open the volume again")
        if self._sealed and not sealed_ok:
            raise HotVolumeError(f"volume {self.volume_id}: cannot {what}, the volume is sealed")
        if self.problems:
            bad = "; ".join(f"replica {i}: {p}" for i, p in self.problems.items())
            raise HotVolumeError(f"volume {self.volume_id}: cannot {what} until repair_replica fixes {bad}")

    def _write_all(self, blob: bytes) -> None:
        """Appends ``blob`` at the end of every replica's data file (fsynced); the volume breaks if one fails."""
        for r in self._replicas:
            try:
                offset = self.fs.append(r.data_key, blob, sync=True)
            except OSError as e:
                self._broken = f"an append failed at replica {r.index} ({r.data_key}): {e}"
                raise HotVolumeError(f"volume {self.volume_id}: {self._broken}") from e
            if offset != self._end:
                self._broken = f"replica {r.index} ({r.data_key}) was appended at {offset}, expected {self._end}"
                raise HotVolumeError(f"volume {self.volume_id}: {self._broken}")
            crash_point("hot.replica_appended")
        self._end += len(blob)
        for r in self._replicas:
            r.end = self._end

    def append(self, needle_id: int, data: bytes) -> tuple[int, int]:
        """Appends one needle to every replica; returns ``(offset, size)``. A re-used id supersedes its older needle."""
        return self.append_many([(needle_id, data)])[0]

    def append_many(self, blobs: Iterable[tuple[int, bytes]]) -> list[tuple[int, int]]:
        """Appends needles with one write and one fsync per replica; returns ``(offset, size)`` per needle."""
        self._require_writable("append")
        parts: list[bytes] = []
        entries: list[NeedleEntry] = []
        pos = self._end
        for needle_id, data in blobs:
            needle = encode_needle(needle_id, bytes(data))
            entries.append(NeedleEntry(needle_id, pos, len(data), 0))
            parts.append(needle)
            pos += len(needle)
        if pos > self.capacity:
            raise HotVolumeError(
                f"volume {self.volume_id}: {len(entries)} needles of {pos - self._end} bytes would take it to {pos} "
                f"bytes, past its capacity of {self.capacity}"
            )
        if not entries:
            return []
        self._write_all(b"".join(parts))
        for e in entries:
            self._apply(e)
        self._since_checkpoint += len(entries)
        if self.checkpoint_every and self._since_checkpoint >= self.checkpoint_every:
            self.checkpoint()
        return [(e.offset, e.size) for e in entries]

    def delete(self, needle_id: int) -> bool:
        """Appends a tombstone for a live needle (allowed on a sealed volume); False if it is not live."""
        if needle_id not in self:
            return False
        self._require_writable(f"delete needle {needle_id}", sealed_ok=True)
        offset = self._end
        self._write_all(encode_needle(needle_id, b"", FLAG_DELETED))
        self._apply(NeedleEntry(needle_id, offset, 0, FLAG_DELETED))
        self._since_checkpoint += 1
        return True

    def delete_many(self, needle_ids: Iterable[int]) -> int:
        """Tombstones every live needle of ``needle_ids`` with one append (and one fsync) per replica; returns how
        many were live."""
        live = sorted({n for n in needle_ids if n in self})
        if not live:
            return 0
        self._require_writable(f"delete {len(live)} needles", sealed_ok=True)
        tombstone_length = needle_length(0)
        entries = [NeedleEntry(n, self._end + i * tombstone_length, 0, FLAG_DELETED) for i, n in enumerate(live)]
        self._write_all(b"".join(encode_needle(n, b"", FLAG_DELETED) for n in live))
        for e in entries:
            self._apply(e)
        self._since_checkpoint += len(live)
        return len(live)

    def checkpoint(self) -> None:
        """Rewrites every usable replica's index file (atomically) for the data written so far."""
        if self._broken:
            return
        data = encode_index(self.volume_id, self._generation, self._end, self._sealed, self._index.values())
        for r in self._replicas:
            if r.problem is None:
                self.fs.write(r.index_key, data)
                crash_point("hot.index_written")
        self._since_checkpoint = 0

    def seal(self) -> None:
        """No more appends (deletes still append tombstones); recorded in the index files."""
        self._sealed = True
        self.checkpoint()

    def close(self) -> None:
        if self._since_checkpoint:
            self.checkpoint()

    def __enter__(self) -> HotVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # reads

    def read(self, needle_id: int, replica: int | None = None) -> bytes:
        """The live needle's data, verified; tries ``replica`` first, then the others, and names every failure."""
        e = self.entry(needle_id)
        order = list(self._replicas)
        if replica is not None:
            first = self._replica(replica)
            order.remove(first)
            order.insert(0, first)
        order.sort(key=lambda r: r.problem is not None)  # stable: replicas known to be bad go last
        errors = []
        for r in order:
            try:
                data = read_needle_at(self.fs, r.data_key, e.offset, e.size, needle_id)
            except NeedleUnreadable as err:
                errors.append(f"replica {r.index}: {err}")
                continue
            if errors:
                log.warning("volume %d needle %d: read replica %d after %s", self.volume_id, needle_id, r.index, errors)
            return data
        raise NeedleUnreadable(
            f"volume {self.volume_id} needle {needle_id} at offset {e.offset}: no replica verifies: "
            + "; ".join(errors)
        )

    def _read_raw(self, e: NeedleEntry) -> bytes:
        """The whole needle (header to padding) from the first replica where it verifies."""
        data = self.read(e.needle_id)
        return encode_needle(e.needle_id, data, e.flags)

    # maintenance

    def compact(self) -> int:
        """Rewrites the data file without deleted or superseded needles and tombstones; returns bytes reclaimed.

        Live needles keep their order but move: refresh the catalog's offsets from :meth:`needles`. The new file is
        written next to the old one at every replica (``.compact``, atomic write) before any is renamed over
        ``.dat``; the first rename commits (see :meth:`open`). Each needle is read where it verifies, so compaction
        also heals damaged needles.
        """
        self._require_writable("compact", sealed_ok=True)
        if self.garbage_bytes == 0:
            return 0
        generation = self._generation + 1
        parts = [encode_superblock(self.volume_id, generation)]
        moved: list[NeedleEntry] = []
        pos = SUPERBLOCK.size
        for e in sorted((e for e in self._index.values() if not e.deleted), key=lambda e: e.offset):
            parts.append(self._read_raw(e))
            moved.append(NeedleEntry(e.needle_id, pos, e.size, e.flags))
            pos += e.length
        data = b"".join(parts)
        for r in self._replicas:
            self.fs.write(r.compact_key, data)
            crash_point("hot.compact_written")
        for r in self._replicas:
            self.fs.rename(r.compact_key, r.data_key)
            crash_point("hot.compact_renamed")
        reclaimed = self._end - pos
        self._generation, self._end = generation, pos
        for r in self._replicas:
            r.generation, r.end = generation, pos
        self._set_index({e.needle_id: e for e in moved})
        self.checkpoint()
        log.info("volume %d: compacted to generation %d, %d bytes reclaimed", self.volume_id, generation, reclaimed)
        return reclaimed

    def check(self) -> list[ReplicaReport]:
        """Reads every replica in full: missing files, damaged needles, and disagreements with the index."""
        return [self._check_replica(r) for r in self._replicas]

    def _check_replica(self, r: _Replica) -> ReplicaReport:
        report = dict(volume_id=self.volume_id, replica=r.index, machine=r.machine, data_key=r.data_key)
        if not self.fs.exists(r.data_key):
            return ReplicaReport(**report, missing=True, data_bytes=0)
        buf = self.fs.read(r.data_key)
        corrupt: list[Damage] = []
        mismatches: list[str] = []
        generation = decode_superblock(buf, self.volume_id)
        if isinstance(generation, str):
            corrupt.append(Damage(0, SUPERBLOCK.size, None, generation))
        elif generation != self._generation:
            mismatches.append(f"data file is generation {generation}, the volume is at {self._generation}")
        if len(buf) != self._end:
            mismatches.append(f"data file holds {len(buf)} bytes, the volume {self._end}")
        scan = _scan(buf[SUPERBLOCK.size :], SUPERBLOCK.size)
        corrupt.extend(scan.damage)
        if scan.torn is not None:
            corrupt.append(scan.torn)
        damaged = [(d.offset, d.end) for d in corrupt]

        def in_damage(offset: int) -> bool:
            return any(start <= offset < end for start, end in damaged)

        found = _replay(scan.records)
        for needle_id, e in self._index.items():
            got = found.get(needle_id)
            if got != e and not in_damage(e.offset):
                mismatches.append(f"needle {needle_id}: index has {_describe(e)}, replica {_describe(got)}")
        for needle_id, got in found.items():
            if needle_id not in self._index:
                mismatches.append(f"needle {needle_id}: replica has {_describe(got)}, the index has none")
        mismatches.extend(self._check_index_file(r, scan.records, len(buf), in_damage))
        return ReplicaReport(
            **report, missing=False, data_bytes=len(buf), corrupt=tuple(corrupt), index_mismatches=tuple(mismatches)
        )

    def _check_index_file(
        self, r: _Replica, records: list[NeedleEntry], data_bytes: int, in_damage: Callable[[int], bool]
    ) -> list[str]:
        """The replica's index file against its data file (needles in damaged regions are reported as damage)."""
        where = f"index file {r.index_key}"
        hint = self._read_hint(r)
        if isinstance(hint, str):
            return [f"{where}: {hint}"]
        if hint.generation != self._generation:
            return [f"{where}: generation {hint.generation}, the volume is at {self._generation}"]
        if hint.covered > data_bytes:
            return [f"{where}: covers {hint.covered} bytes, the data file holds {data_bytes}"]
        expected = _replay(e for e in records if e.offset < hint.covered)
        listed = {e.needle_id: e for e in hint.entries}
        out = [
            f"{where}: needle {nid} listed as {_describe(e)}, data file has {_describe(expected.get(nid))}"
            for nid, e in listed.items()
            if expected.get(nid) != e and not in_damage(e.offset)
        ]
        out.extend(f"{where}: lacks needle {nid} ({_describe(e)})" for nid, e in expected.items() if nid not in listed)
        return out

    def repair_replica(self, replica: int) -> int:
        """Rewrites one replica's data and index files from the others, verified; returns bytes written.

        Normally a plain copy of a good replica; when every replica has some damage, each needle is taken from a
        replica where it verifies. The result must replay to the volume's index and read back byte for byte.
        """
        if self._broken:
            raise HotVolumeError(f"volume {self.volume_id}: cannot repair, {self._broken}; open the volume again")
        target = self._replica(replica)
        sources = [r for r in self._replicas if r is not target] + [target]
        sources = [r for r in sources if self._read_generation(r.data_key) == self._generation]
        try:
            body = self._assemble(SUPERBLOCK.size, self._end, sources)
        except HotVolumeError as e:
            raise HotVolumeError(f"volume {self.volume_id}: cannot repair replica {replica}: {e}") from e
        data = encode_superblock(self.volume_id, self._generation) + body
        rebuilt = _scan(body, SUPERBLOCK.size)
        if rebuilt.damage or rebuilt.torn or _replay(rebuilt.records) != self._index:
            raise HotVolumeError(
                f"volume {self.volume_id}: cannot repair replica {replica}: the other replicas disagree with the index"
            )
        self.fs.write(target.data_key, data)
        if self.fs.read(target.data_key) != data:
            raise HotVolumeError(f"volume {self.volume_id}: replica {replica} ({target.data_key}) reads back different")
        target.problem, target.generation, target.end = None, self._generation, self._end
        self.fs.write(
            target.index_key,
            encode_index(self.volume_id, self._generation, self._end, self._sealed, self._index.values()),
        )
        log.info("volume %d: repaired replica %d (%s), %d bytes", self.volume_id, replica, target.data_key, len(data))
        return len(data)


def _describe(e: NeedleEntry | None) -> str:
    if e is None:
        return "no needle"
    return f"{'tombstone' if e.deleted else f'{e.size} bytes'} at {e.offset}"


class HotStore:
    """Writes blobs into hot volumes, one open volume at a time: when a blob does not fit, the volume is sealed and a
    new one is created with the next id from ``new_volume_id`` (the caller allocates ids and keeps the catalog; e.g.
    ``itertools.count(start).__next__``). ``open_volume_id`` resumes a volume left open by an earlier writer.
    """

    def __init__(
        self,
        fs: BlobFS,
        topology: Topology,
        *,
        volume_bytes: int,
        new_volume_id: Callable[[], int],
        open_volume_id: int | None = None,
        batch_bytes: int = 4 << 20,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        self.fs = fs
        self.topology = topology
        self.volume_bytes = volume_bytes
        self.new_volume_id = new_volume_id
        self.batch_bytes = batch_bytes
        self.checkpoint_every = checkpoint_every
        self.sealed_volume_ids: list[int] = []
        self.volume: HotVolume | None = None
        if open_volume_id is not None:
            self.volume = HotVolume.open(
                fs, topology, open_volume_id, capacity=volume_bytes, checkpoint_every=checkpoint_every
            )

    def _fresh_volume(self) -> HotVolume:
        if self.volume is not None:
            if not self.volume.sealed:
                self.volume.seal()
            self.sealed_volume_ids.append(self.volume.volume_id)
        self.volume = HotVolume.create(
            self.fs,
            self.topology,
            self.new_volume_id(),
            capacity=self.volume_bytes,
            checkpoint_every=self.checkpoint_every,
        )
        return self.volume

    def put(self, needle_id: int, data: bytes) -> NeedleLocation:
        return self.put_many([(needle_id, data)])[0]

    def put_many(self, blobs: Iterable[tuple[int, bytes]]) -> list[NeedleLocation]:
        """Appends blobs in order, batching up to ``batch_bytes`` per write; returns each blob's location."""
        out: list[NeedleLocation] = []
        batch: list[tuple[int, bytes]] = []
        pending = 0
        vol = self.volume

        def flush() -> None:
            nonlocal pending
            if batch:
                assert vol is not None
                for (needle_id, _), (offset, size) in zip(batch, vol.append_many(batch), strict=True):
                    out.append(NeedleLocation(vol.volume_id, needle_id, offset, size))
                batch.clear()
                pending = 0

        for needle_id, data in blobs:
            length = needle_length(len(data))
            if SUPERBLOCK.size + length > self.volume_bytes:
                raise HotVolumeError(
                    f"needle {needle_id}: {len(data)} bytes do not fit in a volume of {self.volume_bytes} bytes"
                )
            if vol is None or vol.sealed or pending + length > vol.free_bytes:
                flush()
                vol = self._fresh_volume()
            batch.append((needle_id, data))
            pending += length
            if pending >= self.batch_bytes:
                flush()
        flush()
        return out

    def close(self) -> None:
        """Checkpoints the open volume's index (it stays open for a later writer)."""
        if self.volume is not None:
            self.volume.close()
