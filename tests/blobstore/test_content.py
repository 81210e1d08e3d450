"""Deterministic media bytes, stored sizes and the blob store's checksum."""

from __future__ import annotations

import zlib

import pytest

from blobstore.content import CHECKSUM_ALGORITHM, checksum, crc32, media_bytes, stored_size


def test_media_bytes_are_a_function_of_seed_and_size():
    a = media_bytes(7, 10_000)
    assert len(a) == 10_000
    assert media_bytes(7, 10_000) == a
    assert media_bytes(8, 10_000) != a
    assert media_bytes(7, 1_003) == a[:1_003]  # a prefix, also for sizes that are not a multiple of 8
    assert media_bytes(7, 0) == b""
    # incompressible, like a JPEG body
    assert len(zlib.compress(a)) > 9_900


def test_media_bytes_are_pinned_across_numpy_releases():
    # Golden values: a change here means every stored blob's catalog checksum would change.
    assert media_bytes(7, 16).hex() == "8b4ae5f1a94106a0956a26afbccdafe5"
    assert checksum(media_bytes(123456789, 1000)) == "7ef68ede"


def test_media_bytes_take_spark_signed_seeds():
    assert media_bytes(-1, 64) == media_bytes((1 << 64) - 1, 64)
    assert media_bytes(-1, 64) != media_bytes(1, 64)
    with pytest.raises(ValueError, match="size must be >= 0"):
        media_bytes(1, -1)


def test_stored_size_scales_with_a_floor():
    assert stored_size(2_000_000, 0.0005) == 1000
    assert stored_size(20_000, 0.0005) == 64  # 10 bytes would be less than the floor
    assert stored_size(0, 1.0) == 64
    assert stored_size(3_000, 1.0) == 3_000
    with pytest.raises(ValueError, match="scale"):
        stored_size(100, 0)
    with pytest.raises(ValueError, match="generated_bytes"):
        stored_size(-5, 0.5)


def test_checksum_is_crc32():
    assert CHECKSUM_ALGORITHM == "crc32"
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    assert checksum(b"123456789") == "cbf43926"
    assert checksum(memoryview(b"xx123456789")[2:]) == "cbf43926"
    assert checksum(b"") == "00000000"
