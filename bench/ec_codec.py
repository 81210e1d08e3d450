"""Erasure coding: our RS(k, m) codec (pyeclib) against ISA-L called directly, and the memory bandwidth, one run.

All single-threaded (one core), on the same random buffer cut into the same segments (``blob.ec_segment_bytes``,
one codec call each; :func:`blobstore.codec.plan_segments`):
- ``codec``: :class:`blobstore.codec.RSCodec` as the warm tier runs it (``isa_l_rs_cauchy`` with inline CRC32 per
  fragment): encode, and decode of every segment with its first ``m`` data fragments lost (each fragment checked);
- ``pyeclib_no_checksum``: the same backend without the per-fragment CRC32, to show what the checksum costs;
- ``isal_direct``: ``ec_encode_data`` from the libisal bundled in the pyeclib wheel, through ctypes, with ISA-L's own
  Cauchy matrix (``gf_gen_cauchy1_matrix`` + ``ec_init_tables``), reading the data fragments in place from the
  buffer; decode = the inverted survivor matrix (``gf_invert_matrix``) through ``ec_encode_data``;
- ``memory``: a large numpy array copy (MB/s of bytes copied; the bus moves twice that).
Minor page faults per pass are reported beside each figure: with glibc's default allocator, pyeclib's per-call
buffers may be returned to the kernel and faulted in again on every call (it depends on what else the heap holds;
the full run's 64 MiB buffer and its held fragments trigger it). ``glibc_keep_heap`` repeats the six figures after
``mallopt`` turns that off (no trimming, no mmap below 32 MiB), as a long-running worker could.
``ratio`` = codec encode MB/s / ISA-L direct encode MB/s (goal >= 0.5). MB = 10^6 bytes, of data (not parity).
The six figures are timed round-robin, one pass each per round after a warm-up pass, so a neighbour's load on the
shared machine hits them alike; each is the best pass, its median beside. ``ratio_paired_median`` is the median over
rounds of ISA-L's pass time over the codec's (the ratio least moved by the load).
The full run also sweeps the segment size for the codec's encode (a single call on the whole buffer last).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from darkroom.settings import DarkroomSettings

MB = 1e6


def _timed(fn: Callable[[], object], nbytes: int, min_seconds: float, min_passes: int = 3) -> dict:
    fn()  # warm-up: page faults, allocator, caches
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(times) < min_passes or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _rates(times, nbytes)


def _rates(times: list[float], nbytes: int) -> dict:
    return {
        "mb_s": round(nbytes / min(times) / MB, 1),
        "median_mb_s": round(nbytes / statistics.median(times) / MB, 1),
        "passes": len(times),
    }


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _round_robin(
    figures: dict[str, tuple[Callable[[], object], int]], seconds: float
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Times every figure once per round, rounds until ``seconds`` have passed (at least 3): a neighbour's load on
    the shared machine hits all figures alike, so their ratios hold better than their absolute values."""
    for fn, _ in figures.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in figures}
    faults = dict.fromkeys(figures, 0)
    deadline = time.perf_counter() + seconds
    while min(len(t) for t in times.values()) < 3 or time.perf_counter() < deadline:
        for name, (fn, _) in figures.items():
            f0, t0 = _minor_faults(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            faults[name] += _minor_faults() - f0
    return times, faults


def _measure(
    figures: dict[str, tuple[Callable[[], object], int]], seconds: float
) -> tuple[dict[str, list[float]], dict[str, dict]]:
    times, faults = _round_robin(figures, seconds)
    rates = {
        name: {**_rates(times[name], nbytes), "minor_page_faults_per_pass": faults[name] // len(times[name])}
        for name, (_, nbytes) in figures.items()
    }
    return times, rates


def _malloc_keep_heap() -> bool:
    """glibc: no heap trimming and no mmap below 32 MiB, for the rest of this process (a long-running worker's steady
    state). With the defaults, the codec's ~1 MiB buffers can be handed back to the kernel after every call and
    faulted in again on the next, depending on what else the heap holds."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_mmap_threshold, 32 << 20))
    except (OSError, AttributeError):
        return False


def _load_isal() -> tuple[ctypes.CDLL, str]:
    import pyeclib

    libs = Path(pyeclib.__file__).resolve().parent.parent / "pyeclib.libs"
    found = sorted(libs.glob("libisal*.so*"))
    if not found:
        raise RuntimeError(f"no libisal in {libs}: the pyeclib wheel is expected to bundle it")
    path = str(found[0])
    lib = ctypes.CDLL(path)
    p = ctypes.c_void_p
    lib.gf_gen_cauchy1_matrix.argtypes = [p, ctypes.c_int, ctypes.c_int]
    lib.gf_gen_cauchy1_matrix.restype = None
    lib.ec_init_tables.argtypes = [ctypes.c_int, ctypes.c_int, p, p]
    lib.ec_init_tables.restype = None
    lib.ec_encode_data.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, p, p, p]
    lib.ec_encode_data.restype = None
    lib.gf_invert_matrix.argtypes = [p, p, ctypes.c_int]
    lib.gf_invert_matrix.restype = ctypes.c_int
    return lib, path


class _IsalDirect:
    """ISA-L's RS encode and decode on a buffer's segments, fragments read in place."""

    def __init__(self, lib: ctypes.CDLL, k: int, m: int, buf: np.ndarray, segments, lost: list[int]) -> None:
        self.lib, self.k, self.m, self.segments = lib, k, m, segments
        matrix = np.zeros((k + m, k), dtype=np.uint8)
        lib.gf_gen_cauchy1_matrix(matrix.ctypes.data, k + m, k)
        self.matrix = matrix
        self.enc_tables = self._tables(matrix[k:])
        base = buf.ctypes.data
        f_max = max(s.fragment_bytes for s in segments)
        self.parity = [np.zeros((m, f_max), dtype=np.uint8) for _ in segments]
        ptrs = ctypes.c_void_p * k
        self.data_ptrs = [ptrs(*(base + s.start + i * s.fragment_bytes for i in range(k))) for s in segments]
        self.parity_ptrs = [(ctypes.c_void_p * m)(*(p[r].ctypes.data for r in range(m))) for p in self.parity]
        # Decode: survivors = the data fragments not lost, then parity; lost data rows of the survivors' inverse.
        survivors = [i for i in range(k + m) if i not in lost][:k]
        inverse = np.zeros((k, k), dtype=np.uint8)
        work = np.ascontiguousarray(matrix[survivors])
        if lib.gf_invert_matrix(work.ctypes.data, inverse.ctypes.data, k) != 0:
            raise RuntimeError(f"survivor matrix of {survivors} is singular")
        self.dec_tables = self._tables(inverse[lost])
        self.lost = lost
        self.out = [np.zeros((len(lost), f_max), dtype=np.uint8) for _ in segments]
        self.out_ptrs = [(ctypes.c_void_p * len(lost))(*(o[r].ctypes.data for r in range(len(lost)))) for o in self.out]

        def survivor_ptr(si: int, i: int) -> int:
            s = segments[si]
            return base + s.start + i * s.fragment_bytes if i < k else self.parity[si][i - k].ctypes.data

        self.surv_ptrs = [ptrs(*(survivor_ptr(si, i) for i in survivors)) for si in range(len(segments))]

    def _tables(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows)
        tables = np.zeros(32 * self.k * len(rows), dtype=np.uint8)
        self.lib.ec_init_tables(self.k, len(rows), rows.ctypes.data, tables.ctypes.data)
        return tables

    def encode(self) -> None:
        t = self.enc_tables.ctypes.data
        for s, d, p in zip(self.segments, self.data_ptrs, self.parity_ptrs, strict=True):
            self.lib.ec_encode_data(s.fragment_bytes, self.k, self.m, t, d, p)

    def decode(self) -> None:
        t = self.dec_tables.ctypes.data
        for s, d, o in zip(self.segments, self.surv_ptrs, self.out_ptrs, strict=True):
            self.lib.ec_encode_data(s.fragment_bytes, self.k, len(self.lost), t, d, o)


def run(settings: DarkroomSettings, *, quick: bool) -> dict:
    from pyeclib.ec_iface import ECDriver

    from blobstore.codec import RSCodec, full_fragment_bytes, plan_segments

    blob = settings.blob
    k, m, segment_bytes = blob.ec_data_blocks, blob.ec_parity_blocks, blob.ec_segment_bytes
    stripe = k * full_fragment_bytes(k, segment_bytes)
    buffer_bytes = ((16 if quick else 64) << 20) // stripe * stripe  # whole segments: ISA-L reads them in place
    copy_bytes = (64 if quick else 256) << 20
    seconds = 5.0 if quick else 30.0  # the round-robin of the six figures
    sweep_seconds = 3.0  # each point of the full run's segment-size sweep
    lost = list(range(m))  # the worst case for a reader: m data fragments gone

    buf = np.frombuffer(os.urandom(buffer_bytes), dtype=np.uint8).copy()
    data = buf.tobytes()
    codec = RSCodec(k, m)
    segments = plan_segments(len(data), k, segment_bytes)
    encoded = [(seg, dict(enumerate(frags))) for seg, frags in codec.encode_segments(data, segment_bytes)]

    def codec_encode() -> None:
        for _ in codec.encode_segments(data, segment_bytes):
            pass

    survivors = [(seg, {i: f for i, f in frags.items() if i not in lost}) for seg, frags in encoded]

    def codec_decode() -> None:
        for seg, frags in survivors:
            codec.decode(frags, seg.fragment_bytes)

    if codec.decode(survivors[-1][1], segments[-1].fragment_bytes) != data[segments[-1].start :]:
        raise RuntimeError("codec decode with erasures returned other bytes")

    raw = ECDriver(ec_type=codec.ec_type, k=k, m=m)  # same backend, no per-fragment checksum
    chunks = [data[s.start : s.start + s.data_bytes] for s in segments]

    def raw_encode() -> None:
        for c in chunks:
            raw.encode(c)

    lib, lib_path = _load_isal()
    isal = _IsalDirect(lib, k, m, buf, segments, lost)
    isal.encode()
    first = encoded[0][1]
    f0 = segments[0].fragment_bytes
    if any(isal.parity[0][r, :f0].tobytes() != bytes(codec.payload(first[k + r])) for r in range(m)):
        raise RuntimeError("ISA-L direct parity differs from the codec's: not the same code")
    isal.decode()
    if any(isal.out[0][j, :f0].tobytes() != data[i * f0 : (i + 1) * f0] for j, i in enumerate(lost)):
        raise RuntimeError("ISA-L direct decode returned other bytes")

    print(f"[bench ec_codec] RS({k},{m}) on {buffer_bytes >> 20} MiB, {len(segments)} segments", flush=True)
    src = np.ones(copy_bytes // 8, dtype=np.uint64)
    dst = np.zeros_like(src)
    figures = {
        "codec_encode": (codec_encode, buffer_bytes),
        "codec_decode": (codec_decode, buffer_bytes),
        "raw_encode": (raw_encode, buffer_bytes),
        "isal_encode": (isal.encode, buffer_bytes),
        "isal_decode": (isal.decode, buffer_bytes),
        "memory_copy": (lambda: np.copyto(dst, src), copy_bytes),
    }
    times, rates = _measure(figures, seconds)
    enc, dec, raw_enc = rates["codec_encode"], rates["codec_decode"], rates["raw_encode"]
    isal_enc, isal_dec, mem = rates["isal_encode"], rates["isal_decode"], rates["memory_copy"]
    paired = statistics.median(i / c for i, c in zip(times["isal_encode"], times["codec_encode"], strict=True))
    print(f"[bench ec_codec] codec encode {enc['mb_s']} MB/s, ISA-L direct {isal_enc['mb_s']} MB/s", flush=True)

    sweep = {}
    if not quick:
        for size in (256 << 10, 1 << 20, 4 << 20, 16 << 20, buffer_bytes):

            def encode_at(size: int = size) -> None:
                for _ in codec.encode_segments(data, size):
                    pass

            sweep[str(size)] = _timed(encode_at, buffer_bytes, sweep_seconds)["mb_s"]

    no_trim = {}
    if _malloc_keep_heap():
        _, steady = _measure(figures, seconds)
        no_trim = {
            name: {"mb_s": r["mb_s"], "minor_page_faults_per_pass": r["minor_page_faults_per_pass"]}
            for name, r in steady.items()
        }

    return {
        "ratio": round(enc["mb_s"] / isal_enc["mb_s"], 4),
        "ratio_of": "our codec's RS encode MB/s (pyeclib isa_l_rs_cauchy, CRC32 per fragment) over ISA-L "
        "ec_encode_data called directly on the same segments (goal >= 0.5)",
        "codec": {"encode": enc, "decode_m_erasures": dec},
        "pyeclib_no_checksum": {"encode": raw_enc},
        "isal_direct": {"encode": isal_enc, "decode_m_erasures": isal_dec, "library": lib_path},
        "memory_copy": mem,
        "ratio_paired_median": round(paired, 4),
        "decode_ratio": round(dec["mb_s"] / isal_dec["mb_s"], 4),
        "encode_vs_memory_copy": round(enc["mb_s"] / mem["mb_s"], 4),
        "encode_mb_s_by_segment_bytes": sweep,
        "glibc_keep_heap": no_trim,
        "params": {
            "k": k,
            "m": m,
            "ec_type": codec.ec_type,
            "segment_bytes": segment_bytes,
            "fragment_bytes": segments[0].fragment_bytes,
            "segments": len(segments),
            "buffer_bytes": buffer_bytes,
            "copy_bytes": copy_bytes,
            "lost_fragments": lost,
            "header_bytes": codec.header_bytes,
            "threads": 1,
            "seconds_round_robin": seconds,
            "mb": "10^6 bytes of data",
        },
    }
