"""The synthetic world as pure Spark transforms: every value is a hash of (seed, salt, keys), never ``F.rand``.

A ``World`` (scale parameters, seed, clock) is the only parameter. User attributes are column functions of the user
index ``idx`` (0..N-1), so follows, posts and events compute the ids and attributes they need without joins; the joins
left (feed candidates, explore pool, stories, factor tables) are against small or grouped tables. Internal frames
(``*_frame``, ``logged_reads``) carry helper columns; the landing transforms end with ``to_contract``: the contract's
columns, types and order. Per-element lambdas (interpreted by Spark) are avoided on hot paths: they run ~20x slower
than code-generated expressions.

See ``jobs/generate/README.md`` for the ground-truth model and its parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from darkroom import ids
from darkroom.contract_spec import load_contract

DAY_MS = 86_400_000
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
MASK53 = (1 << 53) - 1
MASK32 = (1 << 32) - 1
# Posts and their media share one block of sequence numbers per author on a shard: seq block*11 is the post,
# block*11 + 1 .. + 10 its media. 93 blocks fit in the 10-bit sequence.
SEQ_BLOCK = 11
SEQ_BLOCKS = (ids.MAX_SEQ + 1) // SEQ_BLOCK
INSTAGRAM_MAX_FOLLOWING = 7_500  # the service's own cap on accounts one user follows
EXPLORE_WINDOW_DAYS = 7  # feed and explore show posts of the preceding 7 days

# Region mix of users (skewed like the service's audience) and the hour-of-day phase of their daily rhythm.
REGIONS: tuple[tuple[str, float, float], ...] = (
    ("as", 0.36, 0.55),
    ("eu", 0.20, 0.80),
    ("na", 0.18, 0.05),
    ("sa", 0.14, 0.00),
    ("af", 0.08, 0.78),
    ("oc", 0.04, 0.40),
)
# Served variants of a photo: (fraction of the original's bytes, share of reads).
VARIANTS: tuple[tuple[float, float], ...] = ((1.0, 0.05), (0.6, 0.45), (0.25, 0.30), (0.08, 0.15), (0.02, 0.05))
# Feed shapes: (width or height over width, share). Heights are clipped to the contract's 168..1350.
WIDTHS: tuple[tuple[int, float], ...] = ((1080, 0.70), (750, 0.10), (640, 0.15), (320, 0.05))
ASPECTS: tuple[tuple[float, float], ...] = ((1.0, 0.45), (1.25, 0.35), (1 / 1.91, 0.15), (0.75, 0.05))

# Vocabularies of usernames and captions.
ADJECTIVES = tuple(
    "sunny quiet wild lazy happy blue golden misty urban salty little bold cosy rainy lucky velvet tiny noisy brave "
    "silver".split()
)
NOUNS = tuple(
    "fox otter lens pixel coast maple harbor tiger cactus meadow comet falcon island lantern panda river studio violet "
    "wander zephyr".split()
)
WORDS = tuple(
    "golden hour with the best crew coffee first weekend vibes sunset city lights new favourite spot lost in the "
    "mountains summer again morning walk home".split()
)
HASHTAGS = tuple(
    "photography travel food nature sunset love instagood art fitness style beach dog cat family friends music "
    "streetphoto coffee".split()
)


@dataclass(frozen=True)
class Scale:
    """Volumes and rates of one world size; rates are per user per day unless named otherwise."""

    name: str
    users: int
    days: int  # default window of event logs, ending at the world's end
    history_days: int  # posts and media are created over this many days before the end
    user_years: float  # accounts were created over this many years before the history
    out_degree_mean: float  # mean of the log-normal number of follow draws per user
    out_degree_sigma: float
    zipf_s: float  # popularity exponent: followee rank density ~ x^-s; follower-count tail ~ k^-(1+1/s)
    follow_back: float  # P(followee follows back) for an ordinary account, / (1 + popularity/4)
    poster_fraction: float
    posts_per_day: float  # mean over posters, before the popularity factor
    active_fraction: float  # users who read their feed at all in the window
    reads_per_day: float  # mean feed reads of an active user
    impression_viewer_fraction: float  # active users whose impressions are logged
    impression_read_fraction: float  # of their feed reads
    explore_authors: int  # the most popular accounts, whose public posts form the explore pool
    access_per_day: float  # reads of a fresh media per day per unit of author popularity
    access_floor: float  # reads per day of any media per sqrt(popularity) (old content is sometimes read)
    story_poster_fraction: float
    stories_per_day: float
    story_edge_bias: float  # logit of following an author's stories at zero affinity and average activity
    visit_bias: float  # log rate of profile visits per follow edge per day at zero affinity
    dm_bias: float  # log rate of messages per follow edge per day at zero affinity


SCALES: dict[str, Scale] = {
    # Tests: 2,000 users, a 21-day window so media created in its first week are observed at ages 0-13 days.
    "tiny": Scale(
        name="tiny",
        users=2_000,
        days=21,
        history_days=120,
        user_years=4.0,
        out_degree_mean=30.0,
        out_degree_sigma=1.0,
        zipf_s=0.6,
        follow_back=0.3,
        poster_fraction=0.6,
        posts_per_day=0.03,
        active_fraction=0.5,
        reads_per_day=3.0,
        impression_viewer_fraction=1.0,
        impression_read_fraction=0.5,
        explore_authors=100,
        access_per_day=10.0,
        access_floor=0.02,
        story_poster_fraction=0.3,
        stories_per_day=0.5,
        story_edge_bias=-1.5,
        visit_bias=-5.0,
        dm_bias=-6.0,
    ),
    # The benchmarks' world on this machine (the demo default before 2026-11-25, then named "small"): 100,000 users,
    # ~15M follows, ~30M rows in all, a couple of minutes to generate on 2 cores.
    "medium": Scale(
        name="medium",
        users=100_000,
        days=14,
        history_days=120,
        user_years=5.0,
        out_degree_mean=130.0,
        out_degree_sigma=1.0,
        zipf_s=0.6,
        follow_back=0.3,
        poster_fraction=0.6,
        posts_per_day=0.03,
        active_fraction=0.5,
        reads_per_day=3.0,
        impression_viewer_fraction=0.3,
        impression_read_fraction=0.5,
        explore_authors=1_000,
        access_per_day=10.0,
        access_floor=0.02,
        story_poster_fraction=0.3,
        stories_per_day=0.5,
        story_edge_bias=-3.0,
        visit_bias=-5.7,
        dm_bias=-6.9,
    ),
    # Benchmarks on a cluster: 10M users, ~1.2B follow edges. Never run on one machine. The top account's share
    # falls like N^-(1-s); s = 0.72 keeps it in the tens of percent at 10M users (tail exponent 2.39 instead of 2.67).
    "large": Scale(
        name="large",
        users=10_000_000,
        days=28,
        history_days=400,
        user_years=6.0,
        out_degree_mean=110.0,
        out_degree_sigma=1.0,
        zipf_s=0.72,
        follow_back=0.3,
        poster_fraction=0.6,
        posts_per_day=0.03,
        active_fraction=0.5,
        reads_per_day=3.0,
        impression_viewer_fraction=0.05,
        impression_read_fraction=0.5,
        explore_authors=20_000,
        access_per_day=10.0,
        access_floor=0.02,
        story_poster_fraction=0.3,
        stories_per_day=0.5,
        story_edge_bias=-3.0,
        visit_bias=-5.7,
        dm_bias=-6.9,
    ),
}
# The demo default (the main job): medium's rates on 10,000 users, so a simulated week through every DAG fits about
# 30 minutes on 2 cores (its runs are dominated by fixed costs: a dbt process, a Spark session, a spark-submit).
SCALES["small"] = replace(SCALES["medium"], name="small", users=10_000, out_degree_mean=80.0, explore_authors=200)


@dataclass(frozen=True)
class World:
    """One generated world: its scale, seed and clock, plus the derived constants of the popularity bijection."""

    scale: Scale
    seed: int
    days: int
    end_ms: int
    rank_a: int  # rank = (a * idx + b) mod N, gcd(a, N) = 1
    rank_b: int
    rank_a_inv: int

    @property
    def n(self) -> int:
        return self.scale.users

    @property
    def start_ms(self) -> int:
        return self.end_ms - self.days * DAY_MS

    @property
    def history_days(self) -> int:
        return max(self.scale.history_days, self.days + 30)

    @property
    def history_start_ms(self) -> int:
        return self.end_ms - self.history_days * DAY_MS

    @property
    def users_from_ms(self) -> int:
        return self.history_start_ms - int(self.scale.user_years * 365 * DAY_MS)

    @property
    def users_to_ms(self) -> int:
        return self.history_start_ms - DAY_MS

    @property
    def id_time_stride(self) -> int:
        """Users i and i + 2^23 share shard and sequence; their created ms differ mod this stride."""
        return max(1, -(-self.n // (1 << (ids.SHARD_BITS + ids.SEQ_BITS))))


def make_world(scale: str, seed: int, days: int | None, end: datetime) -> World:
    """Resolve a scale name, default days and the bijection constants; raise ValueError on a bad value."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    sc = SCALES[scale]
    days = sc.days if days is None else days
    if not 1 <= days <= 366:
        raise ValueError(f"days must be within 1..366, got {days}")
    if end.tzinfo is None:
        raise ValueError(f"world end {end} must be timezone-aware")
    n = sc.users
    a = int(n * 0.6180339887) + seed % 997 + 1
    while math.gcd(a % n, n) != 1 or a % n == 0:
        a += 1
    a %= n
    b = (seed * 7919 + 12345) % n
    return World(
        scale=sc, seed=seed, days=days, end_ms=int(end.timestamp() * 1000), rank_a=a, rank_b=b, rank_a_inv=pow(a, -1, n)
    )


# --- random numbers -------------------------------------------------------------------------------------------------
def _hash(seed: int, salt: str, *keys: Column) -> Column:
    return F.xxhash64(F.lit(seed).cast("long"), F.lit(salt), *[k.cast("long") for k in keys])


def uniform(seed: int, salt: str, *keys: Column) -> Column:
    """U[0,1) from the top 53 bits of xxhash64(seed, salt, keys...)."""
    return _hash(seed, salt, *keys).bitwiseAND(F.lit(MASK53)).cast("double") / float(1 << 53)


def normal(seed: int, salt: str, *keys: Column) -> Column:
    """N(0,1) by Box-Muller from the two 32-bit halves of one hash."""
    h = _hash(seed, salt, *keys)
    u1 = F.shiftrightunsigned(h, 32).cast("double") / float(1 << 32)
    u2 = h.bitwiseAND(F.lit(MASK32)).cast("double") / float(1 << 32)
    return F.sqrt(F.log(1.0 - u1) * -2.0) * F.cos(u2 * (2 * math.pi))


def lognormal(mean: float, sigma: float, z: Column) -> Column:
    """A log-normal with the given mean: mean * exp(sigma z - sigma^2 / 2)."""
    return F.exp(z * sigma - sigma * sigma / 2) * mean


def stochastic_round(x: Column, u: Column) -> Column:
    """floor(x + u): an integer whose expectation is x."""
    return F.floor(x + u).cast("long")


def sigmoid(x: Column) -> Column:
    return F.lit(1.0) / (F.exp(-x) + 1.0)


def _pick(u: Column, choices: tuple[tuple[object, float], ...]) -> Column:
    """The choice whose cumulative share first exceeds u (shares sum to 1)."""
    out, acc = None, 0.0
    for value, share in choices[:-1]:
        acc += share
        out = F.when(u < acc, F.lit(value)) if out is None else out.when(u < acc, F.lit(value))
    return out.otherwise(F.lit(choices[-1][0]))


def _word(seed: int, salt: str, vocab: tuple[str, ...], *keys: Column) -> Column:
    i = F.pmod(_hash(seed, salt, *keys), F.lit(len(vocab))).cast("int")
    return F.get(F.split(F.lit(",".join(vocab)), ","), i)  # one literal (constant-folded), not len(vocab) of them


# --- user attributes: column functions of the user index ------------------------------------------------------------
def user_created_ms(w: World, idx: Column) -> Column:
    """Created over the years before the history, growing (density rises linearly towards the history start)."""
    stride = w.id_time_stride
    span = (w.users_to_ms - w.users_from_ms) // stride
    frac = F.sqrt(uniform(w.seed, "user_created", idx))
    return F.lit(w.users_from_ms) + F.floor(frac * span) * stride + F.shiftright(idx, ids.SHARD_BITS + ids.SEQ_BITS)


def user_shard(idx: Column) -> Column:
    return idx.bitwiseAND(F.lit(ids.N_SHARDS - 1))


def user_id(w: World, idx: Column) -> Column:
    """instagram_id at created_at on shard idx % 8192 with sequence (idx >> 13) % 1024: unique by construction."""
    seq = F.shiftright(idx, ids.SHARD_BITS).bitwiseAND(F.lit(ids.MAX_SEQ))
    return ids.encode_col(user_created_ms(w, idx), user_shard(idx), seq)


def rank_of(w: World, idx: Column) -> Column:
    """Popularity rank (0 = most followed): a pseudo-random bijection of the index."""
    return F.pmod(idx * w.rank_a + w.rank_b, F.lit(w.n))


def idx_of_rank(w: World, rank: Column) -> Column:
    return F.pmod((rank - w.rank_b) * w.rank_a_inv, F.lit(w.n))


def _zipf_norm(w: World) -> float:
    return (w.n + 1) ** (1 - w.scale.zipf_s) - 1


def popularity(w: World, idx: Column) -> Column:
    """P(rank) / (1/N) under the bounded Zipf: expected followers relative to the mean (mean 1 over users)."""
    s1 = 1 - w.scale.zipf_s
    r = rank_of(w, idx).cast("double")
    return (F.pow(r + 2.0, s1) - F.pow(r + 1.0, s1)) * (w.n / _zipf_norm(w))


def zipf_rank(w: World, u: Column) -> Column:
    """Inverse CDF of the bounded continuous Zipf on [1, N+1): rank = floor(x) - 1 in 0..N-1."""
    s1 = 1 - w.scale.zipf_s
    x = F.pow(u * _zipf_norm(w) + 1.0, 1.0 / s1)
    return F.least(F.greatest(F.floor(x) - 1, F.lit(0)), F.lit(w.n - 1)).cast("long")


def _region_u(w: World, idx: Column) -> Column:
    return uniform(w.seed, "region", idx)


def region_of(w: World, idx: Column) -> Column:
    return _pick(_region_u(w, idx), tuple((r, share) for r, share, _ in REGIONS))


def region_from(u: Column) -> Column:
    return _pick(u, tuple((r, share) for r, share, _ in REGIONS))


def is_private(w: World, idx: Column) -> Column:
    return uniform(w.seed, "private", idx) < 0.10


def read_rate_z(w: World, idx: Column) -> Column:
    return normal(w.seed, "read_rate", idx)


def feed_read_count(w: World, idx: Column) -> Column:
    """Feed reads in the window: 0 for inactive users; active users read ~log-normal(mean reads_per_day) a day."""
    sc = w.scale
    active = uniform(w.seed, "active", idx) < sc.active_fraction
    rate = F.least(lognormal(sc.reads_per_day, 0.8, read_rate_z(w, idx)), F.lit(48.0))
    n = stochastic_round(rate * w.days, uniform(w.seed, "read_n", idx))
    return F.when(active, n).otherwise(F.lit(0).cast("long"))


def feed_read_ts_us(w: World, idx: Column, k: Column, n: Column) -> Column:
    """The k-th of n reads: stratified over the window, warped by a daily rhythm (monotone, so times stay distinct)."""
    phase = _pick(_region_u(w, idx), tuple((p, share) for _, share, p in REGIONS))
    theta = phase + uniform(w.seed, "read_phase", idx) * 0.15
    y = (k.cast("double") + uniform(w.seed, "read_jit", idx, k)) / n * w.days
    day = F.floor(y)
    phi = y - day
    two_pi = 2 * math.pi
    warped = phi - (F.sin((phi + theta) * two_pi) - F.sin(theta * two_pi)) * (0.6 / two_pi)
    return F.lit(w.start_ms * 1000) + F.floor((day + warped) * DAY_US).cast("long")


def affinity(w: World, viewer_idx: Column, author_idx: Column, rel: Column) -> Column:
    """Pair affinity: mu[rel] + 0.8 z_pair + 0.6 z_dir; rel 0 = no follow, 1 = follows, 2 = mutual (mu -1, 0, 1)."""
    lo, hi = F.least(viewer_idx, author_idx), F.greatest(viewer_idx, author_idx)
    mu = F.when(rel == 2, 1.0).when(rel == 1, 0.0).otherwise(-1.0)
    return mu + normal(w.seed, "aff_pair", lo, hi) * 0.8 + normal(w.seed, "aff_dir", viewer_idx, author_idx) * 0.6


def to_contract(df: DataFrame, dataset: str) -> DataFrame:
    """The contract's columns in contract order, each cast to the contract's type."""
    return df.select(*[F.col(c.name).cast(c.type).alias(c.name) for c in load_contract(dataset).columns])


# --- users ----------------------------------------------------------------------------------------------------------
def users_frame(population: DataFrame, *, world: World) -> DataFrame:
    """One row per user index (``idx`` from 0..N-1) with its id and attributes."""
    w = world
    idx = F.col("idx").cast("long")
    sep = _pick(uniform(w.seed, "username_sep", idx), (("", 0.5), ("_", 0.3), (".", 0.2)))
    username = F.concat(
        _word(w.seed, "username_adj", ADJECTIVES, idx),
        sep,
        _word(w.seed, "username_noun", NOUNS, idx),
        idx.cast("string"),
    )
    return population.select(
        idx.alias("idx"),
        user_id(w, idx).alias("user_id"),
        username.alias("username"),
        F.timestamp_millis(user_created_ms(w, idx)).alias("created_at"),
        region_of(w, idx).alias("region"),
        is_private(w, idx).alias("is_private"),
    )


def users(users_df: DataFrame) -> DataFrame:
    return to_contract(users_df, "users")


# --- follows --------------------------------------------------------------------------------------------------------
def follow_edges(users_df: DataFrame, *, world: World) -> DataFrame:
    """Directed follow edges (follower_idx, followee_idx, mutual), deduplicated, no self-follows.

    Each user draws a log-normal number of followee ranks from the bounded Zipf; each drawn followee follows back
    with P = follow_back / (1 + popularity / 4). Edges are grouped by unordered pair, which dedupes repeated draws
    and back-follows (identical pairs only) and tells mutual pairs.
    """
    w, sc = world, world.scale
    idx = F.col("idx").cast("long")
    degree = lognormal(sc.out_degree_mean, sc.out_degree_sigma, normal(w.seed, "out_degree", idx))
    d = F.least(
        F.greatest(stochastic_round(degree, uniform(w.seed, "out_degree_round", idx)), F.lit(1)),
        F.lit(min(INSTAGRAM_MAX_FOLLOWING, w.n - 1)),
    )
    j = F.col("j")
    followee = idx_of_rank(w, zipf_rank(w, uniform(w.seed, "follow", idx, j)))
    primary = (
        users_df.select(idx.alias("idx"), F.explode(F.sequence(F.lit(0).cast("long"), d - 1)).alias("j"))
        .select(idx.alias("src"), followee.alias("dst"))
        .where(F.col("src") != F.col("dst"))
    )
    src, dst = F.col("src"), F.col("dst")
    q = F.lit(sc.follow_back) / (popularity(w, dst) / 4.0 + 1.0)
    back = uniform(w.seed, "follow_back", src, dst) < q
    lo, hi = F.least(src, dst), F.greatest(src, dst)
    fwd_bit = F.when(src < dst, 1).otherwise(2)
    bits = F.when(back, F.lit(3)).otherwise(fwd_bit)
    # One long key per unordered pair keeps the shuffle narrow: pair = lo * N + hi.
    pair = F.col("pair")
    pairs = (
        primary.select((lo * w.n + hi).alias("pair"), bits.alias("bits"))
        .groupBy("pair")
        .agg(F.bit_or("bits").alias("bits"))
        .select(F.floor(pair / w.n).cast("long").alias("lo"), F.pmod(pair, F.lit(w.n)).alias("hi"), "bits")
    )
    both = F.array(
        F.struct(
            F.col("lo").alias("follower_idx"),
            F.col("hi").alias("followee_idx"),
            (F.col("bits").bitwiseAND(1) > 0).alias("present"),
        ),
        F.struct(
            F.col("hi").alias("follower_idx"),
            F.col("lo").alias("followee_idx"),
            (F.col("bits").bitwiseAND(2) > 0).alias("present"),
        ),
    )
    return (
        pairs.select(F.explode(both).alias("e"), (F.col("bits") == 3).alias("mutual"))
        .where(F.col("e.present"))
        .select(
            F.col("e.follower_idx").alias("follower_idx"),
            F.col("e.followee_idx").alias("followee_idx"),
            F.col("mutual"),
        )
    )


def follow_created_us(w: World, follower_idx: Column, followee_idx: Column) -> Column:
    """Uniform between the later of the two accounts' creation and the world's end."""
    lo = F.greatest(user_created_ms(w, follower_idx), user_created_ms(w, followee_idx)) * 1000
    span = F.lit(w.end_ms * 1000) - lo
    return lo + F.floor(uniform(w.seed, "follow_at", follower_idx, followee_idx) * span).cast("long")


def follows(edges: DataFrame, *, world: World) -> DataFrame:
    f, e = F.col("follower_idx"), F.col("followee_idx")
    return to_contract(
        edges.select(
            user_id(world, f).alias("follower_id"),
            user_id(world, e).alias("followee_id"),
            F.timestamp_micros(follow_created_us(world, f, e)).alias("created_at"),
        ),
        "follows",
    )


# --- posts and media ------------------------------------------------------------------------------------------------
def _seq_block(idx: Column) -> Column:
    return F.pmod(F.shiftright(idx, ids.SHARD_BITS), F.lit(SEQ_BLOCKS))


def _unique_on(df: DataFrame, key: str) -> DataFrame:
    """Drop every row whose key occurs more than once (deterministic: no copy is preferred)."""
    return df.withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy(key))).where(F.col("_n") == 1).drop("_n")


def posts_frame(users_df: DataFrame, *, world: World) -> DataFrame:
    """Posts over the history: (post_id, author_idx, author_id, created_ms, caption, media_count).

    Posters (poster_fraction of users) post at a log-normal rate times popularity^0.3, stratified over the history
    (so one author's posts never share a millisecond). The post id is minted on the author's shard with sequence
    block*11, where block = (idx >> 13) % 93; ids that still collide (only possible above 761,856 users) are dropped.
    """
    w, sc = world, world.scale
    idx = F.col("idx").cast("long")
    h_days = w.history_days
    poster = uniform(w.seed, "poster", idx) < sc.poster_fraction
    rate = F.least(
        lognormal(sc.posts_per_day, 1.0, normal(w.seed, "post_rate", idx)) * F.pow(popularity(w, idx), 0.3), F.lit(3.0)
    )
    n = F.when(poster, stochastic_round(rate * h_days, uniform(w.seed, "post_n", idx))).otherwise(F.lit(0))
    k = F.col("k")
    created = F.lit(w.history_start_ms) + F.floor(
        (k.cast("double") + uniform(w.seed, "post_jit", idx, k)) / F.col("n") * (h_days * DAY_MS)
    ).cast("long")
    post_id = ids.encode_col(created, user_shard(idx), _seq_block(idx) * SEQ_BLOCK)
    media_u = uniform(w.seed, "media_count", idx, k)
    media_count = F.when(media_u < 0.7, F.lit(1)).otherwise(
        F.floor(F.pow(uniform(w.seed, "carousel", idx, k), 2.0) * 9).cast("int") + 2
    )
    n_words = F.floor(uniform(w.seed, "caption_words", idx, k) * 8).cast("int") + 1
    n_tags = F.floor(uniform(w.seed, "caption_tags", idx, k) * 5).cast("int")
    words = [F.when(F.lit(j) < n_words, _word(w.seed, "caption_word", WORDS, idx, k, F.lit(j))) for j in range(8)]
    tags = [
        F.when(F.lit(j) < n_tags, F.concat(F.lit("#"), _word(w.seed, "caption_tag", HASHTAGS, idx, k, F.lit(j))))
        for j in range(4)
    ]
    caption = F.when(uniform(w.seed, "caption_null", idx, k) < 0.15, F.lit(None).cast("string")).otherwise(
        F.concat_ws(" ", *words, *tags)
    )
    posts = (
        users_df.select(idx.alias("idx"), n.alias("n"))
        .where(F.col("n") > 0)
        .select("idx", "n", F.explode(F.sequence(F.lit(0).cast("long"), F.col("n") - 1)).alias("k"))
        .select(
            post_id.alias("post_id"),
            idx.alias("author_idx"),
            user_id(w, idx).alias("author_id"),
            created.alias("created_ms"),
            caption.alias("caption"),
            media_count.alias("media_count"),
        )
    )
    return _unique_on(posts, "post_id").select(
        "post_id", "author_idx", "author_id", "created_ms", "caption", "media_count"
    )


def posts(posts_df: DataFrame) -> DataFrame:
    return to_contract(posts_df.withColumn("created_at", F.timestamp_millis(F.col("created_ms"))), "posts")


def media_frame(posts_df: DataFrame, *, world: World) -> DataFrame:
    """media_count rows per post: id on the post's ms and shard with sequence block*11 + 1 + m; size and shape."""
    w = world
    a, m = F.col("author_idx"), F.col("m")
    media_id = ids.encode_col(F.col("created_ms"), user_shard(a), _seq_block(a) * SEQ_BLOCK + 1 + m)
    mid = F.col("media_id")
    size = F.exp(normal(w.seed, "media_bytes", mid) * 0.6 + math.log(2_000_000))
    width = _pick(uniform(w.seed, "media_width", mid), WIDTHS)
    aspect = _pick(uniform(w.seed, "media_aspect", mid), ASPECTS)
    height = F.least(F.greatest(F.round(width * aspect), F.lit(168)), F.lit(1350))
    return (
        posts_df.select(
            "post_id",
            "author_idx",
            "created_ms",
            F.explode(F.sequence(F.lit(0).cast("long"), F.col("media_count").cast("long") - 1)).alias("m"),
        )
        .withColumn("media_id", media_id)
        .select(
            "media_id",
            "post_id",
            "author_idx",
            "created_ms",
            F.least(F.greatest(F.round(size), F.lit(20_000)), F.lit(50_000_000)).cast("long").alias("bytes"),
            width.cast("int").alias("width"),
            height.cast("int").alias("height"),
            _hash(w.seed, "content", mid).alias("content_seed"),
        )
    )


def media(media_df: DataFrame) -> DataFrame:
    return to_contract(media_df.withColumn("created_at", F.timestamp_millis(F.col("created_ms"))), "media")


# --- media access ---------------------------------------------------------------------------------------------------
ACCESS_KAPPA = math.log(10) / 7  # per day: 10x fewer reads a week later (f4's measurement)


def media_access(media_df: DataFrame, *, world: World) -> DataFrame:
    """Reads of each media on each day of the window it exists.

    Read rate at age a days: access_per_day * P * 10^(-a/7) + access_floor * sqrt(P), P the author's popularity.
    The day's count is the stochastic rounding of its integral over the part of the day the media exists; reads are
    placed in disjoint microsecond slots along the decay's inverse CDF, so (media_id, ts) is unique.
    """
    w, sc = world, world.scale
    day = F.col("day")
    pop = popularity(w, F.col("author_idx"))
    first_day = F.greatest(F.floor((F.col("created_ms") - w.start_ms) / DAY_MS), F.lit(0)).cast("long")
    day_start = F.lit(w.start_ms) + day * DAY_MS
    t0 = F.greatest(day_start, F.col("created_ms"))
    t1 = day_start + DAY_MS
    a0 = (t0 - F.col("created_ms")) / DAY_MS
    a1 = (t1 - F.col("created_ms")) / DAY_MS
    k_ = ACCESS_KAPPA
    lam = pop * sc.access_per_day * (F.exp(a0 * -k_) - F.exp(a1 * -k_)) / k_ + F.sqrt(pop) * sc.access_floor * (a1 - a0)
    span_us = (t1 - t0) * 1000
    count = F.least(
        stochastic_round(lam, uniform(w.seed, "access_n", F.col("media_id"), day)), F.floor(span_us / 2).cast("long")
    )
    days = (
        media_df.where(F.col("created_ms") < w.end_ms)
        .select(
            "media_id",
            "author_idx",
            "created_ms",
            "bytes",
            F.explode(F.sequence(first_day, F.lit(w.days - 1).cast("long"))).alias("day"),
        )
        .select("*", t0.alias("t0"), (a1 - a0).alias("width_days"), count.alias("c"), span_us.alias("span_us"))
        .where(F.col("c") > 0)
    )
    c, k, mid = F.col("c"), F.col("k"), F.col("media_id")
    decay_mass = -F.expm1(F.col("width_days") * -k_)

    def offset_us(frac: Column) -> Column:  # inverse CDF of the decay within [t0, t1), in microseconds
        return F.floor(-F.log1p(-(frac * decay_mass)) / k_ * DAY_US).cast("long")

    lo = offset_us(k.cast("double") / c)
    hi = F.least(offset_us((k + 1).cast("double") / c), F.col("span_us"))
    ts_us = F.col("t0") * 1000 + lo + F.floor(uniform(w.seed, "access_at", mid, day, k) * (hi - lo)).cast("long")
    age_days = (F.col("ts_us") / 1000 - F.col("created_ms")) / DAY_MS
    local = uniform(w.seed, "access_local", mid, F.col("ts_us")) < 0.6
    region = F.when(local, region_of(w, F.col("author_idx"))).otherwise(
        region_from(uniform(w.seed, "access_region", mid, F.col("ts_us")))
    )
    cdn_hit = uniform(w.seed, "cdn_hit", mid, F.col("ts_us")) < F.when(age_days < 7, 0.96).otherwise(0.85)
    frac = _pick(uniform(w.seed, "access_variant", mid, F.col("ts_us")), VARIANTS)
    reads = days.select(
        "media_id",
        "author_idx",
        "created_ms",
        "bytes",
        "day",
        F.explode(F.sequence(F.lit(0).cast("long"), c - 1)).alias("k"),
        "c",
        "t0",
        "width_days",
        "span_us",
    ).select("media_id", "author_idx", "created_ms", "bytes", ts_us.alias("ts_us"))
    return to_contract(
        reads.select(
            "media_id",
            F.timestamp_micros(F.col("ts_us")).alias("ts"),
            F.least(F.round(F.col("bytes") * frac), F.lit(50_000_000)).cast("long").alias("bytes"),
            cdn_hit.alias("cdn_hit"),
            region.alias("region"),
        ),
        "media_access",
    )


# --- feed reads -----------------------------------------------------------------------------------------------------
def _reads(df: DataFrame, w: World, idx: Column, *keep: str) -> DataFrame:
    """Explode each user's feed reads: (keep..., k, n, ts_us)."""
    n = feed_read_count(w, idx)
    return (
        df.select(*keep, n.alias("n"))
        .where(F.col("n") > 0)
        .select(*keep, "n", F.explode(F.sequence(F.lit(0).cast("long"), F.col("n") - 1)).alias("k"))
        .withColumn("ts_us", feed_read_ts_us(w, idx, F.col("k"), F.col("n")))
    )


def feed_reads(users_df: DataFrame, *, world: World) -> DataFrame:
    reads = _reads(users_df, world, F.col("idx"), "idx", "user_id")
    return to_contract(reads.select("user_id", F.timestamp_micros(F.col("ts_us")).alias("ts")), "feed_reads")


# --- impressions and their ground truth -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Head:
    """One label's logit: bias + weights . (match, affinity, engagement, quality, age_days, log1p(pos), explore)."""

    label: str
    prob: str
    bias: float
    match: float
    affinity: float
    engagement: float
    quality: float
    age_per_day: float
    position: float
    explore: float


HEADS: tuple[Head, ...] = (
    Head("liked", "p_like", -2.3, 0.6, 0.5, 0.5, 0.4, -0.10, -0.3, -0.3),
    Head("commented", "p_comment", -4.6, 0.4, 0.8, 0.5, 0.3, -0.15, -0.3, -0.5),
    Head("saved", "p_save", -4.7, 0.7, 0.2, 0.4, 0.5, -0.05, -0.3, 0.2),
    Head("shared", "p_share", -5.1, 0.5, 0.6, 0.4, 0.4, -0.10, -0.3, 0.0),
    Head("followed", "p_follow", -9.5, 0.6, 0.3, 0.3, 0.3, -0.05, -0.3, 6.0),
    Head("hidden", "p_hide", -5.6, -0.7, -0.5, -0.2, -0.4, 0.05, 0.0, 1.0),
    Head("dwelled", "p_dwell", -1.3, 0.5, 0.3, 0.6, 0.4, -0.05, -0.3, 0.0),
)
FACTOR_DIM = 8
MAX_SLOTS = 10
EXPLORE_SHARE = 0.2  # of slots in a logged feed read
EXPLORE_TRIES = 8  # random draws from the day's explore pool per read


def logged_viewer(w: World, idx: Column) -> Column:
    """Active users whose impressions are logged (impression_viewer_fraction of them)."""
    return (uniform(w.seed, "impression_viewer", idx) < w.scale.impression_viewer_fraction) & (
        feed_read_count(w, idx) > 0
    )


def _bit(mask: Column, p: int) -> Column:
    return F.shiftright(mask, p).bitwiseAND(F.lit(1))


def _nth_slot(mask: Column, j: Column) -> Column:
    """The position of the (j+1)-th set bit of a MAX_SLOTS-bit mask (null if there are fewer)."""
    out, count = None, F.lit(0)
    for p in range(MAX_SLOTS):
        count = count + _bit(mask, p)
        cond = (_bit(mask, p) == 1) & (count == j + 1)
        out = F.when(cond, F.lit(p)) if out is None else out.when(cond, F.lit(p))
    return out


def logged_reads(users_df: DataFrame, *, world: World) -> DataFrame:
    """The sampled feed reads of logged viewers with their slot layout.

    Columns: viewer_idx, k, ts_us, ts_ms, day (window day index), feed_mask / explore_mask (bit p = slot p is a
    feed / explore slot; 5-10 slots, each explore with P = 0.2), n_feed, n_explore.
    """
    w, sc = world, world.scale
    idx = F.col("idx").cast("long")
    v, k = F.col("viewer_idx"), F.col("k")
    n_slots = F.floor(uniform(w.seed, "slots", v, k) * (MAX_SLOTS - 4)).cast("int") + 5
    explore = [
        (F.lit(p) < n_slots) & (uniform(w.seed, "explore_slot", v, k, F.lit(p)) < EXPLORE_SHARE)
        for p in range(MAX_SLOTS)
    ]
    feed = [(F.lit(p) < n_slots) & ~explore[p] for p in range(MAX_SLOTS)]

    def mask(flags: list[Column]) -> Column:
        total = F.lit(0)
        for p, f in enumerate(flags):
            total = total + F.when(f, F.lit(1 << p)).otherwise(F.lit(0))
        return total

    reads = _reads(users_df.where(logged_viewer(w, idx)).select(idx.alias("viewer_idx")), w, v, "viewer_idx").where(
        uniform(w.seed, "impression_read", v, k) < sc.impression_read_fraction
    )
    return reads.select(
        "viewer_idx", "k", "ts_us", mask(feed).alias("feed_mask"), mask(explore).alias("explore_mask")
    ).select(
        "viewer_idx",
        "k",
        "ts_us",
        F.floor(F.col("ts_us") / 1000).cast("long").alias("ts_ms"),
        F.floor((F.col("ts_us") / 1000 - w.start_ms) / DAY_MS).cast("long").alias("day"),
        "feed_mask",
        "explore_mask",
        F.bit_count(F.col("feed_mask")).alias("n_feed"),
        F.bit_count(F.col("explore_mask")).alias("n_explore"),
    )


def _recent_posts(posts_df: DataFrame, w: World) -> DataFrame:
    """Posts that can be shown in the window: created from 7 days before it."""
    return posts_df.where(F.col("created_ms") >= w.start_ms - EXPLORE_WINDOW_DAYS * DAY_MS).select(
        "post_id", "author_idx", "created_ms"
    )


def _logged_edges(edges: DataFrame, users_df: DataFrame, w: World) -> DataFrame:
    """Follow edges of logged viewers (joining the few viewers is cheaper than evaluating the predicate per edge)."""
    idx = F.col("idx").cast("long")
    viewers = users_df.where(logged_viewer(w, idx)).select(idx.alias("follower_idx"))
    return edges.join(viewers, on="follower_idx", how="inner")


def feed_candidates(edges: DataFrame, users_df: DataFrame, posts_df: DataFrame, *, world: World) -> DataFrame:
    """(viewer_idx, author_idx, rel, follow_ms, post_id, created_ms): logged viewers x their followees' recent posts."""
    w = world
    v = F.col("follower_idx")
    return (
        _logged_edges(edges, users_df, w)
        .join(_recent_posts(posts_df, w), F.col("followee_idx") == F.col("author_idx"), how="inner")
        .select(
            v.alias("viewer_idx"),
            "author_idx",
            F.when(F.col("mutual"), 2).otherwise(1).alias("rel"),
            F.floor(follow_created_us(w, v, F.col("author_idx")) / 1000).cast("long").alias("follow_ms"),
            "post_id",
            "created_ms",
        )
    )


def explore_pool(posts_df: DataFrame, *, world: World) -> DataFrame:
    """Per window day: the public posts of the explore_authors most popular accounts from the 7 days before it."""
    w = world
    created = F.col("created_ms")
    a = F.col("author_idx")
    lo_day = F.greatest(F.floor((created - w.start_ms) / DAY_MS), F.lit(0)).cast("long")
    hi_day = F.least(F.floor((created - w.start_ms) / DAY_MS) + EXPLORE_WINDOW_DAYS, F.lit(w.days - 1)).cast("long")
    return (
        _recent_posts(posts_df, w)
        .where((rank_of(w, a) < w.scale.explore_authors) & ~is_private(w, a))
        .select(F.explode(F.sequence(lo_day, hi_day)).alias("day"), "created_ms", "post_id", "author_idx")
        .groupBy("day")
        .agg(F.array_sort(F.collect_list(F.struct("created_ms", "post_id", "author_idx"))).alias("pool"))
        .select("day", "pool")
    )


def _fresh(created_ms: Column) -> Column:
    """Shown posts are from the 7 days before the impression."""
    return (created_ms < F.col("ts_ms")) & (created_ms >= F.col("ts_ms") - EXPLORE_WINDOW_DAYS * DAY_MS)


SHOWN_COLUMNS = ("viewer_idx", "k", "ts_us", "slot", "post_id", "author_idx", "created_ms", "rel", "surface")


def feed_picks(reads: DataFrame, candidates: DataFrame, *, world: World) -> DataFrame:
    """Feed slots: the viewer's fresh followee posts (followed by then) in weighted-random order, one per feed slot.

    Order key -ln(u) / weight with weight = exp(-age_days / 2) x (2 for a mutual follow): an exponential race, so
    recent posts of close friends tend to come first.
    """
    w = world
    v, k = F.col("viewer_idx"), F.col("k")
    weight = F.exp((F.col("ts_ms") - F.col("created_ms")) / DAY_MS * -0.5) * F.when(F.col("rel") == 2, 2.0).otherwise(
        1.0
    )
    key = -F.log1p(-uniform(w.seed, "feed_order", v, k, F.col("post_id"))) / weight
    rn = F.row_number().over(Window.partitionBy("viewer_idx", "k").orderBy(F.col("key"), F.col("post_id")))
    return (
        reads.join(candidates, on="viewer_idx", how="inner")
        .where(_fresh(F.col("created_ms")) & (F.col("follow_ms") <= F.col("ts_ms")))
        .withColumn("key", key)
        .withColumn("rn", rn)
        .where(F.col("rn") <= F.col("n_feed"))
        .select(
            "viewer_idx",
            "k",
            "ts_us",
            _nth_slot(F.col("feed_mask"), F.col("rn") - 1).alias("slot"),
            "post_id",
            "author_idx",
            "created_ms",
            "rel",
            F.lit("feed").alias("surface"),
        )
    )


def explore_picks(
    reads: DataFrame, pool: DataFrame, edges: DataFrame, users_df: DataFrame, *, world: World
) -> DataFrame:
    """Explore slots: EXPLORE_TRIES random draws from the day's pool; distinct posts that are fresh and not by the
    viewer or an account the viewer follows fill the explore slots in draw order."""
    w = world
    v, k = F.col("viewer_idx"), F.col("k")
    pool_col = F.col("pool")
    # Draws are made in the read's row (unrolled, no lambda; array_distinct keeps first occurrences in draw order)
    # so exploded rows never carry the pool array.
    draws = F.array_distinct(
        F.array(
            *[
                F.get(pool_col, F.floor(uniform(w.seed, "explore_pick", v, k, F.lit(j)) * F.size(pool_col)).cast("int"))
                for j in range(EXPLORE_TRIES)
            ]
        )
    )
    followed_stars = (
        _logged_edges(edges, users_df, w)
        .where(rank_of(w, F.col("followee_idx")) < w.scale.explore_authors)
        .select(F.col("follower_idx").alias("viewer_idx"), F.col("followee_idx").alias("author_idx"))
    )
    drawn = (
        reads.where(F.col("n_explore") > 0)
        .join(pool, on="day", how="inner")
        .select("viewer_idx", "k", "ts_us", "ts_ms", "explore_mask", "n_explore", F.posexplode(draws))
        .select(
            "viewer_idx",
            "k",
            "ts_us",
            "ts_ms",
            "explore_mask",
            "n_explore",
            F.col("pos").alias("j"),
            F.col("col.post_id").alias("post_id"),
            F.col("col.author_idx").alias("author_idx"),
            F.col("col.created_ms").alias("created_ms"),
        )
        .where(F.col("post_id").isNotNull() & _fresh(F.col("created_ms")) & (F.col("author_idx") != v))
        .join(followed_stars, on=["viewer_idx", "author_idx"], how="left_anti")
    )
    rn = F.row_number().over(Window.partitionBy("viewer_idx", "k").orderBy("j"))
    return (
        drawn.withColumn("rn", rn)
        .where(F.col("rn") <= F.col("n_explore"))
        .select(
            "viewer_idx",
            "k",
            "ts_us",
            _nth_slot(F.col("explore_mask"), F.col("rn") - 1).alias("slot"),
            "post_id",
            "author_idx",
            "created_ms",
            F.lit(0).alias("rel"),
            F.lit("explore").alias("surface"),
        )
    )


def viewer_factors(users_df: DataFrame, *, world: World) -> DataFrame:
    """Logged viewers' latent factors u0..u7 ~ N(0, 1) and engagement propensity ~ N(0, 1)."""
    w = world
    v = F.col("idx").cast("long")
    return users_df.where(logged_viewer(w, v)).select(
        v.alias("viewer_idx"),
        *[normal(w.seed, "user_factor", v, F.lit(j)).alias(f"u{j}") for j in range(FACTOR_DIM)],
        normal(w.seed, "engagement", v).alias("engagement"),
    )


def post_factors(posts_df: DataFrame, *, world: World) -> DataFrame:
    """Recent posts' factors p_j = (author style a_j + post noise e_j) / sqrt(2) ~ N(0, 1), and quality ~ N(0, 1)."""
    w = world
    a, p = F.col("author_idx"), F.col("post_id")
    return _recent_posts(posts_df, w).select(
        "post_id",
        *[
            (
                (normal(w.seed, "author_factor", a, F.lit(j)) + normal(w.seed, "post_factor", p, F.lit(j)))
                / math.sqrt(2)
            ).alias(f"p{j}")
            for j in range(FACTOR_DIM)
        ],
        normal(w.seed, "quality", p).alias("quality"),
    )


def impressions_frame(
    reads: DataFrame, users_df: DataFrame, edges: DataFrame, posts_df: DataFrame, *, world: World
) -> DataFrame:
    """Impressions of the logged reads (``logged_reads``) with labels and their true probabilities.

    Each logged read has 5-10 slots (explore with P 0.2); feed and explore picks fill their slots, empty slots are
    dropped and positions renumbered 0.. in slot order. The impression's ts is the read's ts.
    """
    w = world
    shown = feed_picks(reads, feed_candidates(edges, users_df, posts_df, world=w), world=w).unionByName(
        explore_picks(reads, explore_pool(posts_df, world=w), edges, users_df, world=w)
    )
    return _with_labels(shown, viewer_factors(users_df, world=w), post_factors(posts_df, world=w), w)


def _with_labels(shown: DataFrame, viewers: DataFrame, posts_f: DataFrame, w: World) -> DataFrame:
    """Positions, features, per-head probabilities (the oracle) and labels drawn from them.

    Everything that does not need the position (ids, features, the labels' uniforms) is computed before the
    position window's shuffle, so the work splits into two moderate code-generated stages: one fused stage is too
    large for the JVM to compile and runs several times slower.
    """
    v, a, p, ts = F.col("viewer_idx"), F.col("author_idx"), F.col("post_id"), F.col("ts_us")
    match = F.lit(0.0)
    for j in range(FACTOR_DIM):
        match = match + F.col(f"u{j}") * F.col(f"p{j}")
    before_position = (
        shown.join(viewers, on="viewer_idx", how="inner")
        .join(posts_f, on="post_id", how="inner")
        .select(
            "viewer_idx",
            "k",
            "slot",
            "post_id",
            "surface",
            user_id(w, v).alias("viewer_id"),
            user_id(w, a).alias("author_id"),
            F.timestamp_micros(ts).alias("ts"),
            (match / math.sqrt(FACTOR_DIM)).alias("f_match"),
            affinity(w, v, a, F.col("rel")).alias("f_affinity"),
            F.col("engagement").alias("f_engagement"),
            F.col("quality").alias("f_quality"),
            ((ts / 1000 - F.col("created_ms")) / DAY_MS).alias("f_age_days"),
            F.when(F.col("surface") == "explore", 1.0).otherwise(0.0).alias("f_explore"),
            *[uniform(w.seed, f"label_{h.label}", v, p, ts).alias(f"u_{h.label}") for h in HEADS],
            uniform(w.seed, "dwell_ms", v, p, ts).alias("u_dwell_ms"),
        )
    )
    position = F.row_number().over(Window.partitionBy("viewer_idx", "k").orderBy("slot")) - 1
    features = before_position.withColumn("position", position.cast("int")).withColumn(
        "f_position", F.log1p(F.col("position").cast("double"))
    )
    probs = []
    for h in HEADS:
        logit = (
            F.lit(h.bias)
            + F.col("f_match") * h.match
            + F.col("f_affinity") * h.affinity
            + F.col("f_engagement") * h.engagement
            + F.col("f_quality") * h.quality
            + F.col("f_age_days") * h.age_per_day
            + F.col("f_position") * h.position
            + F.col("f_explore") * h.explore
        )
        probs.append(sigmoid(logit).alias(h.prob))
    u_dwell = F.col("u_dwell_ms")
    # dwell_ms > 10 s exactly when the dwell label is drawn: Pareto(1.5) above 10 s, log-uniform 0.3-10 s below.
    long_dwell = F.least(F.floor(F.pow(1.0 - u_dwell, -1 / 1.5) * 10_000) + 1, F.lit(3_600_000))
    short_dwell = F.floor(F.exp(u_dwell * math.log(10_000 / 300) + math.log(300)))
    labels = [(F.col(f"u_{h.label}") < F.col(h.prob)).alias(h.label) for h in HEADS if h.label != "dwelled"]
    return features.select("*", *probs).select(
        "viewer_id",
        "post_id",
        "author_id",
        "ts",
        "surface",
        "position",
        *labels,
        F.when(F.col("u_dwelled") < F.col("p_dwell"), long_dwell).otherwise(short_dwell).cast("int").alias("dwell_ms"),
        *[h.prob for h in HEADS],
    )


def impressions(imp_df: DataFrame) -> DataFrame:
    return to_contract(imp_df, "impressions")


def oracle(imp_df: DataFrame) -> DataFrame:
    return to_contract(imp_df, "oracle")


# --- stories --------------------------------------------------------------------------------------------------------
def stories_frame(users_df: DataFrame, *, world: World) -> DataFrame:
    """Stories in the window: (story_id, author_idx, created_ms); posters and rates rise with popularity."""
    w, sc = world, world.scale
    idx = F.col("idx").cast("long")
    pop = popularity(w, idx)
    poster = uniform(w.seed, "story_poster", idx) < F.least(F.pow(pop, 0.25) * sc.story_poster_fraction, F.lit(0.9))
    rate = F.least(lognormal(sc.stories_per_day, 0.8, normal(w.seed, "story_rate", idx)) * F.pow(pop, 0.2), F.lit(20.0))
    n = F.when(poster, stochastic_round(rate * w.days, uniform(w.seed, "story_n", idx))).otherwise(F.lit(0))
    k = F.col("k")
    created = F.lit(w.start_ms) + F.floor(
        (k.cast("double") + uniform(w.seed, "story_jit", idx, k)) / F.col("n") * (w.days * DAY_MS)
    ).cast("long")
    seq = F.shiftright(idx, ids.SHARD_BITS).bitwiseAND(F.lit(ids.MAX_SEQ))
    out = (
        users_df.select(idx.alias("idx"), n.alias("n"))
        .where(F.col("n") > 0)
        .select("idx", "n", F.explode(F.sequence(F.lit(0).cast("long"), F.col("n") - 1)).alias("k"))
        .select(
            ids.encode_col(created, user_shard(idx), seq).alias("story_id"),
            idx.alias("author_idx"),
            created.alias("created_ms"),
        )
    )
    return _unique_on(out, "story_id").select("story_id", "author_idx", "created_ms")


def stories(stories_df: DataFrame, *, world: World) -> DataFrame:
    return to_contract(
        stories_df.select(
            "story_id",
            user_id(world, F.col("author_idx")).alias("author_id"),
            F.timestamp_millis(F.col("created_ms")).alias("created_at"),
        ),
        "stories",
    )


def story_views(edges: DataFrame, stories_df: DataFrame, *, world: World) -> DataFrame:
    """Followers who follow an author's stories (P = sigmoid(bias + A + 0.5 z_activity)) view each with P 0.8,
    a log-normal delay (median 2 h) within its 24 h; views after the world's end are not logged."""
    w, sc = world, world.scale
    v, a = F.col("follower_idx"), F.col("followee_idx")
    rel = F.when(F.col("mutual"), 2).otherwise(1)
    p_edge = sigmoid(F.lit(sc.story_edge_bias) + affinity(w, v, a, rel) + read_rate_z(w, v) * 0.5)
    by_author = stories_df.groupBy("author_idx").agg(F.collect_list(F.struct("story_id", "created_ms")).alias("s"))
    watching = (
        edges.where((feed_read_count(w, v) > 0) & (uniform(w.seed, "story_edge", v, a) < p_edge))
        .join(by_author, a == F.col("author_idx"), how="inner")
        .select(v.alias("viewer_idx"), F.explode(F.col("s")).alias("s"))
    )
    sid = F.col("s.story_id")
    delay = F.least(
        F.exp(normal(w.seed, "story_delay", sid, F.col("viewer_idx")) * 1.1 + math.log(2 * HOUR_US)),
        F.lit(DAY_US - 1.0),
    )
    ts_us = F.col("s.created_ms") * 1000 + F.floor(delay).cast("long")
    views = (
        watching.where(uniform(w.seed, "story_view", sid, F.col("viewer_idx")) < 0.8)
        .select(sid.alias("story_id"), user_id(w, F.col("viewer_idx")).alias("viewer_id"), ts_us.alias("ts_us"))
        .where(F.col("ts_us") <= w.end_ms * 1000)
    )
    return to_contract(views.withColumn("ts", F.timestamp_micros(F.col("ts_us"))), "story_views")


# --- pair events driven by affinity ---------------------------------------------------------------------------------
def _edge_events(edges: DataFrame, w: World, *, salt: str, bias: float, slope: float) -> DataFrame:
    """Per follow edge: count = round(days * exp(bias + slope * A)); times stratified over the window (distinct)."""
    v, a = F.col("follower_idx"), F.col("followee_idx")
    rel = F.when(F.col("mutual"), 2).otherwise(1)
    lam = F.exp(F.lit(bias) + affinity(w, v, a, rel) * slope) * w.days
    c = stochastic_round(lam, uniform(w.seed, f"{salt}_n", v, a))
    k = F.col("k")
    window_us = w.days * DAY_US
    ts_us = F.lit(w.start_ms * 1000) + F.floor(
        (k.cast("double") + uniform(w.seed, f"{salt}_at", v, a, k)) / F.col("c") * window_us
    ).cast("long")
    return (
        edges.select("follower_idx", "followee_idx", c.alias("c"))
        .where(F.col("c") > 0)
        .select(
            "follower_idx", "followee_idx", "c", F.explode(F.sequence(F.lit(0).cast("long"), F.col("c") - 1)).alias("k")
        )
        .select(user_id(w, v).alias("src_id"), user_id(w, a).alias("dst_id"), F.timestamp_micros(ts_us).alias("ts"))
    )


VISIT_SLOPE = 1.0
DM_SLOPE = 1.5


def profile_visits(edges: DataFrame, *, world: World) -> DataFrame:
    """Visits of a followee's profile: rate exp(visit_bias + 1.0 A) a day."""
    ev = _edge_events(edges, world, salt="visit", bias=world.scale.visit_bias, slope=VISIT_SLOPE)
    return to_contract(
        ev.select(F.col("src_id").alias("visitor_id"), F.col("dst_id").alias("profile_id"), "ts"), "profile_visits"
    )


def dm_events(edges: DataFrame, *, world: World) -> DataFrame:
    """Direct messages to a followee: rate exp(dm_bias + 1.5 A) a day (mutual pairs write both ways)."""
    ev = _edge_events(edges, world, salt="dm", bias=world.scale.dm_bias, slope=DM_SLOPE)
    return to_contract(
        ev.select(F.col("src_id").alias("sender_id"), F.col("dst_id").alias("recipient_id"), "ts"), "dm_events"
    )
