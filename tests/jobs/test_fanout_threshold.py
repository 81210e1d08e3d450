"""The fan-out cost model on hand-built graphs worked out on paper, and the one-pass curve against brute force."""

from __future__ import annotations

import random

import pytest

from jobs.fanout_threshold import transform as T

pytestmark = pytest.mark.integration

MODEL = T.CostModel(write_cost=1.0, merge_cost=1.0, stored_entry_cost=0.1, timeline_cap=800, timeline_days=1.0)

# Users 1..4 follow authors 10 (f=3) and 20 (f=2); author 30 has no followers.
# Readers: 1 active, 2 reads a day; 2 active, 1 a day; 3 and 4 inactive.
FOLLOWS = [(1, 10), (2, 10), (3, 10), (1, 20), (2, 20)]
AUTHORS = [  # author_id, followers, active_followers, posts_per_day, reader_load
    (10, 3, 2, 1.0, 3.0),
    (20, 2, 2, 3.0, 3.0),
    (30, 0, 0, 0.5, 0.0),
]
READERS = [(1, True, 2.0), (2, True, 1.0), (3, False, 0.0), (4, False, 0.0)]


def frames(spark, follows=FOLLOWS, authors=AUTHORS, readers=READERS):
    a = spark.createDataFrame(
        authors, "author_id bigint, followers bigint, active_followers bigint, posts_per_day double, reader_load double"
    )
    r = spark.createDataFrame(readers, "user_id bigint, is_active boolean, reads_per_day double")
    f = spark.createDataFrame(follows, "follower_id bigint, followee_id bigint")
    return a, r, T.edges(f, a, r)


def curve_of(spark, model=MODEL, **kw) -> dict[int, dict]:
    a, _, e = frames(spark, **kw)
    return {r["threshold"]: r.asDict() for r in T.threshold_curve(a, e, model).collect()}


def test_curve_matches_the_paper_computation(spark):
    c = curve_of(spark)
    assert sorted(c) == [-1, 0, 2, 3]
    # T = -1: all pull. merges 3 + 3, own lists 1 + 3 + 0.5
    assert (c[-1]["writes"], c[-1]["merges"], c[-1]["stored_entries"]) == (0, 6, 4.5)
    assert c[-1]["total_cost"] == pytest.approx(6.45)
    # T = 0 pushes the author nobody follows: its own list goes, nothing else changes
    assert (c[0]["writes"], c[0]["merges"], c[0]["stored_entries"]) == (0, 6, 4.0)
    # T = 2 pushes author 20: 3 posts x 2 active followers; readers 1 and 2 hold 3 entries each
    assert (c[2]["writes"], c[2]["merges"], c[2]["timeline_entries"], c[2]["celebrity_entries"]) == (6, 3, 6, 1)
    assert c[2]["total_cost"] == pytest.approx(9.7)
    # T = 3: pure push
    assert (c[3]["writes"], c[3]["merges"], c[3]["stored_entries"], c[3]["push_authors"]) == (8, 0, 8, 3)
    assert c[3]["total_cost"] == pytest.approx(8.8)


def test_the_timeline_cap_binds_per_timeline(spark):
    capped = T.CostModel(write_cost=1.0, merge_cost=1.0, stored_entry_cost=0.1, timeline_cap=3, timeline_days=1.0)
    c = curve_of(spark, model=capped)
    assert c[2]["timeline_entries"] == 6  # 3 each, at the cap
    assert c[3]["timeline_entries"] == 6  # 4 each would exceed it: writes still 8
    assert c[3]["writes"] == 8


def test_read_budget_floor_and_freshness_ceiling(spark):
    a, r, e = frames(spark)
    # B = 0: every read may merge nobody, so every followed author must be pushed: T >= 3
    w0 = [(x["k"], x["reads_per_day"]) for x in T.fan_in_floor_weights(e, r, 0).collect()]
    assert sorted(w0) == [(3, 3.0)]
    assert T.read_budget_floor(w0, 0.99) == 3
    # B = 1: the 2nd largest followee of readers 1 and 2 has 2 followers
    w1 = [(x["k"], x["reads_per_day"]) for x in T.fan_in_floor_weights(e, r, 1).collect()]
    assert T.read_budget_floor(w1, 0.99) == 2
    # B = 2: no reader follows more than 2 authors
    w2 = [(x["k"], x["reads_per_day"]) for x in T.fan_in_floor_weights(e, r, 2).collect()]
    assert T.read_budget_floor(w2, 0.99) == T.PURE_PULL
    # at most one active follower per push: authors 10 and 20 (2 each) must be pulled, so T <= 1
    assert T.freshness_ceiling(a, 1) == 1
    assert T.freshness_ceiling(a, 2) is None


def test_read_budget_floor_is_a_weighted_quantile():
    # 90 reads a day fit under T >= 5, 10 need T >= 100: p90 is met at 5, p95 is not
    weights = [(5, 90.0), (100, 10.0)]
    assert T.read_budget_floor(weights, 0.90) == 5
    assert T.read_budget_floor(weights, 0.95) == 100
    assert T.read_budget_floor([], 0.99) == T.PURE_PULL


def test_choice_within_budgets_and_when_they_conflict(spark):
    curve = list(curve_of(spark).values())
    free = T.choose_threshold(curve, T.PURE_PULL, None)
    assert (free.threshold, free.conflict) == (0, False)  # 6.4, the cheapest
    floored = T.choose_threshold(curve, 2, None)
    assert floored.threshold == 3  # 8.8 < 9.7
    conflict = T.choose_threshold(curve, 3, 1)
    assert conflict.conflict and conflict.threshold == 0
    assert "budgets conflict" in conflict.message and "T >= 3" in conflict.message and "T <= 1" in conflict.message


def test_ties_pick_the_smaller_threshold():
    curve = [
        {"threshold": -1, "total_cost": 5.0},
        {"threshold": 4, "total_cost": 3.0},
        {"threshold": 9, "total_cost": 3.0},
    ]
    assert T.choose_threshold(curve, T.PURE_PULL, None).threshold == 4


def test_per_author_rule_and_its_exact_costs(spark):
    a, _, e = frames(spark)
    modes = T.per_author_modes(a, MODEL, threshold=0, floor=T.PURE_PULL, max_push_active_followers=10**6)
    got = {r["author_id"]: (r["per_author_mode"], r["threshold_mode"]) for r in modes.collect()}
    # 10: push 2 + 0.2 < pull 3 + 0.1; 20: push 6 + 0.6 > pull 3 + 0.3; 30: push 0 < pull 0.05
    assert got == {10: ("push", "pull"), 20: ("pull", "pull"), 30: ("push", "push")}
    f = T.policy_costs(modes, e, MODEL, "per_author_mode")
    assert (f["writes"], f["merges"], f["timeline_entries"], f["celebrity_entries"]) == (2, 3, 2, 3)
    assert f["total_cost"] == pytest.approx(5.5)
    # the same budgets bind it: with the read floor at 3 every author is pushed, freshness 1 pulls 10 and 20
    floored = T.per_author_modes(a, MODEL, threshold=3, floor=3, max_push_active_followers=10**6)
    assert {r["per_author_mode"] for r in floored.collect()} == {"push"}
    fresh = T.per_author_modes(a, MODEL, threshold=0, floor=3, max_push_active_followers=1)
    assert {r["author_id"]: r["per_author_mode"] for r in fresh.collect()} == {10: "pull", 20: "pull", 30: "push"}


def test_an_author_without_active_followers_costs_nothing_to_push(spark):
    authors = [*AUTHORS, (40, 2, 0, 2.0, 0.0)]
    follows = [*FOLLOWS, (3, 40), (4, 40)]
    c = curve_of(spark, follows=follows, authors=authors)
    base = curve_of(spark)
    # at T = 2 authors 20 and 40 (a tie at f = 2) are pushed together; 40 adds no writes and no timeline entries
    assert c[2]["push_authors"] == base[2]["push_authors"] + 1
    assert (c[2]["writes"], c[2]["timeline_entries"]) == (base[2]["writes"], base[2]["timeline_entries"])
    # pulled it only holds its own list: 2 entries more at T < 2
    assert c[0]["celebrity_entries"] == base[0]["celebrity_entries"] + 2


def test_a_graph_with_no_followers_at_all(spark):
    authors = [(10, 0, 0, 1.0, 0.0), (20, 0, 0, 2.0, 0.0)]
    a, r, e = frames(spark, follows=[], authors=authors, readers=[(1, True, 3.0)])
    curve = [x.asDict() for x in T.threshold_curve(a, e, MODEL).collect()]
    assert [x["threshold"] for x in curve] == [-1, 0]
    assert curve[0]["stored_entries"] == 3.0 and curve[1]["stored_entries"] == 0.0
    assert (
        T.read_budget_floor([(x["k"], x["reads_per_day"]) for x in T.fan_in_floor_weights(e, r, 0).collect()], 0.99)
        == -1
    )
    assert T.choose_threshold(curve, -1, None).threshold == 0


def test_graph_problems_are_named(spark):
    follows = spark.createDataFrame([(1, 2), (1, 2), (3, 3), (1, 9), (2, 1)], "follower_id bigint, followee_id bigint")
    users = spark.createDataFrame([(1,), (2,), (3,)], "user_id bigint")
    got = {r["problem"]: (r["rows"], r["examples"]) for r in T.graph_problems(follows, users).collect()}
    assert got == {"self_follow": (1, ["3->3"]), "duplicate_edge": (1, ["1->2"]), "unknown_user": (1, ["1->9"])}
    clean = spark.createDataFrame([(1, 2), (2, 1)], "follower_id bigint, followee_id bigint")
    assert T.graph_problems(clean, users).count() == 0


def brute_force(follows, authors, readers, model: T.CostModel, max_merges: int, quantile: float):
    """Every threshold by direct enumeration, no running sums."""
    f = {a[0]: a[1] for a in authors}
    rows = {}
    active = {u for u, act, _ in readers if act}
    reads = {u: r for u, _, r in readers}
    followees: dict[int, list[int]] = {}
    for u, a in follows:
        followees.setdefault(u, []).append(a)
    for t in sorted({-1, *f.values()}):
        pushed = {a for a, n in f.items() if n <= t}
        writes = sum(p * act for a, _, act, p, _ in authors if a in pushed)
        merges = sum(load for a, _, _, _, load in authors if a not in pushed)
        own = sum(p * model.timeline_days for a, _, _, p, _ in authors if a not in pushed)
        timeline = 0.0
        for u in active:
            x = sum(authors_by_id(authors)[a][3] * model.timeline_days for a in followees.get(u, []) if a in pushed)
            timeline += min(model.timeline_cap, x)
        rows[t] = model.cost(writes, merges, timeline + own)
    floor = None
    total_reads = sum(r for u, r in reads.items() if r > 0)
    for t in sorted({-1, *f.values()}):
        over = sum(
            r for u, r in reads.items() if r > 0 and sum(1 for a in followees.get(u, []) if f[a] > t) > max_merges
        )
        if over <= (1 - quantile) * total_reads + 1e-9:
            floor = t
            break
    return rows, floor


def authors_by_id(authors):
    return {a[0]: a for a in authors}


def test_one_pass_curve_equals_brute_force_on_a_random_graph(spark):
    rng = random.Random(11)
    users = list(range(1, 61))
    follows = sorted(
        {(u, v) for u in users for v in rng.sample(users, rng.randint(0, 12)) if u != v and rng.random() < 0.9}
    )
    followers: dict[int, int] = {}
    for _, v in follows:
        followers[v] = followers.get(v, 0) + 1
    readers = [(u, rng.random() < 0.6, 0.0) for u in users]
    readers = [(u, act, rng.choice([1.0, 2.0, 5.0]) if act else 0.0) for u, act, _ in readers]
    act = {u for u, a, _ in readers if a}
    rd = {u: r for u, _, r in readers}
    authors = []
    for v in users:
        fs = [u for u, w in follows if w == v]
        authors.append(
            (
                v,
                followers.get(v, 0),
                sum(1 for u in fs if u in act),
                rng.choice([0.0, 0.5, 1.0, 4.0]),
                sum(rd[u] for u in fs),
            )
        )
    model = T.CostModel(write_cost=1.0, merge_cost=0.7, stored_entry_cost=0.3, timeline_cap=6, timeline_days=2.0)
    expected, expected_floor = brute_force(follows, authors, readers, model, max_merges=3, quantile=0.9)
    a, r, e = frames(spark, follows=follows, authors=authors, readers=readers)
    got = {x["threshold"]: x["total_cost"] for x in T.threshold_curve(a, e, model).collect()}
    assert got.keys() == expected.keys()
    assert len(set(followers.values())) < len(followers)  # the graph has ties in f
    for t in expected:
        assert got[t] == pytest.approx(expected[t], rel=1e-9, abs=1e-9), t
    weights = [(x["k"], x["reads_per_day"]) for x in T.fan_in_floor_weights(e, r, 3).collect()]
    assert T.read_budget_floor(weights, 0.9) == expected_floor


def test_fan_in_histograms_of_several_policies_in_one_pass(spark):
    from pyspark.sql import functions as F

    a, r, e = frames(spark)
    modes = T.per_author_modes(a, MODEL, threshold=0, floor=T.PURE_PULL, max_push_active_followers=10**6).withColumn(
        "pure_push", F.lit(T.PUSH)
    )
    rows = T.fan_in(e, r, modes, {"threshold": "threshold_mode", "per_author": "per_author_mode", "push": "pure_push"})
    got = sorted((x["policy"], x["fan_in"], x["readers"], x["reads_per_day"]) for x in rows.collect())
    # readers 1 (2 reads a day) and 2 (1 a day) follow 10 and 20; T = 0 pulls both, the per-author rule pulls 20
    assert got == [
        ("per_author", 1, 2, 3.0),
        ("push", 0, 2, 3.0),
        ("threshold", 2, 2, 3.0),
    ]
