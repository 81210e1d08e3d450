"""Cold packs on a real local store: round trip, placement, damage found and repaired, extraction kept in its folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path

import pytest
import zstandard

from blobstore.cold import (
    ColdPackError,
    ManifestError,
    MediaUnavailableError,
    UnsafeNameError,
    check_pack,
    extract,
    find_manifest,
    load_manifest,
    parse_manifest,
    read_media,
    repair_copy,
    verify_pack,
    write_pack,
)
from blobstore.fs import LocalFS
from blobstore.topology import Topology
from darkroom.settings import BlobSettings

BLOB = BlobSettings()
LEVEL, COPIES = BLOB.cold_zstd_level, BLOB.cold_regions
BIG = 1050


def _items() -> dict[int | str, bytes]:
    rng = random.Random(7)
    items: dict[int | str, bytes] = {1001: b"", 1002: b"x"}
    for media_id in range(1003, 1040):
        items[media_id] = rng.randbytes(rng.randrange(1, 3000))
    items[BIG] = rng.randbytes(256 << 10) * 6  # 1.5 MiB that zstd's window can shrink
    items["2026/11/IMG_0001.jpg"] = b"\xff\xd8\xff\xe0 not quite a jpeg" * 40
    items["note.txt"] = "café ☕\n".encode()
    return items


ITEMS = _items()


@pytest.fixture(scope="module")
def topology() -> Topology:
    return Topology(BLOB)


@pytest.fixture
def fs(tmp_path) -> LocalFS:
    return LocalFS(tmp_path / "blobs")


def _write(fs, topology, pack_id, items=None):
    return write_pack(fs, topology, pack_id, (items or ITEMS).items(), level=LEVEL, copies=COPIES)


def _flip(fs: LocalFS, key: str, offset: int) -> None:
    path = fs.path(key)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _middle(info, media_id) -> int:
    entry = info.manifest.entry(media_id)
    return entry.offset + entry.size // 2


def test_round_trip_of_many_media_incl_empty_and_large(fs, topology):
    info = _write(fs, topology, 7)

    assert info.count == len(ITEMS) == 42
    assert info.raw_bytes == sum(len(v) for v in ITEMS.values())
    assert info.compressed_bytes < info.raw_bytes - (1 << 20)  # the repeated 1.5 MiB shrinks to ~256 KiB
    for media_id, raw in ITEMS.items():
        assert read_media(fs, info, media_id) == raw
    assert all(s.ok for s in verify_pack(fs, info))
    assert load_manifest(fs, info.manifest_keys[1]) == info.manifest == load_manifest(fs, info.keys[0])


def test_copies_live_in_two_regions_under_machine_prefixes(fs, topology):
    info = _write(fs, topology, 7, {1: b"a"})

    assert info.regions == ("eu", "as")
    assert info.keys == ("eu/cell-0/rack-07/m-1/cold/pack-00000007.zst", "as/cell-0/rack-08/m-1/cold/pack-00000007.zst")
    assert info.manifest_keys == (
        "eu/cell-0/rack-07/m-1/cold/pack-00000007.manifest.json",
        "as/cell-0/rack-08/m-1/cold/pack-00000007.manifest.json",
    )
    assert fs.path(info.keys[0]).read_bytes() == fs.path(info.keys[1]).read_bytes()
    assert info.checksums == (hashlib.sha256(fs.path(info.keys[0]).read_bytes()).hexdigest(),) * 2
    assert sorted(fs.list()) == sorted(info.keys + info.manifest_keys)  # no temp files left behind
    with pytest.raises(ValueError, match="4 copies need as many regions"):
        write_pack(fs, topology, 8, [(1, b"a")], level=LEVEL, copies=4)


def test_the_pack_layout_reads_without_this_module(fs, topology):
    hello = b"hello " * 100
    info = _write(fs, topology, 3, {5: hello, 2: b"", "a/b.jpg": b"xyz"})
    pack = fs.path(info.keys[0]).read_bytes()
    sidecar = fs.path(info.manifest_keys[0]).read_bytes()
    doc = json.loads(sidecar)

    assert [e["id"] for e in doc["entries"]] == [2, 5, "a/b.jpg"]  # ints, then strs
    assert pack[-8:] == b"DRCOLD01"
    length = int.from_bytes(pack[-48:-40], "little")
    assert pack[-48 - length : -48] == sidecar
    assert pack[-40:-8] == hashlib.sha256(sidecar).digest()
    assert hashlib.sha256(pack[: doc["data_bytes"]]).hexdigest() == doc["data_sha256"]
    entry = doc["entries"][1]
    frame = pack[entry["offset"] : entry["offset"] + entry["size"]]
    assert zstandard.ZstdDecompressor().decompress(frame) == hello
    assert entry["sha256"] == hashlib.sha256(hello).hexdigest() and entry["raw_size"] == 600


def test_a_flipped_byte_is_found_read_falls_back_and_repair_restores_the_copy(fs, topology):
    info = _write(fs, topology, 11)
    good = fs.path(info.keys[1]).read_bytes()
    _flip(fs, info.keys[0], _middle(info, 1010))

    first, second = verify_pack(fs, info)
    assert not first.ok and first.bad_entries == (1010,) and second.ok
    check = check_pack(fs, info)
    assert (check.corrupt, check.missing, check.lost_entries) == ((0,), (), ())
    assert read_media(fs, info, 1010) == ITEMS[1010]

    assert repair_copy(fs, info, 0).ok
    assert fs.path(info.keys[0]).read_bytes() == good
    assert all(s.ok for s in verify_pack(fs, info))


def test_a_missing_copy_is_found_from_storage_alone_and_rewritten(fs, topology):
    info = _write(fs, topology, 12)
    good = fs.path(info.keys[0]).read_bytes()
    fs.delete(info.keys[1])
    fs.delete(info.manifest_keys[1])

    manifest = find_manifest(fs, topology, 12, copies=COPIES)
    assert manifest == info.manifest
    check = check_pack(fs, manifest)
    assert (check.missing, check.corrupt, check.lost_entries) == ((1,), (), ())
    assert read_media(fs, manifest, BIG) == ITEMS[BIG]

    assert repair_copy(fs, manifest, 1).ok
    assert fs.path(info.keys[1]).read_bytes() == good
    assert fs.path(info.manifest_keys[1]).read_bytes() == fs.path(info.manifest_keys[0]).read_bytes()
    with pytest.raises(ColdPackError, match="pack 00000013: no readable manifest"):
        find_manifest(fs, topology, 13, copies=COPIES)


def test_damaged_or_lost_sidecars_are_recovered_from_the_pack_footer(fs, topology):
    info = _write(fs, topology, 14)
    sidecar = fs.path(info.manifest_keys[0]).read_bytes()
    _flip(fs, info.manifest_keys[0], len(sidecar) // 2)
    fs.delete(info.manifest_keys[1])

    first, second = verify_pack(fs, info)
    assert first.bad_entries == () and any("sidecar manifest differs" in p for p in first.problems)
    assert not second.manifest_present and second.pack_present
    found = find_manifest(fs, topology, 14, copies=COPIES)
    assert found.raw == sidecar

    assert repair_copy(fs, found, 0).ok and repair_copy(fs, found, 1).ok
    assert fs.path(info.manifest_keys[0]).read_bytes() == fs.path(info.manifest_keys[1]).read_bytes() == sidecar


def test_both_copies_bad_is_a_clear_error_never_wrong_bytes(fs, topology, tmp_path):
    info = _write(fs, topology, 15)
    for key in info.keys:
        _flip(fs, key, _middle(info, 1010))

    with pytest.raises(MediaUnavailableError, match=r"pack 00000015: media 1010 has no good copy"):
        read_media(fs, info, 1010)
    assert read_media(fs, info, 1011) == ITEMS[1011]
    check = check_pack(fs, info)
    assert check.corrupt == (0, 1) and check.lost_entries == (1010,)
    with pytest.raises(MediaUnavailableError, match=r"pack 00000015: cannot rebuild.*\[1010\]"):
        repair_copy(fs, info, 0)
    dest = tmp_path / "restore"
    with pytest.raises(MediaUnavailableError, match="media 1010"):
        extract(fs, info, dest, names=[1010])
    assert not dest.exists()


def test_copies_damaged_in_different_media_are_spliced_back_whole(fs, topology):
    info = _write(fs, topology, 16)
    good = fs.path(info.keys[0]).read_bytes()
    _flip(fs, info.keys[0], _middle(info, 1010))
    _flip(fs, info.keys[1], _middle(info, BIG))

    assert check_pack(fs, info).lost_entries == ()
    assert read_media(fs, info, 1010) == ITEMS[1010] and read_media(fs, info, BIG) == ITEMS[BIG]
    assert repair_copy(fs, info, 0).ok and repair_copy(fs, info, 1).ok
    assert fs.path(info.keys[0]).read_bytes() == fs.path(info.keys[1]).read_bytes() == good


def test_extract_writes_media_as_files(fs, topology, tmp_path):
    info = _write(fs, topology, 17)
    dest = tmp_path / "restore"

    paths = extract(fs, info, dest)
    assert len(paths) == len(ITEMS)
    assert (dest / "2026" / "11" / "IMG_0001.jpg").read_bytes() == ITEMS["2026/11/IMG_0001.jpg"]
    assert (dest / "1001").read_bytes() == b""
    assert (dest / str(BIG)).read_bytes() == ITEMS[BIG]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(map(str, ITEMS))

    assert extract(fs, info, tmp_path / "one", names=["note.txt"]) == [tmp_path / "one" / "note.txt"]
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["note.txt"]


@pytest.mark.parametrize("bad", ["../evil", "/tmp/abs-evil", "a/../../evil", "a//evil", "./evil", "a\\..\\evil"])
def test_crafted_manifest_names_are_refused_before_anything_is_written(fs, topology, tmp_path, bad):
    info = _write(fs, topology, 18, {1: b"one", "ok.jpg": b"fine"})
    doc = json.loads(info.manifest.raw)
    doc["entries"][1]["id"] = bad
    crafted = json.dumps(doc).encode()

    with pytest.raises(UnsafeNameError, match=re.escape(repr(bad))):
        parse_manifest(crafted)
    fs.write(info.manifest_keys[0], crafted)
    with pytest.raises(UnsafeNameError, match=re.escape(repr(bad))):
        load_manifest(fs, info.manifest_keys[0])

    entries = info.manifest.entries
    evil = dataclasses.replace(info.manifest, entries=(entries[0], dataclasses.replace(entries[1], media_id=bad)))
    dest = tmp_path / "restore" / "inner"
    with pytest.raises(UnsafeNameError, match=re.escape(repr(bad))):
        extract(fs, evil, dest)
    assert not dest.exists()  # not even the good entry
    assert list(tmp_path.rglob("*evil*")) == [] and not Path("/tmp/abs-evil").exists()


def test_extract_refuses_symlinks_out_of_the_folder(fs, topology, tmp_path):
    info = _write(fs, topology, 19, {1: b"one", "sub/x.jpg": b"evil"})
    outside, dest = tmp_path / "outside", tmp_path / "restore"
    outside.mkdir()
    dest.mkdir()
    (dest / "sub").symlink_to(outside)

    with pytest.raises(UnsafeNameError, match="'sub/x.jpg' resolves outside"):
        extract(fs, info, dest)
    assert list(outside.iterdir()) == [] and not (dest / "1").exists()

    victim = outside / "victim"
    victim.write_bytes(b"keep")
    (dest / "1").symlink_to(victim)
    with pytest.raises(UnsafeNameError, match="'1' resolves outside"):
        extract(fs, info, dest, names=[1])
    assert victim.read_bytes() == b"keep"


def test_manifest_entries_beyond_the_pack_end_are_refused(fs, topology, tmp_path):
    info = _write(fs, topology, 20, {1: b"a" * 100, 2: b"b" * 100})
    doc = json.loads(info.manifest.raw)
    doc["entries"][1]["size"] += 1000

    with pytest.raises(ManifestError, match=r"entry 2: frame \[\d+, \d+\) lies outside the pack's data section"):
        parse_manifest(json.dumps(doc).encode())
    doc["entries"][0]["offset"] = 5
    with pytest.raises(ManifestError, match=r"entry 1: frame starts at 5, expected 0"):
        parse_manifest(json.dumps(doc).encode())

    # Consistent with itself, but longer than the real pack: the size check and every reader refuse it.
    doc["entries"][0]["offset"] = 0
    doc["data_bytes"] += 1000
    crafted = json.dumps(doc).encode()
    with pytest.raises(ManifestError, match="pack file's"):
        parse_manifest(crafted, pack_bytes=info.pack_bytes)
    longer = parse_manifest(crafted)
    with pytest.raises(MediaUnavailableError, match="media 2 has no good copy"):
        read_media(fs, longer, 2)
    dest = tmp_path / "restore"
    with pytest.raises(ManifestError, match=r"entry 2: .* beyond the end of every copy"):
        extract(fs, longer, dest)
    assert not dest.exists()


def test_the_same_items_give_byte_identical_packs(tmp_path, topology):
    first, second = LocalFS(tmp_path / "a"), LocalFS(tmp_path / "b")
    items = list(ITEMS.items())
    info = write_pack(first, topology, 9, items, level=LEVEL, copies=COPIES)
    again = write_pack(second, topology, 9, reversed(items), level=LEVEL, copies=COPIES)

    assert again == info
    files = info.keys + info.manifest_keys
    before = {key: first.path(key).read_bytes() for key in files}
    assert before == {key: second.path(key).read_bytes() for key in files}
    assert write_pack(first, topology, 9, items, level=LEVEL, copies=COPIES) == info  # a re-run of the job
    assert before == {key: first.path(key).read_bytes() for key in files}


@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        ([(1, b"a"), (1, b"b")], ManifestError, "media 1 given twice"),
        ([(42, b""), ("42", b"")], ManifestError, "'42' appears twice"),
        ([("a", b""), ("a/b", b"")], ManifestError, "'a' is also the folder of entry 'a/b'"),
        ([("../x", b"")], UnsafeNameError, r"'\.\./x' has an empty"),
        ([(True, b"")], ManifestError, "neither an int"),
        ([(-1, b"")], ManifestError, "negative"),
    ],
)
def test_write_pack_refuses_items_that_make_a_bad_manifest(fs, topology, items, error, match):
    with pytest.raises(error, match=match):
        write_pack(fs, topology, 21, items, level=LEVEL, copies=COPIES)
    assert list(fs.list()) == []
