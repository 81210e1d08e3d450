"""Ingestion through contracts into bronze Delta, with real Spark and Delta: each class of defect lands where it
should with its reason, refused files write nothing, re-ingest is a no-op, and a failed run heals on re-run."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from darkroom import lake
from darkroom.settings import load_settings
from darkroom.tables import table
from data_contracts.checks import FileContractError
from jobs.ingest.main import ingest

pytestmark = pytest.mark.integration

T0 = datetime(2026, 10, 1, 12, 0, 0)


@pytest.fixture(scope="module")
def st(settings, tmp_path_factory):
    """Settings with a lake of this module's own (the Spark session is shared)."""
    return load_settings(
        state_dir=tmp_path_factory.mktemp("ingest-state"),
        jars_path=settings.jars_path,
        spark=settings.spark.model_dump(),
        ingest={"max_bad_fraction": 0.75},
    )


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("landing")


def users_frame(ids, **overrides) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "user_id": pd.array(ids, dtype="int64"),
            "username": [f"user_{i}" for i in ids],
            "created_at": [T0] * len(ids),
            "region": ["eu"] * len(ids),
            "is_private": [False] * len(ids),
        }
    )
    for k, v in overrides.items():
        df[k] = v
    return df


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False, coerce_timestamps="us")
    return path


def bronze(spark, st, name):
    return lake.read(spark, table(f"bronze.{name}"), st)


def quarantine(spark, st, name):
    return lake.read(spark, table(f"quarantine.{name}"), st)


def version(spark, st, qualified):
    return lake.current_version(spark, table(qualified), st)


@pytest.fixture(scope="module")
def users_ingested(spark, st, landing):
    r = ingest(st, "users", write_parquet(users_frame([1, 2, 3, 4, 5]), landing / "users.parquet"))
    assert (r.rows, r.good_rows, r.quarantined_rows) == (5, 5, 0)
    return r


def test_clean_file_lands_in_bronze(spark, st, users_ingested):
    got = sorted(r.user_id for r in bronze(spark, st, "users").collect())
    assert got == [1, 2, 3, 4, 5]
    ledger = lake.read(spark, table("meta.ingest_ledger"), st).where(F.col("dataset") == "users").collect()
    assert [(r.rows, r.good_rows, r.quarantined_rows) for r in ledger] == [(5, 5, 0)]


def test_reingest_same_file_is_a_noop(spark, st, landing, users_ingested):
    before = (version(spark, st, "bronze.users"), version(spark, st, "meta.ingest_ledger"))
    again = ingest(st, "users", landing / "users.parquet")
    assert again.status == "skipped"
    assert (version(spark, st, "bronze.users"), version(spark, st, "meta.ingest_ledger")) == before


def test_row_defects_go_to_quarantine_with_their_reason(spark, st, landing, users_ingested):
    posts = pd.DataFrame(
        {
            "post_id": pd.array([10, 11, 12, 12, 13, 14, None], dtype="Int64"),
            "author_id": pd.array([1, 2, 3, 3, 999, 4, 5], dtype="int64"),
            "created_at": [T0] * 7,
            "caption": ["ok", None, "dup a", "dup b", "dangling", "too many", "null key"],
            "media_count": pd.array([1, 2, 1, 1, 1, 11, 1], dtype="int32"),
        }
    )
    r = ingest(st, "posts", write_parquet(posts, landing / "posts_defects.parquet"))
    assert (r.rows, r.good_rows, r.quarantined_rows) == (7, 2, 5)
    assert r.quarantined_by_rule == {
        "duplicate_key": 2,
        "reference:users": 1,
        "range:media_count": 1,
        "not_null:post_id": 1,
    }
    assert sorted(x.post_id for x in bronze(spark, st, "posts").collect()) == [10, 11]
    q = {row.row_key: (list(row.rules), list(row.reasons)) for row in quarantine(spark, st, "posts").collect()}
    assert q["post_id=13"] == (["reference:users"], ["author_id=999 not found in users(user_id)"])
    assert q["post_id=14"] == (["range:media_count"], ["media_count=11 is outside [1, 10]"])
    assert q["post_id=null"] == (["not_null:post_id"], ["post_id is null; a value is required"])
    dup_reasons = [reasons for key, (rules, reasons) in q.items() if key == "post_id=12"]
    assert dup_reasons == [["key (post_id=12) appears 2 times in this file"]]


def test_csv_wrong_type_and_unknown_enum_are_row_defects(spark, st, landing, users_ingested):
    path = landing / "users_more.csv"
    path.write_text(
        "user_id,username,created_at,region,is_private\n"
        "6,user_6,2026-10-01 12:00:00,na,false\n"
        "abc,user_x,2026-10-01 12:00:00,eu,false\n"
        "7,user_7,2026-10-01 12:00:00,mars,true\n"
        "8,user_8,2026-10-01 12:00:00,oc,true\n"
    )
    r = ingest(st, "users", path)
    assert (r.rows, r.good_rows, r.quarantined_rows) == (4, 2, 2)
    rows = {
        row.row_key: row
        for row in quarantine(spark, st, "users").where(F.col("source_file") == str(path.resolve())).collect()
    }
    assert list(rows["user_id=null"].reasons) == ["user_id='abc' is not a valid bigint"]
    assert json.loads(rows["user_id=null"].row_json)["user_id"] == "abc"  # the raw text is kept
    assert list(rows["user_id=7"].rules) == ["accepted_values:region"]
    assert sorted(x.user_id for x in bronze(spark, st, "users").collect()) == [1, 2, 3, 4, 5, 6, 8]


def test_row_check_self_follow(spark, st, landing, users_ingested):
    follows = pd.DataFrame(
        {
            "follower_id": pd.array([1, 2, 3], dtype="int64"),
            "followee_id": pd.array([2, 2, 1], dtype="int64"),
            "created_at": [T0] * 3,
        }
    )
    r = ingest(st, "follows", write_parquet(follows, landing / "follows.parquet"))
    assert r.quarantined_by_rule == {"row_check:no_self_follow": 1}
    [bad] = quarantine(spark, st, "follows").collect()
    assert bad.row_key == "follower_id=2, followee_id=2"
    assert list(bad.reasons) == ["violates no_self_follow: an account cannot follow itself"]


def _state_versions(spark, st):
    return {
        q: lake.current_version(spark, table(q), st)
        for q in ("bronze.users", "meta.ingest_ledger")
        if lake.exists(spark, table(q), st)
    }


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_column", "wrong column set for dataset users: missing columns ['is_private']"),
        ("extra_column", "unexpected columns ['email']"),
        ("wrong_type", "wrongly typed columns for dataset users: user_id is string, expected bigint"),
        ("truncated", "unreadable as parquet"),
        ("too_many_bad", "break the users contract, more than ingest.max_bad_fraction=75.0%"),
    ],
)
def test_file_level_failures_write_nothing(spark, st, landing, users_ingested, case, expected):
    path = landing / f"users_{case}.parquet"
    if case == "missing_column":
        write_parquet(users_frame([20]).drop(columns=["is_private"]), path)
    elif case == "extra_column":
        write_parquet(users_frame([21], email=["a@b.c"]), path)
    elif case == "wrong_type":
        write_parquet(users_frame([22]).astype({"user_id": str}), path)
    elif case == "truncated":
        write_parquet(users_frame(list(range(30, 80))), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "too_many_bad":
        write_parquet(users_frame([40, 41, 42], region=["zz", "xx", "yy"]), path)
    before = _state_versions(spark, st)
    n_quarantine = quarantine(spark, st, "users").count()
    with pytest.raises(FileContractError) as err:
        ingest(st, "users", path)
    assert str(path.resolve()) in str(err.value)
    assert expected in str(err.value)
    assert _state_versions(spark, st) == before
    assert quarantine(spark, st, "users").count() == n_quarantine


def test_missing_referenced_table_is_refused(spark, st, landing, users_ingested):
    stories = pd.DataFrame(
        {"story_id": pd.array([1], dtype="int64"), "viewer_id": pd.array([1], dtype="int64"), "ts": [T0]}
    )
    with pytest.raises(FileContractError, match="bronze.stories does not exist yet: ingest stories first"):
        ingest(st, "story_views", write_parquet(stories, landing / "story_views.parquet"))


def test_failed_run_heals_on_rerun(spark, st, landing, users_ingested, monkeypatch):
    """Killed after the quarantine write and before the bronze merge: the re-run ends as one clean run would."""
    media = pd.DataFrame(
        {
            "media_id": pd.array([100, 101, 102], dtype="int64"),
            "post_id": pd.array([10, 11, 77], dtype="int64"),  # 77 dangles
            "bytes": pd.array([2_000_000, 1_500_000, 10], dtype="int64"),
            "width": pd.array([1080, 640, 1080], dtype="int32"),
            "height": pd.array([1080, 640, 1350], dtype="int32"),
            "created_at": [T0] * 3,
            "content_seed": pd.array([1, 2, 3], dtype="int64"),
        }
    )
    path = write_parquet(media, landing / "media.parquet")
    real_merge = lake.merge_on_key

    def dying_merge(spark_, t, settings_, source):
        if t.qualified_name == "bronze.media":
            raise RuntimeError("killed")
        return real_merge(spark_, t, settings_, source)

    monkeypatch.setattr(lake, "merge_on_key", dying_merge)
    with pytest.raises(RuntimeError, match="killed"):
        ingest(st, "media", path)
    monkeypatch.setattr(lake, "merge_on_key", real_merge)
    assert quarantine(spark, st, "media").count() == 1  # written before the kill, not yet in the ledger

    r = ingest(st, "media", path)
    assert r.status == "ingested" and (r.good_rows, r.quarantined_rows) == (2, 1)
    assert quarantine(spark, st, "media").count() == 1  # replaced, not doubled
    assert sorted(x.media_id for x in bronze(spark, st, "media").collect()) == [100, 101]
    assert ingest(st, "media", path).status == "skipped"
