"""Reed-Solomon erasure coding for the warm tier (ISA-L called directly) and the byte-wise XOR of f4's geo-replication.

:class:`RSCodec` calls Intel's ISA-L through ctypes: the ``libisal`` bundled in the pyeclib wheel
(``site-packages/pyeclib.libs/libisal-pyeclib.so.*``, found from pyeclib's package path; a system ``libisal`` if the
wheel has none). RS(k, m) over GF(2^8) (polynomial 0x11d) with ISA-L's Cauchy generator matrix
(``gf_gen_cauchy1_matrix``): the identity on the first ``k`` rows, then ``1 / (i ^ j)``. No field arithmetic is done
in Python: ``ec_init_tables`` expands the matrix rows, ``ec_encode_data`` multiplies, ``gf_invert_matrix`` inverts
the survivors' rows for a decode. pyeclib stays a dependency (its wheel ships the library) but is not called here:
the tests use its ``isa_l_rs_cauchy`` backend as a second, independent check of the parity (its liberasurecode path
copies every buffer and CRCs every fragment in software: 0.03-0.09x of ISA-L direct in ``bench/ec_codec.py``).

**Encode** (:meth:`RSCodec.encode_parity`) is exactly one ``ec_encode_data`` call per *segment*: it reads the ``k``
data rows where they lie (a numpy view, no copy) and writes the ``m`` parity rows into buffers the caller
preallocated (a warm volume's parity block buffers). That is what ``bench/ec_codec.py`` times against ISA-L direct.
**Sealing** a fragment (:meth:`RSCodec.seal`) is a separate step: the CRC32 of its payload (ISA-L's
``crc32_gzip_refl``, the zlib/gzip CRC-32, 4-5x as fast as ``zlib.crc32`` here) and its header. A warm write
seals every fragment as it builds the block files; ``bench/ec_codec.py`` reports encode + CRC32 too (about half the
encode's speed), and ``bench/ec_rewrite.py`` the whole write.

A *fragment* is a :data:`HEADER_BYTES`-byte header followed by the payload (``F`` bytes, a multiple of
:data:`ALIGN`). Data fragment ``i``'s payload is byte for byte the segment's bytes ``[i * F, (i + 1) * F)``, so a
reader of a byte range needs no decoding while the data fragments are healthy. The header, little-endian::

    0  magic  b"DRF" + format version 1          4  matrix id (1 = gf_gen_cauchy1_matrix)
    5  k      6  m      7  fragment index       8  segment index (u32)
    12 payload bytes F (u32)                    16 CRC32 of the payload (u32, zlib's CRC-32)
    20 reserved, zero (8 bytes)                 28 CRC32 of bytes 0..27 (u32)

Every byte of the header is covered by its own CRC. :meth:`RSCodec.fragment_problem` checks a fragment (length,
header CRC, magic and code, index, segment, size, payload CRC); :meth:`RSCodec.decode` and
:meth:`RSCodec.reconstruct` use only fragments that pass, and with fewer than ``k`` sound ones raise
:class:`DecodeError`, never return wrong bytes.

Segments are about ``BlobSettings.ec_segment_bytes`` (1 MiB: a degraded read decodes one segment; the bare encode
runs within ~15% of its best there, reached at 4-16 MiB, and slows again when a call's buffers leave the cache).
:func:`plan_segments` cuts a buffer into segments of ``k * F`` bytes, ``F`` a multiple of :data:`ALIGN`; the last
one is shorter and zero-padded up to ``k * F_last``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from darkroom.settings import BlobSettings

ALIGN = 64  # payload bytes per fragment are a multiple of this (SIMD-friendly; ISA-L takes any length)
MAGIC = b"DRF\x01"
MATRIX_CAUCHY1 = 1
_HEADER = struct.Struct("<4sBBBBIII8x")  # magic, matrix, k, m, index, segment, payload bytes, payload CRC, reserved
_HEADER_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _HEADER_CRC.size  # 32
_TABLE_CACHE = 4096  # decode tables kept per codec (one per survivor set and wanted rows: 1001 sets for RS(10,4))


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


# -- ISA-L -----------------------------------------------------------------------------------------------------------


def isal_library_path() -> str:
    """The libisal of the pyeclib wheel (``pyeclib.libs/libisal*.so*`` beside the package), else a system one."""
    spec = importlib.util.find_spec("pyeclib")
    if spec is not None and spec.submodule_search_locations:
        libs = Path(next(iter(spec.submodule_search_locations))).resolve().parent / "pyeclib.libs"
        found = sorted(libs.glob("libisal*.so*"))
        if found:
            return str(found[0])
    system = ctypes.util.find_library("isal")
    if system is None:
        raise OSError("no libisal: install pyeclib (its wheel bundles ISA-L) or the system's libisal")
    return system


@cache
def isal() -> ctypes.CDLL:
    """ISA-L with the prototypes :class:`RSCodec` uses (loaded once per process)."""
    lib = ctypes.CDLL(isal_library_path())
    p, i, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    for name, args, res in [
        ("gf_gen_cauchy1_matrix", [p, i, i], None),
        ("ec_init_tables", [i, i, p, p], None),
        ("ec_encode_data", [i, i, i, p, p, p], None),
        ("gf_invert_matrix", [p, p, i], i),
        ("crc32_gzip_refl", [u32, p, ctypes.c_uint64], u32),
    ]:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def _address(buf: bytes | bytearray | memoryview | np.ndarray) -> tuple[int, np.ndarray]:
    """The address of a contiguous buffer's first byte (and the array that keeps it alive): no copy."""
    arr = buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
    return arr.ctypes.data, arr


def crc32(buf: bytes | bytearray | memoryview | np.ndarray) -> int:
    """zlib's CRC-32 of a contiguous buffer, computed by ISA-L (``crc32_gzip_refl``; ``== zlib.crc32(buf)``)."""
    addr, arr = _address(buf)
    return isal().crc32_gzip_refl(0, addr, arr.nbytes)


def _rows(arr: np.ndarray, what: str) -> tuple[int, int, int]:
    """(address of row 0, row stride, row bytes) of a 2-D uint8 array whose rows are contiguous."""
    if arr.ndim != 2 or arr.dtype.char != "B" or (arr.shape[1] > 1 and arr.strides[1] != 1):
        raise ValueError(f"{what}: expected a 2-D uint8 array with contiguous rows, got {arr.dtype} {arr.shape}")
    return arr.__array_interface__["data"][0], arr.strides[0], arr.shape[1]


# -- the codec -------------------------------------------------------------------------------------------------------


class RSCodec:
    """RS(k, m) on ISA-L; see the module docstring for the fragment format and the checks."""

    ec_type = "isa_l_cauchy1_direct"

    def __init__(self, k: int = 10, m: int = 4) -> None:
        if not (2 <= k and 1 <= m and k + m <= 255):
            raise ValueError(f"RS({k},{m}): need k >= 2, m >= 1, k + m <= 255")
        self.k = k
        self.m = m
        self.header_bytes = HEADER_BYTES
        self._lib = isal()
        matrix = np.zeros((k + m, k), dtype=np.uint8)
        self._lib.gf_gen_cauchy1_matrix(matrix.ctypes.data, k + m, k)
        matrix.flags.writeable = False
        self.matrix = matrix
        self._encode_tables = self._tables(matrix[k:])
        self._encode_tables_at = self._encode_tables.ctypes.data
        self._tables_by_rows: dict[tuple[tuple[int, ...], tuple[int, ...]], np.ndarray] = {}
        self._ptrs_k = ctypes.c_void_p * k
        self._ptrs_m = ctypes.c_void_p * m

    @classmethod
    def from_settings(cls, blob: BlobSettings) -> RSCodec:
        return cls(blob.ec_data_blocks, blob.ec_parity_blocks)

    def __repr__(self) -> str:
        return f"RSCodec(k={self.k}, m={self.m}, ec_type={self.ec_type!r})"

    @property
    def n(self) -> int:
        return self.k + self.m

    def _tables(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        tables = np.zeros(32 * self.k * len(rows), dtype=np.uint8)
        self._lib.ec_init_tables(self.k, len(rows), rows.ctypes.data, tables.ctypes.data)
        return tables

    def _decode_tables(self, survivors: tuple[int, ...], wanted: tuple[int, ...]) -> np.ndarray:
        """ec_encode_data tables giving data rows ``wanted`` from the fragments ``survivors`` (k indexes)."""
        key = (survivors, wanted)
        tables = self._tables_by_rows.get(key)
        if tables is None:
            work = np.array(self.matrix[list(survivors)])  # gf_invert_matrix overwrites its input
            inverse = np.zeros((self.k, self.k), dtype=np.uint8)
            if self._lib.gf_invert_matrix(work.ctypes.data, inverse.ctypes.data, self.k) != 0:
                raise DecodeError(f"{self}: the rows of fragments {list(survivors)} are singular")
            if len(self._tables_by_rows) >= _TABLE_CACHE:
                self._tables_by_rows.clear()
            tables = self._tables_by_rows[key] = self._tables(inverse[list(wanted)])
        return tables

    # -- encode ------------------------------------------------------------------------------------------------------

    def encode_parity(self, data: np.ndarray, parity: np.ndarray) -> None:
        """One ``ec_encode_data`` call: ``parity`` (m x F) := the parity rows of ``data`` (k x F), both uint8 with
        contiguous rows at any row stride (a view into a volume's buffer, a block buffer); nothing is copied."""
        d, d_stride, f = _rows(data, "data")
        p, p_stride, fp = _rows(parity, "parity")
        if data.shape[0] != self.k or parity.shape[0] != self.m or fp != f or f % ALIGN or not f:
            raise ValueError(
                f"{self}: data {data.shape} and parity {parity.shape}: expected k and m rows of one positive length, "
                f"a multiple of {ALIGN}"
            )
        self._lib.ec_encode_data(
            f,
            self.k,
            self.m,
            self._encode_tables_at,
            self._ptrs_k(*range(d, d + self.k * d_stride, d_stride)),
            self._ptrs_m(*range(p, p + self.m * p_stride, p_stride)),
        )

    def seal(self, fragments: np.ndarray, segment: int = 0, first: int = 0) -> None:
        """Writes the header of every row of ``fragments`` (rows = fragments ``first``, ``first + 1``, ...; each
        :data:`HEADER_BYTES` + F bytes, payload already in place): payload CRC32, then the header's own CRC32."""
        base, stride, width = _rows(fragments, "fragments")
        f = width - HEADER_BYTES
        if f <= 0 or first + fragments.shape[0] > self.n:
            raise ValueError(f"{self}: cannot seal {fragments.shape} as fragments {first}..")
        crc = self._lib.crc32_gzip_refl
        for r in range(fragments.shape[0]):
            payload_crc = crc(0, base + r * stride + HEADER_BYTES, f)
            head = memoryview(fragments[r])
            _HEADER.pack_into(head, 0, MAGIC, MATRIX_CAUCHY1, self.k, self.m, first + r, segment, f, payload_crc)
            _HEADER_CRC.pack_into(head, _HEADER.size, zlib.crc32(head[: _HEADER.size]))

    def encode(self, segment: bytes, *, segment_index: int = 0) -> list[bytes]:
        """The ``k + m`` sealed fragments of ``k * F`` bytes (``F`` a multiple of :data:`ALIGN`), as bytes."""
        if not segment or len(segment) % (self.k * ALIGN):
            raise ValueError(f"segment of {len(segment)} bytes: expected a positive multiple of k*{ALIGN}")
        f = len(segment) // self.k
        out = np.empty((self.n, HEADER_BYTES + f), dtype=np.uint8)
        out[: self.k, HEADER_BYTES:] = np.frombuffer(segment, dtype=np.uint8).reshape(self.k, f)
        self.encode_parity(out[: self.k, HEADER_BYTES:], out[self.k :, HEADER_BYTES:])
        self.seal(out, segment_index)
        return [row.tobytes() for row in out]

    def encode_segments(self, data: bytes, segment_bytes: int) -> Iterator[tuple[Segment, list[bytes]]]:
        """Encodes ``data`` segment by segment (:func:`plan_segments`, the last zero-padded), yielding the fragments."""
        view = memoryview(data)
        for seg in plan_segments(len(data), self.k, segment_bytes):
            chunk = bytes(view[seg.start : seg.start + seg.data_bytes])
            pad = seg.fragment_bytes * self.k - seg.data_bytes
            yield seg, self.encode(chunk + bytes(pad) if pad else chunk, segment_index=seg.index)

    # -- checks ------------------------------------------------------------------------------------------------------

    def fragment_problem(self, fragment: bytes, index: int, payload_bytes: int, segment: int = 0) -> str | None:
        """Why ``fragment`` is not fragment ``index`` of segment ``segment`` with ``payload_bytes`` of sound payload,
        or None if it is."""
        if len(fragment) != HEADER_BYTES + payload_bytes:
            return f"{len(fragment)} bytes, expected {HEADER_BYTES + payload_bytes}"
        head = bytes(fragment[:HEADER_BYTES])
        if zlib.crc32(head[: _HEADER.size]) != _HEADER_CRC.unpack_from(head, _HEADER.size)[0]:
            return "header fails its checksum"
        magic, matrix, k, m, i, seg, size, payload_crc = _HEADER.unpack_from(head)
        if (magic, matrix, k, m) != (MAGIC, MATRIX_CAUCHY1, self.k, self.m):
            return (
                f"header names format {magic!r}, matrix {matrix}, RS({k},{m}); "
                f"expected {MAGIC!r}, {MATRIX_CAUCHY1}, RS({self.k},{self.m})"
            )
        if i != index:
            return f"header says fragment {i}, expected {index}"
        if seg != segment:
            return f"header says segment {seg}, expected {segment}"
        if size != payload_bytes:
            return f"header says {size} payload bytes, expected {payload_bytes}"
        addr, _arr = _address(fragment)
        if self._lib.crc32_gzip_refl(0, addr + HEADER_BYTES, payload_bytes) != payload_crc:
            return "payload fails its CRC32"
        return None

    def sound(
        self, fragments: Mapping[int, bytes], payload_bytes: int, *, enough: int | None = None, segment: int = 0
    ) -> dict[int, bytes]:
        """The fragments that pass :meth:`fragment_problem` (lowest indexes first, stopping at ``enough``)."""
        good: dict[int, bytes] = {}
        for i in sorted(fragments):
            if enough is not None and len(good) >= enough:
                break
            if self.fragment_problem(fragments[i], i, payload_bytes, segment) is None:
                good[i] = fragments[i]
        return good

    def _pick(self, fragments: Mapping[int, bytes], payload_bytes: int, segment: int, what: str) -> dict[int, bytes]:
        good = self.sound(fragments, payload_bytes, enough=self.k, segment=segment)
        if len(good) < self.k:
            bad = sorted(set(range(self.n)) - set(good))
            raise DecodeError(
                f"{what}: {len(good)} sound fragments of {self.n}, need {self.k}; missing or corrupt: {bad}"
            )
        return good  # lowest indexes first: with all data fragments, decoding is a copy

    # -- decode ------------------------------------------------------------------------------------------------------

    def _data_rows(self, good: dict[int, bytes], payload_bytes: int, out: np.ndarray) -> None:
        """``out`` (k x F) := the data payloads: sound data fragments copied, the others decoded by one ISA-L call."""
        for i, frag in good.items():
            if i < self.k:
                out[i] = np.frombuffer(frag, dtype=np.uint8, count=payload_bytes, offset=HEADER_BYTES)
        lost = tuple(i for i in range(self.k) if i not in good)
        if not lost:
            return
        survivors = tuple(good)
        addrs = [_address(f)[0] + HEADER_BYTES for f in good.values()]  # ``good`` keeps the buffers alive
        o, o_stride, _ = _rows(out, "out")
        self._lib.ec_encode_data(
            payload_bytes,
            self.k,
            len(lost),
            self._decode_tables(survivors, lost).ctypes.data,
            self._ptrs_k(*addrs),
            (ctypes.c_void_p * len(lost))(*(o + i * o_stride for i in lost)),
        )

    def decode(self, fragments: Mapping[int, bytes], payload_bytes: int, *, segment: int = 0) -> bytearray:
        """The segment (``k * payload_bytes`` bytes, padding included) from any ``k`` sound fragments, by index."""
        good = self._pick(fragments, payload_bytes, segment, "decode")
        out = bytearray(self.k * payload_bytes)
        self._data_rows(good, payload_bytes, np.frombuffer(out, dtype=np.uint8).reshape(self.k, payload_bytes))
        return out

    def reconstruct(
        self, fragments: Mapping[int, bytes], want: Sequence[int], payload_bytes: int, *, segment: int = 0
    ) -> dict[int, bytes]:
        """Fragments ``want`` (header included, identical to what encode made) from any ``k`` sound ones: the data
        rows decoded, then the wanted parity rows encoded from them."""
        want = sorted(set(want))
        if any(not 0 <= w < self.n for w in want):
            raise ValueError(f"{self}: no fragments {want}")
        good = self._pick(fragments, payload_bytes, segment, f"reconstruct of {want}")
        out = np.empty((self.n, HEADER_BYTES + payload_bytes), dtype=np.uint8)
        self._data_rows(good, payload_bytes, out[: self.k, HEADER_BYTES:])
        parity = [w - self.k for w in want if w >= self.k]
        if parity:
            self._parity_rows(out[: self.k, HEADER_BYTES:], out[self.k :, HEADER_BYTES:], parity)
        self.seal(out, segment)
        rebuilt = {w: out[w].tobytes() for w in want}
        for w, f in rebuilt.items():
            problem = self.fragment_problem(f, w, payload_bytes, segment)
            if problem is not None:
                raise DecodeError(f"reconstructed fragment {w} is not sound: {problem}")
        return rebuilt

    def _parity_rows(self, data: np.ndarray, parity: np.ndarray, rows: Sequence[int]) -> None:
        """Parity rows ``rows`` only (an ISA-L call with those rows of the matrix)."""
        d, d_stride, f = _rows(data, "data")
        p, p_stride, _ = _rows(parity, "parity")
        key = (tuple(range(self.k)), tuple(self.k + r for r in rows))
        tables = self._tables_by_rows.get(key)
        if tables is None:
            tables = self._tables_by_rows[key] = self._tables(self.matrix[list(key[1])])
        self._lib.ec_encode_data(
            f,
            self.k,
            len(rows),
            tables.ctypes.data,
            self._ptrs_k(*range(d, d + self.k * d_stride, d_stride)),
            (ctypes.c_void_p * len(rows))(*(p + r * p_stride for r in rows)),
        )

    def payload(self, fragment: bytes) -> memoryview:
        return memoryview(fragment)[HEADER_BYTES:]
