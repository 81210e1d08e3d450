"""The online store: key and payload builders by hand, then materialisation from the lake of conftest.py into a
real redis-server, the same keys and values on a re-run, no regression from an old window, and the consistency
check passing, then failing with the key named once a value is changed in Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis

from feature_store.definitions import RANKER_V1
from feature_store.online import (
    FeatureConsistencyError,
    MaterializedView,
    check_consistency,
    format_ts_micros,
    format_value,
    materialize,
    online_key,
    online_payload,
)
from tests.feature_store.conftest import ts

VIEWS = ("viewer", "viewer_author", "post_hashtags")


def test_online_keys():
    assert online_key("fs", "viewer", [123]) == "fs:viewer:123"
    assert online_key("fs", "viewer_author", (1, 2)) == "fs:viewer_author:1:2"
    with pytest.raises(ValueError, match="null entity value"):
        online_key("fs", "viewer", [None])
    with pytest.raises(ValueError, match="no entity values"):
        online_key("fs", "viewer", [])


def test_values_as_stored_strings():
    assert format_value(None) is None
    assert format_value(True) == "true"
    assert format_value(12) == "12"
    assert format_value(0.375) == "0.375"
    assert format_value(0.1 + 0.2) == "0.30000000000000004"  # round-trips exactly
    assert format_value(float("nan")) == "nan"
    assert format_value("eu") == "eu"
    assert format_value(["#beach", "#sun"]) == '["#beach","#sun"]'
    assert format_value([]) == "[]"
    assert format_value(datetime(2026, 10, 11, 12, tzinfo=UTC)) == "2026-10-11T12:00:00.000000Z"
    with pytest.raises(TypeError, match="cannot store a dict online"):
        format_value({"a": 1})


def test_payload_skips_nulls_and_stamps_feature_ts():
    micros = 1_791_676_800_000_000  # 2026-10-11 00:00:00 UTC: 20,737 days x 86,400 s
    assert format_ts_micros(micros) == "2026-10-11T00:00:00.000000Z"
    assert format_ts_micros(micros + 1) == "2026-10-11T00:00:00.000001Z"
    assert online_payload({"followers": 11, "like_rate_7d": 0.375, "region": None}, micros) == {
        "_feature_ts": "2026-10-11T00:00:00.000000Z",
        "followers": "11",
        "like_rate_7d": "0.375",
    }


def hgetall(url: str, key: str) -> dict[str, str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return client.hgetall(key)
    finally:
        client.close()


@pytest.mark.integration
def test_materialize_rerun_and_consistency_against_redis(spark, feature_lake, redis_url):
    s = feature_lake.settings
    views = [RANKER_V1.view(v) for v in VIEWS]
    # Rows with feature_ts in (10-10 00:00, 10-12 00:00]: users 1 and 2 (latest: 10-12 and 10-11), no affinity row
    # (pair rows are known 10-10 00:00 and 10-02), post 100 (created 10-10 08:00).
    counts = materialize(spark, s, views, ts(10), ts(12), redis_url)
    assert counts == {
        "viewer": MaterializedView("viewer", entities=2, written=2, kept_newer=0),
        "viewer_author": MaterializedView("viewer_author", entities=0, written=0, kept_newer=0),
        "post_hashtags": MaterializedView("post_hashtags", entities=1, written=1, kept_newer=0),
    }
    assert hgetall(redis_url, "fs:viewer:1") == {
        "_feature_ts": "2026-10-12T00:00:00.000000Z",
        "account_age_days": "102.0",
        "followers": "12",
        "followees": "5",
        "feed_reads_7d": "6",
        "impressions_7d": "10",
        "likes_7d": "3",
        "like_rate_7d": "0.3",
    }
    assert hgetall(redis_url, "fs:viewer:2")["followers"] == "205"
    assert hgetall(redis_url, "fs:post_hashtags:100") == {
        "_feature_ts": "2026-10-10T08:00:00.000000Z",
        "hashtags": '["#beach","#sun"]',
    }

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        snapshot = {k: client.hgetall(k) for k in sorted(client.keys("fs:*"))}
        assert sorted(snapshot) == ["fs:post_hashtags:100", "fs:viewer:1", "fs:viewer:2"]

        # A re-run writes the same keys and values.
        assert materialize(spark, s, views, ts(10), ts(12), redis_url) == counts
        assert {k: client.hgetall(k) for k in sorted(client.keys("fs:*"))} == snapshot

        # An older window (a backfill) finds newer rows in Redis and leaves them: user 1's row of 10-09 (known
        # 10-10 00:00) is older than the 10-12 row held. The pair (1, 2) is new: written.
        old = materialize(
            spark, s, [RANKER_V1.view("viewer"), RANKER_V1.view("viewer_author")], ts(9), ts(10), redis_url
        )
        assert old["viewer"] == MaterializedView("viewer", entities=2, written=0, kept_newer=2)
        assert old["viewer_author"] == MaterializedView("viewer_author", entities=1, written=1, kept_newer=0)
        assert client.hget("fs:viewer:1", "followers") == "12"
        assert client.hgetall("fs:viewer_author:1:2")["affinity_score"] == "4.0"

        # Online and offline agree at 10-12 00:00 for users within the 48 h TTL (1 and 2).
        report = check_consistency(spark, s, RANKER_V1.view("viewer"), ts(12), redis_url, sample=10)
        assert (report.sampled, report.matched, report.mismatched) == (2, 2, 0)

        # A changed value fails the check, naming the key, the field and both values.
        client.hset("fs:viewer:1", "like_rate_7d", "0.31")
        with pytest.raises(FeatureConsistencyError) as failed:
            check_consistency(spark, s, RANKER_V1.view("viewer"), ts(12), redis_url, sample=10)
        assert "fs:viewer:1 like_rate_7d: online '0.31', offline '0.3'" in str(failed.value)
        assert (failed.value.report.matched, failed.value.report.mismatched) == (1, 1)

        # A missing key is a mismatch too; re-materialising repairs both.
        client.delete("fs:viewer:2")
        with pytest.raises(FeatureConsistencyError, match=r"fs:viewer:2 \*: online None, offline '2026-10-11T"):
            check_consistency(spark, s, RANKER_V1.view("viewer"), ts(12), redis_url, sample=10)
        materialize(spark, s, [RANKER_V1.view("viewer")], ts(10), ts(12), redis_url)
        assert check_consistency(spark, s, RANKER_V1.view("viewer"), ts(12), redis_url, sample=10).ok
    finally:
        client.close()
