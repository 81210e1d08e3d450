"""The blob store as a whole on the test world (``conftest``): the read path from every tier, corruption found on
read and by scrub and repaired byte for byte, erasures up to a whole cell, story expiry with compaction, fsck, and
tier moves the catalog refuses."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from crash_driver import COLD_IDS, MEDIA_IDS, WARM_IDS, end_state, file_hashes, open_store, original

from blobstore.maintenance import compact, expire_stories, fsck, scrub
from blobstore.store import Blob, BlobReadError
from blobstore.tiering import PlanError, archive_to_cold, promote_to_hot, rewrite_to_warm

AS_OF = datetime(2026, 11, 10, tzinfo=UTC)
HOT_ID = 37  # stays hot
WARM_ID = 1  # first in warm volume 6, which is XOR-paired with volume 7
COLD_ID = 31  # archived from hot
FAST = 10_000.0  # scrub MB/s: no throttling in tests


@pytest.fixture
def store(cold_world, copy_world):
    return open_store(copy_world(cold_world))


def flip(store, key: str, offset: int) -> None:
    path = store.fs.path(key)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_the_world_has_every_tier(store):
    tiers = {r["media_id"]: r["tier"] for r in store.catalog.rows("media_locations")}
    assert {m for m, t in tiers.items() if t == "cold"} == set(COLD_IDS)
    assert {m for m, t in tiers.items() if t == "warm"} == set(WARM_IDS) - set(COLD_IDS)
    assert {m for m, t in tiers.items() if t == "hot"} == {37, 38, 39, 40}
    volumes = store.catalog.rows("volumes")
    assert len([v for v in volumes if v["kind"] == "hot"]) == 5
    assert len([v for v in volumes if v["kind"] == "warm"]) == 4
    assert {(g["volume_a"], g["volume_b"]) for g in store.catalog.rows("xor_groups")} == {(6, 7), (8, 9)}
    assert len(store.catalog.rows("packs")) == 2
    assert store.catalog.location(WARM_ID)["volume_id"] == 6 and store.catalog.location(WARM_ID)["offset"] == 0


def test_get_reads_every_tier_with_its_original_bytes(store):
    for media_id in MEDIA_IDS:
        assert store.get(media_id, restore=False) == original(media_id), f"media {media_id}"
    assert store.catalog.location(COLD_ID)["tier"] == "cold"  # restore=False leaves it there


def test_a_bulk_read_reads_every_tier_once_per_volume_and_pack(store, monkeypatch):
    """``read_locations`` returns what ``read_location`` does for each media, reading each warm volume's description
    and each cold pack's manifest once; a wrong checksum still fails naming the media."""
    locations = [store.catalog.location(m) for m in MEDIA_IDS]
    calls = {"warm_volume": [], "pack": []}
    for name in calls:
        real = getattr(store, name)
        monkeypatch.setattr(store, name, lambda key, real=real, name=name: calls[name].append(key) or real(key))

    read = list(store.read_locations(locations))

    assert [(loc["media_id"], data) for loc, data in read] == [(m, original(m)) for m in MEDIA_IDS]
    for name, key in (("warm_volume", "volume_id"), ("pack", "pack_id")):
        used = [loc[key] for loc in locations if loc["tier"] == {"warm_volume": "warm", "pack": "cold"}[name]]
        assert used and sorted(calls[name]) == sorted(set(used)), (name, calls[name])
    wrong = {**locations[0], "checksum": "0" * len(locations[0]["checksum"])}
    with pytest.raises(BlobReadError, match=rf"media {wrong['media_id']} \({wrong['tier']}\): checksum .* does not"):
        list(store.read_locations([wrong]))


def test_a_cold_read_restores_the_media_to_hot(store):
    pack_id = store.catalog.location(COLD_ID)["pack_id"]
    pack_files = {k: v for k, v in file_hashes(store).items() if "/cold/" in k}

    assert store.get(COLD_ID, as_of=AS_OF) == original(COLD_ID)

    loc = store.catalog.location(COLD_ID)
    assert (loc["tier"], loc["pack_id"], loc["placed_at"]) == ("hot", None, AS_OF)
    assert loc["volume_id"] in store.hot_volume_ids()
    assert store.read_location(loc) == original(COLD_ID)
    assert store.get(COLD_ID) == original(COLD_ID)
    assert store.catalog.current_placement()[COLD_ID][0] == "hot"
    assert {k: v for k, v in file_hashes(store).items() if "/cold/" in k} == pack_files  # packs are immutable
    assert COLD_ID in {e.media_id for e in store.pack(pack_id).entries}
    assert fsck(store) == []


def test_promote_to_hot_copies_warm_media_back_to_hot(store):
    out = promote_to_hot(store, [2, 3], as_of=AS_OF)

    assert (out["media"], out["written"]) == (2, 2)
    for media_id in (2, 3):
        loc = store.catalog.location(media_id)
        assert (loc["tier"], loc["placed_at"]) == ("hot", AS_OF)
        assert store.get(media_id) == original(media_id)
    assert promote_to_hot(store, [2, 3], as_of=AS_OF)["written"] == 0  # a re-run finds nothing left to move
    assert fsck(store) == []


def test_a_warm_read_survives_four_lost_blocks_and_names_the_volume_at_five(store):
    volume = store.warm_volume(6)
    for key in volume.block_keys[:4]:  # data blocks 0-3: the read decodes its segments
        store.fs.delete(key)
    assert store.get(WARM_ID) == original(WARM_ID)
    assert store.catalog.get("volumes", 6)["state"] == "released"

    store.fs.delete(volume.block_keys[4])
    with pytest.raises(BlobReadError, match=r"media 1 \(warm\): warm volume 6: blocks \[0, 1, 2, 3, 4\] lost"):
        store.get(WARM_ID)
    row = store.catalog.get("volumes", 6)
    assert row["state"] == "lost"
    assert row["lost_blocks"] == [0, 1, 2, 3, 4]


def _hot_replica(store):
    vol = store.hot_volume(store.catalog.location(HOT_ID)["volume_id"])
    return vol.data_key(0), vol.entry(HOT_ID).offset + 24 + 100  # a data byte of the needle, in replica 0


def _warm_block(store):
    volume = store.warm_volume(6)
    return volume.block_keys[0], volume.header_bytes + 10  # segment 0's payload in data block 0: media 1's bytes


def _xor_block(store):
    return store.xor_pair(6).block_keys[3], 200


def _cold_copy(store):
    manifest = store.pack(store.catalog.location(COLD_ID)["pack_id"])
    return manifest.pack_keys[0], manifest.entry(COLD_ID).offset + 20  # inside media 31's zstd frame, copy 0


FLIPS = {  # where, the media read, what scrub finds, what it repairs
    "hot_needle": (_hot_replica, HOT_ID, "volume 5 replica 0 (", "hot volume 5 replica 0: rewrote"),
    "warm_block": (
        _warm_block,
        WARM_ID,
        "warm volume 6: blocks missing (), corrupt (0,)",
        "warm volume 6: rebuilt blocks [0]",
    ),
    "xor_block": (_xor_block, WARM_ID, "XOR group 6: blocks [3] missing or corrupt", "XOR group 6: rewrote blocks"),
    "cold_pack_copy": (
        _cold_copy,
        COLD_ID,
        "cold pack 1 copy 0 (",
        "cold pack 1 copy 0: rewritten from the other copy",
    ),
}


@pytest.mark.parametrize("where", FLIPS)
def test_a_flipped_byte_is_survived_on_read_found_by_scrub_and_repaired(store, where, caplog):
    place, media_id, found, repaired = FLIPS[where]
    before = file_hashes(store)
    key, offset = place(store)
    flip(store, key, offset)
    assert file_hashes(store)[key] != before[key]

    with caplog.at_level(logging.WARNING, logger="blobstore.haystack"):
        assert store.get(media_id, restore=False) == original(media_id)
    if where == "hot_needle":  # the read fell back to another replica, and said so
        assert "needle 37: read replica 1" in caplog.text and "data checksum mismatch" in caplog.text

    report = scrub(store, as_of=AS_OF, mb_per_s=FAST)
    assert len(report.found) == 1 and report.found[0].startswith(found), report.found
    assert len(report.repaired) == 1 and report.repaired[0].startswith(repaired), report.repaired
    assert report.unrepairable == []
    assert file_hashes(store) == before

    again = scrub(store, as_of=AS_OF, mb_per_s=FAST)
    assert (again.found, again.repaired, again.unrepairable) == ([], [], [])
    assert fsck(store) == []


def test_a_whole_cell_lost_is_recovered_from_the_xor_partner(store):
    before = file_hashes(store)
    volume = store.warm_volume(6)
    for key in volume.block_keys:
        store.fs.delete(key)
    with pytest.raises(BlobReadError, match="warm volume 6"):
        store.get(WARM_ID)
    assert store.catalog.get("volumes", 6)["state"] == "lost"

    report = scrub(store, as_of=AS_OF, mb_per_s=FAST)

    assert report.found == [f"warm volume 6: blocks missing {tuple(range(14))}, corrupt ()"]
    assert report.repaired[0].startswith("warm volume 6: recovered blocks [0, 1, 2")
    assert "XOR group 6 (partner volume 7, region as)" in report.repaired[0]
    assert report.unrepairable == []
    assert file_hashes(store) == before
    row = store.catalog.get("volumes", 6)
    assert (row["state"], row["lost_blocks"]) == ("released", None)
    for media_id in MEDIA_IDS:
        assert store.get(media_id, restore=False) == original(media_id)
    assert fsck(store) == []


def test_stories_expire_at_ttl_plus_grace_and_compaction_reclaims_their_space(store):
    cutoff = AS_OF - timedelta(hours=25)
    stories = {1000 + i: cutoff - timedelta(hours=i) for i in range(1, 9)}  # older than the cutoff
    stories[1100] = cutoff  # exactly at the cutoff: expires
    stories[1101] = cutoff + timedelta(seconds=1)  # one second younger: untouched
    story_bytes = {sid: original(sid) for sid in stories}
    store.put_hot([Blob(sid, "story", story_bytes[sid]) for sid in stories], as_of=cutoff - timedelta(hours=9))
    story_volumes = {store.catalog.location(sid)["volume_id"] for sid in stories}
    sealed = {v for v in story_volumes if store.catalog.get("volumes", v)["state"] == "sealed"}
    assert sealed, "the stories fill at least one volume, which is sealed"
    sizes = {v: store.hot_volume(v).size for v in sealed}

    out = expire_stories(store, stories.items(), as_of=AS_OF)

    assert out["expired"] == 9 and out["tombstoned"] == 9
    assert store.catalog.location(1100)["tier"] == "deleted"
    with pytest.raises(BlobReadError, match="media 1100: tier 'deleted', nothing to read"):
        store.get(1100)
    assert store.catalog.location(1101)["tier"] == "hot"
    assert expire_stories(store, stories.items(), as_of=AS_OF)["tombstoned"] == 0  # a re-run changes nothing

    done = compact(store, as_of=AS_OF)

    assert set(done["volumes"]) >= sealed and done["bytes_reclaimed"] > 0
    assert all(store.hot_volume(v).size < sizes[v] for v in sealed)
    assert store.get(1101) == story_bytes[1101]
    for media_id in MEDIA_IDS:
        assert store.get(media_id, restore=False) == original(media_id)
    assert fsck(store) == []


def test_the_open_hot_volume_is_sealed_and_compacted_once_its_dead_bytes_reach_the_threshold(store):
    open_id = store.open_hot_volume_id()
    vol = store.hot_volume(open_id)
    live = [n for n, _offset, _size in vol.needles()]
    size = vol.size
    assert live and vol.garbage_bytes / size >= 0.25  # the hot media archived to cold left their needles dead

    done = compact(store, as_of=AS_OF)

    assert done["sealed_open_volume"] == open_id and open_id in done["volumes"]
    assert store.catalog.get("volumes", open_id)["state"] == "sealed" and store.hot_volume(open_id).sealed
    assert store.hot_volume(open_id).size < size and store.hot_volume(open_id).garbage_bytes == 0
    assert store.open_hot_volume_id() is None
    for media_id in MEDIA_IDS:
        assert store.get(media_id, restore=False) == original(media_id)
    # the next put opens a new volume; with nothing dead in it, compaction leaves it open
    store.put_hot([Blob(5000, "media", original(5000))], as_of=AS_OF)
    new_id = store.catalog.location(5000)["volume_id"]
    assert new_id != open_id and store.open_hot_volume_id() == new_id
    assert compact(store, as_of=AS_OF)["sealed_open_volume"] is None
    assert fsck(store) == []


def test_an_open_volume_holding_a_needle_no_row_points_at_stays_open_until_a_put_adopts_it(tmp_path):
    store = open_store(tmp_path / "state")
    old = AS_OF - timedelta(days=2)
    stories = [1000 + i for i in range(4)]
    store.put_hot([Blob(sid, "story", original(sid)) for sid in stories], as_of=old)
    expire_stories(store, [(sid, old) for sid in stories], as_of=AS_OF)
    open_id = store.open_hot_volume_id()
    vol = store.hot_volume(open_id)
    vol.append(7, original(7))  # what a put killed before recording its rows leaves behind
    vol.checkpoint()
    assert vol.garbage_bytes / vol.size >= 0.25

    assert compact(store, as_of=AS_OF)["sealed_open_volume"] is None
    assert store.catalog.get("volumes", open_id)["state"] == "open"
    assert store.put_hot([Blob(7, "media", original(7))], as_of=AS_OF) == 0  # adopted, not appended again
    assert store.catalog.location(7)["volume_id"] == open_id

    done = compact(store, as_of=AS_OF)

    assert done["sealed_open_volume"] == open_id and done["volumes"] == [open_id]
    assert store.get(7, restore=False) == original(7)
    assert fsck(store) == []


def test_fsck_names_an_orphan_file_a_missing_block_and_a_row_pointing_nowhere(store):
    assert fsck(store) == []
    orphan = "eu/cell-0/rack-05/m-1/warm/vol-00000077.blk05"
    store.fs.write(orphan, b"nobody's bytes")
    missing = store.warm_volume(7).block_keys[9]
    store.fs.delete(missing)
    row = {**store.catalog.location(HOT_ID), "media_id": 999, "volume_id": 123}
    store.catalog.upsert("media_locations", [row])

    found = sorted((d.kind, d.where, d.detail) for d in fsck(store))

    assert found == [
        ("bad_location", "media 999 (hot)", "hot volume 123 is not in the catalog"),
        ("missing_bytes", "warm volume 7", f"{missing} is missing"),
        ("orphan_file", orphan, "no catalog row refers to this file"),
    ]


MOVES = {
    "unknown_to_warm": (
        lambda s: rewrite_to_warm(s, [37, 4242], as_of=AS_OF, run="x"),
        r"not in the blob catalog.*4242",
    ),
    "cold_to_warm": (
        lambda s: rewrite_to_warm(s, [38, 31, 32], as_of=AS_OF, run="x"),
        r"\(31, 'cold'\), \(32, 'cold'\)",
    ),
    "unknown_to_cold": (
        lambda s: archive_to_cold(s, [38, 5555], as_of=AS_OF, run="x"),
        r"not in the blob catalog.*5555",
    ),
}


@pytest.mark.parametrize("move", MOVES)
def test_a_move_the_catalog_does_not_allow_raises_plan_error_and_moves_nothing(store, move):
    run, message = MOVES[move]
    before = end_state(store)
    with pytest.raises(PlanError, match=message):
        run(store)
    assert end_state(store) == before
    assert store.fs.temp_files() == []
    assert fsck(store) == []


def test_tier_report_counts_what_is_on_disk(store):
    from blobstore.maintenance import tier_report

    report = tier_report(store)["tiers"]
    files = {p.relative_to(store.fs.root).as_posix(): p.stat().st_size for p in store.fs.root.rglob("*") if p.is_file()}
    assert report["hot"]["raw_bytes"] == sum(n for k, n in files.items() if "/hot/" in k and k.endswith(".dat"))
    assert report["warm"]["raw_bytes"] == sum(n for k, n in files.items() if "/warm/" in k or "/xor/" in k)
    assert report["cold"]["raw_bytes"] == sum(n for k, n in files.items() if k.endswith(".zst"))
    assert (report["hot"]["objects"], report["warm"]["objects"], report["cold"]["objects"]) == (
        4,
        len(set(WARM_IDS) - set(COLD_IDS)),
        len(COLD_IDS),
    )
    assert report["cold"]["bytes"] == sum(len(original(m)) for m in COLD_IDS)
