"""The ML feature marts (fct_engagement_labels, dim_user_features, dim_post_features, fct_viewer_author_affinity,
fct_story_ring_signals) on the tiny world, spot-checked against numbers recomputed here from bronze with pandas.

Feature rows are point-in-time snapshots: a row for day d counts the events before its feature_ts, the next
midnight (capped at as_of). A window of N days ends with the row's day. The checks pick their users, posts and pairs
deterministically (the most followed, the most liked, ...; ties to the smallest id).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

HEADS = {
    "label_like": "liked",
    "label_comment": "commented",
    "label_save": "saved",
    "label_share": "shared",
    "label_follow": "followed",
    "label_hide": "hidden",
}
AFFINITY_WEIGHTS = {"likes": 1, "comments": 2, "dms": 3, "profile_visits": 1}
AFFINITY_WINDOW_DAYS = 90


def as_of_date(as_of: datetime) -> date:
    return (as_of - timedelta(microseconds=1)).date()


def feature_ts(day: date, as_of: datetime) -> datetime:
    return min(datetime.combine(day + timedelta(days=1), datetime.min.time()), as_of)


def top_id(counts: pd.Series):
    """The id with the largest count; ties go to the smallest id (ids may be tuples)."""
    return min(counts[counts == counts.max()].index)


def one_row(df: pd.DataFrame, **where) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for column, value in where.items():
        mask &= df[column] == value
    [out] = [r for _, r in df[mask].iterrows()]
    return out


@pytest.fixture(scope="module")
def as_of(dbt_world) -> datetime:
    """The build's as_of as a naive UTC instant (Spark's session time zone is UTC)."""
    return dbt_world.as_of.replace(tzinfo=None)


@pytest.fixture(scope="module")
def bronze(dbt_world, spark, as_of) -> dict[str, pd.DataFrame]:
    """The bronze tables as pandas frames; event tables keep only what happened before as_of."""
    frames = {n: dbt_world.bronze(spark, n).toPandas() for n in ("users", "posts", "stories")}
    for name, column in (
        ("follows", "created_at"),
        ("impressions", "ts"),
        ("feed_reads", "ts"),
        ("story_views", "ts"),
        ("profile_visits", "ts"),
        ("dm_events", "ts"),
    ):
        df = dbt_world.bronze(spark, name).toPandas()
        df = df[df[column] < as_of].copy()
        df["day"] = df[column].dt.date
        frames[name] = df
    return frames


@pytest.fixture(scope="module")
def marts(dbt_world, spark) -> dict[str, pd.DataFrame]:
    names = (
        "fct_engagement_labels",
        "dim_user_features",
        "dim_post_features",
        "fct_viewer_author_affinity",
        "fct_story_ring_signals",
    )
    return {n: dbt_world.read(spark, f"marts.{n}").toPandas() for n in names}


# fct_engagement_labels


def test_engagement_labels_count_every_head_like_bronze(dbt_world, bronze, marts):
    impressions, labels = bronze["impressions"], marts["fct_engagement_labels"]
    threshold = dbt_world.settings.dbt.dwell_threshold_ms
    assert len(labels) == len(impressions) > 0
    assert not labels.duplicated(["viewer_id", "post_id", "impressed_at"]).any()
    for label, flag in HEADS.items():
        assert labels[label].sum() == impressions[flag].fillna(False).sum(), label
        assert set(labels[label].unique()) <= {0, 1}, label
    assert labels["label_dwell"].sum() == (impressions["dwell_ms"] > threshold).sum() > 0
    assert (labels.loc[labels["dwell_ms"] <= threshold, "label_dwell"] == 0).all()


# dim_user_features


def test_user_features_start_at_the_first_read_day_and_end_at_as_of(bronze, marts, as_of):
    features = marts["dim_user_features"]
    assert features["feature_date"].min() == bronze["feed_reads"]["day"].min()
    assert features["feature_date"].max() == as_of_date(as_of)
    last = features[features["feature_date"] == as_of_date(as_of)]
    assert (last["feature_ts"] == as_of).all()
    users = bronze["users"]
    assert len(last) == (users["created_at"] < as_of).sum()


def test_user_features_followers_count_every_follow_before_feature_ts(bronze, marts, as_of):
    follows = bronze["follows"]
    user_id = top_id(follows.groupby("followee_id").size())
    day = as_of_date(as_of) - timedelta(days=2)
    ts = feature_ts(day, as_of)
    known = follows[follows["created_at"] < ts]
    got = one_row(marts["dim_user_features"], user_id=user_id, feature_date=day)
    assert got["feature_ts"] == ts
    assert got["followers"] == (known["followee_id"] == user_id).sum() > 0
    assert got["followees"] == (known["follower_id"] == user_id).sum()


def test_user_features_likes_7d_count_the_seven_days_ending_with_the_day(bronze, marts, as_of):
    impressions = bronze["impressions"]
    day = as_of_date(as_of) - timedelta(days=2)
    in_window = impressions[(impressions["day"] > day - timedelta(days=7)) & (impressions["day"] <= day)]
    user_id = top_id(in_window[in_window["liked"]].groupby("viewer_id").size())
    mine = in_window[in_window["viewer_id"] == user_id]
    got = one_row(marts["dim_user_features"], user_id=user_id, feature_date=day)
    assert got["likes_7d"] == mine["liked"].sum() > 0
    assert got["impressions_7d"] == len(mine)
    assert got["like_rate_7d"] == pytest.approx(mine["liked"].sum() / len(mine))


# dim_post_features


def test_post_features_likes_are_cumulative_since_creation(bronze, marts, as_of):
    impressions, posts = bronze["impressions"], bronze["posts"]
    post_id = top_id(impressions[impressions["liked"]].groupby("post_id").size())
    post = one_row(posts, post_id=post_id)
    day = min(post["created_at"].date() + timedelta(days=2), as_of_date(as_of))
    ts = feature_ts(day, as_of)
    seen = impressions[(impressions["post_id"] == post_id) & (impressions["ts"] < ts)]
    got = one_row(marts["dim_post_features"], post_id=post_id, feature_date=day)
    assert got["likes"] == seen["liked"].sum() > 0
    assert got["impressions"] == len(seen)
    assert got["hides"] == seen["hidden"].sum()
    assert got["age_hours"] == pytest.approx((ts - post["created_at"]).total_seconds() / 3600)
    words = (post["caption"] or "").split()
    assert got["hashtag_count"] == sum(1 for w in words if w.startswith("#") and len(w) > 1)


def test_post_features_cover_the_horizon_from_the_creation_day(dbt_world, bronze, marts, as_of):
    """Days since the creation day < horizon, up to as_of's day, and not before the user features' first day
    (the first feed-read day), so that author_followers is known on every row."""
    horizon = dbt_world.settings.dbt.post_feature_horizon_days
    features = marts["dim_post_features"]
    posts = bronze["posts"][bronze["posts"]["created_at"] < as_of]
    last_day = as_of_date(as_of)
    first_feature_day = bronze["feed_reads"]["day"].min()
    expected_rows = 0
    for created_at in posts["created_at"]:
        first = max(created_at.date(), first_feature_day)
        last = min(created_at.date() + timedelta(days=horizon - 1), last_day)
        expected_rows += max((last - first).days + 1, 0)
    assert len(features) == expected_rows
    assert features["author_followers"].notna().all()
    created = features.merge(posts[["post_id", "created_at"]], on="post_id", how="left", validate="many_to_one")
    assert (created["feature_ts"] > created["created_at"]).all()


# fct_viewer_author_affinity


def daily_interactions(bronze) -> pd.DataFrame:
    """likes, comments, dms and profile visits per viewer -> author and day, recomputed from bronze."""
    imp = bronze["impressions"]
    parts = [
        imp[imp["liked"]].assign(kind="likes")[["viewer_id", "author_id", "day", "kind"]],
        imp[imp["commented"]].assign(kind="comments")[["viewer_id", "author_id", "day", "kind"]],
        bronze["dm_events"].rename(columns={"sender_id": "viewer_id", "recipient_id": "author_id"}).assign(kind="dms"),
        bronze["profile_visits"]
        .rename(columns={"visitor_id": "viewer_id", "profile_id": "author_id"})
        .assign(kind="profile_visits"),
    ]
    events = pd.concat([p[["viewer_id", "author_id", "day", "kind"]] for p in parts])
    events = events[events["viewer_id"] != events["author_id"]]
    return events.groupby(["viewer_id", "author_id", "day", "kind"]).size().unstack("kind", fill_value=0)


def test_affinity_decays_each_interaction_day_by_its_age(dbt_world, bronze, marts):
    half_life = dbt_world.settings.dbt.affinity_half_life_days
    daily = daily_interactions(bronze)
    days_per_pair = daily.reset_index().groupby(["viewer_id", "author_id"]).size()
    viewer_id, author_id = top_id(days_per_pair)
    history = daily.loc[(viewer_id, author_id)]
    affinity = marts["fct_viewer_author_affinity"]
    pair = affinity[(affinity["viewer_id"] == viewer_id) & (affinity["author_id"] == author_id)]
    assert len(pair) >= len(history) > 1
    for day in history.index:
        ages = pd.Series([(day - d).days for d in history.index], index=history.index)
        weights = (0.5 ** (ages / half_life)).where((ages >= 0) & (ages < AFFINITY_WINDOW_DAYS), 0.0)
        decayed = {kind: float((history[kind] * weights).sum()) for kind in AFFINITY_WEIGHTS if kind in history}
        got = one_row(pair, affinity_date=day)
        for kind, value in decayed.items():
            assert got[f"decayed_{kind}"] == pytest.approx(value), (day, kind)
        score = sum(AFFINITY_WEIGHTS[kind] * value for kind, value in decayed.items())
        assert got["affinity_score"] == pytest.approx(score), day


# fct_story_ring_signals


def test_story_ring_lists_followed_authors_with_live_stories(bronze, marts, as_of):
    stories, views, follows = bronze["stories"], bronze["story_views"], bronze["follows"]
    live = stories[(stories["created_at"] > as_of - timedelta(hours=24)) & (stories["created_at"] <= as_of)]
    tray = follows.merge(live, left_on="followee_id", right_on="author_id", suffixes=("_follow", ""))
    tray = tray[tray["follower_id"] != tray["followee_id"]]
    seen = set(zip(views["story_id"], views["viewer_id"], strict=True))
    tray = tray.assign(unseen=[(s, v) not in seen for s, v in zip(tray["story_id"], tray["follower_id"], strict=True)])
    expected = tray.groupby(["follower_id", "author_id"]).agg(live=("story_id", "size"), unseen=("unseen", "sum"))
    ring = marts["fct_story_ring_signals"].set_index(["viewer_id", "author_id"]).sort_index()
    assert len(ring) == len(expected) > 0
    assert ring["live_stories"].sum() == expected["live"].sum()
    assert ring["unseen_stories"].sum() == expected["unseen"].sum()
    assert (ring["has_unseen"] == (ring["unseen_stories"] > 0)).all()
    viewer_id, author_id = top_id(expected["live"] * 1000 + expected["unseen"])
    got = ring.loc[(viewer_id, author_id)]
    assert got["live_stories"] == expected.loc[(viewer_id, author_id), "live"]
    assert got["unseen_stories"] == expected.loc[(viewer_id, author_id), "unseen"]
    assert got["latest_story_at"] == live.loc[live["author_id"] == author_id, "created_at"].max()
