"""Reed-Solomon erasure coding for the warm tier, and the byte-wise XOR of f4's geo-replication.

:class:`RSCodec` wraps pyeclib's ``isa_l_rs_cauchy`` backend (liberasurecode + ISA-L, bundled in the pyeclib wheel):
RS(k, m) over GF(2^8), ISA-L's Cauchy generator matrix (``gf_gen_cauchy1_matrix``, polynomial 0x11d). No field
arithmetic is done in Python. One codec call encodes one *segment*: ``k`` data fragments and ``m`` parity
fragments, each a liberasurecode header (:attr:`RSCodec.header_bytes`, 80 bytes) followed by the payload. Data
fragment ``i``'s payload is byte for byte the segment's bytes ``[i * F, (i + 1) * F)`` (``F`` = payload bytes per
fragment), so a reader of a byte range needs no decoding while the data fragments are healthy.

Segments are about ``BlobSettings.ec_segment_bytes`` (1 MiB): ISA-L is fastest when a call's buffers stay in cache,
one 64 MiB call is several times slower. :func:`plan_segments` cuts a buffer into segments of ``k * F`` bytes, ``F``
a multiple of :data:`ALIGN`; the last one is shorter and zero-padded up to ``k * F_last``.

Every fragment carries liberasurecode's inline CRC32 of its payload and a checksum of its own header. liberasurecode
does *not* check payload CRCs when decoding (a flipped payload byte decodes to wrong bytes), so :meth:`RSCodec.decode`
and :meth:`RSCodec.reconstruct` check every fragment first (:meth:`RSCodec.fragment_problem`) and use only sound ones;
with fewer than ``k`` sound fragments they raise :class:`DecodeError`, never return wrong bytes. pyeclib's C code
asserts on some malformed input (a ``bytearray`` fragment aborts the process), so only checked ``bytes`` reach it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pyeclib.ec_iface import ECDriver, ECDriverError

from darkroom.settings import BlobSettings

EC_TYPE = "isa_l_rs_cauchy"
CHECKSUM_TYPE = "inline_crc32"
ALIGN = 64  # payload bytes per fragment are a multiple of this (SIMD-friendly, any multiple works for the backend)


class DecodeError(ValueError):
    """Fewer than ``k`` sound fragments: the bytes cannot be recovered (never guessed)."""


@dataclass(frozen=True)
class Segment:
    """One codec call's share of a buffer: ``data_bytes`` bytes from ``start``, ``fragment_bytes`` payload each."""

    index: int
    start: int
    data_bytes: int
    fragment_bytes: int


def full_fragment_bytes(k: int, segment_bytes: int) -> int:
    """Payload bytes of each fragment of a full segment: ``segment_bytes / k`` rounded down to :data:`ALIGN`."""
    f = segment_bytes // k // ALIGN * ALIGN
    if f <= 0:
        raise ValueError(f"segment_bytes={segment_bytes}: a segment needs at least k*{ALIGN}={k * ALIGN} bytes")
    return f


def plan_segments(length: int, k: int, segment_bytes: int) -> list[Segment]:
    """Cuts ``length`` bytes into segments of ``k * F`` bytes; the last holds the rest with a smaller aligned ``F``."""
    f = full_fragment_bytes(k, segment_bytes)
    full, rest = divmod(length, k * f)
    segments = [Segment(i, i * k * f, k * f, f) for i in range(full)]
    if rest:
        f_last = -(-rest // (k * ALIGN)) * ALIGN
        segments.append(Segment(full, full * k * f, rest, f_last))
    return segments


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """Byte-wise XOR; the shorter buffer is padded with zeros, so the result is as long as the longer one."""
    a_arr = np.frombuffer(a, dtype=np.uint8)
    b_arr = np.frombuffer(b, dtype=np.uint8)
    if len(a_arr) < len(b_arr):
        a_arr, b_arr = b_arr, a_arr
    out = a_arr.copy()
    np.bitwise_xor(out[: len(b_arr)], b_arr, out=out[: len(b_arr)])
    return out.tobytes()


class RSCodec:
    """RS(k, m) through pyeclib; see the module docstring for the fragment format and the checks."""

    def __init__(self, k: int = 10, m: int = 4, *, ec_type: str = EC_TYPE, checksum_type: str = CHECKSUM_TYPE) -> None:
        self.k = k
        self.m = m
        self.ec_type = ec_type
        self._driver = ECDriver(ec_type=ec_type, k=k, m=m, chksum_type=checksum_type)
        probe = self._driver.encode(bytes(k * ALIGN))
        self.header_bytes = len(probe[0]) - ALIGN
        self._backend_id = self._driver.get_metadata(probe[0], 1)["backend_id"]

    @classmethod
    def from_settings(cls, blob: BlobSettings) -> RSCodec:
        return cls(blob.ec_data_blocks, blob.ec_parity_blocks)

    def __repr__(self) -> str:
        return f"RSCodec(k={self.k}, m={self.m}, ec_type={self.ec_type!r})"

    @property
    def n(self) -> int:
        return self.k + self.m

    def encode(self, segment: bytes) -> list[bytes]:
        """One codec call on ``k * F`` bytes (``F`` a multiple of :data:`ALIGN`): the ``k + m`` fragments."""
        if not segment or len(segment) % (self.k * ALIGN):
            raise ValueError(f"segment of {len(segment)} bytes: expected a positive multiple of k*{ALIGN}")
        fragments = self._driver.encode(bytes(segment))
        if len(fragments[0]) != self.header_bytes + len(segment) // self.k:
            raise RuntimeError(f"{self}: fragment of {len(fragments[0])} bytes, the layout assumes exact payloads")
        return fragments

    def encode_segments(self, data: bytes, segment_bytes: int) -> Iterator[tuple[Segment, list[bytes]]]:
        """Encodes ``data`` segment by segment (:func:`plan_segments`, the last zero-padded), yielding the fragments."""
        view = memoryview(data)
        for seg in plan_segments(len(data), self.k, segment_bytes):
            chunk = bytes(view[seg.start : seg.start + seg.data_bytes])
            pad = seg.fragment_bytes * self.k - seg.data_bytes
            yield seg, self.encode(chunk + bytes(pad) if pad else chunk)

    def fragment_problem(self, fragment: bytes, index: int, payload_bytes: int) -> str | None:
        """Why ``fragment`` is not fragment ``index`` with ``payload_bytes`` of sound payload, or None if it is."""
        if len(fragment) != self.header_bytes + payload_bytes:
            return f"{len(fragment)} bytes, expected {self.header_bytes + payload_bytes}"
        try:
            meta = self._driver.get_metadata(bytes(fragment), 1)
        except ECDriverError:
            return "header fails its checksum"
        if meta["index"] != index:
            return f"header says fragment {meta['index']}, expected {index}"
        if meta["size"] != payload_bytes or meta["orig_data_size"] != self.k * payload_bytes:
            return f"header sizes {meta['size']}/{meta['orig_data_size']} do not match a {payload_bytes}-byte fragment"
        if meta["backend_id"] != self._backend_id:
            return f"header names backend {meta['backend_id']}, expected {self._backend_id}"
        if meta["chksum_mismatch"]:
            return "payload fails its CRC32"
        return None

    def sound(
        self, fragments: Mapping[int, bytes], payload_bytes: int, *, enough: int | None = None
    ) -> dict[int, bytes]:
        """The fragments that pass :meth:`fragment_problem` (lowest indexes first, stopping at ``enough``)."""
        good: dict[int, bytes] = {}
        for i in sorted(fragments):
            if enough is not None and len(good) >= enough:
                break
            if self.fragment_problem(fragments[i], i, payload_bytes) is None:
                good[i] = bytes(fragments[i])
        return good

    def _pick(self, fragments: Mapping[int, bytes], payload_bytes: int, what: str) -> list[bytes]:
        good = self.sound(fragments, payload_bytes, enough=self.k)
        if len(good) < self.k:
            bad = sorted(set(range(self.n)) - set(good))
            raise DecodeError(
                f"{what}: {len(good)} sound fragments of {self.n}, need {self.k}; missing or corrupt: {bad}"
            )
        return list(good.values())  # lowest indexes first: with all data fragments, decoding is a copy

    def decode(self, fragments: Mapping[int, bytes], payload_bytes: int) -> bytes:
        """The segment (``k * payload_bytes`` bytes, padding included) from any ``k`` sound fragments, by index."""
        chosen = self._pick(fragments, payload_bytes, "decode")
        try:
            data = self._driver.decode(chosen)
        except ECDriverError as e:
            raise DecodeError(f"decode of {len(chosen)} sound fragments failed: {e}") from e
        if len(data) != self.k * payload_bytes:
            raise DecodeError(f"decode returned {len(data)} bytes, expected {self.k * payload_bytes}")
        return data

    def reconstruct(self, fragments: Mapping[int, bytes], want: Sequence[int], payload_bytes: int) -> dict[int, bytes]:
        """Fragments ``want`` (header included, identical to what encode made) from any ``k`` sound ones."""
        chosen = self._pick(fragments, payload_bytes, f"reconstruct of {sorted(want)}")
        try:
            rebuilt = self._driver.reconstruct(chosen, sorted(want))
        except ECDriverError as e:
            raise DecodeError(f"reconstruct of {sorted(want)} failed: {e}") from e
        out = dict(zip(sorted(want), rebuilt, strict=True))
        for i, f in out.items():
            problem = self.fragment_problem(f, i, payload_bytes)
            if problem is not None:
                raise DecodeError(f"reconstructed fragment {i} is not sound: {problem}")
        return out

    def payload(self, fragment: bytes) -> memoryview:
        return memoryview(fragment)[self.header_bytes :]
