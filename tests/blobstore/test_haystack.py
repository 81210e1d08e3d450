"""Haystack hot volumes on a LocalFS under tmp_path: replication, recovery, deletes, compaction, scrub and repair."""

from __future__ import annotations

import itertools
import shutil

import pytest

from blobstore.content import checksum, media_bytes
from blobstore.fs import LocalFS
from blobstore.haystack import (
    HotStore,
    HotVolume,
    HotVolumeError,
    NeedleEntry,
    NeedleNotFound,
    NeedleUnreadable,
    decode_index,
    encode_index,
    encode_needle,
    read_needle_at,
)
from blobstore.topology import Topology
from darkroom.settings import BlobSettings

VOLUME = 42
SIZES = [0, 1, 7, 8, 9, 63, 64, 65, 200, 1000, 4097]


def on_disk(size: int) -> int:
    """A needle's bytes by the documented format: 24-byte header, data, 8-byte footer, padding to 8."""
    return 24 + size + 8 + (-(24 + size + 8) % 8)


@pytest.fixture
def fs(tmp_path):
    return LocalFS(tmp_path / "blobs")


@pytest.fixture(scope="module")
def topology():
    return Topology(BlobSettings())


def blobs(n: int, first_id: int = 1000) -> dict[int, bytes]:
    return {first_id + i: media_bytes(first_id + i, SIZES[i % len(SIZES)]) for i in range(n)}


def filled(fs, topology, n: int = 40, *, capacity: int = 1 << 20, **kw) -> tuple[HotVolume, dict[int, bytes]]:
    vol = HotVolume.create(fs, topology, VOLUME, capacity=capacity, **kw)
    data = blobs(n)
    items = list(data.items())
    for needle_id, blob in items[: n // 2]:
        vol.append(needle_id, blob)
    vol.append_many(items[n // 2 :])
    return vol, data


def reopen(fs, topology, vol: HotVolume | None = None, **kw) -> HotVolume:
    return HotVolume.open(fs, topology, VOLUME, capacity=vol.capacity if vol else 1 << 20, **kw)


def replica_bytes(fs, vol: HotVolume) -> list[bytes]:
    return [fs.read(vol.data_key(r)) for r in range(vol.replicas)]


def flip(fs, key: str, pos: int, mask: int = 0x01) -> None:
    """Flips bits of one byte of a file in place, as bit rot would (flipping again undoes it)."""
    path = fs.path(key)
    raw = bytearray(path.read_bytes())
    raw[pos] ^= mask
    path.write_bytes(bytes(raw))


def assert_reads_back(vol: HotVolume, data: dict[int, bytes]) -> None:
    assert sorted(needle_id for needle_id, _, _ in vol.needles()) == sorted(data)
    for needle_id, blob in data.items():
        for r in range(vol.replicas):
            assert vol.read(needle_id, replica=r) == blob


def test_replicas_sit_on_three_racks_under_the_documented_keys(fs, topology):
    vol = HotVolume.create(fs, topology, VOLUME, capacity=1 << 16)
    assert vol.replicas == 3
    assert len({m.rack_id for m in vol.machines}) == 3
    for r, machine in enumerate(vol.machines):
        assert vol.data_key(r) == f"{machine.prefix}/hot/vol-00000042.dat"
        assert vol.index_key(r) == f"{machine.prefix}/hot/vol-00000042.idx"
    assert sorted(fs.list()) == sorted([vol.data_key(r) for r in range(3)] + [vol.index_key(r) for r in range(3)])
    with pytest.raises(HotVolumeError, match="already exists"):
        HotVolume.create(fs, topology, VOLUME, capacity=1 << 16)


def test_round_trip_of_many_needles_on_every_replica(fs, topology):
    vol, data = filled(fs, topology, n=120)
    offsets = [offset for _, offset, _ in vol.needles()]
    assert offsets[0] == 32 and all(o % 8 == 0 for o in offsets)
    sizes = {needle_id: size for needle_id, _, size in vol.needles()}
    assert sizes == {needle_id: len(blob) for needle_id, blob in data.items()}
    assert vol.size == 32 + sum(on_disk(len(b)) for b in data.values())
    assert_reads_back(vol, data)
    files = replica_bytes(fs, vol)
    assert files[0] == files[1] == files[2] and len(files[0]) == vol.size
    # a catalog location is enough for a single verified read
    needle_id, offset, size = next(iter(vol.needles()))
    assert read_needle_at(fs, vol.data_key(2), offset, size, needle_id) == data[needle_id]
    with pytest.raises(NeedleUnreadable, match="holds needle"):
        read_needle_at(fs, vol.data_key(2), offset, size, needle_id + 1)
    vol.close()
    again = reopen(fs, topology)
    assert_reads_back(again, data)
    assert list(again.needles()) == list(vol.needles())
    assert all(report.ok for report in again.check())


def test_index_is_rebuilt_when_missing_or_corrupt(fs, topology):
    vol, data = filled(fs, topology)
    gone = next(iter(data))
    vol.delete(gone)
    del data[gone]
    vol.close()
    fs.delete(vol.index_key(0))
    fs.delete(vol.index_key(1))
    broken = bytearray(fs.read(vol.index_key(2)))
    broken[60] ^= 0xFF
    fs.write(vol.index_key(2), bytes(broken))
    assert decode_index(bytes(broken), VOLUME) == "index checksum mismatch"

    again = reopen(fs, topology)
    assert_reads_back(again, data)
    assert gone not in again
    with pytest.raises(NeedleNotFound, match=f"needle {gone} is deleted"):
        again.read(gone)
    for r in range(3):  # recovery wrote fresh index files
        hint = decode_index(fs.read(again.index_key(r)), VOLUME)
        assert hint.covered == again.size
    assert all(report.ok for report in again.check())


def test_stale_index_tail_is_rescanned(fs, topology):
    vol, data = filled(fs, topology, n=20, checkpoint_every=0)
    vol.checkpoint()
    covered = vol.size
    extra = blobs(5, first_id=5000)
    vol.append_many(list(extra.items()))
    gone = 1003
    vol.delete(gone)  # the tombstone is only in the tail too
    del data[gone]
    data.update(extra)
    assert decode_index(fs.read(vol.index_key(0)), VOLUME).covered == covered < vol.size
    del vol  # no close: the index files stay stale, as after a crash

    again = reopen(fs, topology)
    assert_reads_back(again, data)
    assert gone not in again
    assert decode_index(fs.read(again.index_key(0)), VOLUME).covered == again.size


@pytest.mark.parametrize("cut", [3, 24 + 100, 24 + 1000 + 8 - 1])
def test_torn_last_needle_is_truncated(fs, topology, cut):
    vol, data = filled(fs, topology, n=10)
    vol.close()
    size = vol.size
    torn = encode_needle(777, media_bytes(777, 1000))
    assert len(torn) == on_disk(1000) and cut < len(torn)
    for r in range(3):
        fs.append(vol.data_key(r), torn[:cut])

    again = reopen(fs, topology)
    assert again.size == size
    assert [fs.size(again.data_key(r)) for r in range(3)] == [size] * 3
    assert 777 not in again
    assert_reads_back(again, data)
    offset, _ = again.append(777, media_bytes(777, 1000))
    assert offset == size
    assert again.read(777, replica=1) == media_bytes(777, 1000)
    assert all(report.ok for report in again.check())


def test_append_that_reached_one_replica_is_caught_up_on_the_others(fs, topology):
    vol, data = filled(fs, topology, n=10)
    vol.close()
    needle = encode_needle(777, media_bytes(777, 300))
    fs.append(vol.data_key(0), needle)  # complete on replica 0
    fs.append(vol.data_key(1), needle[:50])  # torn on replica 1, never reached replica 2

    again = reopen(fs, topology)
    assert again.problems == {}
    assert again.read(777, replica=2) == media_bytes(777, 300)
    files = replica_bytes(fs, again)
    assert files[0] == files[1] == files[2] and len(files[0]) == again.size


def test_tombstones_hide_needles_and_compaction_reclaims_them(fs, topology):
    vol, data = filled(fs, topology, n=60)
    deleted = [needle_id for i, needle_id in enumerate(data) if i % 3 == 0]
    for needle_id in deleted:
        assert vol.delete(needle_id)
    assert not vol.delete(deleted[0])  # already gone
    assert not vol.delete(123)  # never stored
    for needle_id in deleted:
        assert needle_id not in vol
        with pytest.raises(NeedleNotFound):
            vol.read(needle_id)
    live = {k: v for k, v in data.items() if k not in deleted}
    old_size = vol.size
    expected_reclaimed = sum(on_disk(len(data[k])) for k in deleted) + len(deleted) * on_disk(0)
    assert vol.garbage_bytes == expected_reclaimed

    assert vol.compact() == expected_reclaimed
    assert vol.size == old_size - expected_reclaimed == 32 + sum(on_disk(len(b)) for b in live.values())
    assert vol.generation == 1 and vol.garbage_bytes == 0
    assert vol.compact() == 0
    assert_reads_back(vol, live)
    assert [fs.size(vol.data_key(r)) for r in range(3)] == [vol.size] * 3
    assert not any(key.endswith(".compact") for key in fs.list())
    assert all(report.ok for report in vol.check())

    again = reopen(fs, topology)
    assert again.generation == 1
    assert list(again.needles()) == list(vol.needles())
    assert_reads_back(again, live)


def test_interrupted_compaction_rolls_forward_or_back(fs, topology, tmp_path):
    vol, data = filled(fs, topology, n=30)
    for needle_id in list(data)[:10]:
        vol.delete(needle_id)
        del data[needle_id]
    vol.close()
    before = tmp_path / "before"
    shutil.copytree(fs.root, before)
    vol.compact()
    compacted = replica_bytes(fs, vol)

    # crash after the .compact writes, before any rename: rolled back
    shutil.rmtree(fs.root)
    shutil.copytree(before, fs.root)
    for r in range(3):
        fs.write(vol.data_key(r).replace(".dat", ".compact"), compacted[r])
    again = reopen(fs, topology)
    assert again.generation == 0
    assert not any(key.endswith(".compact") for key in fs.list())
    assert_reads_back(again, data)

    # crash after replica 0's rename: rolled forward
    for r in range(1, 3):
        fs.write(vol.data_key(r).replace(".dat", ".compact"), compacted[r])
    fs.write(vol.data_key(0), compacted[0])
    again = reopen(fs, topology)
    assert again.generation == 1 and again.problems == {}
    assert replica_bytes(fs, again) == compacted
    assert_reads_back(again, data)
    assert all(report.ok for report in again.check())


def test_flipped_byte_is_detected_read_falls_back_and_repair_fixes_it(fs, topology):
    vol, data = filled(fs, topology, n=30)
    needle_id, offset, size = [n for n in vol.needles() if n[2] >= 64][3]
    flip(fs, vol.data_key(1), offset + 24 + 17)

    assert vol.read(needle_id, replica=1) == data[needle_id]  # verified on replica 1, served by another
    with pytest.raises(NeedleUnreadable, match="data checksum mismatch"):
        read_needle_at(fs, vol.data_key(1), offset, size, needle_id)
    reports = vol.check()
    assert [report.ok for report in reports] == [True, False, True]
    (damage,) = reports[1].corrupt
    assert (damage.offset, damage.needle_id) == (offset, needle_id)
    assert damage.end == offset + on_disk(size)
    assert "data checksum mismatch" in damage.reason
    assert reports[1].index_mismatches == ()

    assert vol.repair_replica(1) == vol.size
    assert fs.read(vol.data_key(1)) == fs.read(vol.data_key(0))
    assert all(report.ok for report in vol.check())
    assert checksum(vol.read(needle_id, replica=1)) == checksum(data[needle_id])


def test_damage_on_every_replica_is_named_and_repaired_needle_by_needle(fs, topology):
    vol, data = filled(fs, topology, n=30)
    good = fs.read(vol.data_key(0))
    entries = [n for n in vol.needles() if n[2] >= 64]
    # replica r loses needle entries[r] (r=0: a data byte; r=1: a header byte, the needle id; r=2: the footer)
    for r, where in enumerate([24 + 5, 6, 24 + entries[2][2] + 5]):
        flip(fs, vol.data_key(r), entries[r][1] + where, 0x40)
    for needle_id, _, _ in entries[:3]:
        assert vol.read(needle_id) == data[needle_id]
    reports = vol.check()
    assert [[d.offset for d in report.corrupt] for report in reports] == [[e[1]] for e in entries[:3]]
    assert reports[1].corrupt[0].needle_id is None  # the header no longer reads

    # a needle bad on every replica: the error names volume, needle and each replica's failure
    first = entries[0][1] + 24 + 5
    flip(fs, vol.data_key(1), first, 0x40)
    flip(fs, vol.data_key(2), first, 0x40)
    with pytest.raises(
        NeedleUnreadable, match=rf"volume 42 needle {entries[0][0]} .*replica 0: .*replica 1: .*replica 2"
    ):
        vol.read(entries[0][0])
    with pytest.raises(HotVolumeError, match="cannot repair replica 0: .*no replica holds a valid needle"):
        vol.repair_replica(0)

    # undo that needle's damage on replica 2 only: now every needle verifies somewhere, on a different replica each
    flip(fs, vol.data_key(2), first, 0x40)
    for r in range(3):
        assert vol.repair_replica(r) == len(good)
    assert replica_bytes(fs, vol) == [good] * 3
    assert all(report.ok for report in vol.check())


def test_missing_replica_blocks_writes_until_repaired(fs, topology):
    vol, data = filled(fs, topology, n=12)
    vol.close()
    fs.delete(vol.data_key(2))
    fs.delete(vol.index_key(2))

    again = reopen(fs, topology)
    assert list(again.problems) == [2] and "missing" in again.problems[2]
    assert {k: again.read(k, replica=2) for k in data} == data  # falls back from the missing replica
    with pytest.raises(HotVolumeError, match="until repair_replica fixes replica 2"):
        again.append(1, b"x")
    reports = again.check()
    assert [report.missing for report in reports] == [False, False, True]

    again.repair_replica(2)
    assert again.problems == {}
    assert fs.read(again.data_key(2)) == fs.read(again.data_key(0))
    again.append(1, b"x")
    assert_reads_back(again, data | {1: b"x"})
    assert all(report.ok for report in again.check())


def test_index_file_disagreeing_with_its_data_is_reported(fs, topology):
    vol, _ = filled(fs, topology, n=12)
    vol.checkpoint()
    older = fs.read(vol.index_key(1))
    vol.delete(1000)
    vol.checkpoint()
    fs.write(vol.index_key(1), older)  # an older index is fine: it is only a hint
    assert all(report.ok for report in vol.check())

    hint = decode_index(fs.read(vol.index_key(0)), VOLUME)
    wrong = [e if e.needle_id != 1005 else NeedleEntry(1005, e.offset + 8, e.size, e.flags) for e in hint.entries]
    fs.write(vol.index_key(2), encode_index(VOLUME, 0, hint.covered, False, wrong))
    fs.write(vol.index_key(0), fs.read(vol.index_key(0))[:-30])
    reports = vol.check()
    assert [report.ok for report in reports] == [False, True, False]
    assert reports[0].corrupt == () and reports[2].corrupt == ()
    (truncated,) = reports[0].index_mismatches
    assert truncated.startswith(f"index file {vol.index_key(0)}: index holds")
    (moved,) = reports[2].index_mismatches
    assert "needle 1005 listed as" in moved
    # recovery does not trust an index that does not parse
    again = reopen(fs, topology)
    assert again.read(1001) == media_bytes(1001, 1)


def test_seal_when_full(fs, topology):
    capacity = 32 + 3 * on_disk(104)  # 104 data bytes fill a needle exactly: 24 + 104 + 8 = 136
    vol = HotVolume.create(fs, topology, VOLUME, capacity=capacity)
    for needle_id in (1, 2):
        assert not vol.would_exceed(104)
        vol.append(needle_id, media_bytes(needle_id, 104))
    assert not vol.would_exceed(104) and vol.would_exceed(105)
    with pytest.raises(HotVolumeError, match="past its capacity"):
        vol.append(3, media_bytes(3, 105))
    vol.append(3, media_bytes(3, 104))
    assert vol.would_exceed(0) and vol.free_bytes == 0
    vol.seal()
    with pytest.raises(HotVolumeError, match="sealed"):
        vol.append(4, b"")
    assert vol.delete(2)  # deletes still work: a tombstone
    again = reopen(fs, topology, vol)
    assert again.sealed and 2 not in again
    assert again.read(3) == media_bytes(3, 104)


def test_hot_store_rolls_over_full_volumes(fs, topology):
    volume_bytes = 4096
    store = HotStore(fs, topology, volume_bytes=volume_bytes, new_volume_id=itertools.count(7).__next__)
    items = [(i, media_bytes(i, 100 + (i * 37) % 500)) for i in range(60)]
    locations = store.put_many(items[:50])
    locations += [store.put(*item) for item in items[50:]]
    store.close()

    assert [loc.needle_id for loc in locations] == [i for i, _ in items]
    volume_ids = sorted({loc.volume_id for loc in locations})
    assert volume_ids == list(range(7, 7 + len(volume_ids))) and len(volume_ids) >= 5
    assert store.sealed_volume_ids == volume_ids[:-1]
    by_id = dict(items)
    for volume_id in volume_ids:
        vol = HotVolume.open(fs, topology, volume_id, capacity=volume_bytes)
        assert vol.sealed == (volume_id != volume_ids[-1])
        assert vol.size <= volume_bytes
        mine = [loc for loc in locations if loc.volume_id == volume_id]
        assert [(loc.needle_id, loc.offset, loc.size) for loc in mine] == list(vol.needles())
        if vol.sealed:  # sealed because the next blob did not fit
            nxt = locations[locations.index(mine[-1]) + 1]
            assert vol.size + on_disk(nxt.size) > volume_bytes
        for loc in mine:
            assert vol.read(loc.needle_id) == by_id[loc.needle_id]
            assert read_needle_at(fs, vol.data_key(1), loc.offset, loc.size, loc.needle_id) == by_id[loc.needle_id]

    # a later writer resumes the open volume
    later = HotStore(
        fs,
        topology,
        volume_bytes=volume_bytes,
        new_volume_id=itertools.count(100).__next__,
        open_volume_id=volume_ids[-1],
    )
    (loc,) = later.put_many([(999, b"tiny")])
    assert loc.volume_id == volume_ids[-1]
    with pytest.raises(HotVolumeError, match="do not fit"):
        later.put(1000, bytes(volume_bytes))
