"""The storage and fan-out marts (fct_media_access_daily, dim_media_tiering, fct_author_fanout_stats,
fct_user_read_activity) on the tiny world, spot-checked against numbers recomputed here from bronze with pandas.

A window of N days is the calendar days as_of_date - (N - 1) .. as_of_date, where as_of_date is the day holding the
last instant before as_of; every event counts only if it happened before as_of. The checks pick their media, authors
and users deterministically (the most read, the most followed, ...; ties to the smallest id).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

DAY = pd.Timedelta(days=1)
MEDIA_WINDOWS = (1, 7, 30, 90)


def as_of_date(as_of: datetime) -> date:
    return (as_of - timedelta(microseconds=1)).date()


def window_start(as_of: datetime, days: int) -> date:
    return as_of_date(as_of) - timedelta(days=days - 1)


def top_id(counts: pd.Series) -> int:
    """The id with the largest count; ties go to the smallest id."""
    return int(counts[counts == counts.max()].index.min())


@pytest.fixture(scope="module")
def as_of(dbt_world) -> datetime:
    """The build's as_of as a naive UTC instant (Spark's session time zone is UTC)."""
    return dbt_world.as_of.replace(tzinfo=None)


@pytest.fixture(scope="module")
def active_days(dbt_world) -> int:
    return dbt_world.settings.dbt.active_window_days


@pytest.fixture(scope="module")
def bronze(dbt_world, spark, as_of) -> dict[str, pd.DataFrame]:
    """The bronze tables as pandas frames; event tables keep only what happened before as_of."""
    frames = {n: dbt_world.bronze(spark, n).toPandas() for n in ("users", "media", "posts", "follows")}
    for name in ("media_access", "feed_reads"):
        df = dbt_world.bronze(spark, name).toPandas()
        df = df[df["ts"] < as_of].copy()
        df["day"] = df["ts"].dt.date
        frames[name] = df
    return frames


@pytest.fixture(scope="module")
def marts(dbt_world, spark) -> dict[str, pd.DataFrame]:
    names = ("fct_media_access_daily", "dim_media_tiering", "fct_author_fanout_stats", "fct_user_read_activity")
    return {n: dbt_world.read(spark, f"marts.{n}").toPandas() for n in names}


@pytest.fixture(scope="module")
def reads_in_window(bronze, as_of, active_days) -> pd.Series:
    """Feed reads per user in the active window (users without reads are absent)."""
    reads = bronze["feed_reads"]
    return reads[reads["day"] >= window_start(as_of, active_days)].groupby("user_id").size()


@pytest.fixture(scope="module")
def follows(bronze, as_of) -> pd.DataFrame:
    f = bronze["follows"]
    return f[f["created_at"] < as_of]


@pytest.fixture(scope="module")
def posting_authors(bronze, as_of, active_days) -> set[int]:
    p = bronze["posts"]
    in_window = (p["created_at"] < as_of) & (p["created_at"].dt.date >= window_start(as_of, active_days))
    return set(p.loc[in_window, "author_id"])


def users_before(bronze, as_of) -> set[int]:
    u = bronze["users"]
    return set(u.loc[u["created_at"] < as_of, "user_id"])


def row(df: pd.DataFrame, column: str, value: int) -> pd.Series:
    [out] = [r for _, r in df[df[column] == value].iterrows()]
    return out


# fct_media_access_daily


def test_media_access_daily_totals_equal_bronze(bronze, marts):
    access, daily = bronze["media_access"], marts["fct_media_access_daily"]
    origin = access[~access["cdn_hit"]]
    assert not daily.duplicated(["media_id", "access_date"]).any()
    assert len(daily) == len(access.groupby(["media_id", "day"]))
    assert daily["reads"].sum() == len(access)
    assert daily["origin_reads"].sum() == len(origin) > 0
    assert daily["cdn_hits"].sum() == access["cdn_hit"].sum() > 0
    assert daily["bytes_served"].sum() == access["bytes"].sum()
    assert daily["origin_bytes"].sum() == origin["bytes"].sum()
    assert (daily["reads"] == daily["origin_reads"] + daily["cdn_hits"]).all()


@pytest.mark.parametrize("pick", ["most_read", "most_origin_reads"])
def test_media_access_daily_per_day_matches_bronze(bronze, marts, pick):
    access = bronze["media_access"]
    counted = access if pick == "most_read" else access[~access["cdn_hit"]]
    media_id = top_id(counted.groupby("media_id").size())
    mine = access[access["media_id"] == media_id]
    expected = sorted(
        (
            day,
            len(g),
            int((~g["cdn_hit"]).sum()),
            int(g["cdn_hit"].sum()),
            int(g["bytes"].sum()),
            int(g.loc[~g["cdn_hit"], "bytes"].sum()),
            g["ts"].max(),
        )
        for day, g in mine.groupby("day")
    )
    daily = marts["fct_media_access_daily"]
    got = sorted(
        (r.access_date, r.reads, r.origin_reads, r.cdn_hits, r.bytes_served, r.origin_bytes, r.last_accessed_at)
        for r in daily[daily["media_id"] == media_id].itertuples()
    )
    assert got == expected
    if pick == "most_origin_reads":
        assert sum(e[2] for e in expected) > 0


# dim_media_tiering


def test_dim_media_tiering_has_one_row_per_media_created_before_as_of(bronze, marts, as_of):
    media, dim = bronze["media"], marts["dim_media_tiering"]
    assert dim["media_id"].is_unique
    assert set(dim["media_id"]) == set(media.loc[media["created_at"] < as_of, "media_id"])
    # Nothing has been moved yet (meta.media_placement is empty): every media is hot since its creation.
    assert (dim["current_tier"] == "hot").all()
    assert (dim["tier_since"] == dim["created_at"]).all()
    assert (dim["as_of"] == as_of).all()


@pytest.mark.parametrize("pick", ["most_read_7d", "most_origin_reads", "oldest_last_read"])
def test_dim_media_tiering_windows_match_bronze(bronze, marts, as_of, pick):
    access = bronze["media_access"]
    if pick == "most_read_7d":
        media_id = top_id(access[access["day"] >= window_start(as_of, 7)].groupby("media_id").size())
    elif pick == "most_origin_reads":
        media_id = top_id(access[~access["cdn_hit"]].groupby("media_id").size())
    else:
        last = access.groupby("media_id")["ts"].max()
        media_id = int(last[last == last.min()].index.min())
    mine = access[access["media_id"] == media_id]
    media = row(bronze["media"], "media_id", media_id)
    got = row(marts["dim_media_tiering"], "media_id", media_id)

    assert got["post_id"] == media["post_id"]
    assert got["author_id"] == row(bronze["posts"], "post_id", media["post_id"])["author_id"]
    assert got["size_bytes"] == media["bytes"]
    assert got["age_days"] == pytest.approx((as_of - media["created_at"]) / DAY, rel=1e-12)
    assert got["last_accessed_at"] == mine["ts"].max()
    assert got["days_since_last_access"] == pytest.approx((as_of - mine["ts"].max()) / DAY, rel=1e-12)
    for n in MEDIA_WINDOWS:
        in_window = mine[mine["day"] >= window_start(as_of, n)]
        reads, origin_reads = len(in_window), int((~in_window["cdn_hit"]).sum())
        assert (got[f"reads_{n}d"], got[f"origin_reads_{n}d"]) == (reads, origin_reads), n
        assert got[f"read_rate_{n}d"] == pytest.approx(reads / n), n
        assert got[f"origin_read_rate_{n}d"] == pytest.approx(origin_reads / n), n
    if pick == "oldest_last_read":
        assert got["reads_1d"] == 0 and got["days_since_last_access"] > 1


def test_dim_media_tiering_never_read_media_has_zeros_and_nulls(bronze, marts, as_of):
    media, dim = bronze["media"], marts["dim_media_tiering"]
    never_read = set(media.loc[media["created_at"] < as_of, "media_id"]) - set(bronze["media_access"]["media_id"])
    assert never_read, "the tiny world should have media nobody read"
    rows = dim[dim["media_id"].isin(never_read)]
    assert len(rows) == len(never_read)
    assert rows["last_accessed_at"].isna().all() and rows["days_since_last_access"].isna().all()
    for n in MEDIA_WINDOWS:
        for column in (f"reads_{n}d", f"origin_reads_{n}d", f"read_rate_{n}d", f"origin_read_rate_{n}d"):
            assert (rows[column] == 0).all(), column
    # ... and every media that was read has a last read.
    assert dim.loc[~dim["media_id"].isin(never_read), "last_accessed_at"].notna().all()


# fct_author_fanout_stats


def test_author_fanout_stats_has_one_row_per_user_and_every_follow(bronze, marts, as_of, follows):
    fanout = marts["fct_author_fanout_stats"]
    assert fanout["author_id"].is_unique
    assert set(fanout["author_id"]) == users_before(bronze, as_of)
    assert fanout["followers"].sum() == len(follows)
    assert (fanout["as_of"] == as_of).all()


@pytest.mark.parametrize("pick", ["most_followed", "most_posts_in_window"])
def test_author_fanout_stats_match_bronze(
    bronze, marts, as_of, active_days, follows, reads_in_window, posting_authors, pick
):
    posts = bronze["posts"]
    posts_in_window = posts[
        (posts["created_at"] < as_of) & (posts["created_at"].dt.date >= window_start(as_of, active_days))
    ]
    if pick == "most_followed":
        author_id = top_id(follows.groupby("followee_id").size())
    else:
        author_id = top_id(posts_in_window.groupby("author_id").size())
    followers = follows.loc[follows["followee_id"] == author_id, "follower_id"]
    active = followers[followers.isin(reads_in_window.index)]
    load = sum(reads_in_window.get(f, 0) / active_days for f in followers)
    n_posts = int((posts_in_window["author_id"] == author_id).sum())

    got = row(marts["fct_author_fanout_stats"], "author_id", author_id)
    assert (got["followers"], got["active_followers"]) == (len(followers), len(active))
    assert got["active_follower_fraction"] == pytest.approx(len(active) / len(followers))
    assert got["follower_feed_reads_per_day"] == pytest.approx(load)
    assert got["posts_7d"] == n_posts
    assert got["posts_per_day"] == pytest.approx(n_posts / active_days)
    if pick == "most_followed":
        assert 0 < len(active) < len(followers)  # inactive followers count as followers only
    else:
        assert n_posts > 0 and author_id in posting_authors


def test_author_fanout_total_follower_load_equals_reads_of_every_follower(marts, active_days, follows, reads_in_window):
    per_follow = follows["follower_id"].map(reads_in_window).fillna(0).sum() / active_days
    assert marts["fct_author_fanout_stats"]["follower_feed_reads_per_day"].sum() == pytest.approx(per_follow)


# fct_user_read_activity


def test_user_read_activity_has_one_row_per_user(bronze, marts, as_of, reads_in_window):
    activity = marts["fct_user_read_activity"]
    assert activity["user_id"].is_unique
    assert set(activity["user_id"]) == users_before(bronze, as_of)
    assert set(activity.loc[activity["is_active"], "user_id"]) == set(reads_in_window.index)
    assert activity["feed_reads_7d"].sum() == reads_in_window.sum()


@pytest.mark.parametrize("pick", ["most_reads", "most_followees", "inactive"])
def test_user_read_activity_matches_bronze(
    bronze, marts, as_of, active_days, follows, reads_in_window, posting_authors, pick
):
    reads = bronze["feed_reads"]
    if pick == "most_reads":
        user_id = top_id(reads_in_window)
    elif pick == "most_followees":
        user_id = top_id(follows.groupby("follower_id").size())
    else:
        user_id = min(users_before(bronze, as_of) - set(reads_in_window.index))
    mine = reads[reads["user_id"] == user_id]
    n_1d = int((mine["day"] == as_of_date(as_of)).sum())
    n_window = int(reads_in_window.get(user_id, 0))
    followees = follows.loc[follows["follower_id"] == user_id, "followee_id"]

    got = row(marts["fct_user_read_activity"], "user_id", user_id)
    assert (got["feed_reads_1d"], got["feed_reads_7d"]) == (n_1d, n_window)
    assert got["feed_reads_per_day"] == pytest.approx(n_window / active_days)
    assert got["is_active"] == (n_window > 0)
    if mine.empty:
        assert pd.isna(got["last_read_at"])
    else:
        assert got["last_read_at"] == mine["ts"].max()
    assert got["followees"] == len(followees)
    assert got["active_followees"] == followees.isin(reads_in_window.index).sum()
    assert got["posting_followees"] == followees.isin(posting_authors).sum()
    if pick == "most_followees":
        assert 0 < got["active_followees"] < got["followees"]  # inactive followees count as followees only
        assert got["posting_followees"] > 0
