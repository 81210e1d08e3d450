"""The synthetic world at `tiny` scale, with real Spark: the shapes later jobs rely on, every contract rule and
reference holds, and the world is a function of its seed."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from darkroom import ids
from darkroom.contract_spec import load_contract
from data_contracts.checks import RULES_COL, with_violations
from jobs.generate.main import DATASETS, generate
from jobs.generate.transform import SCALES

pytestmark = pytest.mark.integration
SEED = 7


@pytest.fixture(scope="module")
def world_dir(spark, settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-world")
    counts = generate(settings, scale="tiny", seed=SEED, days=None, out_dir=out)
    assert set(counts) == set(DATASETS) and all(n > 0 for n in counts.values()), counts
    return out


@pytest.fixture(scope="module")
def frames(spark, world_dir):
    return {name: spark.read.parquet(str(world_dir / name)) for name in DATASETS}


def test_every_contract_rule_and_reference_holds(frames):
    """The contracts' own row checks (nulls, ranges, enums, keys, references) find nothing wrong in any dataset."""
    for name, df in frames.items():
        contract = load_contract(name)
        assert df.columns == contract.column_names, name
        refs = {r.table: frames[r.table] for r in contract.references}
        broken = (
            with_violations(df, contract, references=refs)
            .select(F.explode(RULES_COL).alias("rule"))
            .groupBy("rule")
            .count()
            .collect()
        )
        assert broken == [], f"{name}: {[(r['rule'], r['count']) for r in broken]}"


def _discrete_power_law_alpha(counts: list[int], x_min: int) -> tuple[float, int]:
    """Clauset, Shalizi & Newman (2009), eq. 3.7: the approximate discrete MLE of the tail exponent."""
    tail = [x for x in counts if x >= x_min]
    return 1 + len(tail) / sum(math.log(x / (x_min - 0.5)) for x in tail), len(tail)


def test_follower_counts_are_power_law(frames):
    n_users = frames["users"].count()
    followers = [r["n"] for r in frames["follows"].groupBy("followee_id").agg(F.count(F.lit(1)).alias("n")).collect()]
    followers += [0] * (n_users - len(followers))
    followers.sort()
    target = 1 + 1 / SCALES["tiny"].zipf_s  # 2.67: rank density x^-s gives a count tail k^-(1+1/s)
    # x_min = 60: above the binomial floor that every account gets at tiny scale (mean out-degree 30 of 2,000 users)
    alpha, n_tail = _discrete_power_law_alpha(followers, x_min=60)
    assert n_tail >= 100
    assert abs(alpha - target) < 0.5, (alpha, target)
    top_share = followers[-1] / n_users
    assert 0.15 <= top_share <= 0.6, top_share  # "followers in the tens of percent of all users"
    assert followers[len(followers) // 2] < 200  # most accounts are small


def test_media_reads_decay_about_tenfold_a_week(frames):
    """Reads per media at ages 7-13 days against 0-6 days, over media observed at both ages (f4: ~10x)."""
    acc = frames["media_access"].join(frames["media"].select("media_id", "created_at"), "media_id", how="inner")
    age = F.floor((F.col("ts").cast("double") - F.col("created_at").cast("double")) / 86400)
    window_start = frames["media_access"].agg(F.min("ts")).collect()[0][0]
    observed = acc.where(F.col("created_at") >= F.lit(window_start))  # uploaded inside the log window
    by_week = {
        r["wk"]: r["n"]
        for r in observed.withColumn("wk", F.floor(age / 7))
        .where("wk in (0, 1)")
        .groupBy("wk")
        .count()
        .withColumnRenamed("count", "n")
        .collect()
    }
    ratio = by_week[0] / by_week[1]
    assert 5 <= ratio <= 20, by_week


def test_cdn_hit_rate_near_95_percent(frames):
    rate = frames["media_access"].agg(F.avg(F.col("cdn_hit").cast("double"))).collect()[0][0]
    assert 0.93 <= rate <= 0.97


HEADS = {  # label column, oracle column, plausible base-rate range
    "like": ("liked", "p_like", (0.05, 0.15)),
    "comment": ("commented", "p_comment", (0.005, 0.03)),
    "save": ("saved", "p_save", (0.005, 0.03)),
    "share": ("shared", "p_share", (0.003, 0.02)),
    "follow": ("followed", "p_follow", (0.002, 0.02)),
    "hide": ("hidden", "p_hide", (0.002, 0.02)),
    "dwell": ("dwell_long", "p_dwell", (0.10, 0.30)),
}


def test_label_rates_and_oracle_calibration(frames):
    imp = frames["impressions"].withColumn("dwell_long", F.col("dwell_ms") > 10_000)
    joined = imp.join(frames["oracle"], ["viewer_id", "post_id", "ts"], how="inner")
    n = joined.count()
    assert n == frames["impressions"].count() == frames["oracle"].count()
    aggs = joined.agg(
        *[F.avg(F.col(lab).cast("double")).alias(h) for h, (lab, _, _) in HEADS.items()],
        *[F.avg(F.col(p)).alias(f"{h}_p") for h, (_, p, _) in HEADS.items()],
    ).collect()[0]
    for head, (_, _, (lo, hi)) in HEADS.items():
        rate, mean_p = aggs[head], aggs[f"{head}_p"]
        assert lo <= rate <= hi, (head, rate)
        se = math.sqrt(mean_p * (1 - mean_p) / n)
        assert abs(rate - mean_p) < 4 * se + 1e-3, (head, rate, mean_p)  # labels are drawn from the oracle


def test_ids_are_routed_and_time_sorted(frames):
    posts = frames["posts"]
    bad_shard = posts.where(ids.shard_col(F.col("post_id")) != ids.shard_col(F.col("author_id"))).count()
    assert bad_shard == 0
    bad_time = posts.where(ids.ms_col(F.col("post_id")) != F.unix_millis(F.col("created_at"))).count()
    assert bad_time == 0
    media_on_post_shard = (
        frames["media"]
        .join(posts, "post_id", how="inner")
        .where(ids.shard_col(F.col("media_id")) != ids.shard_col(F.col("post_id")))
        .count()
    )
    assert media_on_post_shard == 0


def test_same_seed_same_world_other_seed_other_world(spark, settings, frames, tmp_path):
    some = ["users", "follows", "posts"]
    generate(settings, scale="tiny", seed=SEED, days=None, out_dir=tmp_path / "again", datasets=some)
    generate(settings, scale="tiny", seed=SEED + 1, days=None, out_dir=tmp_path / "other", datasets=some)
    for name in some:
        again = spark.read.parquet(str(tmp_path / "again" / name))
        assert again.exceptAll(frames[name]).count() == 0 and frames[name].exceptAll(again).count() == 0, name
        other = spark.read.parquet(str(tmp_path / "other" / name))
        assert other.exceptAll(frames[name]).count() > 0, name
