"""The RS codec against an independent GF(2^8) reference written here, and its refusal to return wrong bytes.

The reference: GF(2^8) with polynomial 0x11d (x^8 + x^4 + x^3 + x^2 + 1) from exp/log tables, and ISA-L's
``gf_gen_cauchy1_matrix`` as ISA-L documents it: identity on the first k rows, then ``a[i][j] = 1 / (i ^ j)`` for
parity rows ``i = k..k+m-1`` and columns ``j = 0..k-1``. Parity row r of a segment = sum over j of
``a[k + r][j] * data_j`` (XOR for the sum), byte by byte. pyeclib's ``isa_l_rs_cauchy`` backend (liberasurecode, a
different caller of ISA-L) is a second check of the parity. The fragment header is parsed here with ``struct`` and
``zlib.crc32`` from the format the codec's docstring gives.
"""

from __future__ import annotations

import itertools
import random
import struct
import zlib

import numpy as np
import pytest
from pyeclib.ec_iface import ECDriver

from blobstore.codec import ALIGN, DecodeError, RSCodec, crc32, full_fragment_bytes, plan_segments, xor_bytes

HEADER = struct.Struct("<4sBBBBIII8xI")  # magic, matrix, k, m, index, segment, payload bytes, payload CRC, header CRC


def _gf_tables() -> tuple[np.ndarray, np.ndarray]:
    exp = np.zeros(512, dtype=np.int64)
    log = np.zeros(256, dtype=np.int64)
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= 0x11D
    exp[255:510] = exp[:255]
    return exp, log


EXP, LOG = _gf_tables()


def gf_mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else int(EXP[LOG[a] + LOG[b]])


def gf_inv(a: int) -> int:
    return int(EXP[255 - LOG[a]])


# MUL[c] is the 256-entry table of "multiply by c".
MUL = np.array([[gf_mul(a, b) for b in range(256)] for a in range(256)], dtype=np.uint8)


def cauchy_parity_rows(k: int, m: int) -> list[list[int]]:
    return [[gf_inv(i ^ j) for j in range(k)] for i in range(k, k + m)]


def reference_parity(data_fragments: list[bytes], m: int) -> list[bytes]:
    k = len(data_fragments)
    rows = [np.frombuffer(d, dtype=np.uint8) for d in data_fragments]
    out = []
    for coefs in cauchy_parity_rows(k, m):
        acc = np.zeros_like(rows[0])
        for c, row in zip(coefs, rows, strict=True):
            acc ^= MUL[c][row]
        out.append(acc.tobytes())
    return out


def test_reference_field_is_gf256_with_poly_0x11d():
    assert gf_mul(0x80, 2) == 0x1D  # x^7 * x = x^8 = x^4 + x^3 + x^2 + 1
    assert gf_mul(3, 7) == 9  # (x + 1)(x^2 + x + 1) = x^3 + 1, no reduction
    assert all(gf_mul(a, gf_inv(a)) == 1 for a in range(1, 256))
    assert len(set(EXP[:255].tolist())) == 255  # 2 generates the multiplicative group


@pytest.mark.parametrize(("k", "m", "fragment_bytes"), [(10, 4, 384), (10, 4, 4096), (4, 2, 64), (6, 3, 1344)])
def test_parity_matches_the_reference_byte_for_byte(k, m, fragment_bytes):
    codec = RSCodec(k, m)
    rng = random.Random(k * 1000 + fragment_bytes)
    segment = rng.randbytes(k * fragment_bytes)
    fragments = codec.encode(segment)
    assert len(fragments) == k + m
    data = [segment[i * fragment_bytes : (i + 1) * fragment_bytes] for i in range(k)]
    for i in range(k):
        assert bytes(codec.payload(fragments[i])) == data[i]  # data fragments hold the segment verbatim
    expected = reference_parity(data, m)
    for r in range(m):
        assert bytes(codec.payload(fragments[k + r])) == expected[r], f"parity row {r}"


def test_parity_matches_pyeclib_isa_l_rs_cauchy():
    codec = RSCodec(10, 4)
    segment = random.Random(7).randbytes(10 * 1024)
    theirs = ECDriver(ec_type="isa_l_rs_cauchy", k=10, m=4).encode(segment)
    ours = codec.encode(segment)
    for i in range(14):
        assert bytes(codec.payload(ours[i])) == theirs[i][-1024:], f"fragment {i}"


def test_encode_parity_works_in_place_on_strided_views():
    """The warm write's path: data rows read where they lie, parity written into rows of a wider buffer."""
    codec = RSCodec(10, 4)
    f = 256
    volume = np.frombuffer(random.Random(8).randbytes(10 * f), dtype=np.uint8)
    blocks = np.full((14, 1000), 0xEE, dtype=np.uint8)  # parity goes to columns 100..355 of rows 10..13
    codec.encode_parity(volume.reshape(10, f), blocks[10:, 100 : 100 + f])
    expected = reference_parity([volume[i * f : (i + 1) * f].tobytes() for i in range(10)], 4)
    assert [blocks[10 + r, 100 : 100 + f].tobytes() for r in range(4)] == expected
    assert (blocks[:10] == 0xEE).all() and (blocks[10:, :100] == 0xEE).all() and (blocks[10:, 100 + f :] == 0xEE).all()
    with pytest.raises(ValueError, match="expected k and m rows"):
        codec.encode_parity(volume.reshape(10, f)[:9], blocks[10:, :f])
    with pytest.raises(ValueError, match="contiguous rows"):
        codec.encode_parity(volume.reshape(10, f)[:, ::2], blocks[10:, :128])


def test_fragment_header_format():
    codec = RSCodec(10, 4)
    assert codec.header_bytes == HEADER.size == 32
    segment = random.Random(9).randbytes(10 * 192)
    for i, frag in enumerate(codec.encode(segment, segment_index=77)):
        magic, matrix, k, m, index, seg, size, payload_crc, header_crc = HEADER.unpack_from(frag)
        assert (magic, matrix, k, m, index, seg, size) == (b"DRF\x01", 1, 10, 4, i, 77, 192)
        assert payload_crc == zlib.crc32(frag[32:])
        assert header_crc == zlib.crc32(frag[:28])
        assert frag[20:28] == bytes(8)
    assert crc32(segment) == zlib.crc32(segment)  # ISA-L's crc32_gzip_refl is zlib's CRC-32
    assert crc32(b"") == 0


def test_parity_of_structured_data_matches_the_reference():
    codec = RSCodec(10, 4)
    data = [bytes([0] * 64) for _ in range(10)]
    data[3] = bytes([1] * 64)  # one unit vector: parity row r is column 3 of the Cauchy matrix
    fragments = codec.encode(b"".join(data))
    for r in range(4):
        assert bytes(codec.payload(fragments[10 + r])) == bytes([gf_inv((10 + r) ^ 3)] * 64)


def test_decodes_from_any_k_of_n_fragments():
    codec = RSCodec(10, 4)
    segment = random.Random(1).randbytes(10 * 128)
    fragments = dict(enumerate(codec.encode(segment)))
    for lost in itertools.combinations(range(14), 4):
        kept = {i: f for i, f in fragments.items() if i not in lost}
        assert codec.decode(kept, 128) == segment, lost


def test_decode_takes_any_buffer():
    codec = RSCodec(10, 4)
    segment = random.Random(10).randbytes(10 * 64)
    fragments = codec.encode(segment)
    kept = {i: bytearray(fragments[i]) for i in range(2, 12)}
    kept[3] = memoryview(fragments[3])
    assert codec.decode(kept, 64) == segment


def test_reconstruct_gives_the_encoded_fragments_back():
    codec = RSCodec(10, 4)
    fragments = dict(enumerate(codec.encode(random.Random(2).randbytes(10 * 256))))
    for lost in [(0, 1, 2, 3), (10, 11, 12, 13), (1, 5, 9, 12), (0, 13)]:
        kept = {i: f for i, f in fragments.items() if i not in lost}
        assert codec.reconstruct(kept, list(lost), 256) == {i: fragments[i] for i in lost}


def test_more_than_m_lost_raises():
    codec = RSCodec(10, 4)
    fragments = dict(enumerate(codec.encode(bytes(range(256)) * 5)))
    kept = {i: f for i, f in fragments.items() if i not in (0, 4, 8, 11, 13)}
    with pytest.raises(DecodeError, match=r"9 sound fragments of 14, need 10; missing or corrupt: \[0, 4, 8, 11, 13\]"):
        codec.decode(kept, 128)
    with pytest.raises(DecodeError):
        codec.reconstruct(kept, [0], 128)


def test_a_corrupt_fragment_is_never_decoded_into_wrong_bytes():
    codec = RSCodec(10, 4)
    segment = random.Random(3).randbytes(10 * 192)
    fragments = dict(enumerate(codec.encode(segment)))
    flipped = bytearray(fragments[2])
    flipped[codec.header_bytes + 17] ^= 0x40
    fragments[2] = bytes(flipped)
    assert codec.fragment_problem(fragments[2], 2, 192) == "payload fails its CRC32"
    assert codec.decode(fragments, 192) == segment  # the corrupt one is skipped, a parity fragment used instead
    only_ten = {i: fragments[i] for i in range(10)}
    with pytest.raises(DecodeError, match=r"missing or corrupt: \[2, 10, 11, 12, 13\]"):
        codec.decode(only_ten, 192)


def test_fragment_problems_are_named():
    codec = RSCodec(10, 4)
    fragments = codec.encode(bytes(10 * 64))
    assert codec.fragment_problem(fragments[5], 5, 64) is None
    assert "header says fragment 5, expected 6" in codec.fragment_problem(fragments[5], 6, 64)
    assert codec.fragment_problem(fragments[5], 5, 64, segment=1) == "header says segment 0, expected 1"
    other = RSCodec(10, 3).encode(bytes(10 * 64))[5]  # a sound fragment of another code
    assert "RS(10,3); expected b'DRF\\x01', 1, RS(10,4)" in codec.fragment_problem(other, 5, 64)
    assert "bytes, expected" in codec.fragment_problem(fragments[5][:-1], 5, 64)
    assert "bytes, expected" in codec.fragment_problem(fragments[5] + b"\0", 5, 64)
    bad_header = bytearray(fragments[5])
    bad_header[4] ^= 1  # the payload size field
    assert codec.fragment_problem(bytes(bad_header), 5, 64) == "header fails its checksum"
    assert codec.fragment_problem(bytes(codec.header_bytes + 64), 5, 64) == "header fails its checksum"


def test_encode_rejects_unaligned_segments():
    codec = RSCodec(10, 4)
    with pytest.raises(ValueError, match="multiple of k"):
        codec.encode(bytes(10 * ALIGN + 1))
    with pytest.raises(ValueError, match="multiple of k"):
        codec.encode(b"")


def test_plan_segments_cuts_full_segments_and_an_aligned_tail():
    assert full_fragment_bytes(10, 1 << 20) == 104_832
    segments = plan_segments(2 * 3840 + 1001, 10, 4096)
    assert [(s.index, s.start, s.data_bytes, s.fragment_bytes) for s in segments] == [
        (0, 0, 3840, 384),
        (1, 3840, 3840, 384),
        (2, 7680, 1001, 128),  # ceil(1001 / 640) * 64
    ]
    assert plan_segments(0, 10, 4096) == []
    with pytest.raises(ValueError, match="at least k"):
        plan_segments(100, 10, 639)


def test_encode_segments_pads_only_the_tail():
    codec = RSCodec(10, 4)
    data = random.Random(4).randbytes(3840 + 100)
    out = list(codec.encode_segments(data, 4096))
    assert [len(f[0]) - codec.header_bytes for _, f in out] == [384, 64]
    tail = b"".join(bytes(codec.payload(f)) for f in out[1][1][:10])
    assert tail == data[3840:] + bytes(540)


def test_xor_pads_the_shorter_with_zeros():
    assert xor_bytes(b"\x01\x02\x03", b"\xff") == b"\xfe\x02\x03"
    assert xor_bytes(b"\xff", b"\x01\x02\x03") == b"\xfe\x02\x03"
    assert xor_bytes(b"", b"ab") == b"ab"
    a, b = random.Random(5).randbytes(1000), random.Random(6).randbytes(700)
    x = xor_bytes(a, b)
    assert len(x) == 1000
    assert xor_bytes(x, b) == a
    assert xor_bytes(x, a)[:700] == b
    assert xor_bytes(x, a)[700:] == bytes(300)
