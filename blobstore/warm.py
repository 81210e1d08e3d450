"""f4 warm volumes: a sealed volume as 14 Reed-Solomon blocks on 14 racks of its home cell, plus a geo XOR.

A warm volume is the bytes of a sealed hot volume (the caller keeps the media -> (offset, size) index). It is cut
into segments (:func:`blobstore.codec.plan_segments`): segment ``s`` holds the volume's bytes
``[s * k * F, (s + 1) * k * F)`` with ``F = full_fragment_bytes(k, ec_segment_bytes)`` payload bytes per fragment
(``ec_segment_bytes`` ~ 1 MiB; RS(10, 4) gives ``F`` = 104,832 bytes); the last segment holds the rest with its own
smaller ``F_last`` (a multiple of 64) and zero padding. Each segment is one ISA-L ``ec_encode_data`` call giving the
``m`` parity payloads (:meth:`blobstore.codec.RSCodec.encode_parity`), then every fragment is sealed with its header.

Block file ``i`` (0..k+m-1) holds fragment ``i`` of every segment, concatenated in segment order, nothing else::

    [header | payload F] [header | payload F] ... [header | payload F_last]

- ``header``: 32 bytes (:mod:`blobstore.codec`): magic ``b"DRF\\x01"`` (format 1), the code (Cauchy matrix, k, m),
  the fragment index, the segment index, the payload size, the CRC32 of the payload (zlib's CRC-32, computed by
  ISA-L) and the CRC32 of the header itself; every header byte is covered. (Format 1 replaced pyeclib's 80-byte
  liberasurecode header: a store refuses a volume whose ``header_bytes`` differ from its codec's.)
- segment ``s``'s fragment starts at byte ``s * (32 + F)`` of the block file.
- data block ``i < k``: the payload of segment ``s`` is the volume's bytes ``[start_s + i * F_s, + F_s)`` verbatim,
  so a normal read of a byte range reads only the data fragments holding it (no decoding). Blocks ``k..k+m-1`` hold
  the parity.

Keys: block ``i`` on machine ``Topology.warm_blocks(volume_id)[i]`` (rack ``i`` of the home region's cell):
``<machine.prefix>/warm/vol-<id:08d>.blk<i:02d>``. The XOR of a pair (A, B) from two regions goes to the third
region (``Topology.xor_region``), block ``i`` on rack ``i``, machine ``(a + b + i) % machines_per_rack``:
``<region>/cell-0/rack-<i:02d>/m-<j>/xor/xor-<a:08d>-<b:08d>.blk<i:02d>``.

Checks, in two layers: :class:`WarmVolume` holds the SHA-256 of every whole block file (the catalog's copy; scrub
verifies it; a write reads every block back and compares it byte for byte with the bytes it hashed); each fragment
carries its own CRC32 and header checksum, checked on every read, so one bad fragment costs a degraded read of that
segment only. A segment decodes from any ``k`` sound fragments; with fewer, :class:`VolumeLostError` names the volume
and the blocks, and no bytes are returned. Every rebuilt or recovered block is compared with its catalog checksum
before it is written. A write's 14 blocks (and a pair's 14 XOR blocks) are written concurrently, each atomically.

Raw bytes stored / logical bytes: (k+m)/k = 1.4 within the cell (plus 32 header bytes per 104,832), plus half of the
pair's 1.4 in the XOR region: 2.1 (:func:`measure_replication` reports the measured figure).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from blobstore.codec import DecodeError, RSCodec, Segment, plan_segments, xor_bytes
from blobstore.fs import BlobFS, BlobFSError
from blobstore.intents import crash_point
from blobstore.topology import Machine, Topology
from darkroom.settings import BlobSettings


class WarmVolumeError(RuntimeError):
    """A written, rebuilt or recovered block that does not match its catalog checksum, named."""


class VolumeLostError(DecodeError):
    """More blocks lost than the code tolerates: the volume (or one of its segments) cannot be decoded."""

    def __init__(self, volume_id: int, blocks: Sequence[int], detail: str) -> None:
        self.volume_id = volume_id
        self.blocks = tuple(sorted(blocks))
        super().__init__(
            f"warm volume {volume_id}: blocks {list(self.blocks)} lost or corrupt, {detail}; "
            "mark the volume lost or recover it from its XOR partner"
        )


def sha256_hex(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(data).hexdigest()


def block_key(machine: Machine, volume_id: int, block: int) -> str:
    return f"{machine.prefix}/warm/vol-{volume_id:08d}.blk{block:02d}"


def xor_block_key(machine: Machine, volume_a: int, volume_b: int, block: int) -> str:
    return f"{machine.prefix}/xor/xor-{volume_a:08d}-{volume_b:08d}.blk{block:02d}"


def xor_machines(topology: Topology, region: str, volume_a: int, volume_b: int) -> list[Machine]:
    """Block i of a pair's XOR: rack i of ``region``'s cell."""
    return [
        Machine(region, 0, i, (volume_a + volume_b + i) % topology.machines) for i in range(topology.k + topology.m)
    ]


@dataclass(frozen=True)
class WarmVolume:
    """A warm volume's catalog entry: enough to read, check, rebuild and XOR-recover it."""

    volume_id: int
    length: int  # logical bytes (the sealed volume's size)
    k: int
    m: int
    segment_bytes: int  # ec_segment_bytes at write time: with length, k and header_bytes, fixes the layout
    header_bytes: int  # liberasurecode's per-fragment header
    block_keys: tuple[str, ...]
    block_sizes: tuple[int, ...]
    block_sha256: tuple[str, ...]

    @property
    def n(self) -> int:
        return self.k + self.m

    @property
    def raw_bytes(self) -> int:
        return sum(self.block_sizes)

    @cached_property
    def segments(self) -> list[Segment]:
        return plan_segments(self.length, self.k, self.segment_bytes)

    def fragment_offset(self, seg: Segment) -> int:
        """Where segment ``seg``'s fragment starts in every block file (all segments before it are full)."""
        full = self.segments[0].fragment_bytes
        return seg.index * (self.header_bytes + full)

    def to_dict(self) -> dict[str, Any]:
        return {
            "volume_id": self.volume_id,
            "length": self.length,
            "k": self.k,
            "m": self.m,
            "segment_bytes": self.segment_bytes,
            "header_bytes": self.header_bytes,
            "block_keys": list(self.block_keys),
            "block_sizes": list(self.block_sizes),
            "block_sha256": list(self.block_sha256),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WarmVolume:
        return cls(
            **{k: v for k, v in d.items() if not k.startswith("block_")},
            block_keys=tuple(d["block_keys"]),
            block_sizes=tuple(d["block_sizes"]),
            block_sha256=tuple(d["block_sha256"]),
        )


@dataclass(frozen=True)
class XorPair:
    """The XOR blocks of two warm volumes of different home regions, stored in a third region."""

    volume_a: int
    volume_b: int
    region: str
    block_keys: tuple[str, ...]
    block_sizes: tuple[int, ...]  # max(a_sizes[i], b_sizes[i]): the shorter block is zero-padded
    block_sha256: tuple[str, ...]
    a_sizes: tuple[int, ...]  # true block lengths, to cut a recovered block back
    b_sizes: tuple[int, ...]

    @property
    def raw_bytes(self) -> int:
        return sum(self.block_sizes)


@dataclass(frozen=True)
class WarmCheck:
    """What scrub found on one warm volume."""

    volume_id: int
    m: int
    missing: tuple[int, ...]  # no block file
    corrupt: tuple[int, ...]  # a file whose size or SHA-256 differs from the catalog
    bad_fragments: dict[int, tuple[int, ...]] = field(default_factory=dict)  # corrupt block -> segments failing

    @property
    def lost(self) -> tuple[int, ...]:
        return tuple(sorted(self.missing + self.corrupt))

    @property
    def healthy(self) -> bool:
        return not self.lost

    @property
    def recoverable(self) -> bool:
        """At most m blocks lost (more may still decode when corrupt blocks keep sound fragments; rebuild tries)."""
        return len(self.lost) <= self.m


@dataclass(frozen=True)
class Replication:
    """Raw bytes stored over logical bytes, measured from block sizes."""

    logical_bytes: int
    cell_bytes: int
    xor_bytes: int

    @property
    def in_cell(self) -> float:
        return self.cell_bytes / self.logical_bytes

    @property
    def xor_share(self) -> float:
        return self.xor_bytes / self.logical_bytes

    @property
    def effective(self) -> float:
        return (self.cell_bytes + self.xor_bytes) / self.logical_bytes


def measure_replication(volumes: Iterable[WarmVolume], pairs: Iterable[XorPair] = ()) -> Replication:
    """Effective replication of warm volumes and the XOR pairs among them (2.1x when every volume is paired)."""
    vols = list(volumes)
    logical = sum(v.length for v in vols)
    if logical == 0:
        raise ValueError("no logical bytes: effective replication is undefined")
    return Replication(logical, sum(v.raw_bytes for v in vols), sum(p.raw_bytes for p in pairs))


def encode_blocks(codec: RSCodec, data: bytes, segment_bytes: int) -> np.ndarray:
    """The ``k + m`` block files of a volume (pure: no I/O), row ``i`` = block ``i``, built in one (k+m) x block-size
    array: per segment, the data payloads are copied in from ``data``, one ISA-L call writes the parity payloads in
    place, and every fragment is sealed (payload CRC32 + header)."""
    k, h = codec.k, codec.header_bytes
    segments = plan_segments(len(data), k, segment_bytes)
    blocks = np.empty((codec.n, sum(h + s.fragment_bytes for s in segments)), dtype=np.uint8)
    src = np.frombuffer(data, dtype=np.uint8)
    at = 0
    for seg in segments:
        f = seg.fragment_bytes
        fragments = blocks[:, at : at + h + f]
        if seg.data_bytes == k * f:
            fragments[:k, h:] = src[seg.start : seg.start + k * f].reshape(k, f)
        else:  # the tail: zero-padded to k * F_last
            padded = np.zeros(k * f, dtype=np.uint8)
            padded[: seg.data_bytes] = src[seg.start :]
            fragments[:k, h:] = padded.reshape(k, f)
        codec.encode_parity(fragments[:k, h:], fragments[k:, h:])
        codec.seal(fragments, seg.index)
        at += h + f
    return blocks


def _same_bytes(a: bytes | np.ndarray, b: bytes | np.ndarray) -> bool:
    """Byte-for-byte equality of two buffers, compared 8 bytes at a time (no copies)."""
    x, y = np.frombuffer(a, dtype=np.uint8), np.frombuffer(b, dtype=np.uint8)
    if x.size != y.size:
        return False
    w = x.size // 8 * 8
    return bool(np.array_equal(x[:w].view(np.uint64), y[:w].view(np.uint64)) and np.array_equal(x[w:], y[w:]))


class WarmStore:
    """Writes, reads, checks, rebuilds and XOR-recovers warm volumes through a :class:`BlobFS`."""

    def __init__(self, fs: BlobFS, blob: BlobSettings) -> None:
        self.fs = fs
        self.topology = Topology(blob)
        self.codec = RSCodec.from_settings(blob)
        self.segment_bytes = blob.ec_segment_bytes

    def _check_code(self, volume: WarmVolume) -> None:
        code = (volume.k, volume.m, volume.header_bytes)
        if code != (self.codec.k, self.codec.m, self.codec.header_bytes):
            raise ValueError(
                f"warm volume {volume.volume_id}: written as RS({volume.k},{volume.m}) with {volume.header_bytes}-byte "
                f"headers, this store codes RS({self.codec.k},{self.codec.m}) with {self.codec.header_bytes}"
            )

    # -- write ------------------------------------------------------------------------------------------------------

    def write(self, volume_id: int, data: bytes) -> WarmVolume:
        """Encodes, writes the k+m block files (each atomic and fsync'd), reads them back and verifies them."""
        blocks = encode_blocks(self.codec, data, self.segment_bytes)
        machines = self.topology.warm_blocks(volume_id)
        volume = WarmVolume(
            volume_id=volume_id,
            length=len(data),
            k=self.codec.k,
            m=self.codec.m,
            segment_bytes=self.segment_bytes,
            header_bytes=self.codec.header_bytes,
            block_keys=tuple(block_key(mc, volume_id, i) for i, mc in enumerate(machines)),
            block_sizes=(blocks.shape[1],) * self.codec.n,
            block_sha256=tuple(sha256_hex(b) for b in blocks),
        )
        self._write_blocks(volume.block_keys, [memoryview(b) for b in blocks], "warm.block_written")
        self._verify_written(f"warm volume {volume_id}", volume.block_keys, blocks)
        return volume

    def _write_blocks(self, keys: Sequence[str], blocks: Sequence[bytes | memoryview], point: str) -> None:
        """Writes the blocks concurrently, each atomic and fsync'd (in f4 each goes to its own rack; on one disk the
        14 fsyncs are queued together). ``point`` is reached once per block, in block order, after it is durable."""
        with ThreadPoolExecutor(max_workers=max(1, len(keys)), thread_name_prefix="warm-write") as pool:
            done = [pool.submit(self.fs.write, key, block) for key, block in zip(keys, blocks, strict=True)]
            for future in done:
                future.result()
                crash_point(point)

    def _verify_written(self, what: str, keys: Sequence[str], blocks: Sequence[bytes] | np.ndarray) -> None:
        """Reads every written block back and compares it byte for byte with the bytes whose SHA-256 went into the
        catalog entry (as strong as re-hashing what was read, several times faster); raises
        :class:`WarmVolumeError` naming any that differ."""
        bad = []
        for i, (key, block) in enumerate(zip(keys, blocks, strict=True)):
            try:
                if not _same_bytes(self.fs.read(key), block):
                    bad.append(i)
            except BlobFSError:
                bad.append(i)
        if bad:
            raise WarmVolumeError(f"{what}: blocks {bad} do not match their checksums")

    def verify(self, volume: WarmVolume, blocks: Iterable[int] | None = None) -> None:
        """Reads the blocks back (all by default); raises :class:`WarmVolumeError` naming any that do not match."""
        wanted = range(volume.n) if blocks is None else blocks
        bad = [i for i in wanted if self._stored_block(volume, i) is None]
        if bad:
            raise WarmVolumeError(f"warm volume {volume.volume_id}: blocks {bad} do not match their checksums")

    # -- read -------------------------------------------------------------------------------------------------------

    def read_range(self, volume: WarmVolume, offset: int, size: int) -> bytes:
        """The volume's bytes ``[offset, offset + size)``: from the data blocks, degraded-decoding a segment whose
        needed data fragment is missing or fails its checks."""
        self._check_code(volume)
        if offset < 0 or size < 0 or offset + size > volume.length:
            raise ValueError(f"warm volume {volume.volume_id}: range {offset}+{size} outside its {volume.length} bytes")
        out = bytearray()
        end = offset + size
        for seg in volume.segments:
            if seg.start >= end:
                break
            lo, hi = max(offset, seg.start), min(end, seg.start + seg.data_bytes)
            if lo >= hi:
                continue
            f = seg.fragment_bytes
            first, last = (lo - seg.start) // f, (hi - 1 - seg.start) // f
            sound: dict[int, bytes] = {}
            for i in range(first, last + 1):
                frag = self._read_fragment(volume, i, seg)
                if frag is None or self.codec.fragment_problem(frag, i, f, seg.index) is not None:
                    break
                sound[i] = frag
            if len(sound) == last - first + 1:
                seg_bytes = b"".join(self.codec.payload(sound[i]) for i in range(first, last + 1))
                base = seg.start + first * f
            else:
                seg_bytes = self._decode_segment(volume, seg, sound)
                base = seg.start
            out += seg_bytes[lo - base : hi - base]
        return bytes(out)

    def _read_fragment(self, volume: WarmVolume, block: int, seg: Segment) -> bytes | None:
        try:
            return self.fs.read(
                volume.block_keys[block], volume.fragment_offset(seg), volume.header_bytes + seg.fragment_bytes
            )
        except BlobFSError:
            return None

    def _gather(
        self, volume: WarmVolume, seg: Segment, have: dict[int, bytes] | None = None, avoid: Sequence[int] = ()
    ) -> dict[int, bytes]:
        """k sound fragments of ``seg`` (data blocks first, blocks in ``avoid`` last), or :class:`VolumeLostError`."""
        good = dict(have or {})
        bad: list[int] = []
        order = [i for i in range(volume.n) if i not in avoid] + [i for i in avoid if i < volume.n]
        for i in order:
            if len(good) >= volume.k:
                break
            if i in good:
                continue
            frag = self._read_fragment(volume, i, seg)
            if frag is not None and self.codec.fragment_problem(frag, i, seg.fragment_bytes, seg.index) is None:
                good[i] = frag
            else:
                bad.append(i)
        if len(good) < volume.k:
            raise VolumeLostError(
                volume.volume_id,
                bad,
                f"{len(bad)} > m={volume.m}: segment {seg.index} has {len(good)} sound fragments, needs k={volume.k}",
            )
        return good

    def _decode_segment(self, volume: WarmVolume, seg: Segment, have: dict[int, bytes]) -> bytearray:
        return self.codec.decode(self._gather(volume, seg, have), seg.fragment_bytes, segment=seg.index)

    # -- scrub and repair -------------------------------------------------------------------------------------------

    def _stored_block(self, volume: WarmVolume, block: int) -> bytes | None:
        """The block file if it matches its catalog size and checksum, else None."""
        try:
            data = self.fs.read(volume.block_keys[block])
        except BlobFSError:
            return None
        if len(data) != volume.block_sizes[block] or sha256_hex(data) != volume.block_sha256[block]:
            return None
        return data

    def check(self, volume: WarmVolume) -> WarmCheck:
        """Reads every block: which are missing, which corrupt, and which of a corrupt block's fragments fail."""
        self._check_code(volume)
        missing: list[int] = []
        corrupt: list[int] = []
        bad_fragments: dict[int, tuple[int, ...]] = {}
        for i, key in enumerate(volume.block_keys):
            try:
                data = self.fs.read(key)
            except BlobFSError:
                missing.append(i)
                continue
            if len(data) == volume.block_sizes[i] and sha256_hex(data) == volume.block_sha256[i]:
                continue
            corrupt.append(i)
            bad_fragments[i] = tuple(
                seg.index
                for seg in volume.segments
                if self.codec.fragment_problem(
                    self._slice_fragment(volume, data, seg), i, seg.fragment_bytes, seg.index
                )
            )
        return WarmCheck(volume.volume_id, volume.m, tuple(missing), tuple(corrupt), bad_fragments)

    @staticmethod
    def _slice_fragment(volume: WarmVolume, block: bytes, seg: Segment) -> bytes:
        start = volume.fragment_offset(seg)
        return block[start : start + volume.header_bytes + seg.fragment_bytes]

    def rebuilt_blocks(self, volume: WarmVolume, blocks: Sequence[int]) -> dict[int, bytes]:
        """Blocks ``blocks`` recomputed in memory from any k sound fragments per segment, each checked against the
        catalog (no I/O but reads)."""
        self._check_code(volume)
        want = sorted(set(blocks))
        parts: dict[int, list[bytes]] = {b: [] for b in want}
        for seg in volume.segments:
            good = self._gather(volume, seg, avoid=want)
            missing = [b for b in want if b not in good]
            rebuilt = self.codec.reconstruct(good, missing, seg.fragment_bytes, segment=seg.index) if missing else {}
            for b in want:
                parts[b].append(good[b] if b in good else rebuilt[b])
        out = {b: b"".join(p) for b, p in parts.items()}
        for b, data in out.items():
            if len(data) != volume.block_sizes[b] or sha256_hex(data) != volume.block_sha256[b]:
                raise WarmVolumeError(f"warm volume {volume.volume_id}: rebuilt block {b} does not match its checksum")
        return out

    def block_bytes(self, volume: WarmVolume, block: int) -> bytes:
        """Block ``block`` as written: read if sound, else recomputed from the others (degraded)."""
        stored = self._stored_block(volume, block)
        return stored if stored is not None else self.rebuilt_blocks(volume, [block])[block]

    def rebuild(self, volume: WarmVolume, blocks: Sequence[int] | None = None) -> tuple[int, ...]:
        """Recomputes ``blocks`` (default: those :meth:`check` finds lost) and rewrites them, verified; returns them."""
        want = tuple(sorted(set(self.check(volume).lost if blocks is None else blocks)))
        if not want:
            return ()
        for b, data in self.rebuilt_blocks(volume, want).items():
            self.fs.write(volume.block_keys[b], data)
        self.verify(volume, want)
        return want

    # -- geo XOR ----------------------------------------------------------------------------------------------------

    def write_xor(self, a: WarmVolume, b: WarmVolume) -> XorPair:
        """Writes block i of A XOR block i of B (the shorter zero-padded) to rack i of the third region's cell."""
        region_a, region_b = self.topology.home_region(a.volume_id), self.topology.home_region(b.volume_id)
        if region_a == region_b:
            raise ValueError(f"warm volumes {a.volume_id} and {b.volume_id} share home region {region_a}")
        if a.n != b.n:
            raise ValueError(f"warm volumes {a.volume_id} and {b.volume_id} have {a.n} and {b.n} blocks")
        region = self.topology.xor_region(region_a, region_b)
        machines = xor_machines(self.topology, region, a.volume_id, b.volume_id)
        keys, sizes, sums, xors = [], [], [], []
        for i in range(a.n):
            x = xor_bytes(self.block_bytes(a, i), self.block_bytes(b, i))
            xors.append(x)
            keys.append(xor_block_key(machines[i], a.volume_id, b.volume_id, i))
            sizes.append(len(x))
            sums.append(sha256_hex(x))
        self._write_blocks(keys, xors, "warm.xor_block_written")
        pair = XorPair(
            a.volume_id, b.volume_id, region, tuple(keys), tuple(sizes), tuple(sums), a.block_sizes, b.block_sizes
        )
        self._verify_written(f"XOR of warm volumes {a.volume_id} and {b.volume_id}", keys, xors)
        return pair

    def _stored_xor(self, pair: XorPair, block: int) -> bytes | None:
        try:
            data = self.fs.read(pair.block_keys[block])
        except BlobFSError:
            return None
        return data if sha256_hex(data) == pair.block_sha256[block] else None

    def verify_xor(self, pair: XorPair) -> None:
        bad = [i for i in range(len(pair.block_keys)) if self._stored_xor(pair, i) is None]
        if bad:
            raise WarmVolumeError(
                f"XOR of warm volumes {pair.volume_a} and {pair.volume_b}: blocks {bad} do not match their checksums"
            )

    def recover_from_xor(
        self, pair: XorPair, target: WarmVolume, partner: WarmVolume, blocks: Sequence[int] | None = None
    ) -> tuple[int, ...]:
        """Rewrites ``target``'s blocks (default all: its whole cell lost) as XOR block i XOR ``partner``'s block i,
        the partner's read normally or degraded-decoded; each checked against ``target``'s catalog checksum."""
        ids = (target.volume_id, partner.volume_id)
        if ids not in ((pair.volume_a, pair.volume_b), (pair.volume_b, pair.volume_a)):
            raise ValueError(f"XOR pair ({pair.volume_a}, {pair.volume_b}) does not pair volumes {ids}")
        want = tuple(sorted(set(range(target.n) if blocks is None else blocks)))
        for i in want:
            x = self._stored_xor(pair, i)
            if x is None:
                raise VolumeLostError(
                    target.volume_id, want, f"XOR block {i} of pair ({pair.volume_a}, {pair.volume_b}) is lost too"
                )
            data = xor_bytes(x, self.block_bytes(partner, i))[: target.block_sizes[i]]
            if sha256_hex(data) != target.block_sha256[i]:
                raise WarmVolumeError(
                    f"warm volume {target.volume_id}: block {i} recovered from the XOR does not match its checksum"
                )
            self.fs.write(target.block_keys[i], data)
        self.verify(target, want)
        return want
