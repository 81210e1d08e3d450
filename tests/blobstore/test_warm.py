"""f4 warm volumes on a LocalFS: layout, normal and degraded reads, scrub, rebuild, geo XOR and replication."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest

from blobstore.fs import LocalFS
from blobstore.warm import (
    VolumeLostError,
    WarmStore,
    WarmVolume,
    WarmVolumeError,
    measure_replication,
)
from darkroom.settings import BlobSettings

HEADER = 32  # blobstore.codec's fragment header, format 1
# ec_segment_bytes=4096: 384 payload bytes per fragment (3840 data bytes per full segment).
BLOB = BlobSettings(ec_segment_bytes=4096)
LENGTH = 2 * 3840 + 1001  # two full segments and a 128-byte-fragment tail


def volume_bytes(seed: int, length: int = LENGTH) -> bytes:
    return random.Random(seed).randbytes(length)


@pytest.fixture
def fs(tmp_path) -> LocalFS:
    return LocalFS(tmp_path)


@pytest.fixture
def store(fs) -> WarmStore:
    return WarmStore(fs, BLOB)


def flip(fs: LocalFS, key: str, offset: int) -> None:
    path = fs.path(key)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_blocks_are_on_14_racks_and_data_blocks_hold_contiguous_bytes(fs, store):
    data = volume_bytes(1)
    vol = store.write(7, data)  # home region: regions[7 % 3] = "eu"
    assert vol.length == LENGTH
    assert vol.header_bytes == store.codec.header_bytes == HEADER
    assert [s.fragment_bytes for s in vol.segments] == [384, 384, 128]
    assert vol.block_keys[0] == "eu/cell-0/rack-00/m-1/warm/vol-00000007.blk00"
    assert vol.block_keys[13] == "eu/cell-0/rack-13/m-0/warm/vol-00000007.blk13"
    assert len({k.split("/")[2] for k in vol.block_keys}) == 14
    assert sorted(fs.list()) == sorted(vol.block_keys)
    assert vol.block_sizes == (2 * (HEADER + 384) + HEADER + 128,) * 14
    for i in range(10):
        block = fs.read(vol.block_keys[i])
        assert block[HEADER : HEADER + 384] == data[i * 384 : (i + 1) * 384]
        assert block[2 * (HEADER + 384) + HEADER :] == (data[7680 + i * 128 : 7680 + (i + 1) * 128]).ljust(128, b"\0")


def test_description_round_trips_through_a_dict(store):
    vol = store.write(3, volume_bytes(2))
    assert WarmVolume.from_dict(vol.to_dict()) == vol


def test_read_ranges(store):
    data = volume_bytes(3)
    vol = store.write(4, data)
    for offset, size in [(0, LENGTH), (0, 1), (383, 2), (3839, 2), (1000, 5000), (7680, 1001), (LENGTH - 1, 1), (5, 0)]:
        assert store.read_range(vol, offset, size) == data[offset : offset + size]
    with pytest.raises(ValueError, match="outside its"):
        store.read_range(vol, LENGTH - 1, 2)


def test_normal_reads_touch_only_data_blocks(fs, store):
    data = volume_bytes(4)
    vol = store.write(5, data)
    for key in vol.block_keys[10:]:
        fs.delete(key)
    assert store.read_range(vol, 0, LENGTH) == data
    # A range inside data block 6 of segment 1 reads with every other block gone.
    for i, key in enumerate(vol.block_keys[:10]):
        if i != 6:
            fs.delete(key)
    start = 3840 + 6 * 384 + 10
    assert store.read_range(vol, start, 300) == data[start : start + 300]
    with pytest.raises(VolumeLostError):
        store.read_range(vol, start, 400)  # spills into block 7: needs a decode that cannot be done


def test_every_pattern_of_4_lost_blocks_reads_back(tmp_path):
    fs = LocalFS(tmp_path)
    store = WarmStore(fs, BLOB)
    data = volume_bytes(5, 3840 + 700)  # one full segment and a tail: every read decodes two segments
    vol = store.write(6, data)
    paths = [fs.path(k) for k in vol.block_keys]
    aside = [Path(f"{p}.aside") for p in paths]
    patterns = list(itertools.combinations(range(14), 4))
    assert len(patterns) == 1001
    for lost in patterns:
        for i in lost:
            os.rename(paths[i], aside[i])
        try:
            assert store.read_range(vol, 0, len(data)) == data, lost
        finally:
            for i in lost:
                os.rename(aside[i], paths[i])


def test_five_lost_blocks_raise_naming_the_volume_and_blocks(fs, store):
    data = volume_bytes(6)
    vol = store.write(8, data)
    for i in (0, 3, 7, 11, 13):
        fs.delete(vol.block_keys[i])
    with pytest.raises(VolumeLostError, match=r"warm volume 8: blocks \[0, 3, 7, 11, 13\] lost") as e:
        store.read_range(vol, 0, LENGTH)
    assert (e.value.volume_id, e.value.blocks) == (8, (0, 3, 7, 11, 13))
    assert isinstance(e.value, ValueError)
    assert store.read_range(vol, 3840 + 384, 384) == data[3840 + 384 : 3840 + 768]  # block 1 alone needs no decode
    check = store.check(vol)
    assert (check.missing, check.recoverable) == ((0, 3, 7, 11, 13), False)
    with pytest.raises(VolumeLostError, match=r"warm volume 8: blocks \[0, 3, 7, 11, 13\]"):
        store.rebuild(vol)
    assert not any(fs.exists(vol.block_keys[i]) for i in (0, 3, 7, 11, 13))


def test_five_corrupt_copies_of_one_segment_raise_too(fs, store):
    vol = store.write(9, volume_bytes(7))
    for i in (1, 2, 10, 11, 12):
        flip(fs, vol.block_keys[i], HEADER + 384 + HEADER + 5)  # segment 1's payload
    with pytest.raises(VolumeLostError, match=r"blocks \[1, 2, 10, 11, 12\].*segment 1 has 9 sound fragments"):
        store.read_range(vol, 0, LENGTH)


@pytest.mark.parametrize(
    "offset",
    [
        HEADER + 384 + HEADER + 200,  # segment 1's payload
        HEADER + 384 + 8,  # its header: the segment index
        HEADER + 384 + 24,  # its header: the reserved bytes (every header byte is under the header's CRC)
        HEADER + 384 + 30,  # its header: the header's CRC itself
    ],
)
def test_a_flipped_byte_in_any_block_is_detected_read_around_and_repaired(fs, store, offset):
    data = volume_bytes(8)
    vol = store.write(10, data)
    originals = [fs.read(k) for k in vol.block_keys]
    for i in range(14):
        flip(fs, vol.block_keys[i], offset)
        check = store.check(vol)
        assert (check.missing, check.corrupt, check.healthy) == ((), (i,), False)
        assert check.bad_fragments == {i: (1,)}  # segment 1's fragment fails its own checks
        assert store.read_range(vol, 0, LENGTH) == data
        assert store.rebuild(vol) == (i,)
        assert fs.read(vol.block_keys[i]) == originals[i]
    assert store.check(vol).healthy


def test_a_sound_fragment_in_the_wrong_segment_is_not_read_as_that_segment(fs, store):
    """Segment 0's fragment of block 3 written over segment 1's (same size, own CRCs intact): its header names
    segment 0, so a read of segment 1 decodes around it instead of returning segment 0's bytes."""
    data = volume_bytes(21)
    vol = store.write(14, data)
    path = fs.path(vol.block_keys[3])
    block = bytearray(path.read_bytes())
    frag = HEADER + 384
    block[frag : 2 * frag] = block[:frag]
    path.write_bytes(bytes(block))
    check = store.check(vol)
    assert (check.corrupt, check.bad_fragments) == ((3,), {3: (1,)})
    assert store.read_range(vol, 3840 + 3 * 384, 384) == data[3840 + 3 * 384 : 3840 + 4 * 384]
    assert store.rebuild(vol) == (3,)
    assert store.check(vol).healthy


def test_rebuild_of_4_lost_blocks_rewrites_them_identically(fs, store):
    vol = store.write(11, volume_bytes(9))
    originals = [fs.read(k) for k in vol.block_keys]
    fs.delete(vol.block_keys[2])
    fs.delete(vol.block_keys[9])
    flip(fs, vol.block_keys[10], 3)
    fs.path(vol.block_keys[13]).write_bytes(originals[13][:100])  # torn
    check = store.check(vol)
    assert (check.missing, check.corrupt, check.recoverable) == ((2, 9), (10, 13), True)
    assert store.rebuild(vol) == (2, 9, 10, 13)
    assert [fs.read(k) for k in vol.block_keys] == originals


def test_rebuild_uses_sound_fragments_of_corrupt_blocks(fs, store):
    """Five corrupt blocks, each bad in another segment: every segment still has 10 sound fragments."""
    vol = store.write(12, volume_bytes(10))
    originals = [fs.read(k) for k in vol.block_keys]
    for i, seg_offset in [(0, 0), (1, 0), (2, HEADER + 384), (3, HEADER + 384), (4, 2 * (HEADER + 384))]:
        flip(fs, vol.block_keys[i], seg_offset + HEADER + 1)
    assert store.check(vol).lost == (0, 1, 2, 3, 4)
    assert store.rebuild(vol) == (0, 1, 2, 3, 4)
    assert [fs.read(k) for k in vol.block_keys] == originals


def test_verify_names_blocks_that_do_not_match(fs, store):
    vol = store.write(13, volume_bytes(11))
    store.verify(vol)
    flip(fs, vol.block_keys[4], 0)
    with pytest.raises(WarmVolumeError, match=r"warm volume 13: blocks \[4\]"):
        store.verify(vol)


def test_a_whole_lost_cell_is_recovered_from_the_xor_partner(fs, store):
    a_data, b_data = volume_bytes(12), volume_bytes(13, LENGTH - 3000)  # B's blocks are shorter
    a, b = store.write(1, a_data), store.write(2, b_data)  # home regions eu and as
    a_blocks = [fs.read(k) for k in a.block_keys]
    pair = store.write_xor(a, b)
    assert pair.region == "na"
    assert pair.block_keys[3] == "na/cell-0/rack-03/m-0/xor/xor-00000001-00000002.blk03"
    assert (pair.a_sizes, pair.b_sizes) == (a.block_sizes, b.block_sizes)
    assert pair.block_sizes == a.block_sizes
    for key in a.block_keys:
        fs.delete(key)
    for i in (0, 5, 12):  # B is degraded too: its blocks are decoded before the XOR
        fs.delete(b.block_keys[i])
    assert store.recover_from_xor(pair, a, b) == tuple(range(14))
    assert [fs.read(k) for k in a.block_keys] == a_blocks
    assert store.read_range(a, 0, LENGTH) == a_data
    store.rebuild(b)
    for key in b.block_keys:
        fs.delete(key)
    store.recover_from_xor(pair, b, a)  # the other way round: cut back to B's shorter blocks
    assert store.read_range(b, 0, len(b_data)) == b_data


def test_xor_recovery_refuses_a_lost_xor_block_and_same_region_pairs(fs, store):
    a, b, c = store.write(1, volume_bytes(14)), store.write(2, volume_bytes(15)), store.write(4, volume_bytes(16))
    with pytest.raises(ValueError, match="share home region eu"):
        store.write_xor(a, c)
    pair = store.write_xor(a, b)
    fs.delete(pair.block_keys[6])
    with pytest.raises(VolumeLostError, match=r"warm volume 1: .*XOR block 6"):
        store.recover_from_xor(pair, a, b)
    with pytest.raises(ValueError, match="does not pair"):
        store.recover_from_xor(pair, a, c)


def test_effective_replication_is_2_1_with_1_mib_segments(tmp_path):
    store = WarmStore(LocalFS(tmp_path), BlobSettings())
    size = 10 * 104_832 * 2  # two full 1 MiB segments
    a, b = store.write(1, volume_bytes(17, size)), store.write(2, volume_bytes(18, size))
    pair = store.write_xor(a, b)
    r = measure_replication([a, b], [pair])
    assert r.logical_bytes == 2 * size
    assert r.in_cell == pytest.approx(1.4, abs=0.001)  # 32-byte headers on 104,832-byte fragments
    assert r.xor_share == pytest.approx(0.7, abs=0.001)
    assert r.effective == pytest.approx(2.1, abs=0.003)
    assert r.cell_bytes + r.xor_bytes == sum(p.stat().st_size for p in tmp_path.rglob("*.blk*"))


@pytest.mark.parametrize("length", [0, 1, 640])
def test_tiny_and_empty_volumes(fs, store, length):
    data = volume_bytes(19, length)
    vol = store.write(20, data)
    assert store.read_range(vol, 0, length) == data
    if length:
        for i in (0, 4, 11, 13):
            fs.delete(vol.block_keys[i])
        assert store.read_range(vol, 0, length) == data
    assert store.rebuild(vol) == ((0, 4, 11, 13) if length else ())
    assert store.check(vol).healthy


def test_a_store_of_another_code_refuses_the_volume(fs, store):
    vol = store.write(21, volume_bytes(20))
    other = WarmStore(fs, BlobSettings(ec_segment_bytes=4096, ec_parity_blocks=3))
    with pytest.raises(ValueError, match=r"written as RS\(10,4\).*this store codes RS\(10,3\)"):
        other.read_range(vol, 0, 10)


class BadDiskFS(LocalFS):
    """A disk that stores the byte at ``offset`` of every write to a key containing ``part`` flipped."""

    def __init__(self, root: Path, part: str, offset: int) -> None:
        super().__init__(root)
        self.part, self.offset = part, offset

    def write(self, key: str, data: bytes) -> None:
        if self.part in key:
            data = bytearray(data)
            data[self.offset] ^= 1
        super().write(key, bytes(data))


def test_a_block_stored_wrong_fails_its_write(tmp_path):
    store = WarmStore(BadDiskFS(tmp_path, "vol-00000001.blk06", 500), BLOB)
    with pytest.raises(WarmVolumeError, match=r"warm volume 1: blocks \[6\] do not match their checksums"):
        store.write(1, volume_bytes(22))


def test_an_xor_block_stored_wrong_fails_its_write(tmp_path):
    store = WarmStore(BadDiskFS(tmp_path, "xor-00000001-00000002.blk13", 500), BLOB)
    a, b = store.write(1, volume_bytes(22)), store.write(2, volume_bytes(23))
    with pytest.raises(WarmVolumeError, match=r"XOR of warm volumes 1 and 2: blocks \[13\] do not match"):
        store.write_xor(a, b)
